"""Framework overhead: a recipe's training step under a Lightning Trainer vs a hand-written PyTorch loop.

For three recipes of different shapes (``kd``: automatic optimization; ``dmd2``: manual
optimization, a generator turn every 5th iteration and a fake-score turn every iteration;
``datadam``: dataset distillation, a fresh random network per step and gradients into the
synthetic images) the same training is run twice on the same batches, held in memory:

- **Lightning**: the recipe (``DistillationModule``) in a ``lightning.Trainer`` (CPU, no logger,
  checkpoints, progress bar or validation; the recipe's own callbacks such as ``FeatureHooks``);
- **hand loop**: a plain ``for batch in batches`` loop calling the same networks and the same loss
  functions of ``lightning_distill.losses`` (through the recipe's methods, so the math is the
  recipe's), summing the weighted terms in the same order, ``zero_grad``/``backward``/
  ``clip_grad_norm_``/``step`` with the same optimizers; no ``self.log``, no
  ``toggle_optimizer`` (it freezes the other turn's parameters with ``requires_grad_``), no
  checks, no hooks but the feature taps the math needs.

Before timing, the first ``CHECK_STEPS`` steps of both run from the same initial state and their
loss terms (each term and each turn's total) must agree to float tolerance (they are bitwise
equal on CPU). A third variant, **Lightning without ``self.log``** (the module's ``log`` a no-op),
separates the cost of logging from that of the Trainer loop. Time per step is the interval between
the ends of consecutive steps (data fetch, hooks and optimizer included), the first ``warmup``
steps of each block excluded; per seed the blocks run in ABCCBA order so that drift in machine load
hits all variants alike, each block starting from a fresh copy of the same initial module.
Reported: the median over blocks of the block median of process CPU time (what the step costs;
wall-clock time on a shared machine mostly measures the other processes) and the median of the
paired ratios to the hand loop, plus the wall-clock ratio.

Two sizes per recipe: a small one where framework cost shows (``toy``, the recipe's own config;
``tiny`` for DataDAM, whose toy config is already dominated by its random ConvNet) and one where
the model dominates (``large``: bigger networks and batches; DataDAM's ``toy``); goal there: ratio
<= 1.05. ``--profile`` runs cProfile over a Lightning block of each recipe's small size and lists
where the time outside the model goes (``benchmarks/results/overhead_profile.txt``).

Usage (from the repository root)::

    python benchmarks/overhead.py --threads 1              # ~10 CPU-minutes; writes docs/strategies.md
    python benchmarks/overhead.py --quick                  # smoke run, results/quick/overhead.md

``--seeds`` are the seeds of the model init and data; each seed gives one ABCCBA set of blocks.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import itertools
import json
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
import yaml
from _harness import ROOT, bench_parser, recipe_cli, results_dir
from _report import generated_header, machine_line, markdown_table, write_block
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_distill.losses import kd_loss, labelled_cross_entropy

DOC = ROOT / "docs" / "strategies.md"
CHECK_STEPS = 6
#: Loss values of the two loops must agree to this (relative and absolute) tolerance.
RTOL, ATOL = 1e-5, 1e-7


# ----------------------------------------------------------------------------- configs per size
def _load(slug: str, name: str = "config.yaml") -> dict[str, Any]:
    return yaml.safe_load((ROOT / "recipes" / slug / name).read_text())


def _small_cnn(width: int, depth: int) -> dict[str, Any]:
    return {"class_path": "lightning_distill.models.SmallCNN", "init_args": {"width": width, "depth": depth}}


def kd_config(size: str) -> dict[str, Any]:
    """recipes/kd/config.yaml without the picture callback and the epoch-wise scheduler.

    ``toy`` keeps the trained teacher (SmallCNN width 32) and the width-8 student, batch 64, 16x16;
    ``large``: student SmallCNN width 32, teacher width 64 (random weights: the step's cost does not
    depend on them), batch 128; ``tiny`` (tests): width 4/8 depth 1, batch 16.
    """
    config = _load("kd")
    config["trainer"].pop("callbacks", None)
    init = config["model"]["init_args"]
    init.pop("lr_scheduler", None)
    if size == "large":
        init["student"], init["teacher"] = _small_cnn(32, 2), _small_cnn(64, 2)
        config["data"]["init_args"]["batch_size"] = 128
    elif size == "tiny":
        init["student"], init["teacher"] = _small_cnn(4, 1), _small_cnn(8, 1)
        config["data"]["init_args"]["batch_size"] = 16
    return config


def dmd2_config(size: str) -> dict[str, Any]:
    """recipes/dmd2/config.yaml (ring GMM, analytic teacher, MLP generator and fake score) without callbacks.

    ``toy``: MLPs hidden 64 depth 3, batch 256; ``large``: hidden 256 depth 3, batch 512;
    ``tiny`` (tests): hidden 16 depth 1, batch 32. ``generator_update_every`` stays 5.
    """
    config = _load("dmd2")
    config["trainer"].pop("callbacks", None)
    init, data = config["model"]["init_args"], config["data"]["init_args"]
    hidden, depth, batch = {"toy": (64, 3, 256), "large": (256, 3, 512), "tiny": (16, 1, 32)}[size]
    for key in ("student", "fake_score"):
        init[key]["init_args"].update(hidden=hidden, depth=depth)
    data.update(batch_size=batch, num_val=200, num_test=200)
    return config


def datadam_config(size: str) -> dict[str, Any]:
    """recipes/datadam/config.yaml: 8x8 digits, 10 images per class, ConvNet-3 width 128, 64 real per class.

    The toy config is already dominated by the random ConvNet (about 150 ms a step on one core), so
    it is the "large" case here; ``tiny`` (width 16, 8 real images per class) shows the framework.
    ``large``: 16x16 digits, ConvNet-3 width 256 (not in the default run: seconds per step).
    """
    config = _load("datadam")
    init, data = config["model"]["init_args"], config["data"]["init_args"]
    if size == "large":
        data["data"]["init_args"] = {"size": 16}
        init["synthetic"]["init_args"]["image_shape"] = [1, 16, 16]
        init["synthetic"]["init_args"]["eval_spec"]["architecture"]["init_args"]["image_size"] = [16, 16]
        init["network"].update(image_size=[16, 16], width=256)
    elif size == "tiny":
        init["network"]["width"] = 16
        data["per_class"] = 8
    return config


# ----------------------------------------------------------------------------- hand-written steps
def weighted_total(module: Any, terms: dict[str, Tensor]) -> Tensor:
    """``Σ w_term * term`` in the order of ``terms``, terms of weight 0 left out (as the recipes sum them)."""
    total: Tensor | None = None
    for name, value in terms.items():
        weight = module.loss_weights[name]
        if weight != 0.0:
            total = value * weight if total is None else total + value * weight
    assert total is not None
    return total


def hand_turn(
    optimizer: torch.optim.Optimizer,
    total: Tensor,
    frozen: Sequence[nn.Parameter] = (),
    max_grad_norm: float | None = None,
) -> None:
    """zero_grad, backward (``frozen`` parameters without gradient), clip, step."""
    for p in frozen:
        p.requires_grad_(False)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if max_grad_norm is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    for p in frozen:
        p.requires_grad_(True)


def kd_hand_step(module: Any, optimizers: list, batch: Any, step: int) -> dict[str, Tensor]:
    """KnowledgeDistillation.training_step without the framework: teacher, student, KD + CE, one step."""
    x, y = batch[0], batch[1]
    with torch.no_grad():
        teacher_logits = module.teacher(x)
    student_logits = module.student(x)
    terms = {
        "kd": kd_loss(student_logits, teacher_logits, temperature=module.temperature),
        "ce": labelled_cross_entropy(student_logits, y),
    }
    total = weighted_total(module, terms)
    hand_turn(optimizers[0], total)
    return {**{k: v.detach() for k, v in terms.items()}, "loss": total.detach()}


def dmd2_hand_step(module: Any, optimizers: list, batch: Any, step: int) -> dict[str, Tensor]:
    """DMD2.training_step without the framework: the recipe's equations, two plain optimizer turns."""
    opt_gen, opt_fake = optimizers
    if module.gan_hooks is not None:
        module.gan_hooks.clear()
    real, cond = module.split_batch(batch)
    null_cond = module.null_condition(cond)
    module.record_sample_shape(real)
    rng = module.iteration_generator()
    generator_turn = module.iteration % module.generator_update_every == 0
    x_t, t = module.generator_input(real, cond, rng)
    with torch.set_grad_enabled(generator_turn):
        x0 = module.generate(x_t, t, cond)
    out: dict[str, Tensor] = {}
    if generator_turn:
        terms = module.generator_terms(x0, t, cond, null_cond, rng)
        total = weighted_total(module, terms)
        hand_turn(opt_gen, total, module.fake_score_parameters(), module.max_grad_norm)
        out.update({**{k: v.detach() for k, v in terms.items()}, "loss_generator": total.detach()})
    fake_terms = {"fake": module.fake_score_loss(x0, cond, rng)}
    if module.gan_head is not None:
        fake_terms["guidance_cls"] = module.guidance_cls_loss(real, x0, cond, cond, rng)[0]
    total = weighted_total(module, fake_terms)
    hand_turn(opt_fake, total, module.generator_parameters(), module.max_grad_norm)
    module.iteration += 1
    return {**out, **{k: v.detach() for k, v in fake_terms.items()}, "loss_fake_score": total.detach()}


def datadam_hand_step(module: Any, optimizers: list, batch: Any, step: int) -> dict[str, Tensor]:
    """DataDAM.training_step without the framework: random network, Siamese augmentation, SAM + MMD."""
    module.hooks.clear()
    real = batch[0]
    generator = torch.Generator().manual_seed(module.step_seed(step))
    module.sample_network(generator)
    real, syn = module.augment_pair(real, module.synthetic.images, generator)
    with torch.no_grad():
        real_taps, real_embedding = module.features(real)
    syn_taps, syn_embedding = module.features(syn)
    terms = {
        "sam": module.attention_loss(real_taps, syn_taps),
        "mmd": module.embedding_loss(real_embedding, syn_embedding),
    }
    total = weighted_total(module, terms)
    hand_turn(optimizers[0], total)
    return {**{k: v.detach() for k, v in terms.items()}, "loss": total.detach()}


def _attach_datadam(module: Any) -> None:
    module.hooks.attach(module)


def _attach_dmd2(module: Any) -> None:
    if module.gan_hooks is not None:
        module.gan_hooks.attach(module)


@dataclass(frozen=True)
class Case:
    """One recipe: its config per size, its hand-written step and what the hand loop attaches first."""

    slug: str
    shape: str
    config: Callable[[str], dict[str, Any]]
    hand_step: Callable[[Any, list, Any, int], dict[str, Tensor]]
    attach: Callable[[Any], None] | None = None
    #: ``{size: (steps, warmup)}`` of the default run: the small size first, the model-dominated one second.
    sizes: tuple[tuple[str, int, int], ...] = (("toy", 40, 6), ("large", 12, 3))


CASES = {
    "kd": Case("kd", "automatic optimization, one optimizer", kd_config, kd_hand_step),
    "dmd2": Case("dmd2", "manual optimization, 2 optimizers, 3 turns", dmd2_config, dmd2_hand_step, _attach_dmd2),
    "datadam": Case(
        "datadam", "dataset distillation (images learn)", datadam_config, datadam_hand_step, _attach_datadam,
        sizes=(("tiny", 30, 5), ("toy", 10, 2)),
    ),
}  # fmt: skip


# ----------------------------------------------------------------------------- preparing a case
@dataclass
class Prepared:
    case: Case
    size: str
    module: Any  # the pristine initial module; every run gets a deep copy
    batches: list[Any]


def prepare(case: Case, size: str, seed: int, steps: int, workdir: str | Path) -> Prepared:
    """Build the recipe from its config (as ``lightning-distill fit`` would) and ``steps`` in-memory batches."""
    cli = recipe_cli(case.config(size), seed, workdir=workdir)
    module, datamodule = cli.model, cli.datamodule
    datamodule.setup("fit")
    if case.slug == "datadam":  # what the recipe's setup does from the datamodule: the initial images
        x, y = datamodule.train_images()
        module.synthetic.initialize_from(x, y)
        module.on_train_images(x, y)
        module.seed = seed if module.seed is None else module.seed
    loader = datamodule.train_dataloader()
    batches = [
        tuple(b) if isinstance(b, (list, tuple)) else b
        for b in itertools.islice(itertools.chain.from_iterable(itertools.repeat(loader, 10**6)), steps)
    ]
    return Prepared(case, size, module, batches)


def _optimizers(module: Any) -> list[torch.optim.Optimizer]:
    found = module.configure_optimizers()
    if isinstance(found, dict):
        found = found["optimizer"]
    if isinstance(found, tuple) and len(found) == 2 and isinstance(found[0], list):
        found = found[0]
    return list(found) if isinstance(found, (list, tuple)) else [found]


# ----------------------------------------------------------------------------- the two loops
class StepClock(L.Callback):
    """Wall-clock and process-CPU stamps at the end of every training batch (and at train start)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def stamp(self) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int
    ) -> None:
        if not self.wall:
            self.stamp()

    def on_train_batch_end(self, *args: Any) -> None:
        self.stamp()

    def step_times(self, warmup: int) -> tuple[float, float]:
        """Median wall and CPU seconds per step after ``warmup`` steps."""
        wall = [b - a for a, b in zip(self.wall, self.wall[1:])][warmup:]
        cpu = [b - a for a, b in zip(self.cpu, self.cpu[1:])][warmup:]
        return statistics.median(wall), statistics.median(cpu)


class LossRecorder(L.Callback):
    """Records every ``train/<name>`` value the recipe logs (loss terms, turn totals), one dict per batch."""

    def __init__(self, module: Any) -> None:
        self.steps: list[dict[str, float]] = []
        inner = module.log

        def log(name: str, value: Any, *args: Any, **kwargs: Any) -> None:
            if name.startswith("train/") and self.steps:
                self.steps[-1][name.removeprefix("train/")] = float(value)
            inner(name, value, *args, **kwargs)

        module.log = log

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, idx: int) -> None:
        self.steps.append({})


def _no_log(*args: Any, **kwargs: Any) -> None:
    """Stands in for ``LightningModule.log`` in the "Lightning without ``self.log``" variant."""


def lightning_run(
    prepared: Prepared, *, record: bool = False, profile: cProfile.Profile | None = None, log: bool = True
) -> tuple[StepClock, list[dict[str, float]]]:
    """Train a copy of the initial module for every batch in a quiet ``Trainer``; its clock and losses.

    ``log=False`` replaces the module's ``self.log`` by a no-op (nothing reaches ``callback_metrics``).
    """
    module = copy.deepcopy(prepared.module)
    if not log:
        module.log = _no_log
    recorder = LossRecorder(module) if record else None
    clock = StepClock()
    callbacks = [clock] + ([recorder] if recorder is not None else [])
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
    loader = DataLoader(prepared.batches, batch_size=None)
    if profile is not None:
        profile.enable()
    trainer.fit(module, train_dataloaders=loader)
    if profile is not None:
        profile.disable()
    return clock, (recorder.steps if recorder is not None else [])


def hand_run(prepared: Prepared, *, record: bool = False) -> tuple[StepClock, list[dict[str, float]]]:
    """The hand-written loop on a copy of the initial module; its clock and losses."""
    module = copy.deepcopy(prepared.module)
    module.train()
    if prepared.case.attach is not None:
        prepared.case.attach(module)
    optimizers = _optimizers(module)
    clock, losses = StepClock(), []
    step = prepared.case.hand_step
    clock.stamp()
    for k, batch in enumerate(prepared.batches):
        out = step(module, optimizers, batch, k)
        clock.stamp()
        if record:
            losses.append({name: float(v) for name, v in out.items()})
    return clock, losses


def compare_losses(lightning: list[dict[str, float]], hand: list[dict[str, float]]) -> float:
    """Largest |difference| of the loss values of the two loops, step by step.

    Raises:
        AssertionError: a step logs other terms, or a value differs beyond ``RTOL``/``ATOL``.
    """
    assert len(lightning) == len(hand), f"{len(lightning)} Lightning steps vs {len(hand)} hand steps"
    worst = 0.0
    for k, (a, b) in enumerate(zip(lightning, hand)):
        assert a.keys() == b.keys(), f"step {k}: Lightning logged {sorted(a)}, the hand loop {sorted(b)}"
        for name in a:
            diff = abs(a[name] - b[name])
            assert diff <= ATOL + RTOL * abs(a[name]), f"step {k} {name}: {a[name]} vs {b[name]}"
            worst = max(worst, diff)
    return worst


def check_equal(prepared: Prepared, steps: int = CHECK_STEPS) -> float:
    """Run both loops for ``steps`` steps from the same state; the largest loss difference (asserts agreement)."""
    short = Prepared(prepared.case, prepared.size, prepared.module, prepared.batches[:steps])
    _, lightning = lightning_run(short, record=True)
    _, hand = hand_run(short, record=True)
    return compare_losses(lightning, hand)


# ----------------------------------------------------------------------------- measuring
VARIANTS = ("lightning", "nolog", "hand")


@dataclass
class Timing:
    """Per block: median step seconds, wall and CPU, of each variant (blocks paired by position)."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]

    def median(self, variant: str, kind: str = "cpu") -> float:
        return statistics.median(getattr(self, kind)[variant])

    def ratio(self, variant: str, kind: str = "cpu") -> float:
        """Median over paired blocks of ``variant / hand``."""
        times = getattr(self, kind)
        return statistics.median(x / y for x, y in zip(times[variant], times["hand"]))


def measure(prepareds: Iterable[Prepared], warmup: int) -> Timing:
    """Per prepared seed, blocks in ABCCBA order (Lightning, Lightning without self.log, hand, and back)."""
    timing = Timing({v: [] for v in VARIANTS}, {v: [] for v in VARIANTS})
    runs = {
        "lightning": lambda p: lightning_run(p),
        "nolog": lambda p: lightning_run(p, log=False),
        "hand": lambda p: hand_run(p),
    }
    for prepared in prepareds:
        for variant in (*VARIANTS, *reversed(VARIANTS)):
            clock, _ = runs[variant](prepared)
            wall, cpu = clock.step_times(warmup)
            timing.wall[variant].append(wall)
            timing.cpu[variant].append(cpu)
    return timing


def logs_per_step(prepared: Prepared, steps: int = CHECK_STEPS) -> float:
    """How many ``self.log`` calls the recipe makes per training step (mean over the first steps)."""
    module = copy.deepcopy(prepared.module)
    calls = [0]
    inner = module.log

    def counting_log(*args: Any, **kwargs: Any) -> None:
        calls[0] += 1
        inner(*args, **kwargs)

    module.log = counting_log
    short = Prepared(prepared.case, prepared.size, module, prepared.batches[:steps])
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(short.module, train_dataloaders=DataLoader(short.batches, batch_size=None))
    return calls[0] / steps


def profile_summary(prepared: Prepared, top: int = 12) -> str:
    """cProfile (process CPU time) of one Lightning block: the framework functions by own time."""
    profile = cProfile.Profile(time.process_time)  # CPU time: wall time on a loaded machine misleads
    lightning_run(prepared, profile=profile)
    stats = pstats.Stats(profile)
    total = stats.total_tt
    rows = []
    for (path, line, name), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = path.replace("\\", "/")
        if "/lightning/" in where or "/lightning_distill/" in where or "/torch/utils/data/" in where:
            short = where.split("site-packages/")[-1].split("/work/main/")[-1]
            rows.append((own, cumulative, calls, f"{short}:{line}({name})"))
    rows.sort(reverse=True)
    framework = sum(r[0] for r in rows)
    lines = [f"{prepared.case.slug} ({prepared.size}), {len(prepared.batches)} steps: profiled {total:.2f} s, "
             f"own time in lightning/lightning_distill/torch.utils.data functions {framework:.2f} s "
             f"({100 * framework / total:.0f}%)"]  # fmt: skip
    lines += [
        f"  {own * 1e3:8.1f} ms own {cum * 1e3:9.1f} ms cum {calls:7d} calls  {where}"
        for own, cum, calls, where in rows[:top]
    ]
    buffer = io.StringIO()
    pstats.Stats(profile, stream=buffer).sort_stats("cumulative").print_stats(25)
    return "\n".join(lines) + "\n\nBy cumulative time (all functions):\n" + buffer.getvalue()


# ----------------------------------------------------------------------------- script
def build_parser():
    parser = bench_parser(
        __file__, __doc__, quick="3 steps per block after 2 warm-up, the first size of each recipe only"
    )
    parser.add_argument(
        "--recipes", nargs="+", default=list(CASES), choices=list(CASES), help="recipes to run"
    )
    parser.add_argument(
        "--sizes", nargs="+", default=None, choices=["toy", "large", "tiny"],
        help="sizes (default per recipe: kd and dmd2 toy and large, datadam tiny and toy)",
    )  # fmt: skip
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per block (default per recipe and size)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="steps excluded per block (default per recipe and size)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="cProfile one Lightning block of each recipe's small size"
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="recipes measured at the same time, one process each"
    )
    parser.add_argument("--json", help=argparse.SUPPRESS)
    return parser


def _without_recipes(flags: list[str]) -> list[str]:
    """``flags`` without ``--recipes`` and its values."""
    out, skipping = [], False
    for flag in flags:
        if flag == "--recipes":
            skipping = True
        elif skipping and flag.startswith("--"):
            skipping = False
        if not skipping and not flag.startswith("--recipes="):
            out.append(flag)
    return out


def _load_line() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def run_recipe(slug: str, args: argparse.Namespace, workdir: str) -> dict[str, list[Any]]:
    """Every size of one recipe: table rows, per-block details, profiles and load averages."""
    case = CASES[slug]
    found: dict[str, list[Any]] = {"rows": [], "details": [], "profiles": [], "loads": []}
    defaults = {size: (steps, warmup) for size, steps, warmup in case.sizes}
    sizes = args.sizes or [size for size, _, _ in case.sizes]
    for size in sizes[:1] if args.quick else sizes:
        steps, warmup = defaults.get(size, (10, 2))
        steps, warmup = (
            (3, 2)
            if args.quick
            else (args.steps or steps, args.warmup if args.warmup is not None else warmup)
        )
        prepareds = [prepare(case, size, seed, warmup + steps, workdir) for seed in args.seeds]
        worst = check_equal(prepareds[0])
        n_logs = logs_per_step(prepareds[0])
        timing = measure(prepareds, warmup)
        found["loads"].append(_load_line())
        hand, light, nolog = (timing.median(v) for v in ("hand", "lightning", "nolog"))
        ratio, ratio_nolog = timing.ratio("lightning"), timing.ratio("nolog")
        flag = "" if size != sizes[-1] or ratio <= 1.05 else " **> 1.05**"
        found["rows"].append([f"`{slug}`", size, f"{hand * 1e3:.2f}", f"{light * 1e3:.2f}", f"{(light - hand) * 1e3:+.2f}",
                              f"{ratio:.3f}{flag}", f"{nolog * 1e3:.2f}", f"{ratio_nolog:.3f}", f"{n_logs:.1f}",
                              f"{timing.ratio('lightning', 'wall'):.3f}", f"{worst:.1e}"])  # fmt: skip
        found["details"].append(f"{slug} {size} ({steps} timed steps after {warmup}): CPU s/step per block "
                                f"{ {v: [round(x, 5) for x in timing.cpu[v]] for v in VARIANTS} }; wall s/step "
                                f"{ {v: [round(x, 5) for x in timing.wall[v]] for v in VARIANTS} }")  # fmt: skip
        print(" | ".join(map(str, found["rows"][-1])), flush=True)
        if args.profile and size == sizes[0]:
            found["profiles"].append(profile_summary(prepareds[0]))
    return found


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().start(argv)
    for message in (".*no `val_dataloader`.*", ".*distilled set was not saved.*"):
        warnings.filterwarnings("ignore", message)
    if args.json:  # a worker of --jobs: one recipe, results to a file
        with tempfile.TemporaryDirectory() as workdir:
            Path(args.json).write_text(json.dumps(run_recipe(args.recipes[0], args, workdir)))
        return
    start = time.perf_counter()
    loads = [_load_line()]
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        if args.jobs > 1 and len(args.recipes) > 1:  # one process per recipe; CPU times do not mind
            flags = [a for a in argv if a != "--jobs" and not a.startswith("--jobs=")]
            if "--jobs" in argv:
                del flags[argv.index("--jobs")]
            outs = {slug: Path(workdir) / f"{slug}.json" for slug in args.recipes}
            workers = [subprocess.Popen([sys.executable, __file__, *_without_recipes(flags), "--recipes", slug,
                                         "--json", str(out)]) for slug, out in outs.items()]  # fmt: skip
            for worker in workers:
                if worker.wait() != 0:
                    raise RuntimeError(f"an overhead worker failed: {worker.args}")
            results = [json.loads(out.read_text()) for out in outs.values()]
        else:
            results = [run_recipe(slug, args, workdir) for slug in args.recipes]
    rows = [row for r in results for row in r["rows"]]
    details = [d for r in results for d in r["details"]]
    profiles = [p for r in results for p in r["profiles"]]
    loads += [load for r in results for load in r["loads"]]
    minutes = (time.perf_counter() - start) / 60
    table = markdown_table(
        ["recipe", "size", "hand ms/step", "Lightning ms/step", "Δ ms", "ratio", "Lightning w/o `self.log` ms",
         "ratio w/o log", "`self.log` calls/step", "ratio (wall clock)", "max \\|Δ loss\\| first steps"],
        rows, align="llrrrrrrrrr",
    )  # fmt: skip
    body = "\n\n".join([
        generated_header("benchmarks/overhead.py", args.command, minutes * 60),
        f"{machine_line()} Load average (1 min) during the run: {', '.join(loads)} (2 cores shared with other jobs). "
        f"Seeds {' '.join(map(str, args.seeds))}: per seed six blocks in ABCCBA order (Lightning, Lightning with "
        f"`self.log` a no-op, hand loop); per block the median step time after the warm-up steps. Times are "
        f"process CPU time (the wall-clock ratio is the last column but one); the table shows the median over "
        f"blocks and the median of the paired ratios to the hand loop.",
        table,
    ])  # fmt: skip
    out = results_dir(args)
    text = "# Framework overhead\n\n" + body + "\n\n```\n" + "\n".join(details) + "\n```\n"
    (out / "overhead.md").write_text(text)
    if profiles:
        (out / "overhead_profile.txt").write_text("\n\n".join(profiles))
        print("\n\n".join(p.split("\n\nBy cumulative")[0] for p in profiles))
    if not args.quick and not args.no_readme:
        write_block(DOC, body, key="overhead")
    print(f"wrote {out / 'overhead.md'} ({minutes:.1f} min)")


if __name__ == "__main__":
    main()
