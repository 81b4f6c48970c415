"""Every registered recipe under DDP, bf16-mixed and FSDP2 on CPU, checked, and the table in docs/strategies.md.

    python tools/strategy_matrix.py                      # the full matrix (make matrix), rewrites the docs table
    python tools/strategy_matrix.py --recipes kd dmd2 --modes ddp bf16 --no-docs

For each recipe in ``lightning_distill.recipes.RECIPES`` (new recipes are picked up from the
registry and their ``recipes/<slug>/config.yaml``) the script runs a short ``lightning-distill fit``
in a subprocess with a timeout (hangs are bounded) and the probe ``tests/strategies/worker.py``:

* ``single``: the reference, one process, fp32.
* ``ddp``: 2 CPU processes (gloo), two runs. (1) The *same* batches on both ranks
  (``use_distributed_sampler=false``) and ``self.global_rank`` reading 0 inside the recipe (so the
  recipes that seed their noise by rank draw the same noise on both ranks): DDP averages two equal
  gradients, ``(g/2 + g/2) = g`` exactly in floating point, and the forward is the same arithmetic on
  the same tensors, so every logged ``train/*`` value of both ranks and the final state must equal
  the single-process run; the tolerance is tight (``rtol=1e-5, atol=1e-6``; met bitwise so far).
  (2) *Different* batches per rank (Lightning's ``DistributedSampler``, rank-seeded noise): a part
  whose gradient is not all-reduced makes the ranks drift, so the whole state (student, fake score,
  discriminator, EMA copies, synthetic images, teachers and frozen parts; BN running statistics of
  modules in train mode excepted, rank-local as DDP intends) and the callbacks' tensor states must be
  bitwise identical on both ranks; the checkpoint files must be the reference's (rank 0 writes them
  once) and the last must load into a single process (``Recipe.load_from_checkpoint``) with the
  final weights.
* ``bf16``: one process, ``precision=bf16-mixed``. Checked: every loss term finite, every
  floating tensor of the module and of the callbacks' states keeps the reference's dtype (fp32
  masters, EMA copies, BN statistics, synthetic images), and the first step's loss terms are within
  bf16 rounding of the reference's (reported, not failed: a term near zero has no relative meaning).
* ``fsdp2``: 2 processes under ``ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)``
  for the families where sharding makes sense (diffusion, dataset). A recipe that does not shard
  must refuse at setup with the error of ``DistillationModule.configure_model`` (cell: refused
  with its reason); one that shards gets the checks of DDP run (1) and the checkpoint checks.

Rank 1's output and the subprocess logs stay under ``--work`` for inspection.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))
DOC = ROOT / "docs" / "strategies.md"
PROBE = "tests.strategies.worker.MatrixProbe"
MODES = ("ddp", "bf16", "fsdp2")
SHARDED_FAMILIES = {"diffusion", "dataset"}
REFUSAL = "cannot run under"  # the phrase DistillationModule.configure_model's error starts its reason with
RTOL, ATOL = 1e-5, 1e-6


@dataclass
class Cell:
    recipe: str
    mode: str
    status: str  # pass | refused | fail | n/a
    detail: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- running
def fit_command(slug: str, mode: str, out: Path, steps: int) -> tuple[list[str], dict[str, str]]:
    """The ``lightning-distill fit`` command line and extra environment of one run."""
    from lightning_distill.recipes import RECIPES

    config = ROOT / "recipes" / slug / RECIPES[slug].config
    cmd = [
        sys.executable,
        "-m",
        "lightning_distill.cli",
        "fit",
        "--config",
        str(config),
        "--trainer.accelerator=cpu",
        f"--trainer.max_steps={steps}",
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={out}",
        "--test_after_fit=false",
        f"--trainer.callbacks+={PROBE}",
    ]
    env = {"LD_MATRIX_OUT": str(out)}
    if mode in ("single", "bf16"):
        cmd += ["--trainer.devices=1"]
        if mode == "bf16":
            cmd += ["--trainer.precision=bf16-mixed"]
    elif mode in ("ddp", "ddp_same"):
        strategy = os.environ.get("LD_MATRIX_DDP", "ddp")  # e.g. ddp_find_unused_parameters_false, to compare
        cmd += ["--trainer.devices=2", f"--trainer.strategy={strategy}"]
        if mode == "ddp_same":
            cmd += ["--trainer.use_distributed_sampler=false"]
            env["LD_MATRIX_RANK_BLIND"] = "1"
    elif mode == "fsdp2":
        cmd += [
            "--trainer.devices=2",
            "--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy",
            "--trainer.strategy.data_parallel_size=2",
            "--trainer.strategy.tensor_parallel_size=1",
            "--trainer.strategy.save_distributed_checkpoint=false",
            "--trainer.use_distributed_sampler=false",
        ]
        env["LD_MATRIX_RANK_BLIND"] = "1"
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return cmd, env


def run_fit(
    slug: str,
    mode: str,
    work: Path,
    steps: int,
    timeout: float,
    *,
    extra: list[str] | tuple[str, ...] = (),
    name: str | None = None,
) -> tuple[int | None, str, float, Path]:
    """Run one fit (``extra``: more CLI arguments, in folder ``name``, default ``mode``); returns
    (exit code or None on timeout, log tail, seconds, output folder)."""
    out = work / slug / (name or mode)
    if os.environ.get("LD_MATRIX_REUSE") == "1" and (out / "log.txt").exists():  # recheck a finished run
        log = (out / "log.txt").read_text(errors="replace")[-6000:]
        if (out / "rank0.pt").exists():
            return 0, log, 0.0, out
        if REFUSAL in log:
            return 1, log, 0.0, out
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    cmd, extra_env = fit_command(slug, mode, out, steps)
    cmd += list(extra)
    env = {
        **os.environ,
        **extra_env,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "WANDB_MODE": "offline",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    start = time.monotonic()
    log = out / "log.txt"
    with open(log, "w") as fh:
        # A new session, so that a timeout kills rank 1 (started by rank 0) with it.
        proc = subprocess.Popen(
            cmd, cwd=out, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            import signal

            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    return rc, log.read_text(errors="replace")[-6000:], time.monotonic() - start, out


# --------------------------------------------------------------------------- checks
def _load(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def _max_diff(a, b) -> float:
    import torch

    if a.shape != b.shape:
        return math.inf
    if not a.is_floating_point():
        return 0.0 if torch.equal(a, b) else math.inf
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _close(a, b) -> bool:
    import torch

    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.is_floating_point():
        return bool(torch.equal(a, b))
    return bool(torch.allclose(a.double(), b.double(), rtol=RTOL, atol=ATOL))


def _tensors(tree, prefix: str = "") -> dict:
    """Flatten the tensors of a nested dict/list into ``{path: tensor}``."""
    import torch

    found = {}
    if isinstance(tree, torch.Tensor):
        found[prefix] = tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            found.update(_tensors(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(tree, (list, tuple)):
        for k, v in enumerate(tree):
            found.update(_tensors(v, f"{prefix}[{k}]"))
    return found


def _failure(rc: int | None, log: str, timeout: float) -> str:
    """The error a failed run ended with: the CLI's ``error:`` message, else the last exception line."""
    if rc is None:
        return f"timed out after {timeout:.0f} s"
    lines = [
        ln.strip() for ln in log.strip().splitlines() if ln.strip() and not ln.strip().startswith("hint:")
    ]
    for k in range(len(lines) - 1, -1, -1):
        if lines[k].startswith("error:"):
            return " ".join(lines[k : k + 3])[:400]
    found = [ln for ln in lines if re.match(r"^(\[rank\d\]: )?[A-Za-z_.]*(Error|Exception)\b", ln)]
    return (found[-1] if found else lines[-1] if lines else f"exit {rc}")[:400]


def compare_steps(reference: list[dict], other: list[dict]) -> tuple[bool, float, str]:
    """Whether two runs logged the same ``train/*`` values step for step (max abs difference)."""
    if len(reference) != len(other):
        return False, math.inf, f"{len(other)} logged steps, reference {len(reference)}"
    worst = 0.0
    for k, (a, b) in enumerate(zip(reference, other)):
        if set(a) != set(b):
            return False, math.inf, f"step {k} logged {sorted(b)}, reference {sorted(a)}"
        for name in a:
            diff = abs(a[name] - b[name])
            worst = max(worst, diff)
            if not diff <= ATOL + RTOL * abs(a[name]):
                return False, diff, f"step {k} {name}: {b[name]!r} vs reference {a[name]!r}"
    return True, worst, ""


_BN_STATS = ("running_mean", "running_var")


def check_ranks(r0: dict, r1: dict, *, same_data: bool) -> tuple[list[str], list[str]]:
    """Rank 0 and rank 1 hold the same module state (teachers, frozen parts, EMA copies, fake scores,
    discriminators, synthetic images) and callback tensors, bitwise. With different data per rank,
    BN statistics of modules in train mode differ as DDP intends (rank 0's are broadcast at each
    forward and checkpointed)."""
    fails, notes = [], []
    differ = [
        k for k in r0["state"] if k not in r1["state"] or _max_diff(r0["state"][k], r1["state"][k]) != 0.0
    ]
    bn = [k for k in differ if k.endswith(_BN_STATS)] if not same_data else []
    differ = [k for k in differ if k not in bn]
    if differ:
        frozen = [k for k in differ if any(k.startswith(f + ".") for f in r0["frozen"] if f)]
        fails.append(
            f"state differs across ranks: {differ[:4]}" + (f" (frozen: {frozen[:2]})" if frozen else "")
        )
    if bn:
        notes.append(f"{len(bn)} BN statistics rank-local")
    cb0, cb1 = _tensors(r0["callbacks"]), _tensors(r1["callbacks"])
    cb_differ = [k for k in cb0 if k not in cb1 or _max_diff(cb0[k], cb1[k]) != 0.0]
    if cb_differ:
        fails.append(f"callback state differs across ranks: {cb_differ[:4]}")
    bad = [
        f"{k}={v}" for r in (r0, r1) for step in r["steps"] for k, v in step.items() if not math.isfinite(v)
    ]
    if bad:
        fails.append(f"non-finite loss terms: {bad[:3]}")
    return fails, notes


def _no_steps(ref: dict, fails: list[str], notes: list[str]) -> None:
    """No ``train/*`` value: a failure, unless the recipe's fit takes no optimizer step (Mirage mines)."""
    if ref["global_step"] == 0:
        notes.append("no optimizer step in fit")
    else:
        fails.append("no train/* value was logged")


def check_reference(ref: dict, ranks: list[dict], skip: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """Same data on both ranks: every logged value and the final state equal the single-process run's.

    State under a prefix in ``skip`` (the recipe's ``global_batch_state``: a queue of every rank's samples,
    which holds each sample twice when both ranks see the same data) is left out of the comparison.
    """
    fails, notes = [], []
    if not ref["steps"]:
        _no_steps(ref, fails, notes)
    for r, rank in enumerate(ranks):
        ok, _, why = compare_steps(ref["steps"], rank["steps"])
        if not ok:
            fails.append(f"rank {r} losses differ from one process: {why}")
    worst, bad = 0.0, []
    for k, v in ref["state"].items():
        if any(k == p or k.startswith(p + ".") for p in skip):
            continue
        if k not in ranks[0]["state"]:
            bad.append(f"{k} missing")
            continue
        worst = max(worst, _max_diff(v, ranks[0]["state"][k]))
        if not _close(v, ranks[0]["state"][k]):
            bad.append(k)
    if bad:
        fails.append(f"final state differs from one process (max |diff| {worst:.2e}): {bad[:4]}")
    else:
        notes.append(f"= one process (max |diff| {worst:.0e})")
    if ranks[0]["global_step"] != ref["global_step"]:
        fails.append(f"global_step {ranks[0]['global_step']} vs one process {ref['global_step']}")
    if ranks[0]["rank_reads"]:
        notes.append("rank-seeded noise")
    return fails, notes


def check_checkpoints(slug: str, r0: dict, out: Path, ref_out: Path) -> list[str]:
    """The reference's checkpoint files (rank 0 writes them once), and the last loads in one process."""
    ckpts = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.ckpt"))
    ref_ckpts = sorted(p.relative_to(ref_out).as_posix() for p in ref_out.rglob("*.ckpt"))
    if ckpts != ref_ckpts:
        return [f"checkpoint files {ckpts}, one process wrote {ref_ckpts}"]
    if not ckpts:
        return ["no checkpoint written"]
    last = [c for c in ckpts if c.endswith("last.ckpt")] or ckpts[-1:]
    return check_checkpoint(slug, out / last[0], r0)


def check_checkpoint(slug: str, path: Path, final: dict) -> list[str]:
    """Load ``path`` into a single process with the recipe's ``load_from_checkpoint`` and compare weights."""
    import torch

    from lightning_distill.recipes import load_recipe

    try:
        torch.set_num_threads(1)
        module = load_recipe(slug).load_from_checkpoint(path, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - reported in the table
        return [f"checkpoint does not load in one process: {type(err).__name__}: {str(err)[:200]}"]
    loaded = module.state_dict()
    # Compare what the checkpoint holds; teachers and scratch networks re-drawn from a seed are left
    # out on purpose (the recipe's on_save_checkpoint) and rebuilt on load.
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    saved = checkpoint.get("state_dict", {})
    # Lightning's WeightAveraging (vl2v) saves the averaged weights as ``state_dict`` (what loads)
    # and the live ones as ``current_model_state`` (what a resumed fit continues from): the live
    # weights must be the final ones, and the module must load the averaged ones.
    live = checkpoint.get("current_model_state")
    reference = live if live is not None else loaded
    bad = [
        k
        for k in saved
        if k in final["state"] and k in reference and _max_diff(final["state"][k], reference[k].cpu()) != 0.0
    ]
    missing = [k for k in saved if k not in loaded]
    fails = []
    if bad:
        what = "the live weights beside the average" if live is not None else "checkpoint weights"
        fails.append(f"{what} differ from the final weights: {bad[:4]}")
    if live is not None:
        unloaded = [k for k in saved if k in loaded and _max_diff(saved[k], loaded[k].cpu()) != 0.0]
        if unloaded:
            fails.append(f"the averaged weights of the checkpoint do not load: {unloaded[:4]}")
    if missing:
        fails.append(f"the loaded module lacks {missing[:4]}")
    trainable = [k for k in final["trainable"] if k not in saved]
    if trainable:
        fails.append(f"checkpoint lacks trainable parameters {trainable[:4]}")
    return fails


def check_resume(slug: str, work: Path, steps: int, timeout: float) -> list[str]:
    """FSDP2's distributed checkpoint resumes as one process does.

    ``steps`` steps under FSDP2 saving a sharded checkpoint (a folder of per-rank files, Lightning's
    ``save_distributed_checkpoint=True``), then a second FSDP2 fit resumed from it to ``2 * steps``;
    the same two fits in one process from a plain checkpoint. The resumed runs must log the same
    values and end with the same state (``RTOL``/``ATOL``), the FSDP2 ranks agree bitwise, and the
    folder made one file (:func:`~lightning_distill.utils.sharding.consolidate`) loads in one process
    with the weights of the first fit.
    """
    fails: list[str] = []
    finals = {}
    for mode, save in (("single", []), ("fsdp2", ["--trainer.strategy.save_distributed_checkpoint=true"])):
        rc, log, _, out = run_fit(slug, mode, work, steps, timeout, extra=save, name=f"{mode}_first")
        if rc != 0:
            return [f"{mode} first fit: {_failure(rc, log, timeout)}"]
        ckpts = sorted(out.rglob("*.ckpt"))
        if len(ckpts) != 1:
            return [f"{mode} first fit wrote {[c.name for c in ckpts]}, expected one checkpoint"]
        if mode == "fsdp2" and not ckpts[0].is_dir():
            fails.append(
                f"the FSDP2 checkpoint {ckpts[0].name} is not a sharded (distributed) checkpoint folder"
            )
        rc, log, _, out = run_fit(
            slug,
            mode,
            work,
            2 * steps,
            timeout,
            extra=[*save, f"--ckpt_path={ckpts[0]}"],
            name=f"{mode}_resumed",
        )
        if rc != 0:
            return fails + [f"{mode} resumed fit: {_failure(rc, log, timeout)}"]
        finals[mode] = [_load(out / f"rank{r}.pt") for r in ((0,) if mode == "single" else (0, 1))]
        if mode == "fsdp2" and ckpts[0].is_dir():  # the folder, made one file, loads in one process
            from lightning_distill.utils.sharding import consolidate

            first = _load(ckpts[0].parents[1] / "rank0.pt")
            one = consolidate(ckpts[0], ckpts[0].parents[1] / "consolidated.ckpt")
            fails += [f"consolidated checkpoint: {x}" for x in check_checkpoint(slug, one, first)]
    ref, ranks = finals["single"][0], finals["fsdp2"]
    if ref["global_step"] != 2 * steps:
        fails.append(f"the resumed single-process fit ended at step {ref['global_step']}, not {2 * steps}")
    f, _ = check_ranks(*ranks, same_data=True)
    f2, _ = check_reference(ref, ranks)
    return fails + f + f2


def check_bf16(ref: dict, run: dict) -> tuple[list[str], list[str]]:
    fails, notes = [], []
    bad = [f"{k}={v}" for step in run["steps"] for k, v in step.items() if not math.isfinite(v)]
    if bad:
        fails.append(f"non-finite loss terms: {bad[:4]}")
    if not run["steps"]:
        _no_steps(ref, fails, notes)
    changed = [
        f"{k} {ref['state'][k].dtype}->{v.dtype}"
        for k, v in run["state"].items()
        if k in ref["state"] and v.dtype != ref["state"][k].dtype
    ]
    cb_ref, cb_run = _tensors(ref["callbacks"]), _tensors(run["callbacks"])
    changed += [
        f"callback {k} {cb_ref[k].dtype}->{v.dtype}"
        for k, v in cb_run.items()
        if k in cb_ref and v.dtype != cb_ref[k].dtype
    ]
    if changed:
        fails.append(f"state left fp32: {changed[:4]}")
    floats = {str(v.dtype) for v in run["state"].values() if v.is_floating_point()}
    notes.append(f"state dtypes {sorted(floats)}")
    if ref["steps"] and run["steps"]:
        a, b = ref["steps"][0], run["steps"][0]
        rel = max((abs(a[k] - b[k]) / max(abs(a[k]), 1e-3) for k in a if k in b), default=0.0)
        notes.append(f"step-0 loss terms within {rel:.1e} (relative) of fp32")
    return fails, notes


def run_mode(slug: str, mode: str, ref: dict, ref_out: Path, work: Path, steps: int, timeout: float) -> Cell:
    """One cell: ``ddp`` is two runs (same data on both ranks vs one process; split data, ranks and checkpoint)."""
    fails: list[str] = []
    notes: list[str] = []
    seconds = 0.0
    for run in ("ddp_same", "ddp") if mode == "ddp" else (mode,):
        rc, log, secs, out = run_fit(slug, run, work, steps, timeout)
        seconds += secs
        if rc != 0:
            if run == "fsdp2" and rc is not None and REFUSAL in log:
                reason = next(ln for ln in log.splitlines() if REFUSAL in ln)
                return Cell(
                    slug,
                    mode,
                    "refused",
                    reason.split(REFUSAL, 1)[1].split(":", 1)[-1].strip()[:400],
                    seconds,
                )
            return Cell(
                slug, mode, "fail", (f"{run}: " if run != mode else "") + _failure(rc, log, timeout), seconds
            )
        if mode == "bf16":
            f, n = check_bf16(ref, _load(out / "rank0.pt"))
        else:
            ranks = [_load(out / f"rank{r}.pt") for r in (0, 1)]
            same = run != "ddp"
            f, n = check_ranks(*ranks, same_data=same)
            if same:
                from lightning_distill.recipes import load_recipe

                skip = tuple(load_recipe(slug).global_batch_state)
                f2, n2 = check_reference(ref, ranks, skip)
                if skip:
                    n2.append(f"{', '.join(skip)} holds the global batch: left out of this comparison")
                f, n = f + f2, n + n2
            if run != "ddp_same":
                f += check_checkpoints(slug, ranks[0], out, ref_out)
        fails += [(f"{run}: " if run != mode else "") + x for x in f]
        notes += n
    return Cell(slug, mode, "fail" if fails else "pass", "; ".join(fails), seconds, notes)


def run_recipe(slug: str, modes: list[str], work: Path, steps: int, timeout: float) -> list[Cell]:
    from lightning_distill.recipes import RECIPES

    family = RECIPES[slug].family
    cells: list[Cell] = []
    rc, log, secs, ref_out = run_fit(slug, "single", work, steps, timeout)
    ref = _load(ref_out / "rank0.pt") if rc == 0 and (ref_out / "rank0.pt").exists() else None
    for mode in modes:
        if mode == "fsdp2" and family not in SHARDED_FAMILIES:
            cells.append(Cell(slug, mode, "n/a", f"{family} family: not sharded"))
            continue
        if ref is None:
            cells.append(
                Cell(
                    slug,
                    mode,
                    "fail",
                    f"the single-process reference failed: {_failure(rc, log, timeout)}",
                    secs,
                )
            )
            continue
        try:
            cells.append(run_mode(slug, mode, ref, ref_out, work, steps, timeout))
        except Exception as err:  # noqa: BLE001 - a broken probe output is a failed cell
            cells.append(Cell(slug, mode, "fail", f"probe output unreadable: {type(err).__name__}: {err}"))
    return cells


# --------------------------------------------------------------------------- docs
MARK_BEGIN, MARK_END = "<!-- matrix:begin -->", "<!-- matrix:end -->"
HEADER = {
    "ddp": "DDP, 2 CPU processes (gloo)",
    "bf16": "bf16-mixed (CPU autocast)",
    "fsdp2": "FSDP2 (ModelParallelStrategy, 2 processes)",
}


def _cell_text(cell: Cell | None, reasons: list[str]) -> str:
    if cell is None:
        return "not run"
    if cell.status == "n/a":
        return "—"
    if cell.status == "refused":
        if cell.detail not in reasons:
            reasons.append(cell.detail)
        return f"refused [{reasons.index(cell.detail) + 1}]"
    if cell.status == "fail":
        return f"**fail**: {cell.detail[:300]}".replace("|", "\\|").replace("\n", " ")
    shown = [n for n in cell.notes if n.startswith(("rank-seeded", "step-0", "no optimizer")) or "BN" in n]
    shown = [
        n.replace("step-0 loss terms within", "step 0 within").replace(" (relative) of fp32", "")
        for n in shown
    ]
    return "pass" + (f" ({'; '.join(shown)})" if shown else "")


def table(cells: list[Cell], modes: list[str]) -> str:
    by = {(c.recipe, c.mode): c for c in cells}
    recipes = list(dict.fromkeys(c.recipe for c in cells))
    reasons: list[str] = []
    lines = [
        "| recipe | family | " + " | ".join(HEADER[m] for m in modes) + " |",
        "|---" * (len(modes) + 2) + "|",
    ]
    from lightning_distill.recipes import RECIPES

    for slug in recipes:
        family = RECIPES[slug].family if slug in RECIPES else "?"
        lines.append(
            f"| `{slug}` | {family} | "
            + " | ".join(_cell_text(by.get((slug, m)), reasons) for m in modes)
            + " |"
        )
    if reasons:
        lines.append("")
        lines += [
            f"[{k}] Refused at setup by `DistillationModule.configure_model`: {reason}"
            + ("" if reason.endswith(".") else ".")
            for k, reason in enumerate(reasons, 1)
        ]
    return "\n".join(lines)


def write_docs(cells: list[Cell], modes: list[str], seconds: float, steps: int) -> None:
    import lightning
    import torch

    counts = {s: sum(c.status == s for c in cells) for s in ("pass", "refused", "fail")}
    block = "\n".join(
        [
            MARK_BEGIN,
            f"Last run: {time.strftime('%Y-%m-%d')}, `python tools/strategy_matrix.py` ({steps} optimizer steps per run), "
            f"torch {torch.__version__}, lightning {lightning.__version__}, {os.cpu_count()} CPU cores, "
            f"{seconds / 60:.0f} min: {counts['pass']} pass, {counts['refused']} refused, {counts['fail']} fail.",
            "",
            table(cells, modes),
            MARK_END,
        ]
    )
    text = DOC.read_text() if DOC.exists() else f"# Strategies and precision\n\n{MARK_BEGIN}\n{MARK_END}\n"
    if MARK_BEGIN not in text:
        text += f"\n{MARK_BEGIN}\n{MARK_END}\n"
    head, rest = text.split(MARK_BEGIN, 1)
    DOC.write_text(head + block + rest.split(MARK_END, 1)[1])


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    from lightning_distill.recipes import RECIPES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--recipes", nargs="*", default=list(RECIPES), help="slugs (default: every registered recipe)"
    )
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run")
    parser.add_argument(
        "--timeout", type=float, default=400.0, help="seconds per run (a hang fails the cell)"
    )
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "strategy_matrix")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/strategies.md")
    parser.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        help="rewrite the docs table from results.json files (later ones override cells), run nothing",
    )
    args = parser.parse_args(argv)
    if args.from_json:
        merged: dict[tuple[str, str], Cell] = {}
        seconds = 0.0
        for path in args.from_json:
            data = json.loads(path.read_text())
            if isinstance(data, list):  # the first format: the cells alone
                data = {"cells": data, "seconds": sum(c["seconds"] for c in data), "steps": 4}
            seconds += data["seconds"]
            merged.update({(c["recipe"], c["mode"]): Cell(**c) for c in data["cells"]})
        order = {slug: k for k, slug in enumerate(RECIPES)}
        cells = sorted(merged.values(), key=lambda c: (order.get(c.recipe, len(order)), MODES.index(c.mode)))
        write_docs(cells, list(MODES), seconds, data["steps"])
        return 0
    start = time.monotonic()
    cells: list[Cell] = []
    for slug in args.recipes:
        done = run_recipe(slug, args.modes, args.work, args.steps, args.timeout)
        for c in done:
            print(
                f"{c.recipe:14s} {c.mode:6s} {c.status:8s} {c.seconds:6.1f}s {c.detail} {'; '.join(c.notes)}",
                flush=True,
            )
        cells += done
    seconds = time.monotonic() - start
    results = {
        "cells": [asdict(c) for c in cells],
        "modes": args.modes,
        "seconds": seconds,
        "steps": args.steps,
    }
    (args.work / "results.json").write_text(json.dumps(results, indent=1))
    if not args.no_docs:
        write_docs(cells, args.modes, seconds, args.steps)
    return 1 if any(c.status == "fail" for c in cells) else 0


if __name__ == "__main__":
    sys.exit(main())
