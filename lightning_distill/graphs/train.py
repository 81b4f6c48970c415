"""Training a GNN on a list of graphs with Lightning, and testing it.

:func:`train_graph_classifier` trains a fresh copy of a model on any list of graphs (real graphs,
a random subset, a distilled set) for a fixed number of optimizer steps with Adam and returns it;
:func:`graph_accuracy` tests it. A distilled tree set carries ``root_mask`` so that only the roots
are pooled; real graphs have none and every node is pooled.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader as TorchDataLoader
from torch.utils.data import WeightedRandomSampler
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader

from lightning_distill.utils.quiet import quiet_lightning

__all__ = ["GraphClassifierModule", "graph_accuracy", "graph_logits", "train_graph_classifier"]


def graph_logits(model: nn.Module, batch: Batch) -> Tensor:
    """``model(x, edge_index, batch, root_mask)`` on a torch_geometric batch: logits ``(B, K)``."""
    root_mask = batch.root_mask if "root_mask" in batch else None
    return model(batch.x, batch.edge_index, batch.batch, root_mask)


class GraphClassifierModule(L.LightningModule):
    """Cross-entropy training of a graph classifier with Adam; logs ``train/loss`` and ``<stage>/acc``.

    Args:
        model: a classifier called as ``model(x, edge_index, batch, root_mask)`` (e.g.
            :class:`~lightning_distill.graphs.GraphClassifier`).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.

    Raises:
        ValueError: ``lr <= 0`` or ``weight_decay < 0``.
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        super().__init__()
        if not lr > 0 or weight_decay < 0:
            raise ValueError(f"`lr` must be > 0 and `weight_decay` >= 0, got {lr} and {weight_decay}.")
        self.model, self.lr, self.weight_decay = model, lr, weight_decay

    def forward(self, batch: Batch) -> Tensor:
        return graph_logits(self.model, batch)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        losses = F.cross_entropy(self(batch), batch.y.reshape(-1), reduction="none")  # (B,)
        if "sample_weight" in batch:  # weighted mean: the expectation of sampling by weight
            weight = batch.sample_weight.reshape(-1).to(losses.dtype)
            loss = (losses * weight).sum() / weight.sum()
        else:
            loss = losses.mean()
        self.log("train/loss", loss, batch_size=batch.num_graphs)
        return loss

    def _accuracy(self, batch: Batch, stage: str) -> None:
        correct = (self(batch).argmax(-1) == batch.y.reshape(-1)).float().mean()
        self.log(f"{stage}/acc", correct, batch_size=batch.num_graphs, on_epoch=True)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._accuracy(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._accuracy(batch, "test")

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def train_graph_classifier(
    graphs: Sequence[Data],
    model: nn.Module,
    *,
    steps: int,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int | None = None,
    seed: int = 0,
    weights: Sequence[float] | None = None,
    accelerator: str = "cpu",
) -> nn.Module:
    """Train a fresh copy of ``model`` on ``graphs`` for ``steps`` Adam steps; return it (CPU, eval mode).

    The copy is re-initialised (``reset_parameters``) under ``seed``. With ``batch_size=None`` every
    step sees all graphs (collated once; ``weights`` then weigh the per-graph losses); otherwise
    batches are shuffled with a generator seeded by ``seed``, or drawn with probability
    proportional to ``weights``, with replacement. The global random state is restored afterwards, and gradients are enabled
    whatever the caller's grad mode, so a recipe may call this from its validation hooks.

    Args:
        graphs: training graphs (with ``y`` and, for tree sets, ``root_mask``).
        model: the architecture; it is copied, not trained in place.
        steps: optimizer steps.
        lr, weight_decay: Adam settings.
        batch_size: graphs per batch (capped at ``len(graphs)``); ``None``: full batch.
        seed: seed of the initialisation, the order and dropout.
        weights: optional sampling weight per graph.
        accelerator: Lightning accelerator.

    Raises:
        ValueError: no graphs, ``steps < 1``, ``batch_size < 1`` or weights of the wrong length.
    """
    if len(graphs) == 0:
        raise ValueError("`graphs` is empty; there is nothing to train on.")
    if steps < 1 or (batch_size is not None and batch_size < 1):
        raise ValueError(f"`steps` must be >= 1 and `batch_size` >= 1 or None, got {steps} and {batch_size}.")
    if weights is not None and len(weights) != len(graphs):
        raise ValueError(f"`weights` needs one value per graph ({len(graphs)}), got {len(weights)}.")
    with (
        torch.inference_mode(False),
        torch.enable_grad(),
        torch.random.fork_rng(devices=[]),
        quiet_lightning(),
    ):
        # Built here: graphs made under inference mode (a recipe's test hooks) are cloned into normal tensors.
        loader = _loader(graphs, batch_size, weights, seed)
        torch.manual_seed(seed)
        fresh = copy.deepcopy(model).cpu()
        if hasattr(fresh, "reset_parameters"):
            fresh.reset_parameters()
        fresh.train()
        trainer = L.Trainer(
            max_steps=steps,
            max_epochs=-1,
            accelerator=accelerator,
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            log_every_n_steps=max(1, steps),
        )
        trainer.fit(GraphClassifierModule(fresh, lr=lr, weight_decay=weight_decay), train_dataloaders=loader)
    return fresh.cpu().eval()


@torch.no_grad()
def graph_accuracy(model: nn.Module, graphs: Sequence[Data], batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on ``graphs``.

    Raises:
        ValueError: no graphs.
    """
    if len(graphs) == 0:
        raise ValueError("`graphs` is empty; accuracy is undefined.")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = 0
    for batch in DataLoader(list(graphs), batch_size=batch_size):
        batch = batch.to(device)
        correct += int((graph_logits(model, batch).argmax(-1) == batch.y.reshape(-1)).sum())
    model.train(was_training)
    return correct / len(graphs)


def _loader(
    graphs: Sequence[Data], batch_size: int | None, weights: Sequence[float] | None, seed: int
) -> Any:
    generator = torch.Generator().manual_seed(seed)
    graphs = [g.clone() for g in graphs]
    if batch_size is None:
        if weights is not None:
            for g, w in zip(graphs, weights):
                g.sample_weight = torch.tensor([float(w)])
        loader = TorchDataLoader([Batch.from_data_list(graphs)], batch_size=None, collate_fn=_same)
    elif weights is None:
        loader = DataLoader(
            list(graphs), batch_size=min(batch_size, len(graphs)), shuffle=True, generator=generator
        )
    else:
        sampler = WeightedRandomSampler(list(weights), len(graphs), replacement=True, generator=generator)
        loader = DataLoader(list(graphs), batch_size=min(batch_size, len(graphs)), sampler=sampler)
    return loader


def _same(batch: Batch) -> Batch:
    return batch
