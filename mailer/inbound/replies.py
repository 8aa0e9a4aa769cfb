"""Replies to our emails: a person's reply pauses their follow-up sequence and tells the front desk.

A message in the replies mailbox is matched to what we sent by its In-Reply-To/References (our
Message-IDs carry a keyed tag, so a reference cannot be forged), and else by its sender's address to a
contact whose sequence is running. Out-of-office answers, delivery reports, mailing-list mail and mail
from strangers change nothing; they are only counted. Of a reply we keep that it came, when, from
whom, and to which message: never a word of it, in the database, a log line or an email.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
from dataclasses import dataclass, fields
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailer import audience
from mailer.config import Settings
from mailer.inbound import mailbox
from mailer.inbound.mailbox import Incoming, Mailbox
from mailer.inbound.reading import DELIVERY_REPORT, automatic_sign, header, parse
from mailer.models import RUNNING, Contact, Enrollment, OutboxMessage, Reply
from mailer.outbound import notices
from mailer.outbound.messages import replied_to
from mailer.sequences import pausing

log = logging.getLogger("mailer.replies")

# A Date header further back than this (or in the future) is a wrong clock: the reply is dated when read.
PLAUSIBLE_AGE = dt.timedelta(days=30)


@dataclass
class ReplyReport:
    """What one reading of the mailbox did; every message is counted once, in `messages` and one other."""

    messages: int = 0
    replies: int = 0  # from a person, in one of our threads or from a contact whose sequence runs
    paused: int = 0  # of those, the ones that paused a running sequence
    auto_replies: int = 0  # out of office, vacation, mailing lists, rules: automatic answers
    reports: int = 0  # delivery reports and other mail-server notices
    unknown_sender: int = 0  # a person we cannot tie to a sequence (or an unreadable message)

    def counts(self) -> dict[str, int]:
        return {item.name: getattr(self, item.name) for item in fields(self)}

    def add(self, other: ReplyReport) -> None:
        for item in fields(self):
            setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))


@dataclass(frozen=True)
class Verdict:
    """Who wrote a message: a person, an auto-responder or a mail server (with the sign that told)."""

    writer: Literal["person", "automatic", "report"]
    sign: str | None = None


def own_domains(settings: Settings) -> frozenset[str]:
    sender = settings.sender
    addresses = (sender.from_email, sender.reply_to, sender.unsubscribe_mailbox)
    return frozenset(address.rpartition("@")[2].lower() for address in addresses if address)


def classify(message: object, domains: frozenset[str] = frozenset()) -> Verdict:
    """A pure verdict on a parsed message (reading.automatic_sign names the signs)."""
    sign = automatic_sign(message, domains)  # type: ignore[arg-type]
    if sign is None:
        return Verdict("person")
    return Verdict("report" if sign == DELIVERY_REPORT else "automatic", sign)


@dataclass(frozen=True)
class Match:
    contact: Contact
    enrollment: Enrollment | None
    outbox_row: OutboxMessage | None
    matched_by: Literal["thread", "address"]


def _running(session: Session, contact_id: int) -> Enrollment | None:
    return session.scalar(select(Enrollment).where(Enrollment.contact_id == contact_id,
                                                   Enrollment.status.in_(RUNNING)).limit(1))


def match(session: Session, settings: Settings, message: object) -> Match | None:
    """The contact (and sequence) a reply belongs to: by our Message-ID in its thread, else by its sender."""
    for outbox_id in replied_to(settings.secret_key, header(message, "In-Reply-To"), header(message, "References")):
        row = session.get(OutboxMessage, outbox_id)
        if row is None or row.contact_id is None:
            continue  # a staff notice, or a message of an erased contact
        contact = session.get(Contact, row.contact_id)
        if contact is None:
            continue
        enrollment = session.get(Enrollment, row.enrollment_id) if row.enrollment_id else None
        return Match(contact, enrollment or _running(session, contact.id), row, "thread")
    _name, sender = email.utils.parseaddr(header(message, "From"))
    try:
        address = audience.normalize_email(sender)
    except audience.AudienceError:
        return None
    if address in {settings.sender.from_email.lower(), settings.sender.reply_to.lower()}:
        return None  # our own mail come back (a loop, or staff writing from the clinic's address)
    contact = session.scalar(select(Contact).where(Contact.email == address))
    if contact is None:
        return None
    enrollment = _running(session, contact.id)
    return Match(contact, enrollment, None, "address") if enrollment is not None else None


def _received_at(message: object, now: dt.datetime) -> dt.datetime:
    """The reply's own Date when it is plausible, else when it was read."""
    try:
        date = email.utils.parsedate_to_datetime(header(message, "Date"))
    except (TypeError, ValueError, IndexError):
        return now
    if date is None or date.tzinfo is None or not now - PLAUSIBLE_AGE <= date <= now:
        return now
    return date.astimezone(dt.UTC)


def _steps_sent(session: Session, enrollment: Enrollment, before: dt.datetime) -> int:
    """How many steps of this sequence had gone out by `before`: the step a reply or booking came after."""
    return int(session.scalar(
        select(func.count(func.distinct(OutboxMessage.step)))
        .where(OutboxMessage.contact_id == enrollment.contact_id, OutboxMessage.enrollment_id == enrollment.id,
               OutboxMessage.kind == "followup", OutboxMessage.state == "sent", OutboxMessage.sent_at <= before)
    ) or 0)


def record_reply(session: Session, settings: Settings, found: Match, received_at: dt.datetime,
                 now: dt.datetime) -> bool:
    """Record that the person replied; pause their sequence if it runs; tell the front desk. True when paused."""
    enrollment = found.enrollment
    after_step = None
    if enrollment is not None:
        row = found.outbox_row
        if row is not None and row.enrollment_id == enrollment.id and row.step is not None:
            after_step = row.step + 1
        else:
            after_step = _steps_sent(session, enrollment, received_at)
    session.add(Reply(contact_id=found.contact.id, enrollment_id=enrollment.id if enrollment else None,
                      outbox_id=found.outbox_row.id if found.outbox_row else None, after_step=after_step,
                      matched_by=found.matched_by, received_at=received_at))
    paused = enrollment is not None and pausing.pause(session, enrollment, now)
    if enrollment is not None and enrollment.inquiry_id is not None:
        notices.record(session, settings, "reply", now, inquiry_id=enrollment.inquiry_id)
    log.info("reply from contact %s (%s%s): %s", found.contact.id, found.matched_by,
             f" to message {found.outbox_row.id}" if found.outbox_row else "",
             "sequence paused" if paused else "no running sequence to pause")
    return paused


def apply(session: Session, settings: Settings, batch: list[Incoming], now: dt.datetime) -> ReplyReport:
    """Handle one batch of messages (in the transaction that also records them as handled)."""
    report = ReplyReport()
    domains = own_domains(settings)
    for item in batch:
        report.messages += 1
        if not item.raw:
            report.unknown_sender += 1  # too large to read: nobody's reply to a follow-up
            continue
        message = parse(item.raw)
        verdict = classify(message, domains)
        if verdict.writer == "report":
            report.reports += 1
            continue
        if verdict.writer == "automatic":
            report.auto_replies += 1
            log.debug("message %s is automatic (%s)", item.key, verdict.sign)
            continue
        found = match(session, settings, message)
        if found is None or (found.enrollment is None and found.outbox_row is not None
                             and found.outbox_row.kind != "followup"):
            # A stranger, or a subscriber answering a newsletter with no sequence of theirs to hold.
            report.unknown_sender += 1
            continue
        report.replies += 1
        report.paused += record_reply(session, settings, found, _received_at(message, now), now)
    return report


def open_source(settings: Settings) -> Mailbox:
    """The replies mailbox config.toml describes ([replies]), opened; MailboxError says what is wrong."""
    return mailbox.open_mailbox("replies", settings.replies, settings.replies_imap_password,
                                password_env="MAILER_REPLIES_IMAP_PASSWORD", mark=settings.replies.mark)


def drain(sessions: sessionmaker[Session], settings: Settings, source: Mailbox, now: dt.datetime) -> ReplyReport:
    """Read every message not handled yet and apply it; each batch is recorded with its effect."""
    report = ReplyReport()
    for part in mailbox.drain(sessions, source, lambda session, batch: apply(session, settings, batch, now), now):
        report.add(part)
    log.info("replies: %s", ", ".join(f"{name} {count}" for name, count in report.counts().items()))
    return report
