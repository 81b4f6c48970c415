"""Distillation-DPO at toy scale: the one-step student with preference pairs vs plain score distillation vs the teacher.

Every student row is ``recipes/distillation_dpo/config.yaml`` (DPO) or ``config_sd.yaml`` (plain
score distillation, the baseline: the same samples, one fake-score model, no preference), built
through :class:`lightning_distill.cli.DistillCLI` with the bench sizes below and only the seed
changed; validation is off during the fits. The teacher (the LiDiff-style point diffusion model,
trained once on first use and cached) is shared by every seed; the students start from it. Every
model completes the same test scans from the same seeded noise; the metrics are the papers' CD
(m), the BEV-histogram JSD, voxel IoU at 0.5 m and 1 m, against the accumulated dense scenes; the
time is the median wall-clock of completing one test batch, per scan.

Rows: the teacher with 50 DDIM steps (LiDiff's reference), the teacher in one step (what both
students start from), the one-step student after plain score distillation, and after Distillation-DPO.

Usage (from the repository root)::

    python benchmarks/distillation_dpo.py            # seeds 0 1 2
    python benchmarks/distillation_dpo.py --quick    # smoke run: 1 seed, tiny teacher, 4 iterations

Writes ``benchmarks/results/distillation_dpo.md`` and the block between ``<!-- results:start -->``
and ``<!-- results:end -->`` of ``recipes/distillation_dpo/README.md``.
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import torch  # noqa: E402
import yaml  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std, paired  # noqa: E402

from lightning_distill.lidar_generation.metrics import completion_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "distillation_dpo"
METRICS = (("cd", "CD (m) ↓"), ("jsd", "JSD ↓"), ("iou_0.5", "IoU@0.5 m ↑"), ("iou_1", "IoU@1 m ↑"))
#: The bench sizes (the configs are the CI smoke sizes).
DATA = {"num_train": 32, "num_val": 2, "num_test": 8, "num_scan_points": 64, "batch_size": 4}
TEACHER = {"steps": 600, "lr": 2.0e-3}
ITERATIONS = 100


def build_parser():
    return bench_parser(__file__, __doc__, quick="1 seed, a 40-step teacher, 4 iterations")


def bench_config(name: str, quick: bool) -> dict[str, Any]:
    """The recipe config with the bench's data, teacher and training length."""
    config = yaml.safe_load((RECIPE / name).read_text())
    data = dict(DATA, num_train=8, num_test=4) if quick else DATA
    config["data"]["init_args"].update(data)
    teacher = config["model"]["init_args"]["teacher"]["init_args"]
    teacher["data"]["init_args"].update(data)
    teacher.update(dict(TEACHER, steps=40) if quick else TEACHER)
    iterations = 4 if quick else ITERATIONS
    config["trainer"].update(max_epochs=-1, max_steps=2 * iterations)
    config["model"]["init_args"]["teacher_steps"] = 50
    config["test_after_fit"] = False
    return config


@torch.no_grad()
def evaluate(recipe, model, batches, steps: int, seed: int) -> dict[str, float]:
    """Mean metrics of ``model`` at ``steps`` DDIM steps over the test batches, and ms per scan."""
    values: dict[str, list[float]] = {}
    times = []
    for k, batch in enumerate(batches):
        g = torch.Generator().manual_seed(seed * 1000 + k)
        scan = batch["scan"]
        noise = torch.randn((scan.shape[0], recipe.duplication * scan.shape[1], 3), generator=g)
        start = time.perf_counter()
        pred = recipe.complete(model, scan, noise, steps)
        times.append(1000 * (time.perf_counter() - start) / scan.shape[0])
        metrics = completion_metrics(
            pred,
            batch["target"],
            target_mask=batch["target_mask"],
            voxel_sizes=(0.5, 1.0),
            bev_extent=recipe.eval_bev_extent,
            bev_bins=recipe.eval_bev_bins,
        )
        for name, v in metrics.items():
            values.setdefault(name, []).extend(v.tolist())
    out = {name: statistics.fmean(v) for name, v in values.items()}
    out["ms"] = statistics.median(times)
    return out


def gradient_split(recipe, batch, seed: int) -> tuple[float, float]:
    """How much of the winner term's student gradient survives the loser term.

    On one batch after the DPO fit: ``‖∇L_dpo‖ / ‖∇L_w‖`` and ``cos(∇L_dpo, ∇L_w)``, where ``L_w`` is the
    winner term alone (plain score distillation on the winners with the winner auxiliary).
    """
    from lightning_distill.losses.lidar_generation import score_distillation_loss

    recipe.eval()
    pairs = recipe.draw_pairs(batch)
    scan = pairs.gather(batch)["scan"]
    params = [p for p in recipe.student.parameters() if p.requires_grad]

    def grad_of(loss) -> torch.Tensor:
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, allow_unused=False)])

    noise = torch.cat([pairs.winner_noise, pairs.loser_noise])
    x0_w, x0_l = recipe.complete(recipe.student, torch.cat([scan, scan]), noise).chunk(2)
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(x0_w.shape, generator=g)
    t = torch.randint(recipe.diffusion.num_train_timesteps, (x0_w.shape[0],), generator=g)
    g_dpo = grad_of(recipe.student_loss(x0_w, x0_l, scan, torch.Generator().manual_seed(seed))["dpo"])
    x0_w = recipe.complete(recipe.student, scan, pairs.winner_noise)
    teacher = recipe.noise_predictions(recipe.teacher, x0_w, scan, eps, t)
    aux = recipe.noise_predictions(recipe.aux_winner, x0_w, scan, eps, t)
    g_w = grad_of(score_distillation_loss(x0_w, teacher, aux))
    ratio = float(g_dpo.norm() / g_w.norm().clamp_min(1e-30))
    cosine = float(torch.nn.functional.cosine_similarity(g_dpo, g_w, dim=0))
    return ratio, cosine


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    rows: dict[str, list[dict[str, float]]] = {"teacher50": [], "teacher1": [], "sd": [], "dpo": []}
    extra: dict[str, list[float]] = {
        "win_gap": [],
        "fit_s_sd": [],
        "fit_s_dpo": [],
        "ratio": [],
        "cosine": [],
    }
    start = time.perf_counter()
    for seed in seeds:
        for variant, name in (("sd", "config_sd.yaml"), ("dpo", "config.yaml")):
            with tempfile.TemporaryDirectory() as workdir:
                cli = recipe_cli(bench_config(name, args.quick), seed, workdir=workdir)
                recipe = cli.model
                teacher_copy = copy.deepcopy(recipe.teacher.state_dict())
                seconds, _ = timed_fit(cli)
                for key, value in recipe.teacher.state_dict().items():  # the teacher never moves
                    if not torch.equal(value, teacher_copy[key]):
                        raise RuntimeError(f"the teacher changed during the fit ({key}).")
                extra[f"fit_s_{variant}"].append(seconds)
                recipe.eval()
                batches = list(cli.datamodule.test_dataloader())
                rows[variant].append(evaluate(recipe, recipe.student, batches, 1, seed))
                if variant == "dpo":
                    rows["teacher50"].append(evaluate(recipe, recipe.teacher, batches, 50, seed))
                    rows["teacher1"].append(evaluate(recipe, recipe.teacher, batches, 1, seed))
                    ratio, cosine = gradient_split(recipe, batches[0], seed)
                    extra["ratio"].append(ratio)
                    extra["cosine"].append(cosine)
                    gap = cli.trainer.callback_metrics
                    extra["win_gap"].append(
                        float(
                            gap.get("diag/cd_loser", float("nan")) - gap.get("diag/cd_winner", float("nan"))
                        )
                    )
        print(
            f"seed {seed} done: " + ", ".join(f"{k} cd {v[-1]['cd']:.4f}" for k, v in rows.items() if v),
            flush=True,
        )
    wall = time.perf_counter() - start

    names = {
        "teacher50": "teacher, 50 DDIM steps (LiDiff reference)",
        "teacher1": "teacher, 1 step (the students' start)",
        "sd": "student, 1 step, plain score distillation (baseline)",
        "dpo": "student, 1 step, Distillation-DPO",
    }
    table = markdown_table(
        ["model", *(label for _, label in METRICS), "ms / scan"],
        [
            [
                names[key],
                *(mean_std([r[m] for r in rows[key]], digits=4) for m, _ in METRICS),
                mean_std([r["ms"] for r in rows[key]], digits=1),
            ]
            for key in rows
        ],
        align="l" + "r" * (len(METRICS) + 1),
    )
    diff = markdown_table(
        ["paired over seeds", *(label for _, label in METRICS)],
        [
            [
                "DPO − SD",
                *(
                    paired([r[m] for r in rows["dpo"]], [r[m] for r in rows["sd"]], digits=4)
                    for m, _ in METRICS
                ),
            ],
            [
                "DPO − teacher 1 step",
                *(
                    paired([r[m] for r in rows["dpo"]], [r[m] for r in rows["teacher1"]], digits=4)
                    for m, _ in METRICS
                ),
            ],
        ],
        align="l" + "r" * len(METRICS),
    )
    iterations = 4 if args.quick else ITERATIONS
    body = "\n\n".join(
        [
            generated_header(build_parser().script, args.command, wall),
            f"{machine_line()} Seeds {' '.join(map(str, seeds))}; {iterations} iterations per student "
            f"(each: one auxiliary and one student update); test scans: {DATA['num_test'] if not args.quick else 4}, "
            f"{DATA['num_scan_points']} points each, completed into {4 * DATA['num_scan_points']}; teacher: "
            f"{TEACHER['steps'] if not args.quick else 40} training steps (shared by all seeds).",
            table,
            diff,
            f"Chamfer gap loser − winner of the last training pair batch (DPO): {mean_std(extra['win_gap'], digits=4)} m. "
            f"Fit time per student: SD {mean_std(extra['fit_s_sd'], digits=0)} s, DPO {mean_std(extra['fit_s_dpo'], digits=0)} s.",
            "Student gradient after the DPO fit, on one test batch: ‖∇L_dpo‖ / ‖∇(winner term alone)‖ = "
            f"{mean_std(extra['ratio'], digits=3)}, cosine between the two = {mean_std(extra['cosine'], digits=3)}.",
        ]
    )
    out = results_dir(args) / "distillation_dpo.md"
    out.write_text(f"# Distillation-DPO benchmark\n\n<!-- results:start -->\n{body}\n<!-- results:end -->\n")
    update_readme(args, RECIPE / "README.md", body)
    print(body)


if __name__ == "__main__":
    main()
