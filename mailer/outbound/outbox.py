"""The outbox: idempotent set-based enqueue, claims with a lease, and batched result updates."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, String, and_, cast, func, literal, not_, select, text, update
from sqlalchemy.orm import Session

from mailer.db import PgStatement
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
                state="queued", attempts=0,
                was_unknown=False, created_at=now, due_at=due_at or now)
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


def renew(connection: Connection, worker: str, until: dt.datetime) -> int:
    """Extend this worker's leases: a live worker's rows never look abandoned to another process."""
    result = connection.execute(
        update(_T).where(_T.c.claimed_by == worker, _T.c.state == "sending").values(lease_until=until)
    )
    return result.rowcount or 0


@dataclass(frozen=True, slots=True)
class Claimed:
    """A claimed row with what the send needs about its recipient."""

    id: int
    kind: str
    campaign_id: int | None
    enrollment_id: int | None
    step: int | None
    step_version: int | None
    contact_id: int | None
    email: str | None
    name: str | None
    link_key: str | None
    attempts: int
    was_unknown: bool
    created_at: dt.datetime


_K = Contact.__table__


def _contact_column(column: Any) -> Any:
    return select(column).where(_K.c.id == _T.c.contact_id).scalar_subquery()


def claim(session: Session, worker: str, now: dt.datetime, lease: dt.timedelta, limit: int) -> list[Claimed]:
    """Take up to `limit` due rows for this worker, in id order. On PostgreSQL, rows locked by another
    worker are skipped (FOR UPDATE SKIP LOCKED), so several processes drain one campaign without overlap.

    One statement: the UPDATE returns what the send needs, the recipient's columns through primary-key
    subqueries (a second query with hundreds of ids cost more than the claim itself).
    """
    due = (
        select(_T.c.id)
        .where(text(WAITING_SQL), _T.c.due_at <= now)
        .order_by(_T.c.due_at, _T.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(
        update(_T)
        .where(_T.c.id.in_(due.scalar_subquery()))
        .values(state="sending", lease_until=now + lease, claimed_by=worker)
        .returning(
            _T.c.id, _T.c.kind, _T.c.campaign_id, _T.c.enrollment_id, _T.c.step, _T.c.step_version, _T.c.contact_id,
            _contact_column(_K.c.email), _contact_column(_K.c.name), _contact_column(_K.c.link_key),
            _T.c.attempts, _T.c.was_unknown, _T.c.created_at,
        )
    ).all()
    return sorted((Claimed(*row) for row in rows), key=lambda claimed: claimed.id)


def record(session: Session, updates: Sequence[Mapping[str, Any]]) -> None:
    """Write results for many rows at once (an executemany of UPDATE ... WHERE id = ?)."""
    if updates:
        session.execute(update(OutboxMessage), [dict(item) for item in updates])


# PostgreSQL: one statement for the whole batch, the columns passed as delimited text (an array
# parameter would be built in Python, element by element, which cost more than the statement).
# Message-IDs never contain a space; '' stands for NULL. Run as a db.PgStatement.
SENT_PG = (
    "UPDATE outbox AS o SET state = 'sent', attempts = o.attempts + 1, sent_at = v.at, message_id = v.mid, "
    "smtp_code = v.code, last_error = NULL, lease_until = NULL, claimed_by = NULL "
    "FROM unnest(string_to_array($1, ',')::bigint[], string_to_array($2, ',')::timestamptz[], "
    "string_to_array($3, ' ', ''), string_to_array($4, ',', '')::int[]) AS v(id, at, mid, code) "
    "WHERE o.id = v.id"
)

SentRow = tuple[int, dt.datetime, str | None, int | None]


# SQLite: run with the driver's own executemany (its loop over the rows is in C; SQLAlchemy's per-row
# parameter processing cost more than the update). The times are stored as the ORM stores them.
SENT_SQLITE = (
    "UPDATE outbox SET state = 'sent', attempts = attempts + 1, lease_until = NULL, claimed_by = NULL, "
    "sent_at = ?, message_id = ?, last_error = NULL, smtp_code = ? WHERE id = ?"
)


def record_sent(connection: Connection, rows: Sequence[SentRow], statement: PgStatement | None = None) -> None:
    """Mark many rows sent at once (id, sent at, Message-ID, SMTP code): the hot path of a send.

    On PostgreSQL `statement` is SENT_PG prepared on this connection (a send keeps one for its
    recorder); without it, the statement is prepared for this call only. On SQLite the rows go through
    the driver's executemany, in the connection's current transaction."""
    dialect = connection.dialect
    if dialect.name == "sqlite":
        stored = _T.c.sent_at.type.dialect_impl(dialect).bind_processor(dialect)  # aware UTC → the column's text
        cursor = connection.connection.driver_connection.cursor()
        try:
            cursor.executemany(SENT_SQLITE, [(stored(at), mid, code, i) for i, at, mid, code in rows])
        finally:
            cursor.close()
        return
    once = statement is None
    if statement is None:
        statement = PgStatement(connection.connection.driver_connection, SENT_PG)
    try:
        statement.run(",".join(str(row_id) for row_id, *_ in rows),
                      ",".join(at.isoformat() for _, at, *_ in rows),
                      " ".join(mid or "" for *_, mid, _ in rows),
                      ",".join("" if code is None else str(code) for *_, code in rows))
    finally:
        if once:
            statement.close()


def release(session: Session, ids: Iterable[int]) -> int:
    """Give claimed rows back without a result (a clean shutdown before they were handed to SMTP)."""
    ids = list(ids)
    if not ids:
        return 0
    result = session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id.in_(ids), OutboxMessage.state == "sending")
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
