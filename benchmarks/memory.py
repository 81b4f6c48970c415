"""Peak memory of a recipe's toy config and memory growth over 1,000 training steps (a leak shows as a slope).

Each recipe runs in its own process (so the peak is its own): ``lightning-distill fit`` of
``recipes/<slug>/config.yaml`` (built with ``recipe_cli``: no logger, checkpoints, progress bar or
validation) for ``--steps`` training batches, stopped by a callback. Measured:

- **CPU, resident memory (RSS)** of the process, from ``psutil`` (``/proc``): everything the process
  holds, torch's CPU allocator included (it allocates with ``malloc``/``mmap``, outside Python's
  allocator, so ``tracemalloc`` would not see tensors). Reported: RSS after the recipe and the data
  are built (before fit), the peak (``ru_maxrss``, the kernel's high-water mark of the whole
  process) and RSS sampled every ``--every`` batches.
- **Live tensors**: the bytes of the distinct storages of all tensors the garbage collector can
  reach (parameters, optimizer states, buffers, anything a hook or list keeps), at the same
  samples; tensors held only by the autograd graph are not reachable this way (RSS has them).
- **CUDA** (``--device cuda``): ``torch.cuda.max_memory_allocated`` (peak) and
  ``torch.cuda.memory_allocated`` at the samples, instead of RSS.

Growth is the least-squares slope of the samples after the first ``--skip`` (allocator and caches
warm up first), in MB per 1,000 steps. ``flat`` means the slope of the live tensors is below 0.1 MB
per 1,000 steps and that of RSS (or CUDA memory) below ``--tolerance`` MB per 1,000 steps (glibc's
allocator returns memory in pages, so RSS moves by a few MB without a leak).

Usage (from the repository root)::

    python benchmarks/memory.py --threads 1            # kd dmd2 datadam slidr, 1000 steps each
    python benchmarks/memory.py --recipes kd --steps 200 --every 20 --quick
"""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from _harness import ROOT, bench_parser, recipe_cli, results_dir
from _report import generated_header, machine_line, markdown_table, write_block

DOC = ROOT / "docs" / "strategies.md"
DEFAULT_RECIPES = ("kd", "dmd2", "datadam", "slidr")
#: Smaller settings where the toy config takes about a second a step on one core, so that 1,000
#: steps stay within a minute or two (``--toy-size`` runs the configs as they are).
SMALL = {
    "slidr": (
        "--data.init_args.batch_size=1",
        "--data.init_args.num_scenes=20",
        "--data.init_args.beams=8",
        "--data.init_args.azimuth_steps=128",
        "--data.init_args.image_size=[32,64]",
        "--model.init_args.num_matches=512",
        "--model.init_args.student.init_args.widths=[8,16]",
    ),
}
MB = 2**20


def rss_bytes() -> int:
    """Resident set size of this process now."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """The process's high-water mark of resident memory (``ru_maxrss``, kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def live_tensor_bytes() -> int:
    """Bytes of the distinct storages of every tensor the garbage collector reaches."""
    seen: dict[tuple[str, int], int] = {}
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.layout == torch.strided:
                storage = obj.untyped_storage()
                seen[(str(obj.device), storage.data_ptr())] = storage.nbytes()
        except Exception:  # noqa: BLE001 - some objects raise on isinstance/attribute access
            continue
    return sum(seen.values())


def slope_per_1000(steps: Sequence[int], values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` over ``steps``, per 1,000 steps (0 with fewer than 2 points)."""
    if len(steps) < 2:
        return 0.0
    return 1000 * statistics.linear_regression(steps, values).slope


class MemorySampler(L.Callback):
    """Samples memory every ``every`` training batches and stops the fit after ``steps`` batches."""

    def __init__(self, steps: int, every: int, device: str) -> None:
        self.steps, self.every, self.device = steps, every, device
        self.samples: list[dict[str, float]] = []
        self.batches = 0
        self.start = 0.0
        self.sampling = 0.0  # CPU seconds spent sampling, left out of the step time

    def memory_now(self) -> float:
        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.memory_allocated()
        return rss_bytes()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.process_time()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.batches += 1
        if self.batches % self.every == 0 or self.batches == self.steps:
            begin = time.process_time()
            gc.collect()
            sample = {"step": self.batches, "memory": self.memory_now(), "tensors": live_tensor_bytes()}
            self.sampling += time.process_time() - begin
            sample["cpu_seconds"] = time.process_time() - self.start - self.sampling
            self.samples.append(sample)
        if self.batches >= self.steps:
            trainer.should_stop = True


def worker(
    slug: str,
    steps: int,
    every: int,
    device: str,
    seed: int,
    config: str | None,
    skip: int = 1,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """One recipe's measurement in this process (the parent starts one process per recipe)."""
    sampler = MemorySampler(steps, every, device)
    with tempfile.TemporaryDirectory() as workdir:
        path = config or str(ROOT / "recipes" / slug / "config.yaml")
        extra = [
            "--trainer.max_epochs=100000",
            "--trainer.max_steps=-1",
            f"--trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
            *overrides,
        ]
        cli = recipe_cli(path, seed, extra, workdir=workdir)
        cli.trainer.callbacks.append(sampler)
        gc.collect()
        before = rss_bytes()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    samples = sampler.samples
    kept = samples[min(skip, max(0, len(samples) - 2)) :]
    xs = [s["step"] for s in kept]
    result = {
        "recipe": slug,
        "overrides": list(overrides),
        "device": device,
        "steps": sampler.batches,
        "rss_before_fit": before,
        "peak": torch.cuda.max_memory_allocated() if device == "cuda" else peak_rss_bytes(),
        "samples": samples,
        "memory_slope_mb": slope_per_1000(xs, [s["memory"] / MB for s in kept]),
        "tensor_slope_mb": slope_per_1000(xs, [s["tensors"] / MB for s in kept]),
        "cpu_ms_per_step": 1000 * samples[-1]["cpu_seconds"] / max(1, samples[-1]["step"])
        if samples
        else float("nan"),
    }
    return result


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="--steps 100 --every 10")
    parser.add_argument(
        "--recipes",
        nargs="+",
        default=list(DEFAULT_RECIPES),
        help="recipe slugs (recipes/<slug>/config.yaml)",
    )
    parser.add_argument("--steps", type=int, default=1000, help="training batches per recipe (default 1000)")
    parser.add_argument("--every", type=int, default=100, help="sample memory every N batches (default 100)")
    parser.add_argument("--skip", type=int, default=1, help="samples left out of the slope (default 1)")
    parser.add_argument(
        "--tolerance", type=float, default=8.0, help="RSS slope called flat, MB per 1000 steps (default 8)"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--jobs", type=int, default=1, help="recipes measured at the same time, one process each (default 1)"
    )
    parser.add_argument(
        "--toy-size", action="store_true", help="the configs as they are (no smaller settings for slidr)"
    )
    parser.add_argument("--worker", help=argparse_suppress())
    parser.add_argument("--config", help="a config file instead of recipes/<slug>/config.yaml (one recipe)")
    parser.add_argument("--json", help=argparse_suppress())
    return parser


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


def verdict(result: dict[str, Any], tolerance: float) -> str:
    flat = abs(result["tensor_slope_mb"]) < 0.1 and abs(result["memory_slope_mb"]) < tolerance
    return "flat" if flat else "**grows**"


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().start(argv, all_warnings=True)
    seed = args.seeds[0]  # one run per recipe: the first seed
    if args.quick:
        args.steps, args.every = 100, 10
    if args.worker:
        overrides = () if args.toy_size else SMALL.get(args.worker, ())
        result = worker(
            args.worker, args.steps, args.every, args.device, seed, args.config, args.skip, overrides
        )
        Path(args.json).write_text(json.dumps(result))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return
    start = time.perf_counter()
    loads, results = [_load_line()], []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or 1)}
    with tempfile.TemporaryDirectory() as tmp:
        running = []
        for slug in args.recipes:  # one process per recipe, at most --jobs at a time
            out = Path(tmp) / f"{slug}.json"
            command = [sys.executable, str(Path(__file__).resolve()), "--worker", slug, "--json", str(out),
                       "--steps", str(args.steps), "--every", str(args.every), "--device", args.device,
                       "--seeds", str(seed), "--skip", str(args.skip), *(["--toy-size"] if args.toy_size else []),
                       *(["--threads", str(args.threads)] if args.threads else []),
                       *(["--config", args.config] if args.config else [])]  # fmt: skip
            running.append((slug, out, subprocess.Popen(command, env=env, cwd=ROOT)))
            if sum(p.poll() is None for _, _, p in running) >= args.jobs:
                running[-args.jobs][2].wait()
        for slug, out, process in running:
            if process.wait() != 0:
                raise RuntimeError(f"the memory run of {slug} failed (exit {process.returncode})")
            results.append(json.loads(out.read_text()))
            loads.append(_load_line())
            print(_row(results[-1], args.tolerance), flush=True)
    unit = "CUDA allocated" if args.device == "cuda" else "RSS"
    rows = [_row(r, args.tolerance) for r in results]
    table = markdown_table(
        ["recipe", "steps", "CPU ms/step", f"{unit} before fit (MB)", f"peak {unit} (MB)",
         f"{unit} at samples (MB)", f"{unit} slope (MB/1000 steps)", "live tensors (MB)",
         "tensor slope (MB/1000 steps)", "growth"],
        rows, align="lrrrrlrrrl",
    )  # fmt: skip
    what = (
        "CUDA: `torch.cuda.max_memory_allocated` / `memory_allocated`"
        if args.device == "cuda"
        else "CPU: process RSS (psutil; torch's CPU allocator included), peak = `ru_maxrss` of the recipe's own process"
    )
    body = "\n\n".join([
        generated_header("benchmarks/memory.py", args.command, time.perf_counter() - start),
        f"{machine_line(args.device)} Load average (1 min) during the run: {', '.join(loads)}. {what}; "
        f"samples every {args.every} batches, the slope over the samples after the first {args.skip}; "
        f"seed {seed}.",
        table,
    ])  # fmt: skip
    out = results_dir(args)
    (out / "memory.md").write_text("# Memory per recipe\n\n" + body + "\n")
    (out / "memory.json").write_text(json.dumps(results, indent=1))
    if not args.quick and not args.no_readme:
        write_block(DOC, body, key=f"memory_{args.device}")
    print(f"wrote {out / 'memory.md'}")


def _row(r: dict[str, Any], tolerance: float) -> list[str]:
    samples = r["samples"]
    trace = " → ".join(f"{s['memory'] / MB:.0f}" for s in samples[:: max(1, len(samples) // 5)])
    return [
        f"`{r['recipe']}`"
        + (f" ({', '.join(o.split('init_args.')[-1] for o in r['overrides'])})" if r["overrides"] else ""),
        str(r["steps"]),
        f"{r['cpu_ms_per_step']:.1f}",
        f"{r['rss_before_fit'] / MB:.0f}" if r["device"] == "cpu" else "-",
        f"{r['peak'] / MB:.0f}",
        trace,
        f"{r['memory_slope_mb']:+.2f}",
        f"{samples[-1]['tensors'] / MB:.1f}" if samples else "-",
        f"{r['tensor_slope_mb']:+.3f}",
        verdict(r, tolerance),
    ]


def _load_line() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
