"""``livevsr bench soak``: hours-of-traffic in minutes, on loopback, with the bicubic engine.

Two RTMP publishers (one steady, one reconnecting every 20 s and changing resolution once), WHEP
viewers joining and leaving every few seconds (one of them reading slowly), and a client throwing
garbage at the RTMP port. Reports frames per stream, drops by cause, RSS and open file descriptors
over time, event-loop lag, and whether the steady stream lost frames other than by policy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

from livevsr.app import App, restrict_ice_addresses
from livevsr.config import (
    Config,
    EngineConfig,
    HTTPConfig,
    PipelineConfig,
    RTMPConfig,
    StreamConfig,
    WebRTCConfig,
)
from livevsr.testing.publisher import publish
from livevsr.testing.whep_client import WhepClient

RECONNECT_EVERY_S = 20.0


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _steady_publisher(url: str, size: tuple[int, int], fps: float, seconds: float) -> int:
    return await asyncio.to_thread(publish, url, size[0], size[1], fps, int(seconds * fps))


async def _churning_publisher(url: str, size: tuple[int, int], fps: float, until: float, log: list) -> int:
    """Publishes in 20 s sessions; the second session runs at a different resolution."""
    sent, session = 0, 0
    while time.monotonic() + 2 < until:
        w, h = size if session != 1 else (size[0] * 3 // 4 // 2 * 2, size[1] * 3 // 4 // 2 * 2)
        seconds = min(RECONNECT_EVERY_S, until - time.monotonic())
        try:
            sent += await asyncio.to_thread(publish, url, w, h, fps, max(1, int(seconds * fps)))
        except Exception as exc:  # noqa: BLE001 - report and go on, like OBS retrying
            log.append(f"churn publisher session {session}: {exc}")
        session += 1
    return sent


async def _viewer_churn(base: str, names: list[str], until: float, stats: dict) -> None:
    rng = random.Random(1)
    while time.monotonic() < until:
        name = rng.choice(names)
        try:
            async with WhepClient(f"{base}/whep/{name}") as viewer:
                stats["joins"] += 1
                stop = time.monotonic() + rng.uniform(2, 5)
                while time.monotonic() < stop:
                    await viewer.recv(timeout=5)
                    stats["frames"] += 1
        except Exception as exc:  # noqa: BLE001
            stats["errors"].append(f"{type(exc).__name__}: {exc}"[:200])
        await asyncio.sleep(rng.uniform(0.5, 2))


async def _slow_viewer(base: str, name: str, until: float, stats: dict) -> None:
    try:
        async with WhepClient(f"{base}/whep/{name}") as viewer:
            while time.monotonic() < until:
                await viewer.recv(timeout=10)
                stats["frames"] += 1
                await asyncio.sleep(0.2)  # reads 5 fps of a 30 fps stream
    except Exception as exc:  # noqa: BLE001
        stats["errors"].append(f"{type(exc).__name__}: {exc}"[:200])


async def _fuzz_client(port: int, until: float, stats: dict) -> None:
    rng = random.Random(2)
    while time.monotonic() < until:
        payload = rng.choice([
            bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4096))),
            b"\x03" + bytes(1536) + bytes(rng.getrandbits(8) for _ in range(2000)),
            b"GET / HTTP/1.1\r\n\r\n",
        ])  # fmt: skip
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(payload)
            await writer.drain()
            await asyncio.sleep(rng.uniform(0, 0.2))
            writer.close()
            stats["connections"] += 1
        except OSError:
            stats["refused"] += 1
        await asyncio.sleep(0.05)


async def _sample(app: App, until: float, samples: list, lags: list) -> None:
    t0 = time.monotonic()
    next_sample = t0
    while time.monotonic() < until:
        before = time.monotonic()
        await asyncio.sleep(0.1)
        lags.append(max(0.0, time.monotonic() - before - 0.1))
        if time.monotonic() >= next_sample:
            counts = {s.name: dict(s.counts) for s in app.manager.streams.values()}
            samples.append(
                {
                    "t_s": round(time.monotonic() - t0, 1),
                    "rss_mb": round(_rss_mb(), 1),
                    "fds": _open_fds(),
                    "encoded": {k: v["encoded"] for k, v in counts.items()},
                }
            )
            next_sample += 10


async def run(minutes: float, size: tuple[int, int], fps: float, policy: str) -> dict:
    config = Config(
        rtmp=RTMPConfig(listen="127.0.0.1:0"),
        http=HTTPConfig(listen="127.0.0.1:0"),
        webrtc=WebRTCConfig(ice_host_addresses=["127.0.0.1"]),
        engine=EngineConfig(name="bicubic"),
        pipeline=PipelineConfig(ring_policy=policy),
        streams=[
            StreamConfig(name="steady", key="soak-steady"),
            StreamConfig(name="churn", key="soak-churn"),
        ],
    )
    restrict_ice_addresses(["127.0.0.1"])
    app = App(config)
    await app.start()
    base = f"http://127.0.0.1:{app.http_port}"
    rtmp = f"rtmp://127.0.0.1:{app.rtmp_port}/live"
    seconds = minutes * 60
    until = time.monotonic() + seconds
    notes: list[str] = []
    viewers = {"joins": 0, "frames": 0, "errors": []}
    slow = {"frames": 0, "errors": []}
    fuzz = {"connections": 0, "refused": 0}
    samples: list[dict] = []
    lags: list[float] = []
    tasks = [
        asyncio.create_task(_steady_publisher(f"{rtmp}/soak-steady", size, fps, seconds)),
        asyncio.create_task(_churning_publisher(f"{rtmp}/soak-churn", size, fps, until, notes)),
        asyncio.create_task(_viewer_churn(base, ["steady", "churn"], until, viewers)),
        asyncio.create_task(_slow_viewer(base, "steady", until, slow)),
        asyncio.create_task(_fuzz_client(app.rtmp_port, until, fuzz)),
        asyncio.create_task(_sample(app, until + 2, samples, lags)),
    ]
    steady_sent, churn_sent = await asyncio.gather(tasks[0], tasks[1])
    await asyncio.gather(*tasks[2:])
    drain_until = time.monotonic() + 120  # let in-flight frames drain (slow machines queue a lot)
    while any(s.sessions_running for s in app.manager.streams.values()) and time.monotonic() < drain_until:
        await asyncio.sleep(0.2)
    streams = {s.name: s.snapshot() for s in app.manager.streams.values()}
    await app.stop()

    steady = streams["steady"]["frames"]
    dropped = steady["dropped"]
    by_policy = {"ring_full", "late"} if policy == "drop" else set()
    unexplained = steady_sent - steady["encoded"] - sum(v for k, v in dropped.items() if k in by_policy)
    after_first_minute = [s for s in samples if s["t_s"] >= 60] or samples
    growth = {
        key: round(
            100 * (after_first_minute[-1][key] - after_first_minute[0][key]) / after_first_minute[0][key], 1
        )
        for key in ("rss_mb", "fds")
    }
    lags.sort()
    return {
        "bench": "soak",
        "minutes": minutes,
        "size": f"{size[0]}x{size[1]}",
        "fps": fps,
        "policy": policy,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "steady": {"published": steady_sent, **steady, "unexplained_loss": unexplained},
        "churn": {"published": churn_sent, **streams["churn"]["frames"]},
        "viewers": {"joins": viewers["joins"], "frames": viewers["frames"], "errors": len(viewers["errors"]),
                    "first_errors": viewers["errors"][:3]},
        "slow_viewer": {"frames": slow["frames"], "errors": slow["errors"][:3]},
        "fuzz": fuzz,
        "event_loop_lag_ms": {"p50": round(1000 * lags[len(lags) // 2], 1),
                              "p99": round(1000 * lags[int(len(lags) * 0.99)], 1)} if lags else None,
        "growth_after_first_minute_pct": growth,
        "samples": samples,
        "notes": notes,
    }  # fmt: skip


def _markdown(result: dict, command: str) -> str:
    s, c = result["steady"], result["churn"]
    rows = [
        f"\n### Soak, {time.strftime('%Y-%m-%d')}: `{command}`\n",
        f"Machine: {result['machine']}, no GPU, engine bicubic, {result['size']} @ {result['fps']} fps in, "
        f"ring policy `{result['policy']}`, {result['minutes']} min.\n",
        "| stream | published | received | encoded | dropped by cause | unexplained loss |",
        "|---|---|---|---|---|---|",
        f"| steady | {s['published']} | {s['received']} | {s['encoded']} | {s['dropped'] or '{}'} | "
        f"{s['unexplained_loss']} |",
        f"| churn (reconnects every {RECONNECT_EVERY_S:.0f} s, one resolution change) | {c['published']} | "
        f"{c['received']} | {c['encoded']} | {c['dropped'] or '{}'} | - |",
        "",
        f"Viewers: {result['viewers']['joins']} joins, {result['viewers']['frames']} frames, "
        f"{result['viewers']['errors']} errors; slow viewer {result['slow_viewer']['frames']} frames. "
        f"Fuzz client: {result['fuzz']['connections']} connections. "
        f"Event-loop lag (ms): {result['event_loop_lag_ms']}. "
        f"Growth after the first minute: {result['growth_after_first_minute_pct']} (%).",
        "",
        "| t (s) | RSS (MB) | open fds |",
        "|---|---|---|",
        *[f"| {x['t_s']} | {x['rss_mb']} | {x['fds']} |" for x in result["samples"]],
        "",
    ]
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="livevsr bench soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--size", default="640x360", help="publisher size WxH (even numbers)")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--policy", choices=("drop", "block"), default="drop")
    parser.add_argument("--out", default="BENCHMARKS.md", help="append the table here ('' to skip)")
    args = parser.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    result = asyncio.run(run(args.minutes, (w, h), args.fps, args.policy))
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}))
    if args.out:
        command = "livevsr bench soak " + " ".join(argv)
        with Path(args.out).open("a") as f:
            f.write(_markdown(result, command.strip()))
    ok = result["steady"]["unexplained_loss"] == 0 and all(
        v <= 5 for v in result["growth_after_first_minute_pct"].values()
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
