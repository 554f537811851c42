# syntax=docker/dockerfile:1
# robomesh/yolodetection-cuda: YOLOv3-tiny on an NVIDIA GPU with ONNX Runtime's CUDA execution provider
# (--engine onnxruntime --device cuda; port 50055, metrics 9095). Run with the NVIDIA container
# runtime (Kubernetes: the NVIDIA device plugin and `nvidia.com/gpu: 1`; docker: `--gpus all`).
#
#   docker buildx build --platform linux/amd64 -f docker/yolodetection-cuda.Dockerfile \
#     -t registry.robodemo.lan:5000/robomesh/yolodetection-cuda:0.1.0 .        # context: the repo root
#
# Versions that pair (checked against the wheels' metadata and ELF dependencies on PyPI):
#   onnxruntime-gpu 1.19 .. 1.26  -> CUDA 12.x + cuDNN 9 (the 1.26.0 CUDA provider links libcudart.so.12,
#                                    libcublas(Lt).so.12, libcufft.so.11, libcurand.so.10, libcudnn.so.9)
#   onnxruntime-gpu 1.27 and newer -> CUDA 13.x + cuDNN 9 (host driver >= 580)
# Default here: onnxruntime-gpu 1.26.0 on nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 (cuDNN 9), which
# runs on any driver for CUDA 12 (>= 525 through CUDA minor-version compatibility; >= 570 natively).
# For CUDA 13: --build-arg CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
#              --build-arg ORT_GPU=onnxruntime-gpu==1.31.1
# The build fails (docker/selftest.py --linked) if the provider's CUDA/cuDNN libraries are missing.
#
# Python: Ubuntu 24.04's own python3.12 (the project needs >= 3.11; no PPA needed). The venv is built
# on plain ubuntu:24.04 (same python3.12 package, same /usr/bin path) to keep the big CUDA base out of
# the builder. The ONNX model is converted at build time on a Debian stage (the calibration clip comes
# from Debian's opencv-doc) and only the model files are copied: no write access needed at run time.
# Not built on the machine where it was written (no Docker engine, no GPU there): checked statically.
# Expected size: about 4.5 GB (CUDA 12.8 runtime + cuDNN 9 base ~3.6 GB, onnxruntime-gpu ~0.4 GB,
# opencv/scipy/numpy ~0.36 GB, models 80 MB).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UBUNTU_IMAGE=ubuntu:24.04
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------- model: Darknet files, hash-checked
FROM ${PYTHON_IMAGE} AS model
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY services/__init__.py services/
COPY services/yolodetection/__init__.py services/yolodetection/
COPY services/yolodetection/modeltools/__init__.py services/yolodetection/modeltools/model.py services/yolodetection/modeltools/
RUN python -m services.yolodetection.modeltools.model --dir /models/yolov3-tiny

# ---------------------------------------------------------------- data: the calibration clip (Debian)
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
RUN python -m venv /opt/tools && /opt/tools/bin/pip install ".[onnx]"
COPY --from=model /models /models
COPY --from=data /data/vtest.avi /data/vtest.avi
WORKDIR /
# <weights stem>-<W>x<H>.onnx beside the weights: where ensure_onnx looks (convert.onnx_path).
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
FROM ${UBUNTU_IMAGE} AS builder
ARG ORT_GPU=onnxruntime-gpu==1.26.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY protos/ protos/
COPY services/ services/
COPY robotclient/ robotclient/
# [cuda]: [serving] + onnx + onnxruntime-gpu (never beside the CPU onnxruntime: both provide the module),
# pinned to the release that matches the CUDA base above.
RUN python3.12 -m venv /opt/venv \
 && /opt/venv/bin/pip install ".[cuda]" "${ORT_GPU}" \
 && /opt/venv/bin/python -I -c "import protos.detection_pb2_grpc, protos.detection_v1_pb2_grpc"

# ---------------------------------------------------------------- runtime
FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 robomesh \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin robomesh
COPY --from=builder /opt/venv /opt/venv
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
    YOLO_ENGINE=onnxruntime \
    YOLO_DEVICE=cuda \
    HEALTHCHECK_SERVICE=robomesh.detection.v1.YoloDetection
USER 10001:10001
# No GPU at build time: the check runs the model on ONNX Runtime's CPU provider (in onnxruntime-gpu
# too), checks the CUDA provider is compiled in, and that ldd finds its CUDA and cuDNN libraries here.
RUN ["/opt/venv/bin/python", "/opt/robomesh/selftest.py", "yolodetection", "--engine", "onnxruntime", \
     "--precision", "fp32", "int8", "--read-only-models", "--providers", "CUDAExecutionProvider", \
     "--linked", "onnxruntime/capi/libonnxruntime_providers_cuda.so"]
EXPOSE 50055 9095
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
  CMD ["/opt/venv/bin/python", "/opt/robomesh/healthcheck.py"]
ENTRYPOINT ["/opt/venv/bin/python", "-m", "services.yolodetection"]
