"""``livevsr bench audio`` runs the real transcode and writes a row someone can read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from livevsr.bench import audio


def test_bench_audio_writes_its_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "BENCHMARKS.md"
    assert audio.main(["--seconds", "2", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 90 <= result["aac_frames"] <= 2 * 48000 // 1024  # the AAC encoder keeps its last frame
    assert 90 <= result["opus_packets"] <= 101  # 20 ms packets for ~2 s, less the codec's delay
    assert 0 < result["ms_per_aac_frame_p50"] <= result["ms_per_aac_frame_p99"]
    text = out.read_text()
    assert text.startswith("# Benchmarks")
    assert "### WHEP audio: AAC -> Opus transcode per stream" in text
    assert "| `livevsr bench audio --seconds 2 --out " in text
