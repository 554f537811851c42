"""An experiment's schedule, checked whole before anything starts, and what its steps imply.

Pure: a parsed YAML document in, phases out (file existence is asked of an
injected ``is_file``), or a ``ScheduleError`` whose one line names the phase
and the field. Also here: the split a routing step configures, the versions it
can send calls to, and the warning when more calls can reach a version at once
than the version admits.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIELDS = ("name", "duration_s", "apply", "weights", "command")
STEP_FIELDS = ("apply", "weights", "command")
# The services' own default (services/common/config.py DEFAULT_MAX_IN_FLIGHT; the lab does not import the
# services, a unit test keeps the two equal): what a version admits when nobody said otherwise.
SERVICES_DEFAULT_MAX_IN_FLIGHT = 2


class ScheduleError(ValueError):
    """A schedule that cannot run; the message is one line naming the phase and the field."""


def one_line(err: BaseException) -> str:
    """An exception as one line (the lab's messages are): its first line, else its type."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


@dataclass(frozen=True)
class Phase:
    """One step of the experiment: how long it runs and what routing it applies first."""

    name: str
    duration_s: float
    apply: tuple[str, ...] = ()
    command: str | None = None
    weights: Mapping[str, int] | None = None


def parse_schedule(document: Any, base_dir: Path = Path(),
                   is_file: Callable[[Path], bool] = Path.is_file) -> list[Phase]:
    """``{phases: [{name, duration_s, apply|command|weights}]}`` (or a bare list); paths relative to ``base_dir``.

    Every phase is checked before any is returned: required fields, types, unknown fields (a misspelt
    ``duraton_s`` is an error, not a default), step files that exist, weights that sum to 100, unique names.
    """
    items = document.get("phases") if isinstance(document, dict) else document
    if isinstance(document, dict) and set(document) - {"phases"}:
        raise ScheduleError(f"unknown top-level field(s) {sorted(map(str, set(document) - {'phases'}))}; "
                            "a schedule is {phases: [...]}")
    if not isinstance(items, list) or not items:
        raise ScheduleError("a schedule is a non-empty list of phases (or {phases: [...]})")
    phases = [_phase(index, item, base_dir, is_file) for index, item in enumerate(items)]
    seen: dict[str, int] = {}
    for index, phase in enumerate(phases):
        if phase.name in seen:
            raise ScheduleError(f"{_where(index, phase.name)}: name: {phase.name!r} is also phase "
                                f"{seen[phase.name] + 1}'s (names must be unique: replies are grouped by them)")
        seen[phase.name] = index
    return phases


def _where(index: int, name: Any = None) -> str:
    return f"phase {index + 1} ({name})" if isinstance(name, str) and name.strip() else f"phase {index + 1}"


def _phase(index: int, item: Any, base_dir: Path, is_file: Callable[[Path], bool]) -> Phase:
    if not isinstance(item, dict):
        raise ScheduleError(f"{_where(index)}: expected a mapping {{name, duration_s, apply|weights|command}}, "
                            f"got {type(item).__name__}")
    where = _where(index, item.get("name"))
    unknown = sorted(str(k) for k in item if k not in FIELDS)
    if unknown:
        raise ScheduleError(f"{where}: unknown field(s) {unknown}; a phase has {', '.join(FIELDS)}")
    name = item.get("name")
    if name is None:
        raise ScheduleError(f"{where}: name: missing (replies and the report are grouped by it)")
    if not isinstance(name, str) or not name.strip():
        raise ScheduleError(f"{where}: name: expected a non-empty string, got {name!r}")
    duration = item.get("duration_s")
    if duration is None:
        raise ScheduleError(f"{where}: duration_s: missing (seconds the phase runs, e.g. duration_s: 20)")
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration) \
            or duration <= 0:
        raise ScheduleError(f"{where}: duration_s: expected a positive number of seconds, got {duration!r}")
    steps = [k for k in STEP_FIELDS if item.get(k) is not None]
    if len(steps) > 1:
        raise ScheduleError(f"{where}: give one of apply, weights, command; got {', '.join(steps)}")
    return Phase(name=name.strip(), duration_s=float(duration),
                 apply=_apply(where, item.get("apply"), base_dir, is_file),
                 command=_command(where, item.get("command")),
                 weights=_weights(where, item.get("weights")))


def _apply(where: str, value: Any, base_dir: Path, is_file: Callable[[Path], bool]) -> tuple[str, ...]:
    if value is None:
        return ()
    files = [value] if isinstance(value, str) else value
    if not isinstance(files, list) or not files or not all(isinstance(f, str) and f.strip() for f in files):
        raise ScheduleError(f"{where}: apply: expected a file or a non-empty list of files, got {value!r}")
    paths = []
    for file in files:
        path = Path(file) if Path(file).is_absolute() else base_dir / file
        if not is_file(path):
            raise ScheduleError(f"{where}: apply: no such file {path}")
        paths.append(str(path))
    return tuple(paths)


def _command(where: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ScheduleError(f"{where}: command: expected a non-empty string, got {value!r}")
    try:
        shlex.split(value)
    except ValueError as err:
        raise ScheduleError(f"{where}: command: {err} in {value!r}") from None
    return value


def _weights(where: str, value: Any) -> dict[str, int] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise ScheduleError(f"{where}: weights: expected a mapping subset: percent, e.g. {{v1: 90, v2: 10}}, "
                            f"got {value!r}")
    weights: dict[str, int] = {}
    for subset, weight in value.items():
        if not isinstance(subset, str) or not subset.strip():
            raise ScheduleError(f"{where}: weights: subset names are strings, got {subset!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight != int(weight) \
                or not 0 <= weight <= 100:
            raise ScheduleError(f"{where}: weights: {subset}: expected a whole percent 0..100, got {weight!r}")
        weights[subset.strip()] = int(weight)
    if sum(weights.values()) != 100:
        raise ScheduleError(f"{where}: weights: must sum to 100, got {sum(weights.values())} ({weights})")
    return weights


# ---------------------------------------------------------------- what a step routes


def configured_split(service: Mapping[str, Any] | None) -> dict[str, float]:
    """The weights every call gets, when the VirtualService has one unconditional route (else unknown: {})."""
    if service is None:
        return {}
    http = service.get("spec", {}).get("http") or []
    if len(http) != 1 or http[0].get("match"):
        return {}
    route = http[0].get("route") or []
    default = 100 if len(route) == 1 else 0
    return {d["destination"].get("subset", ""): float(d.get("weight", default)) for d in route}


def routed_subsets(service: Mapping[str, Any] | None) -> frozenset[str] | None:
    """The subsets some call can be sent to (weight above 0 on any route, header routes included); None: unknown."""
    if service is None:
        return None
    found: set[str] = set()
    for http in service.get("spec", {}).get("http") or []:
        route = http.get("route") or []
        default = 100 if len(route) == 1 else 0
        found |= {d["destination"].get("subset", "") for d in route if float(d.get("weight", default)) > 0}
    return frozenset(found)


def parse_bounds(text: str) -> tuple[dict[str, int], int | None]:
    """``--server-max-in-flight``: ``N`` (every version) or ``v1=4,v2=2`` → ({version: N}, default or None)."""
    bounds: dict[str, int] = {}
    default: int | None = None
    for item in filter(None, (part.strip() for part in text.split(","))):
        subset, sep, number = item.rpartition("=")
        if not number.strip().isdigit() or (sep and not subset.strip()):
            raise ValueError(f"--server-max-in-flight: expected N or SUBSET=N,..., got {item!r}")
        if sep:
            bounds[subset.strip()] = int(number)
        else:
            default = int(number)
    if not bounds and default is None:
        raise ValueError("--server-max-in-flight: expected N or SUBSET=N,...")
    return bounds, default


def admission_warning(reachable: Sequence[tuple[str, frozenset[str] | None]], robots: int, in_flight_per_robot: int,
                      bounds: Mapping[str, int], default_bound: int | None, assumed: bool) -> str | None:
    """One line when more calls can reach a version at once than it admits (its ``--max-in-flight`` x replicas).

    ``reachable``: per phase, the versions its routing can send a call to (None: unknown, the phase before's
    carries on). A weighted split is drawn per call, so every robot can land on the same version at once:
    ``robots x in_flight_per_robot`` is what a version with any weight must admit. Bound 0 means unbounded.
    """
    peak = robots * in_flight_per_robot
    over: dict[str, list[str]] = {}
    current: frozenset[str] | None = None
    for phase, versions in reachable:
        current = versions if versions is not None else current
        for version in sorted(current or ()):
            bound = bounds.get(version, default_bound)
            if bound is not None and 0 < bound < peak:
                over.setdefault(version, []).append(phase)
    if not over:
        return None
    parts = "; ".join(f"{v} (bound {bounds.get(v, default_bound)}) in {', '.join(phases)}"
                      for v, phases in sorted(over.items()))
    source = (f"assumed: the services' default --max-in-flight {default_bound}; state yours with "
              "--server-max-in-flight" if assumed else "from --server-max-in-flight")
    return (f"up to {peak} calls at once ({robots} robots x {in_flight_per_robot} in flight) can reach {parts} "
            f"[{source}]: calls beyond a bound fail RESOURCE_EXHAUSTED and the experiment measures admission, "
            f"not routing; start each version's servers with --max-in-flight {peak} or more (headroom: a call given "
            "up still runs to its end), add replicas, or run fewer robots")
