"""Toy-scale benchmark of DistillFSS: support-free distilled heads vs the few-shot teacher they come from.

The few-shot teacher (:class:`~lightning_distill.models.segmentation.MatchingSegmenter`) is trained
once on 1-shot episodes of the base digits 0-5 (teacher seed 0, on first use, cached). The task is
the novel digits 6-9 with ``shots`` labelled canvases per digit (``FewShotTaskDataModule``, the
config's). Each seed fits ``recipes/distill_fss/config.yaml`` through
:class:`lightning_distill.cli.DistillCLI` (heads initialised and batches ordered by the seed; the
task and the teacher are the same for every seed) and scores on 60 held-out test canvases:

* the distilled student: novel-class mIoU (mean IoU of digits 6-9; background left out), no
  support images at inference;
* the teacher with the ``shots``-per-class support set (the same images the student learnt from);
* inference time per image (batch of 1, median of 30 calls, one thread) of both: the student runs
  the encoder, four heads and the decoder; the teacher also encodes the support images and
  attends to them.

Usage (from the repository root)::

    python benchmarks/distill_fss.py --threads 1      # seeds 0 1 2
    python benchmarks/distill_fss.py --quick          # smoke run: 1 seed, 2 epochs, 1-epoch teacher

Writes ``benchmarks/results/distill_fss.md`` and the block between ``<!-- results:start -->`` and
``<!-- results:end -->`` in ``recipes/distill_fss/README.md``; ``--quick`` writes to
``benchmarks/results/quick/`` and leaves the README alone.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import torch  # noqa: E402
from _harness import bench_parser, logged, recipe_cli, results_dir, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "distill_fss" / "config.yaml"
README = ROOT / "recipes" / "distill_fss" / "README.md"
TEACHER = "--model.init_args.teacher.init_args"


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 2 student epochs, 1 teacher epoch")
    parser.add_argument("--epochs", type=int, default=40, help="student epochs (default 40)")
    parser.add_argument("--teacher-epochs", type=int, default=12, help="teacher epochs (default 12)")
    parser.add_argument("--shots", type=int, default=5, help="labelled canvases per novel digit (default 5)")
    return parser


def per_image_ms(run, images: torch.Tensor, repeats: int = 30) -> float:
    times = []
    with torch.no_grad():
        for i in range(repeats):
            x = images[i % len(images)].unsqueeze(0)
            start = time.perf_counter()
            run(x)
            times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    epochs, teacher_epochs = (2, 1) if args.quick else (args.epochs, args.teacher_epochs)
    start = time.perf_counter()
    student, teacher, student_ms, teacher_ms = [], [], [], []
    for seed in seeds:
        extra = [
            f"--trainer.max_epochs={epochs}", "--trainer.check_val_every_n_epoch=1000", "--trainer.callbacks=[]",
            f"{TEACHER}.epochs={teacher_epochs}", f"{TEACHER}.data.init_args.num_train=300",
            f"{TEACHER}.data.init_args.episodes_per_epoch=300", f"--data.init_args.shots={args.shots}",
        ]  # fmt: skip
        cli = recipe_cli(CONFIG, seed, extra)
        fit_s, _ = timed_fit(cli)
        cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
        student.append(logged(cli, "test/miou_fg"))
        teacher.append(logged(cli, "test/teacher_miou_fg"))
        model = cli.model.eval()
        images = cli.datamodule._prepare()["test"][0]
        student_ms.append(per_image_ms(model, images))
        teacher_ms.append(per_image_ms(model.teacher_segment, images))
        print(
            f"seed {seed}: student {student[-1]:.3f}, teacher {teacher[-1]:.3f} novel mIoU; "
            f"{student_ms[-1]:.2f} vs {teacher_ms[-1]:.2f} ms/image (fit {fit_s:.0f} s)",
            flush=True,
        )
    support = len(cli.datamodule.support_set()[0])
    rows = [
        ["distilled heads (DistillFSS), no support", mean_std(student, digits=3), mean_std(student_ms, digits=2)],
        [f"few-shot teacher, {args.shots}-shot support set ({support} images)", mean_std(teacher, digits=3),
         mean_std(teacher_ms, digits=2)],
    ]  # fmt: skip
    seconds = time.perf_counter() - start
    body = "\n\n".join(
        [
            generated_header(build_parser().script, args.command, seconds),
            f"Task: novel digits 6-9, {args.shots} labelled canvases per digit; teacher trained {teacher_epochs} epochs "
            f"on base digits 0-5 (teacher seed 0); student {epochs} epochs, seeds {' '.join(map(str, seeds))}. "
            "Novel-class mIoU on 60 test canvases; inference time per image, batch 1, median of 30.",
            markdown_table(["model", "novel-class mIoU", "ms / image"], rows, align="lrr"),
            machine_line(),
        ]
    )
    out = results_dir(args) / "distill_fss.md"
    out.write_text(body + "\n")
    update_readme(args, README, body)
    print(body)


if __name__ == "__main__":
    main()
