"""Applying verdicts to the audience, with their evidence: suppress, count soft bounces, or only record.

One way in for every source of verdicts (the bounce mailbox, SMTP replies while sending, and relay
webhooks later): a verdict, the evidence it came with (where, which report, when), and `now`.
An address that does not exist and a complaint suppress at once; a mailbox unable to take mail counts
once per clinic-local day, and suppresses when `bounces.soft_bounce_limit` such days fall within
`bounces.soft_bounce_window`; a report that is not about the recipient never touches them but is kept,
so that several of one kind in one campaign show staff that the sending setup has a problem.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from mailer import audience
from mailer.config import Settings, duration
from mailer.inbound.classify import reply_verdict
from mailer.inbound.notices import ADDRESS, one_line
from mailer.models import BounceEvent, Contact, OutboxMessage, Suppression
from mailer.outbound.messages import outbox_id_of

log = logging.getLogger("mailer.bounces")

# Several reports of one such reason in one campaign point at our sending setup, not at the people.
SETUP_REASONS = {
    "blocked": "receiving servers refuse our sending IP address or host (a blocklist, missing reverse DNS)",
    "sender_rejected": "receiving servers refuse our sender address or its domain",
    "authentication": "our messages fail authentication (SPF, DKIM, DMARC) or the relay wants a login",
    "relay_denied": "the relay refuses to pass our messages on",
    "spam": "receiving servers judge our messages to be spam",
    "policy": "receiving servers refuse our messages by policy",
}
SETUP_WARNING_AT = 3
# How a verdict reads for staff (an outbox row's last error, the subscriber page).
WORDS = {"address_bad": "hard bounce", "mailbox_unable": "soft bounce", "complaint": "complaint",
         "not_about_recipient": "refusal not about the address"}
# Suppressions staff may lift: those a delivery problem caused, never a person's own wish.
LIFTABLE = ("hard_bounce", "soft_bounces")


@dataclass(frozen=True)
class Verdict:
    """What a report or reply means for one recipient (see classify), ready to apply."""

    verdict: str  # address_bad | mailbox_unable | not_about_recipient | complaint | none
    recipient: str | None
    reason: str = ""
    status: str = ""
    reply_code: str = ""
    diagnostic: str = ""
    message_id: str | None = None  # the returned message's Message-ID, ours if we sent it
    others: tuple[str, ...] = ()  # other addresses the report gives for the same person

    @property
    def detail(self) -> str:
        """Status and diagnostic as one line with the local parts of addresses masked: servers echo the
        address in their replies, and the stored line should not keep it (it outlives an erasure)."""
        text = one_line(" ".join(part for part in (self.status, self.diagnostic) if part))
        return mask(text)[:480]


@dataclass(frozen=True)
class Evidence:
    """Where a verdict came from: the source ("maildir", "imap", "smtp", "relay:<name>"), the report's key
    there (file name, IMAP UID, outbox row) and the time the report says it happened."""

    source: str
    report_key: str
    report_at: dt.datetime | None = None


@dataclass(frozen=True)
class Effect:
    """What applying one verdict did."""

    contact_id: int | None
    event_id: int | None = None
    suppressed: bool = False  # newly put on the suppression list


def mask(text: str) -> str:
    return ADDRESS.sub(lambda m: "*@" + m.group(0).rpartition("@")[2], text)


def apply(session: Session, settings: Settings, verdict: Verdict, evidence: Evidence, now: dt.datetime) -> Effect:
    """Apply one verdict of a report and record it; the contact is found by the returned Message-ID (ours)
    or by the addresses the report gives."""
    if verdict.verdict == "none":
        return Effect(None)
    contact, row = resolve(session, settings.secret_key, verdict)
    if contact is None and row is None:
        log.info("%s (%s) for no known contact; not recorded", verdict.verdict, verdict.reason or "-")
        return Effect(None)
    if row is not None:
        # The outbox row keeps its state (it was handed over, so "sent" stays true); the error says what
        # happened after, for staff looking at the message.
        row.last_error = f"{WORDS.get(verdict.verdict, verdict.verdict)} after sending: {verdict.detail}"[:500]
    return record(session, settings, verdict, evidence, now, contact,
                  row.id if row is not None else None, row.campaign_id if row is not None else None)


def apply_refusal(session: Session, settings: Settings, *, contact_id: int | None, outbox_id: int,
                  campaign_id: int | None, code: int | None, text: str, stage: str, now: dt.datetime) -> Effect:
    """A permanent SMTP refusal while sending, judged by the same rules as a report of it and applied.

    Only a refusal of the recipient's address suppresses; one of our sender, IP or message is recorded
    (several in a campaign warn staff), and a mailbox unable to take mail counts like a soft bounce.
    """
    command = {"rcpt": "RCPT", "data": "DATA", "mail": "MAIL", "connect": "HELO"}.get(stage, "")
    judgement = reply_verdict(code, text, command)
    if judgement.verdict == "none":
        return Effect(contact_id)
    verdict = Verdict(judgement.verdict, None, judgement.reason, judgement.status, judgement.reply_code, text)
    contact = session.get(Contact, contact_id) if contact_id is not None else None
    return record(session, settings, verdict, Evidence("smtp", str(outbox_id), now), now, contact, outbox_id,
                  campaign_id)


def record(session: Session, settings: Settings, verdict: Verdict, evidence: Evidence, now: dt.datetime,
           contact: Contact | None, outbox_id: int | None = None, campaign_id: int | None = None) -> Effect:
    """Keep the verdict as evidence and act on it: suppress, count a soft bounce, or nothing more."""
    report_at = min(evidence.report_at or now, now)
    event = BounceEvent(
        contact_id=contact.id if contact is not None else None, outbox_id=outbox_id, campaign_id=campaign_id,
        verdict=verdict.verdict, reason=verdict.reason[:40], status=verdict.status[:16],
        reply_code=verdict.reply_code[:3], diagnostic=mask(one_line(verdict.diagnostic))[:1000],
        source=evidence.source[:40], report_key=evidence.report_key[:255], report_at=report_at, counted=True,
        created_at=now)
    session.add(event)
    session.flush()
    if contact is None:
        return Effect(None, event.id)
    suppressed = False
    if verdict.verdict == "address_bad":
        suppressed = _suppress(session, settings, contact, "hard_bounce", now, verdict.detail, event)
    elif verdict.verdict == "complaint":
        suppressed = _suppress(session, settings, contact, "complaint", now, verdict.detail, event)
    elif verdict.verdict == "mailbox_unable":
        days = soft_bounce_days(session, settings, contact, now)
        contact.soft_bounces = days
        if days >= settings.bounces.soft_bounce_limit:
            detail = f"soft bounces on {days} days within {settings.bounces.soft_bounce_window}; last: {verdict.detail}"
            suppressed = _suppress(session, settings, contact, "soft_bounces", now, detail, event)
    log.info("%s (%s) for contact %s", verdict.verdict, verdict.reason or verdict.status or "-", contact.id)
    return Effect(contact.id, event.id, suppressed)


def soft_bounce_days(session: Session, settings: Settings, contact: Contact, now: dt.datetime) -> int:
    """The clinic-local days within the window on which the contact's mailbox was unable to take mail."""
    since = now - duration(settings.bounces.soft_bounce_window)
    times = session.scalars(select(BounceEvent.report_at).where(
        BounceEvent.contact_id == contact.id, BounceEvent.verdict == "mailbox_unable", BounceEvent.counted.is_(True),
        BounceEvent.report_at > since, BounceEvent.report_at <= now))
    return len({at.astimezone(settings.zone).date() for at in times})


def _suppress(session: Session, settings: Settings, contact: Contact, reason: str, now: dt.datetime, detail: str,
              event: BounceEvent) -> bool:
    """Suppress (stopping follow-ups too); True when the address was not suppressed before."""
    existing = audience.suppression_for(session, settings.secret_key, contact)
    audience.suppress(session, settings.secret_key, contact, reason, now, detail=detail, evidence_id=event.id)
    return existing is None


def resolve(session: Session, secret: str, verdict: Verdict) -> tuple[Contact | None, OutboxMessage | None]:
    """The contact a verdict is about, and the outbox row it answers when its Message-ID is ours."""
    row = outbox_row(session, secret, verdict.message_id)
    if row is not None and row.contact_id is not None:
        contact = session.get(Contact, row.contact_id)
        if contact is not None:
            return contact, row
    for address in (verdict.recipient, *verdict.others):
        contact = contact_by_address(session, address)
        if contact is not None:
            return contact, row
    return None, row


def outbox_row(session: Session, secret: str, message_id: str | None) -> OutboxMessage | None:
    """Our outbox row for a returned Message-ID (see outbound.messages), found by primary key."""
    outbox_id = outbox_id_of(secret, message_id)
    if outbox_id is None:
        return None
    row = session.get(OutboxMessage, outbox_id)
    return row if row is not None and row.message_id == message_id else None


def contact_by_address(session: Session, address: str | None) -> Contact | None:
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


# --- what staff see and do --------------------------------------------------------------------------


def events_of(session: Session, contact_id: int, limit: int = 50) -> list[BounceEvent]:
    """A contact's evidence, newest first."""
    return list(session.scalars(select(BounceEvent).where(BounceEvent.contact_id == contact_id)
                                .order_by(BounceEvent.report_at.desc(), BounceEvent.id.desc()).limit(limit)))


class NotLiftable(Exception):
    """Only a suppression a delivery problem caused can be lifted by staff; the message is one line."""


def lift(session: Session, settings: Settings, contact: Contact, *, by: str, now: dt.datetime) -> Suppression:
    """Lift a hard-bounce or soft-bounce suppression (staff found the address works after all).

    Never an unsubscribe, a complaint, a staff suppression or an erasure: those are a person's wish or a
    decision. The ledger records the lifting; the soft bounces counted so far no longer count.
    """
    row = audience.suppression_for(session, settings.secret_key, contact)
    if row is None:
        raise NotLiftable("this address is not suppressed")
    if row.reason not in LIFTABLE:
        raise NotLiftable(f"a suppression for {row.reason.replace('_', ' ')} cannot be lifted by staff")
    audience.record_consent(session, contact, "suppression", "lifted", source=by, now=now,
                            wording=f"{row.reason}: {row.detail}"[:1000])
    session.execute(update(BounceEvent).where(BounceEvent.contact_id == contact.id,
                                              BounceEvent.verdict == "mailbox_unable").values(counted=False))
    contact.soft_bounces = 0
    session.delete(row)
    session.flush()
    log.info("contact %s: %s suppression lifted by %s", contact.id, row.reason, by)
    return row


@dataclass(frozen=True)
class SetupProblem:
    """Several reports in one campaign that blame our sending setup for the same reason."""

    campaign_id: int
    reason: str
    reports: int
    example: str

    @property
    def explanation(self) -> str:
        return SETUP_REASONS.get(self.reason, self.reason)


def setup_problems(session: Session, campaign_ids: list[int] | None = None) -> list[SetupProblem]:
    """Reasons reported at least SETUP_WARNING_AT times in a campaign (of those given, or all)."""
    query = (select(BounceEvent.campaign_id, BounceEvent.reason, func.count(), func.max(BounceEvent.id))
             .where(BounceEvent.verdict == "not_about_recipient", BounceEvent.campaign_id.is_not(None),
                    BounceEvent.reason.in_(list(SETUP_REASONS)))
             .group_by(BounceEvent.campaign_id, BounceEvent.reason)
             .having(func.count() >= SETUP_WARNING_AT))
    if campaign_ids is not None:
        if not campaign_ids:
            return []
        query = query.where(BounceEvent.campaign_id.in_(campaign_ids))
    problems = []
    for campaign_id, reason, count, last_id in session.execute(query).all():
        last = session.get(BounceEvent, last_id)
        example = re.sub(r"\s+", " ", last.diagnostic if last is not None else "")[:200]
        problems.append(SetupProblem(campaign_id, reason, count, example))
    return sorted(problems, key=lambda p: (-p.campaign_id, -p.reports))
