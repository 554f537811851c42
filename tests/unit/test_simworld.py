"""The simulator's world and camera: geometry, rendering, the person's path, and the real detector on renders."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from robotclient.runtime.model import Box, Pose
from robotclient.sim.world import (
    CameraModel,
    PersonPath,
    PersonSprite,
    SimWorld,
    crossing_walkers,
    load_person_sprite,
    load_scenery,
    procedural_floor,
    seeded_rng,
)
from services.yolodetection.detector import YoloDetector, YoloParams
from services.yolodetection.modeltools.model import ModelPaths

CAMERA = CameraModel()
SPRITE_COLOUR = (20, 40, 230)


@pytest.fixture(scope="module")
def block() -> PersonSprite:
    """A solid red 100x40 'person': every pixel it covers is known exactly."""
    bgr = np.empty((100, 40, 3), dtype=np.uint8)
    bgr[:] = SPRITE_COLOUR
    return PersonSprite(bgr, np.ones((100, 40), dtype=np.float32), source="test block")


def standing_at(sprite: PersonSprite, x: float, y: float, **kwargs: object) -> SimWorld:
    return SimWorld(sprite, PersonPath([(x, y)]), **kwargs)  # type: ignore[arg-type]


def at_bearing(sprite: PersonSprite, pose: Pose, bearing_deg: float, distance: float, **kwargs: object) -> SimWorld:
    """A world with the person standing ``distance`` metres away at ``bearing_deg`` right of the robot's heading."""
    angle = pose.heading - math.radians(bearing_deg)
    return standing_at(sprite, pose.x + distance * math.cos(angle), pose.y + distance * math.sin(angle), **kwargs)


# Camera and geometry ---------------------------------------------------------------------------------------------


def test_camera_focal_length_follows_the_field_of_view() -> None:
    assert CAMERA.focal_px == pytest.approx(320 / math.tan(math.radians(31.1)))
    assert CAMERA.focal_px == pytest.approx(530.5, abs=0.1)
    assert CAMERA.column_of_bearing(0.0) == 320.0
    assert CAMERA.column_of_bearing(31.1) == pytest.approx(640.0)
    assert CAMERA.vfov_deg == pytest.approx(48.7, abs=0.1)
    assert CAMERA.min_full_body_distance_m(1.75) == pytest.approx(3.2, abs=0.01)
    for bad in ({"hfov_deg": 0.0}, {"hfov_deg": 180.0}, {"width": 0}, {"mount_height_m": 0.0}):
        with pytest.raises(ValueError):
            CameraModel(**bad)  # type: ignore[arg-type]


def test_person_straight_ahead_projects_to_the_image_centre(block: PersonSprite) -> None:
    world = standing_at(block, 4.0, 0.0)
    pose = Pose()
    bearing, distance = world.target_bearing(pose, 0.0)
    box = world.target_box(pose, 0.0)
    assert bearing == pytest.approx(0.0)
    assert distance == pytest.approx(4.0)
    assert world.target_in_view(pose, 0.0)
    assert box is not None
    assert box.cx == pytest.approx(CAMERA.cx)
    f = CAMERA.focal_px
    assert box.h == pytest.approx(f * 1.75 / 4.0)
    assert box.w == pytest.approx(box.h * 0.4)
    # Feet on the ground: the camera is 0.3 m up, the horizon is the middle row.
    assert box.y + box.h == pytest.approx(CAMERA.cy + f * 0.3 / 4.0)


def test_person_to_the_right_has_a_positive_bearing_and_a_box_right_of_centre(block: PersonSprite) -> None:
    pose = Pose()
    right = standing_at(block, 4.0, -1.0)  # heading +x: the robot's right is -y
    left = standing_at(block, 4.0, 1.0)
    bearing, distance = right.target_bearing(pose, 0.0)
    assert bearing == pytest.approx(math.degrees(math.atan2(1.0, 4.0)))
    assert distance == pytest.approx(math.hypot(4.0, 1.0))
    right_box, left_box = right.target_box(pose, 0.0), left.target_box(pose, 0.0)
    assert right_box is not None and left_box is not None
    assert right_box.cx == pytest.approx(CAMERA.cx + CAMERA.focal_px / 4.0)
    assert left_box.cx == pytest.approx(CAMERA.cx - CAMERA.focal_px / 4.0)
    assert left.target_bearing(pose, 0.0)[0] == pytest.approx(-bearing)


def test_the_robots_heading_and_position_are_respected(block: PersonSprite) -> None:
    world = standing_at(block, 2.0, 5.0)
    facing = Pose(2.0, 1.0, math.pi / 2)  # robot turned left to face +y, person 4 m ahead
    assert world.target_bearing(facing, 0.0) == pytest.approx((0.0, 4.0))
    # Turning clockwise (heading decreasing, RoboMaster z > 0) puts the person to the left.
    turned_right = Pose(2.0, 1.0, math.pi / 2 - math.radians(20))
    assert world.target_bearing(turned_right, 0.0)[0] == pytest.approx(-20.0)
    assert world.target_bearing(Pose(2.0, 1.0, 0.0), 0.0)[0] == pytest.approx(-90.0)


def test_farther_is_smaller(block: PersonSprite) -> None:
    heights = []
    for distance in (2.0, 3.0, 5.0, 8.0):
        box = standing_at(block, distance, 0.0, camera=CameraModel(height=2000)).target_box(Pose(), 0.0)
        assert box is not None
        heights.append(box.h)
    assert heights == sorted(heights, reverse=True)
    assert heights[0] / heights[3] == pytest.approx(4.0)


def test_a_person_behind_the_robot_is_neither_in_view_nor_drawn(block: PersonSprite) -> None:
    world = standing_at(block, -3.0, 0.2)
    pose = Pose()
    assert not world.target_in_view(pose, 0.0)
    assert world.target_box(pose, 0.0) is None
    assert abs(world.target_bearing(pose, 0.0)[0]) > 170.0
    np.testing.assert_array_equal(world.render(pose, 0.0), world.render_background(pose))


def test_the_field_of_view_edges(block: PersonSprite) -> None:
    pose = Pose(1.0, -2.0, 0.7)
    half = CAMERA.hfov_deg / 2
    for side in (1.0, -1.0):
        inside = at_bearing(block, pose, side * (half - 0.5), 4.0)
        outside = at_bearing(block, pose, side * (half + 0.5), 4.0)
        assert inside.target_in_view(pose, 0.0)
        box = inside.target_box(pose, 0.0)
        assert box is not None
        assert box.x >= 0.0 and box.x + box.w <= CAMERA.width  # clipped to the image
        assert not outside.target_in_view(pose, 0.0)
        assert outside.target_box(pose, 0.0) is None
        # Half the body still shows at the edge: drawn, though not counted as in view.
        assert not np.array_equal(outside.render(pose, 0.0), outside.render_background(pose))


def test_a_person_very_close_is_clipped_not_crashed(block: PersonSprite) -> None:
    world = standing_at(block, 1.2, 0.0)
    box = world.target_box(Pose(), 0.0)
    assert box is not None
    assert box.y == 0.0 and box.y + box.h < CAMERA.height  # head cut off, feet still on the floor
    image = world.render(Pose(), 0.0)
    assert tuple(image[int(box.cy), int(box.cx)]) == SPRITE_COLOUR


# Rendering ------------------------------------------------------------------------------------------------------


def test_render_draws_the_person_exactly_inside_its_box(block: PersonSprite) -> None:
    world = standing_at(block, 4.0, 0.5)
    pose = Pose()
    image = world.render(pose, 0.0)
    assert image.shape == (480, 640, 3) and image.dtype == np.uint8
    box = world.target_box(pose, 0.0)
    assert box is not None
    ys, xs = np.nonzero(np.all(image == SPRITE_COLOUR, axis=2))
    drawn = Box(xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min())
    assert drawn.iou(box) > 0.95
    assert abs(drawn.cx - box.cx) < 1.0 and abs(drawn.y + drawn.h - (box.y + box.h)) < 1.5


def test_turning_moves_the_panorama_and_driving_moves_the_floor(block: PersonSprite) -> None:
    world = standing_at(block, -100.0, 0.0)  # behind every pose below
    horizon = int(CAMERA.cy)
    start = world.render(Pose(0.0, 0.0, 0.0), 0.0)
    driven = world.render(Pose(0.7, 0.3, 0.0), 0.0)
    turned = world.render(Pose(0.0, 0.0, 0.3), 0.0)
    # The panorama is at infinity: driving does not move it, turning does; the floor moves either way.
    np.testing.assert_array_equal(start[:horizon], driven[:horizon])
    assert np.abs(start[:horizon].astype(int) - turned[:horizon]).mean() > 10
    assert np.abs(start[horizon:].astype(int) - driven[horizon:]).mean() > 5
    # A full turn comes back to the same view.
    np.testing.assert_allclose(world.render(Pose(0.0, 0.0, 2 * math.pi), 0.0), start, atol=1)


def test_the_floor_recedes_as_the_camera_height_says(block: PersonSprite) -> None:
    """Checkerboard of 1 m squares: along the optical axis the colour flips where the ground is 1 m, 2 m away."""
    world = standing_at(block, -100.0, 0.0, floor=procedural_floor(), floor_tile_m=2.0)
    image = world.render(Pose(0.0, 0.5, 0.0), 0.0).astype(int)
    column = image[:, 320, 0]
    f, h = CAMERA.focal_px, CAMERA.mount_height_m

    def row(distance: float) -> int:
        return int(CAMERA.cy + f * h / distance - 0.5)

    light, dark = 150, 110
    assert column[row(0.9)] == light and column[row(1.1)] == dark
    assert column[row(1.8)] == dark and abs(column[row(2.25)] - light) <= 2
    assert row(1.0) - row(2.0) == pytest.approx(f * h / 2.0, abs=1)


# The person's path ----------------------------------------------------------------------------------------------


def test_the_path_is_walked_at_its_speed_and_loops() -> None:
    path = PersonPath([(0.0, 0.0), (3.0, 0.0), (3.0, 4.0)], speed_mps=0.5)
    assert path.length_m == pytest.approx(12.0)  # 3 + 4 + the 5 m back to the start
    assert path.period_s == pytest.approx(24.0)
    assert path.position(2.0) == pytest.approx((1.0, 0.0))
    assert path.position(6.0) == pytest.approx((3.0, 0.0))
    assert path.position(10.0) == pytest.approx((3.0, 2.0))
    assert path.position(19.0) == pytest.approx((1.5, 2.0))  # half-way back along the diagonal
    assert path.position(24.0 + 2.0) == pytest.approx(path.position(2.0))
    assert path.position(-5.0) == (0.0, 0.0)  # waits at the start before t = 0


def test_pingpong_retraces_the_path() -> None:
    path = PersonPath([(0.0, 0.0), (2.0, 0.0), (2.0, 2.0)], speed_mps=1.0, mode="pingpong")
    assert path.period_s == pytest.approx(8.0)
    assert path.position(4.0) == pytest.approx((2.0, 2.0))
    assert path.position(5.0) == pytest.approx(path.position(3.0))
    assert path.position(7.5) == pytest.approx((0.5, 0.0))
    assert path.position(8.0) == pytest.approx((0.0, 0.0))


def test_a_single_waypoint_stands_still_and_bad_paths_are_refused() -> None:
    assert PersonPath([(1.0, 2.0)]).position(17.3) == (1.0, 2.0)
    assert PersonPath([(1.0, 2.0)]).period_s == 0.0
    for args, kwargs in (([], {}), ([(0.0, 0.0)], {"speed_mps": 0.0}), ([(0.0, 0.0)], {"mode": "bounce"})):
        with pytest.raises(ValueError):
            PersonPath(args, **kwargs)  # type: ignore[arg-type]


def test_the_default_scenario_leaves_the_view_of_a_static_robot(block: PersonSprite) -> None:
    path = PersonPath.default()
    world = SimWorld(block, path)
    pose = Pose()
    bearing, distance = world.target_bearing(pose, 0.0)
    assert 2.0 < bearing < 10.0 and 3.0 <= distance <= 4.0  # slightly off-centre, about 3 m ahead
    times = np.arange(0.0, path.period_s, 0.1)
    visible = [world.target_in_view(pose, t) for t in times]
    bearings = [world.target_bearing(pose, t)[0] for t in times]
    distances = [world.target_bearing(pose, t)[1] for t in times]
    assert visible[0] and not all(visible)
    assert min(bearings) < -CAMERA.hfov_deg / 2 and max(bearings) > CAMERA.hfov_deg / 2  # lost on both sides
    longest_gap = max(len(run) for run in "".join("x" if v else "." for v in visible).split("x"))
    assert longest_gap * 0.1 >= 3.0
    assert min(distances) >= 3.0 and max(distances) <= 6.0


def test_distractors_are_seeded_cross_the_target_and_are_drawn_in_depth_order(block: PersonSprite) -> None:
    walkers = crossing_walkers(block, 2, seeded_rng(7))
    again = crossing_walkers(block, 2, seeded_rng(7))
    assert [w.path.waypoints for w in walkers] == [w.path.waypoints for w in again]
    assert [w.path.waypoints for w in walkers] != [w.path.waypoints for w in crossing_walkers(block, 2, seeded_rng(8))]
    assert crossing_walkers(block, 0, seeded_rng(7)) == []
    # Recoloured: the same shape, other colours.
    assert walkers[0].sprite.bgr.shape == block.bgr.shape and not np.array_equal(walkers[0].sprite.bgr, block.bgr)
    world = SimWorld(block, PersonPath.default(), distractors=walkers[:1])
    pose = Pose()
    (start,) = world.distractor_boxes(pose, 0.0)
    assert start is None  # enters from the side: the first person in view is the target
    overlaps = [t for t in np.arange(0.0, 60.0, 0.1) if _overlap(world, pose, t) > 0.3]
    assert overlaps, "the distractor never crosses the target in the image"
    t = overlaps[len(overlaps) // 2]
    target_box, (other_box,) = world.target_box(pose, t), world.distractor_boxes(pose, t)
    assert target_box is not None and other_box is not None
    image = world.render(pose, t)
    nearer = block if world.target_depth(pose, t) < world.distractor_depths(pose, t)[0] else walkers[0].sprite
    x0, x1 = int(max(target_box.x, other_box.x)) + 1, int(min(target_box.x + target_box.w, other_box.x + other_box.w))
    y = int(max(target_box.y, other_box.y) + 0.5 * min(target_box.h, other_box.h))
    assert x1 > x0
    assert tuple(image[y, (x0 + x1) // 2]) == tuple(nearer.bgr[50, 20])  # the nearer one hides the other
    with pytest.raises(ValueError):
        crossing_walkers(block, -1, seeded_rng(0))


def _overlap(world: SimWorld, pose: Pose, t: float) -> float:
    target = world.target_box(pose, t)
    (other,) = world.distractor_boxes(pose, t)
    return 0.0 if target is None or other is None else target.iou(other)


# Real data and the real detector ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sprite(data_dir: Path) -> PersonSprite:
    return load_person_sprite(data_dir)


@pytest.fixture(scope="module")
def scenery(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return load_scenery(data_dir)


@pytest.fixture(scope="module")
def yolo(model_paths: ModelPaths) -> YoloDetector:
    detector = YoloDetector(YoloParams(model_paths.cfg, model_paths.weights, model_paths.names))
    detector.warm_up()
    return detector


def test_the_sprite_is_a_whole_person_cut_from_vtest(sprite: PersonSprite) -> None:
    height, width = sprite.alpha.shape
    assert 90 <= height <= 130 and 1.6 < height / width < 3.0  # standing, not a blob of background
    coverage = float(sprite.alpha.mean())
    assert 0.35 < coverage < 0.85
    assert sprite.alpha[0].max() > 0.5 and sprite.alpha[-1].max() > 0.5  # head on the top row, feet on the bottom
    assert sprite.alpha[height // 2].max() == 1.0
    assert "vtest.avi" in sprite.source


def test_yolo_finds_the_rendered_person_where_the_world_says(
    sprite: PersonSprite, scenery: tuple[np.ndarray, np.ndarray], yolo: YoloDetector
) -> None:
    panorama, floor = scenery
    hits, misses = 0, []
    renders = 0
    for i, distance in enumerate((3.5, 4.5, 5.5, 6.5)):
        for j, bearing in enumerate((-24.0, -10.0, 0.0, 10.0, 24.0)):
            pose = Pose(0.5 * i, -0.7 * j, 0.9 * (i + j))  # different backgrounds behind the person
            world = at_bearing(sprite, pose, bearing, distance, background=panorama, floor=floor)
            truth = world.target_box(pose, 0.0)
            assert truth is not None
            persons = [f for f in yolo.detect(world.render(pose, 0.0), 1.0).found if f.class_name == "person"]
            best = max((Box(f.x, f.y, f.w, f.h).iou(truth) for f in persons), default=0.0)
            renders += 1
            if best >= 0.5:
                hits += 1
            else:
                misses.append((distance, bearing, round(best, 2)))
    assert hits >= 0.9 * renders, f"detected {hits}/{renders}; misses (distance, bearing, IoU): {misses}"


def test_the_background_alone_has_no_person(
    scenery: tuple[np.ndarray, np.ndarray], yolo: YoloDetector, block: PersonSprite
) -> None:
    panorama, floor = scenery
    world = SimWorld(block, PersonPath([(0.0, 0.0)]), background=panorama, floor=floor)
    for k in range(8):
        pose = Pose(0.4 * k, -0.3 * k, 2 * math.pi * k / 8 + 0.2)
        found = yolo.detect(world.render_background(pose), 1.0).found
        assert not [f for f in found if f.class_name == "person"], f"heading {pose.heading:.2f}: {found}"
