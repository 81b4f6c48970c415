"""Linear-probe and k-NN accuracy of a frozen backbone: one part the recipes and benchmarks share.

:class:`FeatureProbe` fits both probes on features of labelled training images and scores new
features; :func:`probe_accuracy` does the whole round trip (extract, fit, score) for a backbone
and a datamodule; :class:`BackboneProbes` is what a recipe's validation and test steps use.
Features come from :func:`~.encoding.pooled_features` (default: the final cls token on the
unmasked image, MAE's linear-probe feature), or from any ``features(x) -> (B, D)`` callable.

Which feature: on MNIST-5k at 16 px (16 tokens) a 15-epoch MAE teacher against the same
architecture at random init scored, linear probe on validation: cls 70.7% vs 54.7%, mean of
patch tokens 69% vs 65%, all tokens concatenated 89.6% vs 89.2% (saturated: position alone
carries digit identity). The cls token is the one that shows what pretraining adds.

* Linear probe: multinomial logistic regression (scikit-learn, L-BFGS) on standardised
  features, as MAE's linear probe standardises them with a BatchNorm without affine.
* k-NN: cosine-similarity vote of the ``k`` nearest training features weighted by
  ``exp(sim / temperature)`` (the weighted k-NN of InstDisc/DINO, k = 20, T = 0.07), on the same
  standardised features (raw ViT features share a large common direction that swamps cosines).

Accuracies are computed with torchmetrics (``MulticlassAccuracy``, micro average).

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(60, 4, generator=g); y = (x[:, 0] > 0).long()
    >>> probe = FeatureProbe(k=5).fit(x, y)
    >>> probe.score(x, y)["acc"] > 0.9
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_distill.representation.encoding import pooled_features
from lightning_distill.utils.checks import check_int, check_positive

__all__ = ["BackboneProbes", "FeatureProbe", "extract_features", "labelled_training_images", "probe_accuracy"]


def _accuracy(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    from torchmetrics.functional.classification import multiclass_accuracy

    return multiclass_accuracy(pred, target, num_classes=max(num_classes, 2), average="micro")


class FeatureProbe:
    """A linear probe and a weighted k-NN classifier fitted on frozen features.

    Args:
        k: neighbours of the k-NN vote.
        temperature: temperature of the k-NN vote weights ``exp(cos / T)``.
        max_iter: L-BFGS iterations of the logistic regression.
        l2: inverse regularisation strength ``C`` of the logistic regression.

    Raises:
        ValueError: ``k < 1`` or a non-positive ``temperature`` / ``l2``.
    """

    def __init__(self, k: int = 20, temperature: float = 0.07, max_iter: int = 500, l2: float = 1.0) -> None:
        check_int("k", k, low=1)
        check_int("max_iter", max_iter, low=1)
        self.k = k
        self.temperature = check_positive("temperature", temperature)
        self.max_iter = max_iter
        self.l2 = check_positive("l2", l2)
        self._fitted: dict[str, Any] | None = None

    def fit(self, features: Tensor, labels: Tensor) -> FeatureProbe:
        """Fit both probes on ``features`` ``(N, D)`` and ``labels`` ``(N,)`` (labels < 0 are dropped).

        Raises:
            ValueError: mismatched lengths or fewer than two classes among the labels.
        """
        from sklearn.linear_model import LogisticRegression

        features, labels = features.detach().float().cpu(), labels.detach().long().cpu()
        if features.ndim != 2 or labels.shape != features.shape[:1]:
            raise ValueError(
                f"`features` must be (N, D) and `labels` (N,), got {tuple(features.shape)} and {tuple(labels.shape)}."
            )
        keep = labels >= 0
        features, labels = features[keep], labels[keep]
        if labels.unique().numel() < 2:
            raise ValueError("the probe needs labelled training images of at least two classes.")
        mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
        z = ((features - mean) / std).numpy().astype(np.float64)
        linear = LogisticRegression(C=self.l2, max_iter=self.max_iter)
        linear.fit(z, labels.numpy())
        bank = nn.functional.normalize((features - mean) / std, dim=1)
        self._fitted = {
            "mean": mean,
            "std": std,
            "linear": linear,
            "bank": bank,
            "bank_labels": labels,
            "num_classes": int(labels.max()) + 1,
        }
        return self

    @property
    def num_classes(self) -> int:
        return 0 if self._fitted is None else self._fitted["num_classes"]

    def predict(self, features: Tensor) -> dict[str, Tensor]:
        """``{"linear": (N,), "knn": (N,)}`` predicted classes.

        Raises:
            RuntimeError: called before :meth:`fit`.
        """
        if self._fitted is None:
            raise RuntimeError("FeatureProbe.predict called before fit().")
        f = self._fitted
        features = features.detach().float().cpu()
        z = ((features - f["mean"]) / f["std"]).numpy().astype(np.float64)
        linear = torch.as_tensor(f["linear"].predict(z), dtype=torch.long)
        sims = nn.functional.normalize(torch.as_tensor(z, dtype=torch.float32), dim=1) @ f["bank"].T  # (N, M)
        k = min(self.k, sims.shape[1])
        top, idx = sims.topk(k, dim=1)
        votes = torch.zeros(features.shape[0], f["num_classes"])
        votes.scatter_add_(1, f["bank_labels"][idx], (top / self.temperature).exp())
        return {"linear": linear, "knn": votes.argmax(dim=1)}

    def score(self, features: Tensor, labels: Tensor) -> dict[str, float]:
        """``{"acc": linear-probe accuracy, "knn_acc": k-NN accuracy}`` on labelled ``features`` (labels >= 0)."""
        labels = labels.detach().long().cpu()
        keep = labels >= 0
        pred = self.predict(features[keep.to(features.device)])
        n = max(self.num_classes, int(labels.max()) + 1 if keep.any() else 0)
        return {
            "acc": float(_accuracy(pred["linear"], labels[keep], n)),
            "knn_acc": float(_accuracy(pred["knn"], labels[keep], n)),
        }


FeatureFn = Callable[[Tensor], Tensor]


@torch.no_grad()
def extract_features(
    features: FeatureFn, batches: Iterable[Any], device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """Run ``features`` over ``(x, y, ...)`` batches; return ``(features (N, D), labels (N,))`` on the CPU."""
    feats, labels = [], []
    for batch in batches:
        x, y = batch[0], batch[1]
        feats.append(features(x.to(device)).float().cpu())
        labels.append(y.cpu())
    return torch.cat(feats), torch.cat(labels)


def labelled_training_images(datamodule: Any, max_images: int | None = None) -> tuple[Tensor, Tensor]:
    """Up to ``max_images`` labelled training images ``(N, C, H, W)`` and labels of a datamodule.

    Uses ``datamodule.train_images()`` when it has one (the in-memory datamodules here: the images
    without augmentation), else iterates its ``train_dataloader()``. Unlabelled images (label < 0)
    are left out; above ``max_images``, a fixed random subset (seed 0) is kept.
    """
    if hasattr(datamodule, "train_images"):
        x, y = datamodule.train_images()
    else:
        xs, ys = [], []
        for batch in datamodule.train_dataloader():
            xs.append(batch[0])
            ys.append(batch[1])
            if max_images is not None and sum(len(v) for v in ys) >= max_images:
                break
        x, y = torch.cat(xs), torch.cat(ys)
    keep = y >= 0
    x, y = x[keep], y[keep]
    if max_images is not None and len(y) > max_images:
        # a fixed random subset: the stored order may be sorted by class
        pick = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:max_images].sort().values
        x, y = x[pick], y[pick]
    return x, y


def probe_accuracy(
    backbone: nn.Module | FeatureFn,
    datamodule: Any,
    *,
    split: str = "test",
    max_train_images: int | None = 5000,
    batch_size: int = 256,
    probe: FeatureProbe | None = None,
    pool: str = "cls",
) -> dict[str, float]:
    """Linear-probe and k-NN accuracy of a frozen backbone on ``datamodule``'s ``split`` (``"val"``/``"test"``).

    ``backbone`` is a ViT / ViT-MAE model (features by :func:`~.encoding.pooled_features`) or a
    callable ``x -> (B, D)``. The probe is fitted on the labelled training images.
    """
    if isinstance(backbone, nn.Module):
        model = backbone
        was_training = model.training
        model.eval()

        def features(x: Tensor) -> Tensor:
            return pooled_features(model, x, pool=pool)  # type: ignore[arg-type]
    else:
        model, features = None, backbone
    try:
        device = next(model.parameters()).device if model is not None else torch.device("cpu")
        datamodule.setup("fit")
        x, y = labelled_training_images(datamodule, max_train_images)
        chunks = [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)]
        train_f, train_y = extract_features(features, chunks, device)
        probe = (probe or FeatureProbe()).fit(train_f, train_y)
        loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
        eval_f, eval_y = extract_features(features, loader, device)
        return probe.score(eval_f, eval_y)
    finally:
        if model is not None and was_training:
            model.train()


class BackboneProbes:
    """Probes of several named backbones, refitted at the start of each evaluation epoch (for recipes).

    A recipe calls :meth:`refit` in ``on_validation_epoch_start`` / ``on_test_epoch_start`` with the
    backbones to score (the student, and the teacher once) and the trainer's datamodule, then
    :meth:`evaluate` on each evaluation batch; the metrics are ``acc`` (linear probe) and
    ``knn_acc``, so the base logs ``val/acc``, ``val/knn_acc`` and ``val/teacher_acc``.

    Args:
        max_train_images: labelled training images the probes are fitted on (a fixed random subset).
        pool: ``"cls"`` (default), ``"mean"`` of patch tokens or ``"tokens"`` (all, concatenated).
        k: neighbours of the k-NN probe.
    """

    def __init__(self, max_train_images: int = 5000, pool: str = "cls", k: int = 20) -> None:
        check_int("max_train_images", max_train_images, low=2)
        if pool not in ("mean", "cls"):
            raise ValueError(
                f"`pool` must be 'mean' or 'cls', got {pool!r}; set `model.init_args.probe_pool`."
            )
        self.max_train_images = max_train_images
        self.pool = pool
        self.k = k
        self._probes: dict[str, FeatureProbe] = {}

    def features(self, model: nn.Module, x: Tensor) -> Tensor:
        """Pooled features ``(B, D)`` of ``model`` on images ``x`` (eval mode for the call, no grad)."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return pooled_features(model, x, pool=self.pool)  # type: ignore[arg-type]
        finally:
            model.train(was_training)

    def refit(self, models: dict[str, nn.Module], datamodule: Any, batch_size: int = 256) -> None:
        """Fit one probe per named model on the labelled training images of ``datamodule``.

        Raises:
            RuntimeError: no datamodule (the probes need labelled training images).
        """
        if datamodule is None:
            raise RuntimeError(
                "the linear/k-NN probes need the training images: run with a datamodule (`data:` in the config)."
            )
        x, y = labelled_training_images(datamodule, self.max_train_images)
        for name, model in models.items():
            device = next(iter(model.parameters()), x).device
            chunks = [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)]
            feats, labels = extract_features(lambda v, m=model: self.features(m, v), chunks, device)
            self._probes[name] = FeatureProbe(k=self.k).fit(feats, labels)

    def evaluate(self, name: str, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """``{"acc", "knn_acc"}`` of the named model's probe on one batch, as tensors on ``x``'s device."""
        if name not in self._probes:
            raise RuntimeError(
                f"no probe fitted for {name!r}; call `refit` at the start of the evaluation epoch."
            )
        scores = self._probes[name].score(self.features(model, x), y)
        return {k: torch.tensor(v, device=x.device) for k, v in scores.items()}
