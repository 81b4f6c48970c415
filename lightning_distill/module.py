"""`DistillationModule`: the LightningModule every recipe extends.

The base owns what all distillation methods share and nothing method-specific:

* a trainable ``student`` and frozen ``teachers`` (injected as ``nn.Module`` arguments, so
  LightningCLI can build any of them from ``class_path``/``init_args``);
* the frozen-teacher contract: ``requires_grad_(False)``, eval mode whatever ``.train()`` is
  called, never in an optimizer, run under ``torch.no_grad()``, and left out of checkpoints by
  default (the checkpoint records where each teacher came from and a fingerprint of its weights);
* named loss terms: a recipe's ``training_step`` returns ``self.log_losses(terms)``, which weighs
  the terms by ``loss_weights``, sums them and logs each as ``train/<term>``;
* evaluation: student metrics as ``val/<metric>`` / ``test/<metric>`` and, once per run, each
  teacher's as ``val/teacher_<metric>`` so a broken teacher shows at once;
* manual optimization: :meth:`DistillationModule.update` is the one call per turn of a recipe that
  steps its own optimizers (weigh, log ``train/<term>`` and ``train/loss_<turn>``, toggle, backward,
  clip, step, scheduler), and :meth:`is_update_step` reads an update ratio.

Size: one class, the contract every recipe relies on (teachers, loss terms, manual turns,
evaluation, checkpoints); each method is short, and splitting the class into mixins would scatter
the contract a recipe author reads in one place. Checkpoint reading and export live in
``utils/checkpoints.py``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_distill.losses import kd_loss
    >>> class VanillaKD(DistillationModule):
    ...     loss_terms = ("kd", "ce")
    ...     def training_step(self, batch, batch_idx):
    ...         x, y = batch
    ...         logits = self.student(x)
    ...         with torch.no_grad():
    ...             t_logits = self.teacher(x)
    ...         terms = {"kd": kd_loss(logits, t_logits), "ce": nn.functional.cross_entropy(logits, y)}
    ...         return self.log_losses(terms)
    >>> module = VanillaKD(student=nn.Linear(4, 3), teacher=nn.Linear(4, 3), loss_weights={"ce": 0.5})
    >>> module.loss_weights
    {'kd': 1.0, 'ce': 0.5}
    >>> any(p.requires_grad for p in module.teacher.parameters())
    False
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lightning_distill.utils.checkpoints import class_path_of, rebuild_from_checkpoint
from lightning_distill.utils.fingerprint import fingerprint_module

__all__ = ["DistillationModule", "teacher_source"]

_CKPT_KEY = "lightning_distill"

# Frozen teachers are in eval mode on purpose, so Lightning's notice about eval-mode modules at the
# start of training would show on every run of every recipe. `DistillationModule.on_fit_start` warns
# instead about eval-mode modules that are not frozen, and silences Lightning's notice only until
# `on_train_start` (Lightning checks between the two hooks), and only for this exact message.
_EVAL_MODE_NOTICE = r"Found \d+ module\(s\) in eval mode at the start of training"


def teacher_source(module: nn.Module) -> str:
    """Where a teacher came from: the ``distill_source`` string its builder attached, else its class."""
    source = getattr(module, "distill_source", None)
    if isinstance(source, str) and source:
        return source
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__} (built from its constructor arguments)"


class DistillationModule(L.LightningModule):
    """Base LightningModule for distillation recipes.

    Args:
        student: the network that learns.
        teacher: a single frozen teacher. Give either ``teacher`` or ``teachers``, not both.
        teachers: several frozen teachers (an ensemble); ``self.teachers[k]``.
        loss_weights: weight per loss term, e.g. ``{"kd": 1.0, "ce": 0.5}``. Terms not named get
            the recipe's default (``default_loss_weights``, else 1.0). Naming a term the recipe does
            not produce raises ``ValueError``.
        optimizer: a callable ``params -> Optimizer`` (LightningCLI: ``class_path`` +
            ``init_args``) used for the trainable parameters by the default
            ``configure_optimizers``.
        lr_scheduler: optional callable ``optimizer -> LRScheduler``, stepped every epoch.
        save_teachers: keep teacher weights in checkpoints. Off by default: a teacher is rebuilt
            from its own arguments, and the checkpoint records its source and fingerprint.
        on_nonfinite: what a non-finite training loss (NaN/inf total of a step or turn) does.
            ``"raise"`` (default): stop with ``FloatingPointError`` naming the term and the global
            step. ``"skip"``: skip that batch's optimizer step (automatic optimization: the step
            returns ``None``; manual: :meth:`update` neither backpropagates nor steps), count it as
            ``diag/skipped_steps``, warn once with the term and step, and still raise once
            ``max_skipped_steps`` steps of one turn are skipped in a row. Under several processes
            every rank skips together; Lightning refuses a skipped automatic step there (a
            ``RuntimeError``), so skipping under DDP works for manual-optimization recipes only.
            Recipes that do not list it in their constructor get it from the
            :class:`~lightning_distill.callbacks.nonfinite.NonFiniteLosses` callback.
        max_skipped_steps: under ``on_nonfinite="skip"``, how many consecutive skipped steps of one
            turn (``loss`` or ``loss_<turn>``) are tolerated before raising.

    Raises:
        ValueError: both or neither of ``teacher``/``teachers`` where the recipe requires one, an
            unknown loss term in ``loss_weights``, a negative weight, an unknown ``on_nonfinite`` or
            ``max_skipped_steps`` < 1.
        TypeError: a student or teacher that is not an ``nn.Module``.
    """

    #: Names of the loss terms ``training_step`` returns. Recipes set this.
    loss_terms: ClassVar[tuple[str, ...]] = ()
    #: Paper defaults for the loss weights; terms missing here weigh 1.0.
    default_loss_weights: ClassVar[dict[str, float]] = {}
    #: Whether the recipe needs at least one teacher.
    requires_teacher: ClassVar[bool] = True
    #: Whether some trainable parameters get no gradient in some steps (a stage that freezes a part, or a
    #: part trained only in a later stage): DDP must then look for unused parameters. Manual optimization
    #: (turns) implies it.
    trains_parameters_by_stage: ClassVar[bool] = False
    #: Prefixes of module state that holds every rank's samples (a queue or memory bank filled with the
    #: all-gathered batch): equal on all ranks, but not what one process holds when every rank sees the
    #: same data, so the strategy matrix's same-data comparison with one process leaves it out.
    global_batch_state: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        teachers: Sequence[nn.Module] | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        save_teachers: bool = False,
        on_nonfinite: Literal["raise", "skip"] = "raise",
        max_skipped_steps: int = 10,
    ) -> None:
        super().__init__()
        if not isinstance(student, nn.Module):
            raise TypeError(f"`student` must be an nn.Module, got {type(student).__name__}.")
        if teacher is not None and teachers is not None:
            raise ValueError(
                "Give either `teacher` or `teachers`, not both; set `model.init_args.teacher` for one "
                "teacher or `model.init_args.teachers` for an ensemble."
            )
        found = [teacher] if teacher is not None else list(teachers or [])
        for k, t in enumerate(found):
            if not isinstance(t, nn.Module):
                raise TypeError(f"`teachers[{k}]` must be an nn.Module, got {type(t).__name__}.")
        if self.requires_teacher and not found:
            raise ValueError(
                f"{type(self).__name__} needs a teacher: set `model.init_args.teacher` (or `teachers`)."
            )
        self.student = student
        self.teachers = nn.ModuleList(found)
        self._frozen_names: list[str] = ["teachers"]
        self.teachers.requires_grad_(False).eval()

        self.loss_weights = self._resolve_loss_weights(loss_weights)
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.save_teachers = save_teachers
        self.on_nonfinite = on_nonfinite
        self.max_skipped_steps = max_skipped_steps
        self._teacher_fingerprints: list[str] | None = None
        self._teacher_metrics_pending = {"val": True, "test": True}
        # Builders of pretrained models (trained_classifier, transformers' from_pretrained) return
        # them in eval mode, and Lightning keeps the mode a module arrives in: start the student
        # (and any other trainable part) in train mode, the frozen modules in eval mode.
        self.train()

    # ------------------------------------------------------------------ teachers
    @property
    def teacher(self) -> nn.Module:
        """The teacher, when there is exactly one (else use ``self.teachers``)."""
        if len(self.teachers) != 1:
            raise AttributeError(
                f"`teacher` is defined for exactly one teacher; this module has {len(self.teachers)}. "
                "Use `self.teachers`."
            )
        return self.teachers[0]

    def teacher_sources(self) -> list[str]:
        """Where each teacher came from (see :func:`teacher_source`); recorded in checkpoints."""
        return [teacher_source(t) for t in self.teachers]

    @torch.no_grad()
    def teacher_outputs(self, *args: Any, **kwargs: Any) -> list[Any]:
        """Run every teacher on the same inputs without gradient; one output per teacher."""
        return [t(*args, **kwargs) for t in self.teachers]

    def register_frozen(self, name: str, module: nn.Module) -> nn.Module:
        """Attach ``module`` as a frozen submodule: no grad, always eval, outside every optimizer.

        Unlike teachers, registered frozen modules (an EMA copy, a fixed random network) are kept in
        checkpoints, since they cannot be rebuilt from arguments.
        """
        if not name.isidentifier():
            raise ValueError(f"`name` must be a Python identifier, got {name!r}.")
        module.requires_grad_(False).eval()
        setattr(self, name, module)
        if name not in self._frozen_names:
            self._frozen_names.append(name)
        return module

    def frozen_modules(self) -> Iterator[nn.Module]:
        """Teachers and every module registered with ``register_frozen``."""
        for name in self._frozen_names:
            module = getattr(self, name, None)
            if isinstance(module, nn.Module):
                yield module

    def train(self, mode: bool = True) -> DistillationModule:
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    # ------------------------------------------------------- non-finite losses
    @property
    def on_nonfinite(self) -> str:
        """``"raise"`` or ``"skip"``: what a non-finite training loss does (see the class docstring)."""
        return self._on_nonfinite

    @on_nonfinite.setter
    def on_nonfinite(self, value: str) -> None:
        if value not in ("raise", "skip"):
            raise ValueError(
                f"`on_nonfinite` must be 'raise' or 'skip', got {value!r}; set `model.init_args.on_nonfinite` "
                "(or the `NonFiniteLosses` callback's `on_nonfinite`)."
            )
        self._on_nonfinite = value

    @property
    def max_skipped_steps(self) -> int:
        """Consecutive skipped steps of one turn tolerated under ``on_nonfinite="skip"``."""
        return self._max_skipped_steps

    @max_skipped_steps.setter
    def max_skipped_steps(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"`max_skipped_steps` must be an integer >= 1, got {value!r}; set `model.init_args.max_skipped_steps`."
            )
        self._max_skipped_steps = value

    _skipped_steps: int = 0
    _skipped_in_a_row: dict[str, int] | None = None

    def _nonfinite_decision(
        self, terms: Mapping[str, torch.Tensor], total: torch.Tensor, total_name: str
    ) -> bool:
        """Whether to skip this step: ``False`` when ``total`` is finite, raises under ``"raise"``.

        Under a multi-process strategy every rank skips when any rank's total is not finite, so the
        ranks keep stepping together.
        """
        in_a_row = self._skipped_in_a_row if self._skipped_in_a_row is not None else {}
        self._skipped_in_a_row = in_a_row
        bad = not bool(torch.isfinite(total.detach()).all())  # one host sync per step, on the total only
        if self.on_nonfinite == "skip" and self._trainer is not None and self.trainer.world_size > 1:
            bad = bool(self.trainer.strategy.reduce_boolean_decision(bad, all=False))
        if not bad:
            in_a_row[total_name] = 0
            return False
        if self.on_nonfinite == "raise":
            self._raise_non_finite(terms, total_name)
        self._skipped_steps += 1
        in_a_row[total_name] = in_a_row.get(total_name, 0) + 1
        step = self.trainer.global_step if self._trainer is not None else None
        names = self._non_finite_names(terms)
        if in_a_row[total_name] >= self.max_skipped_steps:
            raise FloatingPointError(
                f"{type(self).__name__}: the loss `{total_name}` was not finite {in_a_row[total_name]} steps in a row "
                f"(limit `max_skipped_steps`={self.max_skipped_steps}), the last at global step {step}; non-finite "
                f"term(s): {names}. Skipping no longer helps: check the data for NaN/inf or lower the learning rate."
            )
        if self._skipped_steps == 1:
            rank_zero_warn(
                f"{type(self).__name__}: the loss `{total_name}` is not finite at global step {step} (term(s) "
                f"{names}); skipping this step (on_nonfinite='skip'). Further skips are counted as "
                f"`diag/skipped_steps`; {self.max_skipped_steps} in a row stop the run."
            )
        if self._trainer is not None:
            self.log_diagnostics({"skipped_steps": float(self._skipped_steps)})
        return True

    @staticmethod
    def _non_finite_names(terms: Mapping[str, torch.Tensor]) -> list[str]:
        bad = [name for name, value in terms.items() if not bool(torch.isfinite(value.detach()).all())]
        return bad or list(terms)

    # --------------------------------------------------------------- loss terms
    def _resolve_loss_weights(self, given: Mapping[str, float] | None) -> dict[str, float]:
        weights = {term: float(self.default_loss_weights.get(term, 1.0)) for term in self.loss_terms}
        for term, value in (given or {}).items():
            if self.loss_terms and term not in self.loss_terms:
                raise ValueError(
                    f"`loss_weights` names an unknown term {term!r}; {type(self).__name__} produces "
                    f"{list(self.loss_terms)}. Fix `model.init_args.loss_weights`."
                )
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(
                    f"`loss_weights[{term!r}]` must be a number >= 0, got {value!r}; "
                    "fix `model.init_args.loss_weights`."
                )
            weights[term] = float(value)
        return weights

    def log_losses(
        self, terms: Mapping[str, torch.Tensor], *, stage: str = "train"
    ) -> dict[str, torch.Tensor]:
        """Weigh, sum and log named loss terms; return ``{"loss": total, **detached terms}``.

        For automatic optimization (``training_step`` returns this). Each term is logged per step
        as ``<stage>/<term>`` and the weighted sum as ``<stage>/loss`` (stable names, the same
        across recipes). A term with weight 0 is logged but not added. Recipes that step their
        own optimizers use :meth:`update` instead.

        Returns ``None`` (Lightning then skips the batch's optimizer step) when the training total
        is not finite and ``on_nonfinite="skip"``; nothing of that step is logged but
        ``diag/skipped_steps``.

        Raises:
            ValueError: a term the recipe did not declare in ``loss_terms``, an empty dict, or
                every weight 0.
            FloatingPointError: a non-finite total (``on_nonfinite="raise"``, or too many skips in
                a row), naming the term and the global step.
        """
        total, skipped = self._weigh_and_log(terms, stage=stage, total_name="loss")
        if skipped:
            return None  # type: ignore[return-value]
        return {"loss": total, **{k: v.detach() for k, v in terms.items()}}

    def _weigh_and_log(
        self, terms: Mapping[str, torch.Tensor], *, stage: str, total_name: str
    ) -> tuple[torch.Tensor, bool]:
        """``Σ loss_weights[term] * value`` over ``terms``; logs each term and the total as ``<stage>/<name>``.

        Returns the total and whether to skip the step: a non-finite training total under
        ``on_nonfinite="skip"`` (then nothing is logged but ``diag/skipped_steps``).
        """
        if not terms:
            raise ValueError("`terms` is empty: a training step must return at least one loss term.")
        total: torch.Tensor | None = None
        for name, value in terms.items():
            if name not in self.loss_weights:
                raise ValueError(
                    f"Loss term {name!r} is not declared in {type(self).__name__}.loss_terms "
                    f"{list(self.loss_terms)}; add it there."
                )
            weight = self.loss_weights[name]
            if weight != 0.0:
                total = value * weight if total is None else total + value * weight
        if total is None:
            raise ValueError(
                f"Every loss term of {list(terms)} has weight 0; nothing would be optimised. Check "
                "`model.init_args.loss_weights`."
            )
        if stage != "train":
            if not bool(torch.isfinite(total.detach()).all()):
                self._raise_non_finite(terms, total_name)
        elif self._nonfinite_decision(terms, total, total_name):
            return total, True
        batch_size = self._batch_size_hint
        for name, value in terms.items():
            self.log(f"{stage}/{name}", value.detach(), on_step=True, on_epoch=False, batch_size=batch_size)
        self.log(
            f"{stage}/{total_name}",
            total.detach(),
            on_step=True,
            on_epoch=False,
            prog_bar=True,
            batch_size=batch_size,
        )
        return total, False

    def _raise_non_finite(self, terms: Mapping[str, torch.Tensor], total_name: str) -> None:
        bad = self._non_finite_names(terms)
        step = self.trainer.global_step if self._trainer is not None else None
        raise FloatingPointError(
            f"{type(self).__name__}: the loss `{total_name}` is not finite at global step {step}; non-finite "
            f"term(s): {bad} (values {[float(terms[n].detach().float().mean()) for n in bad]}). "
            "Nothing was stepped. Check the data for NaN/inf, lower the learning rate or set `max_grad_norm`; "
            "`--trainer.detect_anomaly=true` finds the operation that produced it; `on_nonfinite='skip'` "
            "skips such steps instead."
        )

    _batch_size_hint: int | None = None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._batch_size_hint = _infer_batch_size(batch)

    @staticmethod
    def check_output_shapes(student_output: torch.Tensor, teacher_output: torch.Tensor) -> None:
        """Raise a clear error when the student's and the teacher's outputs differ in shape.

        Raises:
            ValueError: naming both shapes and the student argument to change.
        """
        if student_output.shape != teacher_output.shape:
            raise ValueError(
                f"Student output {tuple(student_output.shape)} does not match the teacher's "
                f"{tuple(teacher_output.shape)}; build the student with `num_classes`={teacher_output.shape[-1]} "
                "(`model.init_args.student.init_args.num_classes`)."
            )

    # -------------------------------------------------------------- evaluation
    def evaluate(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Metrics of ``model`` on one batch, averaged over the batch. Default: classification.

        Override for other tasks. The default expects ``(x, y)`` batches (extra items ignored) and
        a model returning logits ``(B, K)``; samples with label ``-1`` (unlabelled) are skipped.
        """
        x, y = batch[0], batch[1]
        logits = model(x)
        keep = y >= 0
        logits, y = logits[keep], y[keep]
        return {
            "acc": (logits.argmax(dim=-1) == y).float().mean(),
            "ce": F.cross_entropy(logits.float(), y),
        }

    def _evaluation_step(self, batch: Any, stage: str) -> None:
        batch_size = _infer_batch_size(batch)
        metrics = self.evaluate(self.student, batch)
        self.log_dict(
            {f"{stage}/{k}": v for k, v in metrics.items()},
            on_epoch=True,
            sync_dist=True,
            batch_size=batch_size,
            prog_bar=True,
        )
        if self._teacher_metrics_pending.get(stage, False) and not self.trainer.sanity_checking:
            for k, teacher in enumerate(self.teachers):
                name = "teacher" if len(self.teachers) == 1 else f"teacher{k}"
                with torch.no_grad():
                    t_metrics = self.evaluate(teacher, batch)
                self.log_dict(
                    {f"{stage}/{name}_{m}": v for m, v in t_metrics.items()},
                    on_epoch=True,
                    sync_dist=True,
                    batch_size=batch_size,
                )

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._teacher_metrics_pending["val"] = False

    def on_test_epoch_end(self) -> None:
        self._teacher_metrics_pending["test"] = False

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.student(x)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.student(*args, **kwargs)

    # -------------------------------------------------------------- optimizers
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that learn: everything with ``requires_grad`` outside the frozen modules."""
        frozen = {id(p) for m in self.frozen_modules() for p in m.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in frozen]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(self.trainable_parameters())
        if self.lr_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.lr_scheduler(optimizer)}}

    #: Why the recipe does not shard, said when a sharding strategy is asked for (docs/strategies.md).
    sharding_refusal: ClassVar[str] = (
        "it has no FSDP2 plan (`shard`, the `fully_shard` of its parts), so its trainable parts would be neither sharded "
        "nor averaged across ranks, and its steps read parameters outside forward (EMA updates, hooks, "
        "synthetic images), where a sharded module holds only its local shard. Use `--trainer.strategy=ddp`"
    )

    def shard(self, mesh: Any) -> None:
        """The recipe's FSDP2 plan: ``fully_shard`` its trainable parts on ``mesh`` (the data-parallel mesh).

        Called by :meth:`configure_model` under ``ModelParallelStrategy``; a recipe that shards
        overrides it (helpers in :mod:`lightning_distill.utils.sharding`, the plans in
        docs/strategies.md). The base has no plan: :attr:`sharding_refusal` says why.
        """
        raise NotImplementedError(f"{type(self).__name__} has no sharding plan: {self.sharding_refusal}.")

    def configure_model(self) -> None:
        """Apply the recipe's sharding plan or refuse sharding at setup; prepare DDP for turn-based recipes.

        Under ``ModelParallelStrategy`` a recipe that overrides :meth:`shard` is sharded by it (on the
        data-parallel mesh); every other recipe, and every recipe under ``FSDPStrategy`` (FSDP1,
        which wraps the whole module), is refused. Under DDP, a recipe with manual optimization (a
        fake score, a discriminator and a generator stepped in turns) leaves some parameters without
        a gradient in each backward, which DDP refuses unless it looks for unused parameters: that
        is switched on here unless the strategy names ``find_unused_parameters``; so it is for a recipe
        with :attr:`trains_parameters_by_stage` (a part frozen, or trained only, in some stages).

        Raises:
            RuntimeError: under ``FSDPStrategy`` or ``ModelParallelStrategy``, naming the strategy and
                :attr:`sharding_refusal` (or, for a recipe with a plan under FSDP1, the strategy to use).
        """
        strategy = self._trainer.strategy if self._trainer is not None else None
        name = type(strategy).__name__
        has_plan = type(self).shard is not DistillationModule.shard
        if name == "ModelParallelStrategy" and has_plan:
            from lightning_distill.utils.sharding import data_parallel_mesh

            self.shard(data_parallel_mesh(strategy.device_mesh))
            return
        if name in ("FSDPStrategy", "ModelParallelStrategy"):
            reason = self.sharding_refusal
            if has_plan:  # FSDPStrategy
                reason = (
                    "FSDP1 wraps the whole module in flat parameters and this recipe's plan is FSDP2's "
                    "`fully_shard`. Use `--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy` "
                    "(`tensor_parallel_size=1`)"
                )
            raise RuntimeError(f"{type(self).__name__} cannot run under {name}: {reason}.")
        ddp_kwargs = getattr(strategy, "_ddp_kwargs", None)  # DDPStrategy keeps the DDP arguments there
        by_turn_or_stage = not self.automatic_optimization or self.trains_parameters_by_stage
        if by_turn_or_stage and isinstance(ddp_kwargs, dict):
            ddp_kwargs.setdefault("find_unused_parameters", True)

    def on_fit_start(self) -> None:
        warnings.filterwarnings("ignore", message=_EVAL_MODE_NOTICE)
        self._eval_notice_filter = warnings.filters[0]
        frozen_modules = {id(m) for f in self.frozen_modules() for m in f.modules()}
        in_eval = [n for n, m in self.named_modules() if not m.training and id(m) not in frozen_modules]
        if in_eval:
            rank_zero_warn(
                f"{len(in_eval)} trainable module(s) are in eval mode at the start of fit (e.g. {in_eval[:3]}); "
                "Lightning keeps that mode, so their dropout/BatchNorm behave as in evaluation. Call "
                "`.train()` on them, or freeze them with `register_frozen` if that is intended."
            )
        frozen = {id(p) for m in self.frozen_modules() for p in m.parameters()}
        for k, opt in enumerate(self.trainer.optimizers):
            for group in opt.param_groups:
                if any(id(p) in frozen for p in group["params"]):
                    raise RuntimeError(
                        f"Optimizer {k} holds parameters of a frozen module (a teacher or a registered "
                        "frozen copy). Build optimizers from `self.trainable_parameters()`."
                    )

    def on_train_start(self) -> None:
        notice = getattr(self, "_eval_notice_filter", None)
        if notice is not None and notice in warnings.filters:
            warnings.filters.remove(notice)
        self._eval_notice_filter = None

    def update(
        self,
        optimizer: Any,
        terms: Mapping[str, torch.Tensor],
        *,
        turn: str,
        max_grad_norm: float | None = None,
    ) -> torch.Tensor:
        """One manual-optimization turn: weigh, log, toggle, backpropagate, clip, step.

        The one way a recipe with ``automatic_optimization = False`` updates a network, so every
        recipe logs by the same rule: each term as ``train/<term>`` and the turn's weighted total
        as ``train/loss_<turn>``. In order: weigh ``terms`` by ``loss_weights`` (a term of weight 0
        is logged, not added), toggle ``optimizer`` (other optimizers' parameters get no gradient),
        zero its gradients, ``manual_backward``, clip to ``max_grad_norm`` (norm), step, untoggle,
        then step the learning-rate scheduler built for this optimizer, if any.

        Args:
            optimizer: one of ``self.optimizers()``.
            terms: the turn's named loss terms (declared in ``loss_terms``), scalars.
            turn: the turn's name, e.g. ``"generator"``, ``"fake_score"``, ``"discriminator"``.
            max_grad_norm: clip the gradient norm of this optimizer's parameters; ``None``: no clipping.

        Returns:
            The detached weighted total (not finite when the turn was skipped under
            ``on_nonfinite="skip"``: then nothing is backpropagated, stepped or scheduled).

        Raises:
            ValueError: an undeclared or empty set of terms, every weight 0, or a ``turn`` that
                is not an identifier.
            FloatingPointError: a non-finite total (``on_nonfinite="raise"``, or too many skips of
                this turn in a row), naming the term and the global step.
        """
        if not turn.isidentifier():
            raise ValueError(f"`turn` must be an identifier such as 'generator', got {turn!r}.")
        total, skipped = self._weigh_and_log(terms, stage="train", total_name=f"loss_{turn}")
        if skipped:
            return total.detach()
        self.toggle_optimizer(optimizer)
        optimizer.zero_grad(set_to_none=True)
        # Outside autocast, as torch advises for backward: `update` runs inside `training_step`, where
        # Lightning's mixed precision autocasts, and a custom autograd function's backward (spconv's) would
        # otherwise run its matmuls in bf16 (built-in ops' backward is unaffected).
        with torch.autocast(total.device.type, enabled=False):
            self.manual_backward(total)
        if max_grad_norm is not None:
            self.clip_gradients(optimizer, gradient_clip_val=max_grad_norm, gradient_clip_algorithm="norm")
        optimizer.step()
        self.untoggle_optimizer(optimizer)
        scheduler = self._scheduler_of(optimizer)
        if scheduler is not None:
            scheduler.step()
        return total.detach()

    def log_diagnostics(self, values: Mapping[str, torch.Tensor | float], *, prog_bar: bool = False) -> None:
        """Log quantities that are not loss terms (a realism score, a kept fraction) as ``diag/<name>`` per step."""
        for name, value in values.items():
            value = value.detach() if isinstance(value, torch.Tensor) else float(value)
            self.log(
                f"diag/{name}",
                value,
                on_step=True,
                on_epoch=False,
                prog_bar=prog_bar,
                batch_size=self._batch_size_hint,
            )

    def _scheduler_of(self, optimizer: Any) -> Any:
        """The learning-rate scheduler configured for ``optimizer`` (manual optimization steps it), else ``None``."""
        inner = getattr(optimizer, "optimizer", optimizer)
        for config in self.trainer.lr_scheduler_configs:
            if getattr(config.scheduler, "optimizer", None) is inner:
                return config.scheduler
        return None

    @staticmethod
    def is_update_step(iteration: int, every: int, *, offset: int = 0) -> bool:
        """True on iterations ``offset, offset + every, ...``: the update ratio of alternating schemes.

        Raises:
            ValueError: ``every`` < 1.
        """
        if every < 1:
            raise ValueError(f"`every` must be >= 1, got {every}.")
        return (iteration - offset) % every == 0 and iteration >= offset

    # ------------------------------------------------------------- checkpoints
    #: How this module was built: the ``class_path``/``init_args`` config of the recipe, student and
    #: teachers included. The ``lightning-distill`` command sets it; checkpoints record it, so that
    #: :meth:`load_from_checkpoint` rebuilds the recipe without its config.
    build_config: dict[str, Any] | None = None

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | os.PathLike,
        map_location: Any = None,
        hparams_file: str | os.PathLike | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> DistillationModule:
        """Load a recipe from its checkpoint alone: ``MEALV2.load_from_checkpoint(path)``.

        The recipe, student and teachers are rebuilt from the checkpoint's ``model_config`` (see
        :func:`~lightning_distill.utils.checkpoints.rebuild_from_checkpoint`); keyword arguments
        override its ``init_args``. Given ``student``/``teacher``/``teachers`` or ``hparams_file``,
        Lightning's own loading is used.

        Raises:
            CheckpointError: an unreadable file, a checkpoint of another recipe than ``cls``, or one
                that records no build config when the modules are not given.
        """
        if {"student", "teacher", "teachers"} & kwargs.keys() or hparams_file is not None:
            return super().load_from_checkpoint(
                checkpoint_path, map_location, hparams_file, strict, weights_only, **kwargs
            )
        return rebuild_from_checkpoint(
            cls, checkpoint_path, map_location=map_location or "cpu", strict=strict, overrides=kwargs
        )

    def teacher_fingerprints(self) -> list[str]:
        """Fingerprints of the teachers' weights (computed once; teachers are frozen)."""
        if self._teacher_fingerprints is None:
            self._teacher_fingerprints = [fingerprint_module(t) for t in self.teachers]
        return self._teacher_fingerprints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[_CKPT_KEY] = {
            "teacher_sources": self.teacher_sources(),
            "teacher_fingerprints": self.teacher_fingerprints(),
            "teachers_saved": bool(self.save_teachers),
            "recipe": class_path_of(self),
            "student_class": class_path_of(self.student),
            "model_config": self.build_config,
        }
        state = checkpoint.get("state_dict")
        if not self.save_teachers and isinstance(state, dict):
            checkpoint["state_dict"] = {k: v for k, v in state.items() if not k.startswith("teachers.")}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get(_CKPT_KEY, {})
        state = checkpoint.get("state_dict")
        if meta.get("teachers_saved", True) or not isinstance(state, dict):
            return
        # The teachers were left out: take the ones this module was built with.
        for key, value in self.teachers.state_dict(prefix="teachers.").items():
            state.setdefault(key, value)
        recorded = meta.get("teacher_fingerprints")
        # Checkpoints written before the one fingerprint (utils/fingerprint.py) hold 16-hex-digit
        # values of another hash: nothing to compare them with, so no warning.
        comparable = recorded is not None and all(str(r).startswith("sha256=") for r in recorded)
        if comparable and recorded != self.teacher_fingerprints():
            rank_zero_warn(
                f"The teachers differ from those the checkpoint was trained with (recorded "
                f"{recorded}, now {self.teacher_fingerprints()}; sources {meta.get('teacher_sources')}). "
                "Training continues with the current teachers; pass the original teacher to silence this."
            )


def _infer_batch_size(batch: Any) -> int | None:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0].shape[0]
    if isinstance(batch, Mapping):
        for value in batch.values():
            if isinstance(value, torch.Tensor) and value.ndim > 0:
                return value.shape[0]
    return None
