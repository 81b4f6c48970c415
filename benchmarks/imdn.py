"""IMDN at ×2: parameters and CPU time against PSNR/SSIM, next to bicubic and a larger SR network, with and without KD.

The student is ``recipes/imdn/config.yaml``'s small IMDN (16 channels, 3 IMD blocks) trained with L1
alone (the paper's recipe) and with our KD extension (``recipes/imdn/kd.yaml``: L1 to the HR patch
plus L1 to the teacher's SR output, weight 1). The teacher is the EDSR-like ``ResidualSRNet`` of
``kd.yaml`` trained on first use with L1 for ``--teacher-steps`` steps (one teacher, seed 0, shared by
every seed). Both students train for the same number of epochs from the same seeds; only the loss
differs. Bicubic is the antialias-free bicubic upsampling of the same LR inputs.

Scores: PSNR and SSIM on the Y channel with a border of 2 pixels shaved (the paper's protocol) on the
validation patches (80 patches of 32x32 of the five held-out skimage pictures) and on the "Set5-like"
test set (one central 64x64 crop of each held-out picture); parameters; milliseconds per test image
(32x32 LR in, 64x64 out) on one CPU thread, median of 5 runs.

Usage (from the repository root)::

    python benchmarks/imdn.py            # seeds 0 1 2
    python benchmarks/imdn.py --quick    # smoke run: 1 seed, 2 epochs, 100 teacher steps, no README update

Writes ``benchmarks/results/imdn.md`` and the generated block of ``recipes/imdn/README.md``.
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

from lightning_distill.data.super_resolution import SuperResolutionDataModule  # noqa: E402
from lightning_distill.super_resolution.metrics import sr_psnr, sr_ssim  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"l1": ROOT / "recipes" / "imdn" / "config.yaml", "kd": ROOT / "recipes" / "imdn" / "kd.yaml"}
COLUMNS = ("val_psnr", "val_ssim", "test_psnr", "test_ssim")
L1, KD = "IMDN, L1 (paper)", "IMDN, L1 + KD (our extension)"


def evaluate(model, data: SuperResolutionDataModule) -> dict[str, float]:
    """Y-channel PSNR/SSIM (border = scale) over the validation and test sets; ``model=None`` is bicubic."""
    out = {}
    for split in ("val", "test"):
        psnr, ssim = [], []
        for lr, hr in getattr(data, f"{split}_dataloader")():
            with torch.no_grad():
                if model is None:
                    sr = F.interpolate(lr, scale_factor=data.scale, mode="bicubic", align_corners=False)
                else:
                    sr = model(lr)
            psnr.append(sr_psnr(sr, hr, border=data.scale, reduction="none"))
            ssim.append(sr_ssim(sr, hr, border=data.scale, reduction="none"))
        out[f"{split}_psnr"], out[f"{split}_ssim"] = (
            float(torch.cat(psnr).mean()),
            float(torch.cat(ssim).mean()),
        )
    return out


def ms_per_image(model, data: SuperResolutionDataModule) -> float:
    lr = next(iter(data.test_dataloader()))[0]
    times = []
    for _ in range(5):
        start = time.perf_counter()
        with torch.no_grad():
            if model is None:
                F.interpolate(lr, scale_factor=data.scale, mode="bicubic", align_corners=False)
            else:
                model(lr)
        times.append(1000 * (time.perf_counter() - start) / lr.shape[0])
    return statistics.median(times)


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def train(variant: str, seed: int, epochs: int, teacher_steps: int):
    config = yaml.safe_load(CONFIGS[variant].read_text())
    config = copy.deepcopy(config)
    config["trainer"]["callbacks"] = []
    config["trainer"]["max_epochs"] = epochs
    config["model"]["init_args"]["lr_scheduler"]["init_args"]["T_max"] = epochs
    if variant == "kd":
        config["model"]["init_args"]["teacher"]["init_args"]["steps"] = teacher_steps
    extra = ["--test_after_fit=false", "--trainer.num_sanity_val_steps=0"]
    with tempfile.TemporaryDirectory() as tmp:
        cli = recipe_cli(config, seed, extra, workdir=Path(tmp))
        seconds = timed_fit(cli)[0]
    return cli.model.eval(), cli.datamodule, seconds


def render(
    rows: dict[str, dict[str, list[float]]], seeds, command: str, seconds: float, epochs: int, steps: int
) -> str:
    headers = [
        "method",
        "params",
        "ms / image",
        "val PSNR (Y)",
        "val SSIM (Y)",
        "test PSNR (Y)",
        "test SSIM (Y)",
        "train s",
    ]
    table = []
    for name, r in rows.items():
        table.append(
            [
                name,
                f"{int(r['params'][0]):,}" if r["params"][0] else "0",
                mean_std(r["ms"], digits=2),
                mean_std(r["val_psnr"]),
                mean_std(r["val_ssim"], digits=4),
                mean_std(r["test_psnr"]),
                mean_std(r["test_ssim"], digits=4),
                mean_std(r["train_s"], digits=0) if r["train_s"] else "-",
            ]
        )
    return (
        "\n".join(
            [
                generated_header("benchmarks/imdn.py", command, seconds),
                "",
                machine_line(),
                "",
                f"Seeds {', '.join(map(str, seeds))}; mean ± sample std over seeds. ×2 bicubic degradation, 32x32 HR "
                f"patches of eleven skimage pictures (zoom 0.25); students {epochs} epochs (Adam 1e-3, cosine), batch 16; "
                f"teacher trained once (seed 0) for {steps} steps, so its row has no spread. PSNR/SSIM on Y, border 2; "
                'val: 80 patches of the five held-out pictures; test: one 64x64 crop of each ("Set5-like"). '
                "ms / image: one CPU thread, 32x32 LR in.",
                "",
                markdown_table(headers, table, align="lrrrrrrr"),
                "",
                "KD − L1, paired over seeds (same seed, same data order): "
                + ", ".join(
                    f"{c.replace('_', ' ')} {paired(rows[KD][c], rows[L1][c], digits=4 if 'ssim' in c else 2)}"
                    for c in COLUMNS
                )
                + ".",
            ]
        )
        + "\n"
    )


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 2 epochs, 100 teacher steps")
    parser.add_argument("--epochs", type=int, default=24, help="student epochs (default 24, ~1050 steps)")
    parser.add_argument(
        "--teacher-steps", type=int, default=1500, help="teacher training steps (default 1500)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    epochs = 2 if args.quick else args.epochs
    teacher_steps = 100 if args.quick else args.teacher_steps
    total = time.perf_counter()
    names = {"bicubic": "bicubic", "l1": L1, "kd": KD}
    rows = {n: {k: [] for k in (*COLUMNS, "params", "ms", "train_s")} for n in [*names.values(), "teacher"]}
    teacher_name = "teacher"
    for seed in seeds:
        for variant in ("l1", "kd"):
            model, data, seconds = train(variant, seed, epochs, teacher_steps)
            row = rows[names[variant]]
            for k, v in evaluate(model.student, data).items():
                row[k].append(v)
            row["params"].append(params(model.student))
            row["ms"].append(ms_per_image(model.student, data))
            row["train_s"].append(seconds)
            print(f"seed {seed} | {names[variant]}: test PSNR {row['test_psnr'][-1]:.2f}", flush=True)
            if variant == "kd":
                teacher_name = f"teacher ({type(model.teacher).__name__}, EDSR-like)"
                for k, v in evaluate(model.teacher, data).items():
                    rows["teacher"][k].append(v)
                rows["teacher"]["params"].append(params(model.teacher))
                rows["teacher"]["ms"].append(ms_per_image(model.teacher, data))
        for k, v in evaluate(None, data).items():
            rows["bicubic"][k].append(v)
        rows["bicubic"]["params"].append(0)
        rows["bicubic"]["ms"].append(ms_per_image(None, data))
    ordered = {
        "bicubic": rows["bicubic"],
        teacher_name: rows["teacher"],
        names["l1"]: rows[names["l1"]],
        names["kd"]: rows[names["kd"]],
    }
    table = render(ordered, seeds, args.command, time.perf_counter() - total, epochs, teacher_steps)
    (results_dir(args) / "imdn.md").write_text(table)
    print(f"\n{table}", flush=True)
    update_readme(args, ROOT / "recipes" / "imdn" / "README.md", table)


if __name__ == "__main__":
    main()
