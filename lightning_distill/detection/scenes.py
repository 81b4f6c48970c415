"""Street scenes with labelled 3D objects: cars, pedestrians and cyclists, their boxes, tracks and 2D boxes.

:class:`DetectionSceneGenerator` extends the LiDAR toolkit's
:class:`~lightning_distill.lidar.scene.StreetSceneGenerator` (same street, sensors and ray casting;
the plain generator and its seeds are untouched). Its street has no unlabelled car boxes; instead
it places three kinds of objects, each a distinct procedural mesh built in its own frame (x along
the heading, z up from the ground):

* **car**: a body on four wheels and a narrower cabin (about 4.3 x 1.85 x 1.5 m), parked at the
  kerb or driving in a lane;
* **pedestrian**: two legs, a torso and a head (about 0.65 x 0.6 x 1.75 m), on the sidewalks,
  walking along them or standing;
* **cyclist**: two thin wheels, a frame, a handlebar and a rider (about 1.75 x 0.6 x 1.75 m),
  riding near the kerb with the traffic.

Moving objects keep a constant velocity, so across a sequence (``num_frames > 1``) every object
keeps its track id and its box moves by ``velocity x frame_interval`` per frame; no two objects
(nor an object and the ego vehicle) overlap at any frame. The LiDAR frame is re-cast at each
frame, so occlusion and sparsity are the ray caster's: far objects get few points.

Each :class:`DetectionFrame` carries, per object within ``max_range`` of the LiDAR, its box
``[x, y, z, dx, dy, dz, yaw]`` in that frame's LiDAR frame, class (:data:`CLASSES`), track id,
velocity, visible-point count (LiDAR points that hit the object), occlusion (1 - visible points /
points the object gets alone in the scene), KITTI-like difficulty (:func:`difficulty_levels`)
and per-camera 2D boxes (:func:`~lightning_distill.detection.boxes.project_boxes`: the amodal
extent of the projected box, clipped to the image) with the pixels that see the object.

Example:
    >>> gen = DetectionSceneGenerator(beams=8, azimuth_steps=256, image_size=(32, 48))
    >>> frame = gen.generate(seed=0)[0]
    >>> frame.boxes.shape[1], frame.boxes_2d.shape[1:], CLASSES
    (7, torch.Size([1, 4]), ('car', 'pedestrian', 'cyclist'))
    >>> bool(torch.equal(frame.boxes, gen.generate(seed=0)[0].boxes))
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lightning_distill.detection.boxes import limit_yaw, project_boxes
from lightning_distill.lidar.scene import (
    CLASS_COLORS,
    CLASS_NAMES,
    Frame,
    StreetSceneGenerator,
    _cast,
    _Layout,
    _rotate_z,
    _Surface,
    _Texture,
)

__all__ = [
    "CLASSES",
    "DIFFICULTIES",
    "POINT_CLASS_COLORS",
    "POINT_CLASS_NAMES",
    "DetectionFrame",
    "DetectionSceneGenerator",
    "difficulty_levels",
]

#: Object classes of boxes, in label order.
CLASSES: tuple[str, ...] = ("car", "pedestrian", "cyclist")
#: Difficulty levels (index = value); ``-1`` marks a box to ignore (too few points: KITTI's DontCare).
DIFFICULTIES: tuple[str, ...] = ("easy", "moderate", "hard")
#: Semantic classes of points: the LiDAR toolkit's six plus pedestrian and cyclist.
POINT_CLASS_NAMES: tuple[str, ...] = (*CLASS_NAMES, "pedestrian", "cyclist")
POINT_CLASS_COLORS: tuple[tuple[float, float, float], ...] = (
    *CLASS_COLORS,
    (0.95, 0.15, 0.75),
    (0.10, 0.80, 0.80),
)
_POINT_LABEL = (CLASS_NAMES.index("car"), len(CLASS_NAMES), len(CLASS_NAMES) + 1)  # per object class
_REFLECTIVITY = (0.70, 0.40, 0.50)
_CAR, _PEDESTRIAN, _CYCLIST = range(3)


@dataclass
class DetectionFrame(Frame):
    """A :class:`~lightning_distill.lidar.scene.Frame` with labelled objects (``M`` boxes).

    ``labels`` are per point over :data:`POINT_CLASS_NAMES`. Added attributes:
        boxes: ``(M, 7)`` float32 ``[x, y, z, dx, dy, dz, yaw]`` in this frame's LiDAR frame.
        box_labels: ``(M,)`` int64 index into :data:`CLASSES`.
        track_ids: ``(M,)`` int64, the same object keeps its id in every frame of a sequence.
        velocities: ``(M, 2)`` float32 ground velocity (m/s) along the LiDAR frame's x and y.
        num_points_in_box: ``(M,)`` int64 LiDAR points that hit the object.
        occlusion: ``(M,)`` float32 in [0, 1], share of the object's unoccluded points that are hidden.
        difficulty: ``(M,)`` int64, 0 easy, 1 moderate, 2 hard, -1 ignore (:func:`difficulty_levels`).
        boxes_2d: ``(M, C, 4)`` float32 ``[u0, v0, u1, v1]`` per camera, clipped to the image.
        visible_2d: ``(M, C)`` bool, whether that camera sees the object (at least one pixel).
        visible_pixels: ``(M, C)`` int64 pixels of that camera that see the object.
        point_boxes: ``(N,)`` int64 index of the box each point hit, -1 for the street.
        pixel_boxes: ``(C, H, W)`` int64 index of the box each pixel sees, -1 elsewhere.
    """

    boxes: Tensor
    box_labels: Tensor
    track_ids: Tensor
    velocities: Tensor
    num_points_in_box: Tensor
    occlusion: Tensor
    difficulty: Tensor
    boxes_2d: Tensor
    visible_2d: Tensor
    visible_pixels: Tensor
    point_boxes: Tensor
    pixel_boxes: Tensor


def difficulty_levels(
    distance: Tensor,
    occlusion: Tensor,
    num_points: Tensor,
    *,
    max_distance: tuple[float, float] = (20.0, 40.0),
    max_occlusion: tuple[float, float] = (0.25, 0.6),
    min_points: int = 1,
) -> Tensor:
    """KITTI-like difficulty per box: 0 easy, 1 moderate, 2 hard, -1 ignored.

    KITTI grades by 2D box height, occlusion and truncation; here distance stands for the box
    height. A box is easy within ``max_distance[0]`` metres and at most ``max_occlusion[0]``
    occluded, moderate within ``max_distance[1]`` and ``max_occlusion[1]``, hard otherwise, and
    ignored with fewer than ``min_points`` LiDAR points.

    >>> difficulty_levels(torch.tensor([10.0, 30.0, 10.0, 45.0]), torch.tensor([0.1, 0.1, 0.9, 0.0]),
    ...                   torch.tensor([50, 9, 3, 0])).tolist()
    [0, 1, 2, -1]
    """
    easy = (distance <= max_distance[0]) & (occlusion <= max_occlusion[0])
    moderate = (distance <= max_distance[1]) & (occlusion <= max_occlusion[1])
    level = torch.full_like(num_points, 2, dtype=torch.long)
    level[moderate] = 1
    level[easy] = 0
    level[num_points < min_points] = -1
    return level


# ------------------------------------------------------------------ object meshes (local frame)
_BOX_FACES = np.array(
    [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
     [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]]
)  # fmt: skip


def _cuboid(center, size) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array([[i, j, k] for i in (-0.5, 0.5) for j in (-0.5, 0.5) for k in (-0.5, 0.5)])
    return corners * np.asarray(size) + np.asarray(center), _BOX_FACES


def _blob(center, radii, rings: int = 5, segments: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A closed ellipsoid: poles plus ``rings - 1`` latitude rings."""
    phi = np.linspace(0, np.pi, rings + 1)[1:-1]
    theta = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    p, t = np.meshgrid(phi, theta, indexing="ij")
    ring = np.stack([np.sin(p) * np.cos(t), np.sin(p) * np.sin(t), np.cos(p)], -1).reshape(-1, 3)
    vertices = np.concatenate([[[0.0, 0.0, 1.0]], ring, [[0.0, 0.0, -1.0]]]) * np.asarray(radii)
    last, bottom = 1 + (len(phi) - 1) * segments, len(vertices) - 1
    faces = []
    for i in range(segments):
        j = (i + 1) % segments
        faces += [[0, 1 + i, 1 + j], [bottom, last + j, last + i]]
        for r in range(len(phi) - 1):
            top, low = 1 + r * segments, 1 + (r + 1) * segments
            faces += [[top + i, low + i, low + j], [top + i, low + j, top + j]]
    return vertices + np.asarray(center), np.array(faces)


def _merge(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    vertices, faces, offset = [], [], 0
    for v, f in parts:
        vertices.append(v)
        faces.append(f + offset)
        offset += len(v)
    return np.concatenate(vertices), np.concatenate(faces)


def _car_mesh(l: float, w: float, h: float):  # noqa: E741
    clearance, wheel = 0.25, 0.6
    parts = [
        _cuboid((0, 0, (clearance + 0.6 * h) / 2), (l, w, 0.6 * h - clearance)),
        _cuboid((-0.05 * l, 0, 0.8 * h), (0.55 * l, 0.92 * w, 0.4 * h)),
    ]
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(_cuboid((sx * 0.3 * l, sy * (w / 2 - 0.12), wheel / 2), (wheel, 0.24, wheel)))
    return _merge(parts)


def _pedestrian_mesh(l: float, w: float, h: float):  # noqa: E741
    leg = 0.47 * h
    return _merge(
        [
            _cuboid((l / 2 - 0.08, 0.09, leg / 2), (0.16, 0.14, leg)),
            _cuboid((-(l / 2 - 0.08), -0.09, leg / 2), (0.16, 0.14, leg)),
            _cuboid((0.0, 0.0, leg + 0.175 * h), (0.28, w, 0.35 * h)),
            _blob((0.0, 0.0, h - 0.12), (0.1, 0.09, 0.12)),
        ]
    )


def _cyclist_mesh(l: float, w: float, h: float):  # noqa: E741
    wheel = 0.66
    axle = l / 2 - wheel / 2
    return _merge(
        [
            _cuboid((axle, 0, wheel / 2), (wheel, 0.05, wheel)),
            _cuboid((-axle, 0, wheel / 2), (wheel, 0.05, wheel)),
            _cuboid((0, 0, 0.8 * wheel), (2 * axle, 0.05, 0.06)),
            _cuboid((axle - 0.05, 0, 0.6 * h), (0.06, w, 0.04)),
            _cuboid((-0.1 * l, 0, 0.5 * h), (0.2, 0.35, 0.3 * h)),
            _cuboid((-0.05 * l, 0, 0.7 * h), (0.3, 0.75 * w, 0.28 * h)),
            _blob((0.02 * l, 0, h - 0.12), (0.1, 0.09, 0.12)),
        ]
    )


_MESHES = (_car_mesh, _pedestrian_mesh, _cyclist_mesh)


@dataclass
class _Object:
    cls: int
    size: np.ndarray  # (3,) l, w, h
    start: np.ndarray  # (2,) world xy at t = 0
    ground: float  # z of the surface it stands on
    heading: float
    speed: float
    color: np.ndarray

    def xy(self, time: float) -> np.ndarray:
        return self.start + self.speed * time * np.array([math.cos(self.heading), math.sin(self.heading)])

    def footprint(self, time: float) -> np.ndarray:
        """Axis-aligned half extents and centre in the world at ``time``: ``(cx, cy, ex, ey)``."""
        c, s = abs(math.cos(self.heading)), abs(math.sin(self.heading))
        l, w = self.size[0], self.size[1]  # noqa: E741
        x, y = self.xy(time)
        return np.array([x, y, (l * c + w * s) / 2, (l * s + w * c) / 2])


class _ObjectLayout(_Layout):
    """The street of :class:`~lightning_distill.lidar.scene._Layout` with labelled objects for its cars."""

    def __init__(self, rng, curb_height, path_length, *, times, ego_speed, counts) -> None:
        self.times, self.ego_speed, self.counts, self.curb = times, ego_speed, counts, curb_height
        self.objects: list[_Object] = []
        super().__init__(rng, curb_height, path_length)

    def _cars(self, w: float, path_length: float) -> None:  # called last by _Layout.__init__
        rng = self.rng
        for cls, (low, high) in enumerate(self.counts):
            for _ in range(int(rng.integers(low, high + 1))):
                for _attempt in range(20):
                    candidate = self._draw(cls, w)
                    if not self._clashes(candidate):
                        self.objects.append(candidate)
                        break

    def _draw(self, cls: int, w: float) -> _Object:
        rng = self.rng
        side = int(rng.choice([-1, 1]))
        direction = 0.0 if side < 0 else math.pi  # right-hand traffic: y < 0 drives towards +x
        x = rng.uniform(-self.HALF_LENGTH + 8, self.HALF_LENGTH - 8)
        ground, speed = 0.0, 0.0
        if cls == _CAR:
            size = np.array([rng.uniform(3.8, 4.8), rng.uniform(1.7, 2.0), rng.uniform(1.35, 1.7)])
            if rng.random() < 0.4:  # parked at the kerb
                y = side * (w - 1.1)
            else:
                y, speed = side * w / 2 + rng.normal(0.0, 0.2), rng.uniform(3.0, 10.0)
            heading = direction + rng.normal(0.0, 0.04)
        elif cls == _PEDESTRIAN:
            size = np.array([rng.uniform(0.5, 0.8), rng.uniform(0.5, 0.65), rng.uniform(1.5, 1.9)])
            y = side * (w + self.sidewalk * rng.uniform(0.15, 0.85))
            ground = self.curb
            if rng.random() < 0.7:  # walking along the sidewalk
                heading, speed = (
                    float(rng.choice([0.0, math.pi])) + rng.normal(0.0, 0.1),
                    rng.uniform(0.8, 1.6),
                )
            else:
                heading = rng.uniform(-math.pi, math.pi)
        else:
            size = np.array([rng.uniform(1.6, 1.9), rng.uniform(0.5, 0.7), rng.uniform(1.6, 1.85)])
            y, speed = side * (w - 0.7), rng.uniform(2.0, 6.0)
            heading = direction + rng.normal(0.0, 0.04)
        color = rng.uniform(0.05, 0.95, size=3)
        return _Object(cls, size, np.array([x, y]), ground, float(heading), float(speed), color)

    def _clashes(self, candidate: _Object) -> bool:
        for time in self.times:
            x, y, ex, ey = candidate.footprint(time)
            ego_x = self.start + self.ego_speed * time
            if abs(x - ego_x) < ex + 3.5 and abs(y - self.lane) < ey + 1.5:
                return True
            for other in self.objects:
                ox, oy, oex, oey = other.footprint(time)
                if abs(x - ox) < ex + oex + 0.3 and abs(y - oy) < ey + oey + 0.3:
                    return True
        return False


class DetectionSceneGenerator(StreetSceneGenerator):
    """Street scenes with labelled cars, pedestrians and cyclists, deterministic from a seed.

    Args:
        cars: inclusive range of the number of cars placed per scene.
        pedestrians: inclusive range of pedestrians per scene.
        cyclists: inclusive range of cyclists per scene.
        max_distance: difficulty distance limits (easy, moderate), metres; see :func:`difficulty_levels`.
        max_occlusion: difficulty occlusion limits (easy, moderate).
        min_points: boxes with fewer LiDAR points are marked ignored (difficulty -1).
        **kwargs: the arguments of :class:`~lightning_distill.lidar.scene.StreetSceneGenerator`.

    Raises:
        ValueError: a count range that is not ``0 <= low <= high``, or a bad sensor argument.
    """

    def __init__(
        self,
        cars: tuple[int, int] = (3, 10),
        pedestrians: tuple[int, int] = (2, 8),
        cyclists: tuple[int, int] = (1, 4),
        max_distance: tuple[float, float] = (20.0, 40.0),
        max_occlusion: tuple[float, float] = (0.25, 0.6),
        min_points: int = 1,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        for name, value in (("cars", cars), ("pedestrians", pedestrians), ("cyclists", cyclists)):
            if len(value) != 2 or not 0 <= int(value[0]) <= int(value[1]):
                raise ValueError(
                    f"`{name}` must be an inclusive range (low, high) with 0 <= low <= high, got {value}."
                )
        self.counts = tuple((int(v[0]), int(v[1])) for v in (cars, pedestrians, cyclists))
        self.max_distance = (float(max_distance[0]), float(max_distance[1]))
        self.max_occlusion = (float(max_occlusion[0]), float(max_occlusion[1]))
        self.min_points = int(min_points)

    def generate(self, seed: int, num_frames: int = 1) -> list[DetectionFrame]:
        """``num_frames`` labelled frames of the scene laid out from ``seed``.

        Raises:
            ValueError: ``num_frames`` < 1.
        """
        if num_frames < 1:
            raise ValueError(f"`num_frames` must be >= 1, got {num_frames}.")
        import open3d as o3d

        rng = np.random.default_rng(seed)
        times = [t * self.frame_interval for t in range(num_frames)]
        layout = _ObjectLayout(
            rng,
            self.curb_height,
            path_length=self.speed * self.frame_interval * num_frames,
            times=times,
            ego_speed=self.speed,
            counts=self.counts,
        )
        static = len(layout.meshes)
        surfaces = [surface for *_, surface in layout.meshes]
        meshes = []
        for obj in layout.objects:
            surfaces.append(_Surface(_POINT_LABEL[obj.cls], obj.color, _REFLECTIVITY[obj.cls]))
            meshes.append(_MESHES[obj.cls](*obj.size))
        label_of = np.array([s.label for s in surfaces] + [-1], dtype=np.int64)
        geometry_of = np.arange(len(surfaces) + 1, dtype=np.int64)
        geometry_of[-1] = -1
        texture = _Texture(rng)
        frames = []
        for t, time in enumerate(times):
            scene = o3d.t.geometry.RaycastingScene()  # geometry ids: the street's meshes, then the objects
            placed = [self._place(obj, mesh, time) for obj, mesh in zip(layout.objects, meshes)]
            for vertices, triangles in [m[:2] for m in layout.meshes] + placed:
                scene.add_triangles(
                    o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(triangles.astype(np.uint32))
                )
            pose = layout.ego_pose(self.speed * time, self.lidar_height)
            noise_rng = np.random.default_rng([seed, t])
            points, labels, ids = self._lidar(scene, pose, surfaces, label_of, noise_rng)
            # the cameras label pixels with geometry ids (sky -1); classes follow from them
            images, pixel_ids = self._cameras(scene, pose, surfaces, geometry_of, texture, noise_rng)
            frames.append(self._label(layout.objects, placed, time, pose, points, labels, ids, static, images,
                                      label_of[pixel_ids], pixel_ids))  # fmt: skip
        return frames

    @staticmethod
    def _place(obj: _Object, mesh, time: float) -> tuple[np.ndarray, np.ndarray]:
        vertices, faces = mesh
        x, y = obj.xy(time)
        return _rotate_z(vertices, obj.heading) + np.array([x, y, obj.ground]), faces

    def _unoccluded_points(self, placed, pose: np.ndarray) -> np.ndarray:
        """LiDAR returns each object would get alone in the scene (no occluder).

        Only the rays within the object's azimuth span are cast (the same rays as the sweep's).
        """
        import open3d as o3d

        directions = self.lidar_directions()
        ray_azimuth = np.arctan2(directions[:, 1], directions[:, 0])
        lidar_from_world = np.linalg.inv(pose)
        counts = np.zeros(len(placed), dtype=np.int64)
        for k, (vertices, triangles) in enumerate(placed):
            local = vertices @ lidar_from_world[:3, :3].T + lidar_from_world[:3, 3]
            azimuth = np.arctan2(local[:, 1], local[:, 0])
            centre = np.arctan2(local[:, 1].mean(), local[:, 0].mean())
            span = (
                float(limit_yaw(torch.from_numpy(azimuth - centre)).abs().max())
                + 2 * np.pi / self.azimuth_steps
            )
            rays = directions[limit_yaw(torch.from_numpy(ray_azimuth - centre)).abs().numpy() <= span]
            scene = o3d.t.geometry.RaycastingScene()
            scene.add_triangles(
                o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(triangles.astype(np.uint32))
            )
            t, _, _ = _cast(scene, pose, np.zeros_like(rays), rays)
            counts[k] = int((np.isfinite(t) & (t < self.max_range) & (t > 1.0)).sum())
        return counts

    def _label(
        self, objects, placed, time, pose, points, labels, ids, static, images, pixel_labels, pixel_ids
    ):
        lidar_from_world = np.linalg.inv(pose)
        ego_yaw = math.atan2(pose[1, 0], pose[0, 0])
        boxes, velocities = [], []
        for obj in objects:
            x, y = obj.xy(time)
            centre = lidar_from_world @ np.array([x, y, obj.ground + obj.size[2] / 2, 1.0])
            boxes.append([*centre[:3], *obj.size, obj.heading - ego_yaw])
            world_v = obj.speed * np.array([math.cos(obj.heading), math.sin(obj.heading), 0.0])
            velocities.append((lidar_from_world[:3, :3] @ world_v)[:2])
        boxes_t = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 7)
        boxes_t[:, 6] = limit_yaw(boxes_t[:, 6])
        hit = np.where(ids >= static, ids - static, -1)
        visible = np.bincount(hit[hit >= 0], minlength=len(objects))
        # keep the objects within range of the LiDAR
        distance = boxes_t[:, :2].norm(dim=1)
        keep = (distance <= self.max_range).numpy()
        remap = np.full(len(objects) + 1, -1, dtype=np.int64)
        remap[np.flatnonzero(keep)] = np.arange(int(keep.sum()))
        point_boxes = remap[hit]  # hit == -1 reads the last entry, -1
        kept = [placed[k] for k in np.flatnonzero(keep)]
        free = self._unoccluded_points(kept, pose)
        num_points = torch.from_numpy(visible[keep].astype(np.int64))
        occlusion = torch.from_numpy(1.0 - num_points.numpy() / np.maximum(free, 1)).float().clamp(0, 1)
        occlusion[torch.from_numpy(free == 0)] = 1.0
        boxes_t = boxes_t[torch.from_numpy(keep)]
        difficulty = difficulty_levels(
            distance[torch.from_numpy(keep)].float(),
            occlusion,
            num_points,
            max_distance=self.max_distance,
            max_occlusion=self.max_occlusion,
            min_points=self.min_points,
        )
        K = torch.from_numpy(self.K.astype(np.float32))
        T = torch.from_numpy(self.T_cam_from_lidar.astype(np.float32))
        boxes_2d, in_image = project_boxes(boxes_t, K, T, self.image_size)
        pixel_boxes = remap[np.where(pixel_ids >= static, pixel_ids - static, -1)]  # (C, H, W)
        visible_pixels = np.stack(
            [
                np.bincount(cam[cam >= 0], minlength=int(keep.sum()))
                for cam in pixel_boxes.reshape(len(K), -1)
            ],
            1,
        )  # (M, C)
        visible_pixels = torch.from_numpy(visible_pixels.astype(np.int64))
        index = torch.from_numpy(np.flatnonzero(keep))
        return DetectionFrame(
            points=torch.from_numpy(points),
            labels=torch.from_numpy(labels),
            instances=torch.from_numpy(ids),
            images=torch.from_numpy(images),
            pixel_labels=torch.from_numpy(pixel_labels),
            K=K,
            T_cam_from_lidar=T,
            pose=torch.from_numpy(pose.astype(np.float32)),
            boxes=boxes_t.float(),
            box_labels=torch.tensor([objects[k].cls for k in index.tolist()], dtype=torch.long),
            track_ids=index.long(),
            velocities=torch.tensor(np.array(velocities).reshape(-1, 2), dtype=torch.float32)[index],
            num_points_in_box=num_points,
            occlusion=occlusion,
            difficulty=difficulty,
            boxes_2d=boxes_2d,
            visible_2d=in_image & (visible_pixels > 0),
            visible_pixels=visible_pixels,
            point_boxes=torch.from_numpy(point_boxes.astype(np.int64)),
            pixel_boxes=torch.from_numpy(pixel_boxes.astype(np.int64)),
        )
