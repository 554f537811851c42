"""Several edge sites on loopback for ``robotclient sim --sites N``: one aggregator per site, shared detectors.

Each site is its own ``objectdetection`` process with its own identity, as the
Downward API would give it in a cluster (``SITE=edge-1``, ``NODE_NAME``,
``POD_NAME``, ``POD_IP``), listening on its own loopback address
(``127.0.0.2``, ``127.0.0.3``...; Linux routes all of 127.0.0.0/8 to
loopback), so the ``served_by`` of every reply names the site, node and IPv4
that answered it, and the robot's LEDs change colour with it. The two
detectors behind the aggregators (``facedetection``, ``yolodetection``) are
started once and shared by all sites: on a laptop with two cores, N copies of
YOLO would fight over the same cores and make every site slow, while what the
handover exercises is the robot's link to the site's front door, not the
detectors behind it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.launcher import ServiceProcess


@dataclass(frozen=True)
class Site:
    """One edge site as the robot sees it: its name, node, address and the aggregator's ``HOST:PORT``."""

    name: str
    node: str
    address: str
    port: int

    @property
    def target(self) -> str:
        return f"{self.address}:{self.port}"

    def env(self) -> dict[str, str]:
        """The identity the site's aggregator reports in ``served_by`` (services/common/identity.py)."""
        return {"SITE": self.name, "NODE_NAME": self.node, "POD_NAME": f"objectdetection-{self.name}",
                "POD_IP": self.address, "ZONE": "local"}


def site_plan(count: int, ports: Sequence[int]) -> list[Site]:
    """``count`` sites ``edge-1..N`` on 127.0.0.2, 127.0.0.3... with the given aggregator ports (pure)."""
    if count < 1:
        raise ValueError(f"at least one site, got {count}")
    if count > 250:
        raise ValueError(f"at most 250 sites on loopback, got {count}")
    if len(ports) != count:
        raise ValueError(f"{count} sites need {count} ports, got {len(ports)}")
    return [Site(f"edge-{i}", f"node-edge-{i}", f"127.0.0.{1 + i}", port)
            for i, port in enumerate(ports, start=1)]


class LocalSites:
    """``facedetection`` + ``yolodetection`` once, and one ``objectdetection`` per site, all SERVING on start."""

    def __init__(self, count: int, *, log_dir: Path | None = None, start_timeout_s: float = 120.0,
                 echo: bool = True) -> None:
        from services.launcher import ServiceProcess, free_port

        self.log_dir = log_dir
        self.start_timeout_s = start_timeout_s
        self.echo = echo
        self.sites = [replace(site, port=free_port(site.address)) for site in site_plan(count, [0] * count)]
        no_metrics = ["--metrics-port", "-1"]
        self.face = ServiceProcess("facedetection", free_port(), no_metrics, log_path=self._log("facedetection"))
        self.yolo = ServiceProcess("yolodetection", free_port(), no_metrics, log_path=self._log("yolodetection"))
        self.aggregators = [
            ServiceProcess("objectdetection", site.port,
                           ["--face", self.face.target, "--yolo", self.yolo.target, *no_metrics],
                           host=site.address, env=site.env(), log_path=self._log(f"objectdetection-{site.name}"))
            for site in self.sites
        ]

    @property
    def services(self) -> list[ServiceProcess]:
        return [self.face, self.yolo, *self.aggregators]

    @property
    def targets(self) -> list[str]:
        return [site.target for site in self.sites]

    def _log(self, name: str) -> Path | None:
        return self.log_dir / f"{name}.log" if self.log_dir is not None else None

    def start(self) -> LocalSites:
        from services.launcher import wait_serving

        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for service in self.services:
                service.start()
            for service in self.services:
                wait_serving(service.target, self.start_timeout_s, service.process)
        except Exception:
            self.stop()
            raise
        if self.echo:
            for site in self.sites:
                print(f"  sites | {site.name:8s} {site.target} (node {site.node})", file=sys.stderr, flush=True)
            print(f"  sites | detectors face {self.face.target}, yolo {self.yolo.target}; all SERVING",
                  file=sys.stderr, flush=True)
        return self

    def stop(self) -> dict[str, int | None]:
        """The aggregators first, so that they drain while their detectors still answer."""
        codes = {f"objectdetection-{site.name}": agg.stop() for site, agg in zip(self.sites, self.aggregators,
                                                                              strict=True)}
        codes.update({self.yolo.name: self.yolo.stop(), self.face.name: self.face.stop()})
        return codes

    def __enter__(self) -> LocalSites:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
