"""The relay's network end, in its own process: FLV on stdin, pushed unchanged to an RTMP URL.

FFmpeg's RTMP client connects and publishes inside ``avformat_write_header``, which PyAV calls
holding the GIL and without an interrupt callback: done in the server's process it would freeze
the event loop (and our own RTMP server, when the target is ourselves) for as long as the target
takes to answer. In a child process a slow or dead target costs nothing but this process, which an
alarm ends when opening or a write hangs. The URL comes in ``LIVEVSR_RELAY_URL`` (not argv, which
other users can read); errors go to stderr as one line without the URL.
"""

from __future__ import annotations

import os
import signal
import sys

import av

OPEN_TIMEOUT_S = 15  # connect, handshake, publish
IO_TIMEOUT_S = 30  # no packet forwarded for this long: the target (or the source) is stuck


def main() -> int:
    url = os.environ.pop("LIVEVSR_RELAY_URL", "")
    if not url:
        print("LIVEVSR_RELAY_URL is not set", file=sys.stderr)
        return 2
    try:
        src = av.open(sys.stdin.buffer, "r", format="flv")
        signal.alarm(OPEN_TIMEOUT_S)  # the default action ends the process, even inside C code
        dst = av.open(url, "w", format="flv", options={"flvflags": "no_duration_filesize"})
        streams = {
            s.index: dst.add_stream_from_template(s) for s in src.streams if s.type in ("video", "audio")
        }
        dst.start_encoding()
        for packet in src.demux():
            signal.alarm(IO_TIMEOUT_S)
            out = streams.get(packet.stream.index)
            if packet.dts is None or out is None:
                continue  # demuxer flush packets
            packet.stream = out
            dst.mux(packet)
        signal.alarm(0)
        dst.close()
        return 0
    except av.error.FFmpegError as exc:
        print(exc.strerror or type(exc).__name__, file=sys.stderr)  # strerror: without the URL
        return 1
    except (OSError, ValueError) as exc:
        print(type(exc).__name__, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
