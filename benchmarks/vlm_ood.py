"""Toy-scale benchmark of vlm_ood: does the student generalise to a held-out domain and to unseen classes?

Every run is ``recipes/vlm_ood/config.yaml`` built through :class:`lightning_distill.cli.DistillCLI`
with only the seed and the loss weights in the table changed: the student trains on five digit
domains (``rotated`` held out) and on classes 0-6 (7, 8, 9 held out), and predicts through the
CLIP teacher's text embeddings of all ten classes. Each trained student is scored on four parts of
the test split (the same per-domain split for every row): training domains and seen classes,
the held-out domain with seen classes, training domains with unseen classes, and the held-out domain
with unseen classes. Rows: the four terms (config), without the language terms (only ``L_mse`` and
``L_im_cst``: feature distillation read out through text), the text classifier alone (``L_cls``: no
teacher image terms), and the teacher's zero-shot accuracy.

Usage (from the repository root)::

    python benchmarks/vlm_ood.py --threads 1        # seeds 0 1 2
    python benchmarks/vlm_ood.py --quick            # smoke run: 1 seed, 1 epoch

Writes ``benchmarks/results/vlm_ood.md`` and the block between ``<!-- results:start -->`` and
``<!-- results:end -->`` in ``recipes/vlm_ood/README.md``; ``--quick`` writes to
``benchmarks/results/quick/vlm_ood.md`` and leaves the README alone.
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

from lightning_distill.data.domains import DigitDomainsDataModule  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "vlm_ood" / "config.yaml"
README = ROOT / "recipes" / "vlm_ood" / "README.md"
#: key -> (row name, what differs from config.yaml, extra CLI flags)
ROWS: dict[str, tuple[str, str, list[str]]] = {
    "full": ("vlm_ood: all four terms (config)", "none", []),
    "no_language": ("without the language terms", "`loss_weights: {cls: 0, vlalign: 0}`", [
        "--model.init_args.loss_weights={cls: 0.0, vlalign: 0.0}",
    ]),
    "cls_only": ("text classifier alone (no teacher image terms)", "`{vlalign: 0, mse: 0, im_cst: 0}`", [
        "--model.init_args.loss_weights={vlalign: 0.0, mse: 0.0, im_cst: 0.0}",
    ]),
}  # fmt: skip
#: column -> (header, held-out domain?, unseen classes?)
PARTS = {
    "id": ("training domains, seen classes", False, False),
    "domain": ("held-out domain, seen classes", True, False),
    "classes": ("training domains, unseen classes", False, True),
    "both": ("held-out domain, unseen classes", True, True),
}
PAIRS = (("full", "no_language"), ("full", "cls_only"))


def test_parts(dm: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The four test parts: every domain's test split (a module without held-out domains gives them all)."""
    every = DigitDomainsDataModule(domains=dm.domains, size=dm.size, seed=dm.seed)
    x, y, d = every.split("test")
    held_domain = torch.isin(d, torch.tensor([dm.domains.index(n) for n in dm.test_domains]))
    unseen = torch.isin(y, torch.tensor(list(dm.held_out_classes)))
    return {key: (x[(held_domain == hd) & (unseen == uc)], y[(held_domain == hd) & (unseen == uc)])
            for key, (_, hd, uc) in PARTS.items()}  # fmt: skip


@torch.no_grad()
def accuracy(predict: Any, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(
        torch.cat([predict(x[i : i + 512]).argmax(-1) for i in range(0, len(x), 512)]).eq(y).float().mean()
    )


def run(seed: int, extra: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for key, (_, _, flags) in ROWS.items():
        cli = recipe_cli(CONFIG, seed, [*extra, *flags])
        dm, model = cli.datamodule, cli.model
        t0 = time.perf_counter()
        cli.trainer.fit(model, datamodule=dm)
        fit_s = time.perf_counter() - t0
        model.eval()
        parts = test_parts(dm)
        out[key] = {part: accuracy(model, *parts[part]) for part in PARTS} | {"fit_s": fit_s}
        if "teacher" not in out:
            out["teacher"] = {part: accuracy(model.teacher, *parts[part]) for part in PARTS}
            out["sizes"] = {part: len(parts[part][1]) for part in PARTS}
        print(f"  seed {seed} {key}: " + ", ".join(f"{p} {out[key][p]:.3f}" for p in PARTS) + f" (fit {fit_s:.0f} s)",
              flush=True)  # fmt: skip
    return out


def report(runs: dict, seeds: list[int], command: str, wall: float, args: argparse.Namespace) -> str:
    sizes = runs[seeds[0]]["sizes"]
    headers = [
        "student",
        "what differs from config.yaml",
        *[f"{h} ({sizes[k]})" for k, (h, _, _) in PARTS.items()],
    ]
    rows = []
    for key, (name, change, _) in ROWS.items():
        rows.append([name, change, *[mean_std([runs[s][key][p] for s in seeds], 100, 1) for p in PARTS]])
    rows.append(
        [
            "CLIP teacher, zero-shot",
            "-",
            *[mean_std([runs[s]["teacher"][p] for s in seeds], 100, 1) for p in PARTS],
        ]
    )
    lines = [
        generated_header("benchmarks/vlm_ood.py", command, wall),
        "",
        machine_line(),
        "",
        f"Seeds {', '.join(map(str, seeds))} (initialisation and data order). Held-out domain: `rotated`; unseen "
        "classes: 7, 8, 9 (never in the student's training or validation data; predicted through the teacher's text "
        "embeddings of all ten classes, so chance is 10%). Test images per column in the header. Accuracy in %, "
        "mean ± sample std over seeds.",
        "",
        markdown_table(headers, rows, align="ll" + "r" * len(PARTS)),
        "",
        "Paired by seed (accuracy points, mean ± std; seeds better / worse):",
        "",
    ]
    for a, b in PAIRS:
        for p, (h, _, _) in PARTS.items():
            x = [runs[s][a][p] for s in seeds]
            z = [runs[s][b][p] for s in seeds]
            better = sum(u > v for u, v in zip(x, z))
            lines.append(f"- {h}: *{ROWS[a][0]}* minus *{ROWS[b][0]}*: {paired(x, z, scale=100, digits=1)} "
                         f"({better} / {len(x) - better})")  # fmt: skip
    if args.quick:
        lines.insert(1, "**Quick smoke run (`--quick`): not a result.**")
    return "\n".join(lines) + "\n"


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 1 epoch")
    parser.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv, all_warnings=True)
    extra: list[str] = [f"--trainer.max_epochs={args.epochs}"] if args.epochs else []
    if args.quick:
        args.seeds = args.seeds[:1]
        extra = ["--trainer.max_epochs=1"]
    start = time.perf_counter()
    runs = {seed: run(seed, extra) for seed in args.seeds}
    text = report(runs, args.seeds, args.command, time.perf_counter() - start, args)
    (results_dir(args) / "vlm_ood.md").write_text("# vlm_ood benchmark\n\n" + text)
    print(text)
    update_readme(args, README, text)


if __name__ == "__main__":
    main()
