"""Table 1 (tier x method): which post-training methods each openness tier allows, and why not.

Every cell is computed by ``bench.api.access.availability`` from what the method needs
(``Method.needs``) and what the tier grants (``Tier.grants``); nothing here is typed by hand except
the seed paper's marks (Agrawal et al. 2025, arXiv 2505.23593, Table 1), which are set beside each
cell for comparison: open-source and open-weight allow everything; gray-box allows LoRA/adapters
only partially, through the provider; black-box allows no FFT or RLHF, only textual prompt tuning.
Cells the paper does not mark are "not stated", and methods that are our own mechanism (the provider
tuning endpoint at open tiers, where there is no provider) are "n/a".
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench.api.access import availability
from bench.api.registry import METHODS, TIERS, Registry

T = TypeVar("T")
"""A registered component class's instance."""

TIER_ORDER = ("open-source", "open-weight", "gray-box", "black-box")
METHOD_ORDER = ("fft", "lora", "qlora", "adapter", "prompt-tuning", "prefix-tuning", "instruction-tuning", "rlhf",
                "provider-tuning", "textual-prompt")

# The method family each method belongs to in the seed paper's Table 1.
PAPER_FAMILY = {
    "fft": "full fine-tuning", "lora": "LoRA/adapters", "qlora": "LoRA/adapters", "adapter": "LoRA/adapters",
    "prompt-tuning": "prompt tuning", "prefix-tuning": "prompt tuning", "instruction-tuning": "instruction tuning",
    "rlhf": "RLHF", "textual-prompt": "textual prompt tuning", "provider-tuning": "LoRA/adapters through the provider",
}
PROVIDER_METHOD = "provider-tuning"


def paper_mark(tier: str, method: str) -> tuple[str, str]:
    """(mark, note): the seed paper's verdict for a cell: yes, no, partial, not stated, or n/a."""
    family = PAPER_FAMILY.get(method)
    if family is None:
        return "not stated", "not in the paper's table"
    if tier in ("open-source", "open-weight"):
        if method == PROVIDER_METHOD:
            return "n/a", "no provider at open tiers: LoRA/adapters train locally"
        return "yes", "open tiers allow every method"
    if tier == "gray-box":
        if family.startswith("LoRA/adapters"):
            return "partial", "LoRA/adapters only through the provider"
        return "not stated", ""
    if tier == "black-box":
        if family == "textual prompt tuning":
            return "yes", "only textual prompt tuning"
        return "no", "black-box allows only textual prompt tuning"
    return "not stated", "tier not in the paper"


@dataclass(frozen=True)
class Cell:
    tier: str
    method: str
    allowed: bool
    reason: str
    needs: tuple[str, ...]
    grants: tuple[str, ...]
    paper: str
    paper_note: str
    comparison: str


def _ordered(names: list[str], preferred: tuple[str, ...]) -> list[str]:
    return [n for n in preferred if n in names] + sorted(n for n in names if n not in preferred)


def _instance(registry: Registry[T], name: str) -> T:
    cls = registry.get(name)
    return cls(cls.Config())


def _compare(paper: str, allowed: bool, provider_allowed: bool, method: str) -> str:
    if paper == "yes":
        return "agree" if allowed else "disagree"
    if paper == "no":
        return "agree" if not allowed else "disagree"
    if paper == "partial":  # allowed only through the provider's tuning endpoint
        if method == PROVIDER_METHOD:
            return "agree" if allowed else "disagree"
        return "agree (through provider-tuning)" if not allowed and provider_allowed else "disagree"
    return "n/a"


def table1_cells() -> list[Cell]:
    tiers = {name: _instance(TIERS, name) for name in _ordered(TIERS.names(), TIER_ORDER)}
    methods = {name: _instance(METHODS, name) for name in _ordered(METHODS.names(), METHOD_ORDER)}
    cells = []
    for tier_name, tier in tiers.items():
        provider = methods.get(PROVIDER_METHOD)
        provider_allowed = provider is not None and availability(tier, provider) is None
        for method_name, method in methods.items():
            reason = availability(tier, method)
            paper, note = paper_mark(tier_name, method_name)
            cells.append(Cell(
                tier=tier_name, method=method_name, allowed=reason is None, reason=reason or "",
                needs=tuple(sorted(a.value for a in method.needs)), grants=tuple(sorted(a.value for a in tier.grants)),
                paper=paper, paper_note=note, comparison=_compare(paper, reason is None, provider_allowed, method_name)))
    return cells


def _write_csv(cells: list[Cell], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tier", "method", "allowed", "reason", "needs", "grants", "paper", "paper_note", "comparison"])
        for c in cells:
            writer.writerow([c.tier, c.method, "yes" if c.allowed else "no", c.reason, " ".join(c.needs),
                             " ".join(c.grants), c.paper, c.paper_note, c.comparison])


PAPER_SYMBOL = {"yes": "✓", "no": "✗", "partial": "◐", "not stated": "–", "n/a": "n/a"}


def _markdown(cells: list[Cell]) -> str:
    tiers = list(dict.fromkeys(c.tier for c in cells))
    methods = list(dict.fromkeys(c.method for c in cells))
    grid = {(c.tier, c.method): c for c in cells}
    lines = ["# Table 1: post-training methods each openness tier allows", "",
             "Computed from what each method needs and what each tier grants (`bench.reporting.table1`); in brackets, the seed "
             "paper's mark (✓ yes, ✗ no, ◐ partially, through the provider, – not stated).", "",
             "| method | needs | " + " | ".join(tiers) + " |", "|---|---|" + "---|" * len(tiers)]
    for m in methods:
        marks = [("✓" if grid[t, m].allowed else "✗") + f" ({PAPER_SYMBOL[grid[t, m].paper]})" for t in tiers]
        lines.append(f"| {m} | {', '.join(grid[tiers[0], m].needs)} | " + " | ".join(marks) + " |")
    lines += ["", "## Why not", ""] + [f"- {c.tier} / {c.method}: {c.reason}" for c in cells if not c.allowed]
    lines += ["", "## Against the paper", ""]
    for c in cells:
        if c.comparison != "n/a":
            lines.append(f"- {c.tier} / {c.method}: ours {'allowed' if c.allowed else 'not allowed'}, paper {c.paper}"
                         f"{' (' + c.paper_note + ')' if c.paper_note else ''}: {c.comparison}")
    return "\n".join(lines) + "\n"


def write_table1(out_dir: Path) -> tuple[Path, Path]:
    """Write ``table1.csv`` and ``table1.md`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = table1_cells()
    csv_path, md_path = out_dir / "table1.csv", out_dir / "table1.md"
    _write_csv(cells, csv_path)
    md_path.write_text(_markdown(cells), encoding="utf-8")
    return csv_path, md_path
