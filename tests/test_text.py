"""mailer.text.one_line: what goes into a header, a log line or a stored reason is one printable line."""

from __future__ import annotations

import pytest

from mailer.text import one_line


@pytest.mark.parametrize(("value", "line"), [
    ("250 2.0.0 Ok: queued as 4Xyz", "250 2.0.0 Ok: queued as 4Xyz"),
    ("550-5.1.1 first line\r\n550 5.1.1 second line", "550-5.1.1 first line 550 5.1.1 second line"),
    ("Name\r\nBcc: everyone@example.com", "Name Bcc: everyone@example.com"),  # header injection
    ("x\x00y\x1bz\x7f", "x y z"),
    ("vertical\x0btab\x0cand feed", "vertical tab and feed"),
    ("  spaced   out\t", "spaced out"),
    ("Zoë\u00a0Müller", "Zoë Müller"),  # a no-break space is whitespace too
    (b"550 \xff not UTF-8", "550 \ufffd not UTF-8"),
    (bytearray(b"421 closing\r\n"), "421 closing"),
    (421, "421"),
])
def test_one_line(value: object, line: str) -> None:
    assert one_line(value) == line
