"""Phased DMD on the exact-score bench: 2- and 4-phase students vs the perfect teacher, and the 1-D toy.

Two experiments, each over seeds (mean ± std):

1. **Ring, 2-D** (``recipes/phased_dmd/config.yaml``, built through ``DistillCLI`` as
   ``lightning-distill fit`` builds it, validation off): the 2-phase (2-step) and 4-phase
   (4-step) mixture-of-experts students, against the analytic teacher sampled with Euler in 1, 4
   and 50 steps (``gmm_bench_floor.teacher_baseline``) and the data-vs-data floor. Ablations
   change one key: one phase (plain one-step DMD), the biased subinterval target, the paper's exact
   KL weight instead of the config's DMD2-style normaliser. Every run
   trains for the config's ``max_steps`` iterations; the phases split them equally.
2. **The paper's 1-D toy** (data on {-1, 0, 1, 2}, std 0.05, rectified flow): a score network is
   trained on the subinterval ``(T/2, T]`` from exact samples of ``x_{T/2}`` with the recipe's own
   ``PhasedDMD.fake_score_loss``, with the unbiased target (the paper) or the biased one
   (``x_{T/2}`` treated as clean data), next to a network trained the ordinary way on
   ``(0, T]``. Each is sampled from noise to ``T/2`` (50 Euler steps); the result is compared with
   the exact ``x_{T/2}`` (SWD, and the distance to the exact ODE trajectory from the same noise),
   then carried to ``x_0`` by the exact teacher (SWD, mode coverage, mode-weight TV vs the data).
   A histogram is saved to ``benchmarks/results/phased_dmd_toy.png``.

Usage (repository root)::

    python benchmarks/phased_dmd.py            # 3 seeds, about 9 min of CPU time on one thread
    python benchmarks/phased_dmd.py --quick    # smoke run: 1 seed, 300 iterations

Writes ``benchmarks/results/phased_dmd.md`` and the table between the results markers of
``recipes/phased_dmd/README.md`` (``--quick`` writes under ``benchmarks/results/quick/`` only).
"""

from __future__ import annotations

import copy
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import torch  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _harness import bench_parser, recipe_cli, results_dir, sampling_ms, timed_fit, update_readme  # noqa: E402
from gmm_bench_floor import data_floor, evaluate_sampler, mean_std, table_rows, teacher_baseline  # noqa: E402

from lightning_distill.diffusion import MLPDenoiser, NoiseSchedule, model_output, sample  # noqa: E402
from lightning_distill.diffusion.gmm import AnalyticTeacher, GaussianMixture, make_mixture  # noqa: E402
from lightning_distill.diffusion.metrics import mode_coverage, mode_weight_tv, sliced_wasserstein  # noqa: E402
from lightning_distill.recipes.phased_dmd import PhasedDMD  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "phased_dmd" / "config.yaml"
README = ROOT / "recipes" / "phased_dmd" / "README.md"
N_SAMPLES = 2000


# ----------------------------------------------------------------------------- 2-D ring
def phases(k: int, max_steps: int) -> dict[str, Any]:
    """Config keys for ``k`` equal phases of the timestep range and of the iterations."""
    return {
        "phase_boundaries": [1.0 - i / k for i in range(k + 1)],
        "phase_steps": [max_steps * i // k for i in range(1, k)] or None,
    }


def ring_runs(max_steps: int) -> dict[str, dict[str, Any]]:
    """Row name -> the keys of ``model.init_args`` that differ from the config."""
    return {
        "Phased DMD, 2 phases = 2 steps (config)": phases(2, max_steps),
        "Phased DMD, 4 phases = 4 steps": phases(4, max_steps),
        "ablation: 1 phase = one-step DMD": phases(1, max_steps),
        "ablation: 2 phases, biased subinterval target": {
            **phases(2, max_steps),
            "subinterval_target": "biased",
        },
        "ablation: 2 phases, exact KL weight (the paper's w)": {
            **phases(2, max_steps),
            "normalise_gradient": False,
        },
    }


def fit_ring(changes: dict[str, Any], seed: int, max_steps: int, workdir: Path) -> tuple[PhasedDMD, float]:
    """Fit the config with ``changes``; returns the trained recipe and the training time (s)."""
    config = yaml.safe_load(CONFIG.read_text())
    config["model"]["init_args"].update(copy.deepcopy(changes))
    config["trainer"]["max_steps"] = max_steps
    config["trainer"]["callbacks"] = []
    extra = ["--test_after_fit=false", "--trainer.accelerator=cpu", "--trainer.devices=1"]
    cli = recipe_cli(config, seed, [*extra, "--trainer.num_sanity_val_steps=0"], workdir=workdir)
    seconds, _ = timed_fit(cli)
    return cli.model.eval(), seconds


def ring_experiment(seeds: list[int], max_steps: int) -> tuple[str, dict[str, float]]:
    gmm = make_mixture("ring")
    schedule = NoiseSchedule.flow()
    teacher = AnalyticTeacher(gmm, schedule)
    rows = [
        "| samples | SWD | MMD² | coverage | TV | sampling ms | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    rows.append(table_rows("data vs data (floor)", data_floor(gmm, N_SAMPLES, seeds)) + " - | - |")
    baseline = teacher_baseline(gmm, (1, 4, 50), seeds, N_SAMPLES, schedule)
    for k, metrics in baseline.items():
        ms = sampling_ms(
            lambda n, g, k=k: sample(teacher, schedule, torch.randn(n, 2, generator=g), num_steps=k),
            N_SAMPLES,
        )
        rows.append(
            table_rows(f"teacher (analytic), Euler, {k} step{'s' * (k > 1)}", metrics) + f" {ms:.1f} | - |"
        )
    swd = {"teacher50": float(baseline[50]["swd"].mean())}
    for name, changes in ring_runs(max_steps).items():
        per_seed, train_s, ms = [], [], []
        for seed in seeds:
            with tempfile.TemporaryDirectory() as tmp:
                model, seconds = fit_ring(changes, seed, max_steps, Path(tmp))
            per_seed.append(evaluate_sampler(lambda n, g, m=model: m.sample(n, g), gmm, N_SAMPLES, [seed]))
            train_s.append(seconds)
            ms.append(sampling_ms(model.sample, N_SAMPLES))
            print(
                f"  {name}, seed {seed}: swd {float(per_seed[-1]['swd'][0]):.3f}, {seconds:.0f} s", flush=True
            )
        metrics = {key: torch.cat([row[key] for row in per_seed]) for key in per_seed[0]}
        swd[name] = float(metrics["swd"].mean())
        rows.append(
            table_rows(name, metrics)
            + f" {sorted(ms)[len(ms) // 2]:.1f} | {mean_std(torch.tensor(train_s), 0)} |"
        )
    return "\n".join(rows), swd


# ----------------------------------------------------------------------------- 1-D toy
TOY_S = 500.0  # the subinterval boundary s = T / 2 of the paper's toy


def toy_recipe(variant: str) -> PhasedDMD:
    """A recipe whose fake score is the network under test (only ``fake_score_loss`` is used)."""
    schedule = NoiseSchedule.flow()
    gmm = GaussianMixture.line_1d(std=0.05)
    return PhasedDMD(
        student=MLPDenoiser(dim=1, hidden=8, depth=1),
        teacher=AnalyticTeacher(gmm, schedule),
        schedule=schedule,
        fake_score=MLPDenoiser(dim=1, hidden=64, depth=3),
        phase_boundaries=(1.0, 0.0) if variant == "full" else (1.0, TOY_S / 1000, 0.0),
        subinterval_target="biased" if variant == "biased" else "unbiased",
        timestep_limits=(0.0, 1.0),
        expert_init="student",
        fake_reset="initial",
    )


@torch.no_grad()
def euler(
    model: torch.nn.Module, schedule: NoiseSchedule, x: torch.Tensor, t_from: float, t_to: float
) -> torch.Tensor:
    """50 deterministic Euler (DDIM) steps of ``model`` from ``t_from`` down to ``t_to``."""
    grid = torch.linspace(t_from, t_to, 51)
    for t, t_next in zip(grid[:-1], grid[1:]):
        t_batch = t.expand(x.shape[0])
        out = model_output(model, x, t_batch)
        alpha, sigma = schedule.alpha_sigma(t_next)
        x = alpha * schedule.to_x0(out, x, t_batch) + sigma * schedule.to_eps(out, x, t_batch)
    return x


def train_toy(variant: str, seed: int, steps: int) -> PhasedDMD:
    torch.manual_seed(seed)
    recipe = toy_recipe(variant)
    gmm, schedule = recipe.teacher.gmm, recipe.schedule
    alpha_s, sigma_s = schedule.alpha_sigma(torch.tensor(TOY_S))
    source = gmm if variant == "full" else gmm.noised(float(alpha_s), float(sigma_s))  # exact x_0 or x_s
    optimizer = torch.optim.Adam(recipe.fake_score.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = recipe.fake_score_loss(source.sample(512, gen).float(), 0, None, gen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return recipe


def toy_experiment(seeds: list[int], steps: int, picture: Path) -> str:
    variants = {
        "full": "ordinary denoising on (0, T] (reference)",
        "unbiased": "subinterval (T/2, T], unbiased target (paper)",
        "biased": "subinterval (T/2, T], biased target (x_s as x_0)",
    }
    schedule = NoiseSchedule.flow()
    gmm = GaussianMixture.line_1d(std=0.05)
    exact = AnalyticTeacher(gmm, schedule)
    alpha_s, sigma_s = schedule.alpha_sigma(torch.tensor(TOY_S))
    marginal_s = gmm.noised(float(alpha_s), float(sigma_s))
    results: dict[str, dict[str, list[float]]] = {v: {} for v in ["exact", *variants]}
    shown: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for seed in seeds:
        noise = torch.randn(N_SAMPLES, 1, generator=torch.Generator().manual_seed(seed))
        ref_s = marginal_s.sample(N_SAMPLES, torch.Generator().manual_seed(seed + 10_000)).float()
        ref_0 = gmm.sample(N_SAMPLES, torch.Generator().manual_seed(seed + 20_000)).float()
        path_s = euler(exact, schedule, noise, 1000.0, TOY_S)
        for variant in ["exact", *variants]:
            model = exact if variant == "exact" else train_toy(variant, seed, steps).fake_score
            x_s = euler(model, schedule, noise, 1000.0, TOY_S)
            x_0 = euler(exact, schedule, x_s, TOY_S, 0.0)
            values = {
                "traj": float((x_s - path_s).abs().mean()),
                "swd_s": float(sliced_wasserstein(x_s, ref_s)),
                "swd_0": float(sliced_wasserstein(x_0, ref_0)),
                "coverage": float(mode_coverage(x_0, gmm)),
                "tv": float(mode_weight_tv(x_0, gmm)),
            }
            for key, value in values.items():
                results[variant].setdefault(key, []).append(value)
            if seed == seeds[0]:
                shown[variant] = (x_s, x_0)
        print(
            f"  toy seed {seed}: " + ", ".join(f"{v} tv {results[v]['tv'][-1]:.3f}" for v in variants),
            flush=True,
        )
    draw_histograms(shown, variants, picture)
    names = {"exact": "exact score (analytic teacher) on (T/2, T]", **variants}
    rows = [
        "| score model sampled from noise to T/2 | traj. error at T/2 | SWD at T/2 | SWD at 0 | coverage | TV at 0 |",
        "|---|---|---|---|---|---|",
    ]
    for variant, values in results.items():
        cells = [mean_std(torch.tensor(values[key]), 3) for key in ("traj", "swd_s", "swd_0")]
        cells += [mean_std(torch.tensor(values["coverage"]), 2), mean_std(torch.tensor(values["tv"]), 3)]
        rows.append(f"| {names[variant]} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def draw_histograms(
    shown: dict[str, tuple[torch.Tensor, torch.Tensor]], variants: dict[str, str], path: Path
) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.6))
    FigureCanvasAgg(figure)
    for column, (index, title) in enumerate(
        [(0, "samples at t = T/2"), (1, "carried to t = 0 by the exact teacher")]
    ):
        axes = figure.add_subplot(1, 2, column + 1)
        for variant, style in zip(["exact", *variants], ["k-", "C0-", "C2--", "C3-"]):
            counts, edges = torch.histogram(
                shown[variant][index].double().reshape(-1), bins=120, range=(-2.0, 3.0)
            )
            label = "exact score" if variant == "exact" else variants[variant]
            axes.plot((edges[1:] + edges[:-1]) / 2, counts, style, linewidth=1.2, label=label)
        axes.set_title(title)
        axes.set_xlabel("x")
    axes.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


# ----------------------------------------------------------------------------- main
def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 300 iterations, 200 toy steps")
    parser.add_argument("--toy-steps", type=int, default=1500, help="training steps of each toy network")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv, all_warnings=True)
    seeds = args.seeds[:1] if args.quick else args.seeds
    max_steps = 300 if args.quick else int(yaml.safe_load(CONFIG.read_text())["trainer"]["max_steps"])
    toy_steps = 200 if args.quick else args.toy_steps
    out = results_dir(args)
    command = args.command
    start = time.perf_counter()
    ring, swd = ring_experiment(seeds, max_steps)
    toy = toy_experiment(seeds, toy_steps, out / "phased_dmd_toy.png")
    factor = "; ".join(
        f"{name.split(' (')[0]}: {value / swd['teacher50']:.2f}x"
        for name, value in swd.items()
        if name != "teacher50"
    )
    table = f"""
Command: `{command}` ({time.perf_counter() - start:.0f} s in all, {args.threads} thread(s), {platform.processor() or platform.machine()}, torch {torch.__version__}).
Seeds {seeds}: seed s trains the model and draws its sampling noise; the data it is compared with uses another seed. n = {N_SAMPLES} samples, mean ± std over seeds.

**Ring (8 modes, 2-D), rectified-flow analytic teacher, {max_steps} iterations per student** (5 fake-score updates per generator update; phases share the iterations equally). SWD = sliced 2-Wasserstein, MMD² = RBF, coverage = share of modes reached, TV = mode-weight total variation (lower is better except coverage). Sampling time: median of 5 draws of {N_SAMPLES} samples (the teacher is a closed-form formula, not a network).

{ring}

Factor (student SWD / 50-step teacher SWD): {factor}.

**The paper's 1-D toy** (data on {{-1, 0, 1, 2}}, std 0.05; rectified flow; s = T/2; {toy_steps} Adam steps per network, batch 512). Trajectory error = mean |x_T/2 - exact ODE solution from the same noise|. Histograms of seed {seeds[0]}: `benchmarks/results/{"quick/" if args.quick else ""}phased_dmd_toy.png`.

{toy}
"""
    out.mkdir(parents=True, exist_ok=True)
    (out / "phased_dmd.md").write_text("# Phased DMD benchmark\n" + table)
    print(table, flush=True)
    update_readme(args, README, table)


if __name__ == "__main__":
    main()
