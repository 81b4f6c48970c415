"""The shared benchmark report helpers (benchmarks/_report.py)."""

from __future__ import annotations

import doctest
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("_report", ROOT / "benchmarks" / "_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["_report"] = module
    spec.loader.exec_module(module)
    return module


def test_doctests(report) -> None:
    assert doctest.testmod(report).failed == 0


def test_mean_std_matches_statistics(report) -> None:
    assert report.mean_std([0.1, 0.2, 0.4], scale=100, digits=3) == "23.333 ± 15.275"
    assert report.mean_std([]) == "-"
    assert report.mean_std([1e-4, 3e-4], fmt="e") == "2.00e-04 ± 1.4e-04"


def test_paired_rejects_bad_input(report) -> None:
    with pytest.raises(ValueError, match="one value per seed"):
        report.paired([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="op must be"):
        report.paired([1.0], [1.0], op="product")


def test_write_block_replaces_only_the_block(report, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nprose\n\n<!-- results:start -->\nold\n<!-- results:end -->\n\nafter\n")
    report.write_block(readme, "new table")
    assert (
        readme.read_text()
        == "# Title\n\nprose\n\n<!-- results:start -->\nnew table\n<!-- results:end -->\n\nafter\n"
    )
    with pytest.raises(ValueError, match="must contain"):
        report.write_block(readme, "x", key="speed")
    report.write_block(readme, "fast", key="speed", create="unused")
    assert readme.read_text().endswith("<!-- speed:start -->\nfast\n<!-- speed:end -->\n")
    fresh = tmp_path / "results" / "new.md"
    report.write_block(fresh, "body", create="# New\n\nwhat it measures")
    assert (
        fresh.read_text()
        == "# New\n\nwhat it measures\n\n<!-- results:start -->\nbody\n<!-- results:end -->\n"
    )


def test_markdown_table_checks_columns(report) -> None:
    with pytest.raises(ValueError, match="each row needs 2 cells"):
        report.markdown_table(["a", "b"], [[1]])
