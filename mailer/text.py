"""Text helpers every wing uses: one line of text, safe in a header or a log line."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def one_line(value: str) -> str:
    """Header-safe text: no CR, LF or other control characters (no header injection)."""
    return _CONTROL.sub(" ", value).strip()
