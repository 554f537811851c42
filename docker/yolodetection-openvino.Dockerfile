# syntax=docker/dockerfile:1
# robomesh/yolodetection-openvino: YOLOv3-tiny on OpenVINO (--engine openvino), for Intel CPUs, iGPUs
# and NPUs (port 50055, metrics 9095). Default device cpu; the v3 Deployment sets YOLO_DEVICE=npu.
#
#   docker buildx build --platform linux/amd64 -f docker/yolodetection-openvino.Dockerfile \
#     -t registry.robodemo.lan:5000/robomesh/yolodetection-openvino:0.1.0 .     # context: the repo root
#
# OpenVINO cannot read Darknet: the ONNX conversion (FP32) and the INT8 model (static QDQ, calibrated
# on frames 0-299 of vtest.avi) are made at build time, next to the weights, where the server's
# ensure_onnx finds them and only reads them; the runtime needs no write access (read-only root FS).
# Devices: CPU works as is. iGPU (YOLO_DEVICE=gpu): the OpenCL loader is here, but the Intel compute
# runtime (ICD) and /dev/dri are not: derive an image (docs/images.md). NPU (YOLO_DEVICE=npu): needs the
# host's ivpu kernel driver, /dev/accel/accel0 and Intel's NPU user-space driver (intel/linux-npu-driver
# releases, Ubuntu .debs): not in Debian, so not in this image; docs/images.md shows the derived image.
# Built with podman by `make images` (docs/images.md); tests/deploy/test_docker.py checks it statically and
# runs the same model, convert and quantize commands and docker/selftest.py. Measured size: 952 MB on the
# local Debian base (201 MB) + venv 665 MB (openvino, onnx, opencv/scipy/numpy) + 85 MB of models.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- model: Darknet files, hash-checked
FROM ${PYTHON_IMAGE} AS model
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY services/__init__.py services/
COPY services/yolodetection/__init__.py services/yolodetection/
COPY services/yolodetection/modeltools/__init__.py services/yolodetection/modeltools/model.py services/yolodetection/modeltools/
RUN python -m services.yolodetection.modeltools.model --dir /models/yolov3-tiny

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
# [openvino]: [serving] + openvino + onnx (ensure_onnx reads the cached model's metadata with onnx). No onnxruntime.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install ".[openvino]" \
 && /opt/venv/bin/python -I -c "import protos.detection_pb2_grpc, protos.detection_v1_pb2_grpc"

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}
# The OpenCL ICD loader, which OpenVINO's GPU plugin links against (the GPU driver itself is not here).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ocl-icd-libopencl1 \
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
    YOLO_ENGINE=openvino \
    YOLO_DEVICE=cpu \
    HEALTHCHECK_SERVICE=robomesh.detection.v1.YoloDetection
USER 10001:10001
# Fails the build unless the runtime user runs FP32 and INT8 on OpenVINO's CPU device from the
# read-only model folder (a stale ONNX cache would make ensure_onnx try to write, and fail here).
RUN ["/opt/venv/bin/python", "/opt/robomesh/selftest.py", "yolodetection", "--engine", "openvino", \
     "--precision", "fp32", "int8", "--read-only-models"]
EXPOSE 50055 9095
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/opt/venv/bin/python", "/opt/robomesh/healthcheck.py"]
ENTRYPOINT ["/opt/venv/bin/python", "-m", "services.yolodetection"]
