"""``livevsr bench soak``: hours-of-traffic in minutes, on loopback, with the bicubic engine.

The server runs as its own ``livevsr serve`` process, so its RSS and fds are measured apart from
the clients. Two RTMP publishers with AAC audio (one steady, one reconnecting every 20 s and changing
resolution once), WHEP viewers with audio joining and leaving every few seconds (one of them reading
slowly), and a client throwing garbage at the RTMP port. Reports frames per stream, drops by cause,
audio received, RSS and open file descriptors over time, event-loop lag, and whether the steady
stream lost frames other than by policy.

Exit code 1 when the steady stream lost frames outside the drop policy, SIGTERM did not exit 0, the
server's RSS once every stream has ended is more than 10 % above its RSS at 60 s under load (a
leak keeps what it took), or open fds grew by more than 5 %.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

from livevsr.app import restrict_ice_addresses
from livevsr.bench import help_text, report
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


async def _steady_publisher(url: str, size: tuple[int, int], fps: float, seconds: float, sound: bool) -> int:
    return await asyncio.to_thread(publish, url, size[0], size[1], fps, int(seconds * fps), audio=sound)


async def _churning_publisher(
    url: str, size: tuple[int, int], fps: float, until: float, log: list, sound: bool
) -> int:
    """Publishes in 20 s sessions; the second session runs at a different resolution."""
    sent, session = 0, 0
    while time.monotonic() + 2 < until:
        w, h = size if session != 1 else (size[0] * 3 // 4 // 2 * 2, size[1] * 3 // 4 // 2 * 2)
        seconds = min(RECONNECT_EVERY_S, until - time.monotonic())
        try:
            sent += await asyncio.to_thread(publish, url, w, h, fps, max(1, int(seconds * fps)), audio=sound)
        except Exception as exc:  # noqa: BLE001 - report and go on, like OBS retrying
            log.append(f"churn publisher session {session}: {exc}")
        session += 1
    return sent


async def _viewer_churn(base: str, names: list[str], until: float, stats: dict, sound: bool) -> None:
    rng = random.Random(1)
    while time.monotonic() < until:
        name = rng.choice(names)
        try:
            async with WhepClient(f"{base}/whep/{name}", audio=sound) as viewer:
                stats["joins"] += 1
                stop = time.monotonic() + rng.uniform(2, 5)
                while time.monotonic() < stop:
                    await viewer.recv(timeout=5)
                    stats["frames"] += 1
                stats["audio_s"] += viewer.audio_samples / 48000
        except Exception as exc:  # noqa: BLE001
            stats["errors"].append(f"{type(exc).__name__}: {exc}"[:200])
        await asyncio.sleep(rng.uniform(0.5, 2))


async def _slow_viewer(base: str, name: str, until: float, stats: dict, sound: bool) -> None:
    try:
        async with WhepClient(f"{base}/whep/{name}", audio=sound) as viewer:
            while time.monotonic() < until:
                await viewer.recv(timeout=10)
                stats["frames"] += 1
                stats["audio_s"] = viewer.audio_samples / 48000
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


class ServerProcess:
    """``livevsr serve`` in its own process, so its memory and fds are measured apart from the clients."""

    def __init__(self, policy: str, workdir: Path) -> None:
        config = workdir / "soak.yaml"
        config.write_text(
            "rtmp:\n  listen: '127.0.0.1:0'\nhttp:\n  listen: '127.0.0.1:0'\n"
            "webrtc:\n  ice_host_addresses: ['127.0.0.1']\nengine:\n  name: bicubic\n"
            f"pipeline:\n  ring_policy: {policy}\n"
            "streams:\n  - name: steady\n    key: soak-steady\n  - name: churn\n    key: soak-churn\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "livevsr", "serve", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.http_port = self.rtmp_port = 0
        self.log_tail: collections.deque[str] = collections.deque(maxlen=50)
        deadline = time.monotonic() + 120
        while not (self.http_port and self.rtmp_port) and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("livevsr serve exited during start-up:\n" + "".join(self.log_tail))
            self.log_tail.append(line)
            if m := re.search(r"HTTP: viewer and API at http://127\.0\.0\.1:(\d+)/", line):
                self.http_port = int(m.group(1))
            if m := re.search(r"RTMP: publish to rtmp://[^:]+:(\d+)/", line):
                self.rtmp_port = int(m.group(1))
        # Keep reading its log so the pipe never fills and blocks the server.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.log_tail.append(line)

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> int:
        """SIGTERM, then the exit code (a clean shutdown under load is part of the soak)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


async def _get_json(url: str) -> dict:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return await resp.json()


async def _sample(server: ServerProcess, base: str, until: float, samples: list) -> None:
    t0 = time.monotonic()
    while time.monotonic() < until:
        streams = (await _get_json(base + "/api/streams"))["streams"]
        samples.append(
            {
                "t_s": round(time.monotonic() - t0, 1),
                "rss_mb": round(server.rss_mb(), 1),
                "fds": server.open_fds(),
                "encoded": {s["name"]: s["frames_total"]["encoded"] for s in streams},
            }
        )
        await asyncio.sleep(10)


async def _drained(base: str, timeout_s: float = 120) -> dict[str, dict]:
    """Stream snapshots once no publisher is live and the counters stopped moving."""
    deadline, last = time.monotonic() + timeout_s, None
    while True:
        streams = {s["name"]: s for s in (await _get_json(base + "/api/streams"))["streams"]}
        totals = {n: s["frames_total"] for n, s in streams.items()}
        counts = {n: t["encoded"] + sum(t["dropped"].values()) for n, t in totals.items()}
        idle = all(s["state"] not in ("live", "starting") for s in streams.values())
        if (idle and counts == last) or time.monotonic() > deadline:
            return streams
        last = counts
        await asyncio.sleep(2)


async def run(minutes: float, size: tuple[int, int], fps: float, policy: str, sound: bool = True) -> dict:
    restrict_ice_addresses(["127.0.0.1"])  # for our WHEP clients; the server gets it from its config
    with tempfile.TemporaryDirectory() as workdir:
        server = ServerProcess(policy, Path(workdir))
        try:
            return await _run_against(server, minutes, size, fps, policy, sound)
        finally:
            if server.proc.poll() is None:
                server.proc.kill()


async def _run_against(
    server: ServerProcess, minutes: float, size: tuple[int, int], fps: float, policy: str, sound: bool
) -> dict:
    base = f"http://127.0.0.1:{server.http_port}"
    rtmp = f"rtmp://127.0.0.1:{server.rtmp_port}/live"
    seconds = minutes * 60
    until = time.monotonic() + seconds
    notes: list[str] = []
    viewers = {"joins": 0, "frames": 0, "audio_s": 0.0, "errors": []}
    slow = {"frames": 0, "audio_s": 0.0, "errors": []}
    fuzz = {"connections": 0, "refused": 0}
    samples: list[dict] = []
    tasks = [
        asyncio.create_task(_steady_publisher(f"{rtmp}/soak-steady", size, fps, seconds, sound)),
        asyncio.create_task(_churning_publisher(f"{rtmp}/soak-churn", size, fps, until, notes, sound)),
        asyncio.create_task(_viewer_churn(base, ["steady", "churn"], until, viewers, sound)),
        asyncio.create_task(_slow_viewer(base, "steady", until, slow, sound)),
        asyncio.create_task(_fuzz_client(server.rtmp_port, until, fuzz)),
        asyncio.create_task(_sample(server, base, until + 2, samples)),
    ]
    steady_sent, churn_sent = await asyncio.gather(tasks[0], tasks[1])
    await asyncio.gather(*tasks[2:])
    lag = (await _get_json(base + "/healthz"))["event_loop_lag_ms"]  # the server's last minute
    streams = await _drained(base)
    await asyncio.sleep(2)
    idle_rss = round(server.rss_mb(), 1)  # everything ended: what the server keeps
    exit_code = server.stop()

    steady = streams["steady"]["frames_total"]
    dropped = steady["dropped"]
    by_policy = {"ring_full", "late"} if policy == "drop" else set()
    unexplained = steady_sent - steady["encoded"] - sum(v for k, v in dropped.items() if k in by_policy)
    # Under load RSS climbs for minutes (x264 and frame pools, allocator arenas) and swings by 100 MB;
    # what matters is that it comes back once the streams end. Samples after the load are left out.
    loaded = [s for s in samples if 60 <= s["t_s"] <= seconds] or samples
    thirds = [loaded[i * len(loaded) // 3 : (i + 1) * len(loaded) // 3] or loaded for i in range(3)]
    rss_by_third = [max(x["rss_mb"] for x in third) for third in thirds]
    growth = {
        "rss_mb": round(100 * (idle_rss - loaded[0]["rss_mb"]) / loaded[0]["rss_mb"], 1),
        "fds": round(100 * (loaded[-1]["fds"] - loaded[0]["fds"]) / loaded[0]["fds"], 1),
    }
    return {
        "bench": "soak",
        "minutes": minutes,
        "size": f"{size[0]}x{size[1]}",
        "fps": fps,
        "policy": policy,
        "sound": sound,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "steady": {"published": steady_sent, **steady, "unexplained_loss": unexplained},
        "churn": {"published": churn_sent, **streams["churn"]["frames_total"]},
        "viewers": {"joins": viewers["joins"], "frames": viewers["frames"], "errors": len(viewers["errors"]),
                    "audio_s": round(viewers["audio_s"], 1), "first_errors": viewers["errors"][:3]},
        "slow_viewer": {"frames": slow["frames"], "audio_s": round(slow["audio_s"], 1),
                        "errors": slow["errors"][:3]},
        "fuzz": fuzz,
        "event_loop_lag_ms": lag,
        "growth_pct": growth,  # rss: idle after the load vs loaded at 60 s; fds: end vs 60 s of the load
        "rss_mb": {"at_60s": loaded[0]["rss_mb"], "max_by_third": rss_by_third, "idle_after": idle_rss},
        "server_exit_code_on_sigterm": exit_code,
        "samples": samples,
        "notes": notes,
    }  # fmt: skip


def _markdown(result: dict, command: str) -> list[str]:
    s, c = result["steady"], result["churn"]
    rss, growth = result["rss_mb"], result["growth_pct"]
    rows = [
        f"\n### Soak, {time.strftime('%Y-%m-%d')}: `{command}`\n",
        f"Machine: {result['machine']}, no GPU, engine bicubic, {result['size']} @ {result['fps']} fps in, "
        f"ring policy `{result['policy']}`, {result['minutes']} min, "
        f"{'with' if result['sound'] else 'without'} sound.\n",
        "| stream | published | received | encoded | dropped by cause | unexplained loss |",
        "|---|---|---|---|---|---|",
        f"| steady | {s['published']} | {s['received']} | {s['encoded']} | {s['dropped'] or '{}'} | "
        f"{s['unexplained_loss']} |",
        f"| churn (reconnects every {RECONNECT_EVERY_S:.0f} s, one resolution change) | {c['published']} | "
        f"{c['received']} | {c['encoded']} | {c['dropped'] or '{}'} | - |",
        "",
        f"Viewers: {result['viewers']['joins']} joins, {result['viewers']['frames']} frames, "
        f"{result['viewers']['audio_s']} s of audio, {result['viewers']['errors']} errors; slow viewer "
        f"{result['slow_viewer']['frames']} frames, {result['slow_viewer']['audio_s']} s of audio. "
        f"Fuzz client: {result['fuzz']['connections']} connections. "
        f"Event-loop lag (ms): {result['event_loop_lag_ms']}. "
        f"RSS (MB): {rss['at_60s']} at 60 s, max per third of the load {rss['max_by_third']}, "
        f"{rss['idle_after']} once every stream ended ({growth['rss_mb']:+} % vs 60 s); "
        f"open fds {growth['fds']:+} %. "
        f"Server exit code on SIGTERM: {result['server_exit_code_on_sigterm']}.",
        "",
        "| t (s) | RSS (MB) | open fds |",
        "|---|---|---|",
        *[f"| {x['t_s']} | {x['rss_mb']} | {x['fds']} |" for x in result["samples"]],
    ]
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="livevsr bench soak", description=help_text(__doc__))
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--size", default="640x360", help="publisher size WxH (even numbers)")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--policy", choices=("drop", "block"), default="drop")
    parser.add_argument("--no-sound", action="store_true", help="publish and watch video only")
    parser.add_argument("--out", default=report.BENCHMARKS_MD, help="append the table here ('' to skip)")
    args = parser.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    result = asyncio.run(run(args.minutes, (w, h), args.fps, args.policy, sound=not args.no_sound))
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}))
    if args.out:
        command = "livevsr bench soak " + " ".join(argv)
        report.append_section(args.out, _markdown(result, command.strip()), title=False)
    ok = (
        result["steady"]["unexplained_loss"] == 0
        and result["server_exit_code_on_sigterm"] == 0
        # Memory comes back once the streams end (allocators keep a little), fds do not pile up.
        and result["growth_pct"]["rss_mb"] <= 10
        and result["growth_pct"]["fds"] <= 5
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
