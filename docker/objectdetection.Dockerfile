# syntax=docker/dockerfile:1
# robomesh/objectdetection: the aggregator over gRPC (port 50051, metrics 9091). It fans out to
# FACEDETECTION_HOST and YOLODETECTION_HOST (defaults localhost:50053 / :50055: set them in Kubernetes,
# e.g. facedetection:50053 and yolodetection:50055).
#
#   docker buildx build --platform linux/amd64 -f docker/objectdetection.Dockerfile \
#     -t registry.robodemo.lan:5000/robomesh/objectdetection:0.1.0 .        # context: the repo root
#
# Built and run with podman by `make images` and tests/deploy/test_containers.py (docs/images.md);
# tests/deploy/test_docker.py checks it statically. Measured size: 649 MB on the local Debian base (201 MB)
# + venv 448 MB (opencv-contrib-headless 175, scipy 143, numpy 73).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- builder: the project in a venv
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY protos/ protos/
COPY services/ services/
COPY robotclient/ robotclient/
# A regular (not editable) install of the [serving] extra (health, reflection, metrics; no ONNX: this
# service does not need it): setup.py's build_py runs `python -m protos.generate`
# (grpcio-tools is a build requirement, present only in pip's isolated build environment), so the
# gRPC stubs land in site-packages; the check imports them from there (-I: not from /src).
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install ".[serving]" \
 && /opt/venv/bin/python -I -c "import protos.detection_pb2_grpc, protos.detection_v1_pb2_grpc"

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 robomesh \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin robomesh
COPY --from=builder /opt/venv /opt/venv
COPY docker/healthcheck.py docker/selftest.py /opt/robomesh/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=[::] \
    PORT=50051 \
    METRICS_PORT=9091 \
    HEALTHCHECK_SERVICE=robomesh.detection.v1.ObjectDetection
USER 10001:10001
# Fails the build if the service or its gRPC stubs do not import for the runtime user.
RUN ["/opt/venv/bin/python", "/opt/robomesh/selftest.py", "objectdetection"]
EXPOSE 50051 9091
HEALTHCHECK --interval=15s --timeout=5s --start-period=15s --retries=3 \
  CMD ["/opt/venv/bin/python", "/opt/robomesh/healthcheck.py"]
ENTRYPOINT ["/opt/venv/bin/python", "-m", "services.objectdetection"]
