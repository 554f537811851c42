# syntax=docker/dockerfile:1
# robomesh/robotclient: the robot side (camera -> offload client -> tracker -> state machine -> robot)
# for the Raspberry Pi (64-bit Raspberry Pi OS, bookworm), linux/arm64.
#
#   docker buildx build --platform linux/arm64 -f docker/robotclient.Dockerfile \
#     -t registry.robodemo.lan:5000/robomesh/robotclient:0.1.0 --push .   # context: the repo root
#
# (On an amd64 build machine, register QEMU first: docker run --privileged --rm tonistiigi/binfmt --install arm64.)
#
# Why this base: picamera2 is not usable from PyPI alone; it needs libcamera and its Python bindings,
# which Raspberry Pi ships as apt packages built for the Pi's camera stack (python3-picamera2,
# python3-libcamera) for Debian bookworm, whose python3 is 3.11 (this project needs >= 3.11). So the
# image is debian:bookworm-slim + Raspberry Pi's apt archive = the user space of Raspberry Pi OS, and
# the venv is created with --system-site-packages so that it sees picamera2 from apt.
# numpy is held below 2 in the venv: it shadows Debian's numpy, and the Pi's apt packages that
# picamera2 imports (simplejpeg, ...) are built against numpy 1.x. pip then picks opencv 4.11.0.86,
# the newest OpenCV wheel that accepts numpy 1.x (checked with a dry-run resolve for aarch64/cp311).
#
# Camera in a container: libcamera needs the camera devices and udev data, e.g.
#   docker run --rm -it --network host --device /dev/video0 ... --device /dev/media0 ... \
#     --device /dev/dma_heap -v /run/udev:/run/udev:ro -e OBJECTDETECTION_HOST=HOST:30051 IMAGE
# (or --privileged -v /dev:/dev); see docs/images.md. Host networking also reaches the robot's USB RNDIS link.
# RoboMaster SDK: NOT in this image. It is CPython 3.8 only (newest aarch64 wheel 0.1.1.62, cp37/cp38),
# and a second interpreter plus the SDK would double the image for one driver. --robot robomaster runs
# the SDK through the bridge subprocess (--sdk-python / ROBOMASTER_PYTHON) with a Python 3.8 that has
# it: mount one from the host (e.g. -v /opt/py38:/opt/py38:ro -e ROBOMASTER_PYTHON=/opt/py38/bin/python),
# or derive an image. Without it, use --robot null or sim (the default command below uses null).
# Not built on the machine where it was written (no Docker engine, no arm64, no Raspberry Pi archive
# reachable there): checked statically; the pip resolution was dry-run for linux/arm64.
# Expected size: about 0.8 GB (bookworm-slim 0.08 + python3/picamera2/libcamera and their apt deps ~0.3 + venv ~0.4).

ARG DEBIAN_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------- base: Raspberry Pi OS user space
FROM ${DEBIAN_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive
# Raspberry Pi's archive key, ASCII-armoured (.asc: apt reads it as is; world-readable for apt's sandbox).
ADD --chmod=644 https://archive.raspberrypi.com/debian/raspberrypi.gpg.key \
    /usr/share/keyrings/raspberrypi-archive-keyring.asc
# hadolint ignore=DL3008
RUN echo "deb [signed-by=/usr/share/keyrings/raspberrypi-archive-keyring.asc] http://archive.raspberrypi.com/debian/ bookworm main" \
      > /etc/apt/sources.list.d/raspi.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-picamera2 \
 && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------- builder: the project in a venv
FROM base AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY protos/ protos/
COPY services/ services/
COPY robotclient/ robotclient/
# The [robot] extra only: no services, no lab (pyyaml, Envoy); selftest runs every subcommand's --help.
RUN python3 -m venv --system-site-packages /opt/venv \
 && /opt/venv/bin/pip install ".[robot]" "numpy<2" \
 && /opt/venv/bin/python -I -c "import protos.detection_pb2_grpc, protos.detection_v1_pb2_grpc"

# ---------------------------------------------------------------- runtime
FROM base
# The camera devices belong to group video (44 on Debian); the fixed UID/GID below match the services.
RUN groupadd --system --gid 10001 robomesh \
 && useradd --system --uid 10001 --gid 10001 --groups video --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin robomesh
COPY --from=builder /opt/venv /opt/venv
COPY docker/selftest.py /opt/robomesh/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OBJECTDETECTION_HOST=objectdetection:50051
USER 10001:10001
WORKDIR /tmp
# Fails the build unless the client and picamera2 (system packages, numpy 1.x) import together.
RUN ["/opt/venv/bin/python", "/opt/robomesh/selftest.py", "robotclient", "--picamera2"]
# Not a server: no HEALTHCHECK (the optional -w live view serves /healthz on 9088 when enabled).
EXPOSE 9088
ENTRYPOINT ["/opt/venv/bin/python", "-m", "robotclient"]
CMD ["run", "-i", "raspicam", "-t", "person", "--robot", "null", "-n", "-w"]
