"""The pictures of a live view besides the frames themselves, and text that stays readable when scaled.

Pure: images in, new images out (``label`` draws into the image it is given). The page scales every
picture to the browser window, so text is sized from the picture's width: a label on a 1920-pixel frame
shown in a 640-pixel window is as readable as one on a 640-pixel frame.
"""

from __future__ import annotations

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
PLACEHOLDER_SIZE = (640, 480)
DIM = 0.35  # what is left of a stale frame's brightness
TEXT = (235, 235, 235)
SUBTEXT = (170, 170, 170)
PLATE = (24, 24, 24)
BACKGROUND = 40


def text_scale(width: int) -> float:
    """Font scale for a picture ``width`` pixels wide: text about 1/65 of the width tall, never tiny."""
    return max(0.4, width / 1300)


def thickness(scale: float) -> int:
    return max(1, round(scale * 1.6))


def fitted_scale(text: str, max_width: int, scale: float) -> float:
    """``scale``, reduced so that ``text`` fits in ``max_width`` pixels."""
    width = cv2.getTextSize(text, FONT, scale, thickness(scale))[0][0]
    return scale if width <= max_width or width == 0 else max(0.3, scale * max_width / width)


def label(image: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int]) -> None:
    """``text`` on a dark plate just above (x, y) (below it at the top edge), kept inside the picture."""
    height, width = image.shape[:2]
    scale = fitted_scale(text, width - 4, text_scale(width))
    weight = thickness(scale)
    (tw, th), base = cv2.getTextSize(text, FONT, scale, weight)
    pad = max(2, th // 4)
    left = min(max(0, x), max(0, width - tw - 2 * pad))
    top = y - th - base - 2 * pad
    if top < 0:
        top = min(max(0, y), max(0, height - th - base - 2 * pad))
    cv2.rectangle(image, (left, top), (left + tw + 2 * pad - 1, top + th + base + 2 * pad - 1), PLATE,
                  cv2.FILLED)  # corners inclusive
    cv2.putText(image, text, (left + pad, top + pad + th), FONT, scale, color, weight, cv2.LINE_AA)


def wrapped(parts: list[str], max_width: int, scale: float, separator: str = " | ") -> list[str]:
    """``parts`` joined by ``separator`` into as few lines as fit ``max_width`` pixels at ``scale``."""
    lines: list[str] = []
    for part in parts:
        joined = f"{lines[-1]}{separator}{part}" if lines else part
        if lines and cv2.getTextSize(joined, FONT, scale, thickness(scale))[0][0] <= max_width:
            lines[-1] = joined
        else:
            lines.append(part)
    return lines


def with_status_bar(image: np.ndarray, parts: list[str]) -> np.ndarray:
    """A new picture: ``image`` with a dark strip below it (the frame stays uncovered) carrying ``parts``
    separated by " | ", on as many lines as the width needs at a readable size."""
    width = image.shape[1]
    scale = text_scale(width)
    lines = wrapped(parts, width - 16, scale)
    scales = [fitted_scale(line, width - 16, scale) for line in lines]  # a single part too long: smaller
    weight = thickness(scale)
    (_tw, th), base = cv2.getTextSize("Ag", FONT, scale, weight)
    pad = max(4, th // 2)
    step = th + base + pad
    bar = np.full((len(lines) * step + pad, width, 3), PLATE, np.uint8)
    for row, (line, line_scale) in enumerate(zip(lines, scales, strict=True)):
        cv2.putText(bar, line, (8, pad + th + row * step), FONT, line_scale, TEXT, thickness(line_scale),
                    cv2.LINE_AA)
    return np.vstack([image, bar])


def _centred_lines(image: np.ndarray, title: str, subtitle: str) -> None:
    height, width = image.shape[:2]
    scale = fitted_scale(title, width - 20, 2.2 * text_scale(width))
    sub_scale = fitted_scale(subtitle, width - 20, text_scale(width))
    (tw, th), _ = cv2.getTextSize(title, FONT, scale, thickness(scale))
    (sw, sh), _ = cv2.getTextSize(subtitle, FONT, sub_scale, thickness(sub_scale))
    top = (height - th - 2 * sh) // 2 + th
    cv2.putText(image, title, ((width - tw) // 2, top), FONT, scale, TEXT, thickness(scale), cv2.LINE_AA)
    if subtitle:
        cv2.putText(image, subtitle, ((width - sw) // 2, top + 2 * sh), FONT, sub_scale, SUBTEXT,
                    thickness(sub_scale), cv2.LINE_AA)


def placeholder(title: str, subtitle: str = "", size: tuple[int, int] = PLACEHOLDER_SIZE) -> np.ndarray:
    """A dark picture of ``size`` (width, height) saying ``title`` (e.g. "waiting for frames")."""
    width, height = size
    image = np.full((height, width, 3), BACKGROUND, np.uint8)
    _centred_lines(image, title, subtitle)
    return image


def dimmed(image: np.ndarray, title: str, subtitle: str = "") -> np.ndarray:
    """A new picture: ``image`` darkened (plainly not live) with ``title`` and ``subtitle`` across it."""
    out = cv2.convertScaleAbs(image, alpha=DIM)
    _centred_lines(out, title, subtitle)
    return out
