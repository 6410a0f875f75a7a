"""The seed paper's Table 4 marks, set beside each measured cell, and the agree/disagree rule.

Agrawal, Mertel, Mayer 2025 (arXiv 2505.23593), Table 4, per post-training method: full
fine-tuning, LoRA and adapters: all four defense families (differential privacy, secure aggregation,
homomorphic encryption, robust aggregation) apply; prompt tuning: limited defense applicability;
instruction tuning and RLHF: secure aggregation and HE not fully available, and both the reward and
the policy model need protection. The closed tiers' methods (provider tuning, textual prompts) are
not rows of that table; the paper argues that there the client's data reaches the provider, so we
mark them "provider sees the data" and expect no client-side defense to stop ``mia-provider``.

Comparison rule (per cell, ``compare``):
- our verdict is ``not applicable``, ``resists`` or ``failed`` -> **not measurable** (the reason is ours;
  a curve-backed zero says where the attack stops working, not whether the defense helps);
- our verdict is ``incompatible`` (the runner refused the cell before training) -> **not measurable**,
  whatever the mark: a refusal is one of this bench's own rules applied to this grid (Krum's n >= 2f + 3
  at 4 clients per round, a trimmed mean that would trim nobody, a closed tier with no client-side
  training), not a measurement, so it neither confirms nor contradicts the paper; the matrix shows it
  as refused (⊘);
- our verdict is ``inconclusive`` -> **not measurable** (the seeds cannot tell a mitigation from no
  change), except under "not fully available", where running at all is the evidence;
- paper "applies": on the family's target threats
  (DP: membership inference and inversion; SecAgg/HE: inversion at the server; robust aggregation:
  backdoor and Byzantine) ``mitigates``/``partial`` -> **agree**, ``no effect`` -> **disagree**; other
  threats -> **not measurable** (the paper makes no claim about them);
- paper "limited": ``no effect`` or ``partial`` -> **agree**; ``mitigates`` on a
  target threat -> **disagree**; ``mitigates`` elsewhere -> not measurable;
- paper "not fully available": it ran -> **disagree** (evidence: the verdict and the cost factor);
- closed tiers: ``no effect`` against the provider -> **agree**; otherwise disagree.

Extraction (training-data and PII extraction; issue 20). The paper states no mark for extraction. Its
DP mark says DP mitigates privacy attacks in general, so we read it as applying to extraction too:
extraction is a DP target threat above, and a DP cell with an extraction attack is compared like a
membership-inference cell. ``scrub-pii`` is not one of the paper's defense families: "not stated" at the
open tiers (not measurable), and at the closed tiers the provider-sees-the-data rule (a client-side
scrub does change what reaches the provider, so a scrub that mitigates ``pii-provider`` disagrees).

Protocols (issue 19). The paper's Table 4 compares methods under parameter sharing. A cell of another round
protocol (knowledge distillation through logits, split learning through activations: ``Cell.protocol``)
is marked **not in the paper's Table 4** and its comparison is that same phrase: the paper makes no
claim to agree or disagree with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.api.vocabulary import DefenseFamily
from bench.reporting.leaderboard import PARAMETER_SHARING

if TYPE_CHECKING:  # table4 calls annotate; the cell type is only named here
    from bench.reporting.table4 import Cell

TARGETS = {DefenseFamily.DP: {"mia", "inversion", "malicious-inversion", "extraction"},
           DefenseFamily.SECAGG: {"inversion", "malicious-inversion"}, DefenseFamily.HE: {"inversion", "malicious-inversion"}, DefenseFamily.ROBUST_AGGREGATION: {"backdoor", "byzantine"}}
"""The threats each of the paper's defense families targets (by the family a defense declares, ``Defense.family``)."""
OPEN_FULL = {"fft", "lora", "adapter", "qlora"}
PROMPT = {"prompt-tuning", "prefix-tuning"}
PIPELINES = {"instruction-tuning", "rlhf"}
CLOSED = {"provider-tuning", "textual-prompt"}


NOT_IN_PAPER = "not in the paper's Table 4"
MARKS = ("applies", "limited", "not fully available", "provider sees the data", "not stated", NOT_IN_PAPER)
MARK_SYMBOL = {"applies": "A", "limited": "L", "not fully available": "N", "provider sees the data": "P",
               "not stated": "·", NOT_IN_PAPER: "–"}
"""One letter per paper mark, for the compact matrix (``bench.reporting.matrix4``)."""


def family(cell: Cell) -> str:
    """The family of the cell's defense as the defense declared it (``Defense.family``, stored with its runs
    and carried by ``table4.defense_family``); a combination's families joined by ``+``. Never the name."""
    return cell.defense_family


def paper_mark(method: str, fam: str) -> tuple[str, str]:
    """(mark, note) of the paper's Table 4 for a (method, defense family)."""
    if fam == DefenseFamily.PII_SCRUBBING and method not in CLOSED:
        return "not stated", "PII scrubbing is not among the paper's defense families"
    if method in OPEN_FULL:
        return "applies", "all four defense families apply"
    if method in PROMPT:
        return "limited", "limited defense applicability"
    if method in PIPELINES:
        if fam in (DefenseFamily.SECAGG, DefenseFamily.HE):
            return "not fully available", "secure aggregation and HE not fully available"
        return "applies", "applies; reward and policy models both need protection"
    if method in CLOSED:
        return "provider sees the data", "closed tier: client data reaches the provider (not a Table 4 row)"
    return "not stated", "method not in the paper's Table 4"


def _evidence(cell: Cell) -> str:
    moved = ""
    if cell.success_without is not None and cell.success_with is not None:
        moved = f"{cell.metric} {cell.success_without:.3f} -> {cell.success_with:.3f}, "
    if cell.change_low is not None and cell.change_high is not None:
        moved += f"change {cell.change:+.3f} [{cell.change_low:+.3f}, {cell.change_high:+.3f}], "
    cost = f", cost x{cell.cost_factor:.2f}" if cell.cost_factor else ""
    return f"{moved}{cell.verdict}{cost}"


def compare(cell: Cell) -> tuple[str, str]:
    """(agree | disagree | not measurable, note) for a measured cell."""
    mark, _ = paper_mark(cell.method, family(cell))
    target = cell.role in TARGETS.get(family(cell), set())
    if cell.verdict in ("not applicable", "resists", "failed"):
        return "not measurable", cell.reason
    if cell.verdict == "incompatible":
        return "not measurable", f"refused before training, a rule of this grid rather than a measurement: {cell.reason}"
    if mark == "not fully available":
        return "disagree", f"ran: {_evidence(cell)}"
    if cell.verdict == "inconclusive":
        return "not measurable", f"inconclusive: {cell.reason}"
    if mark == "applies":
        if not target:
            return "not measurable", f"the paper's mark is about {family(cell)} against its target threats"
        return ("agree", _evidence(cell)) if cell.verdict in ("mitigates", "partial") else ("disagree", _evidence(cell))
    if mark == "limited":
        if cell.verdict != "mitigates":
            return "agree", _evidence(cell)
        return ("disagree", _evidence(cell)) if target else ("not measurable", "not a target threat")
    if mark == "provider sees the data":
        return ("agree" if cell.verdict == "no effect" else "disagree"), _evidence(cell)
    return "not measurable", "the paper states nothing for this method"


def annotate(cell: Cell) -> None:
    """Fill a cell's paper columns in place (used as ``table4.build(board, paper=annotate)``)."""
    if cell.protocol not in PARAMETER_SHARING:
        why = f"protocol {cell.protocol}: the paper's Table 4 compares methods under parameter sharing"
        cell.paper, cell.paper_note = NOT_IN_PAPER, why
        cell.comparison, cell.comparison_note = NOT_IN_PAPER, f"{why}; measured: {_evidence(cell)}"
        return
    cell.paper, cell.paper_note = paper_mark(cell.method, family(cell))
    cell.comparison, cell.comparison_note = compare(cell)
