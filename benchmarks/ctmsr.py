"""CTMSR at ×2: the one-step student (consistency training, then + distribution trajectory matching) vs an EDM SR teacher.

Everything uses the same tiny LR-conditioned diffusers UNet (``recipes/ctmsr/config.yaml``) and the
same LR→HR trajectory (official σ 0 → 1, ρ 1, the CTMSR preconditioning), on 16x16 patches of the
scikit-image pictures at ×2. Rows:

* bicubic upsampling of the LR input;
* the EDM SR teacher (:func:`~lightning_distill.super_resolution.edm_sr.trained_edm_sr_teacher`):
  the same network trained by denoising regression on the trajectory for ``--teacher-steps`` steps
  (seed 0, shared by every seed), sampled with its deterministic many-step sampler and at 1 step;
* CTMSR stage 1 only (``--stage1-steps`` of consistency training, no teacher), EMA weights;
* CTMSR stage 1 only, continued for ``--stage2-steps`` more steps without DTM (the equal-compute
  control of the paper's "w/o DTM" ablation);
* CTMSR stage 1 + 2: the same stage-1 run continued with DTM against the frozen self-copy
  (refreshed every ``--refresh-every`` steps).

Students sample at 1 step (and 2 steps, multistep consistency sampling). Scores: PSNR and SSIM on Y
with a border of 2 on the 80 validation patches (16x16) of the five held-out pictures and on their
64x64 "Set5-like" crops; the feature distance of a digits SmallCNN trained on first use with another
seed and size than the training loss's network (lower is better; not LPIPS); ms per 64x64 test
image on one CPU thread (median of 3).

Usage (from the repository root)::

    python benchmarks/ctmsr.py            # seeds 0 1 2
    python benchmarks/ctmsr.py --quick    # smoke run: 1 seed, 20 + 10 steps, 20 teacher steps, no README

Writes ``benchmarks/results/ctmsr.md`` and the generated block of ``recipes/ctmsr/README.md``.
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
from _harness import bench_parser, quiet, recipe_cli, results_dir, set_threads, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std, paired  # noqa: E402

from lightning_distill.data.super_resolution import SuperResolutionDataModule  # noqa: E402
from lightning_distill.models.digits import digits_classifier  # noqa: E402
from lightning_distill.super_resolution.denoisers import LRConditionedUNet  # noqa: E402
from lightning_distill.super_resolution.edm_sr import (  # noqa: E402
    EDMSRProcess,
    from_model_space,
    to_model_space,
    trained_edm_sr_teacher,
)
from lightning_distill.super_resolution.metrics import FeatureDistance, sr_psnr, sr_ssim  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "ctmsr" / "config.yaml"
COLUMNS = ("val_psnr", "val_ssim", "val_fd", "test_psnr", "test_ssim", "test_fd")
S1, S1_LONG, S12 = "CTMSR stage 1 only", "CTMSR stage 1 only, continued", "CTMSR stage 1 + 2 (DTM)"


def evaluate(sample, data: SuperResolutionDataModule, metric: FeatureDistance) -> dict[str, float]:
    """Y PSNR/SSIM (border = scale) and the feature distance over val and test; ``sample(lr, gen) -> sr``."""
    out = {}
    for split in ("val", "test"):
        psnr, ssim, fd = [], [], []
        generator = torch.Generator().manual_seed(1234)
        for lr, hr in getattr(data, f"{split}_dataloader")():
            with torch.no_grad():
                sr = sample(lr, generator).clamp(0, 1)
                fd.append(metric(sr, hr))
            psnr.append(sr_psnr(sr, hr, border=data.scale, reduction="none"))
            ssim.append(sr_ssim(sr, hr, border=data.scale, reduction="none"))
        for name, values in (("psnr", psnr), ("ssim", ssim), ("fd", fd)):
            out[f"{split}_{name}"] = float(torch.cat(values).mean())
    return out


def ms_per_image(sample, data: SuperResolutionDataModule) -> float:
    lr = next(iter(data.test_dataloader()))[0]
    times = []
    for k in range(3):
        generator = torch.Generator().manual_seed(k)
        start = time.perf_counter()
        with torch.no_grad():
            sample(lr, generator)
        times.append(1000 * (time.perf_counter() - start) / lr.shape[0])
    return statistics.median(times)


def diffusion_sampler(network, process: EDMSRProcess, scale: int, steps: int, stochastic: bool):
    def sample(lr, generator):
        return from_model_space(
            process.sample(network, to_model_space(lr), scale, steps, generator, stochastic)
        )

    return sample


def bicubic(scale: int):
    return lambda lr, generator: F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)


def student_cli(seed: int, workdir: Path, max_steps: int, stage1: int, stage2: int, refresh: int, dtm: bool):
    config = copy.deepcopy(yaml.safe_load(CONFIG.read_text()))
    config["trainer"]["max_steps"] = max_steps
    config["trainer"].pop("val_check_interval", None)
    config["trainer"].pop("check_val_every_n_epoch", None)
    config["test_after_fit"] = False
    args = config["model"]["init_args"]
    args.update(consistency_steps=stage1, trajectory_steps=stage2 if dtm else 0, refresh_every=refresh)
    extra = ["--trainer.num_sanity_val_steps=0"]
    workdir.mkdir(parents=True, exist_ok=True)
    return recipe_cli(config, seed, extra, workdir=workdir)


def render(rows, seeds, command: str, seconds: float, args) -> str:
    headers = [
        "method",
        "steps",
        "ms / image",
        "val PSNR (Y)",
        "val SSIM",
        "val FD ↓",
        "test PSNR (Y)",
        "test SSIM",
        "test FD ↓",
    ]
    table = []
    for (name, steps), r in rows.items():
        table.append(
            [
                name,
                str(steps),
                mean_std(r["ms"], digits=1),
                mean_std(r["val_psnr"]),
                mean_std(r["val_ssim"], digits=4),
                mean_std(r["val_fd"], digits=4),
                mean_std(r["test_psnr"]),
                mean_std(r["test_ssim"], digits=4),
                mean_std(r["test_fd"], digits=4),
            ]
        )
    s12, s1l = rows[(S12, 1)], rows[(S1_LONG, 1)]
    return (
        "\n".join(
            [
                generated_header("benchmarks/ctmsr.py", command, seconds),
                "",
                machine_line(),
                "",
                f"Seeds {', '.join(map(str, seeds))}; mean ± sample std over seeds. ×2 bicubic degradation, 16x16 HR "
                f"patches of the scikit-image pictures, batch 16, AdamW 1e-3 (betas 0.9/0.9); every model is the same "
                f"tiny LR-conditioned diffusers UNet (16/32 channels). Teacher: EDM SR denoiser trained once (seed 0) "
                f"for {args.teacher_steps} steps, so its rows have no training spread. Students: {args.stage1_steps} "
                f"consistency steps (grid 4 → 3), then {args.stage2_steps} more steps with DTM (self-copy refreshed "
                f"every {args.refresh_every}) or without (control); EMA 0.99. val: 80 patches 16x16; test: five 64x64 "
                "crops. FD: feature distance of a digits SmallCNN trained on 16x16 digits (seed 1; the training loss uses the 8x8 one), not LPIPS. "
                "Students' 2-step rows use multistep consistency sampling; the teacher's many-step rows its "
                "deterministic sampler.",
                "",
                markdown_table(headers, table, align="lrrrrrrrr"),
                "",
                "Stage 1 + 2 − stage 1 continued (same seed, same number of steps), 1 step: "
                + ", ".join(
                    f"{c.replace('_', ' ')} {paired(s12[c], s1l[c], digits=4 if 'psnr' not in c else 2)}"
                    for c in COLUMNS
                )
                + ".",
            ]
        )
        + "\n"
    )


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 20 + 10 steps, 20 teacher steps")
    parser.add_argument(
        "--stage1-steps", type=int, default=300, help="consistency-training steps (default 300)"
    )
    parser.add_argument("--stage2-steps", type=int, default=150, help="steps after stage 1 (default 150)")
    parser.add_argument("--refresh-every", type=int, default=50, help="self-copy refresh period (default 50)")
    parser.add_argument("--teacher-steps", type=int, default=600, help="EDM teacher steps (default 600)")
    parser.add_argument(
        "--teacher-sampling-steps", type=int, default=10, help="teacher's many steps (default 10)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    set_threads(args.threads)
    quiet()
    if args.quick:
        args.seeds, args.stage1_steps, args.stage2_steps, args.refresh_every, args.teacher_steps = (
            args.seeds[:1],
            20,
            10,
            5,
            20,
        )
    total = time.perf_counter()
    data = SuperResolutionDataModule(scale=2, hr_size=16, patches_per_image=64, batch_size=16)
    data.setup("fit")
    data.setup("test")
    scale = data.scale
    metric = FeatureDistance(
        digits_classifier(size=16, seed=1), ["stem", "layer1"], name="digits SmallCNN (seed 1)"
    )
    process = EDMSRProcess()
    teacher = trained_edm_sr_teacher(
        LRConditionedUNet.tiny(sample_size=16, image_channels=3, block_out_channels=(16, 32)),
        data,
        steps=args.teacher_steps,
        lr=1e-3,
    )
    ts = args.teacher_sampling_steps
    samplers = {
        ("bicubic", "-"): lambda: bicubic(scale),
        ("EDM SR teacher", ts): lambda: diffusion_sampler(teacher, process, scale, ts, False),
        ("EDM SR teacher", 1): lambda: diffusion_sampler(teacher, process, scale, 1, False),
    }
    rows = {
        key: {k: [] for k in (*COLUMNS, "ms")}
        for key in [*samplers, (S1, 1), (S1, 2), (S1_LONG, 1), (S12, 1), (S12, 2)]
    }
    for key, build in samplers.items():  # deterministic given the noise: one evaluation, repeated per seed
        sample = build()
        result, ms = evaluate(sample, data, metric), ms_per_image(sample, data)
        for _ in args.seeds:
            for k, v in result.items():
                rows[key][k].append(v)
            rows[key]["ms"].append(ms)
        print(f"{key}: val PSNR {result['val_psnr']:.2f}, test PSNR {result['test_psnr']:.2f}", flush=True)
    n1, n2 = args.stage1_steps, args.stage2_steps
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            cli = student_cli(seed, tmp / "s1", n1, n1, n2, args.refresh_every, dtm=True)
            seconds = timed_fit(cli)[0]
            ckpt = tmp / "stage1.ckpt"
            cli.trainer.save_checkpoint(ckpt)
            runs = {S1: cli}
            for name, folder, dtm in ((S1_LONG, "control", False), (S12, "dtm", True)):
                cont = student_cli(seed, tmp / folder, n1 + n2, n1, n2, args.refresh_every, dtm)
                seconds += timed_fit(cont, ckpt_path=str(ckpt))[0]
                runs[name] = cont
            for name, run in runs.items():
                ema = run.model.ema_student.eval()
                for steps in (1, 2) if name != S1_LONG else (1,):
                    sample = diffusion_sampler(ema, process, scale, steps, True)
                    for k, v in evaluate(sample, data, metric).items():
                        rows[(name, steps)][k].append(v)
                    rows[(name, steps)]["ms"].append(ms_per_image(sample, data))
                print(
                    f"seed {seed} | {name}: val PSNR {rows[(name, 1)]['val_psnr'][-1]:.2f} ({seconds:.0f} s)",
                    flush=True,
                )
    table = render(rows, args.seeds, args.command, time.perf_counter() - total, args)
    (results_dir(args) / "ctmsr.md").write_text(table)
    print(f"\n{table}", flush=True)
    update_readme(args, ROOT / "recipes" / "ctmsr" / "README.md", table)


if __name__ == "__main__":
    main()
