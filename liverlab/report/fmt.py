"""Number formats shared by the report's sections (NaN and None print as 'n/a')."""

from __future__ import annotations

import math
from typing import Any

NAMES = {"iou": "IoU", "dice": "Dice", "assd": "ASSD", "mssd": "MSSD", "ravd": "RAVD"}


def missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def num(x: Any, nd: int = 4) -> str:
    """``0.8240``."""
    return "n/a" if missing(x) else f"{x:.{nd}f}"


def pval(x: Any) -> str:
    """``0.00926`` (3 significant digits)."""
    return "n/a" if missing(x) else f"{x:.3g}"


def signed(x: Any, points: bool = True) -> str:
    """IoU/Dice points with 2 decimals (``+2.40``); other units with 3 significant digits."""
    if missing(x):
        return "n/a"
    return f"{x:+.2f}" if points else f"{x:+.3g}"


def interval(lo: Any, hi: Any, points: bool = True) -> str:
    """``[+0.98, +3.82]`` (signed: a difference's interval)."""
    return f"[{signed(lo, points)}, {signed(hi, points)}]"


def count(n: int, one: str, many: str) -> str:
    """``1 seed`` / ``5 seeds``."""
    return f"{n} {one if n == 1 else many}"


def cell(text: str) -> str:
    r"""Text for a Markdown table cell: a ``|`` (as in ``|RAVD|``) would end the cell, so it becomes ``\|``."""
    return text.replace("|", "\\|")
