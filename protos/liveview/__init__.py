"""The live view both the robot client and the aggregator serve: MJPEG pages in any browser, ``/healthz``.

One implementation shared by the two (they may share only ``protos``: DESIGN.md, rooms): ``feeds`` holds
the newest frame of each source and judges it live, stale, stalled or gone (pure, clock injected);
``pictures`` draws the placeholder, the dimmed last frame and readable labels (pure); ``pages`` writes
the HTML (pure); ``server`` serves them over HTTP. The HTTP surface is a contract of its own (browsers,
probes, scripts): ``/healthz``, ``/stream``, ``/frame.jpg`` and, with several sources, ``/`` listing
them and ``/<kind>/<name>[/stream|/frame.jpg]`` per source.
"""
