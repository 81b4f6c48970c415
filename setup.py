"""What pyproject.toml cannot say: ``recipes/`` (the one source of the recipe configs and their
READMEs) is installed as the package-data folder ``lightning_distill/recipe_configs/<slug>/``, so
that ``lightning-distill fit --recipe NAME`` works from a wheel (see ``cli.recipe_config_path``)."""

from pathlib import Path

from setuptools import find_namespace_packages, setup

CONFIGS = "lightning_distill.recipe_configs"
SLUGS = sorted(p.name for p in (Path(__file__).parent / "recipes").iterdir() if p.is_dir())

setup(
    packages=[
        *find_namespace_packages(include=["lightning_distill", "lightning_distill.*"]),
        CONFIGS,
        *(f"{CONFIGS}.{slug}" for slug in SLUGS),
    ],
    package_dir={CONFIGS: "recipes"},
    package_data={f"{CONFIGS}.{slug}": ["*.yaml", "README.md"] for slug in SLUGS},
)
