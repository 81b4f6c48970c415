"""MkDocs hook: fills the generated tables into the pages that hold their markers."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import docs_tables  # noqa: E402

MARKERS = {
    "<!-- papers-table -->": docs_tables.papers_table,
    "<!-- claims-table -->": docs_tables.claims_table,
}


def on_files(files, config, **kwargs):
    """Publish the pictures the benchmark scripts write (``benchmarks/results/*.png``) under ``results/``."""
    from mkdocs.structure.files import File

    for png in sorted(docs_tables.RESULTS.glob("*.png")):
        files.append(File.generated(config, f"results/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    for marker, render in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, f'<div class="wrap" markdown>\n\n{render()}\n\n</div>')
    slug = page.file.src_uri.removeprefix("recipes/").removesuffix(".md")
    if page.file.src_uri.startswith("recipes/") and slug in docs_tables.RECIPES:
        markdown = docs_tables.recipe_header(slug) + "\n\n" + markdown
    return markdown
