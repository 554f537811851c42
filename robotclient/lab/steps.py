"""Routing steps: applied between phases (kubectl on a cluster, the local Envoy's routes), and read beforehand.

``resolve_steps`` reads every phase's VirtualService before the run starts,
so that a step file that is not YAML, does not route the host, or routes to a
subset the local Envoy has no endpoint for stops the run before phase 1, not
after it.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from robotclient.lab import envoyconf
from robotclient.lab.envoyproc import EnvoyProcess, load_documents
from robotclient.lab.schedule import Phase, ScheduleError, configured_split, one_line, routed_subsets


class Applier(Protocol):
    def apply(self, phase: Phase) -> Mapping[str, Any] | None:
        """Apply the phase's routing step; returns the VirtualService now in force, when known."""


@dataclass
class CommandApplier:
    """On a cluster: ``kubectl apply -f FILE`` per step file (template configurable), or the phase's command."""

    host: str
    workdir: Path
    template: str = "kubectl apply -f {file}"
    runner: Callable[[list[str]], None] = field(default=lambda argv: subprocess.run(argv, check=True))

    def apply(self, phase: Phase) -> Mapping[str, Any] | None:
        files = list(phase.apply)
        service: Mapping[str, Any] | None = None
        if phase.weights:
            service = envoyconf.weights_virtual_service(self.host, phase.weights)
            path = self.workdir / f"{phase.name}-weights.yaml"
            path.write_text(envoyconf.to_yaml(service))
            files.append(str(path))
        elif files:
            service = _service_in(files, self.host)
        for file in files:
            self.runner(shlex.split(self.template.format(file=shlex.quote(file))))
        if phase.command:
            self.runner(shlex.split(phase.command))
        return service


@dataclass
class EnvoyApplier:
    """Locally: the phase's VirtualService becomes the generated Envoy's routes (switched live)."""

    envoy: EnvoyProcess
    runner: Callable[[list[str]], None] = field(default=lambda argv: subprocess.run(argv, check=True))

    def apply(self, phase: Phase) -> Mapping[str, Any] | None:
        service = step_service(phase, self.envoy.host)
        if service is not None:
            self.envoy.switch(service)
        if phase.command:
            self.runner(shlex.split(phase.command))
        return service


def step_service(phase: Phase, host: str) -> Mapping[str, Any] | None:
    if phase.weights:
        return envoyconf.weights_virtual_service(host, phase.weights)
    if phase.apply:
        return _service_in(phase.apply, host)
    return None


def _service_in(files: Sequence[str], host: str) -> Mapping[str, Any] | None:
    services = envoyconf.virtual_services(load_documents(Path(f) for f in files))
    try:
        return envoyconf.for_host(services, host)
    except ValueError:
        return None


def resolve_steps(phases: Sequence[Phase], host: str,
                  endpoints: Mapping[str, envoyconf.Endpoint] | None) -> list[Mapping[str, Any] | None]:
    """Every phase's VirtualService for ``host`` (None: not known), read and checked before the run starts.

    Locally (``endpoints``: the local Envoy's subsets) a step must route ``host`` with what Envoy can do, to subsets
    that have an endpoint; on a cluster a step file that routes other hosts is kubectl's business.
    """
    import yaml  # the lab extra

    found: list[Mapping[str, Any] | None] = []
    for index, phase in enumerate(phases):
        where = f"phase {index + 1} ({phase.name}): {'weights' if phase.weights else 'apply'}"
        try:
            service = step_service(phase, host)
            configured_split(service)
            routed_subsets(service)
            if endpoints is not None and service is not None:
                routes = envoyconf.route_configuration(service, host)
                known = {envoyconf.cluster_name(host, s) for s in endpoints}
                missing = sorted(c.split("|")[2] for c in envoyconf.referenced_clusters(routes) - known)
                if missing:
                    raise ScheduleError(f"{where}: routes to subset(s) {missing} that --envoy-endpoints does not "
                                        f"map (it maps {sorted(endpoints)})")
        except ScheduleError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError) as err:
            raise ScheduleError(f"{where}: {one_line(err)}") from None
        if endpoints is not None and service is None and phase.apply:
            raise ScheduleError(f"{where}: no VirtualService in {', '.join(phase.apply)} routes {host} "
                                "(the local Envoy routes --host only)")
        found.append(service)
    return found
