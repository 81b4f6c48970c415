"""Toy-scale benchmark of VL2V-ADiP: leave-one-domain-out accuracy, ERM vs VL2V-ADiP vs the CLIP teacher.

Every VL2V run is ``recipes/vl2v/config.yaml`` built through :class:`lightning_distill.cli.DistillCLI`
with only the seed, the held-out domain and the keys in the table changed. ERM is the same config
with the model swapped for :class:`~lightning_distill.recipes.supervised.Supervised` (cross-entropy
on the source domains' labels) on the same backbone (``SmallCNN(in_channels 3, width 16, depth 2)``
with its linear head), optimizer, data and epochs. Each row is scored on the held-out domain's test
part; the teacher row is the CLIP teacher's zero-shot accuracy there.

Usage (from the repository root)::

    python benchmarks/vl2v.py --threads 1        # seeds 0 1 2, held-out domains noisy and colour
    python benchmarks/vl2v.py --quick            # smoke run: 1 seed, 1 domain, 2 epochs

Writes ``benchmarks/results/vl2v.md`` and the block between ``<!-- results:start -->`` and
``<!-- results:end -->`` in ``recipes/vl2v/README.md``; ``--quick`` writes to
``benchmarks/results/quick/vl2v.md`` and leaves the README alone.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import torch  # noqa: E402
import yaml  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std, paired  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "vl2v" / "config.yaml"
README = ROOT / "recipes" / "vl2v" / "README.md"
ROWS: dict[str, tuple[str, str, list[str]]] = {
    "erm": ("ERM (student alone, CE on the source domains)", "`model: Supervised(SmallCNN)`", []),
    "vl2v": ("VL2V-ADiP (config)", "none", []),
    "no_avg": ("VL2V-ADiP without weight averaging", "`average_weights: false`", ["--model.init_args.average_weights=false"]),
    "no_stage1": ("VL2V-ADiP without stage 1 or averaging", "`stage1_epochs: 0`, `average_weights: false`", [
        "--model.init_args.stage1_epochs=0", "--model.init_args.average_weights=false",
    ]),
}  # fmt: skip
PAIRS = (("vl2v", "erm"), ("vl2v", "no_avg"), ("no_stage1", "erm"))


def erm_config() -> dict[str, Any]:
    config = yaml.safe_load(CONFIG.read_text())
    backbone = config["model"]["init_args"]["student"]["init_args"]["backbone"]
    config["model"] = {
        "class_path": "lightning_distill.recipes.supervised.Supervised",
        "init_args": {"student": backbone, "optimizer": config["model"]["init_args"]["optimizer"]},
    }
    return config


@torch.no_grad()
def accuracy(predict: Any, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(
        torch.cat([predict(x[i : i + 512]).argmax(-1) for i in range(0, len(x), 512)]).eq(y).float().mean()
    )


def run(seed: int, domain: str, extra: list[str]) -> dict[str, dict]:
    out: dict[str, Any] = {}
    flags = [f"--data.init_args.test_domains=[{domain}]", *extra]
    for key, (_, _, row_flags) in ROWS.items():
        with tempfile.TemporaryDirectory() as workdir:
            config = erm_config() if key == "erm" else CONFIG
            cli = recipe_cli(config, seed, [*flags, *row_flags], workdir=workdir)
            t0 = time.perf_counter()
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
            fit_s = time.perf_counter() - t0
            model = cli.model.eval()
            x, y, _ = cli.datamodule.split("test")
            out[key] = accuracy(model, x, y)
            if key == "vl2v":
                out["teacher"] = accuracy(model.teacher, x, y)
        print(f"  {domain} seed {seed} {key}: held-out acc {out[key]:.3f} (fit {fit_s:.0f} s)", flush=True)
    return out


def report(
    runs: dict, domains: list[str], seeds: list[int], command: str, wall: float, args: argparse.Namespace
) -> str:
    headers = ["model", "what differs from config.yaml", *[f"held out: {d}" for d in domains], "mean"]
    rows = []
    for key, (name, change, _) in [*ROWS.items(), ("teacher", ("CLIP teacher, zero-shot", "-", []))]:
        per = [mean_std([runs[d][s][key] for s in seeds], 100, 1) for d in domains]
        avg = mean_std([sum(runs[d][s][key] for d in domains) / len(domains) for s in seeds], 100, 1)
        rows.append([name, change, *per, avg])
    lines = [
        generated_header("benchmarks/vl2v.py", command, wall),
        "",
        machine_line(),
        "",
        f"Seeds {', '.join(map(str, seeds))} (initialisation and data order). Each column trains on the other five "
        "domains and tests on the held-out domain's test part. Accuracy in %, mean ± sample std over seeds; `mean` "
        "is the per-seed mean over the held-out domains.",
        "",
        markdown_table(headers, rows, align="ll" + "r" * (len(domains) + 1)),
        "",
        "Paired by seed (accuracy points, mean ± std; seeds better / worse):",
        "",
    ]
    for d in domains:
        for a, b in PAIRS:
            x = [runs[d][s][a] for s in seeds]
            z = [runs[d][s][b] for s in seeds]
            better = sum(u > v for u, v in zip(x, z))
            lines.append(f"- held out {d}: *{ROWS[a][0]}* minus *{ROWS[b][0]}*: {paired(x, z, scale=100, digits=1)} "
                         f"({better} / {len(x) - better})")  # fmt: skip
    if args.quick:
        lines.insert(1, "**Quick smoke run (`--quick`): not a result.**")
    return "\n".join(lines) + "\n"


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 1 domain, 2 epochs")
    parser.add_argument("--domains", nargs="+", default=["noisy", "colour"], help="held-out domains")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv, all_warnings=True)
    extra: list[str] = []
    if args.quick:
        args.seeds, args.domains = args.seeds[:1], args.domains[:1]
        extra = ["--trainer.max_epochs=2"]
    start = time.perf_counter()
    runs = {d: {seed: run(seed, d, extra) for seed in args.seeds} for d in args.domains}
    text = report(runs, args.domains, args.seeds, args.command, time.perf_counter() - start, args)
    (results_dir(args) / "vl2v.md").write_text("# VL2V-ADiP benchmark\n\n" + text)
    print(text)
    update_readme(args, README, text)


if __name__ == "__main__":
    main()
