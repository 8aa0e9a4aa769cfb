"""Reading an incoming message: parsing, its headers and own text, and the signs of automatic mail.

Bounces and replies both come from every kind of mail software, so nothing here raises on a strange
header or a broken charset: an unreadable header reads as "", an undecodable part as replaced text.
"""

from __future__ import annotations

import email.errors
import email.policy
import email.utils
import re
from collections.abc import Iterator
from email.message import EmailMessage, Message
from email.parser import BytesParser
from typing import cast

POLICY = email.policy.default

# How mail servers sign their own notices (From: MAILER-DAEMON@..., postmaster@...).
DAEMON_NAMES = frozenset({"mailer-daemon", "mailerdaemon", "mail-daemon", "postmaster"})
# Out-of-office and vacation replies, by their subject in the languages clinics' patients write in.
AUTO_REPLY_SUBJECT = re.compile(
    r"out of (the )?office|automatic reply|auto[- ]?reply|autoreply|auto[- ]?response|vacation reply"
    r"|on vacation|away from (the|my) (office|desk)|abwesenheitsnotiz|abwesenheit|automatische antwort"
    r"|r[ée]ponse automatique|absence du bureau|respuesta autom[áa]tica|risposta automatica"
    r"|automatisch antwoord|autosvar|fr[åa]nvaro",
    re.I,
)
AUTO_REPLY_BODY = re.compile(
    r"out of (the )?office|on (vacation|holiday|annual leave|parental leave|leave) (until|from|and|till)"
    r"|away from (the|my) (office|desk)|limited access to (my )?e-?mail|currently away"
    r"|nicht im b[üu]ro|abwesend|absent du bureau|en vacances",
    re.I,
)


def parse(raw: bytes) -> EmailMessage:
    """A message from a mailbox, parsed with the modern email policy."""
    return cast(EmailMessage, BytesParser(policy=POLICY).parsebytes(raw))


def is_auto_reply(message: Message) -> bool:
    """An out-of-office or other automatic answer from a person's mailbox: never a bounce or an unsubscribe."""
    if any(header(message, name) for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder")):
        return True
    if header(message, "Precedence").strip().lower() == "auto_reply":
        return True
    if AUTO_REPLY_SUBJECT.search(header(message, "Subject")):
        return True
    if is_from_mail_server(message):
        # A mail server's own notice is a bounce or nothing; its Auto-Submitted says no more than that.
        return False
    auto_submitted = header(message, "Auto-Submitted").strip().lower()
    if auto_submitted and not auto_submitted.startswith("no"):
        return True
    # Some vacation replies carry no header at all: the person's own words are the only sign.
    return bool(AUTO_REPLY_BODY.search(own_text(message)[:3000]))


def is_from_mail_server(message: Message) -> bool:
    """From MAILER-DAEMON or postmaster, as mail servers sign their notices."""
    _name, address = email.utils.parseaddr(header(message, "From"))
    return address.partition("@")[0].lower() in DAEMON_NAMES


def header(message: Message | None, name: str) -> str:
    """A header's value as text ("" when absent or unreadable: reports come from every kind of software)."""
    if message is None:
        return ""
    try:
        value = message.get(name)
        return "" if value is None else str(value)
    except (LookupError, ValueError, TypeError, AttributeError, email.errors.MessageError):
        return ""


def own_parts(message: Message) -> Iterator[Message]:
    """The message and its parts, without looking inside attached messages (their parts are not the report)."""
    yield message
    if message.get_content_maintype() == "multipart":
        for part in message.get_payload():
            if isinstance(part, Message):
                yield from own_parts(part)


def own_text(message: Message) -> str:
    """The text/plain parts of the message itself (not of attached messages), joined."""
    texts = [part_text(part) for part in own_parts(message)
             if part.get_content_type() == "text/plain" and not part.is_multipart()]
    return "\n".join(texts)


def part_text(part: Message) -> str:
    if isinstance(part, EmailMessage):
        try:
            content = part.get_content()
            if isinstance(content, str):
                return content
        except (LookupError, ValueError, TypeError, AttributeError, email.errors.MessageError):
            pass  # an unknown charset or a broken encoding: decode by hand below
    payload = part.get_payload(decode=True)
    return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""


def first_subpart(part: Message) -> Message | None:
    payload = part.get_payload()
    return payload[0] if isinstance(payload, list) and payload and isinstance(payload[0], Message) else None
