"""Tables of the docs site that are generated, never typed: the papers at a glance and the claims.

``papers_table()`` lists all 52 seed papers by family (``lightning_distill.recipes.papers.PAPERS``)
with their status from the recipe registry (``RECIPES``) and, for recipes with a benchmark, the
headline claim's verdict. ``claims_table()`` lists every claim of ``benchmarks/claims.yaml`` with both
cells read from the generated result files in ``benchmarks/results/``. ``tools/mkdocs_hooks.py``
puts them into the pages at build time; ``tests/test_docs.py`` checks them.

Verdict rule (printed with the table): with mean ± std over seeds for both rows, the claim *holds*
when ours is better by more than the combined spread sqrt(std_ours² + std_base²), is *reversed*
when it is worse by more than that, and is *within noise* otherwise. A parity claim (``kind: matches``:
"as good as", "as close as") *matches* when ours is not worse by more than that spread and *falls short*
otherwise.

A claim may carry ``why``: one line, ``"<kind>: <reason>"`` with kind ``implementation``, ``toy scale``
or ``open`` (see ``WHY_KINDS``), the diagnosis of a claim that does not hold. It is shown in the last
column of both claim tables and as the kind after the headline's verdict, never for a claim that holds.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from lightning_distill.recipes import RECIPES
from lightning_distill.recipes.papers import FAMILIES, PAPERS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CLAIMS = ROOT / "benchmarks" / "claims.yaml"
RULE = (
    "Verdict: with mean ± std over seeds in both rows, a claim **holds** when our row is better by more "
    "than the combined spread √(std₁² + std₂²), is **reversed** when it is worse by more than that, "
    'and is **within noise** otherwise. A parity claim ("as good as") **matches** when our row is not worse by '
    "more than that spread and **falls short** otherwise. Both cells are read from the benchmark's generated table."
)
CLAIM_KINDS = ("beats", "matches")
NOT_HOLDING = ("reversed", "within noise", "falls short")
WHY_KINDS = {
    "implementation": "a bug, or a part that is not faithful to the paper or its code, named",
    "toy scale": "the implementation is checked and the effect does not show at this budget or size",
    "open": "not diagnosed yet",
}
_CELL = re.compile(r"^\**\s*([-+]?[\d.]+(?:e[-+]?\d+)?)\s*±\s*([\d.]+(?:e[-+]?\d+)?)\s*\**$")


@dataclass(frozen=True)
class Verdict:
    slug: str
    claim: str
    column: str
    ours: tuple[float, float]
    baseline: tuple[float, float]
    better: str
    file: str
    cells: tuple[str, str] = ("", "")  # both cells as the result file prints them
    why: str | None = None  # "<kind>: <reason>", the diagnosis of a claim that does not hold
    kind: str = "beats"  # "beats" (ours is better) or "matches" (ours is as good: a parity claim)

    @property
    def verdict(self) -> str:
        (m1, s1), (m0, s0) = self.ours, self.baseline
        gain = (m1 - m0) if self.better == "higher" else (m0 - m1)
        spread = math.hypot(s1, s0)
        if self.kind == "matches":
            return "matches" if gain >= -spread else "falls short"
        if gain > spread:
            return "holds"
        if gain < -spread:
            return "reversed"
        return "within noise"

    def cell(self, which: str) -> str:
        return self.cells[0 if which == "ours" else 1].strip("*")

    @property
    def why_kind(self) -> str | None:
        """The diagnosis's kind (one of ``WHY_KINDS``); None without ``why`` or when the claim holds."""
        if self.why is None or self.verdict not in NOT_HOLDING:
            return None
        return self.why.split(":", 1)[0]

    def diagnosis(self) -> str:
        """The ``why`` as a table cell: the kind in italics, then the reason; empty when it holds."""
        if self.why_kind is None:
            return ""
        reason = self.why.split(":", 1)[1].strip().replace("|", "\\|")
        return f"*{self.why_kind}*: {reason}"


def _why(entry: dict, where: str) -> str | None:
    """A claim's ``why``, checked: one line that starts with a known kind and a colon."""
    why = entry.get("why")
    if why is None:
        return None
    kind, colon, reason = why.partition(":") if isinstance(why, str) else ("", "", "")
    if "\n" in reason or not colon or kind not in WHY_KINDS or not reason.strip():
        raise ValueError(
            f"{where}: why must be one line '<kind>: <reason>' with kind one of "
            f"{', '.join(repr(k) for k in WHY_KINDS)}; got {why!r}"
        )
    return why


def _split(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [c.strip() for c in cells]


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table in ``text`` as a list of rows (column header -> cell text)."""
    found, lines = [], text.splitlines()
    for i in range(len(lines) - 1):
        header, rule = lines[i], lines[i + 1]
        if header.startswith("|") and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", rule.strip()):
            if i > 0 and lines[i - 1].startswith("|"):
                continue
            names, rows = _split(header), []
            for line in lines[i + 2 :]:
                if not line.startswith("|"):
                    break
                rows.append(dict(zip(names, _split(line))))
            found.append(rows)
    return found


def _value(cell: str, where: str) -> tuple[float, float]:
    match = _CELL.match(cell.strip())
    if not match:
        raise ValueError(f"{where}: cell {cell!r} is not 'mean ± std'")
    return float(match.group(1)), float(match.group(2))


def _row(rows: list[dict[str, str]], select: dict, where: str) -> dict[str, str]:
    want = {str(k): str(v) for k, v in select.items()}
    hits = [r for r in rows if all(r.get(k, "").strip("`*") == v for k, v in want.items())]
    if len(hits) != 1:
        raise ValueError(f"{where}: {len(hits)} rows match {want} (need exactly one)")
    return hits[0]


@cache
def claims() -> dict[str, list[Verdict]]:
    """Every claim of ``benchmarks/claims.yaml``, its two cells read from the result files."""
    return read_claims(yaml.safe_load(CLAIMS.read_text()))


def read_claims(spec: dict[str, list[dict]]) -> dict[str, list[Verdict]]:
    """The verdicts of a parsed ``claims.yaml``: slug -> one ``Verdict`` per claim entry."""
    out: dict[str, list[Verdict]] = {}
    for slug, entries in spec.items():
        if slug not in RECIPES:
            raise ValueError(f"claims.yaml: {slug!r} is not a registered recipe")
        for entry in entries:
            where = f"claims.yaml[{slug}] {entry['claim']!r} ({entry['file']})"
            rows = [
                r for t in tables((RESULTS / entry["file"]).read_text()) for r in t if entry["column"] in r
            ]
            if entry["better"] not in ("higher", "lower"):
                raise ValueError(f"{where}: better must be 'higher' or 'lower'")
            kind = entry.get("kind", "beats")
            if kind not in CLAIM_KINDS:
                raise ValueError(f"{where}: kind must be one of {CLAIM_KINDS}, got {kind!r}")
            cells = tuple(_row(rows, entry[k], where)[entry["column"]] for k in ("ours", "baseline"))
            ours, base = (_value(c, where) for c in cells)
            why = _why(entry, where)
            out.setdefault(slug, []).append(
                Verdict(
                    slug,
                    entry["claim"],
                    entry["column"],
                    ours,
                    base,
                    entry["better"],
                    entry["file"],
                    cells,
                    why,
                    kind,
                )
            )
    return out


def _recipe_link(slug: str, from_dir: str = "") -> str:
    page = ROOT / "docs" / "recipes" / f"{slug}.md"
    return f"[`{slug}`]({from_dir}recipes/{slug}.md)" if page.exists() else f"`{slug}`"


def _headline(slug: str) -> str:
    verdicts = claims().get(slug)
    if not verdicts:
        return "—"
    v = verdicts[0]
    kind = f" ({v.why_kind})" if v.why_kind else ""
    return f"{v.claim}: {v.column} {v.cell('ours')} vs {v.cell('baseline')} — **{v.verdict}**{kind}"


def papers_table() -> str:
    """All seed papers by family: slug, title, status (available / planned) and the headline result."""
    lines = []
    extra = [s for s in RECIPES if s not in PAPERS]
    if extra:
        lines += ["### Baselines", "", "| recipe | what | headline toy result |", "|---|---|---|"]
        lines += [f"| {_recipe_link(s)} | {RECIPES[s].title} | {_headline(s)} |" for s in extra]
        lines.append("")
    for family, heading in FAMILIES.items():
        slugs = sorted(s for s, p in PAPERS.items() if p.family == family)
        done = sum(s in RECIPES for s in slugs)
        lines += [f"### {heading} ({done} of {len(slugs)} available)", ""]
        lines += ["| recipe | paper | status | headline toy result |", "|---|---|---|---|"]
        for slug in slugs:
            status = "available" if slug in RECIPES else "planned"
            lines.append(f"| {_recipe_link(slug)} | {PAPERS[slug].title} | {status} | {_headline(slug)} |")
        lines.append("")
    return "\n".join(lines)


def claims_table() -> str:
    """One row per claim: recipe, claim, metric, the two cells, the verdict and its diagnosis."""
    lines = [
        RULE,
        "",
        "| recipe | claim | metric | ours | baseline | verdict | why (diagnosis) |",
        "|---|---|---|---|---|---|---|",
    ]
    for slug, verdicts in claims().items():
        for v in verdicts:
            better = "↑" if v.better == "higher" else "↓"
            lines.append(
                f"| {_recipe_link(slug)} | {v.claim} | {v.column} {better} | {v.cell('ours')} | "
                f"{v.cell('baseline')} | **{v.verdict}** | {v.diagnosis()} |"
            )
    return "\n".join(lines)


def recipe_header(slug: str) -> str:
    """What a recipe page opens with: the commands, then its claims with their verdicts."""
    info = RECIPES[slug]
    lines = [
        f'!!! abstract "{info.title}"',
        "",
        "    ```bash",
        f"    lightning-distill fit --recipe {slug}          # recipes/{slug}/{info.config}",
        f"    lightning-distill test --recipe {slug} --ckpt_path runs/lightning_logs/version_0/checkpoints/last.ckpt",
        "    ```",
    ]
    verdicts = claims().get(slug, [])
    if verdicts:
        lines += [
            "",
            "    | claim at toy scale | metric | ours | baseline | verdict | why (diagnosis) |",
            "    |---|---|---|---|---|---|",
        ]
        for v in verdicts:
            arrow = "↑" if v.better == "higher" else "↓"
            lines.append(
                f"    | {v.claim} | {v.column} {arrow} | {v.cell('ours')} | {v.cell('baseline')} | "
                f"**{v.verdict}** | {v.diagnosis()} |"
            )
        lines += [
            "",
            "    Measured by the benchmark below ([all claims](../benchmarks.md)); the verdict rule is there.",
        ]
    return "\n".join(lines)
