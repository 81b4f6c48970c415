"""MUTAG offline and a cross-validation datamodule for graph classification (Mirage).

MUTAG (188 nitro-aromatic molecules, 7 atom types as one-hot node features, 4 bond types as
one-hot edge features, 2 classes: mutagenic or not) ships inside the ``grakel`` wheel in the TU
format. :func:`prepare_mutag` copies those text files to ``<root>/MUTAG/raw/`` so that
torch_geometric's ``TUDataset`` reads them instead of downloading; :func:`load_mutag` does both.

:class:`GraphCVDataModule` serves one fold of stratified k-fold cross-validation (10 folds by
default, the usual protocol on the TU benchmarks): the held-out fold is the test split, the other
folds are the training split, of which a stratified ``val_fraction`` is held out for validation.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold, train_test_split
from torch_geometric.data import Data
from torch_geometric.datasets import TUDataset
from torch_geometric.loader import DataLoader

__all__ = [
    "GraphCVDataModule",
    "check_graphs",
    "load_mutag",
    "mutag_source_dir",
    "prepare_mutag",
    "stratified_folds",
]

_MUTAG_FILES = (
    "MUTAG_A.txt",
    "MUTAG_edge_labels.txt",
    "MUTAG_graph_indicator.txt",
    "MUTAG_graph_labels.txt",
    "MUTAG_node_labels.txt",
)
DEFAULT_ROOT = "data/tu"


def mutag_source_dir() -> Path:
    """The folder of MUTAG's TU files inside the installed ``grakel`` package.

    Raises:
        ModuleNotFoundError: ``grakel`` is not installed.
        FileNotFoundError: the installed ``grakel`` does not ship MUTAG.
    """
    try:
        import grakel
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "MUTAG is read offline from the `grakel` wheel; install it with `pip install grakel==0.1.11`."
        ) from err
    source = Path(grakel.__file__).resolve().parent / "tests" / "data" / "MUTAG"
    missing = [name for name in _MUTAG_FILES if not (source / name).is_file()]
    if missing:
        raise FileNotFoundError(f"grakel at {source} does not ship MUTAG (missing {missing}).")
    return source


def prepare_mutag(root: str | Path = DEFAULT_ROOT) -> Path:
    """Copy MUTAG's TU files from ``grakel`` to ``<root>/MUTAG/raw/`` (if not there); return ``root``."""
    raw = Path(root) / "MUTAG" / "raw"
    if not all((raw / name).is_file() for name in _MUTAG_FILES):
        source = mutag_source_dir()
        raw.mkdir(parents=True, exist_ok=True)
        for name in _MUTAG_FILES:
            shutil.copyfile(source / name, raw / name)
    return Path(root)


def load_mutag(root: str | Path = DEFAULT_ROOT) -> TUDataset:
    """MUTAG as a torch_geometric ``TUDataset``, without network access.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as root:
        ...     dataset = load_mutag(root)
        ...     print(len(dataset), dataset.num_features, dataset.num_classes)
        188 7 2
    """
    return TUDataset(str(prepare_mutag(root)), name="MUTAG")


def stratified_folds(labels: Sequence[int], num_folds: int = 10, seed: int = 0) -> list[np.ndarray]:
    """Indices of the test fold of each of ``num_folds`` stratified folds (shuffled with ``seed``).

    Raises:
        ValueError: ``num_folds < 2`` or a class with fewer than ``num_folds`` members.
    """
    labels = np.asarray(labels)
    if num_folds < 2:
        raise ValueError(f"`num_folds` must be >= 2, got {num_folds}.")
    counts = np.bincount(labels)
    if counts[counts > 0].min() < num_folds:
        raise ValueError(
            f"Every class needs at least `num_folds`={num_folds} graphs for stratified folds, got class "
            f"counts {counts.tolist()}."
        )
    splitter = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    return [test for _, test in splitter.split(np.zeros(len(labels)), labels)]


def check_graphs(graphs: Sequence[Data], *, num_classes: int, num_features: int, where: str) -> None:
    """Refuse graphs that training would silently mislearn from; one pass at setup.

    Checks that there are graphs, and per graph: node features ``x`` a finite ``(nodes >= 1,
    num_features)`` float tensor, ``edge_index`` a ``(2, E)`` integer tensor naming nodes of the
    same graph, ``edge_attr`` (if any) finite with one row per edge, one label ``y`` in ``[0, num_classes)``.

    Raises:
        ValueError: naming ``where``, the graph index and the problem.

    Example:
        >>> g = Data(x=torch.ones(2, 3), edge_index=torch.tensor([[0, 1], [1, 5]]), y=torch.tensor([0]))
        >>> check_graphs([g], num_classes=2, num_features=3, where="toy")
        Traceback (most recent call last):
        ...
        ValueError: toy, graph 0: `edge_index` names node 5 but the graph has 2 nodes ...
    """
    if len(graphs) == 0:
        raise ValueError(f"{where}: no graphs; the dataset files are empty.")
    for k, g in enumerate(graphs):
        at = f"{where}, graph {k}"
        x = g.x
        if x is None or x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != num_features:
            shape = None if x is None else tuple(x.shape)
            raise ValueError(f"{at}: node features `x` must be (nodes >= 1, {num_features}), got {shape}.")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{at}: node features `x` hold NaN/inf.")
        edges = g.edge_index
        if edges is None or edges.ndim != 2 or edges.shape[0] != 2 or edges.is_floating_point():
            raise ValueError(f"{at}: `edge_index` must be a (2, E) integer tensor, got {edges!r}.")
        if edges.numel() and (int(edges.min()) < 0 or int(edges.max()) >= x.shape[0]):
            bad = int(edges.max()) if int(edges.max()) >= x.shape[0] else int(edges.min())
            raise ValueError(
                f"{at}: `edge_index` names node {bad} but the graph has {x.shape[0]} nodes (an edge between "
                "graphs: check the adjacency and graph-indicator files)."
            )
        attr = getattr(g, "edge_attr", None)
        if attr is not None and (attr.shape[0] != edges.shape[1] or not bool(torch.isfinite(attr).all())):
            raise ValueError(
                f"{at}: `edge_attr` must be finite with one row per edge ({edges.shape[1]}), got {tuple(attr.shape)}."
            )
        y = g.y
        if y is None or y.numel() != 1 or not 0 <= int(y) < num_classes:
            raise ValueError(
                f"{at}: the label `y` must be one class in [0, {num_classes}), got {None if y is None else y.tolist()}."
            )


class GraphCVDataModule(L.LightningDataModule):
    """One fold of stratified k-fold cross-validation on a TU graph dataset (MUTAG by default).

    Args:
        name: the TU dataset; only ``"MUTAG"`` is available offline.
        root: where the dataset is stored (``<root>/MUTAG/raw`` is filled from ``grakel``).
        fold: the held-out test fold, in ``[0, num_folds)``.
        num_folds: number of folds.
        val_fraction: stratified share of the training folds held out for validation (0 to use
            every training graph; validation then has no batches).
        seed: seed of the fold assignment and the validation split.
        batch_size: graphs per batch; ``None`` puts each whole split in one batch.

    Raises:
        ValueError: an unknown ``name``, ``fold`` out of range, ``val_fraction`` outside ``[0, 1)``
            or ``batch_size < 1``; in ``setup``, files under ``root`` that do not read as MUTAG
            (:func:`check_graphs`), naming the folder, the graph and the problem.
    """

    def __init__(
        self,
        name: str = "MUTAG",
        root: str = DEFAULT_ROOT,
        fold: int = 0,
        num_folds: int = 10,
        val_fraction: float = 0.1,
        seed: int = 0,
        batch_size: int | None = 32,
    ) -> None:
        super().__init__()
        if name != "MUTAG":
            raise ValueError(f"`name` must be 'MUTAG' (the dataset available offline), got {name!r}.")
        if num_folds < 2 or not 0 <= fold < num_folds:
            raise ValueError(f"`fold` must be in [0, num_folds={num_folds}) with num_folds >= 2, got {fold}.")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"`val_fraction` must be in [0, 1), got {val_fraction}.")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1 or None (one batch per split), got {batch_size}.")
        self.name, self.root = name, root
        self.fold, self.num_folds, self.val_fraction, self.seed = fold, num_folds, val_fraction, seed
        self.batch_size = batch_size
        self.num_features = 7
        self.num_classes = 2
        self.train_set: list[Data] = []
        self.val_set: list[Data] = []
        self.test_set: list[Data] = []
        self.indices: dict[str, list[int]] = {}

    def prepare_data(self) -> None:
        # Copies and processes MUTAG once (Lightning calls this on local rank 0, then a barrier): in
        # `setup`, every DDP rank processing it into the same folder would read a half-written file.
        load_mutag(self.root)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set:
            return
        dataset = load_mutag(self.root)
        where = f"{self.name} at {Path(self.root) / self.name}"
        if (dataset.num_features, dataset.num_classes) != (7, 2):
            raise ValueError(
                f"{where}: read {dataset.num_features} node features and {dataset.num_classes} classes; MUTAG has "
                f"7 and 2. The files under {Path(self.root) / self.name / 'raw'} are not MUTAG's: delete "
                f"{Path(self.root) / self.name} to copy them again."
            )
        check_graphs(list(dataset), num_classes=2, num_features=7, where=where)
        self.num_features, self.num_classes = dataset.num_features, dataset.num_classes
        labels = dataset.y.numpy()
        test_idx = stratified_folds(labels, self.num_folds, self.seed)[self.fold]
        train_idx = np.setdiff1d(np.arange(len(dataset)), test_idx)
        val_idx = np.array([], dtype=int)
        if self.val_fraction > 0:
            train_idx, val_idx = train_test_split(
                train_idx, test_size=self.val_fraction, stratify=labels[train_idx], random_state=self.seed
            )
        self.indices = {
            "train": sorted(map(int, train_idx)),
            "val": sorted(map(int, val_idx)),
            "test": sorted(map(int, test_idx)),
        }
        self.train_set = [dataset[int(i)] for i in sorted(train_idx)]
        self.val_set = [dataset[int(i)] for i in sorted(val_idx)]
        self.test_set = [dataset[int(i)] for i in sorted(test_idx)]

    def train_graphs(self) -> list[Data]:
        """The training split as a list of graphs (after ``setup``)."""
        self.setup("fit")
        return list(self.train_set)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, shuffle=False) if self.val_set else []

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def _loader(self, graphs: list[Data], shuffle: bool) -> DataLoader:
        batch_size = self.batch_size or max(1, len(graphs))
        return DataLoader(graphs, batch_size=batch_size, shuffle=shuffle)
