"""Toy-scale benchmark of HeLlO: label storage in bytes against accuracy, on digits at 10 images per class.

Every row trains fresh students on the *same images* (a random real subset of 10 digits per class,
a new draw per seed; HeLlO's image update changes them in its last row) and differs only in where
the labels come from and what that costs to store. Students: the evaluation-by-retraining protocol
of ``benchmarks/dataset_distillation.py`` (ConvNet-3 width 128, SGD 0.01, lr / 10 at half time,
DSA on every batch, tested on the real test split); soft labels enter through KL at T = 1.

* hard labels: cross-entropy on the class indices (one byte each);
* static soft labels: one fp32 logit vector per image from a ConvNet trained on all digits
  ("random real + teacher soft labels" of the DataDAM table);
* soft-label cache, teacher: that teacher's labels for every augmented view of every epoch, what
  SRe2L/CDA store (fp16); evaluated by running the teacher online, which gives the same targets;
* soft-label cache, weak teachers: the same for HeLlO's label generator (the average of 5
  checkpoints of one training trajectory);
* zero-shot projector: the projector before adaptation (pretrained encoder + class-prototype head,
  nothing stored);
* HeLlO: the projector after LoRA training (the ``hello`` recipe's config), labels online; storage =
  the adapters in fp32; and HeLlO with its image update.

Usage (from the repository root)::

    python benchmarks/hello.py --threads 1      # seeds 0 1 2
    python benchmarks/hello.py --quick          # smoke run: 1 seed, tiny budgets
    python benchmarks/hello.py --diagnose       # where the projector loses accuracy (seeds in parallel)

Writes ``benchmarks/results/hello.md`` and the block between ``<!-- results:start -->`` and
``<!-- results:end -->`` of ``recipes/hello/README.md``; ``--quick`` writes
``benchmarks/results/quick/hello.md`` only.

``--diagnose`` separates the implementation from the toy scale: on the same images and protocol it
retrains students with labels from the strong teacher (stored once per image, and online), from
the recipe's projector fitted to that strong teacher instead of the weak teachers (the sanity case:
it must come close), from the projector fitted to the weak teachers (the recipe, no image update),
from the same with the weak teachers sharpened (``temperature``) and with larger LoRA ranks. It
also prints how confident each label generator is (mean max-probability on augmented real images).
Writes ``benchmarks/results/hello_diagnosis.md`` (``--quick``: under ``results/quick``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import lightning.pytorch as L  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import bench_parser, recipe_cli, results_dir, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std, paired  # noqa: E402

from lightning_distill.data import DigitsDataModule  # noqa: E402
from lightning_distill.dataset_distillation import (  # noqa: E402
    ConvNet,
    classification_accuracy,
    evaluate_synthetic,
    random_real_subset,
    teacher_soft_labels,
)
from lightning_distill.dataset_distillation.online_labels import (  # noqa: E402
    evaluate_online_labels,
    hard_label_bytes,
    soft_label_cache_bytes,
)
from lightning_distill.models import trained_classifier  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "hello" / "config.yaml"
README = ROOT / "recipes" / "hello" / "README.md"


@dataclass
class Row:
    name: str
    bytes_: int | None = None
    acc: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


class KeepInitialImages(L.Callback):
    """Copies the synthetic images when training starts (before the image update moves them)."""

    def __init__(self) -> None:
        self.images: torch.Tensor | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.images = pl_module.synthetic.images.detach().clone()


def fit_hello(seed: int, args: argparse.Namespace, workdir: Path) -> tuple[Any, torch.Tensor, float]:
    """Run the recipe from its config; the fitted module, the images before the update, and the seconds."""
    steps = args.projector_steps + args.image_steps
    cli = recipe_cli(
        CONFIG,
        seed,
        [
            "--test_after_fit=false",
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            f"--trainer.max_steps={steps}",
            f"--model.init_args.synthetic.init_args.seed={seed}",
            f"--model.init_args.projector_steps={args.projector_steps}",
            f"--model.init_args.image_steps={args.image_steps}",
        ],
        workdir=workdir,
    )
    keep = KeepInitialImages()
    cli.trainer.callbacks.append(keep)
    seconds, _ = timed_fit(cli)
    return cli.model, keep.images, seconds


def run(args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    config = yaml.safe_load(CONFIG.read_text())
    spec = config["model"]["init_args"]["synthetic"]["init_args"]["eval_spec"]
    arch = spec["architecture"]["init_args"]
    common = {
        "epochs": args.eval_epochs,
        "lr": spec["lr"],
        "augment": spec["augment"],
        "batch_size": spec["batch_size"],
    }
    model_fn = lambda: ConvNet(**arch)  # noqa: E731
    dm = DigitsDataModule()
    dm.setup("fit")
    teacher = trained_classifier(ConvNet(**arch), data=DigitsDataModule(), epochs=args.teacher_epochs, seed=0)
    info: dict[str, Any] = {"teacher_acc": classification_accuracy(teacher, dm.test_dataloader())}
    ipc, k = 10, 10
    n = ipc * k
    rows = {
        "hard": Row("hard labels (cross-entropy)", hard_label_bytes(n, k)),
        "static": Row("static soft labels: one fp32 teacher logit vector per image", 4 * n * k),
        "cache_teacher": Row(
            "soft-label cache, trained teacher, every view and epoch (fp16)",
            soft_label_cache_bytes(n, k, args.eval_epochs),
        ),
        "cache_weak": Row(
            "soft-label cache, weak-teacher average, every view and epoch (fp16)",
            soft_label_cache_bytes(n, k, args.eval_epochs),
        ),
        "zero_shot": Row("zero-shot projector (no adaptation), online", 0),
        "hello": Row("HeLlO projector (LoRA adapters, fp32), online"),
        "hello_img": Row("HeLlO projector + image update, online"),
    }
    for seed in args.seeds:
        x, y = random_real_subset(dm, ipc, seed=seed)
        with tempfile.TemporaryDirectory() as tmp:
            recipe, initial, seconds = fit_hello(seed, args, Path(tmp))
        torch.testing.assert_close(initial, x)  # the recipe drew the same real images
        projector, ensemble = recipe.projector.eval(), recipe.teacher
        rows["hello"].bytes_ = projector.storage_bytes()
        rows["hello_img"].bytes_ = projector.storage_bytes()
        rows["hello"].seconds.append(seconds)
        rows["hello_img"].seconds.append(seconds)
        one = {"seeds": (seed,), **common}
        rows["hard"].acc += evaluate_synthetic(x, y, dm, model_fn, **one).accuracies
        soft = teacher_soft_labels(teacher, x)
        rows["static"].acc += evaluate_synthetic(x, y, dm, model_fn, soft_labels=soft, **one).accuracies
        rows["cache_teacher"].acc += evaluate_online_labels(
            x, y, dm, teacher, model_fn, loss="kl", **one
        ).accuracies
        rows["cache_weak"].acc += evaluate_online_labels(
            x, y, dm, ensemble, model_fn, loss="kl", **one
        ).accuracies
        rows["hello"].acc += evaluate_online_labels(
            x, y, dm, projector, model_fn, loss="kl", **one
        ).accuracies
        updated = recipe.synthetic.images.detach()
        rows["hello_img"].acc += evaluate_online_labels(
            updated, y, dm, projector, model_fn, loss="kl", **one
        ).accuracies
        # The projector before adaptation: zero the LoRA B matrices of a copy.
        zero = __import__("copy").deepcopy(projector)
        with torch.no_grad():
            for name, p in zero.named_parameters():
                if ".lora_B." in name:
                    p.zero_()
        rows["zero_shot"].acc += evaluate_online_labels(x, y, dm, zero, model_fn, loss="kl", **one).accuracies
        info.setdefault("projector_acc", []).append(classification_accuracy(projector, dm.test_dataloader()))
        info.setdefault("zero_shot_acc", []).append(classification_accuracy(zero, dm.test_dataloader()))
        info.setdefault("weak_acc", []).append(classification_accuracy(ensemble, dm.test_dataloader()))
        print(
            f"[seed {seed}] " + ", ".join(f"{key} {100 * r.acc[-1]:.1f}" for key, r in rows.items()),
            flush=True,
        )
    return list(rows.values()), info


# ---------------------------------------------------------------------------- --diagnose
DIAG_ROWS = {
    "static": "strong teacher, static soft labels (one fp32 vector per image)",
    "online": "strong teacher, online on every view (= its soft-label cache)",
    "proj_strong": "projector fitted to the strong teacher (sanity case)",
    "proj_weak": "projector fitted to the weak-teacher average (the recipe, no image update)",
    "proj_sharp": "projector fitted to the weak-teacher average at temperature {T}",
    "proj_rank": "projector fitted to the weak-teacher average, LoRA ranks {r} / {h}",
    "proj_strong_rank": "projector fitted to the strong teacher, LoRA ranks {r} / {h}",
    "proj_strong_rank_kl": "projector fitted to the strong teacher, LoRA ranks {r} / {h}, `label_loss: kl`",
}


def fit_projector(seed: int, args: argparse.Namespace, extra: list[str], teacher: Any = None) -> Any:
    """The recipe's projector phase only (no image update, no validation); ``teacher`` replaces the weak teachers."""
    with tempfile.TemporaryDirectory() as tmp:
        cli = recipe_cli(
            CONFIG,
            seed,
            [
                "--test_after_fit=false",
                "--trainer.accelerator=cpu",
                "--trainer.devices=1",
                "--trainer.limit_val_batches=0",
                f"--trainer.max_steps={args.projector_steps}",
                f"--model.init_args.synthetic.init_args.seed={seed}",
                f"--model.init_args.projector_steps={args.projector_steps}",
                "--model.init_args.image_steps=0",
                *extra,
            ],
            workdir=Path(tmp),
        )
        if teacher is not None:  # same recipe code path, another label generator
            cli.model.teachers[0] = teacher
        timed_fit(cli)
    return cli.model


@torch.no_grad()
def confidence(label_fn: Any, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[float, float]:
    """Mean max-probability and accuracy of ``label_fn`` on one DSA view of ``x`` (what students see)."""
    from lightning_distill.dataset_distillation import SiameseAugment

    augment = SiameseAugment("color_crop_cutout_scale_rotate", siamese=False)
    view = augment(x, augment.sample(x, torch.Generator().manual_seed(seed)))
    p = label_fn.eval()(view).float().softmax(1)
    return float(p.max(1).values.mean()), float((p.argmax(1) == y).float().mean())


def diagnose_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One seed of ``--diagnose``: accuracy per row, and the generators' confidence/accuracy."""
    torch.set_num_threads(1)
    config = yaml.safe_load(CONFIG.read_text())
    spec = config["model"]["init_args"]["synthetic"]["init_args"]["eval_spec"]
    arch = spec["architecture"]["init_args"]
    one = {"epochs": args.eval_epochs, "lr": spec["lr"], "augment": spec["augment"]}
    one.update(batch_size=spec["batch_size"], seeds=(seed,), loss="kl")
    model_fn = lambda: ConvNet(**arch)  # noqa: E731
    dm = DigitsDataModule()
    dm.setup("fit")
    real_x, real_y = dm.train_images()
    probe_x, probe_y = real_x[:500], real_y[:500]
    teacher = trained_classifier(ConvNet(**arch), data=DigitsDataModule(), epochs=args.teacher_epochs, seed=0)
    teacher = teacher.requires_grad_(False).eval()
    x, y = random_real_subset(dm, 10, seed=seed)
    ranks = [
        f"--model.init_args.student.init_args.{k}={v}"
        for k, v in (("lora_rank", args.diag_rank), ("head_rank", args.diag_head_rank))
    ]
    builders = {
        "proj_strong": lambda: fit_projector(seed, args, [], teacher=teacher),
        "proj_weak": lambda: fit_projector(seed, args, []),
        "proj_sharp": lambda: fit_projector(
            seed, args, [f"--model.init_args.teacher.init_args.temperature={args.diag_temperature}"]
        ),
        "proj_rank": lambda: fit_projector(seed, args, ranks),
        "proj_strong_rank": lambda: fit_projector(seed, args, ranks, teacher=teacher),
        "proj_strong_rank_kl": lambda: fit_projector(
            seed, args, [*ranks, "--model.init_args.label_loss=kl"], teacher=teacher
        ),
    }
    fitted = {key: build() for key, build in builders.items() if key in args.diag_rows}
    for recipe in fitted.values():
        torch.testing.assert_close(recipe.synthetic.images.detach(), x)  # same images in every row
    acc = {
        "static": evaluate_synthetic(
            x,
            y,
            dm,
            model_fn,
            soft_labels=teacher_soft_labels(teacher, x),
            **{k: v for k, v in one.items() if k != "loss"},
        ).accuracies[0],
    }
    if "online" in args.diag_rows:
        acc["online"] = evaluate_online_labels(x, y, dm, teacher, model_fn, **one).accuracies[0]
    generators = {"strong teacher": teacher}
    if "proj_weak" in fitted:
        generators["weak-teacher average"] = fitted["proj_weak"].teacher
    if "proj_sharp" in fitted:
        generators[f"weak-teacher average, T = {args.diag_temperature}"] = fitted["proj_sharp"].teacher
    projector_stats = {}
    for key, recipe in fitted.items():
        projector = recipe.projector.eval()
        acc[key] = evaluate_online_labels(x, y, dm, projector, model_fn, **one).accuracies[0]
        test_acc = classification_accuracy(projector, dm.test_dataloader())
        projector_stats[key] = (
            test_acc,
            *confidence(projector, probe_x, probe_y, seed),
            projector.storage_bytes(),
        )
    gen_stats = {name: confidence(fn, probe_x, probe_y, seed) for name, fn in generators.items()}
    print(f"[seed {seed}] " + ", ".join(f"{k} {100 * v:.1f}" for k, v in acc.items()), flush=True)
    return {"acc": acc, "projectors": projector_stats, "generators": gen_stats}


def diagnose(args: argparse.Namespace) -> str:
    """Run ``--diagnose`` over the seeds (``--workers`` processes) and render its report."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    start = time.perf_counter()
    workers = max(1, min(args.workers, len(args.seeds)))
    if workers == 1:
        results = [diagnose_seed(seed, args) for seed in args.seeds]
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            results = list(pool.map(diagnose_seed, args.seeds, [args] * len(args.seeds)))
    names = {
        k: v.format(T=args.diag_temperature, r=args.diag_rank, h=args.diag_head_rank)
        for k, v in DIAG_ROWS.items()
        if k in results[0]["acc"]
    }
    acc = {k: [r["acc"][k] for r in results] for k in names}
    rows = []
    for key, name in names.items():
        proj = [r["projectors"][key] for r in results] if key.startswith("proj") else None
        rows.append(
            [
                name,
                mean_std(acc[key], 100),
                " / ".join(f"{100 * a:.1f}" for a in acc[key]),
                paired(acc[key], acc["static"], scale=100) if key != "static" else "-",
                mean_std([p[0] for p in proj], 100) if proj else "-",
                mean_std([p[1] for p in proj], 1, 3) if proj else "-",
                f"{proj[0][3]:,}" if proj else "-",
            ]
        )
    table = markdown_table(
        [
            "student labels from",
            "test acc %",
            "per seed",
            "minus static (points)",
            "projector test acc %",
            "projector mean max-prob",
            "adapter bytes",
        ],
        rows,
        align="lrlrrrr",
    )
    gen_rows = [
        [
            name,
            mean_std([r["generators"][name][1] for r in results], 100),
            mean_std([r["generators"][name][0] for r in results], 1, 3),
        ]
        for name in results[0]["generators"]
    ]
    gen_table = markdown_table(
        ["label generator", "acc % on augmented real views", "mean max-prob"], gen_rows, align="lrr"
    )
    lines = [
        generated_header("benchmarks/hello.py", args.command, time.perf_counter() - start),
        "",
        machine_line(),
        "",
        f"Seeds {', '.join(map(str, args.seeds))} ({workers} processes in parallel, one thread each); per seed the "
        f"same 10 random real digits per class in every row; students as in `hello.md` (ConvNet-3 width 128, "
        f"{args.eval_epochs} epochs, DSA, KL at T = 1 to the labels, no hard-label term). Every projector is the "
        f"recipe's (`recipes/hello/config.yaml`, {args.projector_steps} LoRA steps, `label_loss: mse` + 0.1 CE, "
        "no image update), fitted through the recipe's own training step; only its label generator or ranks change.",
        "",
        table,
        "",
        "How confident the label generators are (first 500 digits training images, one DSA view; "
        "10 classes, so 0.1 is a uniform label):",
        "",
        gen_table,
    ]
    return "\n".join(lines) + "\n"


def render(
    rows: list[Row], info: dict[str, Any], args: argparse.Namespace, command: str, seconds: float
) -> str:
    hello = rows[5]
    table = markdown_table(
        ["labels from", "label storage (bytes)", "test acc %", "per seed", "minus hard labels (points)"],
        [
            [
                r.name,
                "-" if r.bytes_ is None else f"{r.bytes_:,}",
                mean_std(r.acc, 100),
                " / ".join(f"{100 * a:.1f}" for a in r.acc),
                paired(r.acc, rows[0].acc, scale=100) if r is not rows[0] else "-",
            ]
            for r in rows
        ],
        align="lrrlr",
    )
    cache = rows[2].bytes_ or 1
    lines = [
        generated_header("benchmarks/hello.py", command, seconds),
        "",
        machine_line(),
        "",
        f"Digits (8x8), 10 random real training images per class (a new draw per seed), seeds "
        f"{', '.join(map(str, args.seeds))}; each row retrains ConvNet-3 (width 128) for {args.eval_epochs} epochs "
        "on those images with the protocol of `benchmarks/dataset_distillation.py` (SGD 0.01, lr / 10 at half "
        "time, DSA `color_crop_cutout_scale_rotate`), soft labels through KL at T = 1, one model per seed.",
        "",
        f"Label generators: trained teacher = ConvNet-3 trained on all digits ({args.teacher_epochs} epochs, "
        f"test acc {100 * info['teacher_acc']:.2f}%); weak teachers = average of epochs 1, 3, 5, 7, 9 of one "
        f"ConvNet-3 (width 64) trajectory (test acc {mean_std(info['weak_acc'], 100)}%). Projector = ConvNet-3 "
        f"(width 64) pretrained on MNIST-5k at 8x8 + class-prototype head, zero-shot test acc "
        f"{mean_std(info['zero_shot_acc'], 100)}%; after {args.projector_steps} LoRA steps (rank 4 + 4) "
        f"{mean_std(info['projector_acc'], 100)}%; image update {args.image_steps} steps. HeLlO fit time "
        f"(both phases) {mean_std(hello.seconds, 1, 0)} s per seed (wall, shared machine).",
        "",
        table,
        "",
        f"The HeLlO adapters take {hello.bytes_ / cache:.2%} of the bytes of the relabel cache for "
        f"{args.eval_epochs} epochs; the cache grows with the epochs and the number of images, the adapters do not. "
        "At this toy scale (100 images, 10 classes) one static logit vector per image is smaller still.",
    ]
    return "\n".join(lines) + "\n"


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, tiny budgets")
    parser.add_argument("--eval-epochs", type=int, default=300)
    parser.add_argument("--projector-steps", type=int, default=400)
    parser.add_argument("--image-steps", type=int, default=50)
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument(
        "--diagnose", action="store_true", help="run the diagnosis (hello_diagnosis.md) instead"
    )
    parser.add_argument(
        "--diag-rows",
        nargs="+",
        choices=list(DIAG_ROWS),
        default=[k for k in DIAG_ROWS if k not in ("proj_strong_rank", "proj_strong_rank_kl")],
        help="--diagnose: rows to run (static always runs: it is the reference)",
    )
    parser.add_argument("--workers", type=int, default=3, help="--diagnose: seeds run in parallel processes")
    parser.add_argument(
        "--diag-temperature", type=float, default=0.1, help="--diagnose: sharpened weak teachers"
    )
    parser.add_argument(
        "--diag-rank", type=int, default=16, help="--diagnose: encoder LoRA rank of the capacity row"
    )
    parser.add_argument(
        "--diag-head-rank", type=int, default=10, help="--diagnose: head LoRA rank (10 = full)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    if args.quick:
        args.seeds, args.eval_epochs, args.projector_steps, args.image_steps = [0], 20, 30, 5
    if args.diagnose:
        args.diag_rows = ["static", *[r for r in args.diag_rows if r != "static"]]
        text = diagnose(args)
        if set(args.diag_rows) == {"static", *build_parser().get_default("diag_rows")}:
            out = results_dir(args) / "hello_diagnosis.md"
            out.write_text("# HeLlO: where the projector's labels lose accuracy (digits, IPC 10)\n\n" + text)
        else:  # a follow-up subset of rows: printed, the full diagnosis file is kept
            print("(a subset of rows: benchmarks/results/hello_diagnosis.md not written)")
        print(text)
        return
    start = time.perf_counter()
    rows, info = run(args)
    text = render(rows, info, args, args.command, time.perf_counter() - start)
    out = results_dir(args) / "hello.md"
    out.write_text("# HeLlO: label storage against accuracy (digits, IPC 10)\n\n" + text)
    update_readme(args, README, text)
    print(text)


if __name__ == "__main__":
    main()
