"""benchmarks/gpu_check.py: the skip without CUDA, and its checks on the CPU at tiny sizes (``--device cpu --tiny``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check

    return gpu_check


def test_without_cuda_it_skips_with_one_line_and_exit_0(gpu_check, monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == "no CUDA device: skipped"
    assert not list(tmp_path.iterdir())


def test_tiny_cpu_run_passes_every_check(tmp_path) -> None:
    command = [
        sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny", "--seeds", "0",
        "--recipes", "kd", "--precisions", "bf16-mixed", "16-mixed", "--steps", "2", "--warmup", "1",
        "--cpu-steps", "1", "--no-readme", "--out", str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LIGHTNING_DISTILL_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = {(r["check"], r["recipe"], r["precision"]): r for r in result["rows"]}
    assert set(rows) == {
        ("fit", "kd", "bf16-mixed"),
        ("fit", "kd", "16-mixed"),
        ("fit", "kd", "32-true"),
        ("spconv SparseUNet", "-", "32"),
        ("EMATeacher", "-", "bf16-mixed"),
    }
    for row in rows.values():
        assert row["status"] == "ok", row
        assert row["finite"] is True
        assert row["ms_per_step"] > 0
    assert rows[("fit", "kd", "bf16-mixed")]["losses"] >= 3 * 3  # kd, ce, loss on each of the 3 batches
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| fit | `kd` | cpu | bf16-mixed |" in table and "EMATeacher" in table


def test_a_failing_check_is_reported_not_raised(gpu_check) -> None:
    row = gpu_check.fit_row("no_such_recipe", True, "cpu", "32-true", 1, 0, 0)
    assert row["status"].startswith("FAIL: ValueError: unknown recipe check 'no_such_recipe'")
