"""Contract: every SDK name, keyword and constant ``RoboMasterRobot`` uses exists in the real ``robomaster`` package.

The SDK has CPython 3.8 wheels only, so the check runs in a cached Python 3.8 virtualenv
(``~/.cache/robomesh/py38-robomaster``, created once with ``pip install robomaster==SDK_VERSION``) and
reports back as JSON. No robot is needed. The unit tests' fake SDK mirrors the constant values checked here.

The Pi gets ``robomaster==PI_SDK_VERSION`` (``make robot-pi``: the newest with an aarch64 wheel), which cannot
be imported here: its wheel is downloaded once (cached under ``$ROBOMESH_CACHE`` or ``~/.cache/robomesh``)
and its Python sources are read with ``ast`` against the same lists of calls, constants and properties.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from robotclient.runtime.drivers.robomaster_driver import (
    ARMOR_SIDES,
    EFFECTS,
    SDK_CONSTANTS,
    SDK_VERSION,
    SOUNDS,
    SdkBridge,
)
from robotclient.runtime.model import Side

PY38 = Path(os.environ.get("ROBOMESH_PY38", "/root/.pyenv/versions/3.8.18/bin/python3.8"))
VENV = Path.home() / ".cache" / "robomesh" / "py38-robomaster"

# Each call the driver makes, as (module, attribute path, positional args, keyword args); bound with
# inspect.signature(...).bind against the real function (``self`` included for methods).
CALLS: list[tuple[str, str, list[Any], dict[str, Any]]] = [
    ("robomaster.robot", "Robot.__init__", [], {}),
    ("robomaster.robot", "Robot.initialize", [], {"conn_type": "rndis"}),
    ("robomaster.robot", "Robot.set_robot_mode", [], {"mode": "chassis_lead"}),
    ("robomaster.robot", "Robot.play_sound", [0x104], {"times": 1}),
    ("robomaster.robot", "Robot.close", [], {}),
    ("robomaster.chassis", "Chassis.drive_speed", [], {"x": 0.1, "y": 0.0, "z": 10.0, "timeout": 0.5}),
    ("robomaster.chassis", "Chassis.drive_wheels", [], {"w1": 0, "w2": 0, "w3": 0, "w4": 0}),
    ("robomaster.chassis", "Chassis.sub_position", [], {"cs": 0, "freq": 5, "callback": None}),
    ("robomaster.chassis", "Chassis.sub_velocity", [], {"freq": 5, "callback": None}),
    ("robomaster.chassis", "Chassis.unsub_position", [], {}),
    ("robomaster.chassis", "Chassis.unsub_velocity", [], {}),
    (
        "robomaster.led",
        "Led.set_led",
        [],
        {"comp": "bottom_all", "r": 1, "g": 2, "b": 3, "effect": "flash", "freq": 6},
    ),
    ("robomaster.armor", "Armor.set_hit_sensitivity", [], {"comp": "all", "sensitivity": 5}),
    ("robomaster.armor", "Armor.sub_hit_event", [], {"callback": None}),
    ("robomaster.armor", "Armor.unsub_hit_event", [], {}),
    ("robomaster.action", "Action.wait_for_completed", [], {"timeout": 3.0}),
]

# Module constants the driver (and the unit tests' fake SDK) rely on, with their expected values.
CONSTANTS: dict[str, Any] = {
    "robomaster.robot.CHASSIS_LEAD": "chassis_lead",
    "robomaster.led.COMP_BOTTOM_ALL": "bottom_all",
    "robomaster.armor.COMP_ALL": "all",
    **{f"robomaster.led.EFFECT_{name.upper()}": name for name in EFFECTS},
    **{f"robomaster.robot.{sound}": None for sound in SOUNDS.values()},  # None: must exist, any value
}

# Runs under Python 3.8 inside the venv; prints one JSON object.
CHECK_SCRIPT = r"""
import importlib, inspect, json, struct, sys

spec = json.loads(sys.argv[1])
problems, found = [], {}

for module_name, path, args, kwargs in spec["calls"]:
    try:
        obj = importlib.import_module(module_name)
        for part in path.split("."):
            obj = getattr(obj, part)
        inspect.signature(obj).bind(None, *args, **kwargs)
    except Exception as exc:
        problems.append("%s.%s%r%r: %s: %s" % (module_name, path, tuple(args), kwargs, type(exc).__name__, exc))

for dotted, expected in spec["constants"].items():
    module_name, _, attr = dotted.rpartition(".")
    try:
        value = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:
        problems.append("%s: %s: %s" % (dotted, type(exc).__name__, exc))
        continue
    found[dotted] = value
    if expected is not None and value != expected:
        problems.append("%s == %r, expected %r" % (dotted, value, expected))

robot = importlib.import_module("robomaster.robot")
for prop in ("chassis", "led", "armor"):
    if not isinstance(getattr(robot.Robot, prop, None), property):
        problems.append("robomaster.robot.Robot.%s is not a property" % prop)

armor = importlib.import_module("robomaster.armor")
chassis = importlib.import_module("robomaster.chassis")
id2comp = {i: armor.Armor.id2comp(i) for i in range(1, 7)}

# Callback payloads: what the SDK passes to the driver's callbacks (data_info() of each subject).
hit = armor.ArmorHitEvent()
hit.decode((3, armor.HIT_TYPE_WATER_ATTACK, 100))
position = chassis.PositionSubject(1)
position.decode(struct.pack("<fff", 1.0, 2.0, 3.0))
velocity = chassis.VelocitySubject()
velocity.decode(struct.pack("<ffffff", 0.1, 0.2, 0.3, 0.4, 0.5, 0.6))

print(json.dumps({
    "python": sys.version.split()[0],
    "sdk": importlib.import_module("robomaster.version").__version__,
    "problems": problems,
    "constants": found,
    "id2comp": id2comp,
    "hit_payload": list(hit.data_info()),
    "position_payload_len": len(position.data_info()),
    "velocity_payload_len": len(velocity.data_info()),
}))
"""

COMP_SIDES = {
    "bottom_back": Side.BACK,
    "bottom_front": Side.FRONT,
    "bottom_left": Side.LEFT,
    "bottom_right": Side.RIGHT,
    "top_left": Side.LEFT,
    "top_right": Side.RIGHT,
}


def _venv_python() -> Path:
    """The cached SDK venv's interpreter, creating the venv once (atomically, so a failed try leaves nothing)."""
    python = VENV / "bin" / "python"
    if python.exists():
        probe = subprocess.run([str(python), "-c", "import robomaster"], capture_output=True, text=True, timeout=120)
        if probe.returncode == 0:
            return python
        shutil.rmtree(VENV, ignore_errors=True)
    VENV.parent.mkdir(parents=True, exist_ok=True)
    building = VENV.with_name(f"{VENV.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    started = time.monotonic()
    try:
        subprocess.run([str(PY38), "-m", "venv", str(building)], check=True, capture_output=True, timeout=120)
        install = subprocess.run(
            [str(building / "bin" / "python"), "-m", "pip", "install", "-q", f"robomaster=={SDK_VERSION}"],
            capture_output=True,
            text=True,
            timeout=240,
        )
        if install.returncode != 0:
            log = "\n".join(line for line in install.stderr.splitlines() if "is ignored" not in line)
            pytest.skip(f"cannot install robomaster=={SDK_VERSION} under Python 3.8 (PyPI unreachable?): {log[-800:]}")
        seconds = time.monotonic() - started
        (building / "robomesh-created.json").write_text(json.dumps({"seconds": round(seconds, 1)}))
        # The venv's scripts embed its path, but `python -m pip` and the interpreter symlink work after a rename.
        with contextlib.suppress(OSError):  # another run finished first: use its venv
            building.rename(VENV)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    print(f"created {VENV} in {seconds:.1f} s", file=sys.stderr)
    return python


@pytest.fixture(scope="module")
def sdk_report() -> dict[str, Any]:
    if not PY38.exists():
        pytest.skip(f"Python 3.8 not found at {PY38} (set ROBOMESH_PY38): the robomaster SDK has cp38 wheels only")
    python = _venv_python()
    spec = json.dumps({"calls": CALLS, "constants": CONSTANTS})
    result = subprocess.run([str(python), "-c", CHECK_SCRIPT, spec], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_sdk_version_and_interpreter(sdk_report: dict[str, Any]) -> None:
    assert sdk_report["sdk"] == SDK_VERSION
    assert sdk_report["python"].startswith("3.8.")


@pytest.mark.slow
def test_every_call_and_constant_the_driver_uses_exists(sdk_report: dict[str, Any]) -> None:
    assert sdk_report["problems"] == []
    assert set(sdk_report["constants"]) == set(CONSTANTS)


@pytest.mark.slow
def test_armor_ids_map_to_the_sides_the_driver_reports(sdk_report: dict[str, Any]) -> None:
    sdk_sides = {int(armor_id): COMP_SIDES[comp] for armor_id, comp in sdk_report["id2comp"].items()}
    assert sdk_sides == ARMOR_SIDES


@pytest.mark.slow
def test_callback_payloads_have_the_shapes_the_driver_unpacks(sdk_report: dict[str, Any]) -> None:
    assert sdk_report["hit_payload"] == [3, "water"]  # (armor_id, hit_type)
    assert sdk_report["position_payload_len"] == 3  # (x, y, z)
    assert sdk_report["velocity_payload_len"] == 6  # (vgx, vgy, vgz, vbx, vby, vbz)


@pytest.mark.slow
def test_bridge_runs_the_real_sdk_and_resolves_every_driver_constant() -> None:
    """``rmbridge.py`` under the venv's Python 3.8 imports the real SDK and resolves the driver's constants.

    Only ``hello`` and ``check``: no robot is created, so nothing tries to connect.
    """
    if not PY38.exists():
        pytest.skip(f"Python 3.8 not found at {PY38} (set ROBOMESH_PY38): the robomaster SDK has cp38 wheels only")
    python = _venv_python()
    bridge = SdkBridge(str(python), start_timeout=120.0, call_timeout=60.0)
    try:
        assert bridge.info["sdk"] == SDK_VERSION
        assert bridge.info["python"].startswith("3.8.")
        constants = bridge.check(SDK_CONSTANTS)
    finally:
        bridge.close()
    assert bridge.process.returncode == 0
    assert {f"robomaster.{name}" for name in constants} == set(CONSTANTS)  # the bridge checks what the driver uses
    for name, value in constants.items():
        expected = CONSTANTS[f"robomaster.{name}"]
        assert expected is None or value == expected, name


# ---------------------------------------------------------------- the Pi's SDK, read from its aarch64 wheel

PI_SDK_VERSION = "0.1.1.62"  # the newest robomaster with an aarch64 wheel (cp38, manylinux2014): robot-pi's
PROPERTIES = ("robomaster.robot.Robot.chassis", "robomaster.robot.Robot.led", "robomaster.robot.Robot.armor")


def _cache_root() -> Path:
    return Path(os.environ.get("ROBOMESH_CACHE") or Path.home() / ".cache" / "robomesh")


def _pi_wheel() -> Path:
    """The aarch64 wheel, downloaded once into the cache (atomically: a failed try leaves nothing)."""
    folder = _cache_root() / "sdk-wheels"
    pattern = f"robomaster-{PI_SDK_VERSION}-cp38-cp38-*aarch64*.whl"
    found = sorted(folder.glob(pattern))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:", "--platform",
             "manylinux2014_aarch64", "--python-version", "38", f"robomaster=={PI_SDK_VERSION}", "-d", scratch],
            capture_output=True, text=True, timeout=240)
        wheels = sorted(Path(scratch).glob(pattern))
        if done.returncode != 0 or not wheels:
            log = "\n".join(line for line in done.stderr.splitlines() if "is ignored" not in line)
            pytest.skip(f"cannot download robomaster=={PI_SDK_VERSION} for aarch64 (PyPI unreachable?): {log[-800:]}")
        target = folder / wheels[0].name
        wheels[0].replace(target)
    return target


def _signature(function: ast.FunctionDef) -> inspect.Signature:
    """The signature ``def`` declares (defaults stand as their source text), as inspect would build it."""
    args = function.args
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    def value(default: ast.expr | None) -> Any:
        return inspect.Parameter.empty if default is None else ast.unparse(default)

    parameters = []
    for index, (arg, default) in enumerate(zip(positional, defaults, strict=True)):
        kind = inspect.Parameter.POSITIONAL_ONLY if index < len(args.posonlyargs) else (
            inspect.Parameter.POSITIONAL_OR_KEYWORD)
        parameters.append(inspect.Parameter(arg.arg, kind, default=value(default)))
    if args.vararg:
        parameters.append(inspect.Parameter(args.vararg.arg, inspect.Parameter.VAR_POSITIONAL))
    for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        parameters.append(inspect.Parameter(arg.arg, inspect.Parameter.KEYWORD_ONLY, default=value(default)))
    if args.kwarg:
        parameters.append(inspect.Parameter(args.kwarg.arg, inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(parameters)


class SdkSource:
    """A package's modules parsed from a wheel: classes, methods (through base classes) and module constants."""

    def __init__(self, wheel: Path) -> None:
        with zipfile.ZipFile(wheel) as archive:
            self.modules = {name.removesuffix(".py").replace("/", "."): ast.parse(archive.read(name), name)
                            for name in archive.namelist() if name.startswith("robomaster/") and name.endswith(".py")}

    def cls(self, module: str, name: str) -> tuple[str, ast.ClassDef] | None:
        tree = self.modules.get(module)
        found = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name] if tree else []
        return (module, found[-1]) if found else None

    def method(self, module: str, class_name: str, name: str) -> ast.FunctionDef | None:
        """``name`` on the class or the first base class (same module, or ``from . import mod``'s mod.Class)."""
        located = self.cls(module, class_name)
        if located is None:
            return None
        home, node = located
        for item in node.body:
            if isinstance(item, ast.FunctionDef) and item.name == name:
                return item
        for base in node.bases:
            if isinstance(base, ast.Name):
                found = self.method(home, base.id, name)
            elif isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name):
                found = self.method(f"robomaster.{base.value.id}", base.attr, name)
            else:
                found = None
            if found is not None:
                return found
        return None

    def constant(self, dotted: str) -> tuple[bool, Any]:
        """(assigned at module level, its literal value or None)."""
        module, _, name = dotted.rpartition(".")
        for node in self.modules.get(module, ast.Module(body=[], type_ignores=[])).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                try:
                    return True, ast.literal_eval(node.value) if node.value is not None else None
                except ValueError:
                    return True, None
        return False, None


def source_problems(sdk: SdkSource) -> list[str]:
    """What the driver uses (CALLS, CONSTANTS, PROPERTIES) and the SDK's source does not declare so."""
    problems = []
    for module, path, args, kwargs in CALLS:
        class_name, _, method = path.partition(".")
        if module not in sdk.modules:
            problems.append(f"{module}: no such module")
            continue
        if sdk.cls(module, class_name) is None:
            problems.append(f"{module}.{class_name}: no such class")
            continue
        function = sdk.method(module, class_name, method)
        if function is None:
            if method != "__init__":  # object.__init__ takes no arguments
                problems.append(f"{module}.{path}: no such method")
            elif args or kwargs:
                problems.append(f"{module}.{path}: takes no arguments")
            continue
        try:
            _signature(function).bind(None, *args, **kwargs)
        except TypeError as exc:
            problems.append(f"{module}.{path}{tuple(args)!r}{kwargs!r}: {exc}")
    for dotted, expected in CONSTANTS.items():
        assigned, value = sdk.constant(dotted)
        if not assigned:
            problems.append(f"{dotted}: not assigned")
        elif expected is not None and value != expected:
            problems.append(f"{dotted} == {value!r}, expected {expected!r}")
    for dotted in PROPERTIES:
        module, class_name, name = dotted.rsplit(".", 2)
        function = sdk.method(module, class_name, name)
        if function is None or not any(isinstance(d, ast.Name) and d.id == "property" for d in function.decorator_list):
            problems.append(f"{dotted} is not a property")
    return problems


@pytest.fixture(scope="module")
def pi_sdk() -> SdkSource:
    return SdkSource(_pi_wheel())


@pytest.mark.slow
def test_the_pi_sdk_declares_every_call_constant_and_property_the_driver_uses(pi_sdk: SdkSource) -> None:
    assert {"robomaster.robot", "robomaster.chassis", "robomaster.led", "robomaster.armor"} <= set(pi_sdk.modules)
    assert source_problems(pi_sdk) == []


@pytest.mark.slow
def test_the_source_check_finds_what_is_missing(pi_sdk: SdkSource) -> None:
    """The static check is not vacuous: a renamed keyword, a missing method and a wrong constant are reported."""
    robot = pi_sdk.method("robomaster.robot", "Robot", "initialize")
    assert robot is not None and "conn_type" in _signature(robot).parameters
    # Found through the base class (chassis.ChassisMoveAction(action.Action)).
    assert pi_sdk.method("robomaster.chassis", "ChassisMoveAction", "wait_for_completed") is not None
    assert pi_sdk.constant("robomaster.robot.CHASSIS_LEAD") == (True, "chassis_lead")
    assert pi_sdk.constant("robomaster.robot.NO_SUCH_THING") == (False, None)
    assert pi_sdk.method("robomaster.chassis", "Chassis", "no_such_method") is None
    drive = pi_sdk.method("robomaster.chassis", "Chassis", "drive_speed")
    assert drive is not None
    with pytest.raises(TypeError):
        _signature(drive).bind(None, speed=1.0)  # a keyword the SDK does not take
