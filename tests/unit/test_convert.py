"""Darknet -> ONNX conversion: the ONNX heads must equal OpenCV's Darknet importer's, element by element."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from services.yolodetection.decode import decode_heads
from services.yolodetection.modeltools import convert, darknet
from services.yolodetection.modeltools.model import ModelPaths

REPO = Path(__file__).resolve().parents[2]
SIZE = (416, 416)
# Max abs differences seen against cv2.dnn 4.14 on vtest.avi frames: coordinates 6e-6, objectness 4e-6,
# class scores 4e-6. Box sizes are exp(t) * anchor and can be large (the random synthetic model has
# widths of 11x the input), so they are also allowed a float32-sized relative error.
ATOL = 1e-4
RTOL = 1e-5


def _blob(frames: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    return cv2.dnn.blobFromImages(frames, 1 / 255, size, swapRB=True, crop=False)


def _opencv_heads(cfg: Path, weights: Path, blob: np.ndarray) -> list[np.ndarray]:
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setInput(blob)
    heads = net.forward(net.getUnconnectedOutLayersNames())
    return [h.reshape(blob.shape[0], -1, h.shape[-1]) for h in heads]


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _assert_heads_match(got: list[np.ndarray], ref: list[np.ndarray]) -> None:
    assert [g.shape for g in got] == [r.shape for r in ref]
    for k, (g, r) in enumerate(zip(got, ref, strict=True)):
        for name, cols in (("coordinates", slice(0, 4)), ("objectness", slice(4, 5)), ("class scores", slice(5, None))):
            excess = np.abs(g[..., cols] - r[..., cols]) - (ATOL + RTOL * np.abs(r[..., cols]))
            assert excess.max() <= 0, f"head{k} {name}: max abs diff {np.abs(g[..., cols] - r[..., cols]).max()}"


@pytest.fixture(scope="module")
def tiny_model(model_paths: ModelPaths) -> onnx.ModelProto:
    return convert.convert(model_paths.cfg, model_paths.weights, SIZE)


@pytest.fixture(scope="module")
def tiny_session(tiny_model: onnx.ModelProto) -> ort.InferenceSession:
    return _session(tiny_model)


@pytest.fixture(scope="module")
def frames(vtest_frames: list[np.ndarray]) -> list[np.ndarray]:
    return vtest_frames[:4]


def test_the_contract_input_and_one_output_per_yolo_head(tiny_model: onnx.ModelProto) -> None:
    inputs = tiny_model.graph.input
    assert [i.name for i in inputs] == ["images"]
    dims = inputs[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 416, 416]
    assert [o.name for o in tiny_model.graph.output] == ["head0", "head1"]
    assert not any(n.op_type == "BatchNormalization" for n in tiny_model.graph.node)
    onnx.checker.check_model(tiny_model, full_check=True)


def test_yolov3_tiny_heads_match_opencv_on_real_frames(
    model_paths: ModelPaths, tiny_session: ort.InferenceSession, frames: list[np.ndarray]
) -> None:
    blob = _blob(frames, SIZE)
    ref = _opencv_heads(model_paths.cfg, model_paths.weights, blob)
    got = tiny_session.run(None, {"images": blob})
    assert [g.shape for g in got] == [(4, 507, 85), (4, 2028, 85)]
    _assert_heads_match(got, ref)
    # The threshold zeroing is reproduced: the same scores are zero (none near 0.2 in these frames).
    for g, r in zip(got, ref, strict=True):
        assert np.array_equal(g[..., 5:] > 0, r[..., 5:] > 0)
    assert sum(int((r[..., 5:] > 0).sum()) for r in ref) > 0, "the frames should hold detections"


def test_yolov3_tiny_detections_after_nms_are_identical(
    model_paths: ModelPaths, tiny_session: ort.InferenceSession, frames: list[np.ndarray]
) -> None:
    blob = _blob(frames, SIZE)
    ref = _opencv_heads(model_paths.cfg, model_paths.weights, blob)
    got = tiny_session.run(None, {"images": blob})
    total = 0
    for i, frame in enumerate(frames):
        h, w = frame.shape[:2]
        ours = decode_heads([g[i] for g in got], w, h, 0.25, 0.4)
        theirs = decode_heads([r[i] for r in ref], w, h, 0.25, 0.4)
        assert [(b.class_id, b.x, b.y, b.w, b.h) for b in ours] == [(b.class_id, b.x, b.y, b.w, b.h) for b in theirs]
        assert np.allclose([b.confidence for b in ours], [b.confidence for b in theirs], atol=1e-4, rtol=0)
        total += len(ours)
    assert total >= 4


def test_a_batch_equals_single_runs(tiny_session: ort.InferenceSession, frames: list[np.ndarray]) -> None:
    batch = tiny_session.run(None, {"images": _blob(frames[:3], SIZE)})
    for i, frame in enumerate(frames[:3]):
        single = tiny_session.run(None, {"images": _blob([frame], SIZE)})
        for b, s in zip(batch, single, strict=True):
            np.testing.assert_allclose(b[i], s[0], atol=1e-5, rtol=0)


# A small YOLOv4-tiny-style network: grouped route (CSP), shortcut, mish, swish, leaky, logistic,
# grouped convolution, both maxpool flavours, upsample, two heads with scale_x_y.
SYNTHETIC_CFG = """
[net]
width=64
height=64
channels=3

# 0
[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

# 1
[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=mish

# 2: the second half of layer 1's channels, as YOLOv4-tiny's CSP blocks
[route]
layers=-1
groups=2
group_id=1

# 3
[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

# 4
[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=swish

# 5
[shortcut]
from=-2
activation=linear

# 6
[route]
layers=-1,-3

# 7
[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=leaky

# 8: absolute and relative indices
[route]
layers=1,-1

# 9
[maxpool]
size=2
stride=2

# 10: grouped convolution
[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
groups=2
activation=leaky

# 11: Darknet pads right/bottom so the size stays 16x16
[maxpool]
size=2
stride=1

# 12
[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=leaky

# 13
[convolutional]
size=1
stride=1
pad=1
filters=24
activation=linear

# 14
[yolo]
mask=3,4,5
anchors=4,6, 8,10, 12,16, 20,24, 30,36, 44,52
classes=3
num=6
scale_x_y=1.05

# 15
[route]
layers=-3

# 16
[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=leaky

# 17
[upsample]
stride=2

# 18
[route]
layers=-1,7

# 19
[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=logistic

# 20
[convolutional]
size=1
stride=1
pad=1
filters=24
activation=linear

# 21
[yolo]
mask=0,1,2
anchors=4,6, 8,10, 12,16, 20,24, 30,36, 44,52
classes=3
num=6
scale_x_y=1.1
"""


def _random_weights(cfg: darknet.DarknetCfg, seed: int = 7) -> dict[int, darknet.ConvWeights]:
    rng = np.random.default_rng(seed)
    shapes = darknet.layer_shapes(cfg)
    in_channels = [cfg.channels] + [s.c for s in shapes[:-1]]
    layers = {}
    for i, s in enumerate(cfg.layers):
        if s.type != "convolutional":
            continue
        filters, size, groups = s.get_int("filters"), s.get_int("size"), s.get_int("groups", 1)
        fan_in = in_channels[i] // groups * size * size
        conv = darknet.ConvWeights(
            biases=rng.normal(0, 0.5, filters).astype(np.float32),
            weights=(rng.normal(0, 1, (filters, in_channels[i] // groups, size, size)) * np.sqrt(2 / fan_in))
            .astype(np.float32),
        )
        if s.get_int("batch_normalize", 0):
            conv.bn_scales = rng.uniform(0.5, 1.5, filters).astype(np.float32)
            conv.bn_mean = rng.normal(0, 0.2, filters).astype(np.float32)
            conv.bn_var = rng.uniform(0.5, 2.0, filters).astype(np.float32)
        layers[i] = conv
    return layers


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("yolov4tiny")
    cfg_path, weights_path = folder / "synthetic.cfg", folder / "synthetic.weights"
    cfg_path.write_text(SYNTHETIC_CFG)
    cfg = darknet.parse_cfg(cfg_path)
    darknet.write_weights(weights_path, cfg, _random_weights(cfg), seen=1234)
    return cfg_path, weights_path


def test_the_weights_reader_reads_back_what_was_written(synthetic: tuple[Path, Path]) -> None:
    cfg_path, weights_path = synthetic
    cfg = darknet.parse_cfg(cfg_path)
    read = darknet.read_weights(weights_path, cfg)
    assert (read.major, read.minor, read.seen) == (0, 2, 1234)
    expected = _random_weights(cfg)
    assert sorted(read.layers) == sorted(expected)
    for i, conv in expected.items():
        np.testing.assert_array_equal(read.layers[i].weights, conv.weights)
        np.testing.assert_array_equal(read.layers[i].biases, conv.biases)
    assert [s.type for s in cfg.layers].count("yolo") == 2  # repeated section names are all kept


def test_weights_before_format_0_2_have_a_32_bit_seen(synthetic: tuple[Path, Path], tmp_path: Path) -> None:
    cfg_path, weights_path = synthetic
    data = weights_path.read_bytes()
    old = tmp_path / "old.weights"
    old.write_bytes(np.array([0, 1, 0, 99], "<i4").tobytes() + data[20:])
    read = darknet.read_weights(old, darknet.parse_cfg(cfg_path))
    assert (read.major, read.minor, read.seen) == (0, 1, 99)
    np.testing.assert_array_equal(read.layers[20].weights, darknet.read_weights(weights_path, darknet.parse_cfg(
        cfg_path)).layers[20].weights)


def test_yolov4_tiny_style_layers_match_opencv(synthetic: tuple[Path, Path], frames: list[np.ndarray]) -> None:
    cfg_path, weights_path = synthetic
    model = convert.convert(cfg_path, weights_path)
    onnx.checker.check_model(model, full_check=True)
    blob = _blob(frames[:2], (64, 64))
    ref = _opencv_heads(cfg_path, weights_path, blob)
    got = _session(model).run(None, {"images": blob})
    assert [g.shape for g in got] == [(2, 16 * 16 * 3, 8), (2, 32 * 32 * 3, 8)]
    _assert_heads_match(got, ref)
    scores = np.concatenate([g[..., 5:].ravel() for g in got])
    assert 0 < (scores > 0).sum() < scores.size, "the test should exercise both sides of the 0.2 threshold"


def test_openvino_reads_the_model_and_agrees(synthetic: tuple[Path, Path], frames: list[np.ndarray]) -> None:
    """OpenVINO cannot read Darknet: this converter is its way in, so its ONNX frontend must accept the graph."""
    ov = pytest.importorskip("openvino")
    cfg_path, weights_path = synthetic
    model = convert.convert(cfg_path, weights_path)
    core = ov.Core()
    compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    blob = _blob(frames[:2], (64, 64))
    result = compiled.create_infer_request().infer({"images": blob})
    got = [result[compiled.output(name)] for name in ("head0", "head1")]
    _assert_heads_match(got, _opencv_heads(cfg_path, weights_path, blob))


def test_a_non_square_input_size_matches_opencv(synthetic: tuple[Path, Path], frames: list[np.ndarray]) -> None:
    """OpenCV normalises w by the input width and h by the input height; so must the ONNX heads."""
    cfg_path, weights_path = synthetic
    model = convert.convert(cfg_path, weights_path, (96, 64))
    blob = _blob(frames[:1], (96, 64))
    _assert_heads_match(_session(model).run(None, {"images": blob}), _opencv_heads(cfg_path, weights_path, blob))


def test_a_truncated_weights_file_is_a_clear_error(synthetic: tuple[Path, Path], tmp_path: Path) -> None:
    cfg_path, weights_path = synthetic
    truncated = tmp_path / "truncated.weights"
    truncated.write_bytes(weights_path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"layer 20 \[convolutional\].*truncated"):
        convert.convert(cfg_path, truncated)
    longer = tmp_path / "longer.weights"
    longer.write_bytes(weights_path.read_bytes() + b"\0" * 8)
    with pytest.raises(ValueError, match="8 bytes left after the last layer"):
        convert.convert(cfg_path, longer)


def test_an_unsupported_layer_is_a_clear_error(synthetic: tuple[Path, Path], tmp_path: Path) -> None:
    _, weights_path = synthetic
    cfg = tmp_path / "reorg.cfg"
    cfg.write_text(SYNTHETIC_CFG.replace("# 9\n[maxpool]", "# 9\n[reorg]"))
    with pytest.raises(ValueError, match=r"layer 9 \[reorg\]: unsupported layer type"):
        convert.convert(cfg, weights_path)
    cfg.write_text(SYNTHETIC_CFG.replace("activation=swish", "activation=gelu"))
    with pytest.raises(ValueError, match=r"layer 4 \[convolutional\]: activation 'gelu'"):
        convert.convert(cfg, weights_path)


def test_ensure_onnx_converts_once_and_rebuilds_when_the_weights_change(
    synthetic: tuple[Path, Path], tmp_path: Path
) -> None:
    cfg_path, weights_path = synthetic
    cfg, weights = tmp_path / "m.cfg", tmp_path / "m.weights"
    cfg.write_bytes(cfg_path.read_bytes())
    weights.write_bytes(weights_path.read_bytes())
    path = convert.ensure_onnx(cfg, weights, (64, 64))
    assert path == tmp_path / "m-64x64.onnx"
    first = path.stat().st_mtime_ns
    os.utime(path, ns=(first - 10**9, first - 10**9))  # older than the sources: the hash still says current
    assert convert.ensure_onnx(cfg, weights, (64, 64)) == path
    assert path.stat().st_mtime_ns == first - 10**9
    data = bytearray(weights.read_bytes())
    data[-4:] = np.float32(0.5).tobytes()
    weights.write_bytes(bytes(data))
    convert.ensure_onnx(cfg, weights, (64, 64))
    assert path.stat().st_mtime_ns != first - 10**9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-64x64.onnx", "m.cfg", "m.weights"]  # no temp left


def test_the_cli_writes_a_model_the_checker_accepts(synthetic: tuple[Path, Path], tmp_path: Path) -> None:
    cfg_path, weights_path = synthetic
    out = tmp_path / "cli.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "services.yolodetection.modeltools.convert", str(cfg_path), str(weights_path), str(out),
         "--input-size", "96", "--batch", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 96, 96]
    assert [o.name for o in model.graph.output] == ["head0", "head1"]
