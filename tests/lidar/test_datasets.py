"""SemanticKITTI and nuScenes readers, on tiny fake datasets written in each dataset's on-disk format."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from lightning_distill.data.images import EpochShuffleSampler, ResumableDataLoader
from lightning_distill.data.nuscenes import NuScenesLidarDataModule
from lightning_distill.data.semantic_kitti import SemanticKITTIDataModule
from lightning_distill.lidar.geometry import project_points
from lightning_distill.lidar.networks import SmallImageBackbone, SparseUNet
from lightning_distill.recipes.lasermix_pp import LaserMixPP
from lightning_distill.recipes.lima import LiMA
from lightning_distill.recipes.slidr import SLidR

NATIVE = (20, 60)  # (H, W) of the fake images on disk; the readers upscale by 2
SIZE = (40, 120)


def _rigid(rotation: np.ndarray, translation) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = rotation, translation
    return T


def _image(path: Path, size: tuple[int, int], bright: tuple[int, int], seed: int) -> None:
    """A dim textured image with one bright pixel at ``bright = (u, v)``."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0 : size[0], 0 : size[1]]
    blocks = rng.integers(0, 100, (size[0] // 5 + 1, size[1] // 10 + 1, 3))  # coloured blocks for SLIC
    pixels = (blocks[rows // 5, cols // 10] + rng.integers(0, 10, (*size, 3))).astype(np.uint8)
    pixels[bright[1], bright[0]] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=100, subsampling=0)


def _bright(image: torch.Tensor) -> set[tuple[int, int]]:
    """``(u, v)`` of the pixels of a ``(3, H, W)`` image that the bright pixel on disk reaches.

    The blocks are at most 109 / 255 bright; bilinear 2x upscaling gives each of the four pixels a
    bright native pixel covers at least 0.75 * 0.75 of it.
    """
    v, u = torch.nonzero(image.mean(0) > 0.5, as_tuple=True)
    return set(zip(u.tolist(), v.tolist()))


def _upscaled(uv: np.ndarray) -> torch.Tensor:
    """A native pixel coordinate after a 2x resize, pixel centres at integers."""
    return torch.tensor((np.asarray(uv) + 0.5) * 2 - 0.5, dtype=torch.float32)


# ----------------------------------------------------------------------------------------- SemanticKITTI
# raw id -> expected evaluation class, typed from SemanticKITTI's semantic-kitti.yaml learning map
KITTI_EXPECTED = {0: -1, 1: -1, 10: 0, 252: 0, 40: 8, 60: 8, 48: 10, 52: -1, 70: 14, 81: 18, 259: 4, 30: 5}


def write_kitti(root: Path, num_points: int = 300) -> dict:
    rng = np.random.default_rng(0)
    folder = root / "sequences" / "04"
    (folder / "velodyne").mkdir(parents=True)
    (folder / "labels").mkdir()
    # velodyne (x fwd, y left, z up) -> camera 0 (x right, y down, z fwd), slightly rotated and offset
    axes = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    Tr = _rigid(Rotation.from_euler("xyz", [0.01, -0.02, 0.015]).as_matrix() @ axes, [0.02, -0.07, -0.27])
    f, cx, cy = 40.0, 29.3, 9.6
    P2 = np.array([[f, 0, cx, 0.06 * f], [0, f, cy, 0.001], [0, 0, 1, 0.003]])
    P0 = np.array([[f, 0, cx, 0], [0, f, cy, 0], [0, 0, 1, 0]])
    lines = [
        f"{n}: " + " ".join(f"{x:.12e}" for x in M.ravel())
        for n, M in (("P0", P0), ("P1", P0), ("P2", P2), ("P3", P2))
    ]
    (folder / "calib.txt").write_text(
        "\n".join([*lines, "Tr: " + " ".join(f"{x:.12e}" for x in Tr[:3].ravel())]) + "\n"
    )
    # ground-truth world_from_lidar; KITTI stores camera-0 poses: Tr W Tr^-1
    yaw = math.radians(5.0)
    world_from_lidar = [np.eye(4), _rigid(Rotation.from_euler("z", yaw).as_matrix(), [2.0, 0.1, 0.05])]
    cam_poses = [Tr @ W @ np.linalg.inv(Tr) for W in world_from_lidar]
    (folder / "poses.txt").write_text(
        "\n".join(" ".join(f"{x:.12e}" for x in P[:3].ravel()) for P in cam_poses) + "\n"
    )
    # a point seen at native pixel (u, v) = (23.2, 7.3), 12 m deep, by the KITTI projection P2 Tr
    target = np.array([23.2, 7.3])
    depth = 12.0
    cam0 = np.linalg.solve(P2[:, :3], depth * np.array([*target, 1.0]) - P2[:, 3])
    known = (np.linalg.inv(Tr) @ np.array([*cam0, 1.0]))[:3]
    scans, raws = [], []
    for frame in range(2):
        xyz = np.stack(
            [rng.uniform(4, 30, num_points), rng.uniform(-8, 8, num_points), rng.uniform(-2, 1, num_points)],
            1,
        )
        xyz[0] = known
        scan = np.concatenate([xyz, rng.random((num_points, 1))], 1).astype(np.float32)
        scan.tofile(folder / "velodyne" / f"{frame:06d}.bin")
        raw = rng.choice(list(KITTI_EXPECTED), num_points).astype(np.uint32)
        instance = rng.integers(0, 50, num_points).astype(np.uint32)
        (raw | (instance << 16)).astype(np.uint32).tofile(folder / "labels" / f"{frame:06d}.label")
        _image(folder / "image_2" / f"{frame:06d}.png", NATIVE, (23, 7), seed=frame)
        scans.append(scan)
        raws.append((raw, instance))
    return {
        "target": target,
        "world_from_lidar": world_from_lidar,
        "scans": scans,
        "raws": raws,
        "P2": P2,
        "Tr": Tr,
    }


def kitti_module(root: Path, **kwargs) -> SemanticKITTIDataModule:
    kwargs = {"train_sequences": ["04"], "val_sequences": [4], "test_sequences": ["04"], "image_size": SIZE,
              "superpixel_segments": 20, "batch_size": 2, **kwargs}  # fmt: skip
    dm = SemanticKITTIDataModule(str(root), **kwargs)
    dm.setup()
    return dm


@pytest.fixture
def kitti(tmp_path):
    return tmp_path, write_kitti(tmp_path)


def check_layout(batch: dict, num_points: int, batch_size: int, cameras: int) -> None:
    assert batch["points"].shape == (num_points, 5) and batch["points"].dtype == torch.float32
    assert batch["points"][:, 0].unique().tolist() == [float(b) for b in range(batch_size)]
    for key in ("labels", "instances"):
        assert batch[key].shape == (num_points,) and batch[key].dtype == torch.int64
    B, C, (H, W) = batch_size, cameras, SIZE
    shapes = {
        "images": ((B, C, 3, H, W), torch.float32),
        "pixel_labels": ((B, C, H, W), torch.int64),
        "superpixels": ((B, C, H, W), torch.int64),
        "K": ((B, C, 3, 3), torch.float32),
        "T_cam_from_lidar": ((B, C, 4, 4), torch.float32),
        "pose": ((B, 4, 4), torch.float32),
        "scene": ((B,), torch.int64),
        "frame": ((B,), torch.int64),
    }
    assert set(batch) == {"points", "labels", "instances", *shapes}
    for key, (shape, dtype) in shapes.items():
        assert tuple(batch[key].shape) == shape and batch[key].dtype == dtype, key
    assert 0 <= float(batch["images"].min()) and float(batch["images"].max()) <= 1
    assert (batch["pixel_labels"] == -1).all()
    assert batch["superpixels"].min() == 0 and batch["superpixels"].max() > 0


def test_kitti_batch_layout_labels_and_instances(kitti):
    root, truth = kitti
    dm = kitti_module(root)
    batch = next(iter(dm.val_dataloader()))
    check_layout(batch, 600, 2, 1)
    expected = np.concatenate([[KITTI_EXPECTED[int(r)] for r in raw] for raw, _ in truth["raws"]])
    torch.testing.assert_close(batch["labels"], torch.from_numpy(expected).long())
    torch.testing.assert_close(
        batch["instances"], torch.from_numpy(np.concatenate([i for _, i in truth["raws"]])).long()
    )
    torch.testing.assert_close(batch["points"][:, 1:], torch.from_numpy(np.concatenate(truth["scans"])))
    assert batch["frame"].tolist() == [0, 1] and batch["scene"].tolist() == [0, 0]


def test_kitti_point_projects_onto_its_pixel_and_pose_is_recovered(kitti):
    root, truth = kitti
    batch = next(iter(kitti_module(root).val_dataloader()))
    xyz = batch["points"][batch["points"][:, 0] == 0][:, 1:4]
    uv, depth, mask = project_points(xyz, batch["K"][0, 0], batch["T_cam_from_lidar"][0, 0], SIZE)
    torch.testing.assert_close(uv[0], _upscaled(truth["target"]), atol=1e-3, rtol=0)
    assert mask[0] and mask.sum() > 10
    # the bright pixel on disk is where the point lands in the resized image
    pixel = (int(uv[0, 0].round()), int(uv[0, 1].round()))
    assert pixel in _bright(batch["images"][0, 0])
    # every point against the KITTI devkit projection P2 @ Tr
    devkit = (truth["P2"] @ truth["Tr"] @ np.c_[xyz.double().numpy(), np.ones(len(xyz))].T).T
    torch.testing.assert_close(uv[mask], _upscaled(devkit[:, :2] / devkit[:, 2:])[mask], atol=2e-3, rtol=0)
    torch.testing.assert_close(
        batch["pose"], torch.from_numpy(np.stack(truth["world_from_lidar"])).float(), atol=1e-5, rtol=0
    )


def test_kitti_lidar_only_history_and_resumable_shuffling(kitti):
    root, truth = kitti
    batch = next(iter(kitti_module(root, with_images=False).val_dataloader()))
    assert set(batch) == {"points", "labels", "instances", "pose", "scene", "frame"}
    dm = kitti_module(root, history=1)
    assert len(dm.dataset("train")) == 1
    batch = next(iter(dm.val_dataloader()))
    assert batch["past_images"].shape == (1, 1, 1, 3, *SIZE) and batch["frame"].tolist() == [1]
    torch.testing.assert_close(batch["past_pose"][0, 0], torch.eye(4))
    torch.testing.assert_close(batch["past_K"], batch["K"][:, None])
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableDataLoader) and isinstance(loader.sampler, EpochShuffleSampler)


def test_kitti_missing_files_raise_clear_errors(kitti, tmp_path):
    root, _ = kitti
    with pytest.raises(FileNotFoundError, match="sequence 05.*Expected layout"):
        kitti_module(root, train_sequences=["05"])
    dm = kitti_module(root)
    (root / "sequences/04/labels/000001.label").unlink()
    with pytest.raises(FileNotFoundError, match="with_labels.*000001.label"):
        dm.dataset("val")[1]
    (root / "sequences/04/image_2/000000.png").unlink()
    with pytest.raises(FileNotFoundError, match="image_2/000000.png"):
        dm.dataset("val")[0]
    (root / "sequences/04/poses.txt").unlink()
    with pytest.raises(FileNotFoundError, match="poses"):
        kitti_module(root)
    with pytest.raises(FileNotFoundError, match="dataset root"):
        kitti_module(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="cameras"):
        SemanticKITTIDataModule(str(root), cameras=("image_0",))


# ---------------------------------------------------------------------------------------------- nuScenes
# category name -> expected class of the 16-class challenge (typed from nuScenes-lidarseg's definition)
NUSCENES_CATEGORIES = {
    "noise": -1, "vehicle.car": 3, "vehicle.bus.bendy": 2, "human.pedestrian.child": 6,
    "human.pedestrian.stroller": -1, "flat.driveable_surface": 10, "flat.sidewalk": 12,
    "static.other": -1, "static.vegetation": 15, "vehicle.ego": -1,
}  # fmt: skip
CATEGORY_INDEX = {name: i for i, name in zip((0, 17, 15, 3, 7, 24, 26, 29, 30, 31), NUSCENES_CATEGORIES)}


def _quaternion(rotation: np.ndarray) -> list[float]:
    x, y, z, w = Rotation.from_matrix(rotation).as_quat()
    return [float(w), float(x), float(y), float(z)]


def _matrix(q: list[float], t: list[float]) -> np.ndarray:
    """Reference: the rotation of a unit quaternion ``[w, x, y, z]`` written out."""
    w, x, y, z = q
    R = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )
    return _rigid(R, t)


def write_nuscenes(root: Path, num_points: int = 300) -> dict:
    rng = np.random.default_rng(1)
    version = root / "v1.0-mini"
    version.mkdir(parents=True)
    tables: dict[str, list] = {k: [] for k in ("sample", "sample_data", "calibrated_sensor", "ego_pose", "sensor", "scene", "lidarseg", "category")}  # fmt: skip
    tables["category"] = [{"token": f"cat{i}", "name": n, "index": i} for n, i in CATEGORY_INDEX.items()]
    jitter = lambda: Rotation.from_euler("xyz", rng.normal(0, 0.03, 3)).as_matrix()  # noqa: E731
    # LIDAR_TOP: x right, y forward; cameras: OpenCV axes, front and back
    lidar_axes = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    cam_axes = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    sensors = {
        "LIDAR_TOP": (lidar_axes @ jitter(), [0.94, 0.0, 1.84], None),
        "CAM_FRONT": (cam_axes @ jitter(), [1.7, 0.02, 1.5], [[40.0, 0, 30.1], [0, 41.0, 9.7], [0, 0, 1]]),
        "CAM_BACK": (Rotation.from_euler("z", math.pi).as_matrix() @ cam_axes @ jitter(), [0.0, 0.0, 1.5],
                     [[30.0, 0, 29.4], [0, 30.0, 10.2], [0, 0, 1]]),
    }  # fmt: skip
    calib = {}
    for channel, (R, t, K) in sensors.items():
        tables["sensor"].append(
            {"token": f"s_{channel}", "channel": channel, "modality": "lidar" if K is None else "camera"}
        )
        row = {"token": f"cs_{channel}", "sensor_token": f"s_{channel}", "rotation": _quaternion(R), "translation": t,
               "camera_intrinsic": K or []}  # fmt: skip
        tables["calibrated_sensor"].append(row)
        calib[channel] = row
    tables["scene"].append({"token": "scene0", "name": "scene-0103", "first_sample_token": "sample0"})
    truth: dict = {"poses": [], "scans": [], "raws": [], "chains": []}
    for k in range(2):
        tables["sample"].append({"token": f"sample{k}", "scene_token": "scene0", "next": "sample1" if k == 0 else "",
                                 "prev": "sample0" if k else ""})  # fmt: skip
        ego = {}
        for channel in sensors:
            yaw = (
                0.3 + 0.05 * k + (0.01 if channel != "LIDAR_TOP" else 0.0)
            )  # the ego turns between timestamps
            pose = {"token": f"ep{k}_{channel}", "rotation": _quaternion(Rotation.from_euler("z", yaw).as_matrix()),
                    "translation": [400.0 + 3 * k + (0.2 if channel != "LIDAR_TOP" else 0.0), 1100.0, 0.1]}  # fmt: skip
            tables["ego_pose"].append(pose)
            ego[channel] = pose
            folder = "LIDAR_TOP" if channel == "LIDAR_TOP" else channel
            suffix = ".pcd.bin" if channel == "LIDAR_TOP" else ".jpg"
            tables["sample_data"].append(
                {"token": f"sd{k}_{channel}", "sample_token": f"sample{k}", "ego_pose_token": pose["token"],
                 "calibrated_sensor_token": f"cs_{channel}", "is_key_frame": True,
                 "filename": f"samples/{folder}/frame{k}{suffix}"}
            )  # fmt: skip
        # a non-key sweep, which the reader must skip
        tables["sample_data"].append({"token": f"sweep{k}", "sample_token": f"sample{k}", "ego_pose_token": f"ep{k}_LIDAR_TOP",
                                      "calibrated_sensor_token": "cs_LIDAR_TOP", "is_key_frame": False,
                                      "filename": f"sweeps/LIDAR_TOP/sweep{k}.pcd.bin"})  # fmt: skip
        M = {c: (_matrix(ego[c]["rotation"], ego[c]["translation"]), _matrix(calib[c]["rotation"], calib[c]["translation"])) for c in sensors}  # fmt: skip
        # the chain by hand: camera <- ego(t_cam) <- global <- ego(t_lidar) <- lidar
        chains = {
            c: np.linalg.inv(M[c][1]) @ np.linalg.inv(M[c][0]) @ M["LIDAR_TOP"][0] @ M["LIDAR_TOP"][1]
            for c in ("CAM_FRONT", "CAM_BACK")
        }
        # points around the ego (ego frame), stored in the LIDAR_TOP frame; the first one seen by
        # CAM_BACK at native pixel (17.3, 12.2), 9 m deep
        ego_xyz = np.stack([rng.choice([-1, 1], num_points) * rng.uniform(4, 25, num_points),
                            rng.uniform(-6, 6, num_points), rng.uniform(-1.5, 1, num_points)], 1)  # fmt: skip
        lidar_xyz = (np.linalg.inv(M["LIDAR_TOP"][1]) @ np.c_[ego_xyz, np.ones(num_points)].T).T[:, :3]
        K_back = np.array(sensors["CAM_BACK"][2])
        cam = 9.0 * np.linalg.solve(K_back, [17.3, 12.2, 1.0])
        lidar_xyz[0] = (np.linalg.inv(chains["CAM_BACK"]) @ np.array([*cam, 1.0]))[:3]
        scan = np.c_[lidar_xyz, rng.integers(0, 256, num_points), rng.integers(0, 32, num_points)].astype(
            np.float32
        )
        (root / "samples/LIDAR_TOP").mkdir(parents=True, exist_ok=True)
        scan.tofile(root / f"samples/LIDAR_TOP/frame{k}.pcd.bin")
        raw = rng.choice(list(CATEGORY_INDEX.values()), num_points).astype(np.uint8)
        (root / "lidarseg/v1.0-mini").mkdir(parents=True, exist_ok=True)
        raw.tofile(root / f"lidarseg/v1.0-mini/ls{k}_lidarseg.bin")
        tables["lidarseg"].append({"token": f"ls{k}", "sample_data_token": f"sd{k}_LIDAR_TOP",
                                   "filename": f"lidarseg/v1.0-mini/ls{k}_lidarseg.bin"})  # fmt: skip
        _image(root / f"samples/CAM_FRONT/frame{k}.jpg", NATIVE, (50, 3), seed=10 + k)
        _image(root / f"samples/CAM_BACK/frame{k}.jpg", NATIVE, (17, 12), seed=20 + k)
        truth["poses"].append(M["LIDAR_TOP"][0] @ M["LIDAR_TOP"][1])
        truth["scans"].append(scan)
        truth["raws"].append(raw)
        truth["chains"].append(chains)
    for name, rows in tables.items():
        (version / f"{name}.json").write_text(json.dumps(rows))
    truth["K_back"] = K_back
    return truth


def nuscenes_module(root: Path, **kwargs) -> NuScenesLidarDataModule:
    (root / "val_scenes.txt").write_text("scene-0103\n")  # the text-file form of a split
    kwargs = {"train_split": ["scene-0103"], "val_split": str(root / "val_scenes.txt"), "cameras": ("CAM_FRONT", "CAM_BACK"),
              "image_size": SIZE, "superpixel_segments": 20, "batch_size": 2, **kwargs}  # fmt: skip
    dm = NuScenesLidarDataModule(str(root), **kwargs)
    dm.setup()
    return dm


@pytest.fixture
def nuscenes(tmp_path):
    return tmp_path, write_nuscenes(tmp_path)


def test_nuscenes_batch_layout_labels_and_axes(nuscenes):
    root, truth = nuscenes
    batch = next(iter(nuscenes_module(root).val_dataloader()))
    check_layout(batch, 600, 2, 2)
    name_of = {i: n for n, i in CATEGORY_INDEX.items()}
    expected = [NUSCENES_CATEGORIES[name_of[int(r)]] for raw in truth["raws"] for r in raw]
    torch.testing.assert_close(batch["labels"], torch.tensor(expected))
    assert (batch["instances"] == -1).all()
    raw = torch.from_numpy(np.concatenate(truth["scans"]))
    # ours (x forward, y left) from LIDAR_TOP (x right, y forward); intensity / 255
    torch.testing.assert_close(
        batch["points"][:, 1:], torch.stack([raw[:, 1], -raw[:, 0], raw[:, 2], raw[:, 3] / 255], 1)
    )
    assert batch["frame"].tolist() == [0, 1]


def test_nuscenes_point_projects_onto_its_pixel_and_pose_is_recovered(nuscenes):
    root, truth = nuscenes
    batch = next(iter(nuscenes_module(root).val_dataloader()))
    ours_from_nus = _rigid(np.array([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]]), [0, 0, 0])
    for b in range(2):
        xyz = batch["points"][batch["points"][:, 0] == b][:, 1:4]
        uv, _, mask = project_points(xyz, batch["K"][b, 1], batch["T_cam_from_lidar"][b, 1], SIZE)
        torch.testing.assert_close(uv[0], _upscaled([17.3, 12.2]), atol=2e-3, rtol=0)
        assert mask[0] and (int(uv[0, 0].round()), int(uv[0, 1].round())) in _bright(batch["images"][b, 1])
        for c, channel in enumerate(("CAM_FRONT", "CAM_BACK")):
            expected = truth["chains"][b][channel] @ np.linalg.inv(ours_from_nus)
            torch.testing.assert_close(
                batch["T_cam_from_lidar"][b, c], torch.from_numpy(expected).float(), atol=1e-4, rtol=1e-5
            )
        # world_from_lidar in our axes
        expected_pose = torch.from_numpy(truth["poses"][b] @ np.linalg.inv(ours_from_nus)).float()
        torch.testing.assert_close(batch["pose"][b], expected_pose, atol=1e-3, rtol=1e-6)
    # both cameras see points (front and back), more than the one placed by hand
    for c in range(2):
        assert project_points(xyz, batch["K"][1, c], batch["T_cam_from_lidar"][1, c], SIZE)[2].sum() > 10


def test_nuscenes_history_lidar_only_and_errors(nuscenes, tmp_path):
    root, truth = nuscenes
    batch = next(iter(nuscenes_module(root, history=1).val_dataloader()))
    assert batch["past_images"].shape == (1, 1, 2, 3, *SIZE)
    expected = torch.from_numpy(
        truth["poses"][0] @ np.linalg.inv(_rigid(np.array([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]]), [0, 0, 0]))
    )
    torch.testing.assert_close(batch["past_pose"][0, 0], expected.float(), atol=1e-3, rtol=1e-6)
    lidar_only = next(iter(nuscenes_module(root, cameras=()).val_dataloader()))
    assert set(lidar_only) == {"points", "labels", "instances", "pose", "scene", "frame"}
    with pytest.raises(ValueError, match="scene-0061"):
        nuscenes_module(root, train_split="mini_train")
    with pytest.raises(ValueError, match="CAM_SIDE"):
        NuScenesLidarDataModule(str(root), cameras=("CAM_SIDE",))
    dm = nuscenes_module(root)
    (root / "samples/CAM_BACK/frame1.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="CAM_BACK/frame1.jpg"):
        dm.dataset("val")[1]
    (root / "lidarseg/v1.0-mini/ls0_lidarseg.bin").unlink()
    with pytest.raises(FileNotFoundError, match="with_labels.*ls0_lidarseg.bin"):
        dm.dataset("val")[0]
    (root / "v1.0-mini/ego_pose.json").unlink()
    with pytest.raises(FileNotFoundError, match="ego_pose.json.*Expected layout"):
        nuscenes_module(root)


# ------------------------------------------------------------------------------------------ recipe smoke
@pytest.mark.parametrize("dataset", ["kitti", "nuscenes"])
def test_slidr_training_step_runs_on_real_layout(dataset, tmp_path):
    if dataset == "kitti":
        write_kitti(tmp_path, num_points=800)
        batch = next(iter(kitti_module(tmp_path).train_dataloader()))
    else:
        write_nuscenes(tmp_path, num_points=800)
        batch = next(iter(nuscenes_module(tmp_path).train_dataloader()))
    torch.manual_seed(0)
    recipe = SLidR(SparseUNet(1, widths=(4, 8)), SmallImageBackbone(widths=(4, 8)), voxel_size=0.5)
    recipe.log = lambda *a, **k: None
    assert len(recipe.pairs(batch).point) > 20
    loss = recipe.training_step(batch, 0)["loss"]
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    loss.backward()
    assert all(p.grad is not None for p in recipe.student.parameters())


def test_lima_runs_on_a_nuscenes_window(tmp_path):
    write_nuscenes(tmp_path, num_points=800)
    batch = next(iter(nuscenes_module(tmp_path, history=1).train_dataloader()))
    torch.manual_seed(0)
    recipe = LiMA(
        SparseUNet(1, widths=(4, 8)), SmallImageBackbone(widths=(4, 8)), voxel_size=0.5, memory_frames=1
    )
    recipe.log = lambda *a, **k: None
    loss = recipe.training_step(batch, 0)["loss"]
    assert torch.isfinite(loss.detach())
    loss.backward()
    assert all(p.grad is not None for p in recipe.student.parameters())


def test_lasermix_pp_runs_on_the_semi_supervised_kitti_split(tmp_path):
    write_kitti(tmp_path, num_points=800)
    dm = kitti_module(tmp_path, labelled_fraction=0.5, batch_size=1)
    loaders = dm.train_dataloader()
    assert set(loaders) == {"labelled", "unlabelled"}
    batch = {name: next(iter(loader)) for name, loader in loaders.items()}
    assert (batch["unlabelled"]["labels"] == -1).all() and (batch["labelled"]["labels"] >= 0).any()
    assert len(kitti_module(tmp_path, labelled_fraction=0.5, use_unlabelled=False).train_dataloader()) == 1
    torch.manual_seed(0)
    recipe = LaserMixPP(
        SparseUNet(1, widths=(4, 8)), SmallImageBackbone(widths=(4, 8)), num_classes=19, voxel_size=0.5
    )
    recipe.log = lambda *a, **k: None
    terms = recipe.training_step(batch, 0)
    assert {"ce_labelled", "ce_mixed", "distill"} <= set(terms) and torch.isfinite(terms["loss"].detach())
