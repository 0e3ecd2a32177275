"""A private network namespace joined to the host by a veth pair, for WebRTC peers that ignore
loopback (libnice, FFmpeg's WHIP ICE). Needs root and iproute2; ``veth_namespace`` skips otherwise.

The host end gets ``10.77.N.1/30`` and the namespace end ``10.77.N.2/30``, N from the pid so
parallel test runs do not collide. The namespace (and with it both veth ends) is always removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class VethNamespace:
    name: str
    host_address: str  # our server listens here
    peer_address: str  # the publisher's address inside the namespace

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@contextlib.contextmanager
def veth_namespace() -> Iterator[VethNamespace]:
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's ip (Debian: iproute2)")
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace (ip netns add)")
    n = os.getpid() % 250 + 1
    ns = VethNamespace(f"livevsr-test-{os.getpid()}", f"10.77.{n}.1", f"10.77.{n}.2")
    host_if, peer_if = f"lvsr{os.getpid()}h"[-15:], f"lvsr{os.getpid()}n"[-15:]
    # Leftovers of a killed run with the same pid would make "add" fail.
    subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, timeout=10)
    subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=10)
    try:
        _ip("netns", "add", ns.name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a network namespace: {exc.stderr.strip()}")
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", peer_if)
        _ip("link", "set", peer_if, "netns", ns.name)
        _ip("addr", "add", f"{ns.host_address}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", ns.name, "addr", "add", f"{ns.peer_address}/30", "dev", peer_if)
        _ip("-n", ns.name, "link", "set", peer_if, "up")
        _ip("-n", ns.name, "link", "set", "lo", "up")
        yield ns
    finally:
        # Deleting the namespace deletes its veth end, and the host end with it.
        subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=10)
