"""Hybrid Distill at toy scale: MAE-teacher-only vs contrastive-teacher-only vs hybrid, same budget.

The paper's claim (arXiv 2306.15876): a student that copies a contrastive/supervised teacher's final
features *and* an MIM teacher's token relations gets both the discrimination of the first (linear
probe) and the diverse, local attention of the second, so it beats distilling either teacher alone.
Here on scikit-learn digits at 16x16 (4 px patches, 16 tokens): a 3-block 48-wide ViT-MAE encoder
student, a 4-block 64-wide contrastive ViT (SimCLR, trained on first use), a supervised ViT of the
same size and the dmae config's 4-block 64-wide MAE teacher. Every row runs ``recipes/hybrid_distill/config.yaml`` through the CLI
for the same epochs; a "single teacher" row puts the same teacher in both slots (its features and
its relations), so only the teachers change:

* MAE teacher only: features and relations of the MAE;
* contrastive teacher only: features and relations of the contrastive ViT;
* hybrid: contrastive features + MAE relations (the paper's method);
* hybrid, no token dropping: the same with ``drop_ratio: 0`` (the dropping's share);
* supervised teacher only, and hybrid (supervised features + MAE relations): the same two rows with
  a supervised ViT (cross-entropy on the labels, trained on first use) as ``T_c``.

Scores: linear probe and k-NN on the student's cls token (test split,
:func:`lightning_distill.representation.probe_accuracy`: discrimination), and how far the student's
attention at the relation blocks is from each teacher's at the mapped blocks on whole test images
(``KL(A_teacher || A_student)`` per row, :func:`lightning_distill.losses.representation.relation_kl`:
whose token relations it inherited).

Usage (from the repository root)::

    python benchmarks/hybrid_distill.py            # seeds 0 1 2 (about 10 CPU-min at one thread; 23 min wall on a busy 2-core machine)
    python benchmarks/hybrid_distill.py --quick    # smoke run: 1 seed, 2 epochs, 2-epoch contrastive teacher
"""

from __future__ import annotations

import copy
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import torch  # noqa: E402
import yaml  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std  # noqa: E402

from lightning_distill.losses.representation import relation_kl  # noqa: E402
from lightning_distill.representation import labelled_training_images, probe_accuracy  # noqa: E402
from lightning_distill.representation.token_relations import run_vit  # noqa: E402

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "hybrid_distill" / "config.yaml"
README = ROOT / "recipes" / "hybrid_distill" / "README.md"

#: both teachers: 4 blocks x 64 (the MAE is the dmae config's teacher, so its cache is shared)
TEACHER_VIT = {"image_size": 16, "patch_size": 4, "hidden_size": 64, "num_layers": 4, "num_heads": 4}
#: row name -> (slot `teacher`, slot `mim_teacher`, drop_ratio or None for the config's)
ROWS = {
    "MAE teacher only": ("mae", "mae", None),
    "contrastive teacher only": ("contrastive", "contrastive", None),
    "hybrid (contrastive features + MAE relations)": ("contrastive", "mae", None),
    "hybrid, no token dropping": ("contrastive", "mae", 0.0),
    "supervised teacher only": ("supervised", "supervised", None),
    "hybrid (supervised features + MAE relations)": ("supervised", "mae", None),
}


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 2 epochs, a 2-epoch contrastive teacher")
    parser.add_argument("--epochs", type=int, default=20, help="student epochs per row (default 20)")
    parser.add_argument(
        "--teacher-epochs", type=int, default=15, help="epochs of the contrastive teacher (default 15)"
    )
    return parser


def run_config(teachers: tuple[str, str, float | None], epochs: int, teacher_epochs: int) -> dict:
    config = yaml.safe_load(CONFIG.read_text())
    model = config["model"]["init_args"]
    model["teacher"]["init_args"]["epochs"] = teacher_epochs
    # the config's contrastive teacher is smaller (CI time); both teachers here are 4 x 64
    model["teacher"]["init_args"]["model"]["init_args"] = dict(TEACHER_VIT)
    model["mim_teacher"]["init_args"]["model"]["init_args"] = dict(
        TEACHER_VIT, decoder_hidden_size=32, decoder_layers=1, decoder_heads=4
    )
    model["mim_teacher"]["init_args"]["epochs"] = 15
    supervised = {
        "class_path": "lightning_distill.representation.hybrid_teachers.trained_supervised_vit",
        "init_args": {k: model["teacher"]["init_args"][k] for k in ("model", "data", "epochs", "seed")},
    }
    specs = {"contrastive": model["teacher"], "mae": model["mim_teacher"], "supervised": supervised}
    model["teacher"] = copy.deepcopy(specs[teachers[0]])
    model["mim_teacher"] = copy.deepcopy(specs[teachers[1]])
    if teachers[2] is not None:
        model["drop_ratio"] = teachers[2]
    model["drop_epochs"] = max(1, epochs // 2)
    config["trainer"]["max_epochs"] = epochs
    config["trainer"].pop("check_val_every_n_epoch", None)
    config["trainer"]["limit_val_batches"] = 0
    config["test_after_fit"] = False
    return config


@torch.no_grad()
def relation_gaps(
    model: torch.nn.Module, own_layers, reference: dict, xs: torch.Tensor
) -> tuple[float, float]:
    """KL of ``model``'s attention at ``own_layers`` from the MAE's and the contrastive teacher's attention
    at the mapped blocks, on whole images ``xs`` (mean over rows, heads and blocks)."""
    was_training = model.training
    model.eval()
    mine = run_vit(model, xs).attentions
    gaps = []
    for teacher in (reference["mae"], reference["contrastive"]):
        theirs = run_vit(teacher, xs).attentions
        per_block = [relation_kl(mine[s - 1], theirs[t - 1]) for s, t in zip(own_layers, reference["layers"])]
        gaps.append(float(torch.stack(per_block).mean()))
    model.train(was_training)
    return gaps[0], gaps[1]


def record(cell: dict[str, list[float]], **values: float) -> None:
    for key, value in values.items():
        cell.setdefault(key, []).append(value)


def main(argv=None) -> None:
    args = build_parser().start(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    epochs = 2 if args.quick else args.epochs
    teacher_epochs = 2 if args.quick else args.teacher_epochs
    start = time.perf_counter()
    cells: dict[str, dict[str, list[float]]] = {}
    references: dict[str, dict[str, list[float]]] = {}
    hybrid = ROWS["hybrid (contrastive features + MAE relations)"]
    for seed in seeds:
        with tempfile.TemporaryDirectory() as work:  # the teachers and the random student, not trained
            cli = recipe_cli(run_config(hybrid, epochs, teacher_epochs), seed, workdir=work)
            recipe, dm = cli.model, cli.datamodule
            labelled_training_images(dm)  # setup
            supervised_row = ROWS["hybrid (supervised features + MAE relations)"]
            supervised = recipe_cli(
                run_config(supervised_row, epochs, teacher_epochs), seed, workdir=work
            ).model
            supervised = supervised.feature_teacher
            xs = torch.cat([batch[0] for batch in dm.test_dataloader()])
            reference = {
                "mae": recipe.mim_teacher,
                "contrastive": recipe.feature_teacher,
                "layers": recipe.teacher_layers,
            }
            for ref, model, layers in (
                ("student, random init", recipe.student, recipe.relation_layers),
                ("contrastive teacher (4x64)", recipe.feature_teacher, recipe.teacher_layers),
                ("MAE teacher (4x64)", recipe.mim_teacher, recipe.teacher_layers),
                ("supervised teacher (4x64)", supervised, recipe.teacher_layers),
            ):
                scores = probe_accuracy(model, dm, split="test")
                kls = relation_gaps(model, layers, reference, xs)
                record(
                    references.setdefault(ref, {}),
                    acc=scores["acc"],
                    knn=scores["knn_acc"],
                    kl_mae=kls[0],
                    kl_cl=kls[1],
                )
        for name, teachers in ROWS.items():
            with tempfile.TemporaryDirectory() as work:
                cli = recipe_cli(run_config(teachers, epochs, teacher_epochs), seed, workdir=work)
                wall, cpu = timed_fit(cli)
                student = cli.model.student
                scores = probe_accuracy(student, cli.datamodule, split="test")
                kls = relation_gaps(student, cli.model.relation_layers, reference, xs)
            record(
                cells.setdefault(name, {}),
                acc=scores["acc"],
                knn=scores["knn_acc"],
                kl_mae=kls[0],
                kl_cl=kls[1],
                cpu=cpu,
            )
            print(
                f"seed {seed} {name}: probe {scores['acc']:.4f} knn {scores['knn_acc']:.4f} "
                f"KL to MAE attn {kls[0]:.3f} to CL attn {kls[1]:.3f} cpu {cpu:.0f}s",
                flush=True,
            )
    rows = [
        [
            name,
            mean_std(c["acc"], 100, 1),
            mean_std(c["knn"], 100, 1),
            mean_std(c["kl_mae"], 1, 3),
            mean_std(c["kl_cl"], 1, 3),
            mean_std(c["cpu"], 1, 0),
        ]
        for name, c in cells.items()
    ]
    for name, c in references.items():
        single = name != "student, random init"
        rows.append(
            [
                name,
                f"{100 * c['acc'][0]:.1f}" if single else mean_std(c["acc"], 100, 1),
                f"{100 * c['knn'][0]:.1f}" if single else mean_std(c["knn"], 100, 1),
                f"{c['kl_mae'][0]:.3f}" if single else mean_std(c["kl_mae"], 1, 3),
                f"{c['kl_cl'][0]:.3f}" if single else mean_std(c["kl_cl"], 1, 3),
                "-",
            ]
        )
    table = markdown_table(
        [
            "student distilled from",
            "linear probe %",
            "k-NN %",
            "attention KL to MAE teacher",
            "attention KL to contrastive teacher",
            "student CPU s",
        ],
        rows,
        "lrrrrr",
    )
    body = "\n\n".join(
        [
            generated_header(build_parser().script, args.command, time.perf_counter() - start),
            f"digits 16x16, {epochs} student epochs per row, contrastive and supervised teachers {teacher_epochs} epochs, MAE "
            f"teacher 15 epochs; mean ± std over seeds {seeds} (teachers: seed 0, one value); {machine_line()}.",
            table,
        ]
    )
    out = results_dir(args) / "hybrid_distill.md"
    out.write_text(body + "\n")
    print(body)
    update_readme(args, README, body)


if __name__ == "__main__":
    main()
