"""Our datamodules refuse bad data with a ValueError naming the file or sample and the problem.

LiDAR (synthetic cache files, SemanticKITTI and nuScenes scans), Gaussian mixtures and MUTAG graphs.
The image datamodules' checks are in tests/data/test_images.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_distill.data import lidar as lidar_data
from lightning_distill.data.gmm import GMMDataModule
from lightning_distill.data.graphs import GraphCVDataModule, check_graphs, prepare_mutag
from lightning_distill.data.lidar import SyntheticLidarDataModule
from lightning_distill.data.lidar_checks import check_lidar_sample
from lightning_distill.diffusion.mixture import GaussianMixture
from tests.lidar.test_datasets import kitti_module, nuscenes_module, write_kitti, write_nuscenes


def _sample(n: int = 5) -> dict:
    return {
        "points": torch.rand(n, 4),
        "labels": torch.tensor([0, 1, -1, 2, 0])[:n],
        "instances": torch.zeros(n),
    }


# ------------------------------------------------------------------------------------------- LiDAR
@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            lambda s: s["points"].__setitem__((1, 2), float("nan")),
            r"1 of 5 points have NaN/inf .*points \[1\]",
        ),
        (
            lambda s: s.update(points=torch.zeros(0, 4), labels=torch.zeros(0), instances=torch.zeros(0)),
            "empty",
        ),
        (lambda s: s["labels"].__setitem__(0, 3), r"outside \[0, 3\) or -1 \(ignored\): values \[3\]"),
        (lambda s: s["labels"].__setitem__(0, -2), r"values \[-2\]"),
        (
            lambda s: s.update(labels=torch.zeros(4, dtype=torch.long)),
            r"`labels` must be integers of shape \(5,\)",
        ),
        (lambda s: s.update(points=torch.rand(5, 2)), r"\(N, C >= 3\)"),
        (lambda s: s.update(points=torch.ones(5, 3, dtype=torch.long)), "floating point"),
        (lambda s: s.update(images=torch.full((1, 3, 2, 2), float("inf"))), "images hold NaN/inf"),
    ],
)
def test_lidar_sample_check_names_the_file_and_the_problem(change, match):
    sample = _sample()
    sample["instances"] = sample["instances"].long()
    check_lidar_sample(sample, num_classes=3, where="scan.bin")  # the good sample passes
    change(sample)
    with pytest.raises(ValueError, match=r"^scan\.bin: .*" + match):
        check_lidar_sample(sample, num_classes=3, where="scan.bin")


def test_synthetic_lidar_refuses_a_poisoned_cache_file_and_an_empty_training_split(tmp_path, monkeypatch):
    dm = SyntheticLidarDataModule(num_scenes=1, val_scenes=0, test_scenes=0, cache_dir=str(tmp_path))
    path = tmp_path / f"synthetic_lidar_{dm.settings_key}.pt"
    poisoned = _sample()
    poisoned.update(instances=poisoned["instances"].long(), scene=torch.tensor(0))
    poisoned["points"][3, 0] = float("inf")
    torch.save({"train": [poisoned], "val": [], "test": []}, path)
    monkeypatch.setattr(lidar_data, "_MEMORY", {})
    with pytest.raises(
        ValueError, match=rf"{path.name}: train sample 0 \(scene 0\): 1 of 5 points have NaN/inf"
    ):
        dm.setup()
    torch.save({"train": [], "val": [], "test": []}, path)
    with pytest.raises(ValueError, match="training split has no samples"):
        dm.setup()
    assert not lidar_data._MEMORY  # nothing bad kept for later runs in the process


def test_kitti_refuses_a_nan_scan_an_empty_scan_and_labels_outside_the_classes(tmp_path):
    write_kitti(tmp_path)
    dm = kitti_module(tmp_path)
    dm.dataset("val")[0]  # the good files read
    velodyne = tmp_path / "sequences/04/velodyne"
    scan = np.fromfile(velodyne / "000000.bin", dtype=np.float32).reshape(-1, 4)
    scan[7, 1] = np.nan
    scan.tofile(velodyne / "000000.bin")
    with pytest.raises(ValueError, match=r"000000\.bin.*1 of 300 points have NaN/inf .*points \[7\]"):
        dm.dataset("val")[0]
    np.zeros(0, dtype=np.float32).tofile(velodyne / "000001.bin")
    np.zeros(0, dtype=np.uint32).tofile(tmp_path / "sequences/04/labels/000001.label")
    with pytest.raises(ValueError, match=r"000001\.bin.*the scan is empty \(0 points\)"):
        dm.dataset("val")[1]
    dm.num_classes = 3  # a label map with more classes than the model's head
    scan[7, 1] = 1.0
    scan.tofile(velodyne / "000000.bin")
    with pytest.raises(ValueError, match=r"000000\.bin.*point labels are outside \[0, 3\)"):
        dm.dataset("val")[0]


def test_nuscenes_refuses_a_nan_sweep(tmp_path):
    write_nuscenes(tmp_path)
    dm = nuscenes_module(tmp_path)
    record = dm.records["train"][0]
    dm.dataset("train")[0]
    raw = np.fromfile(record["scan"], dtype=np.float32).reshape(-1, 5)
    raw[0, 3] = np.inf  # intensity
    raw.tofile(record["scan"])
    with pytest.raises(ValueError, match=rf"{record['scan'].name}.*1 of 300 points have NaN/inf"):
        dm.dataset("train")[0]


# --------------------------------------------------------------------------------------------- GMM
def test_gmm_refuses_a_mixture_whose_samples_overflow():
    dm = GMMDataModule(gmm=GaussianMixture([[3e38, 0.0]], stds=1e38), num_train=64, num_val=8, num_test=8)
    with pytest.raises(
        ValueError, match=r"train split \(1 modes.*sampled points are NaN/inf.*overflow float32"
    ):
        dm.setup()


def test_gmm_refuses_a_teacher_of_another_mixture():
    from lightning_distill.diffusion.gmm import make_mixture

    class Teacher:
        gmm = make_mixture("ring", num_classes=4)

    dm = GMMDataModule("ring", num_classes=8, conditional=True, num_train=16, num_val=8, num_test=8)
    with pytest.raises(ValueError, match="classes of the modes"):
        dm.check_teacher(Teacher())


# ------------------------------------------------------------------------------------------ graphs
def test_mutag_with_an_edge_between_graphs_is_refused_naming_the_folder_and_graph(tmp_path):
    prepare_mutag(tmp_path)
    adjacency = tmp_path / "MUTAG/raw/MUTAG_A.txt"
    lines = adjacency.read_text().splitlines()
    lines[0] = "1, 20"  # graph 0 has nodes 1..17: node 20 belongs to graph 1
    adjacency.write_text("\n".join(lines) + "\n")
    dm = GraphCVDataModule(root=str(tmp_path))
    with pytest.raises(
        ValueError, match=r"MUTAG at .*, graph 0: `edge_index` names node 19 but the graph has 17 nodes"
    ):
        dm.setup()


@pytest.mark.parametrize(
    ("graph", "match"),
    [
        ({"x": torch.full((2, 3), float("nan"))}, "node features `x` hold NaN/inf"),
        ({"x": torch.ones(0, 3)}, r"must be \(nodes >= 1, 3\), got \(0, 3\)"),
        ({"y": torch.tensor([2])}, r"label `y` must be one class in \[0, 2\), got \[2\]"),
        ({"edge_attr": torch.ones(1, 4)}, "one row per edge"),
    ],
)
def test_check_graphs_names_the_graph_and_the_problem(graph, match):
    from torch_geometric.data import Data

    good = {"x": torch.ones(2, 3), "edge_index": torch.tensor([[0, 1], [1, 0]]), "y": torch.tensor([1])}
    check_graphs([Data(**good)], num_classes=2, num_features=3, where="toy")
    with pytest.raises(ValueError, match=rf"toy, graph 1: .*{match}"):
        check_graphs([Data(**good), Data(**{**good, **graph})], num_classes=2, num_features=3, where="toy")
    with pytest.raises(ValueError, match="no graphs"):
        check_graphs([], num_classes=2, num_features=3, where="toy")
