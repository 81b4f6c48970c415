"""Prove that moving evaluation into callbacks kept every logged validation/test metric value.

Usage (from the repository root whose code and configs are compared):

    python tools/eval_metrics_identity.py dump OUT.json [--steps 4] [--only dmd2,msd]
    python tools/eval_metrics_identity.py compare BEFORE.json AFTER.json

``dump`` runs, for every YAML of the diffusion recipes, ``lightning-distill fit`` for ``--steps``
training batches with one validation at the end of the epoch (no sanity check), then
``lightning-distill test`` of the untrained model, and records every ``val/`` and ``test/``
metric. ``compare`` prints each metric of BEFORE with the value AFTER and says where they differ
(metrics only AFTER are listed as new). For the state before the change run ``dump`` in a
worktree of that commit with ``PYTHONPATH`` pointing at it (this file's folder is added).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import lightning.pytorch as L
import yaml

ROOT = Path.cwd()
SLUGS = ("dmd2", "flash_dmd", "msd", "swiftbrush", "decoupled_dmd", "phased_dmd")


class DumpMetrics(L.Callback):
    """Adds the ``val/`` metrics at the end of fit and the ``test/`` ones at the end of test to ``$METRICS_OUT``."""

    def _dump(self, trainer: L.Trainer, prefix: str) -> None:
        path = Path(os.environ["METRICS_OUT"])
        found = json.loads(path.read_text()) if path.exists() else {}
        found.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)})
        path.write_text(json.dumps(found))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._dump(trainer, "val/")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._dump(trainer, "test/")


def config_args(config: Path) -> list[str]:
    model = (yaml.safe_load(config.read_text()) or {}).get("model") or {}
    if "class_path" in model:
        return ["--config", str(config)]
    return ["--config", str(config.parent / "config.yaml"), "--config", str(config)]


def dump(out: Path, steps: int, only: set[str] | None) -> None:
    results = json.loads(out.read_text()) if only and out.exists() else {}
    for slug in SLUGS:
        if only and slug not in only:
            continue
        for config in sorted((ROOT / "recipes" / slug).glob("*.yaml")):
            key = f"{slug}/{config.stem}"
            with tempfile.TemporaryDirectory() as tmp:
                env = dict(
                    os.environ,
                    METRICS_OUT=f"{tmp}/metrics.json",
                    OMP_NUM_THREADS="1",
                    PYTHONPATH=os.pathsep.join(
                        [str(ROOT), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
                    ),
                )
                common = [
                    "--trainer.enable_progress_bar=false",
                    "--trainer.enable_model_summary=false",
                    "--trainer.logger=false",
                    f"--trainer.default_root_dir={tmp}",
                    "--trainer.callbacks+=eval_metrics_identity.DumpMetrics",
                ]
                fit = [
                    "fit",
                    *config_args(config),
                    *common,
                    "--trainer.max_steps=-1",
                    f"--trainer.limit_train_batches={steps}",
                    "--trainer.max_epochs=1",
                    "--trainer.val_check_interval=1.0",
                    "--trainer.check_val_every_n_epoch=1",
                    "--trainer.num_sanity_val_steps=0",
                    "--trainer.enable_checkpointing=false",
                ]
                error = ""
                for args in (fit, ["test", *config_args(config), *common]):
                    proc = subprocess.run(
                        [sys.executable, "-m", "lightning_distill.cli", *args],
                        env=env,
                        cwd=tmp,
                        capture_output=True,
                        text=True,
                    )
                    if proc.returncode:
                        error += (proc.stderr or proc.stdout)[-1500:]
                path = Path(tmp, "metrics.json")
                results[key] = json.loads(path.read_text()) if path.exists() else {}
                if error:
                    results[key]["error"] = error
                print(f"{key}: {len(results[key])} metrics{' FAILED' if error else ''}", flush=True)
                out.write_text(json.dumps(results, indent=1, sort_keys=True))


def compare(before: Path, after: Path) -> int:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    bad = 0
    for key in sorted(set(a) | set(b)):
        ra, rb = a.get(key), b.get(key)
        if ra is None or rb is None:
            print(f"{key}: only in {'after' if ra is None else 'before'}")
            continue
        for side, r in (("before", ra), ("after", rb)):
            if "error" in r:
                print(f"{key}: error {side}\n  {r['error'][-600:]}")
                bad += 1
        lines = []
        for name in sorted(ra):
            if name == "error":
                continue
            va, vb = ra[name], rb.get(name)
            same = vb is not None and (va == vb or (math.isnan(va) and math.isnan(vb)))
            bad += not same
            lines.append(
                f"   {name:32s} {va:.9g} -> {vb if vb is None else format(vb, '.9g')}"
                f"{'' if same else '   DIFFERS'}"
            )
        new = [n for n in rb if n not in ra and n != "error"]
        print(f"{key}: {len(lines)} metrics, {sum('DIFFERS' in x for x in lines)} differ, new: {new}")
        print("\n".join(lines))
    return bad


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
