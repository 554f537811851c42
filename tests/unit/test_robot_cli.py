"""The robot client's command line: which detectors ``replay``, ``run`` and ``sim`` ask for (no servers started)."""

from __future__ import annotations

import pytest

from protos import detection_pb2 as legacy
from protos import detection_v1_pb2 as v1
from robotclient.__main__ import build_parser, offload_config
from robotclient.runtime.model import CapturedFrame
from robotclient.runtime.offload import OffloadConfig
from robotclient.runtime.wire import DIALECTS, EncodedFrame

COMMANDS = ("replay", "run", "sim")
ENCODED = EncodedFrame(jpeg=b"\xff\xd8not-really-a-jpeg\xff\xd9", scale_x=1.0, scale_y=1.0)


@pytest.fixture(autouse=True)
def _no_tls_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OBJECTDETECTION_HOST", "OBJECTDETECTION_TLS_CA", "OBJECTDETECTION_TLS_CERT",
                 "OBJECTDETECTION_TLS_KEY", "OBJECTDETECTION_TLS_SERVER_NAME"):
        monkeypatch.delenv(name, raising=False)


def config(*argv: str) -> OffloadConfig:
    return offload_config(build_parser().parse_args(list(argv)), "127.0.0.1:1")


def wire_request(offload: OffloadConfig) -> object:
    frame = CapturedFrame(number=1, captured_at=1.0, image=None)  # type: ignore[arg-type]
    return DIALECTS[offload.dialect]().request(frame, ENCODED, offload.request)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(("flags", "engines"), [
    ((), ("yolo",)),  # follows a person by default: YOLO only
    (("-t", "person"), ("yolo",)),
    (("-t", "face"), ("face",)),
    (("--target-class", "car"), ("yolo",)),
    (("-t", "person", "--engines", "yolo,face"), ("yolo", "face")),  # draw faces while following a person
    (("-t", "face", "--engines", "yolo"), ("yolo",)),  # an explicit list wins, even a useless one
    (("--engines", "all"), ("face", "yolo")),
])
def test_engines_asked_follow_the_target_unless_named(command: str, flags: tuple[str, ...],
                                                      engines: tuple[str, ...]) -> None:
    offload = config(command, *flags)
    assert offload.request.engines == engines
    request = wire_request(offload)
    assert isinstance(request, v1.DetectRequest)
    assert [v1.Engine.Name(e) for e in request.engines] == [f"ENGINE_{e.upper()}" for e in engines]


@pytest.mark.parametrize(("flags", "wantface", "wantyolo"), [
    ((), 0, 1),
    (("-t", "face"), 1, 0),
    (("-t", "person", "--engines", "yolo,face"), 1, 1),
])
def test_the_legacy_dialect_asks_for_the_same_detectors(flags: tuple[str, ...], wantface: int,
                                                        wantyolo: int) -> None:
    request = wire_request(config("replay", "--legacy", *flags))
    assert isinstance(request, legacy.ObjectDetectionRequest)
    assert (request.wantface, request.wantyolo) == (wantface, wantyolo)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(("value", "message"), [
    ("lidar", "argument --engines: unknown engine(s) ['lidar']; choose from ['face', 'yolo'] or 'all'"),
    ("", "argument --engines: no engine named"),
])
def test_a_wrong_engine_name_is_a_one_line_usage_error(command: str, value: str, message: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([command, "--engines", value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"robotclient {command}: error: {message}" in errors[0], err


@pytest.mark.parametrize("command", COMMANDS)
def test_help_tells_the_default(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([command, "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "default: the one that finds -t: face for -t face, yolo for any other class" in text
