"""Toy-scale benchmark of FTD against plain MTT and the coreset / real-data baselines, plus expert flatness.

Distils scikit-learn digits (8x8, 10 classes) into 1 and 10 images per class with the ``ftd`` recipe
twice: ``recipes/ftd/config.yaml`` (FTD: GSAM experts, EMA of the images) and
``recipes/ftd/mtt.yaml`` (MTT: SGD experts, no EMA), through :class:`lightning_distill.cli.DistillCLI`
with only the seed, the images per class and the number of iterations changed. Every set is judged
as in ``benchmarks/dataset_distillation.py`` (the DataDAM table): a fresh ConvNet-3 (width 128)
retrained on the set alone with the EvalSpec of the config, tested on the real test split, one model
per seed; a distilled set is retrained with its learned learning rate (as the official code does),
the baselines with the EvalSpec's. Rows:

* FTD (the saved artifact: EMA images + learned lr), FTD's live images (the same run, no EMA),
  MTT (the saved artifact);
* random real (a new draw per seed), herding on the embeddings of a trained ConvNet, full data.

The expert buffers (one per optimizer, shared by all seeds) are trained once and cached; the table
reports their training time, the test accuracy of the experts, and their sharpness: the largest
Hessian eigenvalue of the training loss (:func:`lightning_distill.dataset_distillation.trajectory.hessian_top_eigenvalue`)
at two epochs of every expert.

Usage (from the repository root)::

    python benchmarks/ftd.py --threads 1     # seeds 0 1 2, IPC 1 and 10
    python benchmarks/ftd.py --quick         # smoke run: 1 seed, tiny budgets, results/quick/

Writes ``benchmarks/results/ftd.md`` and the block between ``<!-- results:start -->`` and
``<!-- results:end -->`` of ``recipes/ftd/README.md`` (``--quick`` writes only ``results/quick/ftd.md``).
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

import torch  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import bench_parser, recipe_cli, results_dir, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std, paired  # noqa: E402

from lightning_distill.data import DigitsDataModule  # noqa: E402
from lightning_distill.dataset_distillation import (  # noqa: E402
    ConvNet,
    ConvNetSpec,
    SyntheticSet,
    classification_accuracy,
    evaluate_synthetic,
    full_training_set,
    herding_subset,
    random_real_subset,
)
from lightning_distill.dataset_distillation.experts import (  # noqa: E402
    ExpertSpec,
    ExpertTrajectories,
    expert_trajectories,
)
from lightning_distill.dataset_distillation.trajectory import hessian_top_eigenvalue  # noqa: E402
from lightning_distill.models import trained_classifier  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"FTD": ROOT / "recipes" / "ftd" / "config.yaml", "MTT": ROOT / "recipes" / "ftd" / "mtt.yaml"}


@dataclass
class Row:
    name: str
    ipc: int | str
    how: str
    acc: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)


def distill(
    config: Path, seed: int, ipc: int, steps: int, workdir: Path, overrides: list[str]
) -> tuple[SyntheticSet, SyntheticSet, float, float]:
    """One recipe run: (saved artifact read back, live set, wall seconds, CPU seconds)."""
    artifact = workdir / f"set_ipc{ipc}_seed{seed}.pt"
    cli = recipe_cli(
        config,
        seed,
        [
            "--test_after_fit=false",
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            "--trainer.max_epochs=1000",
            f"--trainer.max_steps={steps}",
            f"--model.init_args.synthetic.init_args.ipc={ipc}",
            f"--model.init_args.synthetic.init_args.seed={seed}",
            f"--model.init_args.save_path={artifact}",
            *overrides,
        ],
        workdir=workdir,
    )
    seconds, cpu_seconds = timed_fit(cli)
    return SyntheticSet.load(artifact), cli.model.synthetic, seconds, cpu_seconds


def expert_buffer(
    config: dict[str, Any], overrides: dict[str, Any]
) -> tuple[ExpertTrajectories, ConvNetSpec]:
    """The recipe's expert buffer (trained now and cached, or read from the cache)."""
    args = config["model"]["init_args"]
    network = ConvNetSpec.from_dict(args["network"])
    spec = ExpertSpec.from_dict({**args["experts"], **overrides})
    x, y = full_training_set(DigitsDataModule())
    return expert_trajectories(network, x, y, spec), network


def sharpness(buffer: ExpertTrajectories, network: ConvNetSpec, epochs: list[int]) -> dict[int, list[float]]:
    """Top Hessian eigenvalue of the training loss at ``epochs`` of every expert."""
    x, y = full_training_set(DigitsDataModule())
    net = ConvNet.from_spec(network).train()
    out: dict[int, list[float]] = {e: [] for e in epochs}
    for k in range(buffer.num_experts):
        for e in epochs:
            value = hessian_top_eigenvalue(
                net,
                buffer.layout,
                buffer.params[k, e],
                x,
                y,
                iterations=50,
                generator=torch.Generator().manual_seed(k),
            )
            out[e].append(float(value))
    return out


def expert_accuracy(buffer: ExpertTrajectories, network: ConvNetSpec, dm: DigitsDataModule) -> list[float]:
    net = ConvNet.from_spec(network)
    accs = []
    for k in range(buffer.num_experts):
        buffer.layout.load_into(net, buffer.params[k, -1])
        accs.append(classification_accuracy(net, dm.test_dataloader()))
    return accs


def run(args: argparse.Namespace) -> str:
    quick = args.quick
    seeds = args.seeds[:1] if quick else args.seeds
    steps = 5 if quick else args.steps
    eval_epochs = 5 if quick else args.eval_epochs
    full_epochs = 2 if quick else args.full_epochs
    teacher_epochs = 2 if quick else args.teacher_epochs
    configs = {name: yaml.safe_load(path.read_text()) for name, path in CONFIGS.items()}
    expert_overrides: dict[str, Any] = {"num_experts": 2, "epochs": 3} if quick else {}
    cli_overrides = (
        [
            "--model.init_args.experts.num_experts=2",
            "--model.init_args.experts.epochs=3",
            "--model.init_args.max_start_epoch=1",
        ]
        if quick
        else []
    )
    dm = DigitsDataModule()
    dm.setup("fit")
    dm.setup("test")
    spec = configs["FTD"]["model"]["init_args"]["synthetic"]["init_args"]["eval_spec"]
    arch = spec["architecture"]["init_args"]
    common = {
        "model_fn": lambda: ConvNet(**arch),
        "epochs": eval_epochs,
        "lr": spec.get("lr", 0.01),
        "augment": spec.get("augment"),
        "batch_size": spec.get("batch_size", 256),
    }

    # Expert buffers: their training time, accuracy and sharpness.
    expert_rows = []
    for name, config in configs.items():
        start = time.perf_counter()
        buffer, network = expert_buffer(config, expert_overrides)
        loaded = time.perf_counter() - start
        args_ = config["model"]["init_args"]
        window = min(args_["max_start_epoch"], buffer.num_epochs)
        epochs = sorted({window, buffer.num_epochs})
        sharp = sharpness(buffer, network, epochs)
        accs = expert_accuracy(buffer, network, dm)
        expert_rows.append(
            [
                f"{name} experts ({buffer.spec['optimizer'].upper()})",
                f"{buffer.num_experts} x {buffer.num_epochs}",
                f"{buffer.metadata.get('seconds', loaded):.0f}",
                mean_std(accs, 100, 1),
                *[mean_std(sharp[e], 1.0, 2) for e in epochs],
            ]
        )
        sharp_epochs = epochs
    print(expert_rows, flush=True)

    # Teacher for herding (the same as benchmarks/dataset_distillation.py).
    teacher = trained_classifier(ConvNet(**arch), data=DigitsDataModule(), epochs=teacher_epochs, seed=0)
    rows: list[Row] = []
    for ipc in args.ipcs:
        r_random = Row("random real", ipc, "`random_real_subset(dm, ipc, seed)`, a new draw per seed")
        r_herd = Row("herding (trained ConvNet embeddings)", ipc, "`herding_subset(dm, ipc, teacher.embed)`")
        r_ftd = Row(
            "FTD (EMA images, learned lr)", ipc, f"`ftd/config.yaml`, {steps} iterations, saved artifact"
        )
        r_live = Row("FTD, live images (same runs, no EMA)", ipc, "`model.synthetic` of the FTD runs")
        r_mtt = Row("MTT (SGD experts, no EMA)", ipc, f"`ftd/mtt.yaml`, {steps} iterations, saved artifact")
        herd_x, herd_y = herding_subset(dm, ipc, teacher.embed)
        for seed in seeds:
            x, y = random_real_subset(dm, ipc, seed=seed)
            r_random.acc += evaluate_synthetic(x, y, dm, seeds=(seed,), **common).accuracies
            r_herd.acc += evaluate_synthetic(herd_x, herd_y, dm, seeds=(seed,), **common).accuracies
            for name, row in (("FTD", r_ftd), ("MTT", r_mtt)):
                with tempfile.TemporaryDirectory() as tmp:
                    saved, live, seconds, cpu = distill(
                        CONFIGS[name], seed, ipc, steps, Path(tmp), cli_overrides
                    )
                row.seconds.append(seconds)
                row.cpu_seconds.append(cpu)
                row.lr.append(float(saved.lr.detach()))
                row.acc += saved.evaluate(dm, seeds=(seed,), epochs=eval_epochs).accuracies
                if name == "FTD":
                    r_live.seconds.append(seconds)
                    r_live.cpu_seconds.append(cpu)
                    r_live.lr.append(float(live.lr.detach()))
                    r_live.acc += live.evaluate(dm, seeds=(seed,), epochs=eval_epochs).accuracies
            done = ", ".join(
                f"{r.name} {100 * r.acc[-1]:.1f}" for r in (r_random, r_herd, r_ftd, r_live, r_mtt)
            )
            print(f"[IPC {ipc}, seed {seed}] {done}", flush=True)
        rows += [r_random, r_herd, r_ftd, r_live, r_mtt]
    full_x, full_y = full_training_set(dm)
    r_full = Row("full training set", "all", f"every training image, {full_epochs} epochs")
    for seed in seeds:
        r_full.acc += evaluate_synthetic(
            full_x, full_y, dm, seeds=(seed,), **{**common, "epochs": full_epochs}
        ).accuracies
    rows.append(r_full)
    teacher_acc = classification_accuracy(teacher, dm.test_dataloader())
    sizes = (int(full_x.shape[0]), len(dm.test_dataloader().dataset))
    return render(
        rows, expert_rows, sharp_epochs, configs, seeds, steps, eval_epochs, teacher_acc, sizes, quick
    )


def render(
    rows: list[Row],
    expert_rows: list[list[str]],
    sharp_epochs: list[int],
    configs: dict[str, dict[str, Any]],
    seeds: list[int],
    steps: int,
    eval_epochs: int,
    teacher_acc: float,
    sizes: tuple[int, int],
    quick: bool,
) -> str:
    ftd = configs["FTD"]["model"]["init_args"]
    net, experts = ftd["network"], ftd["experts"]
    lines = [
        machine_line(),
        "",
        f"Data: scikit-learn digits 8x8, {sizes[0]} training images, test split of {sizes[1]} (one image is "
        f"{100 / sizes[1]:.2f} points). "
        f"Seeds {', '.join(map(str, seeds))}; accuracy is mean ± sample std over seeds, one retrained model per "
        "seed (the seed also draws the random real subset and the distillation run). Evaluation by retraining "
        f"as in the DataDAM table: ConvNet-3 (width 128, instance norm), {eval_epochs} epochs, SGD momentum 0.9, "
        "weight decay 5e-4, lr / 10 at half time, DSA `color_crop_cutout_scale_rotate`; distilled sets with their "
        "learned lr, baselines with lr 0.01.",
        "",
        f"Distillation: {steps} iterations of {ftd['syn_steps']} student steps (ConvNet-3 width {net['width']}, "
        f"instance norm), expert segments of {ftd['expert_epochs']} epochs starting before epoch "
        f"{ftd['max_start_epoch']}, image SGD lr {configs['FTD']['model']['init_args']['optimizer']['init_args']['lr']} "
        f"momentum 0.5; FTD: EMA decay {ftd['ema_decay']}. Experts: {experts['num_experts']} per buffer, "
        f"{experts['epochs']} epochs, SGD lr {experts['lr']} momentum {experts['momentum']}, batch "
        f"{experts['batch_size']}, DSA; GSAM rho {experts.get('rho')}, alpha {experts.get('alpha')}, adaptive "
        f"{experts.get('adaptive')}"
        + (" (--quick: 2 experts x 3 epochs, max_start_epoch 1)" if quick else "")
        + ". Herding embeds with the evaluation ConvNet trained on all images "
        f"(test accuracy {100 * teacher_acc:.2f}%).",
        "",
        markdown_table(
            [
                "set",
                "images / class",
                "how",
                "test acc %",
                "per seed",
                "learned lr",
                "distillation s (wall / CPU)",
            ],
            [
                [
                    r.name,
                    r.ipc,
                    r.how,
                    mean_std(r.acc, 100),
                    " / ".join(f"{100 * a:.1f}" for a in r.acc),
                    mean_std(r.lr, 1.0, 4) if r.lr else "-",
                    f"{sum(r.seconds) / len(r.seconds):.0f} / {sum(r.cpu_seconds) / len(r.cpu_seconds):.0f}"
                    if r.seconds
                    else "-",
                ]
                for r in rows
            ],
            align="lrlrlrr",
        ),
        "",
        "Paired by seed (test-accuracy points, mean ± std over seeds):",
        "",
    ]
    by_key = {(r.name, r.ipc): r for r in rows}
    for ipc in sorted({r.ipc for r in rows if isinstance(r.ipc, int)}):
        for a, b in (
            ("FTD (EMA images, learned lr)", "MTT (SGD experts, no EMA)"),
            ("FTD (EMA images, learned lr)", "FTD, live images (same runs, no EMA)"),
            ("FTD (EMA images, learned lr)", "random real"),
            ("MTT (SGD experts, no EMA)", "random real"),
        ):
            lines.append(
                f"- IPC {ipc}: *{a}* minus *{b}*: {paired(by_key[(a, ipc)].acc, by_key[(b, ipc)].acc, scale=100)}"
            )
    lines += [
        "",
        "Expert buffers (shared by all seeds; trained once and cached). Sharpness: the largest eigenvalue of the "
        "Hessian of the training cross-entropy (all training images, 50 power iterations), mean ± std over experts, "
        "at the given epochs (lower is flatter):",
        "",
        markdown_table(
            ["buffer", "experts x epochs", "training s", "expert test acc %"]
            + [f"λ_max at epoch {e}" for e in sharp_epochs],
            expert_rows,
            align="lrrr" + "r" * len(sharp_epochs),
        ),
    ]
    return "\n".join(lines) + "\n"


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, tiny budgets")
    parser.add_argument("--ipcs", type=int, nargs="+", default=[1, 10])
    parser.add_argument(
        "--steps", type=int, default=100, help="distillation iterations per run (default 100)"
    )
    parser.add_argument("--eval-epochs", type=int, default=300, help="retraining epochs (default 300)")
    parser.add_argument("--full-epochs", type=int, default=100, help="retraining epochs on the full set")
    parser.add_argument("--teacher-epochs", type=int, default=30)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    command = args.command
    start = time.perf_counter()
    if args.quick:  # a private cache: the smoke run's tiny experts never reach the real cache
        os.environ["LIGHTNING_DISTILL_CACHE"] = tempfile.mkdtemp(prefix="ftd_quick_cache_")
    body = run(args)
    table = generated_header("benchmarks/ftd.py", command, time.perf_counter() - start) + "\n\n" + body
    (results_dir(args) / "ftd.md").write_text(table)
    print(f"\n{table}", flush=True)
    update_readme(args, ROOT / "recipes" / "ftd" / "README.md", table)


if __name__ == "__main__":
    main()
