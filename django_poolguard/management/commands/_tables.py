"""The plain-text tables of poolguard's commands: left-aligned columns two spaces apart."""

from __future__ import annotations

from typing import Any

from django_poolguard.escaping import escape_controls


def table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    """The header line and one line per row, each cell padded to its column's widest.

    Cells are escaped: session SQL, user, application and thread names are anyone's text,
    shown but never obeyed by the terminal.
    """
    cells = [headers] + [[escape_controls(str(cell)) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
