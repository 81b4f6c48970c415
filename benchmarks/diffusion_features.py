"""DistillDIFT at toy scale: PCK@0.1 of the LoRA student vs each teacher and the ensemble, and inference time.

The paper's claim (arXiv 2412.03512): a ViT with LoRA adapters, distilled from the concatenated
features of a diffusion UNet (several timesteps) and a ViT, matches points across images as well
as (or better than) the ensemble of teachers while running one network instead of several. Here:
warped pairs of scikit-learn digits at 16x16 (random homographies, 16 keypoints per pair, test
split), a diffusers UNet2DModel denoiser and an MAE-pretrained ViT-MAE (2 px patches) trained on
first use. The student is the ViT teacher's own encoder plus LoRA (rank 8 on q/v), as the paper
starts from DINOv2, so "student at init" = the ViT teacher. Every run is the recipe's
``recipes/diffusion_features/config.yaml`` through the CLI with the teachers' budgets, the
epochs and the pairs' seed changed. PCK: nearest-neighbour matches of the features bilinearly
upsampled to the image, threshold ``alpha * 16`` px. Time: milliseconds per image for the dense
features of a batch of 64 test images (median of 5, one thread), the part a matcher runs.

Usage (from the repository root)::

    python benchmarks/diffusion_features.py            # seeds 0 1 2 (~8 CPU-min at one thread)
    python benchmarks/diffusion_features.py --quick    # smoke run: 1 seed, 1 epoch
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import torch  # noqa: E402
import yaml  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std  # noqa: E402

from lightning_distill.representation.correspondence import PCK, match_points  # noqa: E402

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "diffusion_features" / "config.yaml"
README = ROOT / "recipes" / "diffusion_features" / "README.md"


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 1 epoch")
    parser.add_argument("--epochs", type=int, default=15, help="student epochs over 512 pairs (default 15)")
    parser.add_argument(
        "--lr", type=float, default=1e-2, help="AdamW learning rate of the adapters (default 1e-2)"
    )
    parser.add_argument(
        "--unet-steps", type=int, default=None, help="denoiser training steps (default: the config's, 150)"
    )
    parser.add_argument(
        "--mae-epochs",
        type=int,
        default=None,
        help="MAE epochs of the ViT teacher (default: the config's, 5)",
    )
    return parser


#: Student variants: the paper's LoRA on the query and value projections, and LoRA on every linear layer.
VARIANTS = {
    "DistillDIFT student (LoRA on q, v)": ["q_proj", "v_proj"],
    "student, LoRA on every linear layer": ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"],
}


def run_config(args, seed: int, targets: list[str]) -> dict:
    config = yaml.safe_load(CONFIG.read_text())
    model = config["model"]["init_args"]
    if args.mae_epochs is not None:
        mae = dict(model["student"]["init_args"], epochs=args.mae_epochs)
        model["student"]["init_args"] = mae
        model["teachers"][1]["init_args"]["model"]["init_args"] = dict(mae)
    if args.unet_steps is not None:
        model["teachers"][0]["init_args"]["unet"]["init_args"]["steps"] = args.unet_steps
    model["lora_target_modules"] = list(targets)
    model["optimizer"]["init_args"]["lr"] = args.lr
    config["data"]["init_args"]["seed"] = seed
    config["trainer"]["max_epochs"] = 1 if args.quick else args.epochs
    config["trainer"]["check_val_every_n_epoch"] = 10_000  # validation off: scored below on the test pairs
    config["test_after_fit"] = False
    return config


def score(features, datamodule, alphas=(0.1, 0.05)) -> dict[str, float]:
    """PCK at each alpha of nearest-neighbour matches under ``features`` over the test pairs."""
    metrics = {a: PCK(alpha=a) for a in alphas}
    with torch.no_grad():
        for source, target, p, q, valid, _ in datamodule.test_dataloader():
            maps = features(torch.cat([source, target]))
            b = source.shape[0]
            predicted = match_points(maps[:b], maps[b:], p, tuple(source.shape[-2:]))
            for metric in metrics.values():
                metric.update(predicted, q, valid, tuple(source.shape[-2:]))
    return {f"pck@{a}": float(m.compute()) for a, m in metrics.items()}


def ms_per_image(features, images: torch.Tensor, repeats: int = 5) -> float:
    times = []
    with torch.no_grad():
        features(images)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            features(images)
            times.append(1000 * (time.perf_counter() - start) / images.shape[0])
    return statistics.median(times)


def main(argv=None) -> None:
    args = build_parser().start(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    start = time.perf_counter()
    teacher_names = [
        "UNet teacher (t = 51..201)",
        "ViT-MAE teacher (= student at init)",
        "ensemble (UNet + ViT)",
    ]
    names = teacher_names + list(VARIANTS)
    runs, trainable = [], {}
    for seed in seeds:
        run = {}
        for variant, targets in VARIANTS.items():
            with tempfile.TemporaryDirectory() as work:
                cli = recipe_cli(run_config(args, seed, targets), seed, workdir=work)
                recipe, data = cli.model, cli.datamodule
                data.setup("test")
                images = data.pairs("test").tensors[0][:64]
                if not run:
                    teachers = dict(
                        zip(teacher_names, [recipe.teachers[0], recipe.teachers[1], recipe.ensemble_features])
                    )
                    for name, fn in teachers.items():
                        run[name] = {**score(fn, data), "ms": ms_per_image(fn, images)}
                    run["student at init"] = score(recipe.student_features, data)
                wall, cpu = timed_fit(cli)
                recipe.eval()
                run[variant] = {
                    **score(recipe.student_features, data),
                    "ms": ms_per_image(recipe.student_features, images),
                }
                run[variant]["cpu"] = cpu
                trainable[variant] = sum(p.numel() for p in recipe.trainable_parameters())
        runs.append(run)
        print(f"seed {seed}: " + json.dumps({k: round(v["pck@0.1"], 4) for k, v in run.items()}), flush=True)
    rows = []
    for name in names:
        rows.append(
            [
                name,
                mean_std([r[name]["pck@0.1"] for r in runs], 100, 1),
                mean_std([r[name]["pck@0.05"] for r in runs], 100, 1),
                mean_std([r[name]["ms"] for r in runs], 1, 3),
                str(trainable.get(name, "-")),
            ]
        )
    init = mean_std([r["student at init"]["pck@0.1"] for r in runs], 100, 1)
    table = markdown_table(
        ["features", "PCK@0.1 %", "PCK@0.05 %", "ms / image", "trainable params"], rows, "lrrrr"
    )
    cpus = ", ".join(f"{v}: {mean_std([r[v]['cpu'] for r in runs], 1, 0)} CPU s" for v in VARIANTS)
    epochs = 1 if args.quick else args.epochs
    body = "\n\n".join(
        [
            generated_header(build_parser().script, args.command, time.perf_counter() - start),
            f"Warped digit pairs 16x16 (128 test pairs x 16 keypoints), mean ± std over seeds {seeds} (the pairs' "
            f"seed and the student's training); teachers trained once (seed 0); {machine_line()}",
            table,
            f"Students: {epochs} epochs over 512 pairs, AdamW lr {args.lr} ({cpus}); PCK@0.1 before "
            f"distillation (the ViT teacher's weights, adapters at zero): {init} %.",
        ]
    )
    out = results_dir(args) / "diffusion_features.md"
    out.write_text(body + "\n")
    print(body)
    update_readme(args, README, body)


if __name__ == "__main__":
    main()
