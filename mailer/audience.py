"""Contacts, topics, subscriptions, the append-only consent ledger and the suppression list.

Every change of consent writes a ledger row in the same transaction as the state it changes, so the
current state (subscriptions, follow-up consent) can always be explained from the ledger.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailer import access_log, names
from mailer.links import email_hash
from mailer.models import (
    RUNNING,
    BounceEvent,
    ConsentEvent,
    Contact,
    Enrollment,
    OutboxMessage,
    Subscription,
    Suppression,
)
from mailer.text import one_line

log = logging.getLogger("mailer.audience")

FOLLOWUPS = "followups"
# Suppressions a person may lift with their own confirmed action (never staff, never an import).
SELF_LIFTABLE = ("unsubscribed", "erased")
MAX_NAME = 200


class AudienceError(Exception):
    """Bad input about a person (an invalid address, an unknown topic); the message is one line."""


class SuppressedError(AudienceError):
    """Staff tried to (re)subscribe an address that asked not to be mailed or cannot be mailed."""


def topic_purpose(topic: str) -> str:
    return f"topic:{topic}"


def normalize_email(raw: str) -> str:
    """A syntactically valid address, IDNA-checked, no DNS lookups, lower-cased whole.

    The local part is case-sensitive on paper and never in practice; folding it too means an opt-out
    from "Riley.Chen@" also holds against an import of "riley.chen@".
    """
    candidate = (raw or "").strip()
    if not candidate or len(candidate) > 320 or any(ch in candidate for ch in "\r\n\x00"):
        raise AudienceError(f"not a valid email address: {one_line(candidate)[:80]!r}")
    # Imported here: its tables cost 50 ms to import, and a send never needs them.
    from email_validator import EmailNotValidError, validate_email

    try:
        result = validate_email(candidate, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        raise AudienceError(f"not a valid email address: {one_line(candidate)[:80]!r} ({exc})") from None
    return f"{result.local_part.lower()}@{result.domain.lower()}"


def clean_name(name: str | None) -> str:
    """A name that passes mailer.names' rules, normalised; AudienceError ("name: why") otherwise."""
    try:
        return names.check(name)
    except names.NotAName as exc:
        raise AudienceError(f"name: {exc}") from None


def find_contact(session: Session, email: str) -> Contact | None:
    return session.scalar(select(Contact).where(Contact.email == normalize_email(email)))


def get_or_create_contact(session: Session, email: str, name: str | None, now: dt.datetime) -> tuple[Contact, bool]:
    """The contact for this address (created if new); a given name fills an empty one, never overwrites."""
    normalized = normalize_email(email)
    name = clean_name(name)
    contact = session.scalar(select(Contact).where(Contact.email == normalized))
    if contact is not None:
        if name and not contact.name:
            contact.name = name
        return contact, False
    contact = Contact(email=normalized, name=name, created_at=now, link_key=secrets.token_urlsafe(24),
                      followups_consent=False, soft_bounces=0)
    try:
        with session.begin_nested():  # two first sign-ups for one address at once: the loser reads the winner's
            session.add(contact)
            session.flush()
    except IntegrityError:
        existing = session.scalar(select(Contact).where(Contact.email == normalized))
        if existing is None:
            raise
        return existing, False
    return contact, True


@dataclass(frozen=True)
class RequestInfo:
    """Where a consent change came from, when a web request made it."""

    ip: str | None = None
    user_agent: str | None = None


def record_consent(
    session: Session,
    contact: Contact,
    purpose: str,
    action: str,
    *,
    source: str,
    now: dt.datetime,
    wording: str = "",
    request: RequestInfo | None = None,
    published_wording: str | None = None,
) -> ConsentEvent:
    """Append one ledger entry. The ledger is never edited."""
    event = ConsentEvent(
        contact_id=contact.id,
        purpose=purpose,
        action=action,
        source=one_line(source)[:200] or "unknown",
        wording=wording,
        published_wording=published_wording,
        ip=request.ip if request else None,
        user_agent=(request.user_agent or "")[:500] if request else None,
        created_at=now,
    )
    session.add(event)
    session.flush()
    return event


def suppression_for(session: Session, secret: str, contact: Contact | None = None, email: str | None = None) -> Suppression | None:
    """The suppression that applies to this contact or address, if any."""
    if contact is not None:
        row = session.scalar(select(Suppression).where(Suppression.contact_id == contact.id))
        if row is not None:
            return row
        email = contact.email
    if email is None:
        return None
    return session.scalar(select(Suppression).where(Suppression.email_hash == email_hash(secret, normalize_email(email))))


def suppress(
    session: Session, secret: str, contact: Contact, reason: str, now: dt.datetime, detail: str = "",
    evidence_id: int | None = None, *, actor: str = access_log.SYSTEM,
) -> Suppression:
    """Put the contact on the suppression list (idempotent: the first reason stays); the access log says who.

    `evidence_id` is the bounce event (the report or reply) a bounce or complaint suppression stands on.
    """
    row = suppression_for(session, secret, contact)
    if row is not None:
        if row.contact_id is None:
            row.contact_id = contact.id
        return row
    row = Suppression(email_hash=email_hash(secret, contact.email), contact_id=contact.id, reason=reason,
                      detail=one_line(detail)[:500], created_at=now, bounce_event_id=evidence_id)
    session.add(row)
    stop_enrollments(session, contact.id, "suppressed", now)
    session.flush()
    access_log.record(session, actor=actor, action=access_log.SUPPRESSED, now=now, contact_id=contact.id,
                      detail=reason)
    log.info("contact %s suppressed: %s", contact.id, reason)
    return row


def lift_suppression(session: Session, secret: str, contact: Contact) -> None:
    """Only a person's own confirmed sign-up lifts an opt-out (never staff, never an import)."""
    row = suppression_for(session, secret, contact)
    if row is not None and row.reason in SELF_LIFTABLE:
        session.delete(row)
        session.flush()


def _set_subscription(session: Session, contact: Contact, topic: str, status: str, event: ConsentEvent | None,
                      now: dt.datetime) -> Subscription:
    subscription = session.get(Subscription, (contact.id, topic))
    if subscription is None:
        subscription = Subscription(contact_id=contact.id, topic=topic, status=status, updated_at=now,
                                    consent_event_id=event.id if event else None)
        session.add(subscription)
        contact.subscriptions.append(subscription)
    else:
        subscription.status = status
        subscription.updated_at = now
        if event is not None:
            subscription.consent_event_id = event.id
    session.flush()
    return subscription


def check_topic(topics: dict[str, str], topic: str) -> str:
    if topic not in topics:
        raise AudienceError(f"unknown topic {topic!r} (topics: {', '.join(topics)})")
    return topic


def staff_subscribe(
    session: Session,
    secret: str,
    topics: dict[str, str],
    *,
    email: str,
    name: str | None,
    topic_names: list[str],
    source: str,
    now: dt.datetime,
    consented_at: dt.datetime | None = None,
    wording: str = "",
) -> tuple[Contact, list[str]]:
    """Staff add or import: consent was collected elsewhere (the source names where). Returns the topics added.

    A suppressed address is refused: only the person's own confirmed sign-up can undo an opt-out.
    """
    if not source or not source.strip():
        raise AudienceError("a consent source is required (where and how the person agreed)")
    for topic in topic_names:
        check_topic(topics, topic)
    normalized = normalize_email(email)
    if suppression_for(session, secret, email=normalized) is not None:
        raise SuppressedError(f"{normalized} is on the suppression list and cannot be subscribed by staff")
    contact, _ = get_or_create_contact(session, normalized, name, now)
    added = []
    for topic in topic_names:
        current = session.get(Subscription, (contact.id, topic))
        if current is not None and current.status == "active":
            continue
        if current is not None and current.status == "unsubscribed":
            raise SuppressedError(f"{normalized} unsubscribed from {topic!r} and cannot be resubscribed by staff")
        event = record_consent(session, contact, topic_purpose(topic), "granted", source=source,
                               now=consented_at or now, wording=wording)
        _set_subscription(session, contact, topic, "active", event, now)
        added.append(topic)
    return contact, added


def request_subscription(session: Session, contact: Contact, topic: str, *, source: str, wording: str,
                         request: RequestInfo | None, now: dt.datetime) -> Subscription:
    """A web sign-up: the subscription waits, pending, for the confirmation link (double opt-in)."""
    current = session.get(Subscription, (contact.id, topic))
    if current is not None and current.status == "active":
        return current
    event = record_consent(session, contact, topic_purpose(topic), "granted", source=source, wording=wording,
                           request=request, now=now)
    return _set_subscription(session, contact, topic, "pending", event, now)


def confirm_pending(session: Session, secret: str, contact: Contact, *, request: RequestInfo | None,
                    now: dt.datetime) -> list[str]:
    """The person clicked the confirmation link: pending topics become active. Repeating it is harmless."""
    confirmed = []
    for subscription in list(contact.subscriptions):
        if subscription.status != "pending":
            continue
        event = record_consent(session, contact, topic_purpose(subscription.topic), "confirmed",
                               source="double-opt-in-link", request=request, now=now)
        _set_subscription(session, contact, subscription.topic, "active", event, now)
        confirmed.append(subscription.topic)
    if confirmed:
        lift_suppression(session, secret, contact)
    return confirmed


def set_topics(session: Session, contact: Contact, wanted: set[str], *, source: str, request: RequestInfo | None,
               now: dt.datetime) -> tuple[list[str], list[str]]:
    """The preference page: withdraw topics no longer wanted; re-grant a topic the person ticks again.

    Only active/unsubscribed topics change here; a person re-ticking a topic on their own page (reached
    through a link only they have) is their own consent, recorded with the request's details.
    """
    added, removed = [], []
    current = {s.topic: s for s in contact.subscriptions}
    for topic, subscription in current.items():
        if subscription.status in ("active", "pending") and topic not in wanted:
            event = record_consent(session, contact, topic_purpose(topic), "withdrawn", source=source,
                                   request=request, now=now)
            _set_subscription(session, contact, topic, "unsubscribed", event, now)
            removed.append(topic)
    for topic in wanted:
        subscription = current.get(topic)
        if subscription is None or subscription.status == "unsubscribed":
            event = record_consent(session, contact, topic_purpose(topic), "granted", source=source,
                                   request=request, now=now)
            _set_subscription(session, contact, topic, "active", event, now)
            added.append(topic)
    return added, removed


def grant_followups(session: Session, contact: Contact, *, source: str, wording: str, now: dt.datetime,
                    request: RequestInfo | None = None, published_wording: str | None = None) -> ConsentEvent:
    """Consent to follow-ups: `wording` as the form sent it, `published_wording` as the clinic configured it."""
    event = record_consent(session, contact, FOLLOWUPS, "granted", source=source, wording=wording,
                           request=request, now=now, published_wording=published_wording)
    contact.followups_consent = True
    return event


def withdraw_followups(session: Session, contact: Contact, *, source: str, now: dt.datetime,
                       request: RequestInfo | None = None, reason: str = "consent_withdrawn") -> None:
    """No more follow-ups: the ledger says so and every active enrollment stops at once."""
    if contact.followups_consent:
        record_consent(session, contact, FOLLOWUPS, "withdrawn", source=source, request=request, now=now)
    contact.followups_consent = False
    stop_enrollments(session, contact.id, reason, now)


def stop_enrollments(session: Session, contact_id: int, reason: str, now: dt.datetime) -> int:
    result = session.execute(
        update(Enrollment)
        .where(Enrollment.contact_id == contact_id, Enrollment.status.in_(RUNNING))  # paused ones too
        .values(status="stopped", stop_reason=reason, stopped_at=now, next_due_at=None, paused_at=None)
    )
    return result.rowcount or 0


def unsubscribe_all(session: Session, secret: str, contact: Contact, *, source: str, now: dt.datetime,
                    request: RequestInfo | None = None) -> bool:
    """Stop all email: every topic and follow-ups withdrawn, the address suppressed. Repeat-safe.

    Returns True when something changed (False for a repeat).
    """
    changed = False
    for subscription in list(contact.subscriptions):
        if subscription.status in ("active", "pending"):
            event = record_consent(session, contact, topic_purpose(subscription.topic), "withdrawn",
                                   source=source, request=request, now=now)
            _set_subscription(session, contact, subscription.topic, "unsubscribed", event, now)
            changed = True
    if contact.followups_consent:
        changed = True
    withdraw_followups(session, contact, source=source, now=now, request=request, reason="unsubscribed")
    if suppression_for(session, secret, contact) is None:
        suppress(session, secret, contact, "unsubscribed", now, detail=source)
        changed = True
    return changed


def not_me(session: Session, secret: str, contact: Contact, *, now: dt.datetime,
           request: RequestInfo | None = None) -> bool:
    """The address's owner says they never contacted the clinic: everything stops at once (follow-ups
    marked "not_me" for staff, every topic and consent withdrawn on the ledger with the source
    "not-me-link", the address suppressed). Repeat-safe; True when something changed."""
    stopped = stop_enrollments(session, contact.id, "not_me", now)
    changed = unsubscribe_all(session, secret, contact, source="not-me-link", now=now, request=request)
    return bool(stopped) or changed


def erase(session: Session, secret: str, contact: Contact, now: dt.datetime, *, actor: str = access_log.SYSTEM) -> None:
    """Erasure: delete the person and everything about them; keep only a keyed hash so they stay unmailed.

    The access log keeps that the contact id was erased, and by whom (ids only, never the address).
    """
    access_log.record(session, actor=actor, action=access_log.ERASED, now=now, contact_id=contact.id)
    hashed = email_hash(secret, contact.email)
    row = session.scalar(select(Suppression).where(Suppression.email_hash == hashed))
    if row is None:
        session.add(Suppression(email_hash=hashed, contact_id=None, reason="erased", detail="", created_at=now))
    else:
        row.contact_id = None
        row.detail = ""
    stop_enrollments(session, contact.id, "erased", now)
    # The evidence of bounces goes with the person (it quotes servers' words about them).
    session.execute(update(Suppression).where(Suppression.email_hash == hashed).values(bounce_event_id=None))
    session.execute(delete(BounceEvent).where(BounceEvent.contact_id == contact.id))
    # Relay replies often repeat the address; the outbox rows outlive the contact (campaign figures).
    session.execute(update(OutboxMessage).where(OutboxMessage.contact_id == contact.id)
                    .values(last_error=None, message_id=None))
    session.flush()
    session.execute(delete(ConsentEvent).where(ConsentEvent.contact_id == contact.id))
    session.delete(contact)
    session.flush()


def purge_unconfirmed(session: Session, pending_days: int, now: dt.datetime, batch: int = 500) -> int:
    """Delete the people who signed up and never confirmed within `pending_days`, keeping nothing: the
    contact (address, name), its pending subscriptions, its ledger entries (IP, user agent) and the
    confirmation emails' outbox rows. Someone with anything else on file (an inquiry, a confirmed or
    withdrawn topic, follow-up consent) is not touched. Returns how many people were deleted."""
    from sqlalchemy import exists

    from mailer.models import Inquiry

    cutoff = now - dt.timedelta(days=pending_days)
    not_pending = exists().where(Subscription.contact_id == Contact.id, Subscription.status != "pending")
    recent = exists().where(Subscription.contact_id == Contact.id, Subscription.updated_at >= cutoff)
    any_pending = exists().where(Subscription.contact_id == Contact.id)
    other_ties = (exists().where(Inquiry.contact_id == Contact.id)
                  | exists().where(Enrollment.contact_id == Contact.id))
    purged = 0
    while True:
        ids = list(session.scalars(
            select(Contact.id).where(Contact.created_at < cutoff, Contact.followups_consent.is_(False), any_pending,
                                     ~not_pending, ~recent, ~other_ties).order_by(Contact.id).limit(batch)
        ))
        if not ids:
            break
        session.execute(delete(OutboxMessage).where(OutboxMessage.contact_id.in_(ids), OutboxMessage.kind == "confirm")
                        .execution_options(synchronize_session=False))
        session.execute(update(OutboxMessage).where(OutboxMessage.contact_id.in_(ids))
                        .values(last_error=None, message_id=None).execution_options(synchronize_session=False))
        session.execute(delete(ConsentEvent).where(ConsentEvent.contact_id.in_(ids))
                        .execution_options(synchronize_session=False))
        session.execute(delete(Subscription).where(Subscription.contact_id.in_(ids))
                        .execution_options(synchronize_session=False))
        session.execute(delete(Contact).where(Contact.id.in_(ids)).execution_options(synchronize_session=False))
        purged += len(ids)
    if purged:
        log.info("%d unconfirmed sign-ups older than %d days deleted", purged, pending_days)
    return purged


SUBSCRIBER_COLUMNS = ("email", "name", "topics", "consent_source", "consented_at")


def parse_time(value: str, field_name: str) -> dt.datetime:
    """An ISO-8601 time with an offset ("Z" accepted), as aware UTC."""
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise AudienceError(f"{field_name}: not an ISO-8601 time: {value.strip()[:40]!r}") from None
    if parsed.tzinfo is None:
        raise AudienceError(f"{field_name}: the time needs an offset, e.g. 2026-10-01T12:00:00Z")
    return parsed.astimezone(dt.UTC)


def export_contact(session: Session, email: str) -> dict[str, object]:
    """Everything stored about one person (access request): profile, subscriptions, ledger, messages."""
    from mailer.models import Inquiry, Reply

    contact = find_contact(session, email)
    if contact is None:
        raise AudienceError(f"no contact with address {normalize_email(email)}")
    ledger = session.scalars(
        select(ConsentEvent).where(ConsentEvent.contact_id == contact.id).order_by(ConsentEvent.id)
    ).all()
    messages = session.scalars(
        select(OutboxMessage).where(OutboxMessage.contact_id == contact.id).order_by(OutboxMessage.id)
    ).all()
    inquiries = session.scalars(select(Inquiry).where(Inquiry.contact_id == contact.id).order_by(Inquiry.id)).all()
    suppression = session.scalar(select(Suppression).where(Suppression.contact_id == contact.id))
    replies = session.scalars(select(Reply).where(Reply.contact_id == contact.id).order_by(Reply.id)).all()
    bounces = session.scalars(select(BounceEvent).where(BounceEvent.contact_id == contact.id)
                              .order_by(BounceEvent.id)).all()
    return {
        "profile": {"email": contact.email, "name": contact.name, "created_at": contact.created_at.isoformat(),
                    "followups_consent": contact.followups_consent},
        "subscriptions": [{"topic": s.topic, "status": s.status, "since": s.updated_at.isoformat()}
                          for s in contact.subscriptions],
        "suppression": {"reason": suppression.reason, "since": suppression.created_at.isoformat()} if suppression else None,
        "consent_ledger": [
            {"id": e.id, "purpose": e.purpose, "action": e.action, "source": e.source, "wording": e.wording,
             "published_wording": e.published_wording, "ip": e.ip, "user_agent": e.user_agent, "at": e.created_at.isoformat()} for e in ledger
        ],
        "inquiries": [
            {"id": i.id, "received_at": i.received_at.isoformat(), "source": i.source, "consent": i.consent,
             "consent_text": i.consent_text, "message": i.message, "status": i.status, "service": i.service,
             "booked_at": i.booked_at.isoformat() if i.booked_at else None} for i in inquiries
        ],
        # That they replied, and to which message: the words were never kept.
        "replies": [{"received_at": r.received_at.isoformat(), "to_message_id": r.outbox_id} for r in replies],
        "messages": [
            {"id": m.id, "kind": m.kind, "campaign_id": m.campaign_id, "step": m.step, "state": m.state,
             "created_at": m.created_at.isoformat(), "sent_at": m.sent_at.isoformat() if m.sent_at else None,
             "consent_event_id": m.consent_event_id} for m in messages
        ],
        "bounce_reports": [
            {"verdict": b.verdict, "reason": b.reason, "status": b.status, "reply_code": b.reply_code,
             "diagnostic": b.diagnostic, "source": b.source, "report": b.report_key,
             "reported_at": b.report_at.isoformat(), "outbox_id": b.outbox_id} for b in bounces
        ],
    }
