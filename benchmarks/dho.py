"""Toy-scale benchmark of DHO: do two heads beat one head with the same CE and KD losses, with few labels?

Every run is ``recipes/dho/config.yaml`` built through :class:`lightning_distill.cli.DistillCLI`
with only the seed, the labelled fraction and the keys in the table changed: the same six digit
domains, the same CLIP teacher (a small ``transformers.CLIPModel`` trained contrastively on first
use, cached), student, optimizer and epochs. The data split seed follows the run's seed, so each
seed draws another labelled subset. After training, ``(α, β)`` of the dual-head mix is
grid-searched on the validation split (the official ``evaluate(search_param=True)``), then every
row is scored on the test split (every domain's test part). Rows: CE only, KD only, one head with
both losses, DHO's two heads, and the teacher's zero-shot accuracy.

Usage (from the repository root)::

    python benchmarks/dho.py --threads 1        # seeds 0 1 2, 1% and 10% labels
    python benchmarks/dho.py --quick            # smoke run: 1 seed, 1 epoch, 10% labels

Writes ``benchmarks/results/dho.md`` and the block between ``<!-- results:start -->`` and
``<!-- results:end -->`` in ``recipes/dho/README.md``; ``--quick`` writes to
``benchmarks/results/quick/dho.md`` and leaves the README alone.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import torch  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std, paired  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "dho" / "config.yaml"
README = ROOT / "recipes" / "dho" / "README.md"
#: key -> (row name, what differs from config.yaml, extra CLI flags)
ROWS: dict[str, tuple[str, str, list[str]]] = {
    "ce": ("CE only (one head)", "`heads: single`, KD weights 0", [
        "--model.init_args.heads=single",
        "--model.init_args.loss_weights={kd_labelled: 0.0, kd_unlabelled: 0.0}",
    ]),
    "kd": ("KD only (one head)", "`heads: single`, CE weight 0", [
        "--model.init_args.heads=single", "--model.init_args.loss_weights={ce: 0.0}",
    ]),
    "single": ("CE + KD, one head", "`heads: single`", ["--model.init_args.heads=single"]),
    "dho": ("DHO: CE + KD, two heads (config)", "none", []),
}  # fmt: skip
PAIRS = (("dho", "single"), ("dho", "ce"), ("dho", "kd"))


@torch.no_grad()
def accuracy(predict: Any, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(
        torch.cat([predict(x[i : i + 512]).argmax(-1) for i in range(0, len(x), 512)]).eq(y).float().mean()
    )


def run(seed: int, fraction: float, extra: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for key, (_, _, flags) in ROWS.items():
        cli = recipe_cli(
            CONFIG,
            seed,
            [
                f"--data.init_args.labelled_fraction={fraction}",
                f"--data.init_args.seed={seed}",
                *extra,
                *flags,
            ],
        )
        dm, model = cli.datamodule, cli.model
        t0 = time.perf_counter()
        cli.trainer.fit(model, datamodule=dm)
        fit_s = time.perf_counter() - t0
        model.eval()
        val_acc = model.fit_mixing(dm.val_dataloader())
        x, y, _ = dm.split("test")
        out[key] = {
            "acc": accuracy(model, x, y),
            "val": val_acc,
            "alpha": float(model.mix_alpha),
            "beta": float(model.mix_beta),
            "fit_s": fit_s,
            "labelled": int((dm.split("train")[1] >= 0).sum()),
        }
        if "teacher" not in out:
            _, _, d = dm.split("test")
            pred = torch.cat([model.teacher(x[i : i + 512]).argmax(-1) for i in range(0, len(x), 512)])
            per_domain = {
                name: float(pred[d == k].eq(y[d == k]).float().mean()) for k, name in enumerate(dm.domains)
            }
            out["teacher"] = {"acc": float(pred.eq(y).float().mean()), "per_domain": per_domain}
        print(
            f"  {fraction:.0%} seed {seed} {key}: test acc {out[key]['acc']:.3f} (alpha {out[key]['alpha']:.2f}, beta "
            f"{out[key]['beta']:.2f}; fit {fit_s:.0f} s)",
            flush=True,
        )
    return out


def report(
    runs: dict, fractions: list[float], seeds: list[int], command: str, wall: float, args: argparse.Namespace
) -> str:
    headers = ["student", "what differs from config.yaml", *[f"test acc, {f:.0%} labels" for f in fractions]]
    rows = []
    for key, (name, change, _) in ROWS.items():
        rows.append(
            [name, change, *[mean_std([runs[f][s][key]["acc"] for s in seeds], 100, 1) for f in fractions]]
        )
    rows.append(
        [
            "CLIP teacher, zero-shot",
            "-",
            *[mean_std([runs[f][s]["teacher"]["acc"] for s in seeds], 100, 1) for f in fractions],
        ]
    )
    teacher_domains = runs[fractions[0]][seeds[0]]["teacher"]["per_domain"]
    labelled = {f: runs[f][seeds[0]]["dho"]["labelled"] for f in fractions}
    lines = [
        generated_header("benchmarks/dho.py", command, wall),
        "",
        machine_line(),
        "",
        f"Seeds {', '.join(map(str, seeds))} (initialisation, data order and the labelled subset). Labelled training "
        f"images: {', '.join(f'{labelled[f]} at {f:.0%}' for f in fractions)} (the rest of the six domains' training "
        "split unlabelled); test: every domain's test part. Accuracy in %, mean ± sample std "
        "over seeds. DHO's (α, β) searched on the validation split after training.",
        "",
        markdown_table(headers, rows, align="ll" + "r" * len(fractions)),
        "",
        "Teacher zero-shot accuracy per test domain: "
        + ", ".join(f"{name} {100 * acc:.1f}" for name, acc in teacher_domains.items())
        + ".",
        "",
        "DHO's searched mix (α on the KD head, β its temperature): "
        + "; ".join(
            f"{f:.0%}: "
            + ", ".join(f"({runs[f][s]['dho']['alpha']:.2f}, {runs[f][s]['dho']['beta']:.2f})" for s in seeds)
            for f in fractions
        )
        + ".",
        "",
        "Paired by seed (accuracy points, mean ± std; seeds better / worse):",
        "",
    ]
    for f in fractions:
        for a, b in PAIRS:
            x = [runs[f][s][a]["acc"] for s in seeds]
            z = [runs[f][s][b]["acc"] for s in seeds]
            better = sum(u > v for u, v in zip(x, z))
            lines.append(
                f"- {f:.0%} labels, *{ROWS[a][0]}* minus *{ROWS[b][0]}*: {paired(x, z, scale=100, digits=1)} "
                f"({better} / {len(x) - better})"
            )
    if args.quick:
        lines.insert(1, "**Quick smoke run (`--quick`): not a result.**")
    return "\n".join(lines) + "\n"


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 1 epoch, 10% labels")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1], help="labelled fractions")
    parser.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv, all_warnings=True)
    extra: list[str] = [f"--trainer.max_epochs={args.epochs}"] if args.epochs else []
    if args.quick:
        args.seeds, args.fractions = args.seeds[:1], [0.1]
        extra = ["--trainer.max_epochs=1"]
    start = time.perf_counter()
    runs = {f: {seed: run(seed, f, extra) for seed in args.seeds} for f in args.fractions}
    text = report(runs, args.fractions, args.seeds, args.command, time.perf_counter() - start, args)
    (results_dir(args) / "dho.md").write_text("# DHO benchmark\n\n" + text)
    print(text)
    update_readme(args, README, text)


if __name__ == "__main__":
    main()
