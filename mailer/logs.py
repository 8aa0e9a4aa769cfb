"""Logging set-up: plain lines for people, JSON lines for log collectors; one logger per subsystem."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys

_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
# Anything shaped like an address (a relay's "<jane@example.com>: Recipient address rejected").
_ADDRESS = re.compile(r"[^\s<>()\[\]{}@,;:\"']+@[^\s<>()\[\]{}@,;:\"']+")


def redact_addresses(text: str) -> str:
    """Text for a log line with every email address replaced by "[address]": relays quote the recipient's
    address in their replies, and logs travel further than the database (the outbox row keeps it whole)."""
    return _ADDRESS.sub("[address]", text) if "@" in text else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the record's extra fields (job, counts, duration_s...)."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure(level: str = "warning", log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_mailer", False):
            root.removeHandler(existing)
    handler._mailer = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # Third-party chatter (cssutils via premailer, apscheduler's per-run lines) stays below warnings.
    for noisy in ("cssutils", "CSSUTILS", "apscheduler.executors", "waitress.queue"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
