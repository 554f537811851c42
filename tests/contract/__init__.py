"""Contract tests: our code against the real third-party APIs it depends on (no hardware)."""
