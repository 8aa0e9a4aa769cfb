"""The shared part of the relay webhooks: what an event means, and applying each event once.

Each relay module reads its own payload into `RelayEvent`s. A bounce's words are judged by the same
rules as a bounce email (classify.judge); the relay's own category (hard, soft, blocked) decides only
where the words tell nothing, because relays call "hard" some refusals of our sender or IP too. Events
are applied through evidence.apply, exactly like a report from the bounce mailbox, and remembered by a
hash of the relay's event id, so a replayed or retried request changes nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Literal

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailer import audience
from mailer.config import Settings
from mailer.inbound import evidence, families
from mailer.inbound.classify import Refusal, judge, reply_code_in
from mailer.inbound.evidence import Evidence, Verdict
from mailer.inbound.notices import one_line
from mailer.models import HandledRelayEvent

log = logging.getLogger("mailer.relays")

Kind = Literal["bounce", "complaint", "unsubscribe", "delivered", "delayed", "ignored"]
Label = Literal["hard", "soft", "blocked"]

# Handled events are remembered this long: longer than any relay retries or any signature stays fresh.
KEPT_FOR = dt.timedelta(days=30)
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_MESSAGE_ID = re.compile(r"<?([^<>\s@]+@[^<>\s]+)>?")
# What the relay's own category means when the words tell nothing: its word, with a reason staff read.
_FALLBACK: dict[str, tuple[str, str]] = {
    "hard": ("address_bad", "relay_hard_bounce"),
    "soft": ("mailbox_unable", "relay_soft_bounce"),
    "blocked": ("not_about_recipient", "blocked"),
}


class Refused(Exception):
    """A request the route answers with an error and nothing changed: `status` is the HTTP code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RelayEvent:
    """One event of a relay's webhook, read but not applied yet.

    `key` identifies the event at the relay (stored only as a hash); `reference` is the relay's id shown
    to staff as evidence (never an address).
    """

    key: str
    kind: Kind
    recipient: str | None = None
    verdict: Verdict | None = None
    occurred_at: dt.datetime | None = None
    reference: str = ""


@dataclass
class RelayReport:
    """What one request held: events by what they did."""

    events: int = 0
    hard: int = 0
    soft: int = 0
    complaints: int = 0
    unsubscribes: int = 0
    not_about_recipient: int = 0
    delivered: int = 0
    delayed: int = 0
    ignored: int = 0
    replayed: int = 0
    unknown_recipient: int = 0
    suppressed: int = 0

    def counts(self) -> dict[str, int]:
        return {item.name: getattr(self, item.name) for item in fields(self)}


def message_id(value: object) -> str | None:
    """A Message-ID as our outbox stores it ("<...@...>"), from a relay's field with or without brackets."""
    found = _MESSAGE_ID.fullmatch(str(value).strip()) if isinstance(value, str) and value.strip() else None
    return f"<{found.group(1)}>" if found else None


def judged(label: Label, recipient: str | None, diagnostic: str, *, status: str = "", reply_code: str = "",
           message_id: str | None = None) -> Verdict:
    """A relay's bounce judged like a bounce email: the words and codes first, the relay's label second.

    A refusal the relay calls soft or blocked never condemns the address unless it carries a permanent
    (5xx) code: it counts as a soft bounce at most.
    """
    text = one_line(diagnostic)
    code = reply_code if re.fullmatch(r"[245]\d\d", reply_code or "") else reply_code_in(text)
    # A relay's hard bounce is the receiving server refusing the recipient, at RCPT TO unless the words say
    # otherwise: without a command, the rules read "unknown recipient" as a content filter's words.
    command = families.command_in(text) or ("RCPT" if label == "hard" else "")
    refusal = Refusal(status=status if _STATUS.fullmatch(status or "") else "", reply_code=code, diagnostic=text,
                      command=command, action="failed",
                      domain=(recipient or "").rpartition("@")[2].lower())
    judgement = judge(refusal)
    verdict, reason = judgement.verdict, judgement.reason
    if verdict == "none" and reason == "auto_reply":
        return Verdict("none", recipient, reason)
    if verdict == "none" or reason in ("", "undetermined"):
        verdict, reason = _FALLBACK[label]
    permanent = (judgement.status or code or "").startswith("5")
    if label != "hard" and verdict == "address_bad" and not permanent:
        verdict = "mailbox_unable"
    return Verdict(verdict, recipient, reason, judgement.status, judgement.reply_code, text, message_id)


def complaint(recipient: str | None, diagnostic: str, message_id: str | None = None) -> Verdict:
    return Verdict("complaint", recipient, "complaint", "", "", one_line(diagnostic), message_id)


def known(recipient: object) -> str | None:
    """An address a relay gives, if it looks like one (relays put placeholders in some test events)."""
    return recipient.strip() if isinstance(recipient, str) and "@" in recipient and len(recipient) <= 320 else None


def epoch(value: object) -> dt.datetime | None:
    """A Unix time (seconds, as a number or a string) as aware UTC, or None."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
        return dt.datetime.fromtimestamp(seconds, dt.UTC) if 0 < seconds < 1e11 else None
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def iso_time(value: object) -> dt.datetime | None:
    """An ISO-8601 time with an offset ("2014-08-01T13:28:10.2735393-04:00", "...Z") as aware UTC, or None."""
    if not isinstance(value, str) or not value:
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip()).replace("Z", "+00:00")  # .NET's 7 fraction digits
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.astimezone(dt.UTC) if parsed.tzinfo is not None else None


def fresh(signed_at: dt.datetime | None, now: dt.datetime, max_age: dt.timedelta) -> bool:
    """A signature's time is neither older than `max_age` nor more than five minutes ahead of our clock."""
    return signed_at is not None and now - max_age <= signed_at <= now + dt.timedelta(minutes=5)


def digest(relay: str, key: str) -> str:
    return hashlib.sha256(f"{relay}\0{key}".encode()).hexdigest()


def seen(session: Session, relay: str, key: str) -> bool:
    return session.get(HandledRelayEvent, (relay, digest(relay, key))) is not None


def claim(session: Session, relay: str, key: str, effect: str, now: dt.datetime) -> HandledRelayEvent | None:
    """Remember an event as handled; None when it was handled before (also by a request a moment ago)."""
    hashed = digest(relay, key)
    if session.get(HandledRelayEvent, (relay, hashed)) is not None:
        return None
    row = HandledRelayEvent(relay=relay, key=hashed, effect=effect, received_at=now)
    try:
        with session.begin_nested():  # the same event in two requests at once: the second one loses here
            session.add(row)
    except IntegrityError:
        return None
    return row


_COUNTER = {"address_bad": "hard", "mailbox_unable": "soft", "complaint": "complaints",
            "not_about_recipient": "not_about_recipient"}


def apply_events(session: Session, settings: Settings, relay: str, events: Iterable[RelayEvent],
                 now: dt.datetime) -> RelayReport:
    """Apply each event not handled before: suppress, count a soft bounce, unsubscribe, or only count."""
    report = RelayReport()
    source = f"relay:{relay}"
    for event in events:
        report.events += 1
        if event.kind in ("ignored", "delayed"):
            setattr(report, event.kind, getattr(report, event.kind) + 1)
            continue
        row = claim(session, relay, event.key, event.kind, now)
        if row is None:
            report.replayed += 1
            continue
        if event.kind == "delivered":
            report.delivered += 1
            continue
        if event.kind == "unsubscribe":
            contact = evidence.contact_by_address(session, event.recipient)
            if contact is None:
                report.unknown_recipient += 1
                row.effect = "unknown_recipient"
                continue
            existing = audience.suppression_for(session, settings.secret_key, contact)
            audience.unsubscribe_all(session, settings.secret_key, contact, source=source, now=now)
            report.unsubscribes += 1
            report.suppressed += int(existing is None)
            log.info("%s: contact %s unsubscribed at the relay", source, contact.id)
            continue
        verdict = event.verdict
        if verdict is None or verdict.verdict == "none":
            report.ignored += 1
            row.effect = "ignored"
            continue
        row.effect = verdict.verdict
        effect = evidence.apply(session, settings, verdict, Evidence(source, event.reference, event.occurred_at), now)
        if effect.contact_id is None:
            report.unknown_recipient += 1
            row.effect = "unknown_recipient"
            continue
        counter = _COUNTER[verdict.verdict]
        setattr(report, counter, getattr(report, counter) + 1)
        report.suppressed += int(effect.suppressed)
    return report


def forget(session: Session, now: dt.datetime) -> int:
    """Housekeeping: events handled longer ago than KEPT_FOR are forgotten."""
    result = session.execute(delete(HandledRelayEvent).where(HandledRelayEvent.received_at < now - KEPT_FOR))
    return result.rowcount or 0

