"""Toy-scale benchmark of CDA and SRe2L against the coreset, soft-label and full-data baselines.

Recovers scikit-learn digits, upsampled to ``--size`` pixels (16 by default: the pilot on this
machine found BN inversion at the native 8x8 worse than random real images), into 1 and 10 images
per class with the ``cda`` recipe (``recipes/cda/config.yaml`` and ``recipes/cda/sre2l.yaml``
through :class:`lightning_distill.cli.DistillCLI`, with only the seed, the images per class, the
number of recovery steps and the relabel epochs changed), then judges every set with the
evaluation of ``benchmarks/dataset_distillation.py``: a fresh ConvNet-3 (width 128, instance norm)
retrained on the set alone (SGD 0.01, lr / 10 at half time, DSA), tested on the real test split,
one model per seed. Rows:

* random real: ``ipc`` random training images per class (a new draw per seed), hard labels;
* herding: the herding coreset on the squeezed teacher's pooled features, hard labels;
* random real + the same soft labels: the random real images with the teacher's logits (the
  labels CDA's artifact carries), KL at ``T``; and with a relabel cache built the same way as
  CDA's (FKD crops + CutMix + fp16 logits per epoch) - the baseline any relabelled method must beat;
* CDA / SRe2L: the recipe's saved artifact (``SyntheticSet.load``) evaluated with its EvalSpec
  (teacher logits as soft labels), and with its saved relabel cache (``RelabelCache.load``);
* full data: every training image.

Usage (from the repository root)::

    python benchmarks/cda.py --threads 1        # seeds 0 1 2, IPC 1 and 10
    python benchmarks/cda.py --quick            # smoke run: 1 seed, tiny budgets

Writes ``benchmarks/results/cda.md`` and the block between ``<!-- results:start -->`` and
``<!-- results:end -->`` in ``recipes/cda/README.md``; ``--quick`` writes to
``benchmarks/results/quick/cda.md`` and leaves the README alone.
"""

from __future__ import annotations

import importlib
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
    SyntheticSet,
    classification_accuracy,
    evaluate_synthetic,
    full_training_set,
    herding_subset,
    random_real_subset,
    teacher_soft_labels,
)
from lightning_distill.dataset_distillation.relabel import (  # noqa: E402
    RelabelCache,
    build_relabel_cache,
    evaluate_relabel_cache,
)
from lightning_distill.models import trained_classifier  # noqa: E402
from lightning_distill.utils.augment import RandomResizedCropFlip  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"CDA": ROOT / "recipes" / "cda" / "config.yaml", "SRe2L": ROOT / "recipes" / "cda" / "sre2l.yaml"}
SOFT = "random real + teacher soft labels"
RELABEL = "random real + relabel cache"


@dataclass
class Row:
    name: str
    ipc: int | str
    labels: str
    acc: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    label_bytes: list[int] = field(default_factory=list)
    pixel_std: list[float] = field(default_factory=list)


@dataclass
class Settings:
    seeds: list[int]
    ipcs: list[int]
    size: int
    steps: int
    eval_epochs: int
    full_epochs: int
    temperature: float
    relabel: bool


def _build(spec: dict[str, Any]) -> Any:
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))


def with_size(config: dict[str, Any], size: int) -> dict[str, Any]:
    """The config with every image size set to ``size`` (images, evaluation ConvNet, teacher and data)."""
    args = config["model"]["init_args"]
    args["synthetic"]["init_args"]["image_shape"] = [1, size, size]
    args["synthetic"]["init_args"]["eval_spec"]["architecture"]["init_args"]["image_size"] = [size, size]
    args["teacher"]["init_args"]["data"]["init_args"]["size"] = size
    config["data"]["init_args"]["data"]["init_args"]["size"] = size
    return config


def squeezed_teacher(config: dict[str, Any], size: int) -> torch.nn.Module:
    """The config's teacher (``trained_classifier``; cached, the same weights the recipe loads)."""
    args = dict(config["model"]["init_args"]["teacher"]["init_args"])
    data = dict(args.pop("data"))
    data["init_args"] = {**data.get("init_args", {}), "size": size}
    return trained_classifier(_build(args.pop("model")), data=_build(data), **args)


def distill(
    method: str, seed: int, ipc: int, settings: Settings, workdir: Path
) -> tuple[SyntheticSet, RelabelCache, float, float]:
    """Run the recipe from its config; the saved set and relabel cache (read back), wall and CPU seconds."""
    artifact = workdir / f"{method}_ipc{ipc}_seed{seed}.pt"
    config = with_size(yaml.safe_load(CONFIGS[method].read_text()), settings.size)
    cli = recipe_cli(
        config,
        seed,
        [
            "--test_after_fit=false",
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            f"--trainer.max_steps={settings.steps}",
            f"--model.init_args.synthetic.init_args.ipc={ipc}",
            f"--model.init_args.synthetic.init_args.seed={seed}",
            f"--model.init_args.relabel_epochs={settings.eval_epochs}",
            f"--model.init_args.save_path={artifact}",
        ],
        workdir=workdir,
    )
    seconds, cpu_seconds = timed_fit(cli)
    cache = RelabelCache.load(artifact.with_name(artifact.stem + ".relabel.pt"))
    return SyntheticSet.load(artifact), cache, seconds, cpu_seconds


def run(settings: Settings) -> tuple[list[Row], dict[str, Any]]:
    config = yaml.safe_load(CONFIGS["CDA"].read_text())
    size = settings.size
    dm = DigitsDataModule(size=size)
    dm.setup("fit")
    start = time.perf_counter()
    teacher = squeezed_teacher(config, size)
    spec = config["model"]["init_args"]["synthetic"]["init_args"]["eval_spec"]
    arch = {**spec["architecture"]["init_args"], "image_size": [size, size]}
    common = {
        "model_fn": lambda: ConvNet(**arch),
        "epochs": settings.eval_epochs,
        "lr": spec["lr"],
        "augment": spec["augment"],
        "batch_size": spec["batch_size"],
    }
    relabel_common = {"epochs": settings.eval_epochs, "lr": spec["lr"], "temperature": settings.temperature}
    flip_p = config["model"]["init_args"]["flip_p"]
    info: dict[str, Any] = {
        "teacher_acc": classification_accuracy(teacher, dm.test_dataloader()),
        "teacher_seconds": time.perf_counter() - start,
        "test_images": len(dm.test_dataloader().dataset),
        "train_images": int(full_training_set(dm)[0].shape[0]),
        "config": config,
    }
    t = settings.temperature
    rows: list[Row] = []
    for ipc in settings.ipcs:
        n = 10 * ipc
        soft_bytes = n * 10 * 2  # fp16 logits, one row per image
        random_row = Row("random real", ipc, "hard")
        herding_row = Row("herding (teacher features)", ipc, "hard")
        soft_row = Row(SOFT, ipc, f"teacher logits, KL T={t:g}")
        relabel_row = Row(RELABEL, ipc, f"relabel cache, KL T={t:g}")
        method_rows = {
            (m, mode): Row(
                m, ipc, f"teacher logits, KL T={t:g}" if mode == "soft" else f"relabel cache, KL T={t:g}"
            )
            for m in CONFIGS
            for mode in (("soft", "relabel") if settings.relabel else ("soft",))
        }
        herd_x, herd_y = herding_subset(dm, ipc, teacher.forward_features)
        for seed in settings.seeds:
            x, y = random_real_subset(dm, ipc, seed=seed)
            random_row.acc += evaluate_synthetic(x, y, dm, seeds=(seed,), **common).accuracies
            herding_row.acc += evaluate_synthetic(herd_x, herd_y, dm, seeds=(seed,), **common).accuracies
            soft = teacher_soft_labels(teacher, x)
            soft_row.acc += evaluate_synthetic(
                x, y, dm, seeds=(seed,), soft_labels=soft, temperature=t, **common
            ).accuracies
            soft_row.label_bytes.append(soft_bytes)
            for row, images in ((random_row, x), (soft_row, x), (herding_row, herd_x)):
                row.pixel_std.append(float(images.std()))
            if settings.relabel:
                crop = RandomResizedCropFlip(size, scale=(0.08, 1.0), flip_p=flip_p)
                cache = build_relabel_cache(
                    teacher,
                    x,
                    epochs=settings.eval_epochs,
                    batch_size=min(spec["batch_size"], n),
                    crop=crop,
                    mix=config["model"]["init_args"]["relabel_mix"],
                    seed=seed,
                )
                relabel_row.acc += evaluate_relabel_cache(
                    x, y, cache, dm, common["model_fn"], seeds=(seed,), **relabel_common
                ).accuracies
                relabel_row.label_bytes.append(cache.nbytes)
                relabel_row.pixel_std.append(float(x.std()))
            for method in CONFIGS:
                with tempfile.TemporaryDirectory() as tmp:
                    synthetic, cache, seconds, cpu_seconds = distill(method, seed, ipc, settings, Path(tmp))
                for mode in ("soft", "relabel") if settings.relabel else ("soft",):
                    row = method_rows[(method, mode)]
                    row.seconds.append(seconds)
                    row.cpu_seconds.append(cpu_seconds)
                    row.pixel_std.append(float(synthetic.images.detach().std()))
                    if mode == "soft":
                        row.acc += synthetic.evaluate(
                            dm, seeds=(seed,), epochs=settings.eval_epochs, temperature=t
                        ).accuracies
                        row.label_bytes.append(soft_bytes)
                    else:
                        row.acc += evaluate_relabel_cache(
                            synthetic.images,
                            synthetic.labels,
                            cache,
                            dm,
                            common["model_fn"],
                            seeds=(seed,),
                            **relabel_common,
                        ).accuracies
                        row.label_bytes.append(cache.nbytes)
            ipc_rows = [
                random_row,
                herding_row,
                soft_row,
                *([relabel_row] if settings.relabel else []),
                *method_rows.values(),
            ]
            done = ", ".join(f"{r.name} [{r.labels}] {100 * r.acc[-1]:.1f}" for r in ipc_rows)
            print(f"[IPC {ipc}, seed {seed}] {done}", flush=True)
        rows += ipc_rows
    full_x, full_y = full_training_set(dm)
    full_row = Row("full training set", "all", "hard")
    full_row.pixel_std = [float(full_x.std())]
    for seed in settings.seeds:
        full_row.acc += evaluate_synthetic(
            full_x, full_y, dm, seeds=(seed,), **{**common, "epochs": settings.full_epochs}
        ).accuracies
    rows.append(full_row)
    return rows, info


def render(rows: list[Row], info: dict[str, Any], settings: Settings, command: str, seconds: float) -> str:
    cfg = info["config"]["model"]["init_args"]
    teacher = cfg["teacher"]["init_args"]
    n_test = info["test_images"]
    size = settings.size
    lines = [
        generated_header("benchmarks/cda.py", command, seconds),
        "",
        machine_line()
        + f" Load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
        "(wall times stretch when other jobs share the machine; CPU times much less).",
        "",
        f"Data: scikit-learn digits upsampled to {size}x{size}, {info['train_images']} training images, test split "
        f"of {n_test} (one image is {100 / n_test:.2f} points). Seeds {', '.join(map(str, settings.seeds))}; "
        "accuracy is mean ± sample std over seeds, one retrained model per seed (the seed also draws the random "
        "real subset, the relabel cache and the recovery run).",
        "",
        f"Squeezed teacher (recovery, soft labels, relabelling, herding features): "
        f"`{teacher['model']['class_path'].rsplit('.', 1)[-1]}` {teacher['model'].get('init_args', {})} with "
        f"BatchNorm, trained on all training images for {teacher['epochs']} epochs (`trained_classifier`), test "
        f"accuracy {100 * info['teacher_acc']:.2f}%.",
        "",
        f"Evaluation by retraining, the same for every row: ConvNet-3 (width 128, instance norm) at {size}x{size}, "
        f"{settings.eval_epochs} epochs (full data: {settings.full_epochs}), SGD lr 0.01, momentum 0.9, weight decay "
        '5e-4, lr / 10 at half time; hard and "teacher logits" rows: batch 256 with DSA '
        '`color_crop_cutout_scale_rotate`; "relabel cache" rows: the cache\'s batches (FKD random resized crops, '
        f"scale 0.08-1, {cfg['relabel_mix']}) replayed with their stored fp16 teacher logits, no DSA. Soft-label loss "
        f"`T^2 KL` at T = {settings.temperature:g}.",
        "",
        f"Recovery: {settings.steps} steps from N(0, 1), Adam lr {cfg['optimizer']['init_args']['lr']} betas (0.5, "
        f"0.9), cosine lr, CE + {cfg['loss_weights']['bn']} x BN loss (first BN x {cfg['first_bn_multiplier']}), "
        f"jitter {cfg['jitter']} px, one BN batch per image index (`groups: {cfg['groups']}`); CDA: crop scale "
        "cosine 1.0 -> 0.08, SRe2L: 0.08. Label storage: fp16 logits (10 per image), or the whole relabel cache "
        "(logits + batch order + crops + mix parameters of every epoch).",
        "",
    ]
    table = []
    for r in rows:
        secs = (
            f"{sum(r.seconds) / len(r.seconds):.0f} / {sum(r.cpu_seconds) / len(r.cpu_seconds):.0f}"
            if r.seconds
            else "-"
        )
        table.append(
            [
                r.name,
                r.ipc,
                r.labels,
                mean_std(r.acc, 100),
                " / ".join(f"{100 * a:.1f}" for a in r.acc),
                secs,
                f"{int(sum(r.label_bytes) / len(r.label_bytes)):,}" if r.label_bytes else "-",
                mean_std(r.pixel_std, 1.0, 2),
            ]
        )
    headers = [
        "set",
        "images / class",
        "labels",
        "test acc %",
        "per seed",
        "distillation s (wall / CPU)",
        "label bytes",
        "pixel std",
    ]
    lines += [markdown_table(headers, table, align="lrlrlrrr"), ""]
    lines += ["Paired by seed (test-accuracy points, mean ± std over seeds):", ""]
    by = {(r.name, r.ipc, r.labels.split(",")[0]): r for r in rows}
    for ipc in settings.ipcs:
        for kind in ("teacher logits", "relabel cache") if settings.relabel else ("teacher logits",):
            base = by[(SOFT if kind == "teacher logits" else RELABEL, ipc, kind)]
            for method in CONFIGS:
                r = by[(method, ipc, kind)]
                lines.append(
                    f"- IPC {ipc}, {kind}: *{method}* minus *{base.name}*: {paired(r.acc, base.acc, scale=100)}"
                )
            cda, sre2l = by[("CDA", ipc, kind)], by[("SRe2L", ipc, kind)]
            lines.append(f"- IPC {ipc}, {kind}: *CDA* minus *SRe2L*: {paired(cda.acc, sre2l.acc, scale=100)}")
        lines.append(
            f"- IPC {ipc}: *CDA, teacher logits* minus *random real* (hard): "
            f"{paired(by[('CDA', ipc, 'teacher logits')].acc, by[('random real', ipc, 'hard')].acc, scale=100)}"
        )
    return "\n".join(lines) + "\n"


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, tiny budgets")
    parser.add_argument("--ipcs", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--size", type=int, default=16, help="image side after upsampling (default 16)")
    parser.add_argument("--steps", type=int, default=500, help="recovery steps per run (default 500)")
    parser.add_argument("--eval-epochs", type=int, default=300, help="retraining epochs (default 300)")
    parser.add_argument(
        "--full-epochs", type=int, default=100, help="retraining epochs on the full set (default 100)"
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="soft-label temperature (default 1)")
    parser.add_argument("--no-relabel", action="store_true", help="leave out the relabel-cache rows")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    settings = Settings(
        seeds=args.seeds[:1] if args.quick else args.seeds,
        ipcs=args.ipcs,
        size=args.size,
        steps=10 if args.quick else args.steps,
        eval_epochs=3 if args.quick else args.eval_epochs,
        full_epochs=1 if args.quick else args.full_epochs,
        temperature=args.temperature,
        relabel=not args.no_relabel,
    )
    out_dir = results_dir(args)
    command = args.command
    start = time.perf_counter()
    rows, info = run(settings)
    table = render(rows, info, settings, command, time.perf_counter() - start)
    (out_dir / "cda.md").write_text(table)
    print(f"\n{table}", flush=True)
    update_readme(args, ROOT / "recipes" / "cda" / "README.md", table)


if __name__ == "__main__":
    main()
