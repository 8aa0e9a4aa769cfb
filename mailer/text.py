"""One line of text, for a header, a log line or a stored reason: the one helper every wing uses."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def one_line(value: object) -> str:
    """The value as one printable line: bytes decoded (bad UTF-8 replaced), control characters (CR, LF:
    header injection) out, runs of whitespace (folded lines, multi-line replies) made one space."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)
    if not text.isprintable():  # the common case (every relay's "250 OK") skips the regular expression
        text = _CONTROL.sub(" ", text)
    return " ".join(text.split())
