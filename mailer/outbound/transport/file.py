"""The file transport: each message an .eml file, written atomically (the demo, development, pickup folders)."""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import os
import re
import tempfile
from pathlib import Path

from mailer import files
from mailer.config import Settings
from mailer.outbound.transport import Done, Envelope, SendResult, Take
from mailer.outbound.transport.wire import _normalise_line_endings

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _file_name(key: str, data: bytes) -> str:
    """A file name from the key (or the Message-ID): no separators, no leading dots, bounded length."""
    base = key
    if not base:
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(data)
        base = str(headers.get("Message-ID", "")).strip().strip("<>")
    if not base:
        return hashlib.sha256(data).hexdigest()[:32] + ".eml"
    safe = _UNSAFE.sub("_", base).lstrip(".")[:120]
    if safe != base:
        # Two keys that clean up to the same text must still get different files.
        safe = f"{safe}-{hashlib.sha256(base.encode()).hexdigest()[:12]}"
    return safe + ".eml"


class FileTransport:
    """Writes each message as an .eml file: for the demo, development and relays that pick up files."""

    def __init__(self, outbox_dir: Path) -> None:
        self.outbox_dir = Path(outbox_dir)

    def connect(self) -> FileConnection:
        """A connection; files need no session, so it is cheap."""
        return FileConnection(self)


class FileConnection:
    """Writes messages atomically: a reader never sees half a file."""

    def __init__(self, transport: FileTransport) -> None:
        self._transport = transport

    def send(self, envelope: Envelope) -> SendResult:
        """Write the message to outbox_dir/<name>.eml (replacing an earlier copy of the same message)."""
        folder = self._transport.outbox_dir
        data = envelope.data if envelope.crlf else _normalise_line_endings(envelope.data)
        target = folder / _file_name(envelope.key, data)
        try:
            files.private_dir(folder)
            handle, temporary = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")  # 0600
            try:
                with os.fdopen(handle, "wb") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            _fsync_dir(folder)
        except OSError as exc:
            return SendResult("temporary", None, f"cannot write {target}: {exc.strerror or exc}", "data")
        return SendResult("sent", None, str(target))

    def stream(self, take: Take, done: Done) -> None:
        """Write every message take() hands out, one after the other."""
        while (item := take(True)) is not None:
            done(item[0], self.send(item[1]))

    def close(self) -> None:
        """Nothing to close."""


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; not every platform can open a directory."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def from_settings(settings: Settings) -> FileTransport:
    """.eml files under `delivery.outbox_dir`."""
    return FileTransport(Path(settings.delivery.outbox_dir))
