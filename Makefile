# The README's two commands: `make demo` and `make test`. Everything else is a step of them.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test setup protos models data lint manifests images bench bench-mesh bench-engines bench-link fuzz robot-pi clean

demo: setup models data
	$(PY) -m robotclient demo

test: setup models data
	$(PY) -m ruff check .
	$(PY) -m pytest -q -p no:cacheprovider

setup: $(STAMP) protos

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

protos: $(STAMP)
	$(PY) -m protos.generate > /dev/null

# The Darknet files, then their ONNX conversion and its INT8 quantization (calibrated on the sample clip),
# and the reference frames on which the server checks INT8 against FP32 cv2.dnn at start-up.
models: setup data
	$(PY) -m services.yolodetection.modeltools.model
	$(PY) -m services.yolodetection.modeltools.quantize
	$(PY) -m services.yolodetection.reference

data: setup
	$(PY) -m robotclient.sampledata

lint: setup
	$(PY) -m ruff check .

# kube/'s plain manifests rendered from their kustomize sources (kube/src/, kube/Kustomization,
# kube/cell/Kustomization) with the dev extra's kubectl; tests/deploy/test_kustomize.py fails on drift.
manifests: setup
	$(PY) kube/render.py

# The amd64 images of docker/ as localhost/robomesh/<image>:<version>, with podman (or Docker where its daemon
# runs) from a local Debian base made by mmdebstrap where no registry is reachable (docs/images.md). Needs no venv:
# the Dockerfiles fetch the model and the clip themselves. IMAGES="facedetection ..." to build some only.
IMAGES ?=
images:
	$(PYTHON) docker/build_images.py $(IMAGES)

# What the defaults give against issue 12's yardsticks (mesh ratio, persons, faces, replay speed-up, memory).
bench: setup models data
	$(PY) bench/defaults_bench.py

# The mesh by mode and concurrency (face, yolo, the client's own fan-out, the aggregator).
bench-mesh: setup models data
	$(PY) bench/mesh_bench.py

bench-engines: setup models data
	$(PY) bench/engine_bench.py

# Issue 14's link (40 ms each way, 10 ms jitter, 50 Mbit/s): the robot's pipelined replay against send-and-wait.
bench-link: setup models data
	$(PY) bench/link_bench.py

# Malformed-input fuzzing of every service (bench/fuzz_bench.py); FUZZ_CASES=... to change the count.
FUZZ_CASES ?= 10000
fuzz: setup models data
	$(PY) bench/fuzz_bench.py --cases $(FUZZ_CASES)

# On the Raspberry Pi (bookworm 64-bit), not here: apt's picamera2, the client in .venv-robot, the RoboMaster SDK
# under Python 3.8 in .venv-sdk (robotclient/pi/setup_pi.sh; PI_FLAGS=--dry-run prints what it would run).
robot-pi:
	bash robotclient/pi/setup_pi.sh $(PI_FLAGS)

clean:
	rm -rf $(VENV) protos/*_pb2.py protos/*_pb2.pyi protos/*_pb2_grpc.py
