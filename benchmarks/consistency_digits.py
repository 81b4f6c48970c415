"""SLAM, BOOT and LoRA guidance distillation on digits 8x8 with a trained, class-conditional UNet teacher (FCD).

The teacher is the one of ``recipes/{slam,boot,lora_guidance}/digits.yaml`` (the same settings, so one
cached file): a tiny diffusers ``UNet2DModel`` trained once by
:func:`lightning_distill.diffusion.teachers.trained_denoiser` (ε-prediction, SD's scaled-linear
schedule, ten classes plus the null label, 10 % label dropout for classifier-free guidance). Each
seed distils each recipe from it (the config, built through :class:`lightning_distill.cli.DistillCLI`
with only the seed changed, validation off) and draws ``n`` class-conditional samples (labels
``i mod 10``, so every class equally often) from noise seeded with the seed, all at the guidance
``w = 1`` (CFG scale 2) the configs distil:

* the teacher, DDIM with two-pass CFG in 1, 4 and 50 steps (the same noise), and unguided in 50 steps;
* SLAM's consistency student in 1, 2 and 4 steps (LCM's multi-step sampling);
* BOOT's generator in its one step (data-free; BOOT defines no multi-step sampler);
* the LoRA guidance student, DDIM with one pass per step, in 1, 4 and 50 steps (a guidance, not a
  step, distillation: its claim is one pass instead of two at the same step count).

Metric: :class:`~lightning_distill.diffusion.frechet.FrechetClassifierDistance`, the Fréchet distance
between Gaussian fits of the penultimate features of the repository's small digits classifier
(:func:`~lightning_distill.models.digits.digits_classifier`), against the held-out digits
(validation + test splits). It is **not** FID, and its values are comparable only with each other.
The floor row compares ``n`` training digits with the held-out ones.

Usage (from the repository root)::

    nice -n 5 python benchmarks/consistency_digits.py --threads 1     # seeds 0 1 2, all three recipes
    python benchmarks/consistency_digits.py --quick                   # smoke run: 1 seed, 20 steps, n 200
    # or one process per seed (what the tables were made with on a shared 2-core machine), then merge:
    python benchmarks/consistency_digits.py --seeds 0 --save-raw raw_0.json       # likewise 1 and 2, --no-timing
    python benchmarks/consistency_digits.py --merge raw_0.json raw_1.json raw_2.json

The SLAM table's LCM baseline rows (the same recipe with ``sub_path: false``) come from
``--recipes slam --extra-args=--model.init_args.sub_path=false --save-raw lcm_<seed>.json`` runs whose SLAM
rows were renamed and added to the same seed's raw file (owner ``"slam:lcm"``) before ``--merge``.

Writes ``benchmarks/results/consistency_digits.md`` and the block between ``<!-- digits:start -->``
and ``<!-- digits:end -->`` of ``recipes/{slam,boot,lora_guidance}/README.md`` (``--quick`` writes
under ``benchmarks/results/quick/`` only).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import torch  # noqa: E402
import yaml  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, sampling_ms, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std, paired  # noqa: E402

from lightning_distill.data import DigitsDataModule  # noqa: E402
from lightning_distill.diffusion import sample  # noqa: E402
from lightning_distill.diffusion.frechet import FrechetClassifierDistance  # noqa: E402
from lightning_distill.models.digits import digits_classifier  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("slam", "boot", "lora_guidance")
GUIDANCE = 1.0  # w of every config (CFG scale 1 + w)
TIMING_N = 256  # samples per timed sampling call
TEACHER = "teacher, DDIM + CFG (2 passes/step)"
Draw = Callable[[int, torch.Generator], torch.Tensor]


def labels_for(n: int) -> torch.Tensor:
    """``i mod 10``: every class equally often."""
    return torch.arange(n) % 10


def student_samplers(name: str, model: Any) -> dict[str, tuple[str, Draw]]:
    """Row name -> (steps, draw(n, generator)) of the distilled student of recipe ``name``."""

    def slam(k: int) -> Draw:
        def draw(n: int, g: torch.Generator) -> torch.Tensor:
            model.num_inference_steps = k
            return model.sample(n, g, labels_for(n))

        return draw

    def lora(k: int) -> Draw:
        def draw(n: int, g: torch.Generator) -> torch.Tensor:
            model.num_inference_steps = k
            return model.sample(n, g, labels_for(n), guidance=GUIDANCE)

        return draw

    if name == "slam":
        return {f"SLAM student, {k} step{'s' * (k > 1)}": (str(k), slam(k)) for k in (1, 2, 4)}
    if name == "boot":
        return {"BOOT generator, 1 step (data-free)": ("1", lambda n, g: model.sample(n, g, labels_for(n)))}
    return {
        f"LoRA guidance student (1 pass/step), {k} step{'s' * (k > 1)}": (str(k), lora(k)) for k in (1, 4, 50)
    }


def teacher_samplers(model: Any) -> dict[str, tuple[str, Draw]]:
    """The teacher's rows: guided DDIM in 1, 4 and 50 steps and unguided in 50, from the recipe's noise."""
    teacher, schedule = model.teacher, model.schedule

    def draw(k: int, scale: float) -> Draw:
        def run(n: int, g: torch.Generator) -> torch.Tensor:
            labels = labels_for(n)
            null = model.null_condition(labels)
            return sample(teacher, schedule, model.initial_noise(n, g), k, labels, null, scale)

        return run

    rows = {f"{TEACHER}, {k} step{'s' * (k > 1)}": (str(k), draw(k, 1.0 + GUIDANCE)) for k in (1, 4, 50)}
    rows["teacher, DDIM, no guidance (1 pass/step), 50 steps"] = ("50", draw(50, 1.0))
    return rows


def fcd(metric: FrechetClassifierDistance, reference: torch.Tensor, images: torch.Tensor) -> float:
    """FCD of ``images`` ``(n, 1, 8, 8)`` against ``reference``."""
    metric.reset()
    for chunk in reference.split(500):
        metric.update(chunk.float(), real=True)
    for chunk in images.split(500):
        metric.update(chunk.float(), real=False)
    return float(metric.compute())


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 20 training steps, n 200", samples=500)
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES), help="which recipes")
    parser.add_argument("--max-steps", type=int, default=None, help="training steps (default: each config's)")
    parser.add_argument("--no-timing", action="store_true", help="skip the sampling wall-clock")
    parser.add_argument(
        "--extra-args",
        nargs="+",
        default=[],
        help="CLI overrides for every recipe, e.g. --recipes slam --extra-args=--model.init_args.sub_path=false",
    )
    parser.add_argument(
        "--save-raw", type=Path, default=None, help="write the per-seed numbers to this JSON file and stop"
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="report from --save-raw files (e.g. one per seed, run in parallel) instead of training",
    )
    return parser


def merge(paths: list[Path]) -> dict[str, Any]:
    """The raw numbers of several ``--save-raw`` files, seeds concatenated in file order; timings of the first that has them."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    raw = copy.deepcopy(parts[0])
    for part in parts[1:]:
        raw["seeds"] += part["seeds"]
        for key in ("rows", "vs_teacher", "train_s"):
            for name, values in part[key].items():
                raw[key].setdefault(name, []).extend(values)
        raw["ms"] = raw["ms"] or part["ms"]
        raw["seconds"] = max(raw["seconds"], part["seconds"])
    return raw


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv, all_warnings=True)
    if args.merge:
        report(args, merge(args.merge))
        return
    seeds = args.seeds[:1] if args.quick else args.seeds
    n = 200 if args.quick else args.n
    max_steps = 20 if args.quick else args.max_steps
    configs = {r: yaml.safe_load((ROOT / "recipes" / r / "digits.yaml").read_text()) for r in args.recipes}
    total = time.perf_counter()
    metric = FrechetClassifierDistance(digits_classifier(size=8), image_size=8)
    rows: dict[str, list[float]] = {}
    vs_teacher: dict[str, list[float]] = {}  # FCD against the teacher's own 50-step CFG samples (other noise)
    steps: dict[str, str] = {"data vs data (floor)": "-"}
    owner: dict[str, str] = {}  # row -> recipe
    train_s: dict[str, list[float]] = {}
    iterations: dict[str, int] = {}
    last: dict[str, Any] = {}
    teacher_record: dict[str, Any] = {}
    for seed in seeds:
        models: dict[str, Any] = {}
        for name, config in configs.items():
            extra = [
                "--trainer.callbacks=[]",
                "--trainer.num_sanity_val_steps=0",
                "--trainer.limit_val_batches=0",
            ]
            if max_steps is not None:
                extra.append(f"--trainer.max_steps={max_steps}")
            extra += args.extra_args
            with tempfile.TemporaryDirectory() as tmp:
                cli = recipe_cli(copy.deepcopy(config), seed, extra, workdir=Path(tmp))
                teacher_record = cli.model.teacher.training_record or teacher_record
                train_s.setdefault(name, []).append(timed_fit(cli)[0])
            models[name] = cli.model.eval()
            iterations[name] = int(cli.model.iteration)
        first = next(iter(models.values()))  # the teacher is shared (one cache key)
        data = DigitsDataModule(batch_size=64)  # the teacher's training data and splits
        data.setup()
        splits = data._prepare()
        held_out = torch.cat([splits["val"][0], splits["test"][0]])
        train_x = data.train_images()[0]
        pick = torch.randperm(train_x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
        floor = train_x[pick]
        samplers = {"teacher": teacher_samplers(first)}
        with (
            torch.no_grad()
        ):  # the teacher's reference samples: 50 CFG steps from noise no sampler below uses
            reference = samplers["teacher"][f"{TEACHER}, 50 steps"][1](
                n, torch.Generator().manual_seed(seed + 10**6)
            )
        rows.setdefault("data vs data (floor)", []).append(fcd(metric, held_out, floor))
        vs_teacher.setdefault("data vs data (floor)", []).append(fcd(metric, reference, floor))
        for name, model in models.items():
            samplers[name] = student_samplers(name, model)
        for name, table in samplers.items():
            for row, (k, draw) in table.items():
                steps[row], owner[row] = k, name
                with torch.no_grad():
                    images = draw(n, torch.Generator().manual_seed(seed))
                rows.setdefault(row, []).append(fcd(metric, held_out, images))
                vs_teacher.setdefault(row, []).append(fcd(metric, reference, images))
        last = samplers
        print(
            f"seed {seed}: "
            + ", ".join(f"{k}: {v[-1]:.2f}" for k, v in rows.items())
            + " | train "
            + ", ".join(f"{k} {v[-1]:.0f} s" for k, v in train_s.items()),
            flush=True,
        )
    ms = {}
    if not args.no_timing:
        ms = {
            row: sampling_ms(draw, TIMING_N, repeats=2)
            for table in last.values()
            for row, (_, draw) in table.items()
        }
    raw = {
        "seeds": list(seeds),
        "n": n,
        "rows": rows,
        "vs_teacher": vs_teacher,
        "steps": steps,
        "owner": owner,
        "train_s": train_s,
        "iterations": iterations,
        "teacher_record": {k: v for k, v in teacher_record.items() if isinstance(v, (int, float, str))},
        "ms": ms,
        "seconds": time.perf_counter() - total,
        "recipes": list(configs),
    }
    if args.save_raw is not None:
        args.save_raw.parent.mkdir(parents=True, exist_ok=True)
        args.save_raw.write_text(json.dumps(raw, indent=1))
        return
    report(args, raw)


def report(args: Any, raw: dict[str, Any]) -> None:
    """Write the tables of ``raw`` (results file, README blocks) and print them."""
    rows, vs_teacher, steps, owner = raw["rows"], raw["vs_teacher"], raw["steps"], raw["owner"]
    train_s, iterations, ms, seeds, n = raw["train_s"], raw["iterations"], raw["ms"], raw["seeds"], raw["n"]
    configs = raw["recipes"]
    teacher_record = raw["teacher_record"]
    out_dir = results_dir(args)

    def recipe_of(row: str) -> str:
        """The recipe a row belongs to; a variant run of it (owner ``"slam:lcm"``) belongs to ``slam``."""
        return owner.get(row, "").split(":")[0]

    def table_for(names: tuple[str, ...]) -> str:
        keep = [r for r in rows if r == "data vs data (floor)" or recipe_of(r) in ("teacher", *names)]
        return markdown_table(
            [
                "samples",
                "steps",
                "FCD vs held-out digits",
                "FCD vs teacher (CFG, 50 steps)",
                f"sampling ms ({TIMING_N})",
                "train s",
            ],
            [
                [
                    r,
                    steps[r],
                    mean_std(rows[r], digits=2),
                    mean_std(vs_teacher[r], digits=2),
                    f"{ms[r]:.0f}" if r in ms else "-",
                    mean_std(train_s[owner[r]], digits=0) if owner.get(r) in train_s else "-",
                ]
                for r in keep
            ],
            align="lrllrr",
        )

    teacher50_row, teacher4_row = f"{TEACHER}, 50 steps", f"{TEACHER}, 4 steps"

    def factors(name: str) -> list[str]:
        lines = []
        for r in rows:
            if recipe_of(r) == name:
                lines.append(
                    f"- {r}: FCD vs teacher (CFG, 50 steps) {mean_std(vs_teacher[r])} (the teacher's own 50-step "
                    f"samples from other noise: {mean_std(vs_teacher[teacher50_row])}); FCD vs data / teacher at "
                    f"50 steps {paired(rows[r], rows[teacher50_row], op='ratio')}, at 4 steps "
                    f"{paired(rows[r], rows[teacher4_row], op='ratio')}"
                )
        return lines

    settings = teacher_record or {}
    intro = (
        f"Teacher: the digits configs' class-conditional tiny UNet2DModel trained once with `trained_denoiser` "
        f"({settings.get('steps', '?')} steps, label dropout {settings.get('label_dropout', '?')}"
        + (f", {settings['seconds']:.0f} s" if "seconds" in settings else "")
        + f"), shared by every recipe and seed. Guidance w = {GUIDANCE:g} (CFG scale {1 + GUIDANCE:g}) everywhere "
        "but the unguided teacher row. Students: "
        + ", ".join(f"{r} {iterations[r]} iterations" for r in configs)
        + f"; seeds {', '.join(map(str, seeds))}; n = {n} class-conditional samples per model and seed "
        "(labels i mod 10; every sampler starts from the same noise). FCD: Fréchet distance of the penultimate "
        "features of the repo's digits classifier (`digits_classifier(size=8)`), **not FID**, against the held-out "
        "digits (validation + test splits) and against n samples of the guided teacher in 50 DDIM steps drawn "
        "from other noise (what the students distil; the teacher's own 50-step row in that column is its noise "
        "floor). Guidance moves samples away from the data (the guided teacher is farther from the held-out "
        "digits than the unguided one), so a student that under-applies guidance can look better against the "
        "data: the distillation is judged against the teacher. The data floor compares n training digits (which "
        "the classifier was trained on) with the held-out ones. Mean ± sample std over seeds; sampling: median "
        f"wall-clock of one call drawing {TIMING_N} samples (the models of the first timed seed)."
    )
    head = [
        generated_header("benchmarks/consistency_digits.py", args.command, raw["seconds"]),
        "",
        machine_line() + " Shared with other jobs: timings are indicative.",
        "",
        intro,
        "",
    ]
    full = "\n".join([*head, table_for(tuple(configs)), "", "Measured factors (FCD, paired by seed):", ""])
    full += "\n".join(line for r in configs for line in factors(r))
    (out_dir / "consistency_digits.md").write_text(
        "# SLAM, BOOT and LoRA guidance distillation on digits 8x8\n\n" + full + "\n"
    )
    print(f"\n{full}", flush=True)
    for name in configs:
        body = "\n".join(
            [*head, table_for((name,)), "", "Measured factors (FCD, paired by seed):", "", *factors(name)]
        )
        update_readme(args, ROOT / "recipes" / name / "README.md", body, key="digits")


if __name__ == "__main__":
    main()
