"""Every benchmark script imports and builds its command line (nothing runs), and keeps its old flags.

The commands printed in the READMEs and results (``python benchmarks/<x>.py --threads 1 ...``) must
still parse, so a table can be regenerated with the command written above it.
"""

from __future__ import annotations

import importlib
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
#: Thread defaults that are not 1 (``None``: torch's choice).
THREADS = {"classification": 2, "ema_speed": None, "teacher_cache_speed": None}
#: Scripts without ``--seeds`` (one timing run) and without a README block.
NO_SEEDS = {"dataset_pictures", "ema_speed", "hooks_overhead"}
NO_README = {"dataset_pictures", "ema_speed", "gmm_bench_floor", "hooks_overhead", "teacher_cache_speed"}
#: ``--n`` (samples per model and seed) of the diffusion benches.
SAMPLES = dict.fromkeys(["decoupled_dmd", "dmd2", "flash_dmd", "gmm_bench_floor", "msd", "swiftbrush"], 2000)
SAMPLES["dmd2_digits"] = 1000
SAMPLES["consistency_digits"] = 500
COMMAND = re.compile(r"python benchmarks/([a-z_0-9]+)\.py([^`\n#]*)")


@pytest.fixture(scope="module", autouse=True)
def benchmarks_on_path():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    yield
    sys.path.remove(str(ROOT / "benchmarks"))


def parser_of(name: str):
    return importlib.import_module(name).build_parser()


@pytest.mark.parametrize("name", SCRIPTS)
def test_parser_has_the_shared_flags(name: str) -> None:
    parser = parser_of(name)
    args = parser.parse_args([])
    assert parser.script == f"benchmarks/{name}.py"
    assert args.threads == THREADS.get(name, 1)
    assert (args.seeds == [0, 1, 2]) if name not in NO_SEEDS else not hasattr(args, "seeds")
    assert hasattr(args, "no_readme") == (name not in NO_README)
    assert getattr(args, "n", None) == SAMPLES.get(name)
    assert parser.description and "\n\n" not in parser.description


def test_every_script_is_covered() -> None:
    assert len(SCRIPTS) >= 20


def documented_commands() -> list[tuple[str, str]]:
    files = [
        *(ROOT / "recipes").glob("*/README.md"),
        *(ROOT / "benchmarks" / "results").glob("*.md"),
        *(ROOT / "docs").rglob("*.md"),
    ]
    found = {(m[1], m[2].strip()) for f in files for m in COMMAND.finditer(f.read_text())}
    return sorted((name, args) for name, args in found if name in SCRIPTS)


def test_documented_commands_still_parse() -> None:
    commands = documented_commands()
    assert commands
    for name, args in commands:
        parser_of(name).parse_args(shlex.split(args))
