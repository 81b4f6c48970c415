"""DMD2 on digits 8x8 with a trained UNet teacher, scored by the Fréchet classifier distance (not FID).

The teacher is ``recipes/dmd2/digits.yaml``'s: a tiny diffusers ``UNet2DModel`` trained once by
:func:`lightning_distill.diffusion.teachers.trained_denoiser` (ε-prediction, SD's scaled-linear
schedule) and cached; every seed reuses it. Each seed then distils a one-step DMD2 student from it
(the config, built through :class:`lightning_distill.cli.DistillCLI` with only the seed changed,
validation off) and draws ``n`` samples from noise seeded with the seed. Rows: the data-vs-data
floor (``n`` training digits), the teacher sampled with DDIM in 1, 4 and 50 steps
(:func:`lightning_distill.diffusion.sample`) from the same noise, and the one-step student.

Metric: :class:`~lightning_distill.diffusion.frechet.FrechetClassifierDistance`, the Fréchet
distance between Gaussian fits of the penultimate features of a small CNN trained on the digits'
training split in this repository (:func:`~lightning_distill.models.digits.digits_classifier`),
against the held-out digits (validation + test splits). It is **not** FID (no Inception network),
and its values are comparable only with each other.

Usage (from the repository root)::

    nice -n 5 python benchmarks/dmd2_digits.py --threads 1     # seeds 0 1 2
    python benchmarks/dmd2_digits.py --quick                   # smoke run: 1 seed, 1 epoch, n 200

Writes ``benchmarks/results/dmd2_digits.md``, image grids ``benchmarks/results/dmd2_digits_*.png``
and the block between ``<!-- digits:start -->`` and ``<!-- digits:end -->`` of
``recipes/dmd2/README.md`` (``--quick`` writes under ``benchmarks/results/quick/`` only).
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import torch  # noqa: E402
import yaml  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, sampling_ms, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std, paired  # noqa: E402
from PIL import Image  # noqa: E402

from lightning_distill.callbacks.sample_logging import image_grid  # noqa: E402
from lightning_distill.cli import DistillCLI  # noqa: E402
from lightning_distill.diffusion import sample  # noqa: E402
from lightning_distill.diffusion.frechet import FrechetClassifierDistance  # noqa: E402
from lightning_distill.models.digits import digits_classifier  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "dmd2" / "digits.yaml"
Config = dict[str, Any]


def build(config: Config, seed: int, max_epochs: int | None, workdir: Path) -> DistillCLI:
    """Trainer, model and data from ``config`` as ``lightning-distill fit`` would build them (no validation)."""
    extra = ["--trainer.callbacks=[]", "--trainer.num_sanity_val_steps=0"]
    if max_epochs is not None:
        extra.append(f"--trainer.max_epochs={max_epochs}")
    return recipe_cli(config, seed, extra, workdir=workdir)


def fcd(metric: FrechetClassifierDistance, held_out: torch.Tensor, images: torch.Tensor) -> float:
    """FCD of ``images`` ``(n, 1, 8, 8)`` against ``held_out``."""
    metric.reset()
    metric.update(held_out, real=True)
    for chunk in images.split(500):
        metric.update(chunk.float(), real=False)
    return float(metric.compute())


def save_grid(images: torch.Tensor, value_range: tuple[float, float], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images[:64], value_range)).save(path)


def build_parser():
    return bench_parser(__file__, __doc__, quick="1 seed, 1 epoch, n 200", samples=1000)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv, all_warnings=True)
    seeds = args.seeds[:1] if args.quick else args.seeds
    n = 200 if args.quick else args.n
    max_epochs = 1 if args.quick else None
    command = args.command
    out_dir = results_dir(args)
    config = yaml.safe_load(CONFIG.read_text())
    total = time.perf_counter()

    metric = FrechetClassifierDistance(digits_classifier(size=8), image_size=8)
    rows: dict[str, list[float]] = {}
    ms: dict[str, float] = {}
    train_s: list[float] = []
    teacher_train_s = None
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            cli = build(copy.deepcopy(config), seed, max_epochs, Path(tmp))
            model, data = cli.model, cli.datamodule
            teacher_train_s = model.teacher.training_record.get("seconds", teacher_train_s)
            train_s.append(timed_fit(cli)[0])
        model.eval()
        data.setup()
        splits = data._prepare()
        held_out = torch.cat([splits["val"][0], splits["test"][0]])
        train_x = data.train_images()[0]
        value_range = (float(train_x.min()), float(train_x.max()))
        pick = torch.randperm(train_x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
        samples: dict[str, torch.Tensor] = {"data vs data (floor)": train_x[pick]}
        steps = {"data vs data (floor)": "-", "DMD2 student, 1 step (digits.yaml)": "1"}
        noise = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
        for k in (1, 4, 50):
            steps[f"teacher, DDIM, {k} step{'s' if k > 1 else ''}"] = str(k)
            with torch.no_grad():
                samples[f"teacher, DDIM, {k} step{'s' if k > 1 else ''}"] = sample(
                    model.teacher, model.schedule, noise, k
                )
        samples["DMD2 student, 1 step (digits.yaml)"] = model.sample(n, torch.Generator().manual_seed(seed))
        for name, images in samples.items():
            rows.setdefault(name, []).append(fcd(metric, held_out, images))
            if seed == seeds[0]:
                slug = name.split(" (")[0].replace(",", "").replace(" ", "_").lower()
                save_grid(images, value_range, out_dir / f"dmd2_digits_{slug}.png")
        print(
            f"seed {seed}: "
            + ", ".join(f"{k}: {v[-1]:.2f}" for k, v in rows.items())
            + f" | train {train_s[-1]:.0f} s",
            flush=True,
        )
    for k in (1, 4, 50):
        ms[f"teacher, DDIM, {k} step{'s' if k > 1 else ''}"] = sampling_ms(
            lambda count, g, k=k: sample(
                model.teacher, model.schedule, torch.randn(count, 1, 8, 8, generator=g), k
            ),
            n,
            repeats=3,
        )
    ms["DMD2 student, 1 step (digits.yaml)"] = sampling_ms(model.sample, n, repeats=3)

    student, teacher50 = rows["DMD2 student, 1 step (digits.yaml)"], rows["teacher, DDIM, 50 steps"]
    floor, teacher1 = rows["data vs data (floor)"], rows["teacher, DDIM, 1 step"]
    iterations = model.iteration
    table = markdown_table(
        ["samples", "steps", "FCD (lower is better)", "sampling ms", "train s"],
        [
            [
                name,
                steps[name],
                mean_std(values, digits=2),
                f"{ms[name]:.0f}" if name in ms else "-",
                mean_std(train_s, digits=0) if name.startswith("DMD2") else "-",
            ]
            for name, values in rows.items()
        ],
        align="lrlrr",
    )
    body = "\n".join(
        [
            generated_header("benchmarks/dmd2_digits.py", command, time.perf_counter() - total),
            "",
            machine_line() + " Shared with other jobs: timings are indicative.",
            "",
            f"Teacher: `recipes/dmd2/digits.yaml`'s tiny UNet2DModel trained once with `trained_denoiser` "
            f"({config['model']['init_args']['teacher']['init_args']['steps']} steps"
            + (f", {teacher_train_s:.0f} s" if teacher_train_s else "")
            + f"), shared by every seed. Student: DMD2 one-step generator, {iterations} iterations "
            f"(update ratio {config['model']['init_args']['generator_update_every']}), seeds "
            f"{', '.join(map(str, seeds))}; n = {n} samples per model and seed (teacher rows: the same noise). "
            "FCD: Fréchet distance of penultimate features of the repo's digits classifier "
            "(`digits_classifier(size=8)`), against the held-out digits (validation + test splits). "
            "**Not FID.** The floor compares n training digits (which the classifier was trained on) with the "
            "held-out ones. Mean ± sample std over seeds; sampling: median wall-clock of one call drawing n "
            "samples.",
            "",
            table,
            "",
            "Measured factors (FCD, paired by seed, mean ± std):",
            "",
            f"- one-step student / teacher with 50 DDIM steps: **{paired(student, teacher50, op='ratio')}**",
            f"- one-step student / teacher with 1 DDIM step: {paired(student, teacher1, op='ratio', digits=3)}",
            f"- one-step student / data-vs-data floor: {paired(student, floor, op='ratio')}",
        ]
    )
    (out_dir / "dmd2_digits.md").write_text("# DMD2 on digits 8x8\n\n" + body + "\n")
    print(f"\n{body}", flush=True)
    update_readme(args, ROOT / "recipes" / "dmd2" / "README.md", body, key="digits")


if __name__ == "__main__":
    main()
