"""Writing benchmark runs down: the markdown that the ``livevsr bench`` commands append to BENCHMARKS.md.

One place for the file's name, its title and how a run is added to it, so every bench writes the same
file the same way.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

BENCHMARKS_MD = "BENCHMARKS.md"  # default file the runs are appended to (relative to the working dir)
TITLE = "# Benchmarks\n"  # what a new file starts with


def utc_timestamp() -> str:
    """Now, to the minute: ``2026-11-23 14:00 UTC``."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def table_row(cells: Iterable[object]) -> str:
    """One markdown table row: ``| a | b | c |``."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table_header(columns: Iterable[str]) -> str:
    """A markdown table's header and separator lines, no trailing newline."""
    columns = list(columns)
    return table_row(columns) + "\n|" + "---|" * len(columns)


def append_section(path: Path | str, lines: list[str], *, title: bool = True) -> None:
    """Append a run's section (``lines``, joined with newlines, plus a final newline) to ``path``.

    A file that does not exist yet starts with the ``# Benchmarks`` title, unless ``title`` is False.
    """
    path = Path(path)
    if title and not path.exists():
        lines = [TITLE, *lines]
    with path.open("a") as f:
        f.write("\n".join(lines) + "\n")


def append_table_row(path: Path | str, heading: str, columns: Iterable[str], row: str) -> None:
    """Append ``row`` (one table line, newline included) to the end of ``path``.

    The table's ``heading`` and column header are written first, once: when the file does not
    contain ``heading`` yet. A file that does not exist yet starts with the ``# Benchmarks`` title.
    """
    path = Path(path)
    text = path.read_text() if path.exists() else TITLE
    if heading not in text:
        text += f"\n{heading}\n\n" + table_header(columns) + "\n"
    path.write_text(text + row)
