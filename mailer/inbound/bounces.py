"""Bounce processing: delivery status notifications, complaints and the bounce mailbox they arrive in.

Reads RFC 3464 delivery status notifications (and their RFC 6533 UTF-8 form), RFC 5965 feedback
reports (spam complaints) and, only when clearly a bounce, the plain-text notices some mail servers
still send. Hard bounces and complaints suppress the address, soft bounces are counted, and automatic
replies ("out of office") are never taken for either.
"""

from __future__ import annotations

import datetime as dt
import email.errors
import email.policy
import email.utils
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, fields
from email.message import Message
from email.parser import HeaderParser
from typing import Literal, Self

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailer import audience
from mailer.config import Settings
from mailer.inbound import mailbox
from mailer.inbound.mailbox import Incoming, Mailbox
from mailer.inbound.reading import (
    first_subpart,
    header,
    is_auto_reply,
    is_from_mail_server,
    own_parts,
    own_text,
    parse,
    part_text,
)
from mailer.models import Contact, OutboxMessage
from mailer.outbound.messages import outbox_id_of
from mailer.publishing.render import one_line as _header_safe

log = logging.getLogger("mailer.bounces")

Kind = Literal["hard", "soft", "complaint"]

_POLICY = email.policy.default
# Enhanced status codes (RFC 3463): class.subject.detail, e.g. 5.1.1 or Exchange's 5.1.10.
_STATUS = re.compile(r"(?<![\w.])([245])\.(\d{1,3})\.(\d{1,3})(?![\w.])")
# A basic SMTP reply code as it appears in a transcript ("550 ..." or "550-..."), not inside a number or price.
_REPLY_550 = re.compile(r"(?<![\w$€£.,])550(?=[ -])")
_MSGID = re.compile(r"<[^<>\s@]+@[^<>\s]+>")
# Where a plain-text bounce starts quoting the returned message: words below it are ours, not the server's.
_QUOTED_COPY = re.compile(
    r"^[ \t]*-{2,}.*?(copy of the (original )?message|below this line|original message|message follows"
    r"|returned message|undelivered message)",
    re.I | re.M,
)
# qmail and some others name each failed recipient on a line of its own: "<someone@example.org>:".
_RECIPIENT_LINE = re.compile(r"^[ \t]*<([^<>\s@]+@[^<>\s]+)>:?[ \t]*$", re.M)
_ADDRESS = re.compile(r"[^\s<>\"'(),;:@\[\]]+@([^\s<>\"'(),;:@\[\]]+)")
_XTEXT_UTF8 = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")

# Persistent failures that are not about the address (RFC 3463): a full mailbox ("persistent transient
# failure" by the RFC's own words), a message too big, a delivery that expired. They count as soft.
_NOT_THE_ADDRESS = frozenset({"2.2", "2.3", "3.4", "4.7"})
# Parts that carry the returned message, or its headers, as a parsed message.
_RETURNED_MESSAGE_TYPES = frozenset({"message/rfc822", "message/global", "message/rfc822-headers",
                                     "message/global-headers"})
# Feedback types that are the recipient objecting to the message (RFC 5965); not-spam, virus,
# auth-failure (DMARC reports) and other are not complaints about us.
_COMPLAINT_TYPES = frozenset({"abuse", "fraud"})

def one_line(text: str) -> str:
    """Control characters out and runs of whitespace (folded header lines) made one space."""
    return " ".join(_header_safe(text).split())


@dataclass(frozen=True)
class Bounce:
    """One recipient's failed delivery, or complaint, as a report describes it."""

    kind: Kind
    recipient: str | None
    status: str = ""
    diagnostic: str = ""
    original_message_id: str | None = None
    # Other addresses the report gives for the same person (Final-Recipient when Original-Recipient was
    # used, the returned message's To): tried in turn when `recipient` matches no contact.
    other_addresses: tuple[str, ...] = ()

    @property
    def detail(self) -> str:
        """Status and diagnostic as one line, for the suppression list and the outbox row.

        Local parts of addresses are masked: servers echo the address in their replies, and the stored
        detail should not keep it (an outbox row outlives its contact's erasure).
        """
        text = one_line(" ".join(part for part in (self.status, self.diagnostic) if part))
        return _ADDRESS.sub(r"*@\1", text)[:480]


# --- reading one message ---------------------------------------------------------------------------


def classify(message: Message) -> Bounce | None:
    """What this message says about a delivery we made: a hard or soft bounce, a complaint, or nothing.

    A report about several recipients gives its first failure here; `classify_all` gives every one.
    """
    found = classify_all(message)
    return found[0] if found else None


def classify_all(message: Message) -> list[Bounce]:
    """Every failed recipient or complaint this message reports; empty for anything else."""
    # Structure first: mail servers mark their reports Auto-Submitted too (Postfix, Exim and Exchange
    # do, as RFC 3834 asks), so a delivery-status or feedback part decides before any auto-reply sign.
    for part in own_parts(message):
        content_type = part.get_content_type()
        if content_type in ("message/delivery-status", "message/global-delivery-status"):
            return _from_delivery_status(message, part)
        if content_type == "message/feedback-report":
            return _from_feedback_report(message, part)
    if is_auto_reply(message):
        return []
    if is_from_mail_server(message):
        return _from_plain_notice(message)
    return []


def _from_delivery_status(message: Message, part: Message) -> list[Bounce]:
    original = _returned_headers(message)
    message_id = _message_id(original)
    returned_to = _single_address(original, "To")
    bounces = []
    for group in _status_groups(part):
        final = _typed_address(header(group, "Final-Recipient"))
        original_recipient = _typed_address(header(group, "Original-Recipient"))
        # Original-Recipient is the address we sent to; Final-Recipient may be an alias it expanded to.
        recipient = original_recipient or final
        if recipient is None:
            continue  # the per-message group, or a recipient group without an address we could use
        action = (header(group, "Action").split() or [""])[0].lower()
        diagnostic = _diagnostic(header(group, "Diagnostic-Code"))
        status = _status(header(group, "Status"), diagnostic)
        kind = _kind(action, status)
        if kind is None:
            log.debug("delivery report with action %r, status %s: not a failure", action, status or "-")
            continue
        others = tuple(dict.fromkeys(a for a in (final, returned_to) if a and a != recipient))
        bounces.append(Bounce(kind, recipient, status, diagnostic, message_id, others))
    return bounces


def _from_feedback_report(message: Message, part: Message) -> list[Bounce]:
    report = first_subpart(part) or HeaderParser(policy=_POLICY).parsestr(part_text(part))
    feedback_type = header(report, "Feedback-Type").strip().lower()
    if feedback_type not in _COMPLAINT_TYPES:
        log.debug("feedback report of type %r: not a complaint", feedback_type)
        return []
    original = _returned_headers(message)
    returned_to = _single_address(original, "To")
    # Many providers redact the recipient; then only the returned Message-ID ties it to us.
    recipient = _single_address(report, "Original-Rcpt-To") or returned_to
    user_agent = one_line(header(report, "User-Agent"))
    diagnostic = f"feedback-type {feedback_type}" + (f" from {user_agent}" if user_agent else "")
    others = (returned_to,) if returned_to and returned_to != recipient else ()
    return [Bounce("complaint", recipient, "", diagnostic, _message_id(original), others)]


def _from_plain_notice(message: Message) -> list[Bounce]:
    """A mail server's notice without a delivery-status part: a bounce only with a permanent failure code."""
    text = own_text(message)
    quoted = _QUOTED_COPY.search(text)
    notice, copy = (text[: quoted.start()], text[quoted.start():]) if quoted else (text, "")
    permanent = [m for m in _STATUS.finditer(notice) if m.group(1) == "5"]
    if permanent:
        status, at = permanent[0].group(0), permanent[0].start()
    elif reply := _REPLY_550.search(notice):
        status, at = "5.0.0", reply.start()
    else:
        return []  # a delay warning or a notice we do not understand: not clearly a bounce
    line_start = notice.rfind("\n", 0, at) + 1
    line_end = notice.find("\n", at)
    diagnostic = one_line(notice[line_start: line_end if line_end >= 0 else None])[:300]
    kind = _kind("failed", status) or "hard"

    original = _returned_headers(message)
    message_id = _message_id(original) or _quoted_message_id(copy)
    recipients = [a for _n, a in email.utils.getaddresses([header(message, "X-Failed-Recipients")]) if "@" in a]
    recipients = recipients or [a for a in [_single_address(original, "To")] if a]
    recipients = recipients or list(dict.fromkeys(_RECIPIENT_LINE.findall(notice)))
    if not recipients:
        return [Bounce(kind, None, status, diagnostic, message_id)]
    return [Bounce(kind, recipient, status, diagnostic, message_id) for recipient in recipients]


def _kind(action: str, status: str) -> Kind | None:
    """hard, soft, or None (not a final failure) for a recipient's Action and Status."""
    status_class = status[:1]
    if action == "failed" or (not action and status_class == "5"):
        if status_class != "5":
            return "soft"  # the relay gave up on a temporary condition (4.x.x), or said nothing clear
        _class, subject, detail = status.split(".")
        # Policy refusals (5.7.x: spam filters, DMARC, blocklists) are about the sender, not the address:
        # suppressing every recipient at a provider because our DKIM broke would be the wrong repair.
        if subject == "7" or f"{subject}.{detail}" in _NOT_THE_ADDRESS:
            return "soft"
        return "hard"
    # delayed: the relay is still trying and will report the outcome; delivered, relayed, expanded: fine.
    return None


def _status(field: str, diagnostic: str) -> str:
    """The Status field's code; a generic X.0.0 is refined by the code in the diagnostic, if any."""
    found = _STATUS.search(field)
    status = found.group(0) if found else ""
    in_diagnostic = _STATUS.search(diagnostic)
    if in_diagnostic and (not status or (status.endswith(".0.0") and in_diagnostic.group(1) == status[0])):
        return in_diagnostic.group(0)
    if not status:
        reply = re.search(r"(?<!\d)([45])\d\d(?=[ -]|$)", diagnostic)
        if reply:
            return f"{reply.group(1)}.0.0"
    return status


def _diagnostic(field: str) -> str:
    """The text of a Diagnostic-Code ("smtp; 550 5.1.1 ..."), on one line."""
    kind, sep, text = field.partition(";")
    return one_line(text if sep else kind)[:400]


def _typed_address(field: str) -> str | None:
    """The address of an "rfc822; someone@example.org" (or RFC 6533 "utf-8; ...") recipient field."""
    address_type, sep, address = field.partition(";")
    if not sep:
        address, address_type = address_type, "rfc822"  # some servers leave the type out
    if address_type.strip().lower() not in ("rfc822", "utf-8"):
        return None
    address = _XTEXT_UTF8.sub(lambda m: chr(int(m.group(1), 16)), address).strip().strip("<>").strip()
    return address if "@" in address and " " not in address else None


def _status_groups(part: Message) -> list[Message]:
    """The field groups of a delivery-status part: per message first, then one per recipient."""
    payload = part.get_payload()
    if part.get_content_type() == "message/delivery-status" and isinstance(payload, list):
        return payload
    # The parser splits only message/delivery-status into groups. The UTF-8 form (RFC 6533) comes as
    # its first group with the others as that group's text; parse those groups the same way.
    first = first_subpart(part)
    if first is None:
        return []
    # As bytes: the text form would have had its UTF-8 replaced as undecodable ASCII.
    raw = first.get_payload(decode=True)
    rest = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
    parser = HeaderParser(policy=_POLICY)
    groups = re.split(r"\n[ \t]*\n", rest.replace("\r\n", "\n"))
    return [first, *(parser.parsestr(group) for group in groups if group.strip())]


def _returned_headers(message: Message) -> Message | None:
    """The headers of the returned message (message/rfc822 or text/rfc822-headers), if the report has them."""
    for part in own_parts(message):
        content_type = part.get_content_type()
        if content_type in _RETURNED_MESSAGE_TYPES:
            return first_subpart(part)
        if content_type == "text/rfc822-headers":
            return HeaderParser(policy=_POLICY).parsestr(part_text(part))
    return None


def _message_id(headers: Message | None) -> str | None:
    found = _MSGID.search(header(headers, "Message-ID")) if headers is not None else None
    return found.group(0) if found else None


def _quoted_message_id(text: str) -> str | None:
    """The Message-ID line of a returned message quoted as text below a plain-text notice."""
    header = re.search(r"^Message-ID:[ \t]*(<[^<>\s@]+@[^<>\s]+>)", text, re.I | re.M)
    return header.group(1) if header else None


def _single_address(headers: Message | None, name: str) -> str | None:
    """The address in a header that names exactly one (ours do), else None: several would be a guess."""
    if headers is None:
        return None
    found = [address for _name, address in email.utils.getaddresses([header(headers, name)]) if "@" in address]
    return found[0] if len(found) == 1 else None


# --- applying bounces to the audience ---------------------------------------------------------------


@dataclass
class BounceReport:
    """What one run found: counts of messages and of what they said."""

    messages: int = 0
    hard: int = 0
    soft: int = 0
    complaints: int = 0
    ignored: int = 0
    unknown_recipient: int = 0
    suppressed: int = 0  # addresses newly put on the suppression list

    def __iadd__(self, other: BounceReport) -> Self:
        for item in fields(self):
            setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))
        return self

    def counts(self) -> dict[str, int]:
        return {item.name: getattr(self, item.name) for item in fields(self)}


def process(session: Session, settings: Settings, messages: Iterable[tuple[str, bytes]],
            now: dt.datetime) -> BounceReport:
    """Apply each message: hard bounces and complaints suppress, soft bounces count up to the limit."""
    report = BounceReport()
    for key, raw in messages:
        report.messages += 1
        try:
            found = classify_all(parse(raw))
        except Exception as exc:  # one malformed message must not stop the whole mailbox
            log.warning("bounce mailbox message %s could not be read (%s); ignored", key, type(exc).__name__)
            report.ignored += 1
            continue
        if not found:
            log.debug("bounce mailbox message %s is not a bounce or complaint; ignored", key)
            report.ignored += 1
            continue
        for bounce in found:
            _apply(session, settings, bounce, now, report, key)
    return report


def _apply(session: Session, settings: Settings, bounce: Bounce, now: dt.datetime,
           report: BounceReport, key: str) -> None:
    contact, row = _resolve(session, settings.secret_key, bounce)
    if contact is None:
        report.unknown_recipient += 1
        log.info("%s in message %s is for no known contact; ignored", _what(bounce), key)
        log.debug("unknown bounce recipient %s (message id %s)", bounce.recipient, bounce.original_message_id)
        return
    if row is not None:
        # The outbox row keeps its state (it was handed over, so "sent" stays true); the error says what
        # happened after, for staff looking at the message.
        row.last_error = f"{_what(bounce)} after sending: {bounce.detail}"[:500]
    secret = settings.secret_key
    if bounce.kind == "hard":
        report.hard += 1
        report.suppressed += _suppress(session, secret, contact, "hard_bounce", now, bounce.detail)
    elif bounce.kind == "complaint":
        report.complaints += 1
        report.suppressed += _suppress(session, secret, contact, "complaint", now, bounce.detail)
    else:
        report.soft += 1
        contact.soft_bounces = (contact.soft_bounces or 0) + 1
        limit = settings.bounces.soft_bounce_limit
        if contact.soft_bounces >= limit:
            detail = f"{contact.soft_bounces} soft bounces; last: {bounce.detail}"
            report.suppressed += _suppress(session, secret, contact, "soft_bounces", now, detail)
    log.info("%s for contact %s (%s)", _what(bounce), contact.id, bounce.status or "no status")


def _what(bounce: Bounce) -> str:
    return "complaint" if bounce.kind == "complaint" else f"{bounce.kind} bounce"


def _suppress(session: Session, secret: str, contact: Contact, reason: str,
              now: dt.datetime, detail: str) -> int:
    """Suppress (stopping follow-ups too); 1 when the address was not suppressed before, else 0."""
    existing = audience.suppression_for(session, secret, contact)
    audience.suppress(session, secret, contact, reason, now, detail=detail)
    return 0 if existing is not None else 1


def _resolve(session: Session, secret: str, bounce: Bounce) -> tuple[Contact | None, OutboxMessage | None]:
    """The contact a bounce is about, and the outbox row it answers when its Message-ID is ours."""
    row = _outbox_row(session, secret, bounce.original_message_id)
    if row is not None and row.contact_id is not None:
        contact = session.get(Contact, row.contact_id)
        if contact is not None:
            return contact, row
    for address in (bounce.recipient, *bounce.other_addresses):
        contact = _contact_by_address(session, address)
        if contact is not None:
            return contact, row
    return None, row


def _outbox_row(session: Session, secret: str, message_id: str | None) -> OutboxMessage | None:
    """Our outbox row for a returned Message-ID (see outbound.messages), found by primary key."""
    outbox_id = outbox_id_of(secret, message_id)
    if outbox_id is None:
        return None
    row = session.get(OutboxMessage, outbox_id)
    return row if row is not None and row.message_id == message_id else None


def _contact_by_address(session: Session, address: str | None) -> Contact | None:
    if not address:
        return None
    try:
        normalized = audience.normalize_email(address)
    except audience.AudienceError:
        return None
    contact = session.scalar(select(Contact).where(Contact.email == normalized))
    if contact is not None:
        return contact
    # Some servers change the case of the local part in their reports; accept that only when one contact fits.
    same = select(Contact).where(func.lower(Contact.email) == normalized.lower()).limit(2)
    matches = session.scalars(same).all()
    return matches[0] if len(matches) == 1 else None


# --- the bounce mailbox -----------------------------------------------------------------------------


def open_source(settings: Settings) -> Mailbox:
    """The configured bounce mailbox, opened: handled maildir messages move to its `.processed` folder,
    handled IMAP messages are flagged seen. A one-line MailboxError naming the key when it is not usable."""
    return mailbox.open_mailbox("bounces", settings.bounces, settings.imap_password,
                                password_env="MAILER_IMAP_PASSWORD", mark="move")


def drain(sessions: sessionmaker[Session], settings: Settings, source: Mailbox, now: dt.datetime,
          batch_size: int = mailbox.BATCH_SIZE) -> BounceReport:
    """Apply every message not handled yet, a batch per transaction (see inbound.mailbox)."""

    def apply(session: Session, batch: list[Incoming]) -> BounceReport:
        return process(session, settings, [(item.key, item.raw) for item in batch], now)

    report = BounceReport()
    for part in mailbox.drain(sessions, source, apply, now, batch_size):
        report += part
    return report
