"""The outbox: idempotent set-based enqueue, and what it holds (counts, what is due, what did not go out).

Claiming, re-checking and recording, the send path's own statements, live in the send store (store.py).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import String, and_, cast, func, literal, not_, select, text, update
from sqlalchemy.orm import Session

from mailer.models import WAITING_SQL, Campaign, Contact, OutboxMessage, Subscription, Suppression

# States a message waits in until it is due; "unknown" waits for its one retry.
WAITING = ("queued", "deferred", "unknown")
FINAL = ("sent", "failed", "skipped")
_T = OutboxMessage.__table__


def _insert(session: Session):  # noqa: ANN202
    """INSERT with ON CONFLICT for the session's dialect, on the Core table (the ORM form drops rowcount)."""
    from sqlalchemy.dialects import postgresql, sqlite  # only where rows are enqueued

    dialect_insert = sqlite.insert if session.get_bind().dialect.name == "sqlite" else postgresql.insert
    # rowcount of an INSERT is only kept when asked for (SQLAlchemy's preserve_rowcount).
    return dialect_insert(OutboxMessage.__table__).execution_options(preserve_rowcount=True)


def _audience(topic: str):  # noqa: ANN202
    """Active subscribers of a topic who are not suppressed: the consent check at enqueue time."""
    suppressed = select(Suppression.id).where(Suppression.contact_id == Subscription.contact_id).exists()
    return (Subscription.topic == topic, Subscription.status == "active", not_(suppressed))


def audience_size(session: Session, topic: str) -> int:
    return int(session.scalar(select(func.count()).select_from(Subscription).where(*_audience(topic))) or 0)


def enqueue_campaign(session: Session, campaign: Campaign, now: dt.datetime) -> int:
    """One row per active, unsuppressed subscriber of the campaign's topic, in one INSERT ... SELECT.

    The dedupe key makes this safe to repeat: a second run inserts nothing.
    """
    rows = select(
        literal(f"c:{campaign.id}:") + cast(Subscription.contact_id, String),
        literal(campaign.kind),
        literal(campaign.id),
        Subscription.contact_id,
        Subscription.consent_event_id,
        literal("queued"),
        literal(0),
        literal(False),
        literal(now, OutboxMessage.created_at.type),
        literal(now, OutboxMessage.due_at.type),
    ).where(*_audience(campaign.topic))
    columns = ["dedupe_key", "kind", "campaign_id", "contact_id", "consent_event_id", "state", "attempts",
               "was_unknown", "created_at", "due_at"]
    statement = _insert(session).from_select(columns, rows).on_conflict_do_nothing(index_elements=["dedupe_key"])
    return session.execute(statement).rowcount or 0


def enqueue_one(
    session: Session,
    *,
    dedupe_key: str,
    kind: str,
    contact_id: int | None,
    consent_event_id: int | None,
    now: dt.datetime,
    due_at: dt.datetime | None = None,
    campaign_id: int | None = None,
    enrollment_id: int | None = None,
    step: int | None = None,
    step_version: int | None = None,
) -> bool:
    """One message (a follow-up step with the version of its wording, a confirmation, a staff notice: no
    contact); False when its dedupe key already exists."""
    statement = (
        _insert(session)
        .values(dedupe_key=dedupe_key, kind=kind, contact_id=contact_id, consent_event_id=consent_event_id,
                campaign_id=campaign_id, enrollment_id=enrollment_id, step=step, step_version=step_version,
                state="queued", attempts=0, was_unknown=False, created_at=now, due_at=due_at or now)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
    )
    return bool(session.execute(statement).rowcount)


def reclaim_expired(session: Session, now: dt.datetime) -> int:
    """Rows whose worker died (its lease ran out) wait again; they were never marked sent."""
    result = session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.state == "sending", OutboxMessage.lease_until < now)
        .values(state="queued", lease_until=None, claimed_by=None)
    )
    return result.rowcount or 0


def counts(session: Session, campaign_id: int | None = None) -> dict[str, int]:
    """Rows per state (every state present, zeros included)."""
    query = select(OutboxMessage.state, func.count()).group_by(OutboxMessage.state)
    if campaign_id is not None:
        query = query.where(OutboxMessage.campaign_id == campaign_id)
    found = dict(session.execute(query).all())
    return {state: int(found.get(state, 0)) for state in
            ("queued", "sending", "deferred", "unknown", "sent", "failed", "skipped")}


def due_count(session: Session, now: dt.datetime, at_most: int | None = None) -> int:
    """How many messages a send now would hand over; counting stops at `at_most` (a cheap answer to
    "is there a lot?" on a large outbox)."""
    due = select(_T.c.id).where(text(WAITING_SQL), _T.c.due_at <= now)
    if at_most is not None:
        due = due.limit(at_most)
    return int(session.scalar(select(func.count()).select_from(due.subquery())) or 0)


def due_summary(session: Session, now: dt.datetime) -> list[tuple[str, int | None, int]]:
    """(kind, campaign id, count) of messages that a send now would hand over: for `send --dry-run`."""
    rows = session.execute(
        select(OutboxMessage.kind, OutboxMessage.campaign_id, func.count())
        .where(and_(OutboxMessage.state.in_(WAITING), OutboxMessage.due_at <= now))
        .group_by(OutboxMessage.kind, OutboxMessage.campaign_id)
        .order_by(OutboxMessage.kind, OutboxMessage.campaign_id)
    ).all()
    return [(kind, campaign_id, int(count)) for kind, campaign_id, count in rows]


def undelivered(session: Session, campaign_id: int, limit: int = 200) -> list[tuple[int, str | None, str, str | None, int | None]]:
    """(outbox id, address, state, reason, SMTP code) of messages that did not go out, for `campaigns show`."""
    rows = session.execute(
        select(OutboxMessage.id, Contact.email, OutboxMessage.state, OutboxMessage.last_error, OutboxMessage.smtp_code)
        .outerjoin(Contact, Contact.id == OutboxMessage.contact_id)
        .where(OutboxMessage.campaign_id == campaign_id)
        # Not delivered, or delivered and then bounced (a bounce report notes it on the sent row).
        .where(OutboxMessage.state.in_(("failed", "skipped", "deferred", "unknown"))
               | ((OutboxMessage.state == "sent") & OutboxMessage.last_error.is_not(None)))
        .order_by(OutboxMessage.id)
        .limit(limit)
    ).all()
    return [tuple(row) for row in rows]
