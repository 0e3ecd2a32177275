"""Logging set-up: text or JSON lines, with secrets masked."""

from __future__ import annotations

import json
import logging
import re
import time

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
