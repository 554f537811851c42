"""``robotclient experiment``: N simulated robots against the mesh while the routing changes under them.

The command line, in rooms:

- ``schedule``: the schedule checked whole (pure), the admission warning;
- ``steps``: each phase's routing step read beforehand, applied between
  phases: on a cluster by a command (``kubectl apply -f {file}``), locally by
  switching the routes of a generated Envoy (filesystem RDS, no restart);
- ``robots``: the simulated robots (closed loop, one call in flight each);
- ``runner``: the phases run and watched, stopped cleanly on Ctrl-C/SIGTERM
  or an error;
- ``experiment_report`` (pure), ``propagation`` (pure), ``experiment_plot``:
  the figures; ``experiment_output``: replies.csv as the replies come,
  summary.json and plot.png at each phase's end and at the end.

Here: the arguments checked (one line, exit 2, before anything starts), the
run, its outputs written however it ends.
"""


from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import signal
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robotclient import sampledata
from robotclient.lab import envoyconf
from robotclient.lab.envoyproc import EnvoyProcess, load_documents
from robotclient.lab.experiment_output import BackgroundPlot, ReplyCsv, StopSignals, write_snapshot
from robotclient.lab.experiment_report import phase_line
from robotclient.lab.robots import IN_FLIGHT_PER_ROBOT, STUBS, LoadConfig, load_frames
from robotclient.lab.runner import Outcome, Runner, RunResult
from robotclient.lab.schedule import (
    SERVICES_DEFAULT_MAX_IN_FLIGHT,
    Phase,
    ScheduleError,
    admission_warning,
    one_line,
    parse_bounds,
    parse_schedule,
    routed_subsets,
)
from robotclient.lab.steps import Applier, CommandApplier, EnvoyApplier, resolve_steps
from robotclient.runtime.model import CapturedFrame
from robotclient.runtime.wire import ENGINES


def load_schedule(path: Path) -> list[Phase]:
    """The ``--schedule`` file, parsed and checked whole (``ScheduleError`` with a one-line message)."""
    import yaml  # the lab extra: imported when used, so that `--help` needs none

    try:
        document = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ScheduleError(f"cannot read it: {err.strerror or one_line(err)}") from None
    except yaml.YAMLError as err:
        raise ScheduleError(f"not valid YAML: {' '.join(str(err).split())}") from None
    return parse_schedule(document, path.parent)


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=None,
                        help="HOST:PORT of the mesh entry (ingress gateway, NodePort, or a local server)")
    parser.add_argument("--service", choices=sorted(STUBS), default="objectdetection",
                        help="which v1 service to call (yolodetection: straight at the detectors, as behind a "
                             "local Envoy)")
    parser.add_argument("--robots", type=int, default=3, help="simulated robots (threads, one channel each)")
    parser.add_argument("--robot-ids", default=None, help="comma-separated x-robot-id values (default 1..N)")
    parser.add_argument("--fps", type=float, default=5.0, help="frames per second per robot (closed loop)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--duration", type=float, default=None, help="seconds (without --schedule)")
    group.add_argument("--frames", type=int, default=None, help="calls per robot, then stop")
    parser.add_argument("--clip", type=Path, default=None, help="video whose frames are sent (default vtest.avi)")
    parser.add_argument("--width", type=int, default=640, help="frames scaled to this width before JPEG encoding")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--deadline", type=float, default=1.0, help="per-call deadline, seconds (the robot's)")
    parser.add_argument("--api", choices=("v1",), default="v1", help="wire protocol (v1 only: served_by needed)")
    parser.add_argument("--engines", choices=("yolo", "face", "all"), default="all", help="detectors asked for")
    parser.add_argument("--window-s", type=float, default=5.0,
                        help="report window, seconds (laid out from each phase's start; a progress line each)")
    parser.add_argument("--schedule", type=Path, default=None, help="YAML phases, each applying a routing step")
    parser.add_argument("--apply-command", default="kubectl apply -f {file}",
                        help="how a step file is applied on a cluster ({file} is replaced)")
    parser.add_argument("--host", default="yolodetection", help="the Service host the steps route")
    parser.add_argument("--envoy-endpoints", default=None, metavar="SUBSET=HOST:PORT,...",
                        help="run locally: start a generated Envoy in front of these subset endpoints and switch its "
                             "routes between phases instead of running kubectl")
    parser.add_argument("--virtual-service", type=Path, default=None,
                        help="initial VirtualService file for the local Envoy (default: the first phase's step)")
    parser.add_argument("--server-max-in-flight", default=None, metavar="N|SUBSET=N,...",
                        help="what each version admits at once: its servers' --max-in-flight x replicas (0: no "
                             f"bound); default {SERVICES_DEFAULT_MAX_IN_FLIGHT}, the services' default with one "
                             "server per subset. Only checked: a warning when the robots can exceed it")
    parser.add_argument("--out", type=Path, required=True, help="output folder")


@dataclass(frozen=True)
class Plan:
    """Everything checked before the run starts."""

    phases: list[Phase]
    steps: list[Mapping[str, Any] | None]
    robot_ids: tuple[str, ...]
    engines: tuple[str, ...]
    endpoints: dict[str, envoyconf.Endpoint] | None
    initial: Mapping[str, Any] | None
    warnings: list[str]
    admission: dict[str, Any]


def plan_run(args: argparse.Namespace) -> Plan:
    """The arguments and the schedule, checked whole; ``ValueError`` (``ScheduleError``) with one line if wrong."""
    if args.robots < 1 or args.fps <= 0 or args.deadline <= 0 or args.window_s <= 0:
        raise ValueError("--robots must be >= 1, --fps, --deadline and --window-s > 0")
    if (args.duration is not None and args.duration <= 0) or (args.frames is not None and args.frames < 1):
        raise ValueError("--duration must be > 0 and --frames >= 1")
    if args.schedule is not None:
        if args.duration is not None or args.frames is not None:
            raise ValueError("--schedule sets the phases' durations: leave out --duration and --frames")
        try:
            phases = load_schedule(args.schedule)
        except ScheduleError as err:
            raise ScheduleError(f"{args.schedule}: {err}") from None
    else:
        duration = args.duration if args.duration is not None else (math.inf if args.frames else 30.0)
        phases = [Phase("run", duration)]
    robot_ids = tuple(i.strip() for i in args.robot_ids.split(",")) if args.robot_ids \
        else tuple(str(i + 1) for i in range(args.robots))
    if not all(robot_ids) or len(set(robot_ids)) != len(robot_ids):
        raise ValueError(f"--robot-ids must be distinct and non-empty, got {args.robot_ids!r}")
    endpoints = envoyconf.parse_endpoints(args.envoy_endpoints) if args.envoy_endpoints else None
    if endpoints is None and not args.server:
        raise ValueError("give --server HOST:PORT (or --envoy-endpoints to run locally)")
    if endpoints is not None and not endpoints:
        raise ValueError("--envoy-endpoints maps no subset")
    try:
        steps = resolve_steps(phases, args.host, endpoints)
    except ScheduleError as err:
        raise ScheduleError(f"{args.schedule}: {err}") from None
    initial: Mapping[str, Any] | None = None
    if endpoints is not None:
        if args.virtual_service is not None:
            try:
                initial = envoyconf.for_host(envoyconf.virtual_services(load_documents([args.virtual_service])),
                                             args.host)
            except (OSError, ValueError) as err:
                raise ValueError(f"--virtual-service {args.virtual_service}: {one_line(err)}") from None
        else:
            initial = steps[0]
        if initial is None:
            raise ValueError("the local Envoy needs routes: --virtual-service FILE or a first phase with "
                             "apply/weights")
    bounds, default = (parse_bounds(args.server_max_in_flight) if args.server_max_in_flight
                       else ({}, SERVICES_DEFAULT_MAX_IN_FLIGHT))
    reachable = [(p.name, routed_subsets(s if s is not None else (initial if i == 0 else None)))
                 for i, (p, s) in enumerate(zip(phases, steps, strict=True))]
    warning = admission_warning(reachable, len(robot_ids), IN_FLIGHT_PER_ROBOT, bounds, default,
                                assumed=args.server_max_in_flight is None)
    admission = {"robots": len(robot_ids), "in_flight_per_robot": IN_FLIGHT_PER_ROBOT,
                 "bounds": bounds, "default_bound": default, "assumed": args.server_max_in_flight is None}
    engines = tuple(sorted(ENGINES)) if args.engines == "all" else (args.engines,)
    return Plan(phases, steps, robot_ids, engines, endpoints, initial, [warning] if warning else [], admission)


def schedule_entry(phase: Phase) -> dict[str, Any]:
    """A phase as summary.json records it (an open-ended phase's duration as null: JSON has no infinity)."""
    entry = dataclasses.asdict(phase)
    entry["duration_s"] = phase.duration_s if math.isfinite(phase.duration_s) else None
    return entry


def _say(line: str) -> None:
    print(f"experiment: {line}", file=sys.stderr, flush=True)


def main_args(args: argparse.Namespace) -> int:
    """The CLI: mistakes in one line (exit 2) before anything starts; then the run, whose outputs are written
    however it ends; exit 0, 1 (an error), or 128 + the signal (130 for Ctrl-C, 143 for SIGTERM)."""
    try:
        plan = plan_run(args)
        config = LoadConfig(target=args.server or "", robot_ids=plan.robot_ids, fps=args.fps,
                            deadline_s=args.deadline, service=args.service, engines=plan.engines,
                            max_frames=args.frames)
        clip = args.clip or sampledata.fetch() / sampledata.SAMPLE_CLIP
        if not clip.is_file():
            raise ValueError(f"--clip {clip}: no such file")
        frames = load_frames(clip, 50, args.width, args.quality)
        args.out.mkdir(parents=True, exist_ok=True)
    except (ValueError, OSError) as err:
        _say(one_line(err))
        return 2
    except KeyboardInterrupt:
        _say("stopped by SIGINT before the run started")
        return 128 + signal.SIGINT
    for warning in plan.warnings:
        _say(f"warning: {warning}")
    with StopSignals() as signals:  # from here on Ctrl-C/SIGTERM end the run cleanly, never with a traceback
        return run_and_report(args, plan, config, frames, signals)


def run_and_report(args: argparse.Namespace, plan: Plan, config: LoadConfig,
                   frames: Sequence[tuple[CapturedFrame, Any]], signals: StopSignals) -> int:
    """Starts the local Envoy if asked, runs, writes replies.csv as it goes and summary.json and the plot at each
    phase's end and at the end, whatever ends the run."""
    meta: dict[str, Any] = {
        "target": args.server, "service": args.service, "robots": list(plan.robot_ids), "fps": args.fps,
        "deadline_s": args.deadline, "schedule": [schedule_entry(p) for p in plan.phases],
        "admission": plan.admission, "warnings": plan.warnings,
        "title": f"{len(plan.robot_ids)} robots at {args.fps:g} fps",
    }
    snapshot = functools.partial(write_snapshot, args.out, window_s=args.window_s)
    plotter = BackgroundPlot()
    envoy: EnvoyProcess | None = None
    with ReplyCsv(args.out / "replies.csv") as replies:
        try:
            if plan.endpoints is not None:
                assert plan.initial is not None
                (args.out / "envoy").mkdir(parents=True, exist_ok=True)
                envoy = EnvoyProcess(args.out / "envoy", args.host, plan.endpoints)
                envoy.start(plan.initial)
                config = dataclasses.replace(config, target=envoy.target)
                applier: Applier | None = EnvoyApplier(envoy)
            else:
                applier = None if args.schedule is None else CommandApplier(
                    args.host, Path(tempfile.mkdtemp(prefix="robomesh-steps-")), args.apply_command)
            meta.update(target=config.target, title=f"{meta['title']} -> {config.target}")
            runner = Runner(
                config, plan.phases, frames, applier, window_s=args.window_s, initial=plan.initial,
                sink=replies.write, progress=_say, stop_signal=lambda: signals.received,
                checkpoint=lambda records, spans: snapshot(records, spans, plotter=plotter,
                                                           meta={**meta, "outcome": {"status": "running"}}))
            result = runner.run()
        except Exception as err:  # the local Envoy did not start, ...: one line, no traceback
            result = RunResult([], [], Outcome("error", one_line(err)))
        finally:
            plotter.stop()
            if envoy is not None:
                envoy.stop()
    outcome = result.outcome
    try:
        summary = snapshot(result.records, result.spans, meta={**meta, "outcome": outcome.as_dict()})
    except (OSError, ValueError) as err:
        _say(f"could not write the summary or the plot: {one_line(err)}")
        return 1
    for phase in summary["phases"]:
        _say(phase_line(phase))
    if outcome.status != "completed":
        where = f" in phase {outcome.phase}" if outcome.phase else ""
        when = f" at {outcome.at_s:.1f} s" if outcome.at_s is not None else ""
        what = "interrupted" if outcome.status == "interrupted" else "error"
        _say(f"{what}{where}{when}: {outcome.message}; the replies so far are kept")
    _say(f"wrote {args.out / 'replies.csv'} ({len(result.records)} replies), {args.out / 'summary.json'}, "
         f"{args.out / 'plot.png'}")
    return outcome.exit_code
