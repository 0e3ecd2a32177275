"""Logging set-up: text or JSON lines, with secrets masked."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass

# rtmp://host/app/KEY, ?token=..., Bearer ... : never let a secret reach a log line.
_SECRET_PATTERNS = [
    (re.compile(r"(rtmps?://[^/\s]+/[^/\s]+/)[^\s?]+"), r"\1****"),
    (re.compile(r"([?&](?:key|token|pass|password|secret)=)[^&\s]+", re.IGNORECASE), r"\1****"),
    (re.compile(r"(Bearer\s+)\S+", re.IGNORECASE), r"\1****"),
    (re.compile(r"(a=ice-pwd:)\S+"), r"\1****"),
]


def mask_secrets(text: str) -> str:
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


class _MaskingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": mask_secrets(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = mask_secrets(self.formatException(record.exc_info))
        return json.dumps(entry)


def setup_logging(level: str = "info", json_lines: bool = False) -> None:
    handler = logging.StreamHandler()
    if json_lines:
        handler.setFormatter(_JSONFormatter())
    else:
        handler.setFormatter(_MaskingFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter that is not ours to report at info level.
    for noisy in ("aioice", "aiortc", "libav"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@dataclass
class _Burst:
    level: int
    summary: str  # the line that reports how many more there were
    count: int = 0  # events since the last line
    timer: threading.Timer | None = None


class RepeatSummary:
    """Log a repeated event once per source and interval: the first occurrence as it happens, then
    one line per interval saying how many more there were ("... 293 more from 127.0.0.1 in the last
    1 s"), so a client that retries hundreds of times a second costs one line a second, not hundreds.

    Thread-safe: the decode threads report corrupt packets through it too.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 1.0) -> None:
        self._log = logger
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._bursts: dict[tuple[str, str], _Burst] = {}

    def event(self, level: int, kind: str, source: str, first_line: str) -> None:
        """``kind``: what happened, in words ("WHIP publish refused: bad or missing token");
        ``first_line``: the full line logged when this is the first in a while from ``source``."""
        key = (kind, source)
        with self._lock:
            burst = self._bursts.get(key)
            if burst is None:
                self._bursts[key] = _Burst(level, f"{{n}} more from {source} in the last {{s}}: {kind}")
                self._arm(key, self._bursts[key])
            else:
                burst.count += 1
                return
        self._log.log(level, "%s", first_line)

    def _arm(self, key: tuple[str, str], burst: _Burst) -> None:
        burst.timer = threading.Timer(self.interval_s, self._flush, (key,))
        burst.timer.daemon = True
        burst.timer.start()

    def _flush(self, key: tuple[str, str]) -> None:
        with self._lock:
            burst = self._bursts.get(key)
            if burst is None:
                return
            count, burst.count = burst.count, 0
            if count == 0:  # quiet for a whole interval: the next event is logged in full again
                del self._bursts[key]
            else:
                self._arm(key, burst)
        if count:
            line = burst.summary.format(n=count, s=f"{self.interval_s:g} s")
            self._log.log(burst.level, "%s", line)

    def close(self) -> None:
        """Report what is pending now and stop the timers."""
        with self._lock:
            keys = list(self._bursts)
        for key in keys:
            burst = self._bursts.get(key)
            if burst is not None and burst.timer is not None:
                burst.timer.cancel()
            self._flush(key)
            self._bursts.pop(key, None)


class _OneLineBadRequests(logging.Filter):
    """aiohttp logs every malformed request as an ERROR with a traceback quoting the request; a
    stranger's garbage is not our error. Such a record becomes one short warning, summarised per
    address and second."""

    def __init__(self, summary: RepeatSummary) -> None:
        super().__init__()
        self._summary = summary

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        source = _peer_of(record)
        reason = (exc.message or exc.__class__.__name__).splitlines()[0][:80]
        kind = f"malformed HTTP request ({exc.__class__.__name__})"
        self._summary.event(logging.WARNING, kind, source, f"HTTP: {kind} from {source}: {reason}")
        return False


def _peer_of(record: logging.LogRecord) -> str:
    """aiohttp's "Error handling request from %s" record carries the client address as its argument."""
    args = record.args if isinstance(record.args, tuple) else ()
    return str(args[0]) if args and args[0] else "a client"


def quiet_bad_requests(summary: RepeatSummary) -> logging.Filter:
    """Install the one-line filter on aiohttp's server logger; returns it (to remove it again)."""
    flt = _OneLineBadRequests(summary)
    logging.getLogger("aiohttp.server").addFilter(flt)
    return flt
