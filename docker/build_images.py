#!/usr/bin/env python3
"""Builds the amd64 images of docker/ on this machine: ``make images`` (docs/images.md).

    python3 docker/build_images.py                      # every amd64 image that can be built here
    python3 docker/build_images.py facedetection yolodetection --report build/images.json

Standard library only (runs before ``make setup``). The images need nothing from ``make models``:
their Dockerfiles fetch and hash-check the YOLO model and the calibration clip themselves.

Engine: Docker when its daemon answers, else podman (Debian: ``apt-get install podman runc
mmdebstrap``), run as root with ``--runtime runc`` (crun fails on some kernels' cgroup layouts) and
``--cgroup-manager cgroupfs`` where no systemd runs, plus ``--ulimit`` values the kernel accepts.

Base: the Dockerfiles take ``PYTHON_IMAGE`` (default ``python:3.11-slim-bookworm`` from Docker Hub).
Where no image registry is reachable, a local Debian bookworm base with python3 3.11 is made with
``mmdebstrap`` from Debian's archive (about half a minute), cached as a tar in
``~/.cache/robomesh/images/`` and imported once; its name carries a digest of the recipe, so a
changed recipe makes a new base. pip inside the build then trusts this machine's CA bundle, which
is mounted read-only for each RUN (podman ``build -v``; nothing is baked in).

``--format docker`` keeps the HEALTHCHECK (the OCI image format has no field for it). The tag is
``localhost/robomesh/<image>:<version>`` (pyproject's version); rebuilding reuses the layer cache,
so an unchanged tree rebuilds in seconds and a changed one only from the first changed COPY.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("ROBOMESH_CACHE") or Path.home() / ".cache" / "robomesh") / "images"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# The kernel here refuses podman's default (unlimited) ulimits; these are plenty for the builds and servers.
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096")
REGISTRY_PROBE = ("registry-1.docker.io", 443)

# What the local base holds: python3 3.11 with venv and pip (the builder stages), CA certificates (pip),
# netbase (/etc/services, /etc/protocols), tzdata. No recommends; no man pages, locales or docs (dpkg's
# path-exclude stays in the image, so later apt installs skip them too). /etc/apt/apt.conf.d/docker-clean
# does what the official Debian images' file of that name does: an `apt-get update` in a Dockerfile leaves
# no 80 MB binary package caches and no downloaded .debs in the layer.
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates", "netbase", "tzdata")
APT_CLEAN = ('Dir::Cache::pkgcache "";', 'Dir::Cache::srcpkgcache "";', 'APT::Keep-Downloaded-Packages "false";',
             'Acquire::Languages "none";')
BASE_OPTIONS = (
    "--variant=minbase",
    '--aptopt=APT::Install-Recommends "false"',
    "--customize-hook=printf '%s\\n' " + " ".join(f"'{line}'" for line in APT_CLEAN)
    + ' > "$1/etc/apt/apt.conf.d/docker-clean" && rm -f "$1"/var/cache/apt/*.bin',
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
)
BASE_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ImageSpec:
    name: str
    amd64: bool = True
    registry_only: str = ""  # why the image needs bases from a registry (then it is skipped without one)


IMAGES = {
    spec.name: spec
    for spec in (
        ImageSpec("facedetection"),
        ImageSpec("yolodetection"),
        ImageSpec("objectdetection"),
        ImageSpec("yolodetection-openvino"),
        ImageSpec("yolodetection-cuda", registry_only="its bases nvidia/cuda:*-cudnn-runtime-ubuntu24.04 and "
                                                      "ubuntu:24.04 come from Docker Hub"),
        ImageSpec("robotclient", amd64=False),
    )
}
# The three services, what tests/deploy/test_containers.py starts.
SERVICES = ("facedetection", "yolodetection", "objectdetection")


class BuildError(RuntimeError):
    pass


def version() -> str:
    match = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    return match.group(1) if match else "dev"


def image_ref(name: str, tag: str | None = None) -> str:
    return f"localhost/robomesh/{name}:{tag or version()}"


# ---------------------------------------------------------------- the engine


@dataclass(frozen=True)
class Engine:
    """The container CLI and the flags this machine needs: ``argv(verb)`` is the command up to the verb's options."""

    program: str  # "podman" or "docker"
    global_flags: tuple[str, ...] = ()

    @property
    def is_podman(self) -> bool:
        return Path(self.program).name == "podman"

    def argv(self, verb: str, *args: str) -> list[str]:
        limits = ULIMITS if self.is_podman and verb in ("build", "run") else ()
        return [self.program, *self.global_flags, verb, *limits, *args]

    def run(self, verb: str, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.argv(verb, *args), capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise BuildError(f"{' '.join(self.argv(verb, *args))}: exit {result.returncode}\n{result.stderr.strip()}")
        return result

    def image_exists(self, ref: str) -> bool:
        return self.run("image", "inspect", "--format", "{{.Id}}", ref, check=False).returncode == 0

    def image_size(self, ref: str) -> int:
        return int(self.run("image", "inspect", "--format", "{{.Size}}", ref).stdout.strip())


def _works(argv: list[str]) -> tuple[bool, str]:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    lines = (result.stderr or result.stdout).strip().splitlines()
    return result.returncode == 0, lines[-1] if lines else f"exit {result.returncode}"


def podman_engine() -> Engine | None:
    """podman with the flags this machine needs, or None when podman is not installed."""
    program = shutil.which("podman")
    if program is None:
        return None
    flags: list[str] = []
    if shutil.which("runc"):
        flags += ["--runtime", "runc"]
    if not Path("/run/systemd/system").is_dir():  # no systemd: no systemd cgroup manager
        flags += ["--cgroup-manager", "cgroupfs"]
    return Engine(program, tuple(flags))


def find_engine(choice: str = "auto") -> Engine:
    """Docker when asked or when its daemon answers; podman otherwise. Raises BuildError with what to install."""
    if choice in ("auto", "docker"):
        docker = shutil.which("docker")
        if docker:
            ok, why = _works([docker, "info", "--format", "{{.ServerVersion}}"])
            if ok:
                return Engine(docker)
            if choice == "docker":
                raise BuildError(f"docker: no working daemon ({why})")
        elif choice == "docker":
            raise BuildError("docker is not installed")
    engine = podman_engine()
    if engine is None:
        raise BuildError("no container engine: no Docker daemon and no podman "
                         "(Debian: apt-get install podman runc mmdebstrap)")
    ok, why = _works(engine.argv("info", "--format", "{{.Host.OCIRuntime.Name}}"))
    if not ok:
        raise BuildError(f"podman does not run here: {why}")
    return engine


def registry_reachable(timeout_s: float = 3.0) -> bool:
    try:
        with socket.create_connection(REGISTRY_PROBE, timeout=timeout_s):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------- the local base (mmdebstrap)


def base_recipe() -> list[str]:
    return [*BASE_OPTIONS, f"--include={','.join(BASE_PACKAGES)}", BASE_SUITE]


def local_base_ref() -> str:
    digest = hashlib.sha256("\0".join([*base_recipe(), BASE_ENV]).encode()).hexdigest()[:12]
    return f"localhost/robomesh/debian-python:{BASE_SUITE}-{digest}"


def ensure_local_base(engine: Engine, refresh: bool = False, say=print) -> str:
    """The local base image (made with mmdebstrap, cached as a tar), imported into the engine's store if missing."""
    ref = local_base_ref()
    if not refresh and engine.image_exists(ref):
        return ref
    tar = CACHE / f"{ref.rsplit('/', 1)[1].replace(':', '-')}.tar"
    if refresh or not tar.is_file():
        mmdebstrap = shutil.which("mmdebstrap")
        if mmdebstrap is None:
            raise BuildError("no image registry is reachable and mmdebstrap is not installed to make a local base "
                             "(Debian: apt-get install mmdebstrap)")
        tar.parent.mkdir(parents=True, exist_ok=True)
        partial = tar.with_suffix(".partial.tar")
        say(f"base: mmdebstrap {BASE_SUITE} -> {tar}")
        started = time.monotonic()
        result = subprocess.run([mmdebstrap, "--quiet", *base_recipe(), str(partial)], stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=1200)
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            raise BuildError(f"mmdebstrap failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
        partial.replace(tar)
        say(f"base: made in {time.monotonic() - started:.0f} s ({tar.stat().st_size / 1e6:.0f} MB)")
    engine.run("import", "--change", f"ENV={BASE_ENV}", "--change", 'CMD ["/bin/bash"]',
               "--message", f"mmdebstrap {' '.join(base_recipe())}", str(tar), ref, timeout=600)
    say(f"base: imported {ref}")
    return ref


# ---------------------------------------------------------------- building


@dataclass
class Built:
    image: str
    ref: str
    size_bytes: int
    build_s: float
    base: str


def build_argv(engine: Engine, name: str, ref: str, base: str | None, no_cache: bool = False) -> list[str]:
    args = ["-f", str(REPO / "docker" / f"{name}.Dockerfile"), "-t", ref]
    if engine.is_podman:
        args[:0] = ["--format", "docker"]  # keeps HEALTHCHECK
        if CA_BUNDLE.is_file():
            args += ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
    if base is not None:
        args += ["--build-arg", f"PYTHON_IMAGE={base}"]
    if no_cache:
        args.append("--no-cache")
    return engine.argv("build", *args, str(REPO))


def build(engine: Engine, name: str, base: str | None, tag: str | None = None, log_dir: Path | None = None,
          no_cache: bool = False, timeout_s: float = 1800) -> Built:
    ref = image_ref(name, tag)
    argv = build_argv(engine, name, ref, base, no_cache)
    started = time.monotonic()
    if log_dir is None:
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, timeout=timeout_s)
        tail = ""
    else:
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"{name}.log"
        with log.open("w") as sink:
            result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                    timeout=timeout_s)
        tail = "\n" + log.read_text()[-4000:]
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise BuildError(f"{name}: build failed (exit {result.returncode}){tail}")
    return Built(name, ref, engine.image_size(ref), round(elapsed, 1), base or "(the Dockerfile's default)")


def plan(requested: list[str], registry: bool) -> tuple[list[str], dict[str, str]]:
    """(images to build, {image: why it is skipped}); explicitly requested images that cannot be built raise."""
    skipped: dict[str, str] = {}
    chosen: list[str] = []
    for name in requested or list(IMAGES):
        spec = IMAGES.get(name)
        if spec is None:
            raise BuildError(f"unknown image {name!r}; known: {', '.join(IMAGES)}")
        if not spec.amd64:
            why = "linux/arm64 only (Raspberry Pi OS user space from archive.raspberrypi.com; docs/images.md)"
        elif spec.registry_only and not registry:
            why = f"{spec.registry_only}, and no image registry is reachable"
        else:
            chosen.append(name)
            continue
        if requested:
            raise BuildError(f"{name}: cannot be built here: {why}")
        skipped[name] = why
    return chosen, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", help=f"images to build (default: every amd64 one): {', '.join(IMAGES)}")
    parser.add_argument("--engine", choices=("auto", "docker", "podman"), default="auto",
                        help="auto: Docker when its daemon answers, else podman")
    parser.add_argument("--base", default="auto",
                        help="PYTHON_IMAGE for the builds: 'local' (mmdebstrap), 'registry' (the Dockerfiles' "
                             "default from Docker Hub), an image reference, or 'auto' (registry when reachable)")
    parser.add_argument("--tag", default=None, help="tag of localhost/robomesh/<image> (default: pyproject's version)")
    parser.add_argument("--refresh-base", action="store_true", help="remake the local base (Debian security updates)")
    parser.add_argument("--no-cache", action="store_true", help="rebuild every layer")
    parser.add_argument("--log-dir", type=Path, default=None, help="write each build's output here instead of the "
                                                                   "terminal")
    parser.add_argument("--report", type=Path, default=None, help="write sizes and build times here (JSON)")
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        print(f"images: {message}", flush=True)

    try:
        engine = find_engine(args.engine)
        registry = args.base == "registry" or (args.base == "auto" and (not engine.is_podman or registry_reachable()))
        chosen, skipped = plan(args.images, registry)
        say(f"engine {' '.join([engine.program, *engine.global_flags])}")
        for name, why in skipped.items():
            say(f"skipping {name}: {why}")
        if args.base in ("auto", "registry"):
            base = None if registry else ensure_local_base(engine, args.refresh_base, say)
        elif args.base == "local":
            base = ensure_local_base(engine, args.refresh_base, say)
        else:
            base = args.base
        say(f"base {base or 'the Dockerfiles default (python:3.11-slim-bookworm)'}")
        results: list[Built] = []
        for name in chosen:
            say(f"building {name} -> {image_ref(name, args.tag)}")
            results.append(build(engine, name, base, args.tag, args.log_dir, args.no_cache))
            say(f"built {name}: {results[-1].size_bytes / 1e6:.0f} MB in {results[-1].build_s:.0f} s")
    except (BuildError, subprocess.TimeoutExpired) as exc:
        print(f"images: {exc}", file=sys.stderr)
        return 1
    for built in results:
        print(f"{built.ref:55} {built.size_bytes / 1e6:6.0f} MB {built.build_s:7.1f} s")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps({"engine": engine.program, "base": base, "skipped": skipped,
                                           "images": [asdict(b) for b in results]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
