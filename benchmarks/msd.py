"""MSD on the class-conditional exact-score bench: K = 4 students against one student, and the perfect teacher.

Rows (every trained row is ``recipes/msd/config.yaml`` or ``recipes/msd/single.yaml``, built through
:class:`lightning_distill.cli.DistillCLI` with only the seed and the keys named in the row changed;
validation is off during the fits):

- the issue's comparison: MSD with 4 students (config) against one student of the same *total*
  parameter count (single.yaml, width 68) and one student of the same *per-student* size
  (single.yaml with width 32, as fast as one MSD student);
- with ``--ablations``, MSD's choices: one shared fake score instead of one per student; a teacher-
  score-matching warm-up (the paper's pre-stage for students that cannot start from the teacher);
- the data-vs-data floor and the analytic teacher sampled with DDIM in 1, 4 and 50 steps.

Every sampler is scored twice: *overall* (labels drawn by class weight, ``n`` samples against an
independent data sample: SWD, MMD², mode coverage, mode-weight TV over all 24 modes) and *per class*
(``n / C`` samples of each class against that class's data and modes, averaged over the classes).

Usage (from the repository root)::

    python benchmarks/msd.py                 # seeds 0 1 2, every row
    python benchmarks/msd.py --ablations     # also the shared-fake-score and TSM rows (about twice as long)
    python benchmarks/msd.py --quick         # smoke run: 1 seed, 1 epoch, no README update

Writes ``benchmarks/results/msd.md`` and the results block of ``recipes/msd/README.md`` (``--quick``
writes ``benchmarks/results/quick/msd.md`` and leaves the README alone).
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import torch  # noqa: E402
import yaml  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std, paired  # noqa: E402
from gmm_bench_floor import evaluate_samples, reference_sample  # noqa: E402

from lightning_distill.diffusion import sample  # noqa: E402
from lightning_distill.diffusion.gmm import GaussianMixture  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("swd", "mmd", "mode_coverage", "mode_tv")
Sampler = Callable[[int, torch.Generator, torch.Tensor], torch.Tensor]  # (n, generator, labels) -> (n, D)


@dataclass
class Row:
    name: str
    change: str
    config: str | None = None  # None: not a trained row
    overrides: dict[str, Any] = field(default_factory=dict)
    steps: int = 1
    overall: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METRICS})
    per_class: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METRICS})
    train_s: list[float] = field(default_factory=list)
    params: str = "-"
    us_per_sample: float | None = None


def trained_rows(ablations: bool) -> list[Row]:
    rows = [
        Row("MSD, 4 students (config)", "none", "config.yaml"),
        Row("1 student, same total size", "single.yaml (width 68)", "single.yaml"),
        Row(
            "1 student, same per-student size",
            "single.yaml, student width 32",
            "single.yaml",
            {"student": {"init_args": {"hidden": 32}}},
        ),
    ]
    if ablations:
        rows += [
            Row(
                "MSD, shared fake score",
                "`fake_score_sharing: shared`, fake width 68",
                "config.yaml",
                {"fake_score_sharing": "shared", "fake_score": {"init_args": {"hidden": 68}}},
            ),
            Row("MSD, 200 TSM steps first", "`tsm_steps: 200`", "config.yaml", {"tsm_steps": 200}),
        ]
    return rows


def _merge(base: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def fit(row: Row, seed: int, max_epochs: int | None) -> Any:
    """Fit one row's config for one seed (no validation) and return the trained module."""
    config = yaml.safe_load((ROOT / "recipes" / "msd" / row.config).read_text())
    _merge(config["model"]["init_args"], row.overrides)
    extra = ["--trainer.callbacks=[]", "--trainer.num_sanity_val_steps=0"]
    if max_epochs is not None:
        extra.append(f"--trainer.max_epochs={max_epochs}")
    with tempfile.TemporaryDirectory() as tmp:
        cli = recipe_cli(config, seed, extra, workdir=tmp)
        row.train_s.append(timed_fit(cli)[0])
    return cli.model.eval()


def class_mixture(gmm: GaussianMixture, c: int) -> GaussianMixture:
    """The modes of class ``c`` as a mixture of their own (for per-class coverage and TV)."""
    keep = gmm.class_of_mode == c
    return GaussianMixture(gmm.means[keep], covs=gmm.covs[keep], weights=gmm.weights[keep])


def score(
    row: Row, draw: Sampler, gmm: GaussianMixture, class_weights: torch.Tensor, n: int, seed: int
) -> None:
    """Append one seed's overall and per-class metrics of ``draw`` to ``row``."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.multinomial(class_weights, n, replacement=True, generator=generator)
    overall = evaluate_samples(draw(n, generator, labels), gmm, reference_sample(gmm, n, seed))
    per_class: dict[str, list[float]] = {m: [] for m in METRICS}
    m = n // gmm.num_classes
    for c in range(gmm.num_classes):
        labels = torch.full((m,), c, dtype=torch.long)
        reference = gmm.sample(m, torch.Generator().manual_seed(seed + 10_000 + 97 * c), labels)
        scores = evaluate_samples(draw(m, torch.Generator().manual_seed(seed * 1000 + c), labels),
                                  class_mixture(gmm, c), reference)  # fmt: skip
        for name in METRICS:
            per_class[name].append(scores[name])
    for name in METRICS:
        row.overall[name].append(overall[name])
        row.per_class[name].append(statistics.fmean(per_class[name]))


def microseconds_per_sample(draw: Sampler, n: int, class_weights: torch.Tensor, repeats: int = 11) -> float:
    """Median wall-clock of one call drawing ``n`` labelled samples, divided by ``n``."""
    times = []
    for k in range(repeats):
        generator = torch.Generator().manual_seed(k)
        labels = torch.multinomial(class_weights, n, replacement=True, generator=generator)
        start = time.perf_counter()
        with torch.no_grad():
            draw(n, generator, labels)
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times) / n


def render(rows: list[Row], seeds: list[int], n: int, command: str, seconds: float, iterations: int) -> str:
    by = {r.name: r for r in rows}
    msd, total, small = (by["MSD, 4 students (config)"], by["1 student, same total size"],
                         by["1 student, same per-student size"])  # fmt: skip
    teacher50 = by["teacher, DDIM, 50 steps"]
    headers = ["samples", "what differs", "steps", "student params", "SWD", "MMD²", "coverage", "TV",
               "class SWD", "class MMD²", "class coverage", "class TV", "µs / sample", "train s"]  # fmt: skip
    table = []
    for r in rows:
        table.append([
            r.name, r.change, r.steps, r.params,
            mean_std(r.overall["swd"], digits=3), mean_std(r.overall["mmd"], digits=1, fmt="e"),
            mean_std(r.overall["mode_coverage"]), mean_std(r.overall["mode_tv"], digits=3),
            mean_std(r.per_class["swd"], digits=3), mean_std(r.per_class["mmd"], digits=1, fmt="e"),
            mean_std(r.per_class["mode_coverage"]), mean_std(r.per_class["mode_tv"], digits=3),
            "-" if r.us_per_sample is None else f"{r.us_per_sample:.1f}", mean_std(r.train_s, digits=0),
        ])  # fmt: skip
    lines = [
        generated_header("benchmarks/msd.py", command, seconds),
        "",
        machine_line() + " Shared with other jobs: compare times within this table only.",
        "",
        "Data: `ring` with 24 modes (radius 4, std 0.15) dealt into 8 classes (3 modes per class, 120° apart); "
        "the analytic teacher; SD's scaled-linear ε schedule. Trained rows: the config named in the second column, "
        f"{iterations} iterations each (update ratio 5), everything else unchanged. Seeds "
        f"{', '.join(map(str, seeds))} (`seed_everything`: initialisation, data order, training noise). Overall: "
        f"n = {n} samples with labels drawn by class weight against a data sample of seed + 10000 (all 24 modes). "
        f"Class columns: n / 8 = {n // 8} samples of each class against that class's data and its 3 modes, "
        "averaged over the 8 classes. Mean ± sample std over seeds; SWD sliced 2-Wasserstein, MMD² unbiased RBF, "
        "coverage = share of modes reached, TV = mode-weight total variation; lower is better except coverage. "
        "µs / sample: median wall-clock of drawing n labelled samples in one call, divided by n (1 thread).",
        "",
        markdown_table(headers, table, align="llrrllllllllrr"),
        "",
        "Paired by seed (mean ± std). The paper's comparison comes first: one student of the same per-student "
        "size (as fast as one MSD student). The bench is compute-matched: same iterations and batch of 256, so "
        "each MSD student (and its fake score) sees only its classes' share of a batch, about 64 samples per step.",
        "",
        f"- SWD, MSD / one student of the same per-student size (the paper's baseline): "
        f"**{paired(msd.overall['swd'], small.overall['swd'], 'ratio')}** "
        f"(per class {paired(msd.per_class['swd'], small.per_class['swd'], 'ratio')})",
        f"- SWD, MSD / one student of the same total size: {paired(msd.overall['swd'], total.overall['swd'], 'ratio')} "
        f"(per class {paired(msd.per_class['swd'], total.per_class['swd'], 'ratio')})",
        f"- coverage, MSD − one student of the same total size: "
        f"{paired(msd.overall['mode_coverage'], total.overall['mode_coverage'])}",
        f"- SWD, MSD / teacher with 50 DDIM steps: {paired(msd.overall['swd'], teacher50.overall['swd'], 'ratio')}",
    ]
    if "MSD, 200 TSM steps first" in by:
        tsm = by["MSD, 200 TSM steps first"]
        lines.append(
            f"- SWD, MSD with 200 TSM steps first / MSD (config): {paired(tsm.overall['swd'], msd.overall['swd'], 'ratio')}"
        )
    return "\n".join(lines) + "\n"


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 1 epoch", samples=2000)
    parser.add_argument("--ablations", action="store_true", help="also a shared fake score and a TSM warm-up")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    max_epochs = 1 if args.quick else None
    command = args.command
    start = time.perf_counter()

    rows, models = trained_rows(args.ablations), {}
    for seed in seeds:
        for row in rows:
            tic = time.perf_counter()
            model = models[row.name] = fit(row, seed, max_epochs)
            gmm, weights = model.reference_mixture, model.class_weights()
            score(row, lambda k, g, y, m=model: m.sample(k, g, y), gmm, weights, args.n, seed)
            print(f"seed {seed} | {row.name}: SWD {row.overall['swd'][-1]:.3f}, class coverage "
                  f"{row.per_class['mode_coverage'][-1]:.2f} | {time.perf_counter() - tic:.0f} s", flush=True)  # fmt: skip
    for row in rows:
        model = models[row.name]
        experts = list(model.router.experts)
        count = sum(p.numel() for p in experts[0].parameters())
        row.params = f"{len(experts)} x {count / 1e3:.1f}k" if len(experts) > 1 else f"{count / 1e3:.1f}k"
        row.us_per_sample = microseconds_per_sample(
            lambda k, g, y, m=model: m.sample(k, g, y), args.n, weights
        )
    iterations = models[rows[0].name].iteration

    teacher, schedule = model.teacher, model.schedule
    floor = Row("data vs data (floor)", "-", steps=0)
    baselines = [floor]
    for steps in (1, 4, 50):
        baselines.append(
            Row(f"teacher, DDIM, {steps} step{'s' if steps > 1 else ''}", "analytic teacher", steps=steps)
        )
    for seed in seeds:
        score(floor, lambda k, g, y: gmm.sample(k, g, y), gmm, weights, args.n, seed)
        for row in baselines[1:]:
            draw = (lambda k, g, y, s=row.steps:  # noqa: E731
                    sample(teacher, schedule, torch.randn(k, gmm.dim, generator=g), s, y))  # fmt: skip
            score(row, draw, gmm, weights, args.n, seed)
    for row in baselines[1:]:
        row.us_per_sample = microseconds_per_sample(
            lambda k, g, y, s=row.steps: sample(teacher, schedule, torch.randn(k, gmm.dim, generator=g), s, y),
            args.n, weights,
        )  # fmt: skip

    text = render([*baselines, *rows], seeds, args.n, command, time.perf_counter() - start, iterations)
    (results_dir(args) / "msd.md").write_text(text)
    print(f"\n{text}", flush=True)
    update_readme(args, ROOT / "recipes" / "msd" / "README.md", text)


if __name__ == "__main__":
    main()
