"""Prometheus metrics of one server, in a registry of its own (no global state)."""

from __future__ import annotations

import prometheus_client as prom

from protos import timings as stage

# Frame latencies run from a few ms (Haar on a small frame) to the 1 s robot deadline.
_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)


class ServiceMetrics:
    def __init__(self, service: str, version: str = "", site: str = "") -> None:
        self.registry = prom.CollectorRegistry()
        labels = {"service": service, "version": version, "site": site}
        self._labels = labels
        self.requests = prom.Counter(
            "robomesh_requests", "gRPC requests handled, by method and status code",
            [*labels, "method", "code"], registry=self.registry)
        self.stage_seconds = prom.Histogram(
            "robomesh_stage_seconds", "Time spent per stage of a frame (decode, haar, dnn, total...)",
            [*labels, "stage"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.detector_seconds = prom.Histogram(
            "robomesh_detector_seconds", "Aggregator: round trip to each detector, by outcome",
            [*labels, "detector", "code"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.detections = prom.Counter(
            "robomesh_detections", "Detections returned, by engine",
            [*labels, "engine"], registry=self.registry)
        self.batch_size = prom.Histogram(
            "robomesh_batch_size", "YOLO: frames in the engine batch each frame ran in",
            list(labels), buckets=(1, 2, 3, 4, 6, 8, 12, 16), registry=self.registry)
        self.in_flight = prom.Gauge(
            "robomesh_requests_in_flight", "Requests being handled now", list(labels), registry=self.registry)

    def count_request(self, method: str, code: str) -> None:
        self.requests.labels(**self._labels, method=method, code=code).inc()

    def observe_stages(self, timings_ms: dict[str, float]) -> None:
        for name, ms in timings_ms.items():
            if name in stage.COUNTS:
                continue
            self.stage_seconds.labels(**self._labels, stage=name).observe(ms / 1000.0)
        if stage.BATCH in timings_ms:
            self.batch_size.labels(**self._labels).observe(timings_ms[stage.BATCH])

    def observe_detector(self, detector: str, code: str, seconds: float) -> None:
        self.detector_seconds.labels(**self._labels, detector=detector, code=code).observe(seconds)

    def count_detections(self, engine: str, n: int) -> None:
        if n:
            self.detections.labels(**self._labels, engine=engine).inc(n)

    def track_in_flight(self):
        return self.in_flight.labels(**self._labels).track_inprogress()

    def start_http(self, port: int, host: str = "") -> int:
        """Serves /metrics; returns the bound port (useful with port 0)."""
        server, _thread = prom.start_http_server(port, addr=host or "0.0.0.0", registry=self.registry)
        return server.server_port
