"""A short run of every fuzz target (about a minute in all): the seed corpus, the regression
inputs in it, and a few thousand mutations each. The long runs are ``livevsr fuzz --seconds N``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from livevsr.fuzz import TARGETS, atheris_missing, run_target

# inputs per target after the corpus replay: about 60 s in all on one core of a shared machine
RUNS = {"amf0": 40_000, "chunk": 40_000, "flv": 300_000, "handshake": 25_000, "rtmp_conn": 20_000, "sdp": 10_000}

pytestmark = pytest.mark.skipif(atheris_missing() is not None, reason=str(atheris_missing()))


def test_every_target_has_runs_and_seeds() -> None:
    assert RUNS.keys() == TARGETS.keys()
    for target in TARGETS:
        assert (Path(__file__).parent / f"fuzz_{target}.py").is_file()
        assert any((Path(__file__).parent / "corpus" / target).iterdir()), f"no seeds for {target}"


@pytest.mark.parametrize("target", list(TARGETS))
def test_short_fuzz_run_finds_no_crash(target: str, tmp_path: Path) -> None:
    result = run_target(target, tmp_path, runs=RUNS[target])
    if not result.ok:
        shown = []
        for path in result.crashes:
            data = path.read_bytes()
            shown.append(f"{path.name} ({len(data)} bytes): {data[:200].hex()}")
        detail = "\n".join(shown) or result.output[-3000:]
        pytest.fail(f"fuzz_{target} crashed: {result.summary}\n{detail}", pytrace=False)
    assert result.inputs >= RUNS[target], f"only {result.inputs} inputs ran"
