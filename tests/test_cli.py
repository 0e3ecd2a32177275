"""The command line's own help: what a new user types first."""

from __future__ import annotations

import pytest

from livevsr.__main__ import BENCHES, main


def test_bench_help_lists_every_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    for name in BENCHES:
        assert f"\n  {name} " in out
    assert "glass-to-glass latency" in out  # g2g's summary, from its docstring
    assert "``" not in out


def test_bench_without_a_name_lists_them_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench"]) == 2
    assert "soak" in capsys.readouterr().err


@pytest.mark.parametrize("which", ["g2g", "soak", "audio"])
def test_a_benchmark_help_is_plain_text(which: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", which, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"livevsr bench {which}" in out
    assert "``" not in out
