"""`FakeScore`: the fake-score model of the DMD family, trained by denoising on detached generator samples.

DMD, DMD2, SwiftBrush, Phased/Decoupled DMD and MSD keep a second diffusion model that tracks the
*generator's* distribution: it is trained with the ordinary denoising loss on generator samples
(detached, so no gradient reaches the generator), and its prediction minus the teacher's gives
the distribution-matching gradient (:mod:`lightning_distill.losses.distribution_matching`).

Two ways to build one from the teacher:

* :meth:`FakeScore.copy_of`: a trainable deep copy of the whole teacher (DMD2).
* :meth:`FakeScore.lora_on`: LoRA adapters (peft) on a frozen deep copy of the teacher (SwiftBrush:
  rank 64, alpha 108 on ``to_q``/``to_v``). Only the adapters train. SwiftBrush puts the adapters
  on the teacher UNet itself and gets the teacher by disabling them; here they go on a *copy*, so
  the frozen teacher module of a ``DistillationModule`` is never modified, never holds trainable
  parameters and stays out of checkpoints as the base class expects. The cost is one more frozen
  copy of the weights in memory. :meth:`FakeScore.adapters_disabled` still gives SwiftBrush's
  "adapters off = teacher" (bit-identical outputs), e.g. to check the fake score at reset.
* :class:`ResidualScore` (wrap it in a ``FakeScore``): the frozen teacher plus a gated trainable
  correction that starts at zero, the LoRA analogue for a teacher without parameters.

:class:`Reparameterised` reads a network trained in one parameterisation (e.g. an x₀-predicting
student copied into a fake score, MSD) as another (the schedule's, e.g. ε), through the schedule.

The fake score is called like the model it wraps (``fake(x_t, t, cond)``, see
:func:`~lightning_distill.diffusion.guidance.model_output`) and predicts in the schedule's
parameterisation.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_distill.diffusion.guidance import Cond, model_output
from lightning_distill.diffusion.schedule import PREDICTION_TYPES, NoiseSchedule
from lightning_distill.losses.distribution_matching import denoising_loss as _denoising_loss
from lightning_distill.utils.checks import Reduction

__all__ = ["FakeScore", "Reparameterised", "ResidualScore"]

_LORA_KEY = "lora_"
_BASE_LAYER = ".base_layer"


class FakeScore(nn.Module):
    """A trainable score model of the generator's distribution.

    Build it with :meth:`copy_of` or :meth:`lora_on`; the constructor wraps a model you built
    yourself (trained as given: every parameter with ``requires_grad``).

    Args:
        model: the denoiser, called with the diffusers convention.
        schedule: the noise schedule; the model predicts ``schedule.prediction_type``.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or ``schedule`` not a ``NoiseSchedule``.

    Example:
        >>> from lightning_distill.diffusion import MLPDenoiser, NoiseSchedule
        >>> teacher = MLPDenoiser(dim=2, hidden=16, depth=1).requires_grad_(False)
        >>> fake = FakeScore.copy_of(teacher, NoiseSchedule.ddpm())
        >>> x0 = torch.randn(8, 2)  # generator samples (detached inside)
        >>> loss = fake.denoising_loss(x0, torch.randint(0, 1000, (8,)), torch.randn(8, 2))
        >>> loss.backward()
        >>> all(p.grad is not None for p in fake.trainable_parameters()), teacher.input.weight.grad is None
        (True, True)
    """

    def __init__(self, model: nn.Module, schedule: NoiseSchedule) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}.")
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"`schedule` must be a NoiseSchedule, got {type(schedule).__name__}.")
        self.model = model
        self.schedule = schedule
        self.is_lora = False

    # ------------------------------------------------------------------ constructors
    @classmethod
    def copy_of(cls, teacher: nn.Module, schedule: NoiseSchedule) -> FakeScore:
        """A trainable deep copy of ``teacher`` (all parameters train; the teacher is untouched).

        Raises:
            ValueError: if ``teacher`` has forward hooks registered (they would be copied and fire
                for the fake score too): build the fake score before attaching ``FeatureHooks``.
        """
        model = _hook_free_copy(teacher)
        model.requires_grad_(True).train()
        return cls(model, schedule)

    @classmethod
    def lora_on(
        cls,
        teacher: nn.Module,
        schedule: NoiseSchedule,
        *,
        rank: int = 64,
        alpha: float = 108.0,
        target_modules: Sequence[str] = ("to_q", "to_v"),
        dropout: float = 0.0,
    ) -> FakeScore:
        """LoRA adapters (peft) on a frozen deep copy of ``teacher``; only the adapters train.

        Defaults are SwiftBrush's (rank 64, alpha 108, ``to_q``/``to_v``, scaling alpha / rank).
        The adapters start at ``B = 0``, so the fake score starts equal to the teacher.

        Args:
            teacher: the teacher denoiser (left unchanged).
            schedule: the noise schedule.
            rank: LoRA rank ``r``.
            alpha: LoRA alpha (the update is scaled by ``alpha / rank``).
            target_modules: module names (suffixes) to adapt, e.g. ``("to_q", "to_v")`` for diffusers
                attention or ``("linear",)`` for :class:`~lightning_distill.diffusion.denoisers.MLPDenoiser`.
            dropout: LoRA dropout (0 keeps "adapters off = teacher" exact in training mode too).

        Raises:
            ValueError: for a non-positive rank or alpha, no matching ``target_modules``, or hooks
                on the teacher (see :meth:`copy_of`).
        """
        from peft import LoraConfig, inject_adapter_in_model

        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"`rank` must be an integer >= 1, got {rank!r}.")
        if not alpha > 0:
            raise ValueError(f"`alpha` must be > 0, got {alpha!r}.")
        if isinstance(target_modules, str) or not target_modules:
            raise ValueError(
                f"`target_modules` must be a non-empty sequence of module names, got {target_modules!r}."
            )
        model = _hook_free_copy(teacher)
        model.requires_grad_(False)
        config = LoraConfig(
            r=rank,
            lora_alpha=alpha,
            target_modules=list(target_modules),
            lora_dropout=dropout,
            init_lora_weights=True,
        )
        try:
            model = inject_adapter_in_model(config, model)
        except ValueError as error:
            linears = [name for name, m in teacher.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))][
                :8
            ]
            raise ValueError(
                f"`target_modules`={list(target_modules)} matched no adaptable layer of {type(teacher).__name__} "
                f"({error}). Some of its Linear/Conv2d layers: {linears}."
            ) from error
        for name, param in model.named_parameters():
            param.requires_grad_(_LORA_KEY in name)
        model.train()
        fake = cls(model, schedule)
        fake.is_lora = True
        return fake

    # ------------------------------------------------------------------ use
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the wrapped model with the same arguments (``fake(x_t, t)``, ``fake(x_t, t, cond)``, ...)."""
        return self.model(*args, **kwargs)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the fake-score optimizer should hold (the adapters only, for LoRA)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def denoising_loss(
        self,
        x0: Tensor,
        t: Tensor,
        noise: Tensor,
        cond: Cond = None,
        *,
        weighting: Tensor | float | None = None,
        reduction: Reduction = "mean",
    ) -> Tensor:
        """The fake score's denoising loss on (detached) generator samples.

        :math:`x_t = \\alpha_t \\operatorname{sg}(x_0) + \\sigma_t \\varepsilon`, loss
        :math:`w(t)\\lVert f_\\phi(x_t, t, c) - y \\rVert^2` with ``y`` the schedule's target (ε for
        ε-prediction as in DMD2, x₀, v, or the flow velocity ε − x₀).

        Args:
            x0: generator samples ``(B, ...)``; detached here, so no gradient reaches the generator.
            t: timesteps ``(B,)`` (DMD2: ``U[0, T)``).
            noise: ε, shape of ``x0``.
            cond: the condition (drop it to the null condition for a share of samples to keep the
                fake score usable under CFG, as SwiftBrush does with 10 %).
            weighting: ``w(t)`` per sample ``(B,)`` or a number (SwiftBrush: ``alpha**2``).
            reduction: ``"none"``, ``"mean"`` or ``"sum"`` over the batch.

        Returns:
            The loss in float32.
        """
        x0 = x0.detach()
        x_t = self.schedule.add_noise(x0, noise, t)
        pred = model_output(self, x_t, t, cond)
        target = self.schedule.target(x0, noise, t)
        return _denoising_loss(pred, target, weighting=weighting, reduction=reduction)

    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[FakeScore]:
        """Inside this block a LoRA fake score computes its base model, i.e. the teacher it was copied from.

        Raises:
            RuntimeError: if the fake score has no adapters.
        """
        if not self.is_lora:
            raise RuntimeError(
                "`adapters_disabled()` needs a LoRA fake score (built with `FakeScore.lora_on`)."
            )
        layers = _tuner_layers(self.model)
        flags = [(p, p.requires_grad) for p in self.model.parameters()]
        for layer in layers:
            layer.enable_adapters(False)
        try:
            yield self
        finally:
            for layer in layers:
                layer.enable_adapters(True)
            for param, flag in flags:
                param.requires_grad_(flag)

    @torch.no_grad()
    def reset_from(self, teacher: nn.Module, *, generator: torch.Generator | None = None) -> None:
        """Re-initialise from ``teacher`` in place, so the fake score equals the teacher again (Phased DMD).

        A full copy takes every weight of ``teacher``; a LoRA fake score takes the teacher's base
        weights and re-initialises its adapters (A: Kaiming-uniform as peft does, drawn from
        ``generator``; B: 0). Parameters keep their identity, so an optimizer keeps working; its
        state (e.g. Adam moments) is not touched: clear it too if the phase should start fresh
        (``optimizer.state.clear()``).

        Args:
            teacher: a model with the same architecture as the one this fake score was built from.
            generator: random source for the LoRA ``A`` matrices (``None``: the global RNG).

        Raises:
            ValueError: if ``teacher``'s parameters and buffers do not match this fake score's.
        """
        source = teacher.state_dict()
        own = self.model.state_dict(keep_vars=True)
        base_keys = {key.replace(_BASE_LAYER, ""): key for key in own if _LORA_KEY not in key}
        missing = sorted(set(base_keys) - set(source))
        unexpected = sorted(set(source) - set(base_keys))
        if missing or unexpected:
            raise ValueError(
                f"`teacher` does not match this fake score: missing {missing[:5]}, unexpected {unexpected[:5]}."
            )
        for key, own_key in base_keys.items():
            target, value = own[own_key], source[key]
            if target.shape != value.shape:
                raise ValueError(
                    f"`teacher` entry {key!r} has shape {tuple(value.shape)}, the fake score's {tuple(target.shape)}."
                )
            target.copy_(value)
        for layer in _tuner_layers(self.model):
            for adapter in layer.lora_A:
                nn.init.kaiming_uniform_(layer.lora_A[adapter].weight, a=math.sqrt(5), generator=generator)
                nn.init.zeros_(layer.lora_B[adapter].weight)
                if getattr(layer.lora_B[adapter], "bias", None) is not None:
                    nn.init.zeros_(layer.lora_B[adapter].bias)


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
        >>> from lightning_distill.diffusion import MLPDenoiser
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


class Reparameterised(nn.Module):
    """``model``'s output, predicted as ``source``, converted to ``target`` through the schedule at ``(x_t, t)``.

    So a network trained in one parameterisation can be read as another: MSD copies students that
    predict x₀ into fake scores that are trained and read as ε. The wrapped network is ``.model``
    (its state-dict keys gain ``model.``; :func:`~lightning_distill.diffusion.denoisers.feature_path`
    looks through it).

    Args:
        model: the denoiser, called with the diffusers convention, predicting ``source``.
        schedule: the noise schedule whose ``(α_t, σ_t)`` convert.
        source: what ``model`` predicts.
        target: what the wrapper returns (default: the schedule's ``prediction_type``).

    Raises:
        ValueError: an unknown parameterisation, or a ``source`` that cannot be converted at some
            training timestep of ``schedule`` (x₀ where σ_t = 0, ε where α_t = 0).

    Example:
        >>> from lightning_distill.diffusion import MLPDenoiser, NoiseSchedule
        >>> schedule, net = NoiseSchedule.ddpm(), MLPDenoiser(dim=2, hidden=8, depth=1)
        >>> eps_net = Reparameterised(net, schedule, source="sample")
        >>> x, t = torch.randn(3, 2), torch.tensor([10, 500, 990])
        >>> torch.allclose(eps_net(x, t), schedule.to_eps(net(x, t), x, t, "sample"))
        True
    """

    def __init__(
        self, model: nn.Module, schedule: NoiseSchedule, source: str, target: str | None = None
    ) -> None:
        super().__init__()
        target = schedule.prediction_type if target is None else target
        for name, value in (("source", source), ("target", target)):
            if value not in PREDICTION_TYPES:
                raise ValueError(f"`{name}` must be one of {PREDICTION_TYPES}, got {value!r}.")
        alpha, sigma = schedule.alpha_sigma(torch.arange(schedule.num_train_timesteps))
        det = {
            "epsilon": -alpha,
            "sample": sigma,
            "v_prediction": -(alpha**2 + sigma**2),
            "flow": -(alpha + sigma),
        }
        singular = (det[source].abs() < 1e-12).nonzero()
        if source != target and singular.numel():
            raise ValueError(
                f"A model predicting {source!r} cannot be read as {target!r} under this schedule: the conversion "
                f"divides by zero at t = {int(singular[0])}. Train both in the same parameterisation."
            )
        self.model, self.schedule, self.source, self.target = model, schedule, source, target

    def forward(self, sample: Tensor, timestep: Tensor | int | float, *args: Any, **kwargs: Any) -> Tensor:
        cond = args[0] if args else (kwargs or None)
        out = model_output(self.model, sample, timestep, cond)
        return self.schedule.convert(out, sample, timestep, source=self.source, target=self.target)

    def extra_repr(self) -> str:
        return f"source={self.source!r}, target={self.target!r}"


def _hook_free_copy(teacher: nn.Module) -> nn.Module:
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"`teacher` must be an nn.Module, got {type(teacher).__name__}.")
    hooked = [
        name or "<root>" for name, m in teacher.named_modules() if m._forward_hooks or m._forward_pre_hooks
    ]
    if hooked:
        raise ValueError(
            f"`teacher` has forward hooks on {hooked[:5]}; a copy would carry them. Build the fake score before "
            "attaching hooks (FeatureHooks attaches in `setup`, after the recipe's constructor)."
        )
    return copy.deepcopy(teacher)


def _tuner_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]
