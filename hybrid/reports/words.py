"""Small text helpers findings.md's sections share: p-values, durations, plurals, table cells."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["TIMES", "cell", "duration", "p_value", "plural"]

TIMES = "\u00d7"  # the multiplication sign (ruff flags it as ambiguous when written literally)


def p_value(p: float) -> str:
    return "n/a" if not math.isfinite(p) else ("<0.0001" if p < 1e-4 else f"{p:.2g}")


def duration(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s:.0f} s" if s < 120 else (f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h")


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")
