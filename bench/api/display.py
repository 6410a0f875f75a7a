"""Fitting names and tables to a terminal: grid-cell names shortened so that what tells cells apart
stays visible (the file's name and the values), never a cut-off tail."""

from __future__ import annotations

import re

ELLIPSIS = "…"
_KEY = re.compile(r"(?<=[\[,])[\w.]+=")


def values_only(name: str) -> str:
    """A grid cell's name without its key names: ``file[key=value,...]`` -> ``file[value,...]``."""
    return _KEY.sub("", name) if "[" in name else name


def short_name(name: str, width: int) -> str:
    """``name`` in at most ``width`` characters: a grid cell ``file[key=value,...]`` first drops its key
    names (``file[value,...]``), then loses its middle, keeping the start (the file) and the end."""
    if len(name) <= width:
        return name
    name = values_only(name)
    if len(name) <= width:
        return name
    if width < 5:
        return name[:width]
    tail = (width - 1) // 3
    return name[: width - 1 - tail] + ELLIPSIS + name[len(name) - tail:]


def fixed_width_table(header: list[str], rows: list[list[str]], width: int, first_min: int = 24) -> tuple[str, int]:
    """A plain-text table no wider than ``width``: the first column (names) is shortened with
    ``short_name``, the others are right-aligned and dropped from the right when they do not fit.
    Returns (text, number of columns dropped)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    keep = len(header)
    while keep > 1 and first_min + sum(w + 2 for w in widths[1:keep]) > width:
        keep -= 1
    first = max(min(widths[0], width - sum(w + 2 for w in widths[1:keep])), min(first_min, width))
    if any(len(r[0]) > first for r in rows):  # shorten every name alike, so that the rows line up in kind
        rows = [[values_only(r[0]), *r[1:]] for r in rows]
        first = min(first, max(len(header[0]), *(len(r[0]) for r in rows)))
    lines = []
    for cells in [header] + rows:
        parts = [short_name(cells[0], first).ljust(first)] + [c.rjust(w) for c, w in zip(cells[1:keep], widths[1:keep])]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines), len(header) - keep
