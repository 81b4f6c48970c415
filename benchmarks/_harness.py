"""How a benchmark script runs: its shared flags, threads, quiet logs, and recipe runs through the CLI.

``_report.py`` says what a result looks like (cells, tables, README blocks); this module says how a
script gets there. A script builds its parser in ``build_parser()`` with :func:`bench_parser` (the
shared flags, then its own ``add_argument`` calls), starts with ``args = build_parser().start(argv)``
(threads set, logs quiet, ``args.command`` filled in), builds each fit with :func:`recipe_cli` and
times it with :func:`timed_fit`, and writes to :func:`results_dir` and :func:`update_readme`.
``benchmarks/dmd2.py`` uses all of it; ``tests/benchmarks/test_scripts.py`` builds every parser.

Shared flags: ``--seeds`` (default 0 1 2), ``--threads`` (default 1: torch threads and
``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` for child processes; ``None`` leaves torch's choice),
``--quick`` (a smoke run; each script says what it shrinks; results go under ``results/quick/``
and no README is written) and ``--no-readme`` (write ``benchmarks/results`` only).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from _report import write_block

__all__ = [
    "NOISY_WARNINGS",
    "QUIET_CLI_ARGS",
    "RESULTS",
    "ROOT",
    "BenchParser",
    "bench_parser",
    "logged",
    "quiet",
    "quiet_cli_args",
    "recipe_cli",
    "results_dir",
    "sampling_ms",
    "set_threads",
    "timed_fit",
    "update_readme",
]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

#: Trainer flags of every benchmark fit: no logger, checkpoints, progress bar, summary or validation.
QUIET_CLI_ARGS = (
    "--trainer.logger=false",
    "--trainer.enable_checkpointing=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.limit_val_batches=0",
)

#: Warnings every benchmark run prints and nobody acts on (small data loaders, Lightning notices).
NOISY_WARNINGS = (
    ".*does not have many workers.*",
    ".*eval mode at the start of training.*",
    ".*(treespec|LeafSpec).*",
    ".*args parameter is intended.*",
    ".*`training_step` returns `None`.*",
)


class BenchParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` that knows its script, so :meth:`start` can print the command."""

    script: str = "benchmarks/?.py"

    def start(self, argv: Sequence[str] | None = None, *, all_warnings: bool = False) -> argparse.Namespace:
        """Parse ``argv``, set the threads, quieten the logs; ``args.command`` is the command to rerun.

        Args:
            argv: the arguments (default: ``sys.argv[1:]``).
            all_warnings: silence every warning, not only :data:`NOISY_WARNINGS`.
        """
        argv = sys.argv[1:] if argv is None else list(argv)
        args = self.parse_args(argv)
        threads = getattr(args, "threads", None)
        if threads is not None and threads < 1:
            self.error(f"--threads must be >= 1, got {threads}")
        set_threads(threads)
        quiet(all_warnings)
        args.command = shlex.join(["python", self.script, *argv])
        return args


def bench_parser(
    script: str,
    doc: str | None,
    *,
    seeds: Sequence[int] | None = (0, 1, 2),
    threads: int | None = 1,
    quick: str | None = None,
    readme: bool = True,
    samples: int | None = None,
) -> BenchParser:
    """A parser with the shared flags; the script adds its own with ``add_argument``.

    Args:
        script: the script's ``__file__`` (the command printed in results names it).
        doc: the script's docstring; its first paragraph describes the script in ``--help``.
        seeds: the default of ``--seeds``; ``None``: no ``--seeds`` flag.
        threads: the default of ``--threads``; ``None``: torch's choice unless given.
        quick: the help of ``--quick`` (what the smoke run shrinks); ``None``: no ``--quick`` flag.
        readme: add ``--no-readme`` (the script writes a README block).
        samples: the default of ``--n``, samples drawn per model and seed; ``None``: no ``--n`` flag.
    """
    parser = BenchParser(description=(doc or "").strip().split("\n\n")[0])
    path = Path(script).resolve()
    parser.script = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.as_posix()
    if seeds is not None:
        parser.add_argument(
            "--seeds",
            type=int,
            nargs="+",
            default=list(seeds),
            help=f"seeds (default {' '.join(map(str, seeds))})",
        )
    default = "torch's choice" if threads is None else str(threads)
    parser.add_argument(
        "--threads",
        type=int,
        default=threads,
        help=f"torch threads and OMP/MKL_NUM_THREADS (default {default})",
    )
    if quick is not None:
        help = f"smoke run: {quick}" + ("; results under results/quick/, no README" if readme else "")
        parser.add_argument("--quick", action="store_true", help=help)
    if readme:
        parser.add_argument("--no-readme", action="store_true", help="write benchmarks/results only")
    if samples is not None:
        parser.add_argument(
            "--n", type=int, default=samples, help=f"samples per model and seed (default {samples})"
        )
    return parser


def set_threads(threads: int | None) -> None:
    """Use ``threads`` torch threads, and tell OpenMP/MKL in child processes the same (``None``: no change).

    The scripts also set ``OMP_NUM_THREADS`` before torch is imported, which this cannot do.
    """
    if threads is None:
        return
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def quiet(all_warnings: bool = False) -> None:
    """Lightning logs errors only; the :data:`NOISY_WARNINGS` (or, with ``all_warnings``, all) are silenced."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if all_warnings:
        warnings.filterwarnings("ignore")
        return
    for pattern in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", pattern)


def quiet_cli_args(workdir: str | Path | None = None) -> list[str]:
    """:data:`QUIET_CLI_ARGS`, and ``--trainer.default_root_dir=workdir`` when given."""
    return [*QUIET_CLI_ARGS, *([f"--trainer.default_root_dir={workdir}"] if workdir is not None else [])]


def recipe_cli(
    config: str | Path | Mapping[str, Any] | Sequence[str | Path],
    seed: int,
    extra: Sequence[str] = (),
    *,
    workdir: str | Path | None = None,
) -> Any:
    """A :class:`~lightning_distill.cli.DistillCLI` built (not run) as ``lightning-distill fit`` would, quietly.

    Args:
        config: a config file, several (later ones override), or a config dict (written to
            ``workdir/config.yaml``, so ``workdir`` is needed).
        seed: ``--seed_everything``.
        extra: more flags, after the quiet ones (``--trainer.max_epochs=2``, ``--model.init_args...``).
        workdir: the trainer's ``default_root_dir``.

    Raises:
        ValueError: a config dict without a ``workdir``.
    """
    from lightning_distill.cli import DistillCLI

    if isinstance(config, Mapping):
        if workdir is None:
            raise ValueError("recipe_cli needs a workdir to write a config dict to.")
        path = Path(workdir) / "config.yaml"
        path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        configs = [path]
    else:
        configs = [config] if isinstance(config, (str, Path)) else list(config)
    args = [
        *(f"--config={path}" for path in configs),
        f"--seed_everything={seed}",
        *quiet_cli_args(workdir),
        *extra,
    ]
    return DistillCLI(args=args, run=False, save_config_callback=None)


def timed_fit(cli: Any, **fit_kwargs: Any) -> tuple[float, float]:
    """``cli.trainer.fit(cli.model, datamodule=cli.datamodule)``; its wall-clock and process CPU seconds."""
    start, cpu_start = time.perf_counter(), time.process_time()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, **fit_kwargs)
    return time.perf_counter() - start, time.process_time() - cpu_start


def logged(cli: Any, key: str, default: float = float("nan")) -> float:
    """The last value of ``key`` the fit logged (``trainer.callback_metrics``), or ``default``."""
    return float(cli.trainer.callback_metrics.get(key, default))


def sampling_ms(draw: Callable[[int, torch.Generator], Any], n: int, repeats: int = 5) -> float:
    """Median wall-clock milliseconds of one call ``draw(n, generator)`` without gradients.

    The k-th call gets a generator seeded with k, so every sampler draws the same noise.
    """
    times = []
    for k in range(repeats):
        generator = torch.Generator().manual_seed(k)
        start = time.perf_counter()
        with torch.no_grad():
            draw(n, generator)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def results_dir(args: argparse.Namespace) -> Path:
    """``benchmarks/results`` (``results/quick`` with ``--quick``), created if missing."""
    out = RESULTS / "quick" if getattr(args, "quick", False) else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    return out


def update_readme(args: argparse.Namespace, readme: str | Path, body: str, key: str = "results") -> bool:
    """Write ``body`` into ``readme``'s generated block unless ``--quick`` or ``--no-readme``; whether it did."""
    if getattr(args, "quick", False) or getattr(args, "no_readme", False):
        return False
    write_block(readme, body, key=key)
    return True
