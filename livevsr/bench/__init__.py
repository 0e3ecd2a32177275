"""Benchmarks run as ``livevsr bench NAME``; each module has ``main(argv) -> int``."""

from __future__ import annotations


def help_text(doc: str | None, paragraphs: int | None = None) -> str:
    """A module docstring as argparse help: its first ``paragraphs`` (all by default), without the
    reST ``literal`` markup that reads well in the source and badly in a terminal."""
    text = "\n\n".join((doc or "").strip().split("\n\n")[:paragraphs])
    return text.replace("``", "")
