"""``livevsr bench audio``: what the WHEP audio path costs, one stream's AAC -> Opus transcode.

    livevsr bench audio               # 60 s of 48 kHz stereo AAC
    livevsr bench audio --seconds 10

The transcode runs on the event loop (publish/whep_audio.py), so its time per AAC frame is time the
loop is not serving anything else. Appends a row to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from livevsr.bench import help_text, report
from livevsr.publish.whep_audio import OpusTranscoder
from livevsr.testing.publisher import AUDIO_FRAME_SAMPLES, AUDIO_RATE, aac_frames


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="livevsr bench audio", description=help_text(__doc__, 1))
    p.add_argument("--seconds", type=float, default=60.0, help="audio to transcode")
    p.add_argument("--out", default=report.BENCHMARKS_MD, help="append a row here ('' to skip)")
    args = p.parse_args(argv)
    asc, frames = aac_frames(round(args.seconds * 1000))
    transcoder = OpusTranscoder(asc, AUDIO_RATE, 2)
    per_frame_ms = []
    packets = 0
    for data, ms in frames:
        t0 = time.perf_counter()
        packets += len(transcoder.transcode(data, ms * 90))
        per_frame_ms.append((time.perf_counter() - t0) * 1000)
    audio_s = len(frames) * AUDIO_FRAME_SAMPLES / AUDIO_RATE
    total_s = sum(per_frame_ms) / 1000
    result = {
        "bench": "audio",
        "aac_frames": len(frames),
        "opus_packets": packets,
        "ms_per_aac_frame_p50": round(float(np.percentile(per_frame_ms, 50)), 3),
        "ms_per_aac_frame_p99": round(float(np.percentile(per_frame_ms, 99)), 3),
        "core_percent": round(100 * total_s / audio_s, 2),
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
    print(json.dumps(result))
    if args.out:
        row = report.table_row([
            report.utc_timestamp(), f"`{' '.join(['livevsr bench audio', *argv])}`",
            result["cpu"], f"{audio_s:.0f} s", result["ms_per_aac_frame_p50"],
            result["ms_per_aac_frame_p99"], f"{result['core_percent']} %",
        ]) + "\n"  # fmt: skip
        columns = ("date", "command", "machine", "audio", "ms per AAC frame p50", "p99", "share of one core")
        report.append_table_row(args.out, "### WHEP audio: AAC -> Opus transcode per stream", columns, row)
    return 0
