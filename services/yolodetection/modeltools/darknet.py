"""Darknet model files, read without Darknet: the cfg's sections, the layer shapes, the .weights blobs.

Pure Python + numpy, so the ONNX converter (``services.yolodetection.modeltools.convert``) and its tests can
reason about a model without OpenCV. Layer numbering follows Darknet: ``[net]`` is not a layer,
the first section after it is layer 0, and ``[route]``/``[shortcut]`` refer to layers by that
number (negative: relative to the referring layer).
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NET_SECTIONS = ("net", "network")
# Darknet accepts short aliases for some section names; normalise to the long form.
SECTION_ALIASES = {"conv": "convolutional", "max": "maxpool"}
# Only convolutional layers carry weights in the models this module supports.
WEIGHTED_TYPES = ("convolutional",)


@dataclass
class Section:
    """One ``[type]`` block of a cfg; Darknet cfgs repeat section names, so these live in a list."""

    type: str
    options: dict[str, str] = field(default_factory=dict)
    line: int = 0  # 1-based line of the ``[type]`` header, for error messages

    def get_str(self, key: str, default: str | None = None) -> str:
        if key in self.options:
            return self.options[key]
        if default is None:
            raise ValueError(f"[{self.type}] at line {self.line}: missing required option {key!r}")
        return default

    def get_int(self, key: str, default: int | None = None) -> int:
        if key not in self.options:
            if default is None:
                raise ValueError(f"[{self.type}] at line {self.line}: missing required option {key!r}")
            return default
        try:
            return int(self.options[key])
        except ValueError:
            raise ValueError(
                f"[{self.type}] at line {self.line}: {key}={self.options[key]!r} is not an integer"
            ) from None

    def get_float(self, key: str, default: float | None = None) -> float:
        if key not in self.options:
            if default is None:
                raise ValueError(f"[{self.type}] at line {self.line}: missing required option {key!r}")
            return default
        try:
            return float(self.options[key])
        except ValueError:
            raise ValueError(
                f"[{self.type}] at line {self.line}: {key}={self.options[key]!r} is not a number"
            ) from None

    def get_ints(self, key: str, default: list[int] | None = None) -> list[int]:
        if key not in self.options:
            if default is None:
                raise ValueError(f"[{self.type}] at line {self.line}: missing required option {key!r}")
            return list(default)
        try:
            return [int(v) for v in self.options[key].split(",") if v.strip()]
        except ValueError:
            raise ValueError(
                f"[{self.type}] at line {self.line}: {key}={self.options[key]!r} is not a list of integers"
            ) from None

    def get_floats(self, key: str) -> list[float]:
        try:
            return [float(v) for v in self.get_str(key).split(",") if v.strip()]
        except ValueError:
            raise ValueError(
                f"[{self.type}] at line {self.line}: {key}={self.options[key]!r} is not a list of numbers"
            ) from None


@dataclass
class DarknetCfg:
    """The ``[net]`` options and the layers, in file order (index = Darknet layer number)."""

    net: Section
    layers: list[Section]

    @property
    def width(self) -> int:
        return self.net.get_int("width", 416)

    @property
    def height(self) -> int:
        return self.net.get_int("height", 416)

    @property
    def channels(self) -> int:
        return self.net.get_int("channels", 3)


def parse_cfg_text(text: str) -> DarknetCfg:
    """Darknet's own rules: whitespace anywhere is dropped, ``#``/``;`` start comment lines."""
    sections: list[Section] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise ValueError(f"cfg line {number}: malformed section header {raw.strip()!r}")
            name = line[1:-1].lower()
            sections.append(Section(SECTION_ALIASES.get(name, name), {}, number))
            continue
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise ValueError(f"cfg line {number}: expected key=value, got {raw.strip()!r}")
        if not sections:
            raise ValueError(f"cfg line {number}: option {key!r} before the first [section]")
        sections[-1].options[key] = value
    if not sections or sections[0].type not in NET_SECTIONS:
        raise ValueError("cfg must start with a [net] section")
    if any(s.type in NET_SECTIONS for s in sections[1:]):
        raise ValueError("cfg has more than one [net] section")
    if len(sections) < 2:
        raise ValueError("cfg has no layers after [net]")
    return DarknetCfg(sections[0], sections[1:])


def parse_cfg(path: Path) -> DarknetCfg:
    """Parses a cfg file (see ``parse_cfg_text``)."""
    return parse_cfg_text(Path(path).read_text(encoding="utf-8", errors="replace"))


@dataclass(frozen=True)
class Shape:
    """Per-image tensor shape of a layer's output (Darknet keeps NCHW; the batch axis is implicit)."""

    c: int
    h: int
    w: int


def resolve_index(ref: int, current: int, what: str) -> int:
    """Darknet's layer reference: negative is relative to the referring layer, else absolute."""
    index = current + ref if ref < 0 else ref
    if not 0 <= index < current:
        raise ValueError(f"layer {current} [{what}]: reference {ref} points to layer {index}, "
                         f"outside the earlier layers 0..{current - 1}")
    return index


def conv_padding(section: Section) -> int:
    """``pad=1`` means 'same' padding (size // 2) and overrides ``padding``, as in Darknet."""
    size = section.get_int("size", 1)
    return size // 2 if section.get_int("pad", 0) else section.get_int("padding", 0)


def maxpool_padding(section: Section) -> int:
    """Total padding of a maxpool: Darknet's default ``size - 1`` keeps stride-1 pools size-preserving."""
    return section.get_int("padding", section.get_int("size", 2) - 1)


def route_sources(section: Section, index: int) -> list[int]:
    """Absolute indices of the layers a ``[route]`` concatenates, validated."""
    refs = section.get_ints("layers")
    if not refs:
        raise ValueError(f"layer {index} [route]: empty layers=")
    return [resolve_index(r, index, "route") for r in refs]


def shortcut_source(section: Section, index: int) -> int:
    """Absolute index of the layer a ``[shortcut]`` adds (Darknet's multi-``from`` weighted form is refused)."""
    refs = section.get_ints("from")
    if len(refs) != 1:
        raise ValueError(f"layer {index} [shortcut]: exactly one from= layer is supported; got {refs}")
    return resolve_index(refs[0], index, "shortcut")


def yolo_mask(section: Section) -> list[int]:
    """Without ``mask`` Darknet uses every anchor."""
    num = section.get_int("num", 1)
    return section.get_ints("mask", list(range(num)))


# Options that change what a layer computes but that this module does not implement (nor does OpenCV,
# the reference): refusing them beats a model that silently computes something else.
UNSUPPORTED_OPTIONS: dict[str, dict[str, str]] = {
    "convolutional": {"dilation": "1", "flipped": "0", "binary": "0", "xnor": "0", "share_index": "",
                      "antialiasing": "0", "deform": "0", "stride_x": "", "stride_y": ""},
    "maxpool": {"maxpool_depth": "0", "stride_x": "", "stride_y": "", "antialiasing": "0"},
    "upsample": {"scale": "1"},
    "shortcut": {"weights_type": "none", "alpha": "1", "beta": "1"},
    "yolo": {"new_coords": "0"},
    "route": {},
}
ACTIVATIONS = ("linear", "leaky", "logistic", "mish", "swish", "relu")


def check_supported_options(section: Section, index: int) -> None:
    """ValueError naming the layer when an option asks for something not implemented here."""
    where = f"layer {index} [{section.type}]"
    for key, neutral in UNSUPPORTED_OPTIONS.get(section.type, {}).items():
        value = section.options.get(key)
        if value is None or value == neutral:
            continue
        try:
            if neutral and float(value) == float(neutral):
                continue
        except ValueError:
            pass
        raise ValueError(f"{where}: option {key}={value} is not supported")
    activation = section.options.get("activation", "linear")
    if section.type in ("convolutional", "shortcut") and activation not in ACTIVATIONS:
        raise ValueError(f"{where}: activation {activation!r} is not supported ({', '.join(ACTIVATIONS)})")


def layer_shapes(cfg: DarknetCfg, width: int | None = None, height: int | None = None) -> list[Shape]:
    """Output shape of every layer, checking every reference and channel count on the way."""
    w = width or cfg.width
    h = height or cfg.height
    current = Shape(cfg.channels, h, w)
    shapes: list[Shape] = []
    for i, s in enumerate(cfg.layers):
        where = f"layer {i} [{s.type}]"
        check_supported_options(s, i)
        if s.type in ("route", "shortcut"):
            refs = route_sources(s, i) if s.type == "route" else [shortcut_source(s, i)]
            if any(cfg.layers[j].type == "yolo" for j in refs):
                raise ValueError(f"{where}: referring to a [yolo] layer's output is not supported")
        if s.type == "convolutional":
            size, stride = s.get_int("size", 1), s.get_int("stride", 1)
            filters, groups = s.get_int("filters", 1), s.get_int("groups", 1)
            pad = conv_padding(s)
            if size < 1 or stride < 1 or filters < 1 or groups < 1:
                raise ValueError(f"{where}: size, stride, filters and groups must be >= 1")
            if current.c % groups or filters % groups:
                raise ValueError(f"{where}: groups={groups} does not divide {current.c} input channels "
                                 f"and {filters} filters")
            oh = (current.h + 2 * pad - size) // stride + 1
            ow = (current.w + 2 * pad - size) // stride + 1
            current = Shape(filters, oh, ow)
        elif s.type == "maxpool":
            size, stride = s.get_int("size", 2), s.get_int("stride", 2)
            pad = maxpool_padding(s)
            if size < 1 or stride < 1 or pad < 0:
                raise ValueError(f"{where}: size and stride must be >= 1, padding >= 0")
            current = Shape(current.c, (current.h + pad - size) // stride + 1,
                            (current.w + pad - size) // stride + 1)
        elif s.type == "upsample":
            stride = s.get_int("stride", 2)
            if stride < 1:
                raise ValueError(f"{where}: only stride >= 1 (upsampling) is supported; got {stride}")
            current = Shape(current.c, current.h * stride, current.w * stride)
        elif s.type == "route":
            sources = [shapes[j] for j in route_sources(s, i)]
            groups, group_id = s.get_int("groups", 1), s.get_int("group_id", 0)
            if groups < 1 or not 0 <= group_id < groups:
                raise ValueError(f"{where}: need groups >= 1 and 0 <= group_id < groups; got {groups}, {group_id}")
            if any(src.c % groups for src in sources):
                raise ValueError(f"{where}: groups={groups} does not divide the routed channels "
                                 f"{[src.c for src in sources]}")
            if len({(src.h, src.w) for src in sources}) != 1:
                raise ValueError(f"{where}: routed layers differ in size: {[(src.h, src.w) for src in sources]}")
            current = Shape(sum(src.c // groups for src in sources), sources[0].h, sources[0].w)
        elif s.type == "shortcut":
            src = shapes[shortcut_source(s, i)]
            if (src.h, src.w) != (current.h, current.w):
                raise ValueError(f"{where}: cannot add a {src.h}x{src.w} layer to a {current.h}x{current.w} one")
        elif s.type == "yolo":
            mask, classes, num = yolo_mask(s), s.get_int("classes", 20), s.get_int("num", 1)
            if len(s.get_floats("anchors")) != 2 * num:
                raise ValueError(f"{where}: num={num} needs {2 * num} anchor values; got {s.get_str('anchors')}")
            if not mask or any(not 0 <= m < num for m in mask):
                raise ValueError(f"{where}: mask {mask} must name anchors in 0..{num - 1}")
            if current.c != len(mask) * (5 + classes):
                raise ValueError(f"{where}: input has {current.c} channels; {len(mask)} anchors x "
                                 f"(5 + {classes} classes) = {len(mask) * (5 + classes)} expected")
        else:
            raise ValueError(f"{where}: unsupported layer type (line {s.line})")
        if current.h < 1 or current.w < 1:
            raise ValueError(f"{where}: output would be {current.h}x{current.w}; input {w}x{h} is too small")
        shapes.append(current)
    return shapes


@dataclass
class ConvWeights:
    """One convolutional layer's blobs, in Darknet's storage order."""

    biases: np.ndarray  # (filters,)
    weights: np.ndarray  # (filters, channels // groups, size, size)
    bn_scales: np.ndarray | None = None  # (filters,) when batch_normalize=1
    bn_mean: np.ndarray | None = None
    bn_var: np.ndarray | None = None


@dataclass
class DarknetWeights:
    major: int
    minor: int
    revision: int
    seen: int
    layers: dict[int, ConvWeights]  # by Darknet layer index


def header_size(major: int, minor: int) -> int:
    """``seen`` became 64-bit in format 0.2; Darknet's own test also excludes transposed (>= 1000) files."""
    wide_seen = (major * 10 + minor) >= 2 and major < 1000 and minor < 1000
    return 12 + (8 if wide_seen else 4)


def read_weights(path: Path, cfg: DarknetCfg) -> DarknetWeights:
    """Reads every convolutional layer's blobs; raises ValueError when the size does not match the cfg."""
    data = Path(path).read_bytes()
    if len(data) < 16:
        raise ValueError(f"{path}: {len(data)} bytes is too short for a Darknet weights header")
    major, minor, revision = (int(v) for v in np.frombuffer(data, "<i4", 3))
    offset = header_size(major, minor)
    if len(data) < offset:
        raise ValueError(f"{path}: {len(data)} bytes is too short for a Darknet {major}.{minor} header")
    seen = int(np.frombuffer(data, "<i8" if offset == 20 else "<i4", 1, 12)[0])

    # Channels only (spatial sizes do not change the weights' shapes).
    shapes = layer_shapes(cfg)
    in_channels = [cfg.channels] + [s.c for s in shapes[:-1]]
    layers: dict[int, ConvWeights] = {}

    def take(count: int, i: int, what: str) -> np.ndarray:
        nonlocal offset
        end = offset + 4 * count
        if end > len(data):
            raise ValueError(
                f"{path}: weights file ends inside layer {i} [convolutional] ({what}): it has {len(data)} bytes, "
                f"the cfg needs at least {end}; the weights do not belong to this cfg or the file is truncated"
            )
        blob = np.frombuffer(data, "<f4", count, offset).astype(np.float32)
        offset = end
        return blob

    for i, s in enumerate(cfg.layers):
        if s.type not in WEIGHTED_TYPES:
            continue
        filters, size, groups = s.get_int("filters", 1), s.get_int("size", 1), s.get_int("groups", 1)
        per_filter = in_channels[i] // groups
        conv = ConvWeights(biases=take(filters, i, "biases"), weights=np.empty(0, np.float32))
        if s.get_int("batch_normalize", 0):
            conv.bn_scales = take(filters, i, "batch-norm scales")
            conv.bn_mean = take(filters, i, "batch-norm rolling mean")
            conv.bn_var = take(filters, i, "batch-norm rolling variance")
        conv.weights = take(filters * per_filter * size * size, i, "weights").reshape(filters, per_filter, size, size)
        layers[i] = conv
    if offset != len(data):
        raise ValueError(
            f"{path}: {len(data) - offset} bytes left after the last layer ({len(data)} bytes, the cfg needs "
            f"{offset}); the weights do not belong to this cfg"
        )
    return DarknetWeights(major, minor, revision, seen, layers)


def write_weights(path: Path, cfg: DarknetCfg, layers: dict[int, ConvWeights], seen: int = 0) -> None:
    """The inverse of ``read_weights`` (format 0.2, 64-bit ``seen``): for tests and tools."""
    parts = [np.array([0, 2, 0], "<i4").tobytes(), np.array([seen], "<i8").tobytes()]
    for i, s in enumerate(cfg.layers):
        if s.type not in WEIGHTED_TYPES:
            continue
        conv = layers[i]
        blobs = [conv.biases]
        if s.get_int("batch_normalize", 0):
            if conv.bn_scales is None or conv.bn_mean is None or conv.bn_var is None:
                raise ValueError(f"layer {i} [convolutional]: batch_normalize=1 needs scales, mean and variance")
            blobs += [conv.bn_scales, conv.bn_mean, conv.bn_var]
        blobs.append(conv.weights)
        parts += [np.ascontiguousarray(b, "<f4").tobytes() for b in blobs]
    Path(path).write_bytes(b"".join(parts))


def cfg_input_size(cfg: Path) -> tuple[int, int]:
    """(width, height) from the cfg's [net] section (Darknet cfgs repeat section names, hence strict=False)."""
    parser = configparser.ConfigParser(strict=False, inline_comment_prefixes=("#", ";"))
    parser.read_string(Path(cfg).read_text())
    return int(parser["net"]["width"]), int(parser["net"]["height"])
