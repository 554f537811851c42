"""The RoboMaster SDK bridge end to end: the real ``rmbridge.py`` in a subprocess, a fake ``robomaster`` package.

The fake (written to a temporary folder on the bridge's PYTHONPATH) mirrors the names and constant values
of the real SDK (checked by ``tests/contract``), records every call as a JSON line, and has three extra
hardware-fake methods the tests call through the bridge: ``armor.fake_hit``, ``chassis.fake_odometry``
(they fire the subscribed callbacks, as the robot would) and ``fake_sleep`` (a stuck SDK call).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from robotclient.__main__ import build_parser
from robotclient.runtime.drivers import RobotUnavailable, SafeRobot
from robotclient.runtime.drivers.base import edge_color, visible_color
from robotclient.runtime.drivers.robomaster_driver import (
    BRIDGE_SCRIPT,
    SDK_CONSTANTS,
    BridgeError,
    RoboMasterRobot,
    SdkBridge,
)
from robotclient.runtime.model import Command, HitEvent, Side

REPO = Path(__file__).resolve().parents[2]
PY38 = Path(os.environ.get("ROBOMESH_PY38", "/root/.pyenv/versions/3.8.18/bin/python3.8"))
INTERPRETERS = [
    pytest.param(sys.executable, id="this-python"),
    pytest.param(str(PY38), id="python3.8", marks=pytest.mark.skipif(not PY38.exists(), reason=f"no {PY38}")),
]

FAKE_SDK: dict[str, str] = {
    "__init__.py": "",
    "version.py": '__version__ = "0.0.0-fake"\n',
    "_fake.py": """
        import json, os, threading

        _lock = threading.Lock()

        class Const(str):
            \"\"\"A constant the SDK compares with `is`: only the module's own object passes.\"\"\"

        def record(name, **fields):
            fields["call"] = name
            with _lock, open(os.environ["FAKE_ROBOMASTER_LOG"], "a") as log:
                log.write(json.dumps(fields, default=repr) + "\\n")
    """,
    "led.py": """
        from robomaster._fake import Const
        COMP_BOTTOM_ALL = Const("bottom_all")
        EFFECT_ON, EFFECT_OFF, EFFECT_FLASH = Const("on"), Const("off"), Const("flash")
        EFFECT_BREATH, EFFECT_SCROLLING = Const("breath"), Const("scrolling")
        EFFECTS = (EFFECT_ON, EFFECT_OFF, EFFECT_FLASH, EFFECT_BREATH, EFFECT_SCROLLING)
    """,
    "armor.py": """
        from robomaster._fake import Const
        COMP_ALL = Const("all")
    """,
    "robot.py": """
        import os, time
        from robomaster import armor, led
        from robomaster._fake import Const, record

        CHASSIS_LEAD = Const("chassis_lead")
        SOUND_ID_RECOGNIZED, SOUND_ID_SCANNING = 0x104, 0x103

        class Action(object):
            def wait_for_completed(self, timeout=None):
                record("action.wait_for_completed", timeout=timeout)
                return True

        class Chassis(object):
            def __init__(self):
                self.callbacks = {}
            def drive_speed(self, x=0.0, y=0.0, z=0.0, timeout=None):
                record("chassis.drive_speed", x=x, y=y, z=z, timeout=timeout)
                return True
            def drive_wheels(self, w1=0, w2=0, w3=0, w4=0):
                record("chassis.drive_wheels", w1=w1, w2=w2, w3=w3, w4=w4)
                return True
            def sub_position(self, cs=0, freq=5, callback=None):
                record("chassis.sub_position", cs=cs, freq=freq)
                self.callbacks["position"] = callback
                return True
            def sub_velocity(self, freq=5, callback=None):
                record("chassis.sub_velocity", freq=freq)
                self.callbacks["velocity"] = callback
                return True
            def unsub_position(self):
                record("chassis.unsub_position")
                return True
            def unsub_velocity(self):
                record("chassis.unsub_velocity")
                return True
            def fake_odometry(self, x, y, yaw, vx, vy):
                self.callbacks["position"]((x, y, yaw))
                self.callbacks["velocity"]((vx, vy, 0.0, vx, vy, 0.0))

        class Led(object):
            def set_led(self, comp=led.COMP_BOTTOM_ALL, r=0, g=0, b=0, effect=led.EFFECT_ON, freq=1):
                own = comp is led.COMP_BOTTOM_ALL and any(effect is e for e in led.EFFECTS)
                record("led.set_led", comp=comp, r=r, g=g, b=b, effect=effect, freq=freq, sdk_objects=own)
                return True

        class Armor(object):
            def set_hit_sensitivity(self, comp="all", sensitivity=5):
                own = comp is armor.COMP_ALL
                record("armor.set_hit_sensitivity", comp=comp, sensitivity=sensitivity, sdk_objects=own)
                return True
            def sub_hit_event(self, callback=None):
                record("armor.sub_hit_event")
                self.callback = callback
                return True
            def unsub_hit_event(self):
                record("armor.unsub_hit_event")
                return True
            def fake_hit(self, armor_id):
                self.callback((armor_id, "water"))

        class Robot(object):
            def __init__(self):
                record("robot.__init__", pid=os.getpid())
                self.chassis, self.led, self.armor = Chassis(), Led(), Armor()
            def initialize(self, conn_type="sta"):
                print("fake robomaster: connecting over", conn_type)  # the real SDK prints too: not into the protocol
                record("robot.initialize", conn_type=conn_type)
                return os.environ.get("FAKE_ROBOMASTER_INIT") != "fail"
            def set_robot_mode(self, mode="free"):
                record("robot.set_robot_mode", mode=mode, sdk_objects=mode is CHASSIS_LEAD)
                return True
            def play_sound(self, sound_id, times=1):
                record("robot.play_sound", sound_id=sound_id, times=times)
                return Action()
            def close(self):
                record("robot.close")
            def fake_sleep(self, seconds):
                time.sleep(seconds)
    """,
}


@pytest.fixture
def fake_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Install the fake SDK for bridge subprocesses only (never importable in this interpreter); its call log."""
    package = tmp_path / "fake" / "robomaster"
    package.mkdir(parents=True)
    for name, text in FAKE_SDK.items():
        (package / name).write_text(textwrap.dedent(text))
    log = tmp_path / "calls.jsonl"
    log.touch()
    monkeypatch.setenv("PYTHONPATH", str(package.parent))
    monkeypatch.setenv("FAKE_ROBOMASTER_LOG", str(log))
    monkeypatch.delenv("FAKE_ROBOMASTER_INIT", raising=False)
    monkeypatch.delenv("ROBOMASTER_PYTHON", raising=False)
    monkeypatch.setitem(sys.modules, "robomaster", None)  # so the driver must take the bridge
    return log


def calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def named(log: Path, name: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in c.items() if k != "call"} for c in calls(log) if c["call"] == name]


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# --- the driver through the bridge ---------------------------------------------------------------


@pytest.mark.parametrize("python", INTERPRETERS)
def test_driver_runs_through_the_bridge_end_to_end(
    fake_log: Path, python: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="robotclient.runtime.drivers.robomaster_driver")
    robot = RoboMasterRobot("ap", sdk_python=python, drive_timeout=0.4, telemetry_freq=10, clock=lambda: 7.0)
    bridge = robot.bridge
    assert bridge is not None and bridge.info["sdk"] == "0.0.0-fake"
    assert bridge.info["python"].startswith("3.8.") or python == sys.executable

    assert [c["call"] for c in calls(fake_log)] == [
        "robot.__init__",
        "robot.initialize",
        "robot.set_robot_mode",
        "armor.set_hit_sensitivity",
        "armor.sub_hit_event",
        "chassis.sub_position",
        "chassis.sub_velocity",
    ]
    assert named(fake_log, "robot.initialize") == [{"conn_type": "ap"}]
    assert named(fake_log, "robot.set_robot_mode") == [{"mode": "chassis_lead", "sdk_objects": True}]
    assert named(fake_log, "armor.set_hit_sensitivity") == [{"comp": "all", "sensitivity": 5, "sdk_objects": True}]
    assert named(fake_log, "chassis.sub_position")[0]["freq"] == 10

    robot.drive(Command(x=0.3, y=-0.1, z=20.0))
    robot.stop()
    assert named(fake_log, "chassis.drive_speed") == [{"x": 0.3, "y": -0.1, "z": 20.0, "timeout": 0.4}]
    assert named(fake_log, "chassis.drive_wheels") == [{"w1": 0, "w2": 0, "w3": 0, "w4": 0}]

    robot.show_edge("10.0.0.1")
    robot.show_state("search")
    led = named(fake_log, "led.set_led")[-1]
    assert (led["comp"], led["effect"], led["freq"], led["sdk_objects"]) == ("bottom_all", "flash", 6, True)
    assert (led["r"], led["g"], led["b"]) == visible_color(edge_color("10.0.0.1"))

    robot._robot.armor.fake_hit(armor_id=3)  # the event is read before the reply: no waiting needed
    robot._robot.armor.fake_hit(armor_id=2)
    assert robot.take_hits() == [HitEvent(7.0, Side.LEFT, 3), HitEvent(7.0, Side.FRONT, 2)]
    robot._robot.chassis.fake_odometry(x=1.5, y=-0.5, yaw=30.0, vx=0.1, vy=0.2)
    assert robot.telemetry() == {"x": 1.5, "y": -0.5, "yaw": 30.0, "vgx": 0.1, "vgy": 0.2, "vx": 0.1, "vy": 0.2}

    robot.announce("acquired")  # play_sound returns an SDK Action: kept in the bridge, waited on by handle
    assert wait_until(lambda: named(fake_log, "action.wait_for_completed") == [{"timeout": 3.0}])
    assert named(fake_log, "robot.play_sound") == [{"sound_id": 0x104, "times": 1}]

    before_close = len(calls(fake_log))
    robot.close()
    robot.close()
    assert [c["call"] for c in calls(fake_log)[before_close:]] == [
        "chassis.drive_wheels",
        "led.set_led",
        "armor.unsub_hit_event",
        "chassis.unsub_position",
        "chassis.unsub_velocity",
        "robot.close",
    ]  # the driver's close order, and no second stop from the bridge: the robot was already closed
    assert calls(fake_log)[before_close + 1]["effect"] == "off"
    assert bridge.process.returncode == 0
    assert "not JSON" not in caplog.text  # the fake's print went to stderr, not into the protocol


def test_bridge_stops_and_closes_the_robot_when_its_stdin_closes(fake_log: Path) -> None:
    robot = RoboMasterRobot(sdk_python=sys.executable)
    assert robot.bridge is not None
    robot.drive(Command(x=0.3))
    process = robot.bridge.process
    assert process.stdin is not None
    process.stdin.close()  # what the bridge sees when the client goes away
    assert process.wait(timeout=10) == 0
    after_drive = [c["call"] for c in calls(fake_log)][-3:]
    assert after_drive == ["chassis.drive_wheels", "chassis.drive_wheels", "robot.close"]
    assert named(fake_log, "chassis.drive_wheels")[0] == {"w1": 0, "w2": 0, "w3": 0, "w4": 0}
    robot.close()  # every step fails (logged), none hangs


def test_bridge_stops_the_robot_when_the_client_process_is_killed(fake_log: Path, tmp_path: Path) -> None:
    client = textwrap.dedent(
        """
        import sys, time
        sys.modules["robomaster"] = None  # the fake is on PYTHONPATH: force the bridge
        from robotclient.runtime.drivers.robomaster_driver import RoboMasterRobot
        from robotclient.runtime.model import Command
        robot = RoboMasterRobot(sdk_python=sys.executable)
        robot.drive(Command(x=0.3))
        print(robot.bridge.process.pid, flush=True)
        time.sleep(60)
        """
    )
    env = {**os.environ, "PYTHONPATH": f"{os.environ['PYTHONPATH']}{os.pathsep}{REPO}"}
    proc = subprocess.Popen([sys.executable, "-c", client], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    bridge_pid = 0
    try:
        assert proc.stdout is not None
        bridge_pid = int(proc.stdout.readline())
        proc.send_signal(signal.SIGKILL)  # a crash: no close, no finally
        proc.wait(timeout=10)
        assert wait_until(lambda: "robot.close" in [c["call"] for c in calls(fake_log)], timeout=10)
        assert [c["call"] for c in calls(fake_log)][-4:] == [
            "chassis.drive_speed",
            "chassis.drive_wheels",
            "chassis.drive_wheels",
            "robot.close",
        ]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if bridge_pid and not pid_gone(bridge_pid) and not wait_until(lambda: pid_gone(bridge_pid), timeout=2):
            os.kill(bridge_pid, signal.SIGKILL)  # only if the bridge failed to exit by itself


def test_a_bridge_that_dies_gives_a_clear_error_and_safe_robot_still_closes(fake_log: Path) -> None:
    robot = RoboMasterRobot(sdk_python=sys.executable)
    assert robot.bridge is not None
    robot.bridge.process.kill()
    robot.bridge.process.wait()
    started = time.monotonic()
    with (
        pytest.raises(BridgeError, match=r"bridge \(pid \d+, .*\) exited with code -9"),
        SafeRobot(robot, start_watchdog=False) as safe,
    ):
        safe.drive(Command(x=0.2))
    assert safe.closed and time.monotonic() - started < 5.0
    with pytest.raises(BridgeError, match=r"exited with code -9|was closed"):
        robot.drive(Command(x=0.1))


def test_a_stuck_call_times_out_and_the_bridge_is_stopped(fake_log: Path) -> None:
    bridge = SdkBridge(sys.executable, call_timeout=0.3)
    with pytest.raises(BridgeError, match=r"did not answer fake_sleep within 0\.3 s"):
        bridge.call("fake_sleep", kwargs={"seconds": 3})
    assert bridge.process.returncode is not None
    assert named(fake_log, "chassis.drive_wheels")  # the bridge's own stop on EOF ran first
    with pytest.raises(BridgeError):
        bridge.call("chassis.drive_speed", kwargs={"x": 0.1})


# --- the protocol directly -----------------------------------------------------------------------


def test_hello_check_and_errors_without_a_robot(fake_log: Path) -> None:
    bridge = SdkBridge(sys.executable)
    try:
        assert bridge.info["python"] == ".".join(map(str, sys.version_info[:3]))
        assert bridge.info["pid"] == bridge.process.pid
        constants = bridge.check(SDK_CONSTANTS)
        assert constants == {
            "robot.CHASSIS_LEAD": "chassis_lead",
            "led.COMP_BOTTOM_ALL": "bottom_all",
            "armor.COMP_ALL": "all",
            "led.EFFECT_ON": "on",
            "led.EFFECT_OFF": "off",
            "led.EFFECT_FLASH": "flash",
            "led.EFFECT_BREATH": "breath",
            "led.EFFECT_SCROLLING": "scrolling",
            "robot.SOUND_ID_RECOGNIZED": 0x104,
            "robot.SOUND_ID_SCANNING": 0x103,
        }
        with pytest.raises(BridgeError, match=r"led\.EFFECT_RAINBOW"):
            bridge.check(["led.EFFECT_RAINBOW"])
        assert calls(fake_log) == []  # hello and check never create a robot
        with pytest.raises(BridgeError, match=r"chassis\.drive_speed failed in the RoboMaster SDK bridge: TypeError"):
            bridge.call("chassis.drive_speed", kwargs={"speed": 1})
        with pytest.raises(BridgeError, match="private attribute"):
            bridge.call("chassis.__class__")
        with pytest.raises(BridgeError, match="unknown op 'dance'"):
            bridge.request({"op": "dance"})
    finally:
        bridge.close()
    assert bridge.process.returncode == 0


def test_the_bridge_answers_a_bad_line_and_keeps_going(fake_log: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BRIDGE_SCRIPT)],
        input='not json\n{"id": 5, "op": "hello"}\n',
        capture_output=True,
        text=True,
        timeout=20,
    )
    replies = [json.loads(line) for line in proc.stdout.splitlines()]
    assert replies[0]["ok"] is False and "bad request line" in replies[0]["error"]
    assert replies[1]["id"] == 5 and replies[1]["ok"] is True
    assert proc.returncode == 0


# --- finding the SDK -----------------------------------------------------------------------------


def test_without_sdk_or_sdk_python_the_error_names_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "robomaster", None)
    monkeypatch.delenv("ROBOMASTER_PYTHON", raising=False)
    with pytest.raises(RobotUnavailable) as info:
        RoboMasterRobot()
    message = str(info.value)
    assert "--sdk-python" in message and "ROBOMASTER_PYTHON" in message and "CPython 3.8" in message


def test_a_python_without_the_sdk_is_robot_unavailable(fake_log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTHONPATH")
    with pytest.raises(RobotUnavailable, match=r"not usable: hello failed .*No module named 'robomaster'"):
        RoboMasterRobot(sdk_python=sys.executable)
    with pytest.raises(RobotUnavailable, match="cannot start the RoboMaster SDK bridge"):
        RoboMasterRobot(sdk_python="/nonexistent/python3.8")


def test_robot_not_found_via_the_env_variable_stops_the_bridge(fake_log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBOMASTER_PYTHON", sys.executable)
    monkeypatch.setenv("FAKE_ROBOMASTER_INIT", "fail")
    with pytest.raises(RobotUnavailable, match="no RoboMaster found over 'rndis'"):
        RoboMasterRobot()
    (created,) = named(fake_log, "robot.__init__")
    assert pid_gone(created["pid"])


def test_run_passes_sdk_python() -> None:
    args = build_parser().parse_args(["run", "--robot", "robomaster", "--sdk-python", "/opt/py38/bin/python"])
    assert args.sdk_python == "/opt/py38/bin/python"
    assert build_parser().parse_args(["run"]).sdk_python is None


@pytest.mark.skipif(not PY38.exists(), reason=f"no Python 3.8 at {PY38} (set ROBOMESH_PY38)")
def test_bridge_script_compiles_under_python_38(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            str(PY38),
            "-c",
            "import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], doraise=True)",
            str(BRIDGE_SCRIPT),
            str(tmp_path / "rmbridge.pyc"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
