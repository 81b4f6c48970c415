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

Writes ``benchmarks/results/hello.md`` and the block between ``<!-- results:start -->`` and
``<!-- results:end -->`` of ``recipes/hello/README.md``; ``--quick`` writes
``benchmarks/results/quick/hello.md`` only.
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
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    if args.quick:
        args.seeds, args.eval_epochs, args.projector_steps, args.image_steps = [0], 20, 30, 5
    start = time.perf_counter()
    rows, info = run(args)
    text = render(rows, info, args, args.command, time.perf_counter() - start)
    out = results_dir(args) / "hello.md"
    out.write_text("# HeLlO: label storage against accuracy (digits, IPC 10)\n\n" + text)
    update_readme(args, README, text)
    print(text)


if __name__ == "__main__":
    main()
