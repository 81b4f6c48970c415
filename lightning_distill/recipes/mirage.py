"""Mirage: model-agnostic graph distillation by mining frequent computation trees.

Gupta, Manchanda, Kodamana, Ranu, "Mirage: Model-Agnostic Graph Distillation for Graph
Classification", ICLR 2024, arXiv 2310.09486. Official code: frigategnn/Mirage.

An ``L``-layer message-passing GNN sees a graph as the multiset of its nodes' ``L``-hop
computation trees, and pools their root embeddings. Mirage keeps the trees that matter and drops
the rest; there are no gradients and no model in the loop:

1. Every node of every training graph -> its depth-``L`` computation tree -> a canonical label
   (:func:`~lightning_distill.graphs.build_tree_index`).
2. Per class ``c``: each graph is a transaction (the set of its tree labels); FP-growth finds the
   tree sets contained in at least ``theta_c`` of the class's graphs (``min_support``).
3. Class-specific selection: the tree sets mined per class; optionally (``class_specific``) those
   also frequent in another class are dropped.
4. Each kept tree set becomes one synthetic graph of class ``c``: the disjoint union of its trees,
   edges pointing from child to root, the roots flagged in ``root_mask``; its support is kept as a
   sampling weight.

Any GNN with ``L`` layers then trains on the set, pooling only the roots, and is tested on real
graphs (pooling every node). The set is saved as a :class:`~lightning_distill.graphs.GraphSet`.

Hyper-parameters -> config keys (``model.init_args.*``):

===========================================  ========================  ==========================
paper / official code                        key                       default
===========================================  ========================  ==========================
hops ``L`` of the trees (= GNN layers)       ``depth``                 2 (ours; release: per dataset)
frequency thresholds ``theta_c``             ``min_support``           0.3 (ours; release: per dataset)
drop tree sets frequent in another class     ``class_specific``        False (released C++ code)
edge labels in the trees                     ``edge_labels``           True (released code)
sample tree sets by frequency                ``sample_by_frequency``   False (released code)
largest tree set                             ``max_pattern_size``      None (released code: no limit)
GNNs trained on the set                      ``eval_*``                100 full-batch Adam steps,
                                                                       lr 0.01 (ours)
===========================================  ========================  ==========================

Neither the paper nor the release has one default for ``depth`` and ``min_support``: the release's
configs set ``n_hops`` and absolute per-class thresholds per dataset (``DD/ldDDrminetrees.py`` with
``configs/DD.py``: 1 hop, ``{0: 15, 1: 9}``; ogbg-molhiv: 3 hops, ``{0: 1800, 1: 115}``). Its GNNs
train with Adam lr 1e-3, weight decay 1e-2, batch 64 for 100 epochs (``optimization/train_and_test.py``,
``scripts/run_*.sh``); the ``eval_*`` defaults here are the library's evaluation protocol.

How it runs under Lightning: distillation needs the whole training split at once and no
optimizer, so ``Mirage`` uses manual optimization with no optimizer; ``training_step`` gathers
the training graphs (the datamodule gives a whole split per batch with ``batch_size: null``) and
distils them after the epoch's last batch (one epoch is the whole algorithm). Validation and test train
fresh copies of ``student`` (any GNN) on the distilled set and report ``val/syn_acc`` and
``test/syn_acc`` on real graphs; :meth:`Mirage.distill` is a plain method usable without a Trainer.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from torch import nn
from torch_geometric.data import Batch, Data

from lightning_distill.graphs import (
    FrequentSet,
    GraphSet,
    TreeIndex,
    build_tree_index,
    computation_tree,
    frequent_itemsets,
    graph_logits,
    train_graph_classifier,
)
from lightning_distill.graphs.visualize import log_graph_set
from lightning_distill.module import DistillationModule

__all__ = ["Mirage", "tree_set_graph"]

# Mirage has no optimizer on purpose; Lightning's notice about it is silenced from `setup("fit")` (before
# Lightning reads `configure_optimizers`) to `on_fit_start`, and only for this message.
_NO_OPTIMIZER_NOTICE = r".*`LightningModule.configure_optimizers` returned `None`.*"


def tree_set_graph(trees: Sequence[Data], label: int) -> Data:
    """The disjoint union of computation trees as one graph of class ``label``.

    Args:
        trees: trees from :func:`~lightning_distill.graphs.computation_tree` (``x``, ``edge_index``
            child -> parent, ``root_mask``, optional ``edge_attr``).
        label: the class.

    Returns:
        ``Data`` with ``x`` ``(N, F)``, ``edge_index`` ``(2, E)``, ``edge_attr`` (if the trees have
        it), ``root_mask`` ``(N,)`` and ``y`` ``(1,)``.

    Raises:
        ValueError: no trees.
    """
    if not trees:
        raise ValueError("`trees` is empty; a tree set needs at least one tree.")
    offsets = torch.tensor([0] + [t.num_nodes for t in trees]).cumsum(0)
    edge_index = torch.cat([t.edge_index + off for t, off in zip(trees, offsets)], dim=1)
    x, root_mask = torch.cat([t.x for t in trees]), torch.cat([t.root_mask for t in trees])
    graph = Data(x=x, edge_index=edge_index, root_mask=root_mask, y=torch.tensor([label]))
    if all(t.edge_attr is not None for t in trees):
        graph.edge_attr = torch.cat([t.edge_attr for t in trees])
    return graph


class Mirage(DistillationModule):
    """Mirage recipe. See the module docstring for the algorithm.

    Args:
        student: the GNN trained on the distilled set at validation and test (copied and re-initialised
            per seed); after ``test`` it holds the first seed's trained weights. Give it ``depth`` layers.
        depth: ``L``, hops of the computation trees.
        min_support: ``theta_c`` as a share of the class's training graphs, in ``(0, 1]``: one value
            for every class or one per class.
        class_specific: drop tree sets that are frequent in another class too.
        edge_labels: put edge labels (``edge_attr`` rows) into the canonical labels.
        max_pattern_size: the largest tree set mined (``None``: no limit).
        sample_by_frequency: train on tree sets drawn with probability proportional to their support.
        eval_steps: Adam steps of each GNN trained on the set.
        eval_lr: Adam learning rate of those GNNs.
        eval_weight_decay: their Adam weight decay.
        eval_batch_size: tree sets per batch (``None``: full batch, every step sees the whole set).
        val_seeds: seeds of the GNNs trained at validation and test (their mean accuracy is logged).
        save_path: where the set is saved when fit ends (default ``<log dir>/mirage_set.pt``; nothing
            is saved under ``fast_dev_run`` or without a logger unless it is given).

    Raises:
        TypeError: ``student`` is not an ``nn.Module``.
        ValueError: ``depth < 1``, a ``min_support`` outside ``(0, 1]``, ``max_pattern_size < 1``,
            ``eval_steps < 1`` or no ``val_seeds``.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ()
    requires_teacher: ClassVar[bool] = False

    def __init__(
        self,
        student: nn.Module,
        depth: int = 2,
        min_support: float | Sequence[float] = 0.3,
        class_specific: bool = False,
        edge_labels: bool = True,
        max_pattern_size: int | None = None,
        sample_by_frequency: bool = False,
        eval_steps: int = 100,
        eval_lr: float = 1e-2,
        eval_weight_decay: float = 0.0,
        eval_batch_size: int | None = None,
        val_seeds: Sequence[int] = (0,),
        save_path: str | None = None,
    ) -> None:
        super().__init__(student)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"`depth` must be an int >= 1, got {depth!r}; set `model.init_args.depth`.")
        supports = [min_support] if isinstance(min_support, (int, float)) else list(min_support)
        if not supports or any(not 0.0 < float(s) <= 1.0 for s in supports):
            raise ValueError(
                f"`min_support` must be in (0, 1] (one value or one per class), got {min_support!r}; "
                "set `model.init_args.min_support`."
            )
        if max_pattern_size is not None and max_pattern_size < 1:
            raise ValueError(f"`max_pattern_size` must be >= 1 or null, got {max_pattern_size}.")
        if eval_steps < 1 or not val_seeds:
            raise ValueError(
                f"`eval_steps` must be >= 1 and `val_seeds` non-empty, got {eval_steps}, {val_seeds}."
            )
        layers = getattr(student, "num_layers", depth)
        if layers != depth:
            rank_zero_warn(
                f"The student has {layers} message-passing layers but the trees have depth {depth}; a GNN "
                "sees exactly its computation trees only when the two agree (`model.init_args.depth`)."
            )
        self.save_hyperparameters(ignore=["student"])
        self.automatic_optimization = False
        self.depth, self.supports = depth, [float(s) for s in supports]
        self.class_specific, self.edge_labels = class_specific, edge_labels
        self.max_pattern_size, self.sample_by_frequency = max_pattern_size, sample_by_frequency
        self.eval_steps, self.eval_lr, self.eval_weight_decay = eval_steps, eval_lr, eval_weight_decay
        self.eval_batch_size, self.val_seeds, self.save_path = eval_batch_size, tuple(val_seeds), save_path
        self.graph_set: GraphSet | None = None
        self._gathered: list[Data] = []
        self._eval_models: list[nn.Module] = []

    # ---------------------------------------------------------------- the paper
    def computation_trees(self, graphs: Sequence[Data]) -> TreeIndex:
        """Step 1: every node's depth-``L`` computation tree, canonically labelled and interned."""
        return build_tree_index(graphs, self.depth, edge_labels=self.edge_labels)

    def mine(self, index: TreeIndex, labels: Sequence[int]) -> dict[int, list[FrequentSet]]:
        """Step 2: per class, the tree sets in at least ``theta_c`` of its graphs (FP-growth)."""
        classes = sorted(set(labels))
        if len(self.supports) not in (1, len(classes)):
            raise ValueError(
                f"`min_support` has {len(self.supports)} values but the data has {len(classes)} classes; "
                "give one value or one per class."
            )
        transactions = index.transactions
        return {
            c: frequent_itemsets(
                [t for t, y in zip(transactions, labels) if y == c],
                self.supports[k if len(self.supports) > 1 else 0],
                max_len=self.max_pattern_size,
            )
            for k, c in enumerate(classes)
        }

    def select(self, patterns: dict[int, list[FrequentSet]]) -> dict[int, list[FrequentSet]]:
        """Step 3: keep, per class, the tree sets no other class finds frequent (if ``class_specific``)."""
        if not self.class_specific:
            return patterns
        frequent = {c: {p.items for p in found} for c, found in patterns.items()}
        return {
            c: [p for p in found if not any(p.items in frequent[o] for o in patterns if o != c)]
            for c, found in patterns.items()
        }

    def build_graphs(
        self, graphs: Sequence[Data], index: TreeIndex, selected: dict[int, list[FrequentSet]]
    ) -> GraphSet:
        """Step 4: each tree set -> the disjoint union of its trees (rebuilt from one example node)."""
        out, weights, supports = [], [], []
        for c, found in selected.items():
            for pattern in found:
                trees = []
                for tree_id in sorted(pattern.items):
                    g, node = index.examples[tree_id]
                    trees.append(computation_tree(graphs[g], node, self.depth))
                out.append(tree_set_graph(trees, c))
                weights.append(float(pattern.count))
                supports.append([sorted(pattern.items), pattern.count])
        metadata = {
            "method": "mirage",
            "depth": self.depth,
            "min_support": self.supports,
            "class_specific": self.class_specific,
            "edge_labels": self.edge_labels,
            "tree_sets": supports,
            "num_trees": len(index.labels),
        }
        return GraphSet(out, weights, metadata)

    @torch.no_grad()
    def distill(self, graphs: Sequence[Data]) -> GraphSet:
        """Steps 1-4 on a list of training graphs; returns the distilled set (also kept in ``graph_set``).

        Raises:
            ValueError: no graphs, or no tree set survives (lower ``min_support``).
        """
        if len(graphs) == 0:
            raise ValueError("`graphs` is empty: Mirage needs the training graphs.")
        start = time.perf_counter()
        labels = [int(g.y.reshape(-1)[0]) for g in graphs]
        index = self.computation_trees(graphs)
        selected = self.select(self.mine(index, labels))
        empty = [c for c, found in selected.items() if not found]
        if len(empty) == len(selected):
            raise ValueError(
                f"No tree set is frequent at `min_support`={self.supports}; lower `model.init_args.min_support`."
            )
        if empty:
            rank_zero_warn(f"Classes {empty} have no selected tree set; lower their `min_support`.")
        self.graph_set = self.build_graphs(graphs, index, selected)
        self.graph_set.metadata["seconds"] = time.perf_counter() - start
        self.graph_set.metadata["source_graphs"] = len(graphs)
        return self.graph_set

    # ------------------------------------------------------------- Lightning
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":
            warnings.filterwarnings("ignore", message=_NO_OPTIMIZER_NOTICE)
            self._no_optimizer_filter = warnings.filters[0]

    def on_fit_start(self) -> None:
        notice = getattr(self, "_no_optimizer_filter", None)
        if notice is not None and notice in warnings.filters:
            warnings.filters.remove(notice)
        self._no_optimizer_filter = None
        super().on_fit_start()

    def configure_optimizers(self) -> None:
        return None

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        """Gather the training graphs; distil them after the epoch's last batch (before validation)."""
        self._gathered.extend(batch.to_data_list())
        if batch_idx + 1 < self.trainer.num_training_batches:
            return
        graph_set = self.distill(self._gathered)
        self._gathered = []
        sizes = graph_set.storage()
        self.log_diagnostics(
            {
                "graphs": float(sizes["graphs"]),
                "nodes": float(sizes["nodes"]),
                "seconds": graph_set.metadata["seconds"],
            }
        )

    def on_validation_epoch_start(self) -> None:
        skip = self.trainer.sanity_checking or self.graph_set is None
        self._eval_models = [] if skip else self._retrain()

    def on_test_epoch_start(self) -> None:
        if self.graph_set is None:  # `test` without fit or checkpoint: distil the datamodule's training split
            datamodule = self.trainer.datamodule
            datamodule.setup("fit")
            self.distill(datamodule.train_graphs())
        self._eval_models = self._retrain()
        self.student.load_state_dict(self._eval_models[0].state_dict())

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._log_accuracy(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._log_accuracy(batch, "test")

    def predict_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return graph_logits(self.student, batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_models = []
        if not self.trainer.sanity_checking and self.graph_set is not None:  # W&B: the mined set as a picture
            log_graph_set(self.logger, self.graph_set.graphs, self.global_step)

    def on_test_epoch_end(self) -> None:
        self._eval_models = []

    def _retrain(self) -> list[nn.Module]:
        """Fresh copies of ``student`` trained on the set, one per seed."""
        steps = 2 if self.trainer.fast_dev_run else self.eval_steps
        weights = self.graph_set.weights if self.sample_by_frequency else None
        return [
            train_graph_classifier(
                self.graph_set.graphs,
                self.student,
                steps=steps,
                lr=self.eval_lr,
                weight_decay=self.eval_weight_decay,
                batch_size=self.eval_batch_size,
                seed=seed,
                weights=weights,
            ).to(self.device)
            for seed in self.val_seeds
        ]

    def _log_accuracy(self, batch: Batch, stage: str) -> None:
        if not self._eval_models:
            return
        y = batch.y.reshape(-1)
        acc = sum((graph_logits(m, batch).argmax(-1) == y).float().mean() for m in self._eval_models)
        self.log(
            f"{stage}/syn_acc",
            acc / len(self._eval_models),
            batch_size=y.numel(),
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,
        )

    # ------------------------------------------------------------- artifact
    def on_train_end(self) -> None:
        if self.graph_set is None:
            return
        if self.save_path is None and (self.trainer.fast_dev_run or self.trainer.logger is None):
            return
        self._save_artifact()

    @rank_zero_only
    def _save_artifact(self) -> None:
        path = Path(self.save_path) if self.save_path else Path(self.trainer.log_dir) / "mirage_set.pt"
        self.graph_set.save(path)
        rank_zero_info(f"Saved the Mirage set ({self.graph_set.storage()}) to {path}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.graph_set is not None:
            graphs = [
                {k: v for k, v in g.to_dict().items() if torch.is_tensor(v)} for g in self.graph_set.graphs
            ]
            checkpoint["mirage_set"] = {
                "graphs": graphs,
                "weights": self.graph_set.weights,
                "metadata": self.graph_set.metadata,
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("mirage_set")
        if state is not None:
            self.graph_set = GraphSet(
                [Data(**g) for g in state["graphs"]], state["weights"], state["metadata"]
            )
