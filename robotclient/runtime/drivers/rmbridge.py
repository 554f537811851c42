# ruff: noqa: UP006, UP007, UP035, UP045, RUF100
# This file must keep running on the SDK's CPython 3.8 while ruff targets 3.11: the UP rules above would rewrite
# type hints to 3.9/3.10+ syntax (list[int], X | None), so they are off here (RUF100: they fire only once such
# hints exist). The UP rules left on (f-strings, `class X:`) ask for 3.8-safe code; tests run this file on 3.8.
"""RoboMaster SDK bridge: runs the DJI ``robomaster`` SDK in its own CPython 3.8 for a client on Python 3.11+.

Why: the SDK has CPython 3.8 wheels only, the robot client needs 3.11. So the client starts this script
with the SDK's interpreter (``robotclient run --robot robomaster --sdk-python PATH``) and talks to it
over JSON lines on stdin/stdout. It needs only the standard library and ``robomaster``, and must stay
Python 3.8 compatible (no ``match``, no ``X | Y`` types, no builtin generics at runtime, no ``removeprefix``).

Design: the bridge is a dumb remote hand. The driver logic (LED table, armor sides, sound thread,
close order) stays in ``robomaster_driver.RoboMasterRobot``, which is handed a proxy (``BridgeSdk``)
that looks like the ``robomaster`` package and forwards each attribute call here. Paths are relative
to the one ``robomaster.robot.Robot`` the bridge owns (created on the first call, so ``hello`` and
``check`` never touch a robot).

Requests (one JSON object per line, ``id`` echoed in the reply)::

    {"id": 1, "op": "hello"}                               -> {"python", "sdk", "pid", "executable"}
    {"id": 2, "op": "check", "consts": ["led.EFFECT_ON"]}  -> {"constants": {...}, "missing": {...}}
    {"id": 3, "op": "call", "path": "chassis.drive_speed", "args": [], "kwargs": {"x": 0.1}}
    {"id": 4, "op": "call", "handle": 7, "path": "wait_for_completed", "kwargs": {"timeout": 3}}

Replies: ``{"id": n, "ok": true, "result": ...}`` or ``{"id": n, "ok": false, "error": "Type: message"}``.
Inside ``args``/``kwargs``: ``{"$const": "led.COMP_BOTTOM_ALL"}`` is resolved to the SDK's own object
(``robomaster.led.COMP_BOTTOM_ALL``: ``Led.set_led`` compares effects with ``is``), and
``{"$event": "hit"}`` becomes a callback that pushes ``{"event": "hit", "data": [armor_id, hit_type]}``
(likewise ``position``, ``velocity``). A result that is not JSON (an SDK ``Action``) is kept here and
returned as ``{"$handle": n}`` for later calls.

Calls run on a small thread pool, so a blocking ``wait_for_completed`` never holds up a drive command;
each client thread waits for its reply before its next call, so its own calls stay in order.
Safety: when stdin closes (the client exited or crashed) or on SIGTERM, the bridge stops the wheels
(``chassis.drive_wheels(0, 0, 0, 0)``) and closes the robot before exiting. SIGINT is ignored: a Ctrl-C
in the terminal reaches the whole process group, and the client must be the one to stop the robot.
Anything the SDK prints goes to stderr, so stdout carries only the protocol.
"""

import importlib
import json
import os
import platform
import signal
import sys
import threading
import traceback
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

STOP_WHEELS = {"w1": 0, "w2": 0, "w3": 0, "w4": 0}
WORKERS = 4
MAX_HANDLES = 64  # SDK actions kept for later calls; the oldest is dropped (the driver waits on each at once)


def log(message):
    sys.stderr.write(f"rmbridge: {message}\n")
    sys.stderr.flush()


def describe(exc):
    return f"{type(exc).__name__}: {exc}"


class Bridge:
    """The SDK side: resolves constants, owns the robot and the action handles, writes replies and events."""

    def __init__(self, out):
        self._out = out
        self._out_lock = threading.Lock()
        self._robot_lock = threading.Lock()
        self._robot = None
        self._robot_closed = False
        self._handles = OrderedDict()
        self._next_handle = 0

    # --- output ---------------------------------------------------------------------------------

    def send(self, message):
        line = json.dumps(message) + "\n"
        with self._out_lock:
            try:
                self._out.write(line)
                self._out.flush()
            except (OSError, ValueError):
                pass  # the client is gone; EOF on stdin follows and shuts us down

    def event_callback(self, name):
        def push(info):
            self.send({"event": name, "data": self.result(info)})

        return push

    # --- SDK ------------------------------------------------------------------------------------

    def hello(self):
        package = importlib.import_module("robomaster")
        try:
            version = importlib.import_module("robomaster.version").__version__
        except (ImportError, AttributeError):
            version = getattr(package, "__version__", None)
        return {"python": platform.python_version(), "sdk": version, "pid": os.getpid(), "executable": sys.executable}

    def const(self, name):
        module_name, _, attr = name.rpartition(".")
        if not module_name or attr.startswith("_"):
            raise ValueError(f"constant names are 'module.NAME', got {name!r}")
        return getattr(importlib.import_module("robomaster." + module_name), attr)

    def check(self, names):
        constants, missing = {}, {}
        for name in names:
            try:
                constants[name] = self.result(self.const(name), keep=False)
            except Exception as exc:
                missing[name] = describe(exc)
        return {"constants": constants, "missing": missing}

    def robot(self):
        with self._robot_lock:
            if self._robot is None:
                self._robot = importlib.import_module("robomaster.robot").Robot()
            return self._robot

    def decode(self, value):
        if isinstance(value, list):
            return [self.decode(item) for item in value]
        if isinstance(value, dict):
            if set(value) == {"$const"}:
                return self.const(value["$const"])
            if set(value) == {"$event"}:
                return self.event_callback(value["$event"])
            return dict((key, self.decode(item)) for key, item in value.items())
        return value

    def result(self, value, keep=True):
        """The value as JSON, or (an SDK object) as a handle for later calls."""
        try:
            json.dumps(value)
            return value
        except (TypeError, ValueError):
            if not keep:
                return repr(value)
        with self._robot_lock:
            self._next_handle += 1
            self._handles[self._next_handle] = value
            while len(self._handles) > MAX_HANDLES:
                self._handles.popitem(last=False)
            return {"$handle": self._next_handle}

    def call(self, request):
        if "handle" in request:
            with self._robot_lock:
                target = self._handles.get(request["handle"])
            if target is None:
                raise KeyError(f"unknown or expired handle {request['handle']!r}")
        else:
            target = self.robot()
        path = request.get("path", "")
        for part in path.split(".") if path else []:
            if part.startswith("_"):
                raise AttributeError(f"private attribute {part!r} not allowed")
            target = getattr(target, part)
        args = self.decode(request.get("args") or [])
        kwargs = self.decode(request.get("kwargs") or {})
        value = target(*args, **kwargs)
        if path == "close" and "handle" not in request:
            self._robot_closed = True
        return self.result(value)

    # --- requests -------------------------------------------------------------------------------

    def answer(self, request):
        op = request.get("op")
        try:
            if op == "hello":
                result = self.hello()
            elif op == "check":
                result = self.check(request.get("consts") or [])
            elif op == "call":
                result = self.call(request)
            else:
                raise ValueError(f"unknown op {op!r} (hello, check, call)")
        except Exception as exc:
            if op == "call":
                traceback.print_exc(file=sys.stderr)
            self.send({"id": request.get("id"), "ok": False, "error": describe(exc)})
            return
        self.send({"id": request.get("id"), "ok": True, "result": result})

    def dispatch(self, line, pool):
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
        except ValueError as exc:
            self.send({"id": None, "ok": False, "error": f"bad request line: {describe(exc)}"})
            return
        if request.get("op") == "call":
            pool.submit(self.answer, request)
        else:
            self.answer(request)

    def shutdown(self, pool):
        """The client is gone or done: stop the wheels now, let running calls end, stop again, close the robot."""
        robot = None if self._robot_closed else self._robot
        if robot is not None:
            self._quietly("stop", lambda: robot.chassis.drive_wheels(**STOP_WHEELS))
        pool.shutdown(wait=True)
        if robot is not None and not self._robot_closed:
            self._quietly("stop", lambda: robot.chassis.drive_wheels(**STOP_WHEELS))  # in case a drive was in flight
            self._quietly("close", robot.close)
            self._robot_closed = True

    def _quietly(self, what, step):
        try:
            step()
        except Exception:
            log(f"shutdown: {what} failed")
            traceback.print_exc(file=sys.stderr)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or os.curdir) == here:
        del sys.path[0]  # the driver modules next to this script must not shadow anything the SDK imports
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # prints from the SDK (or C code) land on stderr, never inside the protocol
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    bridge = Bridge(out)
    pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="rmbridge")
    try:
        for line in sys.stdin:
            if line.strip():
                bridge.dispatch(line, pool)
    finally:
        bridge.shutdown(pool)
    return 0


if __name__ == "__main__":
    sys.exit(main())
