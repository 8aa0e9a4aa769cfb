"""The bounce mailbox: delivery reports and complaints read, judged per recipient, and applied.

`verdicts` is the pure part: a parsed message in, one verdict per recipient out (see reports for the
formats, classify for the rules). `process` and `drain` apply them through evidence.apply, which
suppresses, counts soft bounces or only records, and keeps every verdict as evidence.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
from collections.abc import Iterable
from dataclasses import dataclass, fields
from email.message import Message
from typing import Self

from sqlalchemy.orm import Session, sessionmaker

from mailer.config import Settings
from mailer.inbound import mailbox, reports
from mailer.inbound.classify import judge
from mailer.inbound.evidence import Evidence, Verdict, apply
from mailer.inbound.mailbox import Incoming, Mailbox
from mailer.inbound.reading import header, parse

log = logging.getLogger("mailer.bounces")

__all__ = ["BounceReport", "Verdict", "drain", "open_source", "process", "verdicts"]


def verdicts(message: Message) -> list[Verdict]:
    """Every recipient this message reports on, with what it means for them; empty for anything else.

    A report on a delivered, relayed or expanded message, an automatic reply or a message that is no
    report at all gives nothing.
    """
    report = reports.read(message)
    if report.kind == "complaint":
        return [Verdict("complaint", f.recipient, "complaint", "", "", f.refusal.diagnostic, f.message_id, f.others)
                for f in report.findings]
    if report.kind != "bounce":
        return []
    found = []
    for finding in report.findings:
        judgement = judge(finding.refusal)
        if judgement.verdict == "none":
            continue
        found.append(Verdict(judgement.verdict, finding.recipient, judgement.reason, judgement.status,
                             judgement.reply_code, finding.refusal.diagnostic, finding.message_id, finding.others))
    return found


def report_date(message: Message) -> dt.datetime | None:
    """When the report says it was written (its Date header), as aware UTC; None when it has no usable one."""
    try:
        parsed = email.utils.parsedate_to_datetime(header(message, "Date"))
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None or parsed.tzinfo is None:
        return None
    return parsed.astimezone(dt.UTC)


# --- applying a mailbox's messages ------------------------------------------------------------------


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
    not_about_recipient: int = 0

    def __iadd__(self, other: BounceReport) -> Self:
        for item in fields(self):
            setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))
        return self

    def counts(self) -> dict[str, int]:
        return {item.name: getattr(self, item.name) for item in fields(self)}


_COUNTER = {"address_bad": "hard", "mailbox_unable": "soft", "complaint": "complaints",
            "not_about_recipient": "not_about_recipient"}


def process(session: Session, settings: Settings, messages: Iterable[tuple[str, bytes]], now: dt.datetime,
            source: str = "maildir") -> BounceReport:
    """Apply each message's verdicts; `source` names the mailbox kind in the evidence ("maildir", "imap")."""
    report = BounceReport()
    for key, raw in messages:
        report.messages += 1
        try:
            message = parse(raw)
            found = verdicts(message)
        except Exception as exc:  # one malformed message must not stop the whole mailbox
            log.warning("bounce mailbox message %s could not be read (%s); ignored", key, type(exc).__name__)
            report.ignored += 1
            continue
        if not found:
            log.debug("bounce mailbox message %s is not a bounce or complaint; ignored", key)
            report.ignored += 1
            continue
        evidence = Evidence(source, key, report_date(message))
        for verdict in found:
            effect = apply(session, settings, verdict, evidence, now)
            if effect.contact_id is None:
                report.unknown_recipient += 1
                log.info("%s in message %s is for no known contact; ignored", verdict.verdict, key)
                log.debug("unknown bounce recipient %s (message id %s)", verdict.recipient, verdict.message_id)
                continue
            counter = _COUNTER[verdict.verdict]
            setattr(report, counter, getattr(report, counter) + 1)
            report.suppressed += int(effect.suppressed)
    return report


# --- the bounce mailbox -----------------------------------------------------------------------------


def open_source(settings: Settings) -> Mailbox:
    """The configured bounce mailbox, opened: handled maildir messages move to its `.processed` folder,
    handled IMAP messages are flagged seen. A one-line MailboxError naming the key when it is not usable."""
    return mailbox.open_mailbox("bounces", settings.bounces, settings.imap_password,
                                password_env="MAILER_IMAP_PASSWORD", mark="move")


def drain(sessions: sessionmaker[Session], settings: Settings, source: Mailbox, now: dt.datetime,
          batch_size: int = mailbox.BATCH_SIZE) -> BounceReport:
    """Apply every message not handled yet, a batch per transaction (see inbound.mailbox)."""
    kind = "imap" if source.where.startswith("IMAP") else "maildir"

    def apply_batch(session: Session, batch: list[Incoming]) -> BounceReport:
        return process(session, settings, [(item.key, item.raw) for item in batch], now, kind)

    report = BounceReport()
    for part in mailbox.drain(sessions, source, apply_batch, now, batch_size):
        report += part
    return report
