"""Procedural street scenes seen by a spinning LiDAR and pinhole cameras (open3d ray casting).

A scene is a straight street (sometimes crossed by a second one) laid out from a seed: a road
between two sidewalks, building walls along the sidewalks, poles at the kerb, trees and bushes,
and cars on the road. Road and sidewalk share almost the same geometry (the sidewalk is raised by
``curb_height``, 5 cm by default, and reflects the laser alike) but look different to a camera
(dark asphalt against light paving), so the camera separates them and the LiDAR barely does.

The same :class:`open3d.t.geometry.RaycastingScene` is cast by the LiDAR (one ray per beam and
azimuth step) and by each camera (one ray per pixel), so per-point and per-pixel labels come from
the same surfaces. Frames follow the ego vehicle along the street (``num_frames`` > 1), each with
its pose ``world_from_lidar``.

Frames (conventions of DESIGN.md): the LiDAR frame has x forward, y left, z up, origin at the
sensor (so the road is at ``z = -lidar_height``); cameras are OpenCV (x right, y down, z forward)
with intrinsics ``K`` and extrinsics ``T_cam_from_lidar``; a pixel ``(u, v)`` is the ray through
the point ``(u, v)`` of the image plane, so rounding a projection gives the pixel that saw it.

Example:
    >>> gen = StreetSceneGenerator(beams=8, azimuth_steps=256, image_size=(32, 48), num_cameras=1)
    >>> frame = gen.generate(seed=0)[0]
    >>> frame.points.shape[1], frame.images.shape[1:], CLASS_NAMES[:2]
    (4, torch.Size([3, 32, 48]), ('road', 'sidewalk'))
    >>> bool((frame.labels >= 0).all()) and bool(torch.equal(frame.points, gen.generate(seed=0)[0].points))
    True

Why one file of ~520 lines: the street layout (``_Layout``, meshes with their ``_Surface``) and the
sensors (``StreetSceneGenerator``: LiDAR and camera ray casting) share the class ids, the surface
table and the texture; split in two, each half would import the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "CLASS_COLORS",
    "CLASS_NAMES",
    "IGNORE_INDEX",
    "Frame",
    "StreetSceneGenerator",
    "camera_rig",
]

#: Semantic classes of points and pixels, in label order.
CLASS_NAMES: tuple[str, ...] = ("road", "sidewalk", "car", "pole", "building", "vegetation")
#: Label of pixels that see the sky (no surface); never a point label.
IGNORE_INDEX = -1
#: A display colour per class (RGB in [0, 1]) for plots; not the rendered appearance.
CLASS_COLORS: tuple[tuple[float, float, float], ...] = (
    (0.35, 0.35, 0.40),
    (0.95, 0.60, 0.20),
    (0.10, 0.45, 0.95),
    (0.85, 0.10, 0.10),
    (0.60, 0.40, 0.80),
    (0.20, 0.75, 0.25),
)
ROAD, SIDEWALK, CAR, POLE, BUILDING, VEGETATION = range(6)
# laser reflectivity per class; road and sidewalk alike on purpose
_REFLECTIVITY = (0.20, 0.21, 0.70, 0.45, 0.35, 0.25)
_SKY_TOP, _SKY_HORIZON = np.array([0.35, 0.55, 0.90]), np.array([0.75, 0.85, 0.95])


@dataclass
class Frame:
    """One LiDAR sweep and the camera images taken at the same instant.

    Attributes:
        points: ``(N, 4)`` float32 ``x, y, z, intensity`` in the LiDAR frame; intensity in [0, 1].
        labels: ``(N,)`` int64 class index into :data:`CLASS_NAMES`.
        instances: ``(N,)`` int64 id of the object each point hit (one id per mesh).
        images: ``(C, 3, H, W)`` float32 RGB in [0, 1], one per camera.
        pixel_labels: ``(C, H, W)`` int64 class per pixel, :data:`IGNORE_INDEX` for sky.
        K: ``(C, 3, 3)`` float32 intrinsics.
        T_cam_from_lidar: ``(C, 4, 4)`` float32 extrinsics (OpenCV camera from LiDAR).
        pose: ``(4, 4)`` float32 ``world_from_lidar`` (the world is the street's frame).
    """

    points: torch.Tensor
    labels: torch.Tensor
    instances: torch.Tensor
    images: torch.Tensor
    pixel_labels: torch.Tensor
    K: torch.Tensor
    T_cam_from_lidar: torch.Tensor
    pose: torch.Tensor


def camera_rig(
    num_cameras: int,
    image_size: tuple[int, int],
    *,
    horizontal_fov_deg: float = 90.0,
    offset: tuple[float, float, float] = (0.3, 0.0, -0.3),
) -> tuple[np.ndarray, np.ndarray]:
    """Intrinsics and extrinsics of ``num_cameras`` cameras at evenly spaced yaws, the first looking forward.

    Each camera sits ``offset`` from the LiDAR (forward along its own viewing direction, left, up).

    Args:
        num_cameras: number of cameras (1 = front only; 4 with a 90 degree field of view see all around).
        image_size: ``(H, W)``.
        horizontal_fov_deg: horizontal field of view of every camera.
        offset: camera position relative to the LiDAR, in the camera's yawed frame (metres).

    Returns:
        ``K`` ``(C, 3, 3)`` and ``T_cam_from_lidar`` ``(C, 4, 4)``, float64.

    Raises:
        ValueError: ``num_cameras`` < 1, a non-positive image size or a field of view outside (0, 180).
    """
    if num_cameras < 1:
        raise ValueError(f"`num_cameras` must be >= 1, got {num_cameras}.")
    height, width = image_size
    if height < 1 or width < 1:
        raise ValueError(f"`image_size` must be two positive ints (H, W), got {image_size}.")
    if not 0 < horizontal_fov_deg < 180:
        raise ValueError(f"`horizontal_fov_deg` must be in (0, 180), got {horizontal_fov_deg}.")
    focal = (width / 2) / math.tan(math.radians(horizontal_fov_deg) / 2)
    K = np.array([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]])
    Ks, Ts = [], []
    for c in range(num_cameras):
        yaw = 2 * math.pi * c / num_cameras
        forward = np.array([math.cos(yaw), math.sin(yaw), 0.0])
        left = np.array([-math.sin(yaw), math.cos(yaw), 0.0])
        up = np.array([0.0, 0.0, 1.0])
        # OpenCV axes in the LiDAR frame: x right, y down, z forward
        R_lidar_from_cam = np.stack([-left, -up, forward], axis=1)
        position = offset[0] * forward + offset[1] * left + offset[2] * up
        T = np.eye(4)
        T[:3, :3] = R_lidar_from_cam.T
        T[:3, 3] = -R_lidar_from_cam.T @ position
        Ks.append(K)
        Ts.append(T)
    return np.stack(Ks), np.stack(Ts)


@dataclass
class _Surface:
    label: int
    color: np.ndarray  # (3,) base RGB
    reflectivity: float


class StreetSceneGenerator:
    """Street scenes, LiDAR sweeps and camera images, deterministic from a seed.

    Args:
        beams: LiDAR beams (rings).
        elevation_deg: lowest and highest beam elevation, degrees (32 beams over -25..+3 by default).
        azimuth_steps: rays per beam over 360 degrees.
        max_range: LiDAR range in metres; farther hits are dropped.
        range_noise: standard deviation of the range noise, metres.
        lidar_height: sensor height above the road, metres.
        image_size: ``(H, W)`` of every camera image.
        num_cameras: cameras at evenly spaced yaws (see :func:`camera_rig`).
        horizontal_fov_deg: horizontal field of view of each camera.
        curb_height: how much the sidewalk is raised above the road, metres.
        pixel_noise: standard deviation of the per-pixel colour noise.
        speed: ego speed along the street, m/s (for sequences).
        frame_interval: seconds between frames of a sequence.

    Raises:
        ValueError: a non-positive count or size, or an elevation range that is not increasing.
    """

    def __init__(
        self,
        beams: int = 32,
        elevation_deg: tuple[float, float] = (-25.0, 3.0),
        azimuth_steps: int = 1024,
        max_range: float = 50.0,
        range_noise: float = 0.02,
        lidar_height: float = 1.8,
        image_size: tuple[int, int] = (96, 160),
        num_cameras: int = 1,
        horizontal_fov_deg: float = 90.0,
        curb_height: float = 0.05,
        pixel_noise: float = 0.03,
        speed: float = 8.0,
        frame_interval: float = 0.5,
    ) -> None:
        for name, value in (("beams", beams), ("azimuth_steps", azimuth_steps), ("num_cameras", num_cameras)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        if not elevation_deg[0] < elevation_deg[1]:
            raise ValueError(f"`elevation_deg` must be (low, high) with low < high, got {elevation_deg}.")
        if max_range <= 0 or lidar_height <= 0:
            raise ValueError(
                f"`max_range` and `lidar_height` must be > 0, got {max_range} and {lidar_height}."
            )
        self.beams = beams
        self.elevation_deg = (float(elevation_deg[0]), float(elevation_deg[1]))
        self.azimuth_steps = azimuth_steps
        self.max_range = float(max_range)
        self.range_noise = float(range_noise)
        self.lidar_height = float(lidar_height)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.num_cameras = num_cameras
        self.curb_height = float(curb_height)
        self.pixel_noise = float(pixel_noise)
        self.speed = float(speed)
        self.frame_interval = float(frame_interval)
        self.K, self.T_cam_from_lidar = camera_rig(
            num_cameras, self.image_size, horizontal_fov_deg=horizontal_fov_deg
        )

    # ------------------------------------------------------------------ public
    def generate(self, seed: int, num_frames: int = 1) -> list[Frame]:
        """``num_frames`` frames of the scene laid out from ``seed``, the ego driving along the road.

        Raises:
            ValueError: ``num_frames`` < 1.
        """
        if num_frames < 1:
            raise ValueError(f"`num_frames` must be >= 1, got {num_frames}.")
        import open3d as o3d

        rng = np.random.default_rng(seed)
        layout = _Layout(rng, self.curb_height, path_length=self.speed * self.frame_interval * num_frames)
        scene = o3d.t.geometry.RaycastingScene()
        surfaces: list[_Surface] = []
        for vertices, triangles, surface in layout.meshes:
            scene.add_triangles(
                o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(triangles.astype(np.uint32))
            )
            surfaces.append(surface)
        label_of = np.array([s.label for s in surfaces] + [IGNORE_INDEX], dtype=np.int64)
        texture = _Texture(rng)
        frames = []
        for t in range(num_frames):
            pose = layout.ego_pose(t * self.speed * self.frame_interval, self.lidar_height)
            noise_rng = np.random.default_rng([seed, t])
            points, labels, ids = self._lidar(scene, pose, surfaces, label_of, noise_rng)
            images, pixel_labels = self._cameras(scene, pose, surfaces, label_of, texture, noise_rng)
            frames.append(
                Frame(
                    points=torch.from_numpy(points),
                    labels=torch.from_numpy(labels),
                    instances=torch.from_numpy(ids),
                    images=torch.from_numpy(images),
                    pixel_labels=torch.from_numpy(pixel_labels),
                    K=torch.from_numpy(self.K.astype(np.float32)),
                    T_cam_from_lidar=torch.from_numpy(self.T_cam_from_lidar.astype(np.float32)),
                    pose=torch.from_numpy(pose.astype(np.float32)),
                )
            )
        return frames

    def lidar_directions(self) -> np.ndarray:
        """Unit ray directions ``(beams * azimuth_steps, 3)`` in the LiDAR frame, beam-major."""
        elevation = np.deg2rad(np.linspace(*self.elevation_deg, self.beams))
        azimuth = np.linspace(0.0, 2 * np.pi, self.azimuth_steps, endpoint=False)
        e, a = np.meshgrid(elevation, azimuth, indexing="ij")
        return np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], axis=-1).reshape(-1, 3)

    # ----------------------------------------------------------------- sensors
    def _lidar(self, scene, pose, surfaces, label_of, rng):
        directions = self.lidar_directions()
        hits = _cast(scene, pose, np.zeros_like(directions), directions)
        t, ids, normals = hits
        keep = np.isfinite(t) & (t < self.max_range) & (t > 1.0)
        t, ids, normals, directions = t[keep], ids[keep], normals[keep], directions[keep]
        distance = t + rng.normal(0.0, self.range_noise, size=t.shape)
        xyz = directions * distance[:, None]
        # intensity: reflectivity times the cosine of the incidence angle, plus noise
        world_dirs = directions @ pose[:3, :3].T
        cosine = np.abs((world_dirs * normals).sum(-1))
        reflectivity = np.array([s.reflectivity for s in surfaces])[ids]
        intensity = np.clip(reflectivity * (0.4 + 0.6 * cosine) + rng.normal(0.0, 0.03, t.shape), 0.0, 1.0)
        points = np.concatenate([xyz, intensity[:, None]], axis=1).astype(np.float32)
        return points, label_of[ids], ids.astype(np.int64)

    def _cameras(self, scene, pose, surfaces, label_of, texture, rng):
        height, width = self.image_size
        v, u = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
        pixels = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=0)  # (3, H*W)
        colors = np.stack([s.color for s in surfaces])
        images, pixel_labels = [], []
        for K, T in zip(self.K, self.T_cam_from_lidar):
            rays_cam = np.linalg.inv(K) @ pixels
            rays_cam /= np.linalg.norm(rays_cam, axis=0, keepdims=True)
            T_lidar_from_cam = np.linalg.inv(T)
            directions = (T_lidar_from_cam[:3, :3] @ rays_cam).T
            origins = np.broadcast_to(T_lidar_from_cam[:3, 3], directions.shape)
            t, ids, normals = _cast(scene, pose, origins, directions)
            hit = np.isfinite(t)
            world_dirs = directions @ pose[:3, :3].T
            world_origins = origins @ pose[:3, :3].T + pose[:3, 3]
            rgb = np.empty((directions.shape[0], 3))
            # sky: a vertical gradient
            up = np.clip(world_dirs[:, 2], 0.0, 1.0)[:, None]
            rgb[:] = _SKY_HORIZON * (1 - up) + _SKY_TOP * up
            h_ids = ids[hit]
            hit_points = world_origins[hit] + world_dirs[hit] * t[hit, None]
            shade = 0.55 + 0.45 * np.clip(np.abs(normals[hit] @ _LIGHT), 0.0, 1.0)
            base = colors[h_ids] * (1.0 + texture(hit_points))[:, None]
            rgb[hit] = base * shade[:, None]
            rgb += rng.normal(0.0, self.pixel_noise, rgb.shape)
            images.append(np.clip(rgb, 0.0, 1.0).reshape(height, width, 3).transpose(2, 0, 1))
            labels = np.full(directions.shape[0], IGNORE_INDEX, dtype=np.int64)
            labels[hit] = label_of[h_ids]
            pixel_labels.append(labels.reshape(height, width))
        return np.stack(images).astype(np.float32), np.stack(pixel_labels)


_LIGHT = np.array([0.4, 0.3, 0.866])
_LIGHT = _LIGHT / np.linalg.norm(_LIGHT)


def _cast(scene, pose: np.ndarray, origins: np.ndarray, directions: np.ndarray):
    """Ray cast in the world from sensor-frame rays; returns ``t``, geometry ids and normals."""
    import open3d as o3d

    world_origins = origins @ pose[:3, :3].T + pose[:3, 3]
    world_dirs = directions @ pose[:3, :3].T
    rays = np.concatenate([world_origins, world_dirs], axis=1).astype(np.float32)
    result = scene.cast_rays(o3d.core.Tensor(rays))
    t = result["t_hit"].numpy().astype(np.float64)
    ids = result["geometry_ids"].numpy().astype(np.int64)
    normals = result["primitive_normals"].numpy().astype(np.float64)
    miss = ids == o3d.t.geometry.RaycastingScene.INVALID_ID
    t[miss] = np.inf
    ids[miss] = -1
    return t, ids, normals


class _Texture:
    """Smooth procedural texture on world coordinates: a few random plane waves, amplitude ~0.12."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.directions = rng.normal(size=(4, 3))
        self.directions /= np.linalg.norm(self.directions, axis=1, keepdims=True)
        self.frequencies = rng.uniform(1.0, 6.0, size=4)
        self.phases = rng.uniform(0, 2 * np.pi, size=4)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        waves = np.sin(points @ (self.directions * self.frequencies[:, None]).T + self.phases)
        return 0.06 * waves.sum(axis=1)


class _Layout:
    """The street of one scene, as triangle meshes with their surface properties, in the world frame."""

    HALF_LENGTH = 60.0

    def __init__(self, rng: np.random.Generator, curb_height: float, path_length: float) -> None:
        self.rng = rng
        self.meshes: list[tuple[np.ndarray, np.ndarray, _Surface]] = []
        self.road_half = rng.uniform(3.5, 6.0)
        self.sidewalk = rng.uniform(2.5, 5.0)
        self.heading = rng.normal(0.0, 0.05)
        self.lane = -self.road_half / 2  # ego drives in the right-hand lane (y is left)
        self.start = rng.uniform(-5.0, 5.0)
        L, w, s = self.HALF_LENGTH, self.road_half, self.sidewalk
        far = w + s + 12.0
        # optional cross street
        self.cross = None
        if rng.random() < 0.5:
            self.cross = (rng.uniform(12.0, 35.0) * rng.choice([-1, 1]), rng.uniform(3.5, 5.0))
        road_color = np.array([0.23, 0.23, 0.25]) * rng.uniform(0.85, 1.15)
        walk_color = np.array([0.66, 0.61, 0.54]) * rng.uniform(0.9, 1.1)
        road = _Surface(ROAD, road_color, _REFLECTIVITY[ROAD])
        walk = _Surface(SIDEWALK, walk_color, _REFLECTIVITY[SIDEWALK])
        self._box((0, 0, -0.1), (2 * L, 2 * w, 0.2), 0.0, road)
        spans = self._spans(-L, L)
        for x0, x1 in spans:
            for side in (-1, 1):
                y_mid = side * (w + far) / 2
                self._box(
                    ((x0 + x1) / 2, y_mid, curb_height / 2 - 0.1),
                    (x1 - x0, far - w, curb_height + 0.2),
                    0.0,
                    walk,
                )
        if self.cross is not None:
            xc, half = self.cross
            self._box((xc, 0, -0.1), (2 * half, 2 * far, 0.2), 0.0, road)
        self._buildings(spans, w + s)
        self._poles(spans, w)
        self._vegetation(spans, w, s)
        self._cars(w, path_length)

    def ego_pose(self, distance: float, height: float) -> np.ndarray:
        """``world_from_lidar`` after driving ``distance`` metres along the lane."""
        c, s = math.cos(self.heading), math.sin(self.heading)
        pose = np.eye(4)
        pose[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
        pose[:3, 3] = [self.start + distance, self.lane, height]
        return pose

    # ------------------------------------------------------------ primitives
    def _spans(self, x0: float, x1: float) -> list[tuple[float, float]]:
        """Stretches of ``[x0, x1]`` outside the cross street."""
        if self.cross is None:
            return [(x0, x1)]
        xc, half = self.cross
        return [(x0, xc - half), (xc + half, x1)]

    def _add(self, vertices: np.ndarray, triangles: np.ndarray, surface: _Surface) -> None:
        self.meshes.append((vertices, triangles, surface))

    def _box(self, center, size, yaw: float, surface: _Surface) -> None:
        corners = np.array([[i, j, k] for i in (-0.5, 0.5) for j in (-0.5, 0.5) for k in (-0.5, 0.5)]) * size
        faces = np.array(
            [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
             [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]]
        )  # fmt: skip
        self._add(_rotate_z(corners, yaw) + np.asarray(center), faces, surface)

    def _cylinder(self, center, radius: float, height: float, surface: _Surface, segments: int = 12) -> None:
        angles = np.linspace(0, 2 * np.pi, segments, endpoint=False)
        ring = np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)
        bottom = np.concatenate([ring, np.full((segments, 1), -height / 2)], axis=1)
        top = np.concatenate([ring, np.full((segments, 1), height / 2)], axis=1)
        vertices = np.concatenate([bottom, top, [[0, 0, -height / 2], [0, 0, height / 2]]])
        faces = []
        for i in range(segments):
            j = (i + 1) % segments
            faces += [[i, j, segments + j], [i, segments + j, segments + i]]
            faces += [[2 * segments, j, i], [2 * segments + 1, segments + i, segments + j]]
        self._add(vertices + np.asarray(center), np.array(faces), surface)

    def _ellipsoid(self, center, radii, surface: _Surface, rings: int = 6, segments: int = 10) -> None:
        phi = np.linspace(0, np.pi, rings + 1)[1:-1]
        theta = np.linspace(0, 2 * np.pi, segments, endpoint=False)
        p, t = np.meshgrid(phi, theta, indexing="ij")
        body = np.stack([np.sin(p) * np.cos(t), np.sin(p) * np.sin(t), np.cos(p)], axis=-1).reshape(-1, 3)
        vertices = np.concatenate([[[0, 0, 1]], body, [[0, 0, -1]]]) * np.asarray(radii)
        bottom = len(vertices) - 1
        faces = []
        for i in range(segments):
            j = (i + 1) % segments
            faces.append([0, 1 + i, 1 + j])
            last = 1 + (rings - 2) * segments
            faces.append([bottom, last + j, last + i])
            for r in range(rings - 2):
                a, b = 1 + r * segments, 1 + (r + 1) * segments
                faces += [[a + i, b + i, b + j], [a + i, b + j, a + j]]
        self._add(vertices + np.asarray(center), np.array(faces), surface)

    # --------------------------------------------------------------- objects
    def _buildings(self, spans, front: float) -> None:
        rng = self.rng
        palette = np.array([[0.62, 0.36, 0.28], [0.80, 0.76, 0.66], [0.55, 0.55, 0.58], [0.88, 0.86, 0.80]])
        for side in (-1, 1):
            for x0, x1 in spans:
                x = x0
                while x < x1 - 3.0:
                    length = min(rng.uniform(8.0, 25.0), x1 - x)
                    depth = rng.uniform(4.0, 8.0)
                    height = rng.uniform(5.0, 15.0)
                    color = palette[rng.integers(len(palette))] * rng.uniform(0.85, 1.1)
                    surface = _Surface(BUILDING, color, _REFLECTIVITY[BUILDING])
                    y = side * (front + depth / 2 + rng.uniform(0.0, 1.0))
                    self._box((x + length / 2, y, height / 2), (length, depth, height), 0.0, surface)
                    x += length + rng.uniform(0.0, 6.0)

    def _poles(self, spans, w: float) -> None:
        rng = self.rng
        for side in (-1, 1):
            for x0, x1 in spans:
                x = x0 + rng.uniform(0.0, 8.0)
                while x < x1 - 1.0:
                    radius, height = rng.uniform(0.08, 0.2), rng.uniform(4.0, 8.0)
                    color = np.array([0.42, 0.43, 0.47]) * rng.uniform(0.8, 1.2)
                    surface = _Surface(POLE, color, _REFLECTIVITY[POLE])
                    self._cylinder((x, side * (w + 0.5), height / 2), radius, height, surface)
                    x += rng.uniform(8.0, 18.0)

    def _vegetation(self, spans, w: float, s: float) -> None:
        rng = self.rng
        for side in (-1, 1):
            for x0, x1 in spans:
                x = x0 + rng.uniform(0.0, 10.0)
                while x < x1 - 1.0:
                    green = np.array([0.18, 0.45, 0.14]) * rng.uniform(0.75, 1.25)
                    surface = _Surface(VEGETATION, green, _REFLECTIVITY[VEGETATION])
                    if rng.random() < 0.6:  # tree: trunk and canopy
                        crown = rng.uniform(1.0, 2.2)
                        z = rng.uniform(2.8, 4.0)
                        y = side * (w + s * rng.uniform(0.45, 0.7))
                        self._cylinder((x, y, z / 2), 0.15, z, surface)
                        self._ellipsoid((x, y, z + 0.5 * crown), (crown, crown, 0.8 * crown), surface)
                    else:  # bush against the facade
                        r = rng.uniform(0.5, 1.1)
                        y = side * (w + s - r * 0.8)
                        self._ellipsoid((x, y, 0.6 * r), (r, r, 0.8 * r), surface)
                    x += rng.uniform(7.0, 18.0)

    def _cars(self, w: float, path_length: float) -> None:
        rng = self.rng
        placed: list[tuple[float, float]] = []
        for _ in range(int(rng.integers(3, 11))):
            for _attempt in range(10):
                parked = rng.random() < 0.4
                side = rng.choice([-1, 1])
                y = side * (w - 1.1) if parked else side * w / 2 + rng.normal(0.0, 0.2)
                x = rng.uniform(-self.HALF_LENGTH + 5, self.HALF_LENGTH - 5)
                near_ego = abs(y - self.lane) < 2.5 and self.start - 6.0 < x < self.start + path_length + 8.0
                clash = any(abs(x - px) < 5.5 and abs(y - py) < 2.2 for px, py in placed)
                in_cross = self.cross is not None and abs(x - self.cross[0]) < self.cross[1] + 2.5
                if not (near_ego or clash or in_cross):
                    break
            else:
                continue
            placed.append((x, y))
            length, width, height = rng.uniform(3.8, 4.8), rng.uniform(1.7, 2.0), rng.uniform(1.3, 1.7)
            color = rng.uniform(0.05, 0.95, size=3)
            surface = _Surface(CAR, color, _REFLECTIVITY[CAR])
            self._box((x, y, 0.2 + height / 2), (length, width, height), rng.normal(0.0, 0.05), surface)


def _rotate_z(points: np.ndarray, yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return points @ np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
