"""Robot client: camera, offload client, tracker, follow-target state machine, drivers."""
