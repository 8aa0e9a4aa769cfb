"""Messages: one recipient's bytes built from a message's prepared parts, and Message-IDs, made for every
outbox message and read back from bounces and replies, in one place.

Building is split in two on purpose (premailer costs ~9 ms a message, MIME serialisation ~3 ms): the
publishing side renders the templates once, with placeholders where the personal values go, and makes a
PreparedMessage; `PreparedMessage.build` then fills the placeholders and joins ready-made bytes for each
recipient.

Ours look like `<123.1f2e3d4c5b6a7988@clinic.example>`: the outbox id, then a keyed tag of it. The id
finds the outbox row without an index on the header; the tag (HMAC with the secret key) means a
stranger cannot forge a reference to someone else's message, and a relay that rewrites Message-IDs
simply gives nothing back (callers then match by address).
"""

from __future__ import annotations

import binascii
import datetime as dt
import email.utils
import hmac
import html
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.headerregistry import Address

from mailer.links import keyed
from mailer.text import one_line

_OURS = re.compile(r"<(\d{1,18})\.([0-9a-f]{16})@[^<>\s]+>")
_ANY = re.compile(r"<[^<>\s@]+@[^<>\s]+>")
TAG_LENGTH = 16


def _tag(secret: str, outbox_id: int) -> str:
    mac = keyed(secret).copy()
    mac.update(f"mid:{outbox_id}".encode())
    return mac.hexdigest()[:TAG_LENGTH]


def make_message_id(secret: str, outbox_id: int, domain: str) -> str:
    """The Message-ID of outbox message `outbox_id`, under the sender's domain."""
    return f"<{outbox_id}.{_tag(secret, outbox_id)}@{domain}>"


def outbox_id_of(secret: str, message_id: str | None) -> int | None:
    """The outbox id a Message-ID of ours names, or None (not ours, or its tag does not verify)."""
    found = _OURS.fullmatch((message_id or "").strip())
    if not found:
        return None
    outbox_id = int(found.group(1))
    return outbox_id if hmac.compare_digest(found.group(2), _tag(secret, outbox_id)) else None


def message_ids_in(value: str | None) -> list[str]:
    """The `<...@...>` ids in a Message-ID, In-Reply-To or References header, in order, each once."""
    return list(dict.fromkeys(_ANY.findall(value or "")))


def replied_to(secret: str, in_reply_to: str | None, references: str | None) -> list[int]:
    """The outbox ids of our messages that a reply answers, the most direct first.

    In-Reply-To names the message answered; References lists the thread oldest first, so it is read
    from its end. Clients that drop one of the two still leave the other.
    """
    found: list[int] = []
    for message_id in [*message_ids_in(in_reply_to), *reversed(message_ids_in(references))]:
        outbox_id = outbox_id_of(secret, message_id)
        if outbox_id is not None and outbox_id not in found:
            found.append(outbox_id)
    return found


# --- building a message from prepared parts --------------------------------------------------

# The personal values of one recipient. Templates use them as {{ recipient.<name> }}.
PERSONAL_FIELDS = ("first_name", "preferences_url", "unsubscribe_url", "confirm_url", "not_me_url")
_MARK = "%%MAILER-{}%%"
_MARK_RE = re.compile(r"%%MAILER-([a-z_]+)%%")
_HTML_SPECIAL = re.compile(r"[&<>\"']")  # what html.escape changes; most values (the links) have none


def _segments(rendered: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split a rendering into literal text and the names of the placeholders between them."""
    pieces = _MARK_RE.split(rendered)
    return tuple(pieces[0::2]), tuple(pieces[1::2])


def _qp(text: str) -> bytes:
    """Quoted-printable body with CRLF line ends and lines of at most 76 characters."""
    encoded = binascii.b2a_qp(text.replace("\r\n", "\n").encode("utf-8"), istext=True)
    return encoded.replace(b"\n", b"\r\n")


def format_address(name: str, address: str) -> str:
    """`Name <addr>` with RFC 2047 encoding where the name is not ASCII; CR/LF can never get through."""
    name = one_line(name)
    local, _, domain = address.rpartition("@")
    if not local.isascii():
        # An SMTPUTF8 address: the header is UTF-8 too (RFC 6532); the transport checks the relay offers it.
        return str(Address(display_name=name, addr_spec=address)) if name else address
    try:
        domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError:
        pass
    return email.utils.formataddr((name, f"{local}@{domain}"), charset="utf-8").replace("\n", "\r\n")


@dataclass(frozen=True)
class Part:
    """A body rendering split at its placeholders; `escape` says how values are made safe in it.

    Quoted-printable encodes each line on its own, so the lines without a placeholder (nearly all of
    a newsletter) are encoded once here; per recipient only the few personal lines are (`encoded`).
    """

    literals: tuple[str, ...]
    names: tuple[str, ...]
    escape: bool
    # Encoded runs of static lines (bytes) and, between them, the lines that hold placeholders (Parts).
    chunks: tuple[bytes | Part, ...] = ()

    @classmethod
    def of(cls, rendered: str, *, escape: bool) -> Part:
        literals, names = _segments(rendered)
        unknown = set(names) - set(PERSONAL_FIELDS)
        if unknown:
            raise ValueError(f"unknown placeholder {sorted(unknown)[0]!r}")
        chunks: list[bytes | Part] = []
        static: list[str] = []
        lines = rendered.split("\n")
        for number, line in enumerate(lines):
            line = line if number == len(lines) - 1 else line + "\n"
            if not _MARK_RE.search(line):
                static.append(line)
                continue
            if static:
                chunks.append(_qp("".join(static)))
                static = []
            chunks.append(cls(*_segments(line), escape))
        if static:
            chunks.append(_qp("".join(static)))
        return cls(literals, names, escape, tuple(chunks))

    def fill(self, values: Mapping[str, str]) -> str:
        if len(self.names) == 1:  # the usual line: one placeholder
            value = values.get(self.names[0], "")
            if self.escape and _HTML_SPECIAL.search(value):
                value = html.escape(value)
            return self.literals[0] + value + self.literals[1]
        out = [self.literals[0]]
        for name, literal in zip(self.names, self.literals[1:], strict=True):
            value = values.get(name, "")
            out.append(html.escape(value) if self.escape and _HTML_SPECIAL.search(value) else value)
            out.append(literal)
        return "".join(out)

    def encoded(self, values: Mapping[str, str]) -> bytes:
        """The filled part, quoted-printable with CRLF: the same bytes as _qp(self.fill(values))."""
        return b"".join([chunk if chunk.__class__ is bytes else _qp(chunk.fill(values)) for chunk in self.chunks])


@dataclass(frozen=True)
class Recipient:
    """What `build` needs to know about one person."""

    email: str
    name: str
    values: Mapping[str, str]
    message_id: str


@dataclass
class PreparedMessage:
    """A campaign's message with everything per-campaign done; `build` makes one recipient's bytes."""

    subject: str
    static_headers: bytes
    text: Part
    html: Part
    boundary: str
    list_unsubscribe_mailto: str | None  # mailto: URL, or None when no unsubscribe mailbox / not marketing
    marketing: bool
    _frame: tuple[bytes, bytes, bytes] = field(init=False, repr=False)
    _last_date: tuple[dt.datetime | None, bytes] = field(init=False, repr=False, default=(None, b""))

    def __post_init__(self) -> None:
        b = self.boundary.encode()
        self._frame = (
            b"\r\n--" + b + b'\r\nContent-Type: text/plain; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
            b"\r\n--" + b + b'\r\nContent-Type: text/html; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
            b"\r\n--" + b + b"--\r\n",
        )

    def _date(self, date: dt.datetime) -> bytes:
        """The Date header's value; a batch of recipients shares one date, so it is formatted once."""
        cached = self._last_date  # read once: another thread may replace it meanwhile
        if cached[0] != date:
            cached = self._last_date = (date, email.utils.format_datetime(date).encode())
        return cached[1]

    def build(self, recipient: Recipient, date: dt.datetime) -> bytes:
        """The complete message for one recipient, CRLF line ends, ready for SMTP or a file."""
        values = dict(recipient.values)
        values.setdefault("first_name", "")
        head = [
            b"To: ", format_address(recipient.name, recipient.email).encode("utf-8"), b"\r\n",
            b"Date: ", self._date(date), b"\r\n",
            b"Message-ID: ", recipient.message_id.encode(), b"\r\n",
        ]
        if self.marketing:
            head += [b"List-Unsubscribe: <", values["unsubscribe_url"].encode(), b">"]
            if self.list_unsubscribe_mailto:
                head += [b",\r\n <", self.list_unsubscribe_mailto.encode(), b">"]
            head.append(b"\r\n")
        head.append(self.static_headers)
        plain, rich, end = self._frame
        return b"".join(
            [*head, b"\r\nThis is a multi-part message in MIME format.\r\n", plain, self.text.encoded(values),
             rich, self.html.encoded(values), end]
        )
