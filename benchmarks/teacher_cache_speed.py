"""Epoch time of knowledge distillation with and without the teacher-output cache.

A CNN teacher whose forward pass costs about ten times the student's is trained on scikit-learn
digits (upsampled to 16x16). Students are then distilled from it in a Lightning fit, with random
resized crops, in three ways, interleaved per seed so that machine load hits all alike:

- ``no cache, fresh crops``: the teacher runs every step on a new crop per sample and epoch
  (what a plain KD loop does);
- ``no cache, replayed crops``: the teacher runs every step on the crops the cache would replay
  (one crop per sample, ``num_slots=1``), so it sees exactly the data of the cached run;
- ``cache``: :class:`~lightning_distill.callbacks.teacher_cache.TeacherCacheCallback` in a fresh
  directory; the teacher runs in epoch 1 only.

Reported: epoch 1, the fastest and the median of epochs 2..E, the speed-up of the cache over each
baseline from the fastest epochs (the least disturbed by other jobs on a shared machine), and the
student's test accuracy (mean and standard deviation over seeds).

Usage (from the repository root)::

    python benchmarks/teacher_cache_speed.py                  # 3 seeds, 6 epochs (a few minutes, 2 cores)
    python benchmarks/teacher_cache_speed.py --seeds 0 --epochs 2 --out /tmp/quick.md   # smoke run
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported; steadier on a shared CPU

import lightning  # noqa: E402
import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _harness import bench_parser  # noqa: E402
from _report import cpu_model, mean_std  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from lightning_distill.callbacks.teacher_cache import TeacherCacheCallback  # noqa: E402
from lightning_distill.data.indexed import IndexedDataset  # noqa: E402
from lightning_distill.utils.augment import RandomResizedCropFlip  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZE = 16
TEMPERATURE = 4.0
MODES = ("no cache, fresh crops", "no cache, replayed crops", "cache")


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits as (N, 1, 16, 16) images in [0, 1]; a fixed 80/20 split."""
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    labels = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1234))
    cut = int(0.8 * len(labels))
    return images[order[:cut]], labels[order[:cut]], images[order[cut:]], labels[order[cut:]]


def student_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )  # fmt: skip


def teacher_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 40, 3, padding=1), nn.ReLU(),
        nn.Conv2d(40, 40, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(40, 80, 3, padding=1), nn.ReLU(),
        nn.Conv2d(80, 80, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(80 * 4 * 4, 10),
    )  # fmt: skip


def augmentation() -> RandomResizedCropFlip:
    return RandomResizedCropFlip(
        SIZE, scale=(0.6, 1.0), ratio=(0.8, 1.25), flip_p=0.0
    )  # digits are not mirror-symmetric


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(images).argmax(1) == labels).float().mean().item()


def train_teacher(images: torch.Tensor, labels: torch.Tensor, epochs: int, batch_size: int) -> nn.Module:
    torch.manual_seed(0)
    teacher = teacher_net()
    optimizer = torch.optim.Adam(teacher.parameters(), lr=2e-3)
    aug, generator = augmentation(), torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), batch_size):
            batch = order[start : start + batch_size]
            loss = F.cross_entropy(teacher(aug(images[batch], generator=generator)), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return teacher.eval().requires_grad_(False)


def time_per_batch(fn, repeats: int = 30) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


class KD(pl.LightningModule):
    """Plain KD (KL at temperature T) in a user's own LightningModule, with or without the cache."""

    def __init__(self, teacher: nn.Module, mode: str, seed: int, cache: TeacherCacheCallback | None):
        super().__init__()
        torch.manual_seed(seed)
        self.student = student_net()
        self.teacher = teacher
        self.mode, self.seed, self.cache = mode, seed, cache
        self.augmentation = augmentation()

    def configure_callbacks(self):
        return [self.cache] if self.cache is not None else []

    def training_step(self, batch, batch_idx):
        images, _, index = batch
        if self.cache is not None:
            inputs, teacher_logits = self.cache.teacher_outputs(images, index)
        else:
            slot = self.current_epoch if self.mode == MODES[0] else 0
            params = self.augmentation.params_for(index, seed=self.seed, slot=slot, height=SIZE, width=SIZE)
            inputs = self.augmentation.apply(images, params)
            with torch.no_grad():
                teacher_logits = self.teacher(inputs)
        student_logits = self.student(inputs)
        t = TEMPERATURE
        return F.kl_div(
            F.log_softmax(student_logits / t, 1), F.softmax(teacher_logits / t, 1), reduction="batchmean"
        ) * (t * t)

    def configure_optimizers(self):
        return torch.optim.Adam(self.student.parameters(), lr=3e-3)


class EpochTimer(pl.Callback):
    def __init__(self):
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds.append(time.perf_counter() - self._start)


def run(mode: str, teacher: nn.Module, data, seed: int, epochs: int, batch_size: int, workdir: Path):
    train_x, train_y, test_x, test_y = data
    cache = None
    if mode == "cache":
        cache = TeacherCacheCallback(
            workdir / f"cache-{seed}", output_dim=10, augmentation=augmentation(), seed=seed, rebuild=True
        )
    model = KD(teacher, mode, seed, cache)
    loader = DataLoader(
        IndexedDataset(TensorDataset(train_x, train_y)),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    timer = EpochTimer()
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[timer],
        default_root_dir=workdir,
    )
    trainer.fit(model, loader)
    return timer.seconds, accuracy(model.student, test_x, test_y)


def fmt(values: list[float], digits: int = 3) -> str:
    return mean_std(values, digits=digits)


def build_parser():
    parser = bench_parser(__file__, __doc__, threads=None, readme=False)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "teacher_cache_speed.md"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.start(argv, all_warnings=True)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the speed-up is measured after the first epoch)")

    data = digits()
    teacher = train_teacher(data[0], data[1], args.teacher_epochs, args.batch_size)
    teacher_acc = accuracy(teacher, data[2], data[3])
    probe = data[0][: args.batch_size]
    student = student_net()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.0)

    def student_step():
        optimizer.zero_grad()
        student(probe).sum().backward()
        optimizer.step()

    with torch.no_grad():
        teacher_ms = min(time_per_batch(lambda: teacher(probe)) for _ in range(3))
        student_fwd_ms = min(time_per_batch(lambda: student(probe)) for _ in range(3))
    student_step_ms = min(time_per_batch(student_step) for _ in range(3))
    print(
        f"teacher acc {teacher_acc:.3f}; teacher fwd {teacher_ms:.2f} ms, student fwd {student_fwd_ms:.2f} ms"
    )

    first: dict[str, list[float]] = {m: [] for m in MODES}
    fastest: dict[str, list[float]] = {m: [] for m in MODES}
    median: dict[str, list[float]] = {m: [] for m in MODES}
    acc: dict[str, list[float]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as workdir:
        for seed in args.seeds:
            for mode in MODES:
                seconds, test_acc = run(
                    mode, teacher, data, seed, args.epochs, args.batch_size, Path(workdir)
                )
                first[mode].append(seconds[0])
                fastest[mode].append(min(seconds[1:]))
                median[mode].append(statistics.median(seconds[1:]))
                acc[mode].append(test_acc)
                print(f"seed {seed} {mode}: epochs {[round(x, 3) for x in seconds]} s, acc {test_acc:.3f}")

    speedups = {m: [b / c for b, c in zip(fastest[m], fastest["cache"])] for m in MODES[:2]}
    cpu = cpu_model()
    command = args.command
    teacher_params = sum(p.numel() for p in teacher.parameters())
    student_params = sum(p.numel() for p in student.parameters())
    lines = [
        f"<!-- generated by benchmarks/teacher_cache_speed.py on {datetime.date.today().isoformat()}; "
        "do not edit by hand: rerun the command -->",
        "Epoch time of a KD fit with and without `TeacherCacheCallback`.",
        "",
        f"- Command: `{command}` (from the repository root)",
        f"- Machine: {cpu}, {os.cpu_count()} cores shared with other jobs, "
        f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, no GPU",
        f"- Software: Python {platform.python_version()}, torch {torch.__version__}, lightning {lightning.__version__}",
        f"- Data: scikit-learn digits upsampled to {SIZE}x{SIZE}, {len(data[1])} train / {len(data[3])} test "
        f"images, batch {args.batch_size}, RandomResizedCrop(scale 0.6-1, ratio 0.8-1.25, no flip), "
        f"{args.epochs} epochs, seeds {args.seeds}",
        f"- Teacher: 4-conv CNN ({teacher_params:,} params) trained {args.teacher_epochs} epochs on the same crops, "
        f"test accuracy {teacher_acc:.3f}; forward {teacher_ms:.2f} ms/batch = {teacher_ms / student_fwd_ms:.1f}x "
        f"the student's forward ({student_fwd_ms:.2f} ms) and {teacher_ms / student_step_ms:.1f}x the student's "
        f"forward+backward+step ({student_step_ms:.2f} ms)",
        f"- Student: 2-conv CNN ({student_params:,} params), KD only (KL at T={TEMPERATURE:g}), Adam, "
        "in a LightningModule (Lightning's per-step overhead included)",
        "- Cache: `TeacherCacheCallback(num_slots=1)`, fp16 logits, a fresh directory per seed; epoch 1 fills it",
        "",
        "| run | epoch 1 (s) | epochs 2+ fastest (s) | epochs 2+ median (s) | cache speed-up, epochs 2+ "
        "| student test accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        speedup = fmt(speedups[mode], 2) + "x" if mode in speedups else "-"
        lines.append(
            f"| {mode} | {fmt(first[mode])} | {fmt(fastest[mode])} | {fmt(median[mode])} | {speedup} "
            f"| {fmt(acc[mode])} |"
        )
    lines += [
        "",
        "Values are mean ± std over seeds. The speed-up is, per seed, the baseline's fastest epoch 2+ over the",
        "cached run's fastest epoch 2+ (the fastest epoch is the one least disturbed by other jobs).",
        "The cached run reads fp16-rounded teacher logits and replays one crop per sample, so its accuracy",
        "should match `no cache, replayed crops`; `no cache, fresh crops` shows the effect of a new crop",
        "every epoch, which the cache gives up unless `num_slots` covers the epochs.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
