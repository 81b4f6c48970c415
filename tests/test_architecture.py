"""The house shows the architecture: imports run downward, recipes stand alone, files stay small.

Layers, bottom to top (docs/contributing.md): ``utils`` < ``losses`` < models, data and the family
toolkits < ``callbacks`` < ``module.py`` and the family bases (``<toolkit>/recipe_base.py``) <
``recipes`` < ``cli``. A module may import its own layer or lower ones; a family toolkit does not
import another family's toolkit; no recipe imports another recipe; no two modules import each
other, directly or round a longer circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_distill"
TOOLKITS = {
    "diffusion",
    "dataset_distillation",
    "lidar",
    "graphs",
    "vision_language",
    "segmentation",
    "representation",
    "super_resolution",
    "detection",
    "video",
    "radiance",
    "lidar_generation",
}
LAYER = {"utils": 0, "losses": 1, "models": 2, "data": 2, **dict.fromkeys(TOOLKITS, 2), "callbacks": 3}
LAYER |= {"module": 4, "recipes": 5, "cli": 6, "__init__": 7}
#: Toolkit imports across families that are part of the design, with the reason.
CROSS_FAMILY: dict[tuple[str, str], str] = {
    (
        "super_resolution",
        "diffusion",
    ): "diffusion/flow SR is the diffusion toolkit's machinery conditioned on an LR image",
    (
        "video",
        "diffusion",
    ): "video diffusion distillation reuses the diffusion and consistency machinery frame-wise",
    ("detection", "lidar"): "3D detection scenes are the LiDAR street scenes with labelled boxes",
    ("lidar_generation", "lidar"): "completion targets and occupancy come from the LiDAR street sequences",
    (
        "lidar_generation",
        "diffusion",
    ): "point and plane diffusion reuse the diffusion toolkit's schedules and DMD",
    ("radiance", "lidar"): "multi-view scenes reuse the LiDAR toolkit's open3d meshes and ray casting",
}
MAX_LINES, MAX_RECIPE_LINES = 500, 400


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _layer(module: str) -> tuple[str, int]:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    if parts[-1] == "recipe_base":
        return top, LAYER["module"]
    return top, LAYER[top]


def _imports(path: Path, known: set[str]) -> set[str]:
    """Package modules ``path`` imports (``from a.b import c`` counts ``a.b.c`` when it is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("lightning_distill"):
                out.add(node.module)
                out |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("lightning_distill")}
    return {m for m in out if m in known}


MODULES = _modules()
GRAPH = {name: _imports(path, set(MODULES)) for name, path in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_downward(module):
    own_top, own_layer = _layer(module)
    for target in GRAPH[module]:
        if target == "lightning_distill" or target.endswith(".__init__"):
            continue
        top, layer = _layer(target)
        if module.split(".")[-1] == "__init__" or module.count(".") == 1 and module.endswith("__init__"):
            continue
        assert layer <= own_layer or top == own_top, (
            f"{module} (layer {own_layer}) imports {target} (layer {layer})"
        )
        if own_top in TOOLKITS and top in TOOLKITS and top != own_top and own_layer == LAYER[own_top]:
            assert (own_top, top) in CROSS_FAMILY, (
                f"toolkit {own_top} imports another family's toolkit: {target}"
            )
        if own_top == "recipes" and top == "recipes" and module != "lightning_distill.recipes":
            # A recipe split into a package (recipes/calico/) may re-export its own modules.
            same_package = target.startswith(module + ".")
            assert target == "lightning_distill.recipes" or same_package, (
                f"recipe {module} imports recipe {target}"
            )


def test_no_import_circles():
    # Only imports at module level make a circle at import time; package __init__ re-exports are
    # edges like any other.
    top_level = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        deps = set()
        for node in tree.body:
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("lightning_distill")
            ):
                deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names}
        top_level[name] = {d for d in deps if d in MODULES and d != name}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(top_level[node]):
            if state.get(dep) == 1:
                circle = stack[stack.index(dep) :] + [dep]
                # A package importing its own submodules (re-exports) is not a circle.
                if not all(
                    b.startswith(a + ".") or a.startswith(b + ".") for a, b in zip(circle, circle[1:])
                ):
                    raise AssertionError("import circle: " + " -> ".join(circle))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for name in sorted(top_level):
        if name not in state:
            visit(name)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_files_stay_small_or_say_why(module):
    path = MODULES[module]
    lines = len(path.read_text().splitlines())
    if ".recipes." in module:
        assert lines <= MAX_RECIPE_LINES, f"{path.name}: a recipe of {lines} lines (limit {MAX_RECIPE_LINES})"
    elif lines > MAX_LINES:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert "Size:" in doc or "Why one file" in doc, (
            f"{path} has {lines} lines: split it by idea, or say in its opening docstring "
            "('Size: ...' or 'Why one file ...') why it cannot be split"
        )


def test_every_toolkit_folder_has_a_readme():
    for folder in sorted(p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        if folder.name == "recipes":
            continue
        assert (folder / "README.md").is_file(), (
            f"{folder.name}/ has no README.md (what is inside, what it may import)"
        )
