"""The paper's claims as a reader wants them: a verdict state, the deciding read-out in human units, n.

Why here and not in the ablation's stats: the record keeps raw estimates (nats, fractions) so that tools can
read them; the report turns them into what a researcher compares at a glance (perplexity as a ratio,
accuracy and error in percentage points) and groups them by read-out for the forest plot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: How each verdict looks: (css class, short label, what it means). Holds and opposite are decided; the
#: others say why nothing was decided, so they must never look like a result.
STATE_STYLE = {
    "holds": ("holds", "HOLDS", "the claimed effect, Holm-adjusted p < alpha"),
    "opposite": ("opposite", "OPPOSITE", "a significant effect in the other direction"),
    "does not hold": ("nohold", "DOES NOT HOLD", "the CI lies inside the equivalence margin: no effect of that size"),
    "inconclusive": ("inconclusive", "INCONCLUSIVE", "the CI spans zero and the margin: neither shown nor ruled out"),
    "borderline": ("inconclusive", "BORDERLINE", "significant unadjusted, not after Holm"),
    "control not matched": ("unmatched", "CONTROL NOT MATCHED", "the perplexity-matched control failed its check"),
    "n too small": ("small", "N TOO SMALL", "fewer than 10 units: no interval, no verdict"),
    "not run": ("small", "NOT RUN", "the read-out was not part of this run"),
}


@dataclass
class Row:
    """One interval on the forest plot: a claim (or one half of the double dissociation) on one read-out."""

    claim: str
    panel: str  #: the read-out, which fixes the unit: rows share an axis only within a panel
    unit: str
    estimate: float | None
    ci: tuple[float, float] | None
    n: str
    verdict: str


def panel_of(readout: str) -> tuple[str, str, float]:
    """(panel title, axis unit, factor from the record's unit) for a deciding read-out."""
    r = readout.lower()
    if r.startswith("perplexity"):
        return "Perplexity: mean NLL per token", "nats per token", 1.0
    if r.startswith("blimp"):
        return "BLiMP: margin good - bad (summed log-prob)", "nats per pair", 1.0
    if r.startswith("tse"):
        return "TSE: margin good - rival (mean per token)", "nats per token", 1.0
    if r.startswith("mean error"):
        return "Non-grammatical suite: mean error", "percentage points", 100.0
    return readout, "", 1.0


def forest_rows(claims: list[dict[str, Any]]) -> list[Row]:
    """Every claim's deciding interval, the double dissociation as its two halves."""
    rows = []
    for c in claims:
        parts = c.get("halves") or [c]
        for part in parts:
            title, unit, k = panel_of(part.get("readout") or "")
            est, ci = part.get("estimate"), part.get("ci")
            label = c["id"] if part is c else f"{c['id']} ({part['id'].split('_', 1)[1]} half)"
            rows.append(Row(label, title, unit, None if est is None else k * est,
                            None if not ci or ci[0] is None else (k * ci[0], k * ci[1]),
                            f"{part.get('n')} {part.get('units') or c.get('units') or ''}".strip() if part.get("n")
                            else "-", c["verdict"]))
    return rows


def _num(x: float) -> str:
    """Three decimals, or three significant digits for values that would print as +0.000."""
    return f"{x:+.3f}" if abs(x) >= 5e-4 or x == 0 else f"{x:+.2e}"


def human(claim: dict[str, Any]) -> str:
    """The deciding read-out in the units a reader compares: estimate [95% CI], plus accuracy beside a margin."""
    if claim.get("halves"):
        return "; ".join(f"{h['id'].split('_', 1)[1]} half: {human(h)}" for h in claim["halves"])
    est, ci, unit = claim.get("estimate"), claim.get("ci"), claim.get("unit") or ""
    if est is None:
        return "no estimate (" + (claim.get("verdict") or "not run") + ")"
    readout = (claim.get("readout") or "").lower()
    if "fraction" in unit:
        text = f"{100 * est:+.1f} pts"
        return text + (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci and ci[0] is not None else "")
    per = " per token" if readout.startswith(("perplexity", "tse")) else ""
    text = f"{_num(est)} nats{per}" + (f" [{_num(ci[0])}, {_num(ci[1])}]" if ci and ci[0] is not None else "")
    if readout.startswith("perplexity"):
        text += f" = perplexity x{math.exp(est):.3f}"
        if ci and ci[0] is not None:
            text += f" [{math.exp(ci[0]):.3f}, {math.exp(ci[1]):.3f}]"
    acc = (claim.get("also") or {}).get("acc")
    if acc and acc.get("estimate") is not None:
        lo, hi = acc.get("ci") or (None, None)
        text += f"; accuracy {100 * acc['estimate']:+.1f} pts" + (f" [{100 * lo:+.1f}, {100 * hi:+.1f}]" if lo is not None else "")
    quals = qualifiers(claim)
    if DISAGREE in quals:
        text += f" ({DISAGREE})"
    if SMALL in quals:
        text += f"; {SMALL}"
    return text


DISAGREE = "the read-outs disagree in sign"
SMALL = "small: the estimate is inside the declared equivalence margin"


def qualifiers(claim: dict[str, Any]) -> list[str]:
    """What keeps a "holds" from reading as a clean one beside its badge: read-outs that disagree in sign, and an
    estimate inside the declared equivalence margin (decide.py says so in the claim's note, which older records
    carry too, so the note is what is read)."""
    if claim.get("verdict") != "holds":
        return []
    return [q for q, on in ((DISAGREE, claim.get("readouts_disagree_in_sign")),
                            (SMALL, "equivalence margin" in (claim.get("note") or ""))) if on]


def n_text(claim: dict[str, Any]) -> str:
    if claim.get("halves"):
        return " / ".join(f"{h.get('n') or '-'}" for h in claim["halves"])
    return f"{claim.get('n')} {claim.get('units') or ''}".strip() if claim.get("n") else "-"
