"""The simulator's world and camera: a real person walking a path, seen by a pinhole camera on the robot.

Pure rendering (numpy + OpenCV, no gRPC, no clock): ``SimWorld.render(pose, t)`` gives the BGR image the
robot's camera would capture at time ``t``, so that a closed-loop simulation can send it through the real
detection mesh; ``target_bearing``/``target_in_view``/``target_box`` give the ground truth for scoring.

Geometry. World frame: metres, x/y on the ground, heading counter-clockwise from +x (``Pose``). Camera frame:
forward along the robot's heading, right, up; the camera looks horizontally from ``mount_height_m`` above the
ground, so the horizon is the middle row. A point at depth ``forward`` and lateral offset ``right`` projects to
column ``cx + f * right / forward``; ``f`` follows from the horizontal field of view; pixels are square.

Scene. A 360° cylindrical panorama at infinity above the horizon (so turning moves it and driving does not) and
a textured ground plane below it, sampled per pixel from the robot's pose (so driving moves it and the texture
shrinks towards the horizon exactly as the camera height dictates). The person is a camera-facing billboard
standing on the ground, cut from a real clip (``load_person_sprite``).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from robotclient.runtime.model import Box, Pose

# Nearer than this (metres of depth) the person is not drawn: it would fill the whole image.
NEAR_CLIP_M = 0.2

# The person sprite: vtest.avi (OpenCV sample, 768x576), frame 659, a man in a blue jacket walking on the grey
# road, alone, whole body visible, about 117 px tall. Found once by background subtraction against the clip's
# per-pixel median (|frame - median| > 35, opened and closed, connected components taller than 105 px with no
# other moving blob nearby), then checked by eye and with YOLOv3-tiny (person, 0.9+) in renders at 3-8 m.
# The box (x, y, w, h) is a few pixels larger than the blob so that grabCut sees background all around it.
SPRITE_CLIP = "vtest.avi"
SPRITE_FRAME = 659
SPRITE_BOX = (678, 292, 72, 134)

# Regions of the clip's median frame (people removed) used for the scenery, in (x, y, w, h).
# The building band along the top edge, left of the parked van (YOLO calls the van a truck).
FACADE_BOX = (0, 0, 640, 104)
# A patch of lawn in the lower left without the stone, the cloth or the tripod.
LAWN_BOX = (0, 330, 300, 150)


@dataclass(frozen=True)
class CameraModel:
    """Pinhole camera on the robot; defaults: Raspberry Pi camera v2 field of view, RoboMaster mount height."""

    hfov_deg: float = 62.2
    width: int = 640
    height: int = 480
    mount_height_m: float = 0.3

    def __post_init__(self) -> None:
        if not 0.0 < self.hfov_deg < 180.0:
            raise ValueError(f"hfov_deg must be in (0, 180); got {self.hfov_deg}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive; got {self.width}x{self.height}")
        if self.mount_height_m <= 0.0:
            raise ValueError(f"mount_height_m must be positive; got {self.mount_height_m}")

    @property
    def focal_px(self) -> float:
        """Focal length in pixels (the same both ways: square pixels)."""
        return (self.width / 2.0) / math.tan(math.radians(self.hfov_deg) / 2.0)

    @property
    def cx(self) -> float:
        return self.width / 2.0

    @property
    def cy(self) -> float:
        """The principal point's row, which is also the horizon (the camera looks horizontally)."""
        return self.height / 2.0

    @property
    def vfov_deg(self) -> float:
        return math.degrees(2.0 * math.atan(self.cy / self.focal_px))

    def column_of_bearing(self, bearing_deg: float) -> float:
        """Image column (continuous) of a direction ``bearing_deg`` to the right of the optical axis."""
        return self.cx + self.focal_px * math.tan(math.radians(bearing_deg))

    def min_full_body_distance_m(self, person_height_m: float) -> float:
        """Closest depth at which a standing person's head is still inside the image (feet are nearer still)."""
        return self.focal_px * max(person_height_m - self.mount_height_m, 0.0) / self.cy


@dataclass(frozen=True, eq=False)
class PersonSprite:
    """A person cut out of a real image: BGR pixels and an alpha mask, cropped tight (feet on the bottom row)."""

    bgr: np.ndarray
    alpha: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        if self.bgr.ndim != 3 or self.bgr.shape[2] != 3 or self.bgr.dtype != np.uint8:
            raise ValueError(f"bgr must be (h, w, 3) uint8; got {self.bgr.shape} {self.bgr.dtype}")
        if self.alpha.shape != self.bgr.shape[:2]:
            raise ValueError(f"alpha must be {self.bgr.shape[:2]}; got {self.alpha.shape}")
        if self.alpha.dtype != np.float32 or self.alpha.min() < 0.0 or self.alpha.max() > 1.0:
            raise ValueError("alpha must be float32 in [0, 1]")

    @property
    def aspect(self) -> float:
        """Width over height: how wide the billboard is for a given height."""
        return self.bgr.shape[1] / self.bgr.shape[0]


class PersonPath:
    """Where the person is at time ``t``: waypoints walked at constant speed, looping or going back and forth.

    ``loop`` walks back from the last waypoint to the first; ``pingpong`` retraces the waypoints in reverse.
    Before ``t = 0`` the person waits where they are at ``t = 0``; ``phase_s`` starts them that many seconds along.
    """

    MODES = ("loop", "pingpong")

    def __init__(
        self,
        waypoints: Sequence[tuple[float, float]],
        speed_mps: float = 0.6,
        mode: str = "loop",
        phase_s: float = 0.0,
    ) -> None:
        if not waypoints:
            raise ValueError("a path needs at least one waypoint")
        if speed_mps <= 0.0:
            raise ValueError(f"speed_mps must be positive; got {speed_mps}")
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {', '.join(self.MODES)}; got {mode!r}")
        self.waypoints: tuple[tuple[float, float], ...] = tuple((float(x), float(y)) for x, y in waypoints)
        self.speed_mps = float(speed_mps)
        self.mode = mode
        # Seconds already walked at t = 0 (a walker starting part-way along its path).
        self.phase_s = float(phase_s)
        points = list(self.waypoints)
        if len(points) > 1:
            points = [*points, points[0]] if mode == "loop" else [*points, *reversed(points[:-1])]
        self._points = points
        self._cumulative = [0.0]
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            self._cumulative.append(self._cumulative[-1] + math.hypot(x1 - x0, y1 - y0))

    @classmethod
    def default(cls, speed_mps: float = 0.6) -> PersonPath:
        """The standard scenario for a robot at the origin facing +x (the default camera sees bearings within ±31°).

        Starts 3.5 m ahead, 0.3 m to the right (bearing +5°); walks left across the view to 40° left (out of view
        of a robot that does not turn from 3.9 s to 7.8 s), back across to 42° right (out of view again from
        17.9 s to 21.5 s) and back to the start: 14.6 m, 24.4 s a cycle at 0.6 m/s. Distance stays 3.5-5.8 m and
        depth at least 3.3 m, where the whole body is in the image (from 3.2 m for 1.75 m with the default camera;
        nearer, the head is cut off).
        """
        return cls([(3.5, -0.3), (3.3, 2.8), (4.6, 3.0), (5.2, -2.5), (3.3, -3.0)], speed_mps=speed_mps)

    @property
    def length_m(self) -> float:
        """Distance walked in one cycle."""
        return self._cumulative[-1]

    @property
    def period_s(self) -> float:
        """Time of one cycle (0 for a person standing still)."""
        return self.length_m / self.speed_mps

    def position(self, t: float) -> tuple[float, float]:
        """(x, y) in metres at ``t`` seconds."""
        if self.length_m == 0.0:
            return self._points[0]
        s = ((max(t, 0.0) + max(self.phase_s, 0.0)) * self.speed_mps) % self.length_m
        i = min(bisect.bisect_right(self._cumulative, s) - 1, len(self._points) - 2)
        segment = self._cumulative[i + 1] - self._cumulative[i]
        u = (s - self._cumulative[i]) / segment if segment > 0 else 0.0
        (x0, y0), (x1, y1) = self._points[i], self._points[i + 1]
        return x0 + u * (x1 - x0), y0 + u * (y1 - y0)


@dataclass(frozen=True, eq=False)
class Walker:
    """Another person in the world (a distractor): their looks, their path and their height."""

    sprite: PersonSprite
    path: PersonPath
    height_m: float = 1.75

    def __post_init__(self) -> None:
        if self.height_m <= 0.0:
            raise ValueError(f"height_m must be positive; got {self.height_m}")


def recoloured(sprite: PersonSprite, hue_shift: int, source: str = "") -> PersonSprite:
    """The same person in other clothes: hues turned by ``hue_shift`` (OpenCV units, 180 a turn), saturation up.

    Grey and skin-dark pixels barely change; the blue jacket of the vtest sprite becomes another colour, so that
    appearance can tell the two apart while the shape (what the detector sees) stays a real person.
    """
    hsv = cv2.cvtColor(sprite.bgr, cv2.COLOR_BGR2HSV)
    h = hsv[..., 0].astype(np.int32)
    hsv[..., 0] = ((h + int(hue_shift)) % 180).astype(np.uint8)
    hsv[..., 1] = np.clip(hsv[..., 1].astype(np.float32) * 1.6 + 20.0, 0, 255).astype(np.uint8)
    bgr = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    label = source or f"{sprite.source} hue {hue_shift:+d}"
    return PersonSprite(np.ascontiguousarray(bgr), sprite.alpha.copy(), source=label)


def crossing_walkers(
    sprite: PersonSprite,
    count: int,
    rng: np.random.Generator,
    *,
    speed_mps: float = 0.6,
) -> list[Walker]:
    """``count`` distractors that walk across the default scenario's path in front of a robot at the origin.

    Each walks back and forth along a slanted line from one side of the view to the other (y from about -3.5 m to
    +3.5 m), at a depth between 3.3 and 5.0 m (where the target walks too), so that in the image they pass in front
    of or behind the target, overlapping it (occlusion) and walking next to it (proximity). They start at one end,
    out of view of a robot at the origin, so that the person first acquired is the target. Side, direction,
    depth, slant, speed, height and clothes colour come from ``rng`` (seeded: the same seed, the same world).
    """
    if count < 0:
        raise ValueError(f"count must be >= 0; got {count}")
    walkers = []
    for _ in range(count):
        depth = float(rng.uniform(3.3, 5.0))
        slant = float(rng.uniform(-0.6, 0.6))
        half = float(rng.uniform(3.2, 3.8))
        side = 1.0 if rng.random() < 0.5 else -1.0
        ends = [(max(3.3, depth - slant), side * half), (max(3.3, depth + slant), -side * half)]
        speed = speed_mps * float(rng.uniform(0.75, 1.25))
        # Enters from the side (out of view at its ends) within the first seconds: the robot acquires the target.
        path = PersonPath(ends, speed_mps=speed, mode="pingpong", phase_s=float(rng.uniform(0.0, 0.5)))
        hue = int(rng.integers(50, 130))  # blue (about 110) turned well away: orange, red, green or purple
        walkers.append(Walker(recoloured(sprite, hue), path, height_m=float(rng.uniform(1.65, 1.85))))
    return walkers


def seeded_rng(seed: int) -> np.random.Generator:
    """The world's random generator for ``seed`` (one place, so that a seed means the same world everywhere)."""
    return np.random.default_rng(seed)


def relative_position(pose: Pose, x: float, y: float) -> tuple[float, float]:
    """(forward, right) metres of the world point (x, y) in the robot's frame."""
    dx, dy = x - pose.x, y - pose.y
    c, s = math.cos(pose.heading), math.sin(pose.heading)
    return dx * c + dy * s, dx * s - dy * c


def procedural_panorama(width: int = 2048, height: int = 400) -> np.ndarray:
    """A 360° wall of coloured panels (no data needed): each direction looks different, so turning shows."""
    azimuth = np.arange(width, dtype=np.float32) / width
    hue = (azimuth * 180.0 * 3.0) % 180.0  # three hue cycles around the room
    panel = (np.floor(azimuth * 24) % 2).astype(np.float32)
    hsv = np.empty((height, width, 3), dtype=np.uint8)
    hsv[..., 0] = hue.astype(np.uint8)[None, :]
    hsv[..., 1] = (60 + 50 * panel).astype(np.uint8)[None, :]
    rows = np.arange(height, dtype=np.float32)[:, None] / height
    hsv[..., 2] = (150 + 60 * rows - 25 * ((np.floor(rows * 8) % 2) * panel[None, :])).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def procedural_floor(size: int = 256) -> np.ndarray:
    """A grey checkerboard tile (two squares per side) for when no real floor texture is given."""
    half = size // 2
    tile = np.full((size, size, 3), 150, dtype=np.uint8)
    tile[:half, :half] = 110
    tile[half:, half:] = 110
    return tile


class SimWorld:
    """The scene and the robot's camera: renders what the camera sees from a pose at a time, and the ground truth.

    ``background`` is a 360° cylindrical panorama: its columns span the full turn (column 0 looks along +x,
    columns increase clockwise), its rows run from the top down to the horizon on its bottom row, at
    ``width / 2π`` pixels per radian; None gives ``procedural_panorama()``. ``floor`` is a tile of ground texture
    ``floor_tile_m`` metres square, repeated over the ground; None gives a checkerboard.
    """

    def __init__(
        self,
        sprite: PersonSprite,
        path: PersonPath,
        camera: CameraModel = CameraModel(),
        background: np.ndarray | None = None,
        person_height_m: float = 1.75,
        *,
        floor: np.ndarray | None = None,
        floor_tile_m: float = 2.0,
        distractors: Sequence[Walker] = (),
    ) -> None:
        if person_height_m <= 0.0:
            raise ValueError(f"person_height_m must be positive; got {person_height_m}")
        if floor_tile_m <= 0.0:
            raise ValueError(f"floor_tile_m must be positive; got {floor_tile_m}")
        self.sprite = sprite
        self.path = path
        self.camera = camera
        self.person_height_m = float(person_height_m)
        self.floor_tile_m = float(floor_tile_m)
        self.distractors: tuple[Walker, ...] = tuple(distractors)
        panorama = procedural_panorama() if background is None else _as_bgr(background, "background")
        floor_tile = procedural_floor() if floor is None else _as_bgr(floor, "floor")
        # One extra column/row that repeats the first, so that bilinear sampling is seamless across the wrap.
        self._panorama = np.concatenate([panorama, panorama[:, :1]], axis=1)
        self._panorama_width = panorama.shape[1]
        floor_wrapped = np.concatenate([floor_tile, floor_tile[:, :1]], axis=1)
        floor_wrapped = np.concatenate([floor_wrapped, floor_wrapped[:1]], axis=0)
        # The far floor is sampled far too sparsely for its detail (one image row spans metres near the horizon):
        # each row blends between blurred copies by how many texture pixels it covers (a mip-map by hand), which
        # keeps the ground near the horizon free of aliasing stripes.
        self._floor_levels = [floor_wrapped] + [
            cv2.GaussianBlur(floor_wrapped, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_WRAP) for sigma in (3.0, 12.0)
        ]
        self._floor_mean = floor_tile.reshape(-1, 3).mean(axis=0).astype(np.float32)
        self._floor_size = (floor_tile.shape[1], floor_tile.shape[0])
        self._precompute_rays(panorama.shape[0])

    def _precompute_rays(self, panorama_height: int) -> None:
        """Everything about the pixels' rays that does not depend on the pose."""
        cam = self.camera
        f = cam.focal_px
        horizon = math.ceil(cam.cy - 0.5)  # first row whose pixel centre is below the horizon
        self._horizon_row = max(0, min(cam.height, horizon))
        cols = np.arange(cam.width, dtype=np.float64) + 0.5 - cam.cx
        # Sky/wall: cylinder coordinates of each pixel above the horizon.
        rows_up = cam.cy - (np.arange(self._horizon_row, dtype=np.float64) + 0.5)
        self._pano_col_offset = (np.arctan2(cols, f) / (2.0 * math.pi) * self._panorama_width)[None, :]
        pixels_per_radian = self._panorama_width / (2.0 * math.pi)
        tan_elevation = rows_up[:, None] / np.hypot(cols, f)[None, :]
        map_y = (panorama_height - 0.5) - tan_elevation * pixels_per_radian
        self._pano_map_y = np.clip(map_y, 0.0, panorama_height - 1).astype(np.float32)
        # Ground: where each pixel's ray meets the floor, in the camera's (forward, right) metres.
        rows_down = np.arange(self._horizon_row, cam.height, dtype=np.float64) + 0.5 - cam.cy
        depth = np.where(rows_down > 0, cam.mount_height_m * f / np.maximum(rows_down, 1e-9), np.inf)
        far = 60.0
        depth = np.minimum(depth, far)
        self._ground_forward = np.broadcast_to(depth[:, None], (len(depth), cam.width)).astype(np.float32)
        self._ground_right = (depth[:, None] * cols[None, :] / f).astype(np.float32)
        # Texture pixels covered by one image row (the ground recedes by depth² / (f * h) metres per row).
        texels_per_m = max(self._floor_size) / self.floor_tile_m
        footprint = np.log2(np.maximum(depth**2 / (f * cam.mount_height_m) * texels_per_m, 1e-6))
        # Sharp up to 2 texels a row, the sigma-3 copy at 8, the sigma-12 copy at 32, the mean colour from 128.
        levels = np.array([1.0, 3.0, 5.0, 7.0])
        self._ground_weights = [
            np.interp(footprint, levels, np.eye(4)[k]).astype(np.float32)[:, None, None] for k in range(4)
        ]

    # Ground truth -------------------------------------------------------------------------------------------

    def person_position(self, t: float) -> tuple[float, float]:
        """(x, y) of the person's feet in the world at ``t``."""
        return self.path.position(t)

    def target_bearing(self, pose: Pose, t: float) -> tuple[float, float]:
        """(bearing in degrees, positive to the robot's right; distance in metres) from the camera to the person."""
        forward, right = relative_position(pose, *self.path.position(t))
        return math.degrees(math.atan2(right, forward)), math.hypot(forward, right)

    def _billboard(self, pose: Pose, t: float) -> Box | None:
        """The person's unclipped box in the image, or None when behind or too close to the camera."""
        return self._billboard_at(pose, self.path.position(t), self.person_height_m, self.sprite.aspect)

    def _billboard_at(self, pose: Pose, position: tuple[float, float], height_m: float, aspect: float) -> Box | None:
        forward, right = relative_position(pose, *position)
        if forward < NEAR_CLIP_M:
            return None
        cam = self.camera
        scale = cam.focal_px / forward
        height = height_m * scale
        width = height * aspect
        column = cam.cx + right * scale
        feet = cam.cy + cam.mount_height_m * scale
        return Box(column - width / 2.0, feet - height, width, height)

    def _clipped(self, box: Box | None) -> Box | None:
        """``box`` clipped to the image; None when its centre line is outside the field of view or nothing is left."""
        if box is None or not 0.0 <= box.cx <= self.camera.width:
            return None
        x0, y0 = max(box.x, 0.0), max(box.y, 0.0)
        x1, y1 = min(box.x + box.w, float(self.camera.width)), min(box.y + box.h, float(self.camera.height))
        if x1 <= x0 or y1 <= y0:
            return None
        return Box(x0, y0, x1 - x0, y1 - y0)

    def target_in_view(self, pose: Pose, t: float) -> bool:
        """True when the person is in front and their centre line is within the horizontal field of view."""
        box = self._billboard(pose, t)
        return box is not None and 0.0 <= box.cx <= self.camera.width

    def target_box(self, pose: Pose, t: float) -> Box | None:
        """The person's box in the image, clipped to it; None when ``target_in_view`` is False."""
        return self._clipped(self._billboard(pose, t))

    def target_depth(self, pose: Pose, t: float) -> float:
        """Depth (metres along the camera's axis) of the target: who is in front of whom."""
        return relative_position(pose, *self.path.position(t))[0]

    def distractor_boxes(self, pose: Pose, t: float) -> list[Box | None]:
        """Each distractor's box in the image (clipped as ``target_box``; None when out of view), in their order."""
        return [
            self._clipped(self._billboard_at(pose, w.path.position(t), w.height_m, w.sprite.aspect))
            for w in self.distractors
        ]

    def distractor_depths(self, pose: Pose, t: float) -> list[float]:
        """Each distractor's depth (metres along the camera's axis), in their order."""
        return [relative_position(pose, *w.path.position(t))[0] for w in self.distractors]

    # Rendering ----------------------------------------------------------------------------------------------

    def render_background(self, pose: Pose) -> np.ndarray:
        """The scene without the person: panorama above the horizon, textured ground below."""
        cam = self.camera
        image = np.empty((cam.height, cam.width, 3), dtype=np.uint8)
        if self._horizon_row > 0:
            # Column 0 of the panorama looks along +x; columns increase clockwise, i.e. with decreasing heading.
            start = (-pose.heading / (2.0 * math.pi)) * self._panorama_width
            map_x = np.mod(start + self._pano_col_offset, self._panorama_width)
            map_x = np.broadcast_to(map_x, self._pano_map_y.shape).astype(np.float32)
            image[: self._horizon_row] = cv2.remap(self._panorama, map_x, self._pano_map_y, cv2.INTER_LINEAR)
        if self._horizon_row < cam.height:
            c, s = math.cos(pose.heading), math.sin(pose.heading)
            fw, rt = self._ground_forward, self._ground_right
            world_x = pose.x + fw * c + rt * s
            world_y = pose.y + fw * s - rt * c
            tex_w, tex_h = self._floor_size
            # Texture u along +x, v along -y (so the floor reads like a map seen from above).
            map_x = np.mod(world_x * (tex_w / self.floor_tile_m), tex_w).astype(np.float32)
            map_y = np.mod(-world_y * (tex_h / self.floor_tile_m), tex_h).astype(np.float32)
            ground = self._floor_mean * self._ground_weights[3]
            for level, weight in zip(self._floor_levels, self._ground_weights[:3], strict=True):
                ground = ground + cv2.remap(level, map_x, map_y, cv2.INTER_LINEAR).astype(np.float32) * weight
            image[self._horizon_row :] = np.clip(ground + 0.5, 0, 255).astype(np.uint8)
        return image

    def render(self, pose: Pose, t: float) -> np.ndarray:
        """The BGR (height, width, 3) uint8 image the robot's camera captures at ``pose`` and time ``t``.

        The target and the distractors are drawn in depth order, farthest first: the nearer one hides the other.
        """
        image = self.render_background(pose)
        people = [(self.target_depth(pose, t), 0, self.sprite, self._billboard(pose, t))]
        for i, (walker, depth) in enumerate(zip(self.distractors, self.distractor_depths(pose, t), strict=True)):
            box = self._billboard_at(pose, walker.path.position(t), walker.height_m, walker.sprite.aspect)
            people.append((depth, i + 1, walker.sprite, box))
        for _, _, sprite, box in sorted(people, key=lambda p: (-p[0], p[1])):
            image = self._draw(image, sprite, box)
        return image

    def _draw(self, image: np.ndarray, sprite: PersonSprite, box: Box | None) -> np.ndarray:
        """``image`` with ``sprite`` composited into ``box`` (unchanged when the box is None or off the image)."""
        cam = self.camera
        if box is None or box.x >= cam.width or box.x + box.w <= 0 or box.y >= cam.height or box.y + box.h <= 0:
            return image
        sprite_bgr, sprite_alpha = sprite.bgr, sprite.alpha
        scale = box.h / sprite_bgr.shape[0]
        if scale < 0.8:
            # Shrink with area averaging first: an affine warp alone would alias the small person.
            size = (max(1, round(sprite_bgr.shape[1] * scale)), max(1, round(sprite_bgr.shape[0] * scale)))
            sprite_bgr = cv2.resize(sprite_bgr, size, interpolation=cv2.INTER_AREA)
            sprite_alpha = cv2.resize(sprite_alpha, size, interpolation=cv2.INTER_AREA)
        sx, sy = box.w / sprite_bgr.shape[1], box.h / sprite_bgr.shape[0]
        # Maps sprite pixel centres onto the box: x_dst + 0.5 = box.x + (x_src + 0.5) * sx.
        matrix = np.array([[sx, 0.0, box.x + 0.5 * sx - 0.5], [0.0, sy, box.y + 0.5 * sy - 0.5]], dtype=np.float64)
        size = (cam.width, cam.height)
        person = cv2.warpAffine(sprite_bgr, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.warpAffine(
            sprite_alpha, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0
        )
        a = alpha[..., None]
        blended = image.astype(np.float32) * (1.0 - a) + person.astype(np.float32) * a
        return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def _as_bgr(image: np.ndarray, name: str) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 2:
        raise ValueError(f"{name} must be a BGR (h, w, 3) uint8 image; got {image.shape} {image.dtype}")
    return np.ascontiguousarray(image)


# Real data ---------------------------------------------------------------------------------------------------


def empty_scene(data_dir: Path, every: int = 32, keep: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """vtest.avi with its pedestrians removed (per-pixel median of every ``every``-th frame), and frame ``keep``.

    The median is what the background subtraction for the sprite and the scenery both start from.
    """
    path = Path(data_dir) / SPRITE_CLIP
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise FileNotFoundError(f"cannot open {path} (run `make data`)")
    samples: list[np.ndarray] = []
    kept: np.ndarray | None = None
    index = 0
    try:
        while True:
            wanted = index % every == 0 or index == keep
            ok = capture.grab()
            if not ok:
                break
            if wanted:
                ok, frame = capture.retrieve()
                if not ok:
                    break
                if index % every == 0:
                    samples.append(frame)
                if index == keep:
                    kept = frame
            index += 1
    finally:
        capture.release()
    if len(samples) < 3 or (keep is not None and kept is None):
        raise ValueError(f"{path}: too few frames ({index}) for a background")
    stack = np.stack(samples)
    middle = len(samples) // 2
    median = np.partition(stack, middle, axis=0)[middle]
    return median, kept


def cut_person(frame: np.ndarray, still: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """BGR crop and float alpha of the person inside ``box`` (x, y, w, h): grabCut seeded by background subtraction.

    Outside the box is sure background; inside, pixels that differ from the empty scene are probable foreground,
    the rest probable background. The largest connected blob is kept and its edge feathered by one pixel.
    """
    x, y, w, h = box
    diff = cv2.absdiff(frame, still).max(axis=2)
    mask = np.full(frame.shape[:2], cv2.GC_BGD, dtype=np.uint8)
    inside = mask[y : y + h, x : x + w]
    inside[:] = np.where(diff[y : y + h, x : x + w] > 30, cv2.GC_PR_FGD, cv2.GC_PR_BGD)
    bgd_model = np.zeros((1, 65), np.float64)
    fgd_model = np.zeros((1, 65), np.float64)
    cv2.grabCut(frame, mask, None, bgd_model, fgd_model, 5, cv2.GC_INIT_WITH_MASK)
    person = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(person)
    if count < 2:
        raise ValueError(f"no person found in box {box}")
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    person = (labels == largest).astype(np.uint8)
    bx, by, bw, bh = (int(v) for v in stats[largest, :4])
    alpha = cv2.GaussianBlur(person.astype(np.float32), (3, 3), 0)
    alpha = np.where(person > 0, np.maximum(alpha, 0.5), alpha)  # feather outwards only
    crop = (slice(by, by + bh), slice(bx, bx + bw))
    return np.ascontiguousarray(frame[crop]), np.ascontiguousarray(np.clip(alpha[crop], 0.0, 1.0), dtype=np.float32)


def load_person_sprite(data_dir: Path) -> PersonSprite:
    """The person of ``SPRITE_BOX`` in frame ``SPRITE_FRAME`` of vtest.avi, cut out with its alpha mask."""
    still, frame = empty_scene(data_dir, keep=SPRITE_FRAME)
    assert frame is not None
    bgr, alpha = cut_person(frame, still, SPRITE_BOX)
    return PersonSprite(bgr, alpha, source=f"{SPRITE_CLIP} frame {SPRITE_FRAME} box {SPRITE_BOX}")


def panorama_from_scene(still: np.ndarray, width: int = 3328, height: int = 264) -> np.ndarray:
    """A 360° panorama from the facade band of the empty vtest scene: the band and its mirror image around the turn.

    The default size matches the default camera (about 530 px per radian, 24° above the horizon visible).
    """
    x, y, w, h = FACADE_BOX
    band = still[y : y + h, x : x + w]
    pair = np.concatenate([band, band[:, ::-1]], axis=1)
    return cv2.resize(pair, (width, height), interpolation=cv2.INTER_CUBIC)


def floor_from_scene(still: np.ndarray, size: int = 256) -> np.ndarray:
    """A seamless lawn tile (mirrored 2x2) from the empty vtest scene, with a darker edge every tile as paving."""
    x, y, w, h = LAWN_BOX
    patch = cv2.resize(still[y : y + h, x : x + w], (size // 2, size // 2), interpolation=cv2.INTER_AREA)
    # Flatten the lawn's light gradient: repeated, it would turn into stripes towards the horizon.
    patch = patch.astype(np.float32)
    shading = cv2.GaussianBlur(patch, (0, 0), sigmaX=size / 16.0, borderType=cv2.BORDER_REFLECT)
    patch = np.clip(patch - shading + patch.reshape(-1, 3).mean(axis=0), 0, 255).astype(np.uint8)
    top = np.concatenate([patch, patch[:, ::-1]], axis=1)
    tile = np.ascontiguousarray(np.concatenate([top, top[::-1]], axis=0))
    line = max(1, size // 128)
    for edge in (slice(0, line), slice(size // 2 - line // 2 - 1, size // 2 + line // 2 + 1)):
        tile[edge, :] = (tile[edge, :] * 0.6).astype(np.uint8)
        tile[:, edge] = (tile[:, edge] * 0.6).astype(np.uint8)
    return tile


def load_scenery(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(panorama, floor tile) from vtest.avi with its pedestrians removed: real textures, no people in them."""
    still, _ = empty_scene(data_dir)
    return panorama_from_scene(still), floor_from_scene(still)
