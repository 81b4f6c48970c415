"""The recipe configs ship with the package: `--recipe NAME` works from a wheel, outside the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = "lightning_distill/recipe_configs/"
SOURCES = {p.relative_to(REPO / "recipes").as_posix() for p in (REPO / "recipes").glob("*/*") if p.is_file()}
PIP = (sys.executable, "-m", "pip", "--disable-pip-version-check", "-q")

CHECK = """
import json, sys
from pathlib import Path
import lightning_distill
from lightning_distill.cli import main, recipe_config_path
from lightning_distill.recipes import RECIPES

package = Path(lightning_distill.__file__).parent
paths = {slug: str(recipe_config_path(slug)) for slug in RECIPES}
try:
    main(["fit", "--recipe", "meal_v2", "--print_config"])
except SystemExit:
    pass
sys.stdout.write("\\n" + json.dumps({"package": str(package), "paths": paths}) + "\\n")
"""


def _run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def _build_wheel(tmp_path: Path) -> Path:
    """Build the wheel from a copy of the sources (nothing, e.g. build/ or *.egg-info, lands in the checkout)."""
    source = _mkdir(tmp_path / "source")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("lightning_distill", "recipes"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    _run(*PIP, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"))
    (wheel,) = (tmp_path / "wheel").glob("lightning_distill-*.whl")
    return wheel


def test_wheel_holds_every_recipe_config_and_readme(tmp_path):
    with zipfile.ZipFile(_build_wheel(tmp_path)) as wheel:
        names = wheel.namelist()
    shipped = {n.removeprefix(SHIPPED) for n in names if n.startswith(SHIPPED)}
    assert shipped == SOURCES
    assert "lightning_distill/cli.py" in names and "lightning_distill/recipes/meal_v2.py" in names


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("LIGHTNING_DISTILL_SLOW") != "1", reason="about a minute: LIGHTNING_DISTILL_SLOW=1"
)
def test_recipe_flag_finds_the_installed_configs_outside_the_repository(tmp_path):
    wheel = _build_wheel(tmp_path)
    target = tmp_path / "target"
    _run(*PIP, "install", "--no-deps", "--target", str(target), str(wheel))

    elsewhere = _mkdir(tmp_path / "elsewhere")  # no recipes/ in the working directory
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    result = _run(sys.executable, "-c", CHECK, cwd=elsewhere, env=env)
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["package"] == str(target / "lightning_distill")
    shipped = target / "lightning_distill" / "recipe_configs"
    for slug, path in found["paths"].items():
        assert Path(path).is_relative_to(shipped), (slug, path)
        assert Path(path).read_bytes() == (REPO / "recipes" / slug / Path(path).name).read_bytes()
        assert (shipped / slug / "README.md").is_file()
    assert {p.relative_to(shipped).as_posix() for p in shipped.rglob("*") if p.is_file()} == SOURCES
    assert "class_path: lightning_distill.recipes.meal_v2.MEALV2" in result.stdout


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
