"""Prove a refactor output-identical: run every recipe config briefly and hash what it trained.

Usage (from the repository root):

    python tools/refactor_identity.py dump  OUT.json [--steps 4] [--only dmd2,msd]
    python tools/refactor_identity.py compare BEFORE.json AFTER.json

``dump`` runs ``lightning-distill fit`` on every YAML under ``recipes/`` (overlays on their
``config.yaml``) for a few training batches with validation off, and records a SHA-256 of every
tensor in the LightningModule's ``state_dict`` and the last value of every ``train/`` metric.
``compare`` reports tensors whose bytes differ (matching renamed keys by their hash) and configs
that failed. Run ``dump`` on the commit before the change (e.g. in a ``git worktree`` with
``PYTHONPATH`` pointing at it) and after, with the same ``LIGHTNING_DISTILL_CACHE``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import lightning.pytorch as L
import yaml

ROOT = Path.cwd()


class DumpState(L.Callback):
    """Writes tensor hashes and train metrics to ``$IDENTITY_OUT`` when fit ends."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tensors = {}
        for name, tensor in pl_module.state_dict().items():
            t = tensor.detach().cpu().contiguous()
            tensors[name] = hashlib.sha256(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes()
                                           if t.numel() else b"").hexdigest()[:16] + f":{tuple(t.shape)}"
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        Path(os.environ["IDENTITY_OUT"]).write_text(json.dumps({"tensors": tensors, "metrics": metrics}))


def config_args(config: Path) -> list[str]:
    model = (yaml.safe_load(config.read_text()) or {}).get("model") or {}
    if "class_path" in model:
        return ["--config", str(config)]
    return ["--config", str(config.parent / "config.yaml"), "--config", str(config)]


def dump(out: Path, steps: int, only: set[str] | None) -> None:
    # With --only, entries of other configs already in OUT are kept (runs can be merged).
    results = json.loads(out.read_text()) if only and out.exists() else {}
    configs = sorted((ROOT / "recipes").glob("*/*.yaml"))
    for config in configs:
        key = f"{config.parent.name}/{config.stem}"
        if only and config.parent.name not in only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, IDENTITY_OUT=f"{tmp}/state.json", OMP_NUM_THREADS="1",
                       PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tools"), os.environ.get("PYTHONPATH", "")]))
            cmd = [sys.executable, "-m", "lightning_distill.cli", "fit", *config_args(config),
                   f"--trainer.max_steps={steps}", f"--trainer.limit_train_batches={steps}", "--trainer.max_epochs=1",
                   "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
                   "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                   "--trainer.enable_checkpointing=false", "--trainer.logger=false",
                   f"--trainer.default_root_dir={tmp}", "--trainer.callbacks+=refactor_identity.DumpState"]
            proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True)
            state = Path(tmp, "state.json")
            if proc.returncode or not state.exists():
                results[key] = {"error": (proc.stderr or proc.stdout)[-1500:]}
                print(f"{key}: FAILED")
            else:
                results[key] = json.loads(state.read_text())
                print(f"{key}: {len(results[key]['tensors'])} tensors")
            out.write_text(json.dumps(results, indent=1, sort_keys=True))


def compare(before: Path, after: Path) -> int:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    bad = 0
    for key in sorted(set(a) | set(b)):
        ra, rb = a.get(key), b.get(key)
        if ra is None or rb is None:
            print(f"{key}: only in {'after' if ra is None else 'before'}")
            continue
        if "error" in ra or "error" in rb:
            print(f"{key}: error before={'error' in ra} after={'error' in rb}\n  {rb.get('error', ra.get('error'))[-400:]}")
            bad += 1
            continue
        ta, tb = ra["tensors"], rb["tensors"]
        hashes_b = {v: k for k, v in tb.items()}
        diff, renamed = [], []
        for name, h in ta.items():
            if tb.get(name) == h:
                continue
            if h in hashes_b:
                renamed.append((name, hashes_b[h]))
            else:
                diff.append(name)
        extra = [n for n, h in tb.items() if n not in ta and h not in set(ta.values())]
        status = "identical" if not diff and not extra else "DIFFERS"
        bad += status != "identical"
        print(f"{key}: {status} ({len(ta)} tensors, {len(renamed)} renamed, {len(diff)} differ, {len(extra)} new)")
        for name in diff[:5]:
            print(f"   differs: {name}")
        for name in extra[:5]:
            print(f"   new: {name}")
    return bad


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("out", type=Path)
    d.add_argument("--steps", type=int, default=4)
    d.add_argument("--only", default="")
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.cmd == "dump":
        dump(args.out.resolve(), args.steps, set(filter(None, args.only.split(","))) or None)
    else:
        sys.exit(1 if compare(args.before, args.after) else 0)
