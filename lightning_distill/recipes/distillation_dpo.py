"""Distillation-DPO: one-step LiDAR scene completion by score distillation with preference pairs.

"Diffusion Distillation With Direct Preference Optimization For Efficient 3D LiDAR Scene
Completion" (Zhao, Zhang, Yang, Li, Wu, Xu, Wei, Gu, Sun; arXiv 2504.11447). Official code:
happyw1nd/DistillationDPO (``trains/DistillationDPO.py``), on a LiDiff teacher.

Algorithm (one iteration; the student updates on every ``generator_update_every``-th one):

1. Pairs: the one-step student completes each scan from ``x_T = repeat(scan, k) + σ_T ε`` and from
   the same start with ``1.1 ε``; the completion with the lower Chamfer distance to the ground
   truth is the winner (:class:`~lightning_distill.callbacks.PreferencePairs`, scaled noise).
2. Auxiliary turn: the winner model φ_w and the loser model φ_l (both start as copies of the
   teacher) learn to denoise the detached winners / losers, ε-MSE at ``t ~ U{0, …, T−1}``.
3. Student turn: regenerate the pair with gradient, noise both at one shared ``t`` and ``ε``, and
   descend ``mean(sg(ε_T − ε_φw)·x̂_w) − mean(sg(ε_T − ε_φl)·x̂_l)``: score distillation toward
   the teacher on the winners, away from it on the losers. The released loss multiplies by
   ``x_t − x_0`` (the added noise, independent of the student), so its gradient is zero; this is
   the intended objective (README).

``preference=False`` is the baseline: plain score distillation on the same samples with one
auxiliary (fake-score) model fitted to all of them (``aux_fake``, ``sd`` terms).

===============================  ===========================================  ======================
paper / official code            config key (``model.init_args``)             default (official)
===============================  ===========================================  ======================
noises ε and 1.1 ε               ``noise_scales``                             (1.0, 1.1)
points per scan point (x10)      ``duplication``                              10
``s_steps`` (training)           one step at ``T − 1``                        1
``s_steps_val``                  ``student_steps``                            8
LiDiff's 50-step sampler         ``teacher_steps``                            50
``gradient_clip_val``            ``max_grad_norm``                            0.05
SGD lr 1e-5 (both)               ``optimizer``, ``aux_optimizer``             SGD(lr=1e-5)
===============================  ===========================================  ======================
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.callbacks.preference_pairs import ChamferScorer, Pairs, PreferencePairs
from lightning_distill.lidar_generation.metrics import completion_metrics
from lightning_distill.lidar_generation.point_diffusion import PointDiffusion
from lightning_distill.losses.lidar_generation import (
    noise_prediction_loss,
    preference_score_distillation_loss,
    score_distillation_loss,
)
from lightning_distill.module import DistillationModule
from lightning_distill.utils.checks import check_option

__all__ = ["DistillationDPO"]


def _official_sgd(params: Any) -> torch.optim.Optimizer:
    """The official optimizer of both turns: SGD, lr 1e-5."""
    return torch.optim.SGD(params, lr=1e-5)


class DistillationDPO(DistillationModule):
    """Distillation-DPO (manual optimization: an auxiliary turn and a student turn). See the module docstring.

    Args:
        student: the one-step generator, a point denoiser ``(x_t, t, scan) -> ε̂`` (e.g.
            :class:`~lightning_distill.lidar_generation.point_diffusion.PointDenoiser`).
        teacher: the trained point diffusion model (same call), e.g. from
            :func:`~lightning_distill.lidar_generation.point_diffusion.trained_point_diffusion`.
        diffusion: the local point diffusion (schedule, start cloud, sampling); ``None``: LiDiff's.
        student_init: ``"teacher"`` copies the teacher's weights into the student (the paper);
            ``"as_given"`` keeps the student's.
        preference: ``True``: Distillation-DPO; ``False``: plain score distillation (the baseline).
        duplication: ``k``, completed points per scan point (LiDiff and the paper: 10).
        noise_scales: the scales of the pair's noises (paper: ε and 1.1 ε).
        student_steps: DDIM steps of the student at evaluation (official validation: 8; the paper's
            one-step claim: 1).
        teacher_steps: DDIM steps of the teacher at evaluation (LiDiff: 50).
        generator_update_every: the student updates on every k-th iteration, the auxiliaries on every one.
        max_grad_norm: gradient clipping of each turn (official: 0.05); ``None``: off.
        eval_voxel_sizes: resolutions of the voxel IoU / precision / recall (paper: 0.5, 0.2, 0.1 m).
        eval_bev_extent: half-width of the BEV histogram of the JSD, metres (LiDiff: 50).
        eval_bev_bins: cells per side of that histogram (LiDiff: 100, 1 m cells).
        noise_seed: seed of the training noise, timesteps and pairs, and of the evaluation noise.
        loss_weights: weights of ``aux_winner``, ``aux_loser``, ``dpo`` (or ``aux_fake``, ``sd``).
        optimizer: optimizer of the student (official SGD lr 1e-5).
        aux_optimizer: optimizer of the auxiliary models (official SGD lr 1e-5).
        lr_scheduler: optional scheduler for each optimizer, stepped on each of its updates.

    Raises:
        ValueError: an option out of range (the message names the config key).
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("aux_winner", "aux_loser", "dpo", "aux_fake", "sd")
    default_loss_weights: ClassVar[dict[str, float]] = {}

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        diffusion: PointDiffusion | None = None,
        student_init: str = "teacher",
        preference: bool = True,
        duplication: int = 10,
        noise_scales: Sequence[float] = (1.0, 1.1),
        student_steps: int = 8,
        teacher_steps: int = 50,
        generator_update_every: int = 1,
        max_grad_norm: float | None = 0.05,
        eval_voxel_sizes: Sequence[float] = (0.5, 0.2, 0.1),
        eval_bev_extent: float = 50.0,
        eval_bev_bins: int = 100,
        noise_seed: int = 0,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = _official_sgd,
        aux_optimizer: OptimizerCallable | None = _official_sgd,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        check_option(
            student_init in ("teacher", "as_given"), "student_init", student_init, "'teacher' or 'as_given'"
        )
        for key, value in (
            ("duplication", duplication),
            ("student_steps", student_steps),
            ("teacher_steps", teacher_steps),
            ("generator_update_every", generator_update_every),
        ):
            check_option(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                key,
                value,
                "an int >= 1",
            )
        scales = tuple(float(s) for s in noise_scales)
        check_option(
            len(scales) == 2 and scales[0] != scales[1], "noise_scales", noise_scales, "two distinct scales"
        )
        check_option(
            max_grad_norm is None or max_grad_norm > 0, "max_grad_norm", max_grad_norm, "> 0 or None"
        )
        check_option(
            len(eval_voxel_sizes) > 0 and min(eval_voxel_sizes) > 0,
            "eval_voxel_sizes",
            eval_voxel_sizes,
            "positive sizes",
        )
        super().__init__(
            student=student,
            teacher=teacher,
            loss_weights=loss_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )
        self.save_hyperparameters(
            ignore=["student", "teacher", "diffusion", "optimizer", "aux_optimizer", "lr_scheduler"]
        )
        self.automatic_optimization = False
        if student_init == "teacher":
            self.student.load_state_dict(self.teacher.state_dict())
        self.diffusion = PointDiffusion() if diffusion is None else diffusion
        # The auxiliary diffusion models start from the teacher (trainable copies).
        self.aux_winner = copy.deepcopy(self.teacher).requires_grad_(True).train()
        self.aux_loser = copy.deepcopy(self.teacher).requires_grad_(True).train() if preference else None
        self.preference = preference
        self.duplication = duplication
        self.student_steps, self.teacher_steps = student_steps, teacher_steps
        self.generator_update_every = generator_update_every
        self.max_grad_norm = max_grad_norm
        self.eval_voxel_sizes = tuple(float(r) for r in eval_voxel_sizes)
        self.eval_bev_extent = float(eval_bev_extent)
        self.eval_bev_bins = int(eval_bev_bins)
        self.noise_seed = noise_seed
        self.aux_optimizer = aux_optimizer
        self.pairs = PreferencePairs(
            ChamferScorer(reference_key="target", mask_key="target_mask", squared=False),
            noise="scaled",
            scales=scales,
            seed=noise_seed,
        )
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ the paper's steps
    def complete(self, model: nn.Module, scan: Tensor, noise: Tensor, num_steps: int = 1) -> Tensor:
        """Completed points ``(B, k * S, 3)`` from ``noise``: one step with the graph, or DDIM without."""
        if num_steps == 1:
            return self.diffusion.one_step(model, scan, noise, self.duplication)
        return self.diffusion.sample(model, scan, noise, self.duplication, num_steps)

    def draw_pairs(self, batch: dict[str, Tensor]) -> Pairs:
        """Step 1: the student's completions from ``ε`` and ``1.1 ε``, ordered by Chamfer distance."""
        scan = batch["scan"]
        return self.pairs.draw(
            lambda cond, noise: self.complete(self.student, cond["scan"], noise),
            batch,
            noise_shape=(self.duplication * scan.shape[1], 3),
            step=int(self.iteration),
        )

    def aux_loss(self, model: nn.Module, x0: Tensor, scan: Tensor, rng: torch.Generator) -> Tensor:
        """Step 2: ε-MSE of an auxiliary model on noised student samples, ``x_t = x̂_0 + σ_t ε``."""
        noise = torch.randn(x0.shape, generator=rng, device=rng.device).to(x0)
        t = torch.randint(
            self.diffusion.num_train_timesteps, (x0.shape[0],), generator=rng, device=rng.device
        ).to(x0.device)
        return noise_prediction_loss(model(self.diffusion.add_noise(x0.detach(), noise, t), t, scan), noise)

    def noise_predictions(
        self, model: nn.Module, x0: Tensor, scan: Tensor, noise: Tensor, t: Tensor
    ) -> Tensor:
        """ε̂ of a frozen-for-this-turn model on ``x̂_0 + σ_t ε`` (no gradient; BatchNorm in eval mode)."""
        with torch.no_grad(), _eval_mode(model):
            return model(self.diffusion.add_noise(x0.detach(), noise, t), t, scan)

    def student_loss(
        self, x0_w: Tensor, x0_l: Tensor, scan: Tensor, rng: torch.Generator
    ) -> dict[str, Tensor]:
        """Step 3: the preference-weighted score distillation (or plain score distillation)."""
        noise = torch.randn(x0_w.shape, generator=rng, device=rng.device).to(x0_w)
        t = torch.randint(
            self.diffusion.num_train_timesteps, (x0_w.shape[0],), generator=rng, device=rng.device
        ).to(x0_w.device)
        both_x0, both_scan = torch.cat([x0_w, x0_l]), torch.cat([scan, scan])
        both_noise, both_t = torch.cat([noise, noise]), torch.cat([t, t])
        teacher_eps = self.noise_predictions(self.teacher, both_x0, both_scan, both_noise, both_t).chunk(2)
        if not self.preference:
            fake_eps = self.noise_predictions(self.aux_winner, both_x0, both_scan, both_noise, both_t)
            return {"sd": score_distillation_loss(both_x0, torch.cat(teacher_eps), fake_eps)}
        aux_w = self.noise_predictions(self.aux_winner, x0_w, scan, noise, t)
        aux_l = self.noise_predictions(self.aux_loser, x0_l, scan, noise, t)
        return {
            "dpo": preference_score_distillation_loss(
                x0_w, x0_l, teacher_eps[0], aux_w, teacher_eps[1], aux_l
            )
        }

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        opt_student, opt_aux = self.optimizers()
        rng = self._generator("train")
        # 1. Pairs from the one-step student (no gradient), winner = lower Chamfer distance.
        pairs = self.draw_pairs(batch)
        self.log_diagnostics(
            {
                "cd_winner": pairs.winner_score.mean(),
                "cd_loser": pairs.loser_score.mean(),
                "kept_pairs": float(len(pairs)),
            }
        )
        if pairs.empty:
            self.iteration += 1
            return
        scan = pairs.gather(batch)["scan"]
        # 2. Auxiliary turn: denoising on the detached winners / losers (or on all samples).
        if self.preference:
            terms = {
                "aux_winner": self.aux_loss(self.aux_winner, pairs.winner, scan, rng),
                "aux_loser": self.aux_loss(self.aux_loser, pairs.loser, scan, rng),
            }
        else:
            samples = torch.cat([pairs.winner, pairs.loser])
            terms = {"aux_fake": self.aux_loss(self.aux_winner, samples, torch.cat([scan, scan]), rng)}
        self.update(opt_aux, terms, turn="aux", max_grad_norm=self.max_grad_norm)
        # 3. Student turn: the same pair regenerated with gradient (one forward of 2P).
        if self.is_update_step(int(self.iteration), self.generator_update_every):
            noise = torch.cat([pairs.winner_noise, pairs.loser_noise])
            x0_w, x0_l = self.complete(self.student, torch.cat([scan, scan]), noise).chunk(2)
            self.update(
                opt_student,
                self.student_loss(x0_w, x0_l, scan, rng),
                turn="generator",
                max_grad_norm=self.max_grad_norm,
            )
        self.iteration += 1

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Completion metrics of ``model`` (the student at ``student_steps``, the teacher at ``teacher_steps``)."""
        scan = batch["scan"]
        rng = self._generator("eval")
        noise = torch.randn(
            (scan.shape[0], self.duplication * scan.shape[1], 3), generator=rng, device=rng.device
        )
        steps = self.teacher_steps if model is self.teacher else self.student_steps
        with torch.no_grad():
            pred = self.complete(model, scan, noise.to(scan), steps)
        values = completion_metrics(
            pred,
            batch["target"],
            target_mask=batch.get("target_mask"),
            voxel_sizes=self.eval_voxel_sizes,
            bev_extent=self.eval_bev_extent,
            bev_bins=self.eval_bev_bins,
        )
        return {k: v.mean() for k, v in values.items()}

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Completed points ``(B, k * S, 3)`` of the student at ``student_steps``."""
        scan = batch["scan"]
        rng = self._generator("eval")
        noise = torch.randn(
            (scan.shape[0], self.duplication * scan.shape[1], 3), generator=rng, device=rng.device
        )
        with torch.no_grad():
            return self.complete(self.student, scan, noise.to(scan), self.student_steps)

    # ------------------------------------------------------------------ optimizers, callbacks, helpers
    def aux_parameters(self) -> list[nn.Parameter]:
        """The auxiliary models' parameters (the second optimizer)."""
        models = [self.aux_winner] + ([self.aux_loser] if self.aux_loser is not None else [])
        return [p for m in models for p in m.parameters()]

    def configure_optimizers(self) -> Any:
        """Two optimizers, student then auxiliaries, each with ``lr_scheduler`` when it is given."""
        optimizers = [
            self.optimizer(list(self.student.parameters())),
            (self.aux_optimizer or self.optimizer)(self.aux_parameters()),
        ]
        if self.lr_scheduler is None:
            return optimizers
        return optimizers, [self.lr_scheduler(opt) for opt in optimizers]

    def configure_callbacks(self) -> list[Any]:
        return [self.pairs]

    def _generator(self, purpose: str) -> torch.Generator:
        """A generator seeded from ``(noise_seed, purpose, iteration)`` (evaluation: fixed per run)."""
        step = int(self.iteration) if purpose == "train" else 0
        entropy = [int(self.noise_seed), 0 if purpose == "train" else 1, step]
        state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
        return torch.Generator(device=self.device).manual_seed((int(state[0]) << 31) ^ int(state[1]))


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode (BatchNorm on running statistics), then restore its mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
