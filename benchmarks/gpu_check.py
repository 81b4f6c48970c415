"""One-shot GPU check: recipes in bf16-mixed and 16-mixed on CUDA, spconv's GPU path, EMATeacher, DDP.

Run once on a machine with a CUDA GPU (a whole run is sized for < 10 minutes on one GPU; a time
budget, ``--budget-s``, skips what is left once it is spent). Checks, each one row of the table:

- **recipe fits**: for each recipe config in ``--recipes`` (``kd``; ``dmd2_unet``, DMD2 with a
  diffusers ``UNet2DModel`` on digits; ``swiftbrush``, with ``EMATeacher`` in its config;
  ``datadam``; ``slidr`` and ``lima``, spconv sparse UNets), a short ``fit`` of ``--steps`` batches
  per precision in ``--precisions`` (default ``bf16-mixed``, ``16-mixed``) on the device, and one in
  fp32 on the CPU (``--cpu-steps`` batches) for the speed-up. Row: median step time after the
  warm-up (CUDA synchronised), peak memory (``torch.cuda.max_memory_allocated``; CPU: peak RSS of
  the process so far), whether every ``train/*`` value logged was finite, ``ok`` or the error.
- **spconv GPU path**: a ``SparseUNet`` forward and backward on a ``SparseConvTensor`` on the
  device (finite features and gradients); fails with the hint to install ``spconv-cu1xx`` when
  the installed spconv has no CUDA kernels.
- **EMATeacher**: a small module trained with ``EMATeacher`` under ``bf16-mixed``: the EMA copy
  lives on the device, stays fp32, equals the average recomputed from the student's weights.
- **DDP** over all visible GPUs (``kd``, ``--trainer.strategy=ddp``), skipped with one GPU.

Without CUDA (and ``--device cuda``, the default) it prints ``no CUDA device: skipped`` and exits
0. ``--device cpu --tiny`` runs the same checks on the CPU at tiny sizes (random small teachers,
tiny data; ``16-mixed`` on a CPU is fp16 autocast, slow but supported): that is how
``tests/benchmarks/test_gpu_check.py`` tests this script. Writes ``benchmarks/results/gpu_check.json``
and ``gpu_check.md``, and (full runs on CUDA) the table into ``docs/strategies.md``.

Needs a CUDA build of torch and, for the spconv rows, ``spconv-cu120`` (or the wheel for your CUDA)
instead of the CPU ``spconv``; ``--install`` pip-installs ``spconv-cu120`` first when spconv has no
CUDA kernels (needs network). Usage (from the repository root)::

    python benchmarks/gpu_check.py                        # on the GPU machine, one call
    python benchmarks/gpu_check.py --device cpu --tiny --seeds 0 --no-readme   # the CPU rehearsal
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
import yaml
from _harness import ROOT, bench_parser, recipe_cli, results_dir
from _report import generated_header, machine_line, markdown_table, write_block
from overhead import LossRecorder, StepClock, datadam_config, dmd2_config, kd_config
from torch import nn

DOC = ROOT / "docs" / "strategies.md"
RECIPES = ("kd", "dmd2_unet", "swiftbrush", "datadam", "slidr", "lima")
MB = 2**20


# ----------------------------------------------------------------------------- configs
def _load(slug: str, name: str = "config.yaml") -> dict[str, Any]:
    return yaml.safe_load((ROOT / "recipes" / slug / name).read_text())


def _lidar_tiny(config: dict[str, Any]) -> dict[str, Any]:
    init, data = config["model"]["init_args"], config["data"]["init_args"]
    init["student"]["init_args"]["widths"] = [4, 8]
    init["teacher"]["init_args"]["widths"] = [8, 8]
    init.update(num_matches=128, feature_dim=8)
    init.pop("lr_scheduler", None)
    data.update(
        num_scenes=2,
        val_scenes=1,
        test_scenes=1,
        beams=8,
        azimuth_steps=96,
        image_size=[32, 64],
        batch_size=1,
    )
    return config


def recipe_config(name: str, tiny: bool) -> dict[str, Any]:
    """The config of a recipe check: the recipe's own (``tiny``: shrunk so a CPU runs it in seconds)."""
    if name == "kd":
        return kd_config("tiny") if tiny else _without_callbacks(_load("kd"))
    if name == "dmd2_unet":
        config = _without_callbacks(_load("dmd2", "digits.yaml"))
        if tiny:
            config["model"]["init_args"]["teacher"]["init_args"]["steps"] = 2
            config["data"]["init_args"]["batch_size"] = 8
        return config
    if name == "dmd2":
        return dmd2_config("tiny" if tiny else "toy")
    if name == "swiftbrush":
        config = _load("swiftbrush")
        config["trainer"]["callbacks"] = [
            c for c in config["trainer"]["callbacks"] if "EMATeacher" in c["class_path"]
        ]
        return config
    if name == "datadam":
        return datadam_config("tiny" if tiny else "toy")
    if name in ("slidr", "lima"):
        config = _load(name)
        return _lidar_tiny(config) if tiny else config
    raise ValueError(f"unknown recipe check {name!r}; choose from {RECIPES} or dmd2.")


def _without_callbacks(config: dict[str, Any]) -> dict[str, Any]:
    config["trainer"].pop("callbacks", None)
    return config


# ----------------------------------------------------------------------------- measuring a fit
class SyncClock(StepClock):
    """:class:`StepClock` that waits for the GPU before each stamp."""

    def stamp(self) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        super().stamp()


class StopAfter(L.Callback):
    def __init__(self, batches: int) -> None:
        self.batches, self.seen = batches, 0

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.seen += 1
        if self.seen >= self.batches:
            trainer.should_stop = True


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / MB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fit_row(
    name: str, tiny: bool, device: str, precision: str, steps: int, warmup: int, seed: int
) -> dict[str, Any]:
    """A short fit of a recipe check; the table row (status ``ok``, ``FAIL: ...`` or ``refused: ...``)."""
    row = {"check": "fit", "recipe": name, "device": device, "precision": precision, "steps": steps}
    extra = [
        f"--trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
        "--trainer.devices=1",
        f"--trainer.precision={precision}",
        "--trainer.max_epochs=100000",
        "--trainer.max_steps=-1",
    ]
    try:
        with tempfile.TemporaryDirectory() as workdir:
            cli = recipe_cli(recipe_config(name, tiny), seed, extra, workdir=workdir)
            recorder, clock = LossRecorder(cli.model), SyncClock()
            cli.trainer.callbacks.extend([recorder, clock, StopAfter(warmup + steps)])
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    except Exception as error:  # noqa: BLE001 - a check reports its failure and the run goes on
        message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
        refused = device == "cpu" and precision == "16-mixed" and "16" in message
        row.update(status=("refused: " if refused else "FAIL: ") + message)
        if not refused:
            row["traceback"] = traceback.format_exc()[-2000:]
        return row
    values = [v for step in recorder.steps for v in step.values()]
    wall, _ = clock.step_times(min(warmup, max(0, len(clock.wall) - 2)))
    finite = bool(values) and all(math.isfinite(v) for v in values)
    row.update(
        ms_per_step=1000 * wall,
        peak_mb=peak_memory_mb(device),
        finite=finite,
        losses=len(values),
        status="ok" if finite else "FAIL: non-finite or no train/* values",
    )
    return row


# ----------------------------------------------------------------------------- standalone checks
def spconv_row(device: str, tiny: bool) -> dict[str, Any]:
    """SparseUNet forward + backward on the device (spconv's CUDA kernels on a GPU)."""
    row: dict[str, Any] = {"check": "spconv SparseUNet", "recipe": "-", "device": device, "precision": "32"}
    try:
        from lightning_distill.lidar import SparseUNet
        from lightning_distill.lidar.networks import sparse_point_features

        generator = torch.Generator().manual_seed(0)
        n = 2_000 if tiny else 200_000
        points = torch.cat(
            [
                torch.randint(0, 2, (n, 1), generator=generator).float(),
                40 * torch.rand(n, 3, generator=generator) - 20,
            ],
            dim=1,
        ).to(device)
        net = SparseUNet(in_channels=1, widths=[8, 16] if tiny else [32, 64, 128, 256]).to(device)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            features = sparse_point_features(net, points, voxel_size=0.2)
            features.square().mean().backward()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        ok = (
            bool(torch.isfinite(features).all())
            and bool(grads)
            and all(bool(torch.isfinite(g).all()) for g in grads)
        )
        on_device = features.device.type == device
        row.update(
            ms_per_step=1000 * statistics.median(times[1:]),
            peak_mb=peak_memory_mb(device),
            finite=ok,
            status="ok" if ok and on_device else f"FAIL: finite={ok}, features on {features.device}",
            steps=len(times),
        )
    except Exception as error:  # noqa: BLE001
        hint = " (spconv without CUDA kernels? `pip install spconv-cu120`)" if device == "cuda" else ""
        row.update(
            status=f"FAIL: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
            + hint
        )
    return row


class _MeanTeacher(L.LightningModule):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.student = nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, 4))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self.student(x)
        with torch.no_grad():
            target = self.ema_student(x).softmax(-1)
        return nn.functional.cross_entropy(logits, y) + (logits.softmax(-1) - target.float()).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.student.parameters(), lr=0.1)


class _Snapshots(L.Callback):
    """The student's weights after every optimizer step (fp64 on the CPU), to recompute the EMA."""

    def __init__(self) -> None:
        self.weights: list[list[torch.Tensor]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        self.weights.append([p.detach().double().cpu() for p in pl_module.student.parameters()])


def ema_row(device: str, tiny: bool, steps: int) -> dict[str, Any]:
    """EMATeacher under bf16-mixed on the device: fp32 copy on the device, equal to the recomputed EMA."""
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_distill.callbacks import EMATeacher

    row: dict[str, Any] = {
        "check": "EMATeacher",
        "recipe": "-",
        "device": device,
        "precision": "bf16-mixed",
        "steps": steps,
    }
    try:
        L.seed_everything(0, verbose=False)
        decay = 0.9
        module = _MeanTeacher(64 if tiny else 4096)
        initial = [p.detach().double().cpu() for p in module.student.parameters()]
        data = TensorDataset(torch.randn(steps * 8, 16), torch.randint(0, 4, (steps * 8,)))
        snapshots = _Snapshots()  # runs after EMATeacher (callbacks run in list order)
        trainer = L.Trainer(
            accelerator="gpu" if device == "cuda" else "cpu", devices=1, precision="bf16-mixed", max_steps=steps,
            callbacks=[EMATeacher(decay=decay), snapshots], logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False,
        )  # fmt: skip
        start = time.perf_counter()
        trainer.fit(module, DataLoader(data, batch_size=8))
        seconds = time.perf_counter() - start
        expected = initial
        for weights in snapshots.weights:
            expected = [decay * e + (1 - decay) * w for e, w in zip(expected, weights)]
        ema = list(module.ema_student.parameters())
        worst = max(float((p.detach().double().cpu() - e).abs().max()) for p, e in zip(ema, expected))
        where = {p.device.type for p in ema}
        dtypes = {p.dtype for p in ema}
        ok = worst < 1e-5 and where == {device} and dtypes == {torch.float32}
        row.update(
            ms_per_step=1000 * seconds / steps,
            peak_mb=peak_memory_mb(device),
            finite=all(bool(torch.isfinite(p).all()) for p in ema),
            status="ok" if ok else f"FAIL: max |EMA - recomputed| {worst:.1e}, on {where}, dtypes {dtypes}",
            detail=f"max |EMA - recomputed| {worst:.1e}",
        )
    except Exception as error:  # noqa: BLE001
        row.update(status=f"FAIL: {type(error).__name__}: {error}"[:300])
    return row


def ddp_row(steps: int, seed: int) -> dict[str, Any]:
    """kd under DDP over every visible GPU, in a child process (``lightning-distill fit``)."""
    gpus = torch.cuda.device_count()
    row: dict[str, Any] = {
        "check": "DDP",
        "recipe": "kd",
        "device": "cuda",
        "precision": "bf16-mixed",
        "steps": steps,
    }
    if gpus < 2:
        return {**row, "status": f"skipped: {gpus} GPU visible (DDP needs 2 or more)"}
    with tempfile.TemporaryDirectory() as workdir:
        command = [
            sys.executable, "-m", "lightning_distill.cli", "fit", f"--config={ROOT / 'recipes/kd/config.yaml'}",
            "--trainer.accelerator=gpu", f"--trainer.devices={gpus}", "--trainer.strategy=ddp",
            "--trainer.precision=bf16-mixed", f"--trainer.max_steps={steps}", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=0", "--test_after_fit=false",
            f"--trainer.default_root_dir={workdir}", f"--seed_everything={seed}",
        ]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    status = (
        "ok"
        if done.returncode == 0
        else f"FAIL: exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"
    )
    return {
        **row,
        "status": status,
        "ms_per_step": 1000 * (time.perf_counter() - start) / steps,
        "detail": f"{gpus} GPUs, wall incl. start",
    }


def spconv_has_cuda() -> bool:
    try:
        import spconv.pytorch  # noqa: F401
        from spconv.cppconstants import CPU_ONLY_BUILD

        return not CPU_ONLY_BUILD
    except Exception:  # noqa: BLE001
        return False


# ----------------------------------------------------------------------------- script
def build_parser():
    parser = bench_parser(__file__, __doc__)
    parser.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda", help="where the checks run (default cuda)"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (random small teachers, tiny data)")
    parser.add_argument(
        "--recipes",
        nargs="+",
        default=list(RECIPES),
        help=f"recipe checks (default {' '.join(RECIPES)}; also dmd2)",
    )
    parser.add_argument(
        "--precisions", nargs="+", default=["bf16-mixed", "16-mixed"], help="precisions of the device fits"
    )
    parser.add_argument("--steps", type=int, default=200, help="timed batches per device fit (default 200)")
    parser.add_argument("--warmup", type=int, default=10, help="batches before timing (default 10)")
    parser.add_argument(
        "--cpu-steps", type=int, default=5, help="timed batches of the CPU fp32 fit (default 5; 0: none)"
    )
    parser.add_argument(
        "--budget-s", type=float, default=540.0, help="skip the remaining checks after this many seconds"
    )
    parser.add_argument(
        "--install", action="store_true", help="pip install spconv-cu120 when spconv has no CUDA kernels"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="folder of gpu_check.json/.md (default benchmarks/results)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().start(argv, all_warnings=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return 0
    warnings.filterwarnings("ignore")
    if args.device == "cuda" and args.install and not spconv_has_cuda():
        subprocess.run([sys.executable, "-m", "pip", "install", "spconv-cu120"], check=False)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []

    def run(make: Callable[[], dict[str, Any]], what: dict[str, Any]) -> None:
        if time.perf_counter() - start > args.budget_s:
            rows.append({**what, "status": f"skipped: time budget {args.budget_s:.0f} s spent"})
        else:
            rows.append(make())
        print(_line(rows[-1]), flush=True)

    device, seeds = args.device, args.seeds
    for name in args.recipes:
        for precision in args.precisions:
            for seed in seeds:
                what = {"check": "fit", "recipe": name, "device": device, "precision": precision}
                run(partial(fit_row, name, args.tiny, device, precision, args.steps, args.warmup, seed), what)
        if args.cpu_steps > 0:
            what = {"check": "fit", "recipe": name, "device": "cpu", "precision": "32-true"}
            run(partial(fit_row, name, args.tiny, "cpu", "32-true", args.cpu_steps, 2, seeds[0]), what)
    run(lambda: spconv_row(device, args.tiny), {"check": "spconv SparseUNet", "device": device})
    run(
        lambda: ema_row(device, args.tiny, 20 if args.tiny else 200),
        {"check": "EMATeacher", "device": device},
    )
    if device == "cuda":
        run(lambda: ddp_row(50, seeds[0]), {"check": "DDP", "recipe": "kd", "device": device})
    seconds = time.perf_counter() - start
    table = markdown_table(
        ["check", "recipe", "device", "precision", "ms/step", "vs CPU fp32", "peak MB", "finite", "status"],
        _table_rows(rows),
        align="lllllrrll",
    )
    body = "\n\n".join([
        generated_header("benchmarks/gpu_check.py", args.command, seconds),
        f"{machine_line(device)} Seeds {' '.join(map(str, seeds))}; device fits: median step time after "
        f"{args.warmup} warm-up batches of {args.steps} timed ones (CUDA synchronised); CPU fp32 fits: "
        f"{args.cpu_steps} timed batches on {torch.get_num_threads()} thread(s); peak memory: "
        f"{'torch.cuda.max_memory_allocated' if device == 'cuda' else 'process peak RSS so far'}.",
        table,
    ])  # fmt: skip
    print("\n" + table)
    out = args.out or results_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(
        json.dumps({"command": args.command, "seconds": seconds, "rows": rows}, indent=1)
    )
    (out / "gpu_check.md").write_text("# GPU check\n\n" + body + "\n")
    if device == "cuda" and not args.tiny and not args.no_readme:
        write_block(DOC, body, key="gpu_check")
    failed = [r for r in rows if str(r.get("status", "")).startswith("FAIL")]
    print(f"{len(rows)} checks, {len(failed)} failed, {seconds:.0f} s; wrote {out / 'gpu_check.json'}")
    return 1 if failed else 0


def _line(row: dict[str, Any]) -> str:
    ms = f"{row['ms_per_step']:.2f} ms/step" if "ms_per_step" in row else ""
    return f"{row.get('check')} {row.get('recipe', '-')} {row.get('device')} {row.get('precision', '')}: {row.get('status')} {ms}"


def _table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    cpu = {r["recipe"]: r["ms_per_step"] for r in rows if r.get("check") == "fit" and r.get("device") == "cpu"
           and r.get("precision") == "32-true" and "ms_per_step" in r}  # fmt: skip
    grouped: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        grouped.setdefault(
            (r.get("check"), r.get("recipe", "-"), r.get("device"), r.get("precision", "-")), []
        ).append(r)
    table = []
    for (check, recipe, device, precision), group in grouped.items():
        times = [r["ms_per_step"] for r in group if "ms_per_step" in r]
        ms = statistics.median(times) if times else None
        vs = (
            f"{cpu[recipe] / ms:.1f}x"
            if ms and recipe in cpu and not (device == "cpu" and precision == "32-true")
            else "-"
        )
        peaks = [r["peak_mb"] for r in group if "peak_mb" in r]
        finite = {r.get("finite") for r in group if "finite" in r}
        statuses = sorted({str(r.get("status")) for r in group})
        table.append([
            check, f"`{recipe}`" if recipe != "-" else "-", device, precision,
            f"{ms:.2f}" if ms is not None else "-", vs, f"{max(peaks):.0f}" if peaks else "-",
            ("yes" if finite == {True} else "**no**") if finite else "-",
            ("; ".join(statuses) + (f" ({group[0]['detail']})" if group[0].get("detail") else "")).replace("|", "\\|"),
        ])  # fmt: skip
    return table


if __name__ == "__main__":
    sys.exit(main())
