"""``livevsr serve`` as a real process: starts from a config file, answers, exits cleanly on SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def start(tmp_path: Path, extra: str = "") -> tuple[subprocess.Popen, int]:
    config = tmp_path / "config.yaml"
    config.write_text(
        "rtmp:\n  listen: '127.0.0.1:0'\nhttp:\n  listen: '127.0.0.1:0'\n"
        "streams:\n  - name: main\n    key: secret-key-123\n" + extra
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "livevsr", "serve", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    lines = []
    http_port = 0
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"HTTP: viewer and API at http://127\.0\.0\.1:(\d+)/", line)
        if match:
            http_port = int(match.group(1))
        if "RTMP: publish to" in line and http_port:
            return proc, http_port
    proc.kill()
    pytest.fail("server did not start:\n" + "".join(lines))


def signal_and_wait(proc: subprocess.Popen, *signals: signal.Signals) -> str:
    """Send ``signals`` in order and return the server's log once it has exited (killed if it hangs)."""
    try:
        for sig in signals:
            proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return out


def test_serve_answers_and_exits_zero_on_sigterm(tmp_path: Path) -> None:
    proc, port = start(tmp_path)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/streams", timeout=10) as resp:
            streams = json.loads(resp.read())["streams"]
    finally:
        out = signal_and_wait(proc, signal.SIGTERM)
    assert [s["name"] for s in streams] == ["main"]
    assert streams[0]["engine"]["name"] == "bicubic"
    assert "because" in streams[0]["engine"]["reason"]  # auto says why it fell back
    assert proc.returncode == 0, out
    assert "stopping" in out
    assert "secret-key-123" not in out  # keys never reach the log


def test_serve_with_a_bad_config_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("encoder:\n  bitrate: 5\n")
    result = subprocess.run(
        [sys.executable, "-m", "livevsr", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "encoder.bitrate: unknown key" in result.stderr


def test_a_second_signal_exits_at_once(tmp_path: Path) -> None:
    """An operator pressing Ctrl-C twice does not wait for the drain."""
    proc, _ = start(tmp_path)
    # Two different signals: the kernel would merge two pending SIGTERMs into one.
    out = signal_and_wait(proc, signal.SIGTERM, signal.SIGINT)
    assert proc.returncode == 1, out
    assert "second signal: exiting now" in out


@pytest.mark.parametrize("key", ["rtmp.listen", "http.listen"])
def test_a_port_in_use_is_one_error_line_naming_the_address_and_key(tmp_path: Path, key: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        listen = {"rtmp.listen": "127.0.0.1:0", "http.listen": "127.0.0.1:0", key: address}
        config = tmp_path / "config.yaml"
        config.write_text(
            f"rtmp:\n  listen: '{listen['rtmp.listen']}'\nhttp:\n  listen: '{listen['http.listen']}'\n"
            "streams:\n  - name: main\n    key: secret-key-123\n"
        )
        result = subprocess.run(
            [sys.executable, "-m", "livevsr", "serve", "--config", str(config)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("livevsr: error:")]
    assert errors == [f"livevsr: error: {key}: cannot listen on {address}: address already in use; "
                      f"stop what uses it or change {key}"]  # fmt: skip


def test_a_wildcard_listen_logs_addresses_a_publisher_can_type(tmp_path: Path) -> None:
    """0.0.0.0 is where the server binds, not an address OBS can reach: print 127.0.0.1 and the rest."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "rtmp:\n  listen: '0.0.0.0:0'\nhttp:\n  listen: '127.0.0.1:0'\nstreams:\n  - name: main\n    key: k\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "livevsr", "serve", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    line = ""
    try:
        for line in proc.stdout:
            if "RTMP: publish to" in line:
                break
    finally:
        signal_and_wait(proc, signal.SIGTERM)
    assert re.search(r"RTMP: publish to rtmp://127\.0\.0\.1:\d+/live ", line), line
    assert "0.0.0.0" not in line
