"""Distillation-DPO diagnostic: does the near-identical ε / 1.1ε pair explain DPO losing to plain score distillation?

The main benchmark (``benchmarks/distillation_dpo.py``) finds the DPO student 0.13 m Chamfer behind plain
score distillation, with the student's DPO gradient only 0.28 of the winner term's norm: the two completions
of a pair (noises ε and 1.1ε) are nearly the same cloud, so the loser term takes back most of what the winner
term gives. If that is the cause, pairs that differ more (ε and 2ε) should make DPO's gradient larger and its
result closer to, or better than, plain score distillation. Rows (same bench sizes, seeds and teacher as the
main benchmark): plain score distillation; DPO with the paper's scales (1.0, 1.1); DPO with (1.0, 2.0).

Usage (from the repository root)::

    python benchmarks/distillation_dpo_pairs.py            # seeds 0 1 2
    python benchmarks/distillation_dpo_pairs.py --quick    # 1 seed, tiny teacher, 4 iterations

Writes ``benchmarks/results/distillation_dpo_pairs.md`` (``--quick``: under ``results/quick/``).
"""

from __future__ import annotations

import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

from _harness import bench_parser, recipe_cli, results_dir, timed_fit  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std, paired  # noqa: E402
from distillation_dpo import METRICS, bench_config, evaluate, gradient_split  # noqa: E402

VARIANTS = (
    ("sd", "config_sd.yaml", None, "plain score distillation (baseline)"),
    ("dpo_1.1", "config.yaml", [1.0, 1.1], "DPO, noises ε and 1.1ε (paper)"),
    ("dpo_2", "config.yaml", [1.0, 2.0], "DPO, noises ε and 2ε"),
)


def build_parser():
    return bench_parser(__file__, __doc__, quick="1 seed, a 40-step teacher, 4 iterations")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    rows: dict[str, list[dict[str, float]]] = {key: [] for key, *_ in VARIANTS}
    grads: dict[str, list[tuple[float, float]]] = {key: [] for key, *_ in VARIANTS if key != "sd"}
    start = time.perf_counter()
    for seed in seeds:
        for key, name, scales, _ in VARIANTS:
            config = bench_config(name, args.quick)
            if scales is not None:
                config["model"]["init_args"]["noise_scales"] = scales
            with tempfile.TemporaryDirectory() as workdir:
                cli = recipe_cli(config, seed, workdir=workdir)
                recipe = cli.model
                timed_fit(cli)
                recipe.eval()
                batches = list(cli.datamodule.test_dataloader())
                rows[key].append(evaluate(recipe, recipe.student, batches, 1, seed))
                if key in grads:
                    grads[key].append(gradient_split(recipe, batches[0], seed))
        print(f"seed {seed}: " + ", ".join(f"{k} cd {v[-1]['cd']:.4f}" for k, v in rows.items()), flush=True)
    wall = time.perf_counter() - start
    labels = {key: label for key, _, _, label in VARIANTS}
    table = markdown_table(
        ["student (1 step)", *(label for _, label in METRICS), "‖∇L_dpo‖ / ‖∇ winner term‖", "cosine"],
        [
            [
                labels[key],
                *(mean_std([r[m] for r in rows[key]], digits=4) for m, _ in METRICS),
                mean_std([g[0] for g in grads[key]], digits=3) if key in grads else "-",
                mean_std([g[1] for g in grads[key]], digits=3) if key in grads else "-",
            ]
            for key in rows
        ],
        align="l" + "r" * (len(METRICS) + 2),
    )
    diff = markdown_table(
        ["paired over seeds", *(label for _, label in METRICS)],
        [
            [f"{labels[key]} − baseline", *(paired([r[m] for r in rows[key]], [r[m] for r in rows["sd"]], digits=4) for m, _ in METRICS)]
            for key in ("dpo_1.1", "dpo_2")
        ],
        align="l" + "r" * len(METRICS),
    )  # fmt: skip
    body = "\n\n".join(
        [
            generated_header(build_parser().script, args.command, wall),
            f"{machine_line()} Seeds {' '.join(map(str, seeds))}; the main benchmark's sizes, teacher and "
            "iterations; only `noise_scales` differs between the DPO rows. Gradient columns: the student's "
            "gradient after the fit on one test batch, DPO's over the winner term's alone.",
            table,
            diff,
        ]
    )
    out = results_dir(args) / "distillation_dpo_pairs.md"
    out.write_text(f"# Distillation-DPO: pair separation\n\n{body}\n")
    print(body)


if __name__ == "__main__":
    main()
