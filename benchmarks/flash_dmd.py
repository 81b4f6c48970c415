"""Flash-DMD on the exact-score bench: the few-step student vs the perfect teacher, and reward hacking with/without distillation.

Every row is ``recipes/flash_dmd/config.yaml`` (an 8-mode ring, the analytic teacher, a random MLP
generator and fake score, a two-step student with the timestep-aware split, a reward centred on
the mode at (4, 0)) built through :class:`lightning_distill.cli.DistillCLI` with only the seed and
the keys named in the row changed; validation is off during the fits. Stage 1 (distillation,
iterations 0-506) is trained once per seed and checkpointed; the three Stage-2 rows resume from
that checkpoint (resume is exact, see the tests), so they differ only after iteration 507:

- distillation only (``loss_weights.reward: 0``),
- the paper's joint training (reward + the ongoing distillation loss as its regulariser),
- the reward alone (``distillation_regulariser: false``): reward tuning of the distilled model.

Two distillation-only rows from scratch test the first claim: the same two-step student with
DMD2's summed losses (``timestep_split: null``), and the paper's four-step student. Students and
teacher are scored by :func:`gmm_bench_floor.evaluate_sampler` (SWD, MMD², mode coverage, TV) next
to the data floor and the analytic teacher's DDIM with 1, 4 and 50 steps; a callback records SWD,
coverage and reward of 1000 samples every 117 iterations (the curves below the table).

Usage (from the repository root)::

    python benchmarks/flash_dmd.py            # seeds 0 1 2 (about 15 min on one thread)
    python benchmarks/flash_dmd.py --quick    # 1 seed, 2 epochs: benchmarks/results/quick/, no README

Writes ``benchmarks/results/flash_dmd.md`` and the results block of ``recipes/flash_dmd/README.md``.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import torch  # noqa: E402
import yaml  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, sampling_ms, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std, paired, write_block  # noqa: E402
from gmm_bench_floor import data_floor, evaluate_sampler, reference_sample, teacher_baseline  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

from lightning_distill.cli import DistillCLI  # noqa: E402
from lightning_distill.diffusion import sample  # noqa: E402
from lightning_distill.diffusion.metrics import mode_coverage, sliced_wasserstein  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "flash_dmd" / "config.yaml"
METRICS = ("swd", "mmd", "mode_coverage", "coverage10", "mode_tv", "reward")
CURVE_EVERY = 117  # iterations between curve points (3 epochs of 39 batches)
CURVE_N = 1000


@dataclass
class Row:
    """One table row: a name, how it differs from the config, and its values per seed."""

    name: str
    change: str
    init_args: dict[str, Any] | None = None
    steps: int = 2
    stage1: dict[str, Any] | None = (
        None  # resume from the Stage-1 checkpoint of the config with these changes
    )
    metrics: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METRICS})
    curves: list[dict[int, dict[str, float]]] = field(default_factory=list)
    train_s: list[float] = field(default_factory=list)
    sample_ms: float | None = None
    model: Any = None  # the last seed's trained module (for the sampling time)


def no_reward() -> dict[str, Any]:
    """The config's ``loss_weights`` with the reward's weight 0 (a row replaces the whole dict, so it keeps the rest)."""
    weights = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]["loss_weights"]
    return {"loss_weights": {**weights, "reward": 0.0}}


def rows() -> list[Row]:
    four, one = [999, 749, 499, 249], {"denoising_timesteps": [999]}
    return [
        Row("Flash-DMD, distillation only", "`loss_weights.reward: 0`", no_reward(), stage1={}),
        Row("Flash-DMD + reward, regularised (config)", "none", {}, stage1={}),
        Row(
            "reward alone after Stage 1",
            "`distillation_regulariser: false`",
            {"distillation_regulariser": False},
            stage1={},
        ),
        Row(
            "1 step, distillation only",
            "`denoising_timesteps: [999]`, `loss_weights.reward: 0`",
            {**one, **no_reward()},
            steps=1,
            stage1=one,
        ),
        Row("1 step + reward, regularised", "`denoising_timesteps: [999]`", one, steps=1, stage1=one),
        Row(
            "1 step, reward alone after Stage 1",
            "`denoising_timesteps: [999]`, `distillation_regulariser: false`",
            {**one, "distillation_regulariser": False},
            steps=1,
            stage1=one,
        ),
        Row(
            "ablation: DMD2's summed losses",
            "`timestep_split: null`, `loss_weights.reward: 0`",
            {"timestep_split": None, **no_reward()},
        ),
        Row(
            "4 steps (the paper's), distillation only",
            f"`denoising_timesteps: {four}`, `loss_weights.reward: 0`",
            {"denoising_timesteps": four, **no_reward()},
            steps=4,
        ),
    ]


class Curve(Callback):
    """SWD, coverage and reward of ``CURVE_N`` samples every ``CURVE_EVERY`` iterations (and at the end)."""

    def __init__(self, reference: torch.Tensor, store: dict[int, dict[str, float]]) -> None:
        self.reference, self.store = reference, store

    def _record(self, module: Any) -> None:
        with torch.no_grad():
            x = module.sample(CURVE_N, torch.Generator().manual_seed(12345)).float()
        gmm = module.reference_mixture
        self.store[module.iteration] = {
            "swd": float(sliced_wasserstein(x, self.reference)),
            "mode_coverage": float(mode_coverage(x, gmm)),
            "coverage10": float(mode_coverage(x, gmm, min_fraction=0.1)),
            "reward": float(module.reward(x).mean()),
        }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.iteration % CURVE_EVERY == 0:
            self._record(pl_module)

    def on_train_end(self, trainer, pl_module):
        self._record(pl_module)


def build(config: dict, seed: int, max_epochs: int, workdir: Path) -> DistillCLI:
    """Trainer, model and data from ``config`` as ``lightning-distill fit`` builds them (no validation)."""
    workdir.mkdir(parents=True, exist_ok=True)
    extra = [f"--trainer.max_epochs={max_epochs}", "--trainer.callbacks=[]"]
    return recipe_cli(config, seed, [*extra, "--trainer.num_sanity_val_steps=0"], workdir=workdir)


def fit(row_config: dict, seed: int, epochs: int, workdir: Path, curve: dict, ckpt: Path | None = None):
    cli = build(row_config, seed, epochs, workdir)
    model, trainer = cli.model, cli.trainer
    reference = reference_sample(model.reference_mixture, CURVE_N, 999)
    trainer.callbacks.append(Curve(reference, curve))
    seconds, _ = timed_fit(cli, ckpt_path=None if ckpt is None else str(ckpt))
    return model, trainer, seconds


def score(row: Row, model: Any, seed: int, n: int) -> None:
    scores = evaluate_sampler(model.sample, model.reference_mixture, n, [seed])
    for name in ("swd", "mmd", "mode_coverage", "mode_tv"):
        row.metrics[name].append(float(scores[name][0]))
    with torch.no_grad():
        x = model.sample(n, torch.Generator().manual_seed(seed))
    row.metrics["coverage10"].append(
        float(mode_coverage(x.float(), model.reference_mixture, min_fraction=0.1))
    )
    row.metrics["reward"].append(float(model.reward(x).mean()))


def run_seed(all_rows: list[Row], config: dict, seed: int, epochs: int, n: int) -> Any:
    """Stage 1 once, the Stage-2 rows from its checkpoint, the other rows from scratch; returns a model."""
    data = config["data"]["init_args"]
    stage1_epochs = config["model"]["init_args"]["reward_start_iteration"] // (
        data["num_train"] // data["batch_size"]
    )
    model = None
    stage1: dict[str, tuple[Path, dict, float]] = {}  # key of the changes -> (checkpoint, curve, seconds)
    with tempfile.TemporaryDirectory() as tmp:
        for row in all_rows:
            ckpt, curve, before_s = None, {}, 0.0
            if row.stage1 is not None:
                key = repr(sorted(row.stage1.items()))
                if key not in stage1:
                    base = copy.deepcopy(config)
                    base["model"]["init_args"].update(copy.deepcopy(row.stage1))
                    first: dict[int, dict[str, float]] = {}
                    workdir = Path(tmp) / f"stage1_{len(stage1)}"
                    _, trainer, seconds = fit(base, seed, stage1_epochs, workdir, first)
                    trainer.save_checkpoint(workdir / "stage1.ckpt")
                    stage1[key] = (workdir / "stage1.ckpt", first, seconds)
                ckpt, first, before_s = stage1[key]
                curve = dict(first)
            row_config = copy.deepcopy(config)
            row_config["model"]["init_args"].update(copy.deepcopy(row.init_args))
            workdir = Path(tmp) / row.name.replace(" ", "_").replace("/", "_")
            model, _, seconds = fit(row_config, seed, epochs, workdir, curve, ckpt)
            row.train_s.append(seconds + before_s)
            row.curves.append(curve)
            score(row, model, seed, n)
            row.model = model
            print(
                f"seed {seed} | {row.name}: SWD {row.metrics['swd'][-1]:.3f}, coverage "
                f"{row.metrics['mode_coverage'][-1]:.2f}, reward {row.metrics['reward'][-1]:.3f} | {seconds:.0f} s",
                flush=True,
            )
    return model


# --------------------------------------------------------------------------- report
def _curve_table(all_rows: list[Row], names: dict[str, str], keys: list[tuple[str, str, int]]) -> str:
    """Curve points common to the rows ``names`` (row name -> short label), one column per row and key."""
    iterations = sorted(set.intersection(*[set(c) for r in all_rows if r.name in names for c in r.curves]))
    headers = ["iteration"] + [f"{label}: {short}" for short in names.values() for _, label, _ in keys]
    by_name = {r.name: r for r in all_rows}
    body = []
    for it in iterations:
        cells = [str(it)]
        for name in names:
            for key, _, digits in keys:
                cells.append(mean_std([c[it][key] for c in by_name[name].curves], digits=digits))
        body.append(cells)
    return markdown_table(headers, body, align="r" * len(headers))


def render(all_rows: list[Row], seeds: list[int], n: int, command: str, seconds: float, config: dict) -> str:
    by_name = {r.name: r for r in all_rows}
    data, model = config["data"]["init_args"], config["model"]["init_args"]
    batches = data["num_train"] // data["batch_size"]
    reward = model["reward_model"]["init_args"]
    table = []
    for r in all_rows:
        m = r.metrics
        table.append(
            [
                r.name,
                r.change,
                r.steps,
                mean_std(m["swd"], digits=3),
                mean_std(m["mmd"], digits=2, fmt="e"),
                mean_std(m["mode_coverage"]),
                mean_std(m["coverage10"]),
                mean_std(m["mode_tv"], digits=3),
                mean_std(m["reward"], digits=3),
                "-" if r.sample_ms is None else f"{r.sample_ms:.1f}",
                mean_std(r.train_s, digits=0) if r.train_s else "-",
            ]
        )
    headers = ["samples", "differs from config.yaml", "steps", "SWD", "MMD²", "coverage", "coverage ≥10%"]
    headers += ["TV", "reward", "sampling ms", "train s"]
    teacher50, floor = by_name["teacher, DDIM, 50 steps"], by_name["data vs data (floor)"]
    distilled = by_name["Flash-DMD, distillation only"]
    joint, alone = by_name["Flash-DMD + reward, regularised (config)"], by_name["reward alone after Stage 1"]
    keys = [("reward", "reward", 3), ("mode_coverage", "coverage", 2), ("coverage10", "cov ≥10%", 2)]
    swd_key = [("swd", "SWD", 3)]
    lines = [
        generated_header("benchmarks/flash_dmd.py", command, seconds),
        "",
        machine_line() + " Shared with other jobs: times are indicative.",
        "",
        f"Data: `ring` (8 modes, radius 4, std 0.25); schedule: DDPM scaled-linear betas, ε. Every Flash-DMD row is "
        f"`recipes/flash_dmd/config.yaml` ({config['trainer']['max_epochs']} epochs x {batches} batches = "
        f"{config['trainer']['max_epochs'] * batches} iterations; Stage 2 from iteration "
        f"{model['reward_start_iteration']}) with only the keys in the second column changed; the rows ending in "
        "distillation only, regularised and reward alone resume, three by three, from one Stage-1 checkpoint per "
        "seed, so they differ only in Stage 2 (their train s include Stage 1). Reward: `RegionReward(center="
        f"{reward['center']}, scale={reward['scale']})`, the Gaussian bump on mode 0 (the data's mean reward is "
        f"{mean_std(floor.metrics['reward'], digits=3)}). Seeds {', '.join(map(str, seeds))}; n = {n} samples per "
        "model and seed against a data sample of seed + 10000; mean ± sample std over seeds. Coverage: share of the "
        "8 modes with at least one sample; coverage ≥10%: with at least a tenth of the samples a mode should get. "
        "TV: mode-weight total variation with an off-mode bin. Sampling: median wall-clock of one call drawing "
        f"n = {n} samples (1 thread).",
        "",
        markdown_table(headers, table, align="llrrrrrrrrr"),
        "",
        "Measured (paired by seed, mean ± std):",
        "",
        f"- two-step student (distillation only) SWD / teacher's 50-step DDIM SWD: "
        f"**{paired(distilled.metrics['swd'], teacher50.metrics['swd'], op='ratio')}**",
        f"- reward gain over distillation only: regularised {paired(joint.metrics['reward'], distilled.metrics['reward'])}"
        f", reward alone {paired(alone.metrics['reward'], distilled.metrics['reward'])}",
        f"- one step: reward gain regularised {paired(by_name['1 step + reward, regularised'].metrics['reward'], by_name['1 step, distillation only'].metrics['reward'])}"
        f", reward alone {paired(by_name['1 step, reward alone after Stage 1'].metrics['reward'], by_name['1 step, distillation only'].metrics['reward'])}"
        f"; coverage change regularised {paired(by_name['1 step + reward, regularised'].metrics['mode_coverage'], by_name['1 step, distillation only'].metrics['mode_coverage'])}"
        f", reward alone {paired(by_name['1 step, reward alone after Stage 1'].metrics['mode_coverage'], by_name['1 step, distillation only'].metrics['mode_coverage'])}",
        f"- coverage change over distillation only: regularised "
        f"{paired(joint.metrics['mode_coverage'], distilled.metrics['mode_coverage'])}, reward alone "
        f"{paired(alone.metrics['mode_coverage'], distilled.metrics['mode_coverage'])}",
        "",
        f"Stage 2 over iterations ({CURVE_N} samples from fixed noise at each point; Stage 1 shared):",
        "",
        _curve_table(all_rows, {joint.name: "regularised", alone.name: "reward alone"}, keys),
        "",
        "The same for the one-step student (one step at t = 999, so distribution matching is its only distillation "
        "loss):",
        "",
        _curve_table(
            all_rows,
            {
                "1 step + reward, regularised": "regularised",
                "1 step, reward alone after Stage 1": "reward alone",
            },
            keys,
        ),
        "",
        f"Convergence of the distillation (SWD of {CURVE_N} samples against {CURVE_N} data points; the floor at "
        "this n is higher than in the table):",
        "",
        _curve_table(
            all_rows,
            {
                distilled.name: "split, 2 steps",
                "ablation: DMD2's summed losses": "summed, 2 steps",
                "4 steps (the paper's), distillation only": "split, 4 steps",
            },
            swd_key,
        ),
    ]
    return "\n".join(lines) + "\n"


def build_parser():
    return bench_parser(__file__, __doc__, quick="1 seed, 2 epochs", samples=2000)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv, all_warnings=True)
    seeds = args.seeds[:1] if args.quick else args.seeds
    config = yaml.safe_load(CONFIG.read_text())
    epochs = 2 if args.quick else int(config["trainer"]["max_epochs"])
    config["trainer"]["max_epochs"] = epochs
    batches = config["data"]["init_args"]["num_train"] // config["data"]["init_args"]["batch_size"]
    config["model"]["init_args"]["reward_start_iteration"] = (
        epochs // 2
    ) * batches  # Stage 2: the second half
    command = args.command
    total = time.perf_counter()

    flash = rows()
    model = None
    for seed in seeds:
        model = run_seed(flash, config, seed, epochs, args.n)
    gmm, schedule, teacher = model.reference_mixture, model.schedule, model.teacher

    floor = Row("data vs data (floor)", "-", steps=0)
    for name, values in data_floor(gmm, args.n, seeds).items():
        floor.metrics[name] = values.tolist()
    data = [
        gmm.sample(args.n, torch.Generator().manual_seed(s)).float() for s in seeds
    ]  # as data_floor draws
    floor.metrics["coverage10"] = [float(mode_coverage(x, gmm, min_fraction=0.1)) for x in data]
    floor.metrics["reward"] = [float(model.reward(x).mean()) for x in data]
    baselines = []
    for k, scores in teacher_baseline(gmm, (1, 4, 50), seeds, args.n, schedule).items():
        row = Row(f"teacher, DDIM, {k} step{'s' if k > 1 else ''}", "analytic teacher, no training", steps=k)
        row.metrics.update({name: v.tolist() for name, v in scores.items()})

        def draw(count: int, gen: torch.Generator, k: int = k) -> torch.Tensor:
            return sample(teacher, schedule, torch.randn(count, gmm.dim, generator=gen), k)

        x = [draw(args.n, torch.Generator().manual_seed(s)) for s in seeds]
        row.metrics["coverage10"] = [float(mode_coverage(v, gmm, min_fraction=0.1)) for v in x]
        row.metrics["reward"] = [float(model.reward(v).mean()) for v in x]
        row.sample_ms = sampling_ms(draw, args.n)
        baselines.append(row)
    for row in flash:
        row.sample_ms = sampling_ms(row.model.sample, args.n)
    all_rows = [floor, *baselines, *flash]

    text = render(all_rows, seeds, args.n, command, time.perf_counter() - total, config)
    write_block(results_dir(args) / "flash_dmd.md", text, create="# Flash-DMD on the exact-score bench")
    print(f"\n{text}", flush=True)
    update_readme(args, ROOT / "recipes" / "flash_dmd" / "README.md", text)


if __name__ == "__main__":
    main()
