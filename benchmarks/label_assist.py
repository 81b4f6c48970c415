"""Toy-scale benchmark of Label-Assisted Distillation: is a same-size teacher that reads the labels a
good teacher?

Every student fit is ``recipes/label_assist/config.yaml`` (or its ``ordinary_teacher.yaml``
variant) built through :class:`lightning_distill.cli.DistillCLI`, with the seed and the keys named
in each row changed. Rows, the same 8-wide student, data, optimizer and epochs:

* student alone: ``loss_weights: {cwd: 0}`` (the teacher runs, its term weighs nothing: CE only);
* CWD from an ordinary teacher of the student's size trained with CE (``ordinary_teacher.yaml`` at
  width 8: the label-assisted teacher's starting point, so this row isolates the label channel);
* CWD from an ordinary, twice as wide teacher trained with CE (``ordinary_teacher.yaml``);
* CWD from the label-assisted teacher of the student's own size (the config), the paper's claim.

The two teachers are trained once (teacher seed 0, on first use, cached) for ``--teacher-epochs``;
the label-assisted one starts from the trained 8-wide CE segmenter (``init``, as the official code
fine-tunes its trained baseline). The table reports test mIoU over the 11 classes (background and
the ten digits) on 60 held-out canvases, mean ± std over the seeds, and each teacher's own test mIoU
(the label-assisted teacher reads the test labels: a reference, not a competitor).

Usage (from the repository root)::

    python benchmarks/label_assist.py --threads 1     # seeds 0 1 2
    python benchmarks/label_assist.py --quick         # smoke run: 1 seed, 2 epochs

Writes ``benchmarks/results/label_assist.md`` and the block between ``<!-- results:start -->`` and
``<!-- results:end -->`` in ``recipes/label_assist/README.md``; ``--quick`` writes to
``benchmarks/results/quick/`` and leaves the README alone.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

from _harness import bench_parser, logged, recipe_cli, results_dir, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "label_assist" / "config.yaml"
ORDINARY = ROOT / "recipes" / "label_assist" / "ordinary_teacher.yaml"
README = ROOT / "recipes" / "label_assist" / "README.md"
TEACHER = "--model.init_args.teacher.init_args"
ROWS = {
    "alone": ("student alone (CE)", CONFIG, ["--model.init_args.loss_weights={cwd: 0.0}"]),
    "same_size": (
        "CE + 3·CWD, ordinary teacher of the same size (the label-assisted teacher's starting point)",
        ORDINARY,
        [f"{TEACHER}.model.init_args.width=8"],
    ),
    "ordinary": ("CE + 3·CWD, ordinary teacher 2× wider (CE-trained)", ORDINARY, []),
    "label_assist": ("CE + 3·CWD, label-assisted teacher, same size (config)", CONFIG, []),
}


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 2 student and 2 teacher epochs")
    parser.add_argument("--epochs", type=int, default=30, help="student epochs (default 30)")
    parser.add_argument("--teacher-epochs", type=int, default=30, help="epochs of each teacher (default 30)")
    return parser


def teacher_flags(path: Path, epochs: int, num_train: int = 300) -> list[str]:
    flags = [f"{TEACHER}.epochs={epochs}", f"{TEACHER}.data.init_args.num_train={num_train}"]
    if path == CONFIG:  # the label-assisted teacher starts from the trained CE segmenter of its size
        flags += [
            f"{TEACHER}.init.init_args.epochs={epochs}",
            f"{TEACHER}.init.init_args.data.init_args.num_train={num_train}",
        ]
    return flags


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    epochs, teacher_epochs = (2, 2) if args.quick else (args.epochs, args.teacher_epochs)
    start = time.perf_counter()
    results: dict[str, list[float]] = {k: [] for k in ROWS}
    teachers: dict[str, float] = {}
    for seed in seeds:
        for key, (_, path, flags) in ROWS.items():
            extra = [
                f"--trainer.max_epochs={epochs}", "--trainer.check_val_every_n_epoch=1000",
                "--trainer.callbacks=[]", *teacher_flags(path, teacher_epochs), *flags,
            ]  # fmt: skip
            cli = recipe_cli(path, seed, extra)
            fit_s, _ = timed_fit(cli)
            cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
            results[key].append(logged(cli, "test/miou"))
            if key != "alone":
                teachers[key] = logged(cli, "test/teacher_miou")
            print(f"seed {seed} {key}: test mIoU {results[key][-1]:.3f} (fit {fit_s:.0f} s)", flush=True)
    rows = [[label, mean_std(results[key], digits=3)] for key, (label, _, _) in ROWS.items()]
    teacher_rows = [
        ["ordinary teacher (8 wide, image only)", f"{teachers.get('same_size', float('nan')):.3f}"],
        ["ordinary teacher (16 wide, image only)", f"{teachers.get('ordinary', float('nan')):.3f}"],
        [
            "label-assisted teacher (8 wide, reads the labels)",
            f"{teachers.get('label_assist', float('nan')):.3f}",
        ],
    ]
    seconds = time.perf_counter() - start
    body = "\n\n".join(
        [
            generated_header(build_parser().script, args.command, seconds),
            f"Student: 8-wide `SmallSegNet`, {epochs} epochs, seeds {' '.join(map(str, seeds))}; teachers "
            f"{teacher_epochs} epochs, teacher seed 0. Test mIoU (11 classes), 60 test canvases.",
            markdown_table(["student", "test mIoU"], rows, align="lr"),
            markdown_table(["teacher", "test mIoU"], teacher_rows, align="lr"),
            machine_line(),
        ]
    )
    out = results_dir(args) / "label_assist.md"
    out.write_text(body + "\n")
    update_readme(args, README, body)
    print(body)


if __name__ == "__main__":
    main()
