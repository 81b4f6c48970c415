"""Exact-score bench: the noise floors of the metrics and the perfect teacher's k-step baselines.

For each preset mixture it reports, over seeds (mean ± std):

- **data vs data**: the metrics between two independent data samples of ``n`` points (SWD, MMD)
  and of one data sample against the mixture (mode coverage, mode-weight TV): the noise floor;
- **teacher, k steps**: :class:`~lightning_distill.diffusion.gmm.AnalyticTeacher` (the exact
  denoiser) sampled with the toolkit's sampler (:func:`lightning_distill.diffusion.sample`:
  DDIM for a VP ε-schedule, Euler for a flow schedule) in ``k`` = 1, 4 and 50 steps from seeded
  noise, against an independent data sample of the same size.

Recipe benchmarks (scripts in this folder, which Python puts on ``sys.path``) reuse it:
``from gmm_bench_floor import data_floor, evaluate_sampler, teacher_baseline``, scoring their
student with ``evaluate_sampler(student_sampler, gmm, n, seeds)`` next to these numbers, with the
same ``n``, seeds and schedule. Run: ``python benchmarks/gmm_bench_floor.py`` (writes
``benchmarks/results/gmm_floor.md``).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from _harness import bench_parser
from _report import mean_std as _mean_std
from torch import Tensor

from lightning_distill.diffusion import NoiseSchedule, sample
from lightning_distill.diffusion.gmm import AnalyticTeacher, GaussianMixture, make_mixture
from lightning_distill.diffusion.metrics import mode_coverage, mode_weight_tv, rbf_mmd2, sliced_wasserstein

RESULTS = Path(__file__).parent / "results" / "gmm_floor.md"
METRICS = ("swd", "mmd", "mode_coverage", "mode_tv")
PRESETS = ("ring", "grid", "line_1d", "blobs")
_REFERENCE_OFFSET = 10_000  # data seeds: seed + offset, never the seed of the model's noise


def default_schedule(kind: str = "vp") -> NoiseSchedule:
    """The bench's schedules: DDPM's linear betas with ε-prediction (``"vp"``), or rectified flow (``"flow"``)."""
    if kind == "vp":
        return NoiseSchedule.ddpm(beta_schedule="linear", prediction_type="epsilon")
    if kind == "flow":
        return NoiseSchedule.flow()
    raise ValueError(f"`kind` must be 'vp' or 'flow', got {kind!r}.")


def evaluate_samples(samples: Tensor, gmm: GaussianMixture, reference: Tensor) -> dict[str, float]:
    """The four bench metrics of ``samples`` ``(n, D)`` against a data sample ``reference`` and the mixture."""
    samples = samples.detach().float().cpu()
    return {
        "swd": float(sliced_wasserstein(samples, reference)),
        "mmd": float(rbf_mmd2(samples, reference)),
        "mode_coverage": float(mode_coverage(samples, gmm)),
        "mode_tv": float(mode_weight_tv(samples, gmm)),
    }


def reference_sample(gmm: GaussianMixture, n: int, seed: int) -> Tensor:
    """The data sample a model's samples of seed ``seed`` are compared with."""
    return gmm.sample(n, torch.Generator().manual_seed(seed + _REFERENCE_OFFSET))


def evaluate_sampler(
    sampler: Callable[[int, torch.Generator], Tensor], gmm: GaussianMixture, n: int, seeds: Sequence[int]
) -> dict[str, Tensor]:
    """Metrics ``(S,)`` per seed of ``sampler(n, generator)`` — how a recipe scores its student."""
    rows = []
    for seed in seeds:
        samples = sampler(n, torch.Generator().manual_seed(seed))
        rows.append(evaluate_samples(samples, gmm, reference_sample(gmm, n, seed)))
    return {name: torch.tensor([row[name] for row in rows], dtype=torch.float64) for name in METRICS}


def data_floor(gmm: GaussianMixture, n: int, seeds: Sequence[int] = (0, 1, 2)) -> dict[str, Tensor]:
    """The noise floor: a data sample in place of the model's samples, metrics ``(S,)`` per seed."""
    return evaluate_sampler(lambda k, gen: gmm.sample(k, gen), gmm, n, seeds)


def teacher_baseline(
    gmm: GaussianMixture | str = "ring",
    steps: Sequence[int] = (1, 4, 50),
    seeds: Sequence[int] = (0, 1, 2),
    n: int = 2000,
    schedule: NoiseSchedule | None = None,
) -> dict[int, dict[str, Tensor]]:
    """The perfect teacher sampled in ``k`` steps for each ``k`` in ``steps``: ``{k: {metric: (S,)}}``.

    Args:
        gmm: the mixture, or a preset name for :func:`make_mixture`.
        steps: numbers of sampler steps.
        seeds: seed ``s`` draws the starting noise from ``Generator().manual_seed(s)``.
        n: samples per seed (the floors depend on it: compare at equal ``n``).
        schedule: the toolkit schedule; ``None``: :func:`default_schedule` (VP, ε, linear betas).
    """
    gmm = make_mixture(gmm) if isinstance(gmm, str) else gmm
    schedule = schedule if schedule is not None else default_schedule()
    teacher = AnalyticTeacher(gmm, schedule)

    def sampler_for(k: int) -> Callable[[int, torch.Generator], Tensor]:
        def draw(count: int, gen: torch.Generator) -> Tensor:
            noise = torch.randn(count, gmm.dim, generator=gen)
            return sample(teacher, schedule, noise, num_steps=k)

        return draw

    return {k: evaluate_sampler(sampler_for(k), gmm, n, seeds) for k in steps}


def mean_std(values: Tensor, digits: int = 3) -> str:
    """``"mean ± std"`` over seeds."""
    return _mean_std(values.tolist(), digits=digits)


def _format_mmd(values: Tensor) -> str:
    return f"{float(values.mean()):.2e} ± {float(values.std()) if values.numel() > 1 else 0.0:.1e}"


def table_rows(label: str, metrics: dict[str, Tensor]) -> str:
    cells = [
        mean_std(metrics["swd"]),
        _format_mmd(metrics["mmd"]),
        mean_std(metrics["mode_coverage"], 2),
        mean_std(metrics["mode_tv"]),
    ]
    return f"| {label} | " + " | ".join(cells) + " |"


def _describe(gmm: GaussianMixture, preset: str) -> str:
    return f"`{preset}`: {gmm.num_modes} modes in {gmm.dim}-D"


def build_parser():
    parser = bench_parser(__file__, __doc__, readme=False, samples=2000)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 4, 50])
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().start(argv)
    start = time.perf_counter()
    schedules = {"DDIM, VP ε (linear betas)": default_schedule("vp"), "Euler, flow": default_schedule("flow")}
    lines = [
        "# Exact-score bench: noise floors and teacher baselines",
        "",
        f"Command: `{args.command}`  ",
        f"Versions: torch {torch.__version__}, Python {platform.python_version()}  ",
        f"Samples per seed: n = {args.n}; seeds {args.seeds} (mean ± std over seeds). Model noise uses seed s, "
        f"the data it is compared with seed s + {_REFERENCE_OFFSET}.  ",
        "Metrics: SWD = sliced 2-Wasserstein (256 fixed projections), MMD = unbiased RBF-MMD² (median "
        "bandwidth), coverage = share of modes with a sample within the default Mahalanobis threshold, "
        "TV = mode-weight total variation with an off-mode bin. Lower is better except coverage.",
        "",
    ]
    for preset in args.presets:
        gmm = make_mixture(preset)
        lines += [f"### {_describe(gmm, preset)}", ""]
        lines += ["| samples | SWD | MMD² | coverage | TV |", "|---|---|---|---|---|"]
        lines.append(table_rows("data vs data (floor)", data_floor(gmm, args.n, args.seeds)))
        for name, schedule in schedules.items():
            results = teacher_baseline(gmm, args.steps, args.seeds, args.n, schedule)
            for k, metrics in results.items():
                lines.append(table_rows(f"teacher, {name}, {k} step{'s' if k > 1 else ''}", metrics))
        lines.append("")
    lines.append(f"Total time {time.perf_counter() - start:.0f} s on {args.threads} thread(s).")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
