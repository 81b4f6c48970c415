"""OFTSR at ×4 on digits: the one-step student against bicubic and the flow teacher, and the fidelity–realism curve over t.

The teacher is ``recipes/oftsr/config.yaml``'s rectified-flow SR teacher (a tiny diffusers
``UNet2DModel`` with the LR image concatenated) trained on first use for ``--teacher-steps`` steps
(one teacher, seed 0, shared by every seed). For each seed, the student starts from the teacher and is
distilled for ``--steps`` steps by the recipe (bootstrapped velocity distillation with a midpoint RK2
teacher step, alignment and boundary terms). Every method super-resolves the same start points
``x_0 = sqrt(1 − σ_p²) up(LR) + σ_p ε`` (noise seeded by the seed).

Rows: bicubic; the teacher with one Euler step (1 NFE: its estimate of E[HR | x_0]) and with 8 RK2
steps (16 NFE, the multi-step setting); the one-step student at t = 0.99 (the paper's default). The
curve: the student at t in {ε, 0.25, 0.5, 0.75, 0.99} (one NFE each) next to the teacher with 1, 2, 4
and 8 Euler steps, in PSNR (Y) against the feature distance and the FCD.

Scores over the digits validation split (179 images, 16x16 HR from 4x4 LR): PSNR and SSIM on Y with a
border of 2 (the scale, 4, would leave 8x8, too small for SSIM's 11x11 window); "feature distance
(digits SmallCNN)": :class:`FeatureDistance` on the stem and layer1 of a digits classifier trained
in this repository (not LPIPS), a per-image fidelity measure; FCD: the Fréchet distance between the
digits-classifier features of all SR outputs and all HR images (not FID), the realism measure (the
paper uses FID); ms / image: one CPU thread, a batch of 64, median of 3.

Usage (from the repository root)::

    python benchmarks/oftsr.py            # seeds 0 1 2
    python benchmarks/oftsr.py --quick    # smoke run: 1 seed, 100 teacher steps, 10 student steps

Writes ``benchmarks/results/oftsr.md`` and the generated block of ``recipes/oftsr/README.md``.
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
import yaml  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std, paired  # noqa: E402

from lightning_distill.diffusion.frechet import frechet_distance_from_features  # noqa: E402
from lightning_distill.models.digits import digits_classifier  # noqa: E402
from lightning_distill.super_resolution.denoisers import upsample_to  # noqa: E402
from lightning_distill.super_resolution.flow_sr import (  # noqa: E402
    FLOW_EPS,
    flow_sample,
    flow_start,
    one_step_sr,
    to_signed,
    to_unit,
)
from lightning_distill.super_resolution.metrics import FeatureDistance, sr_psnr, sr_ssim  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "oftsr" / "config.yaml"
README = ROOT / "recipes" / "oftsr" / "README.md"
BORDER = 2
CURVE_T = (FLOW_EPS, 0.25, 0.5, 0.75, 0.99)
CURVE_STEPS = (1, 2, 4, 8)


def distil(seed: int, steps: int, teacher_steps: int, lr: float):
    """Fit the recipe for ``steps`` steps from ``seed``; the module, its datamodule and the wall time."""
    config = copy.deepcopy(yaml.safe_load(CONFIG.read_text()))
    config["trainer"].pop("limit_train_batches", None)
    config["trainer"]["max_epochs"] = -1
    config["trainer"]["max_steps"] = steps
    config["trainer"]["callbacks"] = []
    init = config["model"]["init_args"]
    init["teacher"]["init_args"]["steps"] = teacher_steps
    init["noise_seed"] = seed
    init["optimizer"]["init_args"]["lr"] = lr
    extra = ["--test_after_fit=false", "--trainer.num_sanity_val_steps=0"]
    with tempfile.TemporaryDirectory() as tmp:
        cli = recipe_cli(config, seed, extra, workdir=Path(tmp))
        seconds = timed_fit(cli)[0]
    return cli.model.eval(), cli.datamodule, seconds


def methods(recipe) -> dict:
    """Name -> ``(lr_signed, x0) -> SR in [-1, 1]`` and its NFE."""
    teacher, student = recipe.teacher, recipe.student
    out = {
        "bicubic": (lambda lr, x0: upsample_to(lr, tuple(x0.shape[-2:])), 0),
        "teacher, 1 Euler step": (lambda lr, x0: flow_sample(teacher, lr, x0, 1, "euler"), 1),
        "teacher, 8 RK2 steps": (lambda lr, x0: flow_sample(teacher, lr, x0, 8, "rk2", recipe.rk2_r), 16),
        "OFTSR student, t = 0.99": (lambda lr, x0: one_step_sr(student, lr, x0, 0.99), 1),
    }
    for t in CURVE_T:
        out[f"student t={t:g}"] = (lambda lr, x0, t=t: one_step_sr(student, lr, x0, t), 1)
    for k in CURVE_STEPS:
        out[f"teacher Euler {k}"] = (lambda lr, x0, k=k: flow_sample(teacher, lr, x0, k, "euler"), k)
    return out


@torch.no_grad()
def evaluate(recipe, data, distance: FeatureDistance, classifier, seed: int) -> dict[str, dict[str, float]]:
    """PSNR/SSIM (Y, border 2), the feature distance and the FCD of every method on the validation split."""
    scores: dict[str, dict[str, list]] = {}
    outputs: dict[str, list] = {}
    his = []
    for b, (low, high) in enumerate(data.val_dataloader()):
        lr = to_signed(low)
        gen = torch.Generator().manual_seed(seed * 7919 + b)
        x0 = flow_start(lr, tuple(high.shape[-2:]), recipe.sigma_p, gen)
        his.append(high)
        for name, (run, _) in methods(recipe).items():
            sr = to_unit(run(lr, x0))
            s = scores.setdefault(name, {"psnr": [], "ssim": [], "fd": []})
            s["psnr"].append(sr_psnr(sr, high, border=BORDER, reduction="none"))
            s["ssim"].append(sr_ssim(sr, high, border=BORDER, reduction="none"))
            s["fd"].append(distance(sr, high))
            outputs.setdefault(name, []).append(sr)
    out = {n: {k: float(torch.cat(v).mean()) for k, v in s.items()} for n, s in scores.items()}
    train = data.hr_images("train").mean(dim=1, keepdim=True)
    mean, std = float(train.mean()), float(train.std())

    def features(images):  # grey digits normalised as DigitsDataModule serves them
        return classifier.forward_features((images.mean(dim=1, keepdim=True) - mean) / std).double()

    real = features(torch.cat(his))
    for name, srs in outputs.items():
        out[name]["fcd"] = float(frechet_distance_from_features(real, features(torch.cat(srs))))
    return out


@torch.no_grad()
def ms_per_image(recipe, data, name: str) -> float:
    low, high = next(iter(data.val_dataloader()))
    lr = to_signed(low)
    x0 = flow_start(lr, tuple(high.shape[-2:]), recipe.sigma_p, torch.Generator().manual_seed(0))
    run = methods(recipe)[name][0]
    times = []
    for _ in range(3):
        start = time.perf_counter()
        run(lr, x0)
        times.append(1000 * (time.perf_counter() - start) / lr.shape[0])
    return statistics.median(times)


MAIN = ("bicubic", "teacher, 1 Euler step", "teacher, 8 RK2 steps", "OFTSR student, t = 0.99")


def render(rows, seeds, command, seconds, steps, teacher_steps, lr, teacher_record) -> str:
    nfe = {name: n for name, (_, n) in methods(_Dummy()).items()}
    main = [
        [
            name,
            str(nfe[name]),
            mean_std(rows[name]["psnr"]),
            mean_std(rows[name]["ssim"], digits=4),
            mean_std(rows[name]["fd"], digits=4),
            mean_std(rows[name]["fcd"]),
            mean_std(rows[name]["ms"], digits=2),
        ]
        for name in MAIN
    ]
    curve = [
        [
            f"student, t = {t:g}",
            "1",
            mean_std(rows[f"student t={t:g}"]["psnr"]),
            mean_std(rows[f"student t={t:g}"]["fd"], digits=4),
            mean_std(rows[f"student t={t:g}"]["fcd"]),
        ]
        for t in CURVE_T
    ] + [
        [
            f"teacher, {k} Euler step{'s' if k > 1 else ''}",
            str(k),
            mean_std(rows[f"teacher Euler {k}"]["psnr"]),
            mean_std(rows[f"teacher Euler {k}"]["fd"], digits=4),
            mean_std(rows[f"teacher Euler {k}"]["fcd"]),
        ]
        for k in CURVE_STEPS
    ]
    student, teacher = rows["OFTSR student, t = 0.99"], rows["teacher, 8 RK2 steps"]
    return "\n".join(
        [
            generated_header("benchmarks/oftsr.py", command, seconds),
            "",
            machine_line(),
            "",
            f"Seeds {', '.join(map(str, seeds))}; mean ± sample std over seeds. ×4 bicubic degradation of digits "
            f"upsampled to 16x16 (LR 4x4), σ_p = 0.2. Teacher: tiny LRConditionedUNet (165k parameters) trained once "
            f"(seed 0) for {teacher_steps} steps (final L1 velocity loss {teacher_record.get('last_loss', float('nan')):.4f}), "
            f"so its spread comes from the start-point noise only; students: {steps} distillation steps from the "
            f"teacher's weights (Adam {lr:g}, batch 16). PSNR/SSIM on Y, border 2, over the 179 validation digits; "
            "FD = feature distance (digits SmallCNN, stem + layer1; not LPIPS): per image, lower is closer to "
            "its own HR (a fidelity measure like LPIPS); FCD = Fréchet distance between the digits-classifier "
            "features of all SR outputs and of all HR images (not FID): lower is closer to the distribution of "
            "real digits (the realism measure, as FID in the paper). "
            "ms / image: one CPU thread, batch of 64.",
            "",
            markdown_table(
                ["method", "NFE", "PSNR (Y)", "SSIM (Y)", "FD", "FCD", "ms / image"], main, align="lrrrrrr"
            ),
            "",
            "Student − teacher (8 RK2 steps), paired over seeds: "
            f"PSNR {paired(student['psnr'], teacher['psnr'])}, SSIM {paired(student['ssim'], teacher['ssim'], digits=4)}, "
            f"FD {paired(student['fd'], teacher['fd'], digits=4)}, FCD {paired(student['fcd'], teacher['fcd'])}.",
            "",
            "Fidelity–realism curve: the one student at several time inputs t, next to the teacher at several "
            "step counts (the multi-step way to move along the same trade-off).",
            "",
            markdown_table(["setting", "NFE", "PSNR (Y)", "FD", "FCD"], curve, align="lrrrr"),
        ]
    )


class _Dummy:
    teacher = student = None
    rk2_r = 0.5


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 100 teacher steps, 10 student steps")
    parser.add_argument("--steps", type=int, default=300, help="distillation steps per seed (default 300)")
    parser.add_argument(
        "--teacher-steps", type=int, default=1500, help="teacher training steps (default 1500)"
    )
    parser.add_argument("--lr", type=float, default=2e-4, help="student Adam learning rate (default 2e-4)")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.start()
    seeds = args.seeds[:1] if args.quick else args.seeds
    steps = 10 if args.quick else args.steps
    teacher_steps = 100 if args.quick else args.teacher_steps
    start = time.perf_counter()
    classifier = digits_classifier(size=16).eval()
    distance = FeatureDistance(
        digits_classifier(size=16), ["stem", "layer1"], name="feature distance (digits SmallCNN)"
    )
    rows: dict[str, dict[str, list[float]]] = {}
    record = {}
    for seed in seeds:
        recipe, data, _ = distil(seed, steps, teacher_steps, args.lr)
        record = getattr(recipe.teacher, "training_record", {})
        data.setup("validate")
        for name, s in evaluate(recipe, data, distance, classifier, seed).items():
            row = rows.setdefault(name, {"psnr": [], "ssim": [], "fd": [], "fcd": [], "ms": []})
            for k, v in s.items():
                row[k].append(v)
            if name in MAIN:
                row["ms"].append(ms_per_image(recipe, data, name))
        print(
            f"seed {seed}: "
            + ", ".join(
                f"{n} {rows[n]['psnr'][-1]:.2f}/{rows[n]['fd'][-1]:.4f}/{rows[n]['fcd'][-1]:.2f}"
                for n in MAIN
            )
        )
    seconds = time.perf_counter() - start
    body = render(rows, seeds, args.command, seconds, steps, teacher_steps, args.lr, record)
    out = results_dir(args) / "oftsr.md"
    out.write_text("# OFTSR benchmark\n\n" + body + "\n")
    update_readme(args, README, body)
    print(body)


if __name__ == "__main__":
    main()
