"""Darknet YOLO (cfg + weights) to ONNX, so that ONNX Runtime and OpenVINO can run the model.

OpenVINO and ONNX Runtime cannot read Darknet files. The graph built here reproduces what
OpenCV's Darknet importer computes, head tensors included, so every engine hands
``services.yolodetection.decode`` the same rows (see ``engines/base.py``):

- input ``images``: float32 ``(N, 3, H, W)``, RGB in [0, 1], ``N`` dynamic unless fixed;
- one output per ``[yolo]`` layer, in cfg order, ``head0``, ``head1``, ...: ``(N, rows, 5 + classes)``
  with ``rows = grid_h * grid_w * anchors`` ordered cell-major, anchor-minor
  (row ``(y * grid_w + x) * anchors + a``), each ``[cx, cy, w, h, objectness, class scores]``
  normalised to the input, class score = sigmoid(class) * objectness, zeroed unless above the
  layer's ``thresh`` (default 0.2), exactly as OpenCV's region layer does.

Batch normalisation is folded into the convolutions (OpenCV's epsilon, 1e-6). One difference is
left on purpose: when a ``[yolo]`` section sets ``nms_threshold > 0``, OpenCV also runs per-class
NMS inside the layer and zeroes suppressed scores; this graph does not (``decode_heads`` runs NMS
on every engine's rows anyway). Stock YOLOv3/v4 cfgs do not set it, and OpenCV 4.x defaults it to 0.

Usage: ``python -m services.yolodetection.modeltools.convert CFG WEIGHTS OUT.onnx [--input-size N|WxH]
[--batch dynamic|N]``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from services.yolodetection.modeltools import darknet

log = logging.getLogger(__name__)

OPSET = 13
INPUT_NAME = "images"
HEAD_PREFIX = "head"
# OpenCV's Darknet importer uses this epsilon for the batch norm (Darknet's own code: 1e-5 or 1e-6).
BN_EPSILON = 1e-6
LEAKY_SLOPE = 0.1
# Bump when the graph changes, so that cached conversions are rebuilt.
CONVERTER_VERSION = "1"
METADATA_DIGEST = "robomesh.darknet_sha256"
METADATA_INPUT_SIZE = "robomesh.input_size"
METADATA_CLASSES = "robomesh.classes"


def source_digest(cfg: Path, weights: Path) -> str:
    """Identifies a conversion: the cfg, the weights and the converter version."""
    digest = hashlib.sha256(f"robomesh-darknet-onnx-{CONVERTER_VERSION}\0".encode())
    for path in (cfg, weights):
        with Path(path).open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


@dataclass
class _Graph:
    """Collects nodes and initialisers with unique names while the layers are walked."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    _names: set[str] = field(default_factory=set)

    def unique(self, base: str) -> str:
        name, n = base, 1
        while name in self._names:
            name, n = f"{base}_{n}", n + 1
        self._names.add(name)
        return name

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.unique(base)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], base: str, output: str | None = None, **attrs: object) -> str:
        out = output or self.unique(base)
        if output:
            self._names.add(output)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.unique(f"{base}/{op_type}"), **attrs))
        return out


def fold_batch_norm(conv: darknet.ConvWeights) -> tuple[np.ndarray, np.ndarray]:
    """Conv weights and bias with the batch norm folded in (so no BatchNormalization node is needed)."""
    weights = conv.weights.astype(np.float64)
    bias = conv.biases.astype(np.float64)
    if conv.bn_scales is not None and conv.bn_mean is not None and conv.bn_var is not None:
        scale = conv.bn_scales.astype(np.float64) / np.sqrt(conv.bn_var.astype(np.float64) + BN_EPSILON)
        weights = weights * scale[:, None, None, None]
        bias = bias - conv.bn_mean.astype(np.float64) * scale
    return weights.astype(np.float32), bias.astype(np.float32)


def _activation(g: _Graph, x: str, kind: str, base: str) -> str:
    if kind == "linear":
        return x
    if kind == "leaky":
        return g.op("LeakyRelu", [x], base, alpha=LEAKY_SLOPE)
    if kind == "logistic":
        return g.op("Sigmoid", [x], base)
    if kind == "relu":
        return g.op("Relu", [x], base)
    if kind == "swish":
        return g.op("Mul", [x, g.op("Sigmoid", [x], base)], base)
    if kind == "mish":
        # x * tanh(softplus(x)): the Mish op needs opset 18; OpenVINO fuses this pattern back into Mish.
        return g.op("Mul", [x, g.op("Tanh", [g.op("Softplus", [x], base)], base)], base)
    raise ValueError(f"{base}: activation {kind!r} is not supported")


def _yolo_head(g: _Graph, x: str, section: darknet.Section, shape: darknet.Shape,
               input_size: tuple[int, int], output: str, base: str) -> tuple[int, int]:
    """OpenCV's region layer (logistic variant) as ONNX ops, in the same float operation order."""
    width, height = input_size
    mask = darknet.yolo_mask(section)
    anchors = np.asarray(section.get_floats("anchors"), np.float32).reshape(-1, 2)[mask]
    classes = section.get_int("classes", 20)
    thresh = np.float32(section.get_float("thresh", 0.2))
    scale_x_y = np.float32(section.get_float("scale_x_y", 1.0))
    if section.get_float("nms_threshold", 0.0) > 0:
        log.warning("%s: nms_threshold=%s is not reproduced: OpenCV would also zero the scores of rows that its "
                    "in-layer NMS suppresses; decode_heads runs NMS on all rows anyway",
                    base, section.options["nms_threshold"])
    cells, n_anchors, cols = shape.h * shape.w, len(mask), 5 + classes
    rows = cells * n_anchors

    # (N, A*(5+C), H, W) -> (N, H, W, A*(5+C)) -> (N, H*W*A, 5+C): row (y*W + x)*A + a, as OpenCV's Permute.
    t = g.op("Transpose", [x], base, perm=[0, 2, 3, 1])
    r = g.op("Reshape", [t, g.const(f"{base}/shape", np.array([-1, rows, cols], np.int64))], base)

    def part(start: int, end: int) -> str:
        return g.op("Slice", [r, g.const(f"{base}/start", np.array([start], np.int64)),
                              g.const(f"{base}/end", np.array([end], np.int64)),
                              g.const(f"{base}/axis", np.array([2], np.int64))], base)

    ys, xs = np.divmod(np.arange(cells), shape.w)
    grid = np.repeat(np.stack([xs, ys], axis=1), n_anchors, axis=0).astype(np.float32)[None]
    anchor_rows = np.tile(anchors, (cells, 1))[None]
    half = g.const(f"{base}/half", np.array(0.5, np.float32))

    xy = g.op("Sigmoid", [part(0, 2)], base)
    xy = g.op("Add", [g.op("Mul", [g.op("Sub", [xy, half], base), g.const(f"{base}/scale_x_y", scale_x_y)], base),
                      half], base)
    xy = g.op("Add", [g.const(f"{base}/grid", grid), xy], base)
    xy = g.op("Div", [xy, g.const(f"{base}/grid_size", np.array([shape.w, shape.h], np.float32))], base)
    wh = g.op("Mul", [g.op("Exp", [part(2, 4)], base), g.const(f"{base}/anchors", anchor_rows)], base)
    wh = g.op("Div", [wh, g.const(f"{base}/input_size", np.array([width, height], np.float32))], base)
    objectness = g.op("Sigmoid", [part(4, 5)], base)
    scores = g.op("Mul", [objectness, g.op("Sigmoid", [part(5, cols)], base)], base)
    keep = g.op("Greater", [scores, g.const(f"{base}/thresh", thresh)], base)
    scores = g.op("Where", [keep, scores, g.const(f"{base}/zero", np.array(0.0, np.float32))], base)
    g.op("Concat", [xy, wh, objectness, scores], base, output=output, axis=2)
    return rows, cols


def build_model(cfg: darknet.DarknetCfg, weights: darknet.DarknetWeights,
                input_size: tuple[int, int] | None = None, batch: int | None = None) -> onnx.ModelProto:
    """The ONNX graph for parsed files; ``batch=None`` leaves the batch dimension dynamic."""
    width, height = input_size or (cfg.width, cfg.height)
    if width < 1 or height < 1:
        raise ValueError(f"input size must be positive; got {width}x{height}")
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be >= 1 or None (dynamic); got {batch}")
    shapes = darknet.layer_shapes(cfg, width, height)
    g = _Graph()
    g.unique(INPUT_NAME)
    tensors: list[str] = []
    heads: list[onnx.ValueInfoProto] = []
    batch_dim: int | str = batch if batch is not None else "N"
    previous, previous_shape = INPUT_NAME, darknet.Shape(cfg.channels, height, width)

    for i, (s, shape) in enumerate(zip(cfg.layers, shapes, strict=True)):
        base = f"{i:03d}_{s.type}"
        out = previous
        if s.type == "convolutional":
            if i not in weights.layers:
                raise ValueError(f"layer {i} [convolutional]: no weights")
            w, b = fold_batch_norm(weights.layers[i])
            pad = darknet.conv_padding(s)
            stride = s.get_int("stride", 1)
            out = g.op("Conv", [previous, g.const(f"{base}/W", w), g.const(f"{base}/B", b)], base,
                       kernel_shape=list(w.shape[2:]), strides=[stride, stride], pads=[pad] * 4,
                       group=s.get_int("groups", 1))
            out = _activation(g, out, s.get_str("activation", "linear"), base)
        elif s.type == "maxpool":
            size, stride, pad = s.get_int("size", 2), s.get_int("stride", 2), darknet.maxpool_padding(s)
            if size > 1 or stride > 1:
                # Darknet (and OpenCV) put the odd padding pixel on the right and bottom.
                begin, end = pad // 2, pad - pad // 2
                out = g.op("MaxPool", [previous], base, kernel_shape=[size, size], strides=[stride, stride],
                           pads=[begin, begin, end, end])
        elif s.type == "upsample":
            stride = s.get_int("stride", 2)
            if stride > 1:
                scales = g.const(f"{base}/scales", np.array([1, 1, stride, stride], np.float32))
                out = g.op("Resize", [previous, "", scales], base, mode="nearest",
                           coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        elif s.type == "route":
            groups, group_id = s.get_int("groups", 1), s.get_int("group_id", 0)
            parts = []
            for j in darknet.route_sources(s, i):
                part = tensors[j]
                if groups > 1:
                    # Darknet takes the group_id-th of `groups` channel slices of every routed layer.
                    size = shapes[j].c // groups
                    part = g.op("Slice", [part, g.const(f"{base}/start", np.array([group_id * size], np.int64)),
                                          g.const(f"{base}/end", np.array([(group_id + 1) * size], np.int64)),
                                          g.const(f"{base}/axis", np.array([1], np.int64))], base)
                parts.append(part)
            out = parts[0] if len(parts) == 1 else g.op("Concat", parts, base, axis=1)
        elif s.type == "shortcut":
            j = darknet.shortcut_source(s, i)
            other, other_c = tensors[j], shapes[j].c
            if other_c == previous_shape.c:
                out = g.op("Add", [previous, other], base)
            elif other_c > previous_shape.c:
                # Darknet and OpenCV keep the current layer's channels: extra channels of `from` are dropped.
                sliced = g.op("Slice", [other, g.const(f"{base}/start", np.array([0], np.int64)),
                                        g.const(f"{base}/end", np.array([previous_shape.c], np.int64)),
                                        g.const(f"{base}/axis", np.array([1], np.int64))], base)
                out = g.op("Add", [previous, sliced], base)
            else:
                # Fewer channels in `from`: add them to the first channels, pass the others through.
                first, rest = g.unique(f"{base}/head_channels"), g.unique(f"{base}/tail_channels")
                sizes = g.const(f"{base}/split", np.array([other_c, previous_shape.c - other_c], np.int64))
                g.nodes.append(helper.make_node("Split", [previous, sizes], [first, rest],
                                                name=g.unique(f"{base}/Split"), axis=1))
                out = g.op("Concat", [g.op("Add", [first, other], base), rest], base, axis=1)
            out = _activation(g, out, s.get_str("activation", "linear"), base)
        elif s.type == "yolo":
            name = f"{HEAD_PREFIX}{len(heads)}"
            rows, cols = _yolo_head(g, previous, s, previous_shape, (width, height), name, base)
            heads.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch_dim, rows, cols]))
            # A [yolo] layer passes its input on; nothing may refer to it (checked by layer_shapes).
            out = previous
        else:  # layer_shapes has already rejected it; kept for safety
            raise ValueError(f"layer {i} [{s.type}]: unsupported layer type")
        tensors.append(out)
        previous, previous_shape = out, shape

    if not heads:
        raise ValueError("cfg has no [yolo] layer: nothing to output")
    graph = helper.make_graph(
        g.nodes, "darknet_yolo",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [batch_dim, cfg.channels, height, width])],
        heads, g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="robomesh.darknet2onnx", producer_version=CONVERTER_VERSION)
    # Readers as old as ONNX Runtime 1.14 / OpenVINO 2023 accept IR version 8 with opset 13.
    model.ir_version = 8
    model.doc_string = "Darknet YOLO converted by services.yolodetection.modeltools.convert; heads in OpenCV's layout."
    helper.set_model_props(model, {
        METADATA_INPUT_SIZE: f"{width}x{height}",
        METADATA_CLASSES: ",".join(str(s.get_int("classes", 20)) for s in cfg.layers if s.type == "yolo"),
    })
    return model


def convert(cfg: Path, weights: Path, input_size: tuple[int, int] | None = None, *,
            batch: int | None = None) -> onnx.ModelProto:
    """Reads the Darknet files and builds the ONNX model; ``input_size`` is (width, height), default the cfg's."""
    parsed = darknet.parse_cfg(Path(cfg))
    blobs = darknet.read_weights(Path(weights), parsed)
    model = build_model(parsed, blobs, input_size, batch)
    helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                   METADATA_DIGEST: source_digest(Path(cfg), Path(weights))})
    return model


def save_atomically(model: onnx.ModelProto, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private; a model built at image build time is read by a non-root user.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def onnx_path(weights: Path, input_size: tuple[int, int]) -> Path:
    """Where ``ensure_onnx`` caches a conversion: beside the weights, one file per input size."""
    width, height = input_size
    return Path(weights).with_name(f"{Path(weights).stem}-{width}x{height}.onnx")


def _is_current(path: Path, digest: str, input_size: tuple[int, int]) -> bool:
    try:
        model = onnx.load(str(path))
    except Exception:  # unreadable or half-written by a foreign tool: rebuild
        return False
    props = {p.key: p.value for p in model.metadata_props}
    if props.get(METADATA_DIGEST) != digest or props.get(METADATA_INPUT_SIZE) != "{}x{}".format(*input_size):
        return False
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError:
        return False
    return True


def ensure_onnx(cfg: Path, weights: Path, input_size: tuple[int, int]) -> Path:
    """``<weights stem>-<W>x<H>.onnx`` next to the weights, rebuilt only when cfg, weights or converter changed.

    The cache key is a hash of the cfg and weights stored in the model's metadata, so a copied
    or touched file is never mistaken for a fresh one; the batch dimension is dynamic.
    """
    target = onnx_path(weights, input_size)
    digest = source_digest(Path(cfg), Path(weights))
    if target.is_file() and _is_current(target, digest, input_size):
        return target
    started = time.perf_counter()
    model = convert(Path(cfg), Path(weights), input_size)
    onnx.checker.check_model(model)
    save_atomically(model, target)
    log.info("converted %s to %s in %.2f s", weights, target, time.perf_counter() - started)
    return target


def _parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or WxH, got {text!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected N or WxH with positive sizes, got {text!r}")
    return values[0], values[1]


def _parse_batch(text: str) -> int | None:
    if text == "dynamic":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'dynamic' or a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"batch must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.yolodetection.modeltools.convert",
        description="Convert a Darknet YOLO model (v3, v3-tiny, v4-tiny layers) to ONNX with OpenCV's head layout.",
    )
    parser.add_argument("cfg", type=Path)
    parser.add_argument("weights", type=Path)
    parser.add_argument("out", type=Path, help="the .onnx file to write")
    parser.add_argument("--input-size", type=_parse_size, default=None,
                        help="network input N (square) or WxH; default: the cfg's width and height")
    parser.add_argument("--batch", type=_parse_batch, default=None, metavar="dynamic|N",
                        help="batch dimension: dynamic (default) or a fixed size")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        model = convert(args.cfg, args.weights, args.input_size, batch=args.batch)
        onnx.checker.check_model(model)
    except (ValueError, OSError, onnx.checker.ValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    save_atomically(model, args.out)
    elapsed = time.perf_counter() - started
    heads = ", ".join(
        f"{o.name} {tuple(d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim)}"
        for o in model.graph.output
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) in {elapsed:.2f} s: {heads}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
