"""Multi-view scenes made offline: procedural objects ray cast with open3d from calibrated cameras.

A scene is a few open3d primitives (sphere, box, cylinder, torus, cone) with known diffuse colours,
placed inside the cube ``[-1, 1]^3`` from a seed, and seen by ``num_views`` pinhole cameras on a sphere
of radius ``radius`` around the origin (a Fibonacci spiral turned by the seed), every camera looking at
the origin. :class:`open3d.t.geometry.RaycastingScene` casts one ray per pixel through the pixel
centre; each pixel gets

* ``images``: Lambertian shading ``albedo · (ambient + Σ_l I_l max(0, n·l))`` from fixed directional
  lights (no shadows, no specular: the colour does not depend on the view), a white background;
* ``depths``: the distance along the (unit) ray to the hit, 0 on the background;
* ``normals``: the unit surface normal facing the camera, 0 on the background;
* ``masks``: whether the ray hits an object;
* ``labels``: the class of the object (:data:`OBJECT_CLASSES`), :data:`BACKGROUND` elsewhere.

Cameras follow OpenCV (x right, y down, z forward); ``K`` are intrinsics, ``c2w`` camera-to-world
matrices; the pixel ``(u, v)`` looks through ``(u + 0.5, v + 0.5)`` on the image plane, as
:func:`lightning_distill.radiance.rendering.camera_rays`. Everything is a pure function of the seed.

Example:
    >>> scene = make_scene(seed=0, image_size=16, num_views=6, num_test=2)
    >>> tuple(scene.images.shape), tuple(scene.cameras.K.shape), scene.test_index.tolist()
    ((6, 3, 16, 16), (6, 3, 3), [0, 3])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lightning_distill.radiance.rendering import camera_rays
from lightning_distill.utils.checks import check_choice, check_int, check_positive

__all__ = [
    "BACKGROUND",
    "OBJECT_CLASSES",
    "SCENES",
    "Cameras",
    "MultiViewScene",
    "look_at",
    "make_scene",
    "sphere_cameras",
]

#: Per-pixel label of the background (no object).
BACKGROUND = -1
#: Object classes, in label order.
OBJECT_CLASSES: tuple[str, ...] = ("sphere", "box", "cylinder", "torus", "cone")
#: The procedural scenes: which object classes each holds.
SCENES: dict[str, tuple[str, ...]] = {
    "objects": ("sphere", "box", "cylinder", "torus"),
    "pair": ("sphere", "box"),
    "shelf": ("box", "cone", "cylinder", "torus", "sphere"),
}
_COLORS = np.array(
    [[0.85, 0.25, 0.20], [0.20, 0.65, 0.30], [0.20, 0.40, 0.85], [0.90, 0.75, 0.15], [0.70, 0.30, 0.75]]
)
_LIGHTS = np.array([[0.5, -0.4, 0.75], [-0.6, 0.5, 0.3]])
_LIGHT_POWER = (0.65, 0.35)
_AMBIENT = 0.3


@dataclass
class Cameras:
    """Pinhole cameras: ``K (V, 3, 3)`` intrinsics and ``c2w (V, 4, 4)`` camera-to-world (OpenCV axes)."""

    K: Tensor
    c2w: Tensor

    def __len__(self) -> int:
        return self.K.shape[0]

    def __getitem__(self, index: Tensor | slice | int) -> Cameras:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Cameras(self.K[index], self.c2w[index])


@dataclass
class MultiViewScene:
    """Views of one scene and what each pixel saw; see the module docstring for the conventions.

    Attributes:
        cameras: the calibrated cameras, one per view.
        images: ``(V, 3, H, W)`` float RGB in [0, 1].
        depths: ``(V, H, W)`` float distance along the unit ray (0: background).
        normals: ``(V, 3, H, W)`` float unit normals facing the camera (0: background).
        masks: ``(V, H, W)`` bool, the ray hit an object.
        labels: ``(V, H, W)`` int64 class into :data:`OBJECT_CLASSES`, :data:`BACKGROUND` elsewhere.
        aabb: ``(6,)`` the box ``(x0, y0, z0, x1, y1, z1)`` holding every object.
        test_index: ``(T,)`` the held-out views; the others are for training.
        background: the background colour (white: 1.0).
    """

    cameras: Cameras
    images: Tensor
    depths: Tensor
    normals: Tensor
    masks: Tensor
    labels: Tensor
    aabb: Tensor
    test_index: Tensor
    background: float = 1.0

    @property
    def train_index(self) -> Tensor:
        """The training views (all but :attr:`test_index`)."""
        keep = torch.ones(len(self.cameras), dtype=torch.bool)
        keep[self.test_index] = False
        return keep.nonzero().flatten()

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[-2]), int(self.images.shape[-1])


def look_at(eye: Tensor, target: Tensor, up: Tensor) -> Tensor:
    """``(..., 4, 4)`` camera-to-world matrices of cameras at ``eye`` looking at ``target`` (OpenCV axes).

    The camera's z axis points at the target, its y axis (image down) away from ``up``.
    """
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.linalg.cross(forward, up.expand_as(forward), dim=-1)
    bad = right.norm(dim=-1, keepdim=True) < 1e-6  # looking along `up`: any right vector will do
    right = torch.where(bad, torch.tensor([1.0, 0.0, 0.0]).expand_as(right), right)
    right = torch.nn.functional.normalize(right, dim=-1)
    down = torch.linalg.cross(forward, right, dim=-1)
    c2w = torch.eye(4).repeat(*eye.shape[:-1], 1, 1)
    c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2], c2w[..., :3, 3] = right, down, forward, eye
    return c2w


def sphere_cameras(
    num_views: int,
    image_size: int | tuple[int, int],
    *,
    radius: float = 3.0,
    fov: float = 45.0,
    seed: int = 0,
) -> Cameras:
    """``num_views`` cameras on a sphere looking at the origin: a Fibonacci spiral turned about z by the seed.

    Args:
        image_size: ``H`` or ``(H, W)`` pixels.
        radius: distance of every camera from the origin.
        fov: horizontal field of view in degrees.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    k = torch.arange(num_views, dtype=torch.float64) + 0.5
    z = 1 - 2 * k / num_views  # evenly spaced heights
    turn = float(torch.rand((), generator=torch.Generator().manual_seed(seed))) * 2 * math.pi
    phi = math.pi * (3 - math.sqrt(5)) * k + turn
    ring = (1 - z**2).sqrt()
    eye = (radius * torch.stack([ring * phi.cos(), ring * phi.sin(), z], dim=-1)).float()
    c2w = look_at(eye, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    focal = 0.5 * width / math.tan(math.radians(fov) / 2)
    K = torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
    return Cameras(K.repeat(num_views, 1, 1), c2w)


def _primitive(name: str, rng: np.random.Generator):
    import open3d as o3d

    make = o3d.geometry.TriangleMesh
    if name == "sphere":
        mesh = make.create_sphere(radius=rng.uniform(0.28, 0.38), resolution=24)
    elif name == "box":
        w, h, d = rng.uniform(0.3, 0.55, size=3)
        mesh = make.create_box(w, h, d).translate((-w / 2, -h / 2, -d / 2))
    elif name == "cylinder":
        mesh = make.create_cylinder(
            radius=rng.uniform(0.15, 0.22), height=rng.uniform(0.45, 0.65), resolution=32
        )
    elif name == "torus":
        mesh = make.create_torus(torus_radius=rng.uniform(0.25, 0.32), tube_radius=0.09, radial_resolution=32)
    else:  # cone
        mesh = make.create_cone(radius=rng.uniform(0.2, 0.28), height=rng.uniform(0.4, 0.55), resolution=32)
        mesh.translate((0.0, 0.0, -0.2))
    axis_angle = rng.normal(size=3) * 0.8
    mesh.rotate(make.get_rotation_matrix_from_axis_angle(axis_angle), center=(0.0, 0.0, 0.0))
    mesh.compute_vertex_normals()
    return mesh


def _place(count: int, rng: np.random.Generator) -> np.ndarray:
    """Object centres on a jittered ring in the cube (``count`` >= 1), apart enough not to overlap much."""
    angle = rng.uniform(0, 2 * math.pi) + 2 * math.pi * np.arange(count) / count
    ring = 0.0 if count == 1 else 0.55
    centres = np.stack([ring * np.cos(angle), ring * np.sin(angle), rng.uniform(-0.25, 0.25, count)], axis=-1)
    return centres + rng.uniform(-0.05, 0.05, size=centres.shape)


def make_scene(
    name: str = "objects",
    *,
    seed: int = 0,
    image_size: int | tuple[int, int] = 32,
    num_views: int = 48,
    num_test: int = 8,
    radius: float = 3.0,
    fov: float = 38.0,
) -> MultiViewScene:
    """Render the procedural scene ``name`` (:data:`SCENES`) from ``num_views`` cameras; pure in ``seed``.

    Args:
        image_size: ``H`` or ``(H, W)`` pixels.
        num_test: held-out views, spread evenly over the spiral.
        radius, fov: the cameras (see :func:`sphere_cameras`).

    Raises:
        ValueError: an unknown scene, or sizes and counts out of range (naming the argument).
    """
    import open3d as o3d

    check_choice("name", name, tuple(SCENES))
    check_int("num_views", num_views, low=2)
    check_int("num_test", num_test, low=1, high=num_views - 1)
    check_positive("fov", fov)
    sizes = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    for size in sizes:
        check_int("image_size", size, low=4)
    if not radius > 1.8:  # the cube's corners (at distance sqrt 3) stay in front of every camera
        raise ValueError(f"`radius` must be > 1.8 (cameras outside the object cube), got {radius!r}.")
    rng = np.random.default_rng(seed)
    classes = SCENES[name]
    raycaster = o3d.t.geometry.RaycastingScene()
    for centre, cls in zip(_place(len(classes), rng), classes):
        mesh = _primitive(cls, rng).translate(centre)
        raycaster.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
    class_of = torch.tensor([OBJECT_CLASSES.index(c) for c in classes])
    albedo = torch.from_numpy(
        np.clip(_COLORS[class_of.numpy()] + rng.uniform(-0.05, 0.05, (len(classes), 3)), 0, 1)
    )
    lights = torch.nn.functional.normalize(torch.from_numpy(_LIGHTS), dim=-1)

    cameras = sphere_cameras(num_views, sizes, radius=radius, fov=fov, seed=seed)
    origins, directions = camera_rays(cameras.K, cameras.c2w, sizes)  # (V, H, W, 3)
    rays = torch.cat([origins, directions], dim=-1).reshape(-1, 6).numpy().astype(np.float32)
    hit = raycaster.cast_rays(o3d.core.Tensor(rays))
    t = torch.from_numpy(hit["t_hit"].numpy()).double()
    mask = torch.isfinite(t)
    geometry = torch.from_numpy(hit["geometry_ids"].numpy().astype(np.int64))
    normal = torch.nn.functional.normalize(
        torch.from_numpy(hit["primitive_normals"].numpy()).double(), dim=-1
    )
    dirs = directions.reshape(-1, 3).double()
    normal = torch.where(((normal * dirs).sum(-1, keepdim=True) > 0), -normal, normal)  # face the camera
    obj = torch.where(mask, geometry, torch.zeros_like(geometry))
    shade = _AMBIENT + sum(p * (normal @ light).clamp_min(0) for p, light in zip(_LIGHT_POWER, lights))
    rgb = (albedo[obj] * shade[:, None]).clamp(0, 1)
    rgb = torch.where(mask[:, None], rgb, torch.ones_like(rgb))
    normal = torch.where(mask[:, None], normal, torch.zeros_like(normal))

    shape = (num_views, *sizes)
    # views k (V - 1) / T for k < T, rounded half up in integers (a float linspace rounds a tie either way)
    k = torch.arange(num_test) if num_test > 1 else torch.zeros(1, dtype=torch.long)
    test = (2 * k * (num_views - 1) + max(num_test, 1)) // (2 * max(num_test, 1))
    return MultiViewScene(
        cameras=cameras,
        images=rgb.float().reshape(*shape, 3).permute(0, 3, 1, 2).contiguous(),
        depths=torch.where(mask, t, torch.zeros_like(t)).float().reshape(shape),
        normals=normal.float().reshape(*shape, 3).permute(0, 3, 1, 2).contiguous(),
        masks=mask.reshape(shape),
        labels=torch.where(mask, class_of[obj], torch.full_like(obj, BACKGROUND)).reshape(shape),
        aabb=torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]),
        test_index=test.unique(),
    )
