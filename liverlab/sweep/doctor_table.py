"""The doctor's table: one ``Check`` per row, its verdict, and the rich rendering."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

OK, WARN, FAIL = "OK", "WARN", "FAIL"


@dataclass(frozen=True)
class Check:
    """One line of the doctor's table."""

    check: str
    where: str
    verdict: str
    detail: str

    def line(self) -> str:
        return f"{self.verdict} {self.check} [{self.where}]: {self.detail}"


def render(checks: list[Check], file: Any = None) -> None:
    """The rich table and a one-line verdict."""
    style = {OK: "green", WARN: "yellow", FAIL: "bold red"}
    table = Table(title="liverlab doctor")
    for col in ("check", "where", "verdict", "detail"):
        table.add_column(col, overflow="fold")
    for c in checks:
        table.add_row(c.check, c.where, f"[{style[c.verdict]}]{c.verdict}[/]", c.detail)
    out = file or sys.stdout
    console = Console(file=out, width=None if out.isatty() else 160)
    console.print(table)
    n = {v: sum(c.verdict == v for c in checks) for v in (OK, WARN, FAIL)}
    console.print(f"{n[FAIL]} FAIL, {n[WARN]} WARN, {n[OK]} OK: "
                  + ("[bold red]NOT ready[/]" if n[FAIL] else "[green]ready[/] for `liverlab sweep`"))
