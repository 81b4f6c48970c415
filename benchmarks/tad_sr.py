"""TAD-SR at ×4 on digits: the one-step student against bicubic, the ResShift teacher at 15 and 1 steps, and MSE-only.

The claim (TAD-SR, arXiv 2408.07476): a one-step student distilled with the MSE to the teacher's
multi-step output, high-frequency score distillation (HSD) and a time-aware discriminator matches
or beats the teacher's many-step sampler, and HSD + GAN help beyond plain output regression. At toy
scale: ``recipes/tad_sr/config.yaml`` (×4, 16x16 HR digits, a tiny ``LRConditionedUNet``), the
ResShift teacher trained once (seed 0) for ``--teacher-steps`` steps and shared by every seed; per
seed two students start from the teacher's weights and train ``--iterations`` iterations with the
same noise and data order: the full recipe (MSE + HSD + GAN) and the ablation with
MSE only (``gan: false``, HSD weight 0).

Scores on the digits test split (192 images, 16x16): PSNR and SSIM on the Y channel with a 2-pixel
border, a feature distance on a digits ``SmallCNN`` (``digits_classifier``; LPIPS-like, not LPIPS),
and milliseconds per image (64 LR images in one batch, one CPU thread, median of 3). Every sampler
gets the same noise (seed 0).

Usage (from the repository root)::

    python benchmarks/tad_sr.py            # seeds 0 1 2
    python benchmarks/tad_sr.py --quick    # smoke run: 1 seed, 6 iterations, 40 teacher steps, no README

Writes ``benchmarks/results/tad_sr.md`` and the generated block of ``recipes/tad_sr/README.md``.
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std, paired  # noqa: E402

from lightning_distill.models.digits import digits_classifier  # noqa: E402
from lightning_distill.super_resolution.metrics import FeatureDistance, sr_psnr, sr_ssim  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "tad_sr" / "config.yaml"
BORDER = 2
FULL, MSE = "student, 1 step (MSE + HSD + GAN, full)", "student, 1 step (MSE only, ablation)"
T15, T1 = "ResShift teacher, 15 steps", "ResShift teacher, 1 step"
COLUMNS = ("psnr", "ssim", "fd", "ms")


def train(variant: str, seed: int, iterations: int, teacher_steps: int):
    config = copy.deepcopy(yaml.safe_load(CONFIG.read_text()))
    config["trainer"].update(callbacks=[], max_steps=2 * iterations if variant == "full" else iterations)
    config["model"]["init_args"]["teacher"]["init_args"]["steps"] = teacher_steps
    if variant == "mse":  # one optimizer (no discriminator): one optimizer step per iteration
        config["model"]["init_args"]["gan"] = False
        config["model"]["init_args"]["loss_weights"] = {"hsd": 0.0}
    extra = ["--test_after_fit=false", "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0"]
    with tempfile.TemporaryDirectory() as tmp:
        cli = recipe_cli(config, seed, extra, workdir=Path(tmp))
        seconds = timed_fit(cli)[0]
    return cli.model.eval(), cli.datamodule, seconds


def evaluate(recipe, model, steps: int | None, data, distance: FeatureDistance) -> dict[str, float]:
    """Y PSNR/SSIM (border 2), feature distance and ms/image on the test split; ``model=None`` is bicubic."""
    data.setup("test")
    psnr, ssim, fd, times = [], [], [], []
    for lr, hr in data.test_dataloader():
        scale = hr.shape[-1] // lr.shape[-1]
        start = time.perf_counter()
        with torch.no_grad():
            if model is None:
                sr = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)
            else:
                sr = recipe.super_resolve(model, lr, scale, num_steps=steps)
        times.append(1000 * (time.perf_counter() - start) / lr.shape[0])
        psnr.append(sr_psnr(sr, hr, border=BORDER, reduction="none"))
        ssim.append(sr_ssim(sr, hr, border=BORDER, reduction="none"))
        with torch.no_grad():
            fd.append(distance(sr, hr).reshape(-1))
    return {
        "psnr": float(torch.cat(psnr).mean()),
        "ssim": float(torch.cat(ssim).mean()),
        "fd": float(torch.cat(fd).mean()),
        "ms": statistics.median(times),
    }


def render(rows, seeds, command: str, seconds: float, iterations: int, teacher_steps: int) -> str:
    headers = ["method", "steps", "PSNR (Y) ↑", "SSIM (Y) ↑", "feature distance ↓", "ms / image", "train s"]
    table = [
        [
            name,
            str(r["steps"]),
            mean_std(r["psnr"]),
            mean_std(r["ssim"], digits=4),
            mean_std(r["fd"], digits=4),
            mean_std(r["ms"], digits=2),
            mean_std(r["train_s"], digits=0) if r["train_s"] else "-",
        ]
        for name, r in rows.items()
    ]

    def better(c: str) -> int:  # seeds where the full recipe is better (feature distance: lower)
        sign = -1 if c == "fd" else 1
        return sum(sign * (a - b) > 0 for a, b in zip(rows[FULL][c], rows[MSE][c], strict=True))

    diffs = ", ".join(
        f"{c} {paired(rows[FULL][c], rows[MSE][c], digits=4 if c in ('ssim', 'fd') else 2)} "
        f"(full better in {better(c)} of {len(seeds)} seeds)"
        for c in ("psnr", "ssim", "fd")
    )
    return (
        "\n".join(
            [
                generated_header("benchmarks/tad_sr.py", command, seconds),
                "",
                machine_line(),
                "",
                f"Seeds {', '.join(map(str, seeds))}; mean ± sample std over seeds. ×4 bicubic degradation of 16x16 "
                f"digits (4x4 LR); teacher: ResShift (T = 15, κ = 2, p = 0.3) on a tiny LRConditionedUNet trained once "
                f"(seed 0) for {teacher_steps} steps, so its rows have no spread; students start from it and train "
                f"{iterations} iterations (batch 16, AdamW 2e-4); both students are scored by their EMA (decay 0.95). Test "
                "split: 192 digits; PSNR/SSIM on Y, border 2; feature distance on a digits SmallCNN (not LPIPS); "
                "ms / image: one CPU thread, 64 images per batch, same noise for every sampler.",
                "",
                markdown_table(headers, table, align="lrrrrrr"),
                "",
                f"Full − MSE-only, paired over seeds: {diffs}.",
            ]
        )
        + "\n"
    )


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 6 iterations, 40 teacher steps")
    parser.add_argument("--iterations", type=int, default=80, help="student iterations (default 80)")
    parser.add_argument("--teacher-steps", type=int, default=500, help="teacher training steps (default 500)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    iterations = 6 if args.quick else args.iterations
    teacher_steps = 40 if args.quick else args.teacher_steps
    total = time.perf_counter()
    distance = FeatureDistance(
        digits_classifier(size=16), ["stem", "layer1"], name="digits SmallCNN distance"
    )
    rows = {n: {k: [] for k in (*COLUMNS, "train_s")} for n in ("bicubic", T15, T1, FULL, MSE)}
    steps = {"bicubic": 0, T15: 15, T1: 1, FULL: 1, MSE: 1}
    for seed in seeds:
        for variant, name in (("full", FULL), ("mse", MSE)):
            recipe, data, seconds = train(variant, seed, iterations, teacher_steps)
            model = getattr(recipe, "ema_student", recipe.student)  # both: the EMA the recipe evaluates
            for k, v in evaluate(recipe, model, 1, data, distance).items():
                rows[name][k].append(v)
            rows[name]["train_s"].append(seconds)
            print(f"seed {seed} | {name}: PSNR {rows[name]['psnr'][-1]:.2f}", flush=True)
        if seed == seeds[0]:  # the teacher and bicubic do not depend on the student's seed
            for name, model, n in ((T15, recipe.teacher, 15), (T1, recipe.teacher, 1), ("bicubic", None, 0)):
                for k, v in evaluate(recipe, model, n or None, data, distance).items():
                    rows[name][k].append(v)
    for name, r in rows.items():
        r["steps"] = steps[name]
    table = render(rows, seeds, args.command, time.perf_counter() - total, iterations, teacher_steps)
    (results_dir(args) / "tad_sr.md").write_text(table)
    print(f"\n{table}", flush=True)
    update_readme(args, ROOT / "recipes" / "tad_sr" / "README.md", table)


if __name__ == "__main__":
    main()
