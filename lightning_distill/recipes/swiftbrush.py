"""SwiftBrush: one-step text-to-image generation by variational score distillation, without images.

Paper: "SwiftBrush: One-Step Text-to-Image Diffusion Model with Variational Score Distillation"
(Thuan Hoang Nguyen and Anh Tran, CVPR 2024, arXiv 2312.05239); official code
``VinAIResearch/SwiftBrush`` (``train_swiftbrush.py``).

Algorithm (one training step; only conditions are used, never images):

1. Draw pure noise ``z`` and run the student once at ``t = T - 1``: it predicts ε, converted with
   the schedule's ``(α_T, σ_T)``: ``x̂₀ = (z - σ_T ε̂) / α_T`` (ᾱ_T = 0.0047 for SD, from the scheduler).
2. Noise the sample, ``x_t = α_t x̂₀ + σ_t ε`` with ``t ~ U[min_step, max_step)``.
3. Teacher and fake score predict ε at ``x_t``, both with classifier-free guidance (scale 4.5).
4. VSD gradient ``g = w(t) (ε_teacher - ε_fake)`` with ``w(t) = σ_t²``; update the student with
   ``½‖x̂₀ - sg(x̂₀ - g)‖²`` (its gradient w.r.t. ``x̂₀`` is ``g``).
5. Update the fake score (LoRA on the teacher) by denoising ``sg(x̂₀)`` at ``t ~ U[0, T)``: ε-MSE
   weighted by ``α_t²``, 10 % of the conditions replaced by the null condition.

Total loss: none is summed; the student minimises ``vsd`` and the fake score ``fake_score``, with
two Adam optimizers updated 1:1 (manual optimization).

Hyper-parameters -> config keys (``model.init_args.*``):

====================================  ========================================================  =====================
paper / official code                 key                                                       default
====================================  ========================================================  =====================
CFG scale of both scores              ``guidance_scale``                                        4.5
VSD timesteps ``[0.02 T, 0.981 T)``   ``min_step``, ``max_step``                                20, 981
VSD weight ``w(t)``                   ``vsd_weighting``                                         ``sigma_squared``
fake-score loss weight ``α_t²``       ``fake_score_weighting``                                  ``alpha_squared``
null prompts in the LoRA update       ``condition_dropout``                                     0.1
fake score = LoRA on the teacher      ``fake_score_mode``                                       ``lora``
LoRA rank / alpha / layers            ``lora_rank``, ``lora_alpha``, ``lora_target_modules``    64 / 108 / to_q, to_v
student / LoRA optimizer (Adam, lr)   ``optimizer``, ``fake_score_optimizer``                   1e-6 / 1e-3
gradient clipping (both)              ``clip_grad_norm``                                        1.0
student starts as the teacher         ``student_init``                                          ``teacher``
====================================  ========================================================  =====================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_distill.data.images import EpochShuffleSampler, ResumableDataLoader
from lightning_distill.diffusion import (
    FakeScore,
    MLPDenoiser,
    NoiseSchedule,
    drop_condition,
    guided_output,
    model_output,
    one_step_generate,
    sample,
    uniform_timesteps,
)
from lightning_distill.diffusion.gmm import AnalyticTeacher, GaussianMixture
from lightning_distill.diffusion.metrics import mode_coverage, rbf_mmd2, sliced_wasserstein
from lightning_distill.losses.distribution_matching import pseudo_target_loss, vsd_gradient
from lightning_distill.module import DistillationModule

__all__ = ["ConditionDataModule", "ResidualScore", "SwiftBrush", "fake_score_adam", "student_adam"]

_CKPT_KEY = "swiftbrush"


def student_adam(params: Any) -> torch.optim.Optimizer:
    """The official student optimizer: Adam, lr 1e-6, betas (0.9, 0.999), no weight decay."""
    return torch.optim.Adam(params, lr=1e-6)


def fake_score_adam(params: Any) -> torch.optim.Optimizer:
    """The official LoRA optimizer: Adam, lr 1e-3, betas (0.9, 0.999), no weight decay."""
    return torch.optim.Adam(params, lr=1e-3)


class ResidualScore(nn.Module):
    """``base(x_t, t, c) + gate * correction(x_t, t, c)``: a trainable correction on a frozen base model.

    The fake score of SwiftBrush for a teacher without parameters (the analytic teacher of the
    Gaussian-mixture bench), where LoRA cannot be attached: like LoRA's ``B = 0``, the scalar
    ``gate`` starts at 0, so the fake score starts equal to the teacher. The base is held by
    reference, not as a submodule (it belongs to, and is frozen by, the recipe), and runs without grad.

    Args:
        base: the frozen model (the teacher), called with the diffusers convention.
        correction: a trainable model with the same call signature and output shape.

    Example:
        >>> base, correction = MLPDenoiser(dim=2, hidden=8, depth=1), MLPDenoiser(dim=2, hidden=8, depth=1)
        >>> score = ResidualScore(base, correction)
        >>> x, t = torch.randn(3, 2), torch.tensor(10)
        >>> torch.equal(score(x, t), base(x, t)), [name for name, _ in score.named_parameters()][:1]
        (True, ['gate'])
    """

    def __init__(self, base: nn.Module, correction: nn.Module) -> None:
        super().__init__()
        for name, value in (("base", base), ("correction", correction)):
            if not isinstance(value, nn.Module):
                raise TypeError(f"`{name}` must be an nn.Module, got {type(value).__name__}.")
        self.gate = nn.Parameter(torch.zeros(()))
        self.correction = correction
        self._base = (base,)  # a tuple, so that nn.Module does not register the teacher here

    def forward(self, sample: Tensor, timestep: Tensor | int | float, *args: Any, **kwargs: Any) -> Tensor:
        cond = args[0] if args else (kwargs or None)
        with torch.no_grad():
            base = model_output(self._base[0], sample, timestep, cond)
        return base + self.gate * model_output(self.correction, sample, timestep, cond)


class _Conditions(Dataset):
    """Conditions ``(N, ...)``; items by ``index`` or ``(epoch, index)`` (EpochShuffleSampler)."""

    def __init__(self, conditions: Tensor) -> None:
        self.conditions = conditions

    def __len__(self) -> int:
        return self.conditions.shape[0]

    def __getitem__(self, item: int | tuple[int, int]) -> Tensor:
        return self.conditions[item[1] if isinstance(item, tuple) else item]


class ConditionDataModule(L.LightningDataModule):
    """Conditions only, no images: class labels or prompt embeddings for image-free distillation.

    Give exactly one source: ``num_classes`` (labels uniform in ``[0, num_classes)``; the null
    label is ``num_classes``), ``embedding_shape`` (random Gaussian stand-ins for text-encoder
    outputs ``(L, D)``, for tests; null = zeros) or ``embeddings_path`` (a dict saved with ``torch.save``:
    ``{"prompt_embeds": (N, L, D), "null_embeds": (1, L, D)}``, precomputed as the official
    ``prepare.py`` does). Batches are condition tensors ``(B,)`` or ``(B, L, D)``.

    Args:
        num_classes: number of classes of label conditions.
        embedding_shape: shape ``(L, D)`` of random embeddings.
        embeddings_path: file of precomputed embeddings (train on all, validate on the first ``num_val``).
        num_train: conditions per training epoch (labels, random embeddings).
        num_val: validation conditions (the samples the metrics are computed on).
        num_test: test conditions.
        batch_size: batch size of every loader.
        seed: seed of the conditions and of the training order.

    Raises:
        ValueError: no source or several, sizes < 1.

    Example:
        >>> dm = ConditionDataModule(num_classes=8, num_train=64, batch_size=16)
        >>> dm.setup()
        >>> next(iter(dm.train_dataloader())).shape, dm.null_condition.tolist()
        (torch.Size([16]), [8])
    """

    def __init__(
        self,
        num_classes: int | None = None,
        embedding_shape: Sequence[int] | None = None,
        embeddings_path: str | None = None,
        num_train: int = 10000,
        num_val: int = 2000,
        num_test: int = 2000,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if sum(x is not None for x in (num_classes, embedding_shape, embeddings_path)) != 1:
            raise ValueError(
                "Give exactly one of `num_classes`, `embedding_shape` and `embeddings_path` "
                f"(got {num_classes!r}, {embedding_shape!r}, {embeddings_path!r}); set `data.init_args`."
            )
        for name, value in (
            ("num_train", num_train),
            ("num_val", num_val),
            ("num_test", num_test),
            ("batch_size", batch_size),
            ("num_classes", num_classes or 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"`{name}` must be an integer >= 1, got {value!r}; set `data.init_args.{name}`."
                )
        self.num_classes = num_classes
        self.embedding_shape = tuple(embedding_shape) if embedding_shape is not None else None
        self.embeddings_path = embeddings_path
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.batch_size = batch_size
        self.seed = seed
        self._splits: dict[str, Tensor] | None = None
        self._null: Tensor | None = None

    @property
    def null_condition(self) -> Tensor:
        """The unconditional condition, batch 1: ``tensor([num_classes])`` or the null embedding ``(1, L, D)``."""
        self._prepare()
        return self._null  # type: ignore[return-value]

    def draw_conditions(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` conditions drawn like the training ones (on the generator's device)."""
        device = generator.device if generator is not None else torch.device("cpu")
        if self.num_classes is not None:
            return torch.randint(0, self.num_classes, (n,), generator=generator, device=device)
        bank = self._prepare()["train"]
        index = torch.randint(0, bank.shape[0], (n,), generator=generator, device=device)
        return bank.to(device)[index]

    def _prepare(self) -> dict[str, Tensor]:
        if self._splits is None:
            gen = torch.Generator().manual_seed(self.seed)
            if self.num_classes is not None:
                self._splits = {
                    k: torch.randint(0, self.num_classes, (n,), generator=gen) for k, n in self.sizes.items()
                }
                self._null = torch.tensor([self.num_classes])
            elif self.embedding_shape is not None:
                self._splits = {
                    k: torch.randn(n, *self.embedding_shape, generator=gen) for k, n in self.sizes.items()
                }
                self._null = torch.zeros(1, *self.embedding_shape)
            else:
                stored = torch.load(self.embeddings_path, map_location="cpu", weights_only=True)
                bank, self._null = stored["prompt_embeds"].float(), stored["null_embeds"].float()[:1]
                self._splits = {
                    "train": bank,
                    "val": bank[: self.sizes["val"]],
                    "test": bank[: self.sizes["test"]],
                }
        return self._splits

    def setup(self, stage: str | None = None) -> None:
        self._prepare()

    def train_dataloader(self) -> DataLoader:
        dataset = _Conditions(self._prepare()["train"])
        return ResumableDataLoader(
            dataset,
            batch_size=min(self.batch_size, len(dataset)),
            sampler=EpochShuffleSampler(len(dataset), seed=int(torch.initial_seed()) ^ self.seed),
            drop_last=len(dataset) > self.batch_size,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Conditions(self._prepare()["val"]), batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(_Conditions(self._prepare()["test"]), batch_size=self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


class SwiftBrush(DistillationModule):
    """SwiftBrush recipe. See the module docstring for the algorithm.

    Args:
        student: the one-step generator, a denoiser called ``student(z, T - 1, cond)`` (a diffusers
            UNet, or an ``MLPDenoiser`` on the bench); it predicts in the schedule's parameterisation.
        teacher: the frozen teacher with the same call signature (``AnalyticTeacher`` on the bench).
        schedule: the teacher's noise schedule (default: Stable Diffusion's, ``scaled_linear`` ε).
        fake_score_mode: ``"lora"`` (LoRA adapters on a copy of the teacher, the paper),
            ``"residual"`` (teacher + gated trainable ``fake_score``, the LoRA analogue for a teacher
            without parameters) or ``"separate"`` (``fake_score`` alone, from its own initialisation).
        fake_score: the trainable model of the ``"residual"`` and ``"separate"`` modes.
        lora_rank: LoRA rank (``"lora"`` mode).
        lora_alpha: LoRA alpha; the update is scaled by ``alpha / rank``.
        lora_target_modules: names of the adapted layers.
        guidance_scale: CFG scale ``s`` of both scores (``uncond + s (cond - uncond)``); 1 disables it.
        min_step: first timestep of the VSD gradient (included).
        max_step: last timestep of the VSD gradient (excluded).
        vsd_weighting: ``w(t)``: ``"sigma_squared"`` (σ_t², the official code) or ``"none"`` (1).
        fake_score_weighting: weight of the fake score's ε-MSE: ``"alpha_squared"`` (official) or ``"none"``.
        condition_dropout: share of conditions replaced by the null condition in the fake-score update.
        null_condition: the null condition: a class label (the ``num_classes`` of the models), a tensor
            (a null-prompt embedding, batch 1), or ``None`` to take ``trainer.datamodule.null_condition``.
        student_init: ``"teacher"`` copies the teacher's weights into the student (the paper);
            ``"random"`` keeps the student as built.
        sample_shape: shape of one sample, e.g. ``(4, 64, 64)``; ``None`` infers it from the models.
        clip_grad_norm: gradient-norm clipping of both updates (``None`` disables it).
        eval_steps: DDIM steps of the teacher's reference samples in validation (logged once).
        seed: seed of the training noise, timesteps and dropout (``None``: from ``seed_everything``);
            each step draws from ``(seed, rank, iteration)``.
        optimizer: student optimizer (Adam, lr 1e-6).
        fake_score_optimizer: fake-score optimizer (Adam, lr 1e-3).

    Raises:
        ValueError: an unknown mode, a missing or superfluous ``fake_score``, a bad range or scale,
            ``student_init="teacher"`` with a teacher without parameters, an unknown sample shape, or
            a teacher whose schedule differs from ``schedule``.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("vsd", "fake_score")

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        schedule: NoiseSchedule | None = None,
        fake_score_mode: Literal["lora", "residual", "separate"] = "lora",
        fake_score: nn.Module | None = None,
        lora_rank: int = 64,
        lora_alpha: float = 108.0,
        lora_target_modules: Sequence[str] = ("to_q", "to_v"),
        guidance_scale: float = 4.5,
        min_step: int = 20,
        max_step: int = 981,
        vsd_weighting: Literal["sigma_squared", "none"] = "sigma_squared",
        fake_score_weighting: Literal["alpha_squared", "none"] = "alpha_squared",
        condition_dropout: float = 0.1,
        null_condition: int | Tensor | None = None,
        student_init: Literal["teacher", "random"] = "teacher",
        sample_shape: Sequence[int] | None = None,
        clip_grad_norm: float | None = 1.0,
        eval_steps: int = 50,
        seed: int | None = None,
        optimizer: OptimizerCallable = student_adam,
        fake_score_optimizer: OptimizerCallable = fake_score_adam,
    ) -> None:
        super().__init__(student=student, teacher=teacher, optimizer=optimizer)
        self.save_hyperparameters(
            ignore=[
                "student",
                "teacher",
                "fake_score",
                "schedule",
                "null_condition",
                "optimizer",
                "fake_score_optimizer",
            ]
        )
        self.automatic_optimization = False
        self.schedule = schedule if schedule is not None else NoiseSchedule.ddpm()
        T = self.schedule.num_train_timesteps
        _check_choice("fake_score_mode", fake_score_mode, ("lora", "residual", "separate"))
        _check_choice("vsd_weighting", vsd_weighting, ("sigma_squared", "none"))
        _check_choice("fake_score_weighting", fake_score_weighting, ("alpha_squared", "none"))
        _check_choice("student_init", student_init, ("teacher", "random"))
        if not (isinstance(min_step, int) and isinstance(max_step, int) and 0 <= min_step < max_step <= T):
            raise ValueError(
                f"`min_step` and `max_step` must be integers with 0 <= min_step < max_step <= {T}, got "
                f"{min_step!r} and {max_step!r}; set `model.init_args.min_step` / `max_step`."
            )
        if not guidance_scale >= 0:
            raise ValueError(
                f"`guidance_scale` must be >= 0, got {guidance_scale}; set `model.init_args.guidance_scale`."
            )
        if not 0.0 <= condition_dropout <= 1.0:
            raise ValueError(
                f"`condition_dropout` must be in [0, 1], got {condition_dropout}; set `model.init_args.condition_dropout`."
            )
        if isinstance(eval_steps, bool) or not isinstance(eval_steps, int) or eval_steps < 1:
            raise ValueError(f"`eval_steps` must be an integer >= 1, got {eval_steps!r}.")
        _check_teacher_schedule(teacher, self.schedule)
        has_params = any(True for _ in teacher.parameters())
        if student_init == "teacher":
            if not has_params:
                raise ValueError(
                    f"`student_init='teacher'` copies the teacher's weights, but {type(teacher).__name__} has no "
                    "parameters; set `model.init_args.student_init: random`."
                )
            self.student.load_state_dict(teacher.state_dict())
        if fake_score_mode == "lora":
            if fake_score is not None:
                raise ValueError(
                    "`fake_score` is used by the 'residual' and 'separate' modes only; remove it or set "
                    "`model.init_args.fake_score_mode`."
                )
            if not has_params:
                raise ValueError(
                    f"LoRA needs a teacher with parameters, {type(teacher).__name__} has none; set "
                    "`model.init_args.fake_score_mode: residual` and give `model.init_args.fake_score`."
                )
            self.fake_score = FakeScore.lora_on(
                self.teacher,
                self.schedule,
                rank=lora_rank,
                alpha=lora_alpha,
                target_modules=tuple(lora_target_modules),
            )
        else:
            if not isinstance(fake_score, nn.Module):
                raise ValueError(
                    f"`fake_score_mode={fake_score_mode!r}` needs a trainable `fake_score` module (e.g. an "
                    "MLPDenoiser); set `model.init_args.fake_score`."
                )
            model = ResidualScore(self.teacher, fake_score) if fake_score_mode == "residual" else fake_score
            self.fake_score = FakeScore(model.requires_grad_(True).train(), self.schedule)
        self.guidance_scale = float(guidance_scale)
        self.min_step, self.max_step = min_step, max_step
        self.vsd_weighting, self.fake_score_weighting = vsd_weighting, fake_score_weighting
        self.condition_dropout = float(condition_dropout)
        self.null_condition = (
            torch.tensor([null_condition]) if isinstance(null_condition, int) else null_condition
        )
        self.sample_shape = (
            tuple(sample_shape) if sample_shape is not None else _infer_sample_shape(student, teacher)
        )
        self.clip_grad_norm = clip_grad_norm
        self.eval_steps = eval_steps
        self.seed = seed
        self.fake_score_optimizer = fake_score_optimizer
        self._generator: torch.Generator | None = None
        self._iteration = 0  # training steps taken; seeds each step's noise, saved in checkpoints
        self._eval: list[tuple[Tensor, Tensor, Tensor]] = []
        self._floor_logged = False

    # ------------------------------------------------------------------ the paper's equations
    def generate(self, noise: Tensor, cond: Any) -> Tensor:
        """Step 1: ``x̂₀ = (z - σ_T ε̂(z, T - 1, c)) / α_T`` in the schedule's algebra; keeps grad. ``(B, ...)`` float32."""
        return one_step_generate(self.student, self.schedule, noise, self.schedule.max_timestep, cond)

    def guided_eps(self, model: nn.Module, x_t: Tensor, t: Tensor, cond: Any) -> Tensor:
        """Step 3: the CFG prediction ``uncond + s (cond - uncond)`` of ``model``, as ε ``(B, ...)`` float32."""
        null = self._null(cond) if self.guidance_scale != 1 else None
        out = guided_output(model, x_t, t, cond, null, self.guidance_scale)
        return self.schedule.to_eps(out, x_t, t)

    def vsd_weight(self, t: Tensor) -> Tensor:
        """``w(t)``: σ_t² (official) or 1, ``(B,)``."""
        sigma = self.schedule.alpha_sigma(t)[1]
        return sigma**2 if self.vsd_weighting == "sigma_squared" else torch.ones_like(sigma)

    def vsd_loss(self, x0: Tensor, cond: Any) -> Tensor:
        """Steps 2-4: ``½‖x̂₀ - sg(x̂₀ - g)‖²`` with ``g = w(t)(ε_teacher - ε_fake)`` at ``x_t`` from ``sg(x̂₀)``."""
        b, T = x0.shape[0], self.schedule.num_train_timesteps
        gen = self._rng()
        t = uniform_timesteps(
            b, self.min_step, self.max_step, num_train_timesteps=T, generator=gen, device=x0.device
        )
        noise = torch.randn(x0.shape, generator=gen, device=gen.device).to(x0.device)
        x_t = self.schedule.add_noise(x0.detach(), noise, t)
        with torch.no_grad():
            eps_teacher = self.guided_eps(self.teacher, x_t, t, cond)
            eps_fake = self.guided_eps(self.fake_score, x_t, t, cond)
        return pseudo_target_loss(x0, vsd_gradient(eps_teacher, eps_fake, self.vsd_weight(t)))

    def fake_score_loss(self, x0: Tensor, cond: Any) -> Tensor:
        """Step 5: ``α_t² ‖ε_fake(x_t, t, c') - ε‖²`` on ``sg(x̂₀)``, ``t ~ U[0, T)``, ``c'`` = ``c`` with some nulls."""
        b, T = x0.shape[0], self.schedule.num_train_timesteps
        gen = self._rng()
        t = uniform_timesteps(b, 0, T, num_train_timesteps=T, generator=gen, device=x0.device)
        noise = torch.randn(x0.shape, generator=gen, device=gen.device).to(x0.device)
        if self.condition_dropout > 0:
            cond = drop_condition(cond, self._null(cond), self.condition_dropout, generator=gen)
        weight = (
            self.schedule.alpha_sigma(t)[0] ** 2 if self.fake_score_weighting == "alpha_squared" else None
        )
        return self.fake_score.denoising_loss(x0.detach(), t, noise, cond, weighting=weight)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        cond = _check_batch(batch)
        opt_student, opt_fake = self.optimizers()
        self._reseed()
        gen = self._rng()
        # 1. one step from pure noise at t = T - 1
        noise = torch.randn((_batch_size(cond), *self.sample_shape), generator=gen, device=gen.device).to(
            self.device
        )
        x0 = self.generate(noise, cond)
        # 2-4. VSD gradient through the pseudo-target loss; the student's update
        vsd = self.vsd_loss(x0, cond)
        self.manual_update(vsd, opt_student, clip_grad_norm=self.clip_grad_norm)
        # 5. the fake score learns the (pre-update) student samples
        fake = self.fake_score_loss(x0.detach(), cond)
        self.manual_update(fake, opt_fake, clip_grad_norm=self.clip_grad_norm)
        self._iteration += 1
        return self.log_losses({"vsd": vsd.detach(), "fake_score": fake.detach()})

    # ------------------------------------------------------------------ sampling and evaluation
    @property
    def reference_mixture(self) -> GaussianMixture | None:
        """The data distribution when the teacher is an ``AnalyticTeacher`` (for metrics and ``SampleLogger``)."""
        return self.teacher.gmm if isinstance(self.teacher, AnalyticTeacher) else None

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, cond: Any = None) -> Tensor:
        """``n`` one-step samples ``(n, *sample_shape)``; conditions drawn with ``generator`` when not given.

        Conditions come from ``trainer.datamodule.draw_conditions`` if it exists, else uniform class
        labels below an integer null label.

        Raises:
            ValueError: no conditions given and none can be drawn.
        """
        device = generator.device if generator is not None else self.device
        if cond is None:
            cond = self._draw_conditions(n, generator)
        noise = torch.randn((n, *self.sample_shape), generator=generator, device=device).to(self.device)
        return self.generate(noise, _to_device(cond, self.device))

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """One-step samples ``(B, *sample_shape)`` for a batch of conditions (seeded by ``batch_idx``)."""
        cond = _check_batch(batch)
        gen = torch.Generator(device=self.device).manual_seed(batch_idx)
        noise = torch.randn((_batch_size(cond), *self.sample_shape), generator=gen, device=self.device)
        with torch.no_grad():
            return self.generate(noise, cond)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")
        super().on_validation_epoch_end()

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
        super().on_test_epoch_end()

    # ------------------------------------------------------------------ optimizers and checkpoints
    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        return self.optimizer(self.student.parameters()), self.fake_score_optimizer(
            self.fake_score.trainable_parameters()
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[_CKPT_KEY] = {"iteration": self._iteration}
        # The LoRA fake score's frozen base is a copy of the teacher: rebuilt, not saved.
        frozen = {f"fake_score.{n}" for n, p in self.fake_score.named_parameters() if not p.requires_grad}
        state = checkpoint.get("state_dict")
        if frozen and isinstance(state, dict):
            checkpoint["state_dict"] = {k: v for k, v in state.items() if k not in frozen}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict")
        if isinstance(state, dict):
            for key, value in self.fake_score.state_dict(prefix="fake_score.").items():
                state.setdefault(key, value)
        self._iteration = int(checkpoint.get(_CKPT_KEY, {}).get("iteration", 0))

    # ------------------------------------------------------------------ helpers
    def _rng(self) -> torch.Generator:
        """The generator of all training randomness (noise, timesteps, dropout) on the module's device.

        :meth:`_reseed` sets it from ``(seed, rank, iteration)`` at every training step, so the noise
        of a step depends on nothing else: each DDP rank draws its own, and a resumed run draws
        exactly what an uninterrupted one would, on any device.
        """
        if self._generator is None or self._generator.device != self.device:
            self._generator = torch.Generator(device=self.device)
            self._reseed()
        return self._generator

    def _reseed(self) -> None:
        seed = self.seed if self.seed is not None else torch.initial_seed()
        words = np.random.SeedSequence([int(seed), self.global_rank, self._iteration]).generate_state(2)
        self._rng().manual_seed(int(words[0]) << 31 ^ int(words[1]))

    def _null(self, cond: Any) -> Any:
        if self.null_condition is None and self._trainer is not None:
            self.null_condition = getattr(self.trainer.datamodule, "null_condition", None)
        if self.null_condition is None:
            raise ValueError(
                "CFG and condition dropout need the null condition; set `model.init_args.null_condition` (the null "
                "class label) or serve it as `null_condition` from the datamodule."
            )
        return _to_device(self.null_condition, _first_tensor(cond).device)

    def _draw_conditions(self, n: int, generator: torch.Generator | None) -> Tensor:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if callable(getattr(datamodule, "draw_conditions", None)):
            return datamodule.draw_conditions(n, generator)
        null = self.null_condition
        if isinstance(null, Tensor) and null.numel() == 1 and not null.is_floating_point():
            device = generator.device if generator is not None else self.device
            return torch.randint(0, int(null), (n,), generator=generator, device=device)
        raise ValueError(
            "`sample` needs `cond`: no datamodule with `draw_conditions` and no integer null label."
        )

    def _eval_step(self, batch: Any, batch_idx: int) -> None:
        cond = _check_batch(batch)
        gen = torch.Generator(device=self.device).manual_seed(10_000 + batch_idx)
        noise = torch.randn((_batch_size(cond), *self.sample_shape), generator=gen, device=self.device)
        with torch.no_grad():
            x = self.generate(noise, cond)
        self._eval.append((x, cond, noise))

    def _eval_epoch_end(self, stage: str) -> None:
        outputs, self._eval = self._eval, []
        gmm = self.reference_mixture
        if self.trainer.sanity_checking or gmm is None or not outputs or len(self.sample_shape) != 1:
            return
        x, labels, noise = (torch.cat([o[k] for o in outputs]) for k in range(3))
        if labels.is_floating_point():
            return
        if self.trainer.world_size > 1:  # every rank scores the samples of all ranks
            x, labels, noise = (self.all_gather(v).flatten(0, 1) for v in (x, labels, noise))
        gen = torch.Generator().manual_seed(0)
        reference = gmm.sample(x.shape[0], gen, labels=labels.cpu())
        metrics = _point_metrics(x.cpu(), reference, gmm)
        if not self._floor_logged:
            other = gmm.sample(x.shape[0], gen, labels=labels.cpu())
            metrics.update({f"{k}_floor": v for k, v in _point_metrics(other, reference, gmm).items()})
            self._floor_logged = True
        if self._teacher_metrics_pending.get(stage, False):
            teacher_x = sample(
                self.teacher,
                self.schedule,
                noise,
                self.eval_steps,
                labels,
                self._null(labels),
                self.guidance_scale,
            )
            metrics.update(
                {f"teacher_{k}": v for k, v in _point_metrics(teacher_x.cpu(), reference, gmm).items()}
            )
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, prog_bar=False)


def _point_metrics(x: Tensor, reference: Tensor, gmm: GaussianMixture) -> dict[str, float]:
    return {
        "swd": float(sliced_wasserstein(x, reference.float())),
        "mmd": float(rbf_mmd2(x, reference.float())),
        "mode_coverage": float(mode_coverage(x, gmm)),
    }


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}; set `model.init_args.{name}`.")


def _check_batch(batch: Any) -> Any:
    if isinstance(batch, (list, tuple)):
        raise ValueError(
            "SwiftBrush is image-free: batches must be conditions only (a tensor of labels or embeddings, or a mapping), "
            f"got a {type(batch).__name__}; use lightning_distill.recipes.swiftbrush.ConditionDataModule."
        )
    _first_tensor(batch)
    return batch


def _first_tensor(cond: Any) -> Tensor:
    if isinstance(cond, Tensor):
        return cond
    if isinstance(cond, Mapping) and cond:
        return _first_tensor(next(iter(cond.values())))
    raise ValueError(f"A condition must be a tensor or a mapping of tensors, got {type(cond).__name__}.")


def _batch_size(cond: Any) -> int:
    return _first_tensor(cond).shape[0]


def _to_device(cond: Any, device: torch.device) -> Any:
    if isinstance(cond, Tensor):
        return cond.to(device)
    if isinstance(cond, Mapping):
        return {k: _to_device(v, device) for k, v in cond.items()}
    return cond


def _infer_sample_shape(student: nn.Module, teacher: nn.Module) -> tuple[int, ...]:
    for model in (teacher, student):
        if isinstance(model, AnalyticTeacher):
            return (model.gmm.dim,)
        if isinstance(model, MLPDenoiser):
            return (model.dim,)
        config = getattr(model, "config", None)
        if config is not None and "in_channels" in config and "sample_size" in config:
            size = config["sample_size"]
            size = (size, size) if isinstance(size, int) else tuple(size)
            return (int(config["in_channels"]), *size)
    raise ValueError(
        f"Cannot infer the sample shape of {type(student).__name__}; set `model.init_args.sample_shape` "
        "(e.g. [4, 64, 64])."
    )


def _check_teacher_schedule(teacher: nn.Module, schedule: NoiseSchedule) -> None:
    """An ``AnalyticTeacher`` carries its own schedule: it must be the recipe's."""
    own = getattr(teacher, "schedule", None)
    if own is None or not callable(getattr(own, "alpha_sigma", None)):
        return
    t = torch.arange(0, schedule.num_train_timesteps, max(1, schedule.num_train_timesteps // 50))
    if getattr(own, "num_train_timesteps", None) != schedule.num_train_timesteps or not torch.allclose(
        own.alpha_sigma(t)[0].float(), schedule.alpha_sigma(t)[0].float(), atol=1e-6
    ):
        raise ValueError(
            "The teacher's schedule differs from `model.init_args.schedule`; build both from the same arguments."
        )
