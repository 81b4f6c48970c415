"""YONOS-SR on digits: ×4 and ×8 one-step students by scale distillation vs trained directly at the scale.

The claim (YONOS-SR, arXiv 2401.17258): an SR diffusion model trained by scale distillation (a ×2
teacher's x0 predictions as targets for a ×4 student, that student's for a ×8 one) beats the same
model trained directly on the HR images at the scale, most of all with few sampling steps, and a
decoder fine-tuned on the frozen one-step model lifts one step further.

Toy scale: ``recipes/yonos_sr/config.yaml``'s tiny ``LRConditionedUNet`` (16/32 channels) on 16x16
HR digits. Per seed: the ×2 teacher is trained (``trained_sr_denoiser``, ``--teacher-steps``, that
seed); then two runs start from its weights with the same data order and noise and take the same
steps: ×4 for ``--stage-steps``, ×8 for ``--stage-steps``, then the decoder for ``--decoder-steps``
with the denoiser frozen. ``scale distillation`` regresses the previous stage's frozen model
(``target="teacher"``, the paper); ``direct`` regresses the HR image (``target="ground_truth"``, the
paper's baseline). The ×4 rows are the students at the end of the ×4 stage, the ×8 rows at the end
of the ×8 stage (before the decoder), the "+ decoder" rows after it.

Scores on the digits test split (16x16): PSNR and SSIM on Y with a 2-pixel border, a feature
distance on a digits ``SmallCNN`` (``digits_classifier``; LPIPS-like, not LPIPS), and milliseconds
per image (64 LR images in one batch, one CPU thread, median of 3). Every sampler gets the same
noise (seed 0). DDIM uses trailing timesteps (the one-step sampler starts at t = 999).

Usage (from the repository root)::

    python benchmarks/yonos_sr.py            # seeds 0 1 2
    python benchmarks/yonos_sr.py --quick    # smoke run: 1 seed, few steps, no README

Writes ``benchmarks/results/yonos_sr.md`` and the generated block of ``recipes/yonos_sr/README.md``.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import lightning.pytorch as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _harness import bench_parser, results_dir, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std, paired  # noqa: E402

from lightning_distill.data.super_resolution import SuperResolutionDataModule  # noqa: E402
from lightning_distill.models.digits import digits_classifier  # noqa: E402
from lightning_distill.recipes.yonos_sr import YONOSSR  # noqa: E402
from lightning_distill.super_resolution import LRConditionedUNet  # noqa: E402
from lightning_distill.super_resolution.degradations import bicubic_downsample  # noqa: E402
from lightning_distill.super_resolution.metrics import FeatureDistance, sr_psnr, sr_ssim  # noqa: E402
from lightning_distill.super_resolution.scale_distillation import (  # noqa: E402
    ddim_sr,
    one_step_sr,
    sr_noise_scheduler,
    trained_sr_denoiser,
)

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("psnr", "ssim", "fd", "ms")
HR = 16


def unet() -> LRConditionedUNet:
    return LRConditionedUNet.tiny(sample_size=HR, image_channels=3, block_out_channels=(16, 32))


def data(scale: int, seed: int) -> SuperResolutionDataModule:
    dm = SuperResolutionDataModule(
        scale=scale, hr_size=HR, source="digits", batch_size=16, test_size=HR, seed=seed
    )
    dm.setup()
    return dm


def sample(model, lr: torch.Tensor, steps: int, decoder=None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    if steps == 1:
        return one_step_sr(model, lr, HR, SCHEDULER, gen, decoder)
    return ddim_sr(model, lr, HR, SCHEDULER, steps, gen)


def score(model, hr: torch.Tensor, scale: int, steps: int, distance, decoder=None) -> dict[str, float]:
    lr = bicubic_downsample(hr, scale)
    if model is None:
        sr = F.interpolate(lr, size=(HR, HR), mode="bicubic", align_corners=False).clamp(0, 1)
    else:
        sr = sample(model, lr, steps, decoder)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        if model is None:
            F.interpolate(lr[:64], size=(HR, HR), mode="bicubic", align_corners=False)
        else:
            sample(model, lr[:64], steps, decoder)
        times.append(1000 * (time.perf_counter() - start) / lr[:64].shape[0])
    return {
        "psnr": float(sr_psnr(sr, hr, border=2)),
        "ssim": float(sr_ssim(sr, hr, border=2)),
        "fd": float(distance(sr, hr).mean()),
        "ms": statistics.median(times),
    }


class Snapshots(L.Callback):
    """Copies of the student (and decoder) at the given global steps, before the step's update."""

    def __init__(self, steps: list[int]) -> None:
        self.steps, self.taken = steps, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step in self.steps and trainer.global_step not in self.taken:
            self.taken[trainer.global_step] = copy.deepcopy(pl_module.student).eval()


def train(target: str, teacher, seed: int, stage_steps: int, decoder_steps: int):
    torch.manual_seed(seed)
    recipe = YONOSSR(
        student=unet(),
        teacher=copy.deepcopy(teacher),
        scales=(2, 4, 8),
        stage_steps=[stage_steps, 2 * stage_steps],
        target=target,
        noise_seed=seed,
        border=2,
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
    )
    snaps = Snapshots([stage_steps, 2 * stage_steps])
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        max_steps=2 * stage_steps + decoder_steps,
        callbacks=[snaps],
    )
    start = time.perf_counter()
    trainer.fit(recipe, datamodule=data(8, seed))
    seconds = time.perf_counter() - start
    return (
        snaps.taken[stage_steps],
        snaps.taken[2 * stage_steps],
        recipe.student.eval(),
        recipe.decoder.eval(),
        seconds,
    )


SCHEDULER = sr_noise_scheduler()


def diagnose(args) -> None:
    """How far the ×2 teacher's targets are from the HR images, and how much a ×2 LR image keeps.

    Scale distillation and direct training share their minimiser (the student's best prediction of
    the teacher's x0 is its best prediction of x0), so distillation can only help through the part
    of the target that differs from the HR image: the teacher's own uncertainty. This measures that
    part, ``mean ‖x̂0_T(x_t, t, LR_2) − x0‖²`` in [-1, 1] units, with the benchmark's cached teachers,
    and the bicubic ×2 PSNR of digits against natural-image patches of the same size.
    """
    total = time.perf_counter()
    lines, gaps = [], {}
    for seed in args.seeds:
        dm = data(2, seed)
        teacher = trained_sr_denoiser(unet(), dm, scale=2, steps=args.teacher_steps, lr=2e-3, seed=seed)
        hr = dm.hr_images("test")
        x0, lr = hr * 2 - 1, bicubic_downsample(hr, 2)
        gen = torch.Generator().manual_seed(0)
        for t in (999, 750, 500, 250, 50):
            noise = torch.randn(x0.shape, generator=gen)
            tt = torch.full((hr.shape[0],), t)
            with torch.no_grad():
                pred = teacher(SCHEDULER.add_noise(x0, noise, tt), tt, lr * 2 - 1).sample
            gaps.setdefault(t, []).append(float((pred - x0).square().mean()))
    natural = SuperResolutionDataModule(scale=2, hr_size=HR, source="natural", patches_per_image=16)
    natural.setup()
    psnr = {}
    for name, images in (
        ("digits test", SuperResolutionDataModule(scale=2, hr_size=HR, source="digits").hr_images("test")),
        ("natural val", natural.hr_images("val")),
    ):
        up = F.interpolate(bicubic_downsample(images, 2), size=(HR, HR), mode="bicubic", align_corners=False)
        psnr[name] = float(sr_psnr(up.clamp(0, 1), images, border=2))
    table = markdown_table(
        ["t", "teacher target vs HR, mean squared error ([-1, 1] units)"],
        [[t, mean_std(v, digits=5)] for t, v in gaps.items()],
        align="rr",
    )
    lines = [
        generated_header("benchmarks/yonos_sr.py", args.command, time.perf_counter() - total),
        "",
        machine_line(),
        "",
        f"×2 teachers of the benchmark (seeds {', '.join(map(str, args.seeds))}, {args.teacher_steps} steps) on the "
        "digits test split; the same noise for every seed.",
        "",
        table,
        "",
        "Bicubic ×2 PSNR (Y, border 2) of 16x16 HR images: "
        + ", ".join(f"{k} {v:.2f} dB" for k, v in psnr.items())
        + ".",
    ]
    body = "\n".join(lines) + "\n"
    (results_dir(args) / "yonos_sr_diagnosis.md").write_text(body)
    print(body, flush=True)


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 20 steps a stage, 40 teacher steps")
    parser.add_argument(
        "--teacher-steps", type=int, default=500, help="x2 teacher training steps (default 500)"
    )
    parser.add_argument(
        "--stage-steps", type=int, default=250, help="steps of each distillation stage (default 250)"
    )
    parser.add_argument(
        "--decoder-steps", type=int, default=100, help="decoder fine-tuning steps (default 100)"
    )
    parser.add_argument(
        "--many-steps", type=int, default=20, help="DDIM steps of the many-step rows (default 20)"
    )
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="write results/yonos_sr_diagnosis.md (teacher target gap) only",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    if args.diagnose:
        diagnose(args)
        return
    seeds = args.seeds[:1] if args.quick else args.seeds
    teacher_steps = 40 if args.quick else args.teacher_steps
    stage_steps = 20 if args.quick else args.stage_steps
    decoder_steps = 10 if args.quick else args.decoder_steps
    many = 4 if args.quick else args.many_steps
    total = time.perf_counter()
    distance = FeatureDistance(
        digits_classifier(size=16), ["stem", "layer1"], name="digits SmallCNN distance"
    )
    rows: dict[str, dict[str, list[float]]] = {}

    def add(name: str, values: dict[str, float]) -> None:
        row = rows.setdefault(name, {k: [] for k in (*COLUMNS, "train_s")})
        for k, v in values.items():
            row[k].append(v)

    for seed in seeds:
        dm = data(2, seed)
        teacher = trained_sr_denoiser(unet(), dm, scale=2, steps=teacher_steps, lr=2e-3, seed=seed)
        hr = dm.hr_images("test")
        add(f"×2 teacher on ×2 LR, {many} steps (reference)", score(teacher, hr, 2, many, distance))
        add("×2 teacher on ×2 LR, 1 step (reference)", score(teacher, hr, 2, 1, distance))
        runs = {t: train(t, teacher, seed, stage_steps, decoder_steps) for t in ("ground_truth", "teacher")}
        for scale, index in ((4, 0), (8, 1)):
            add(f"×{scale} bicubic", score(None, hr, scale, 1, distance))
            for target, label in (("ground_truth", "direct"), ("teacher", "scale distillation")):
                model = runs[target][index]
                add(f"×{scale} {label}, {many} steps", score(model, hr, scale, many, distance))
                add(
                    f"×{scale} {label}, 1 step",
                    score(model, hr, scale, 1, distance) | {"train_s": runs[target][4]},
                )
        for target, label in (("ground_truth", "direct"), ("teacher", "scale distillation (YONOS-SR)")):
            _, _, student, decoder, _ = runs[target]
            add(f"×8 {label} + decoder, 1 step", score(student, hr, 8, 1, distance, decoder))
        done = {k: round(v["psnr"][-1], 2) for k, v in rows.items() if "1 step" in k}
        print(f"seed {seed}: PSNR {done}", flush=True)

    order = sorted(rows, key=lambda n: (0 if n.startswith("×2") else int(n[1]), "+ decoder" in n))
    headers = ["method", "PSNR (Y)", "SSIM (Y)", distance.name, "ms / image", "train s (whole run)"]
    table = [
        [
            n,
            mean_std(rows[n]["psnr"]),
            mean_std(rows[n]["ssim"], digits=4),
            mean_std(rows[n]["fd"], digits=4),
            mean_std(rows[n]["ms"], digits=2),
            mean_std(rows[n]["train_s"], digits=0) if rows[n]["train_s"] else "-",
        ]
        for n in order
    ]

    def diff(scale: int, suffix: str, column: str) -> str:
        a, b = (
            rows[f"×{scale} scale distillation, {suffix}"][column],
            rows[f"×{scale} direct, {suffix}"][column],
        )
        return paired(a, b, digits=4 if column in ("ssim", "fd") else 2)

    paired_lines = [
        f"×{s}, {suffix}: PSNR {diff(s, suffix, 'psnr')}, SSIM {diff(s, suffix, 'ssim')}, "
        f"distance {diff(s, suffix, 'fd')}"
        for s in (4, 8)
        for suffix in ("1 step", f"{many} steps")
    ]
    body = "\n".join(
        [
            generated_header("benchmarks/yonos_sr.py", args.command, time.perf_counter() - total),
            "",
            machine_line(),
            "",
            f"Seeds {', '.join(map(str, seeds))}; mean ± sample std over seeds. 16x16 HR digits, bicubic LR; tiny "
            f"LRConditionedUNet (16/32 channels), x0 prediction, DDPM 1000 linear betas. ×2 teacher {teacher_steps} steps "
            f"(per seed); both runs start from it, then ×4 {stage_steps} steps, ×8 {stage_steps} steps, decoder "
            f"{decoder_steps} steps (AdamW 1e-3, batch 16). Test split of digits ({hr.shape[0]} images); PSNR/SSIM on Y, "
            "border 2; ms / image: 64 LR images in one batch, one CPU thread, median of 3.",
            "",
            markdown_table(headers, table, align="lrrrrr"),
            "",
            "Scale distillation − direct, paired over seeds: " + "; ".join(paired_lines) + ".",
        ]
    )
    body += "\n"
    (results_dir(args) / "yonos_sr.md").write_text(body)
    print(f"\n{body}", flush=True)
    update_readme(args, ROOT / "recipes" / "yonos_sr" / "README.md", body)


if __name__ == "__main__":
    main()
