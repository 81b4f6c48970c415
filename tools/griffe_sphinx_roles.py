"""Griffe extension for the API reference: the reST bits of our docstrings read as Markdown.

The docstrings use ``:class:`~pkg.mod.Name``` / ``:func:`name``` as the source reads best; the
reference renders them as ``Name`` / ``name`` in code font (a ``~`` keeps the last component only),
and a ``.. math::`` block becomes a ``$$ ... $$`` display equation (pymdownx.arithmatex).
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:class|func|meth|data|attr|mod|obj|exc):`(~?)([^`]+)`")


def _plain(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def _math_blocks(text: str) -> str:
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i].strip() == ".. math::":
            indent = len(lines[i]) - len(lines[i].lstrip())
            i += 1
            block = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i].strip())
                i += 1
            body = "\n".join(block).strip("\n")
            out += [" " * indent + "$$", *(" " * indent + b for b in body.splitlines()), " " * indent + "$$", ""]
            continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _math_blocks(_ROLE.sub(_plain, obj.docstring.value))
