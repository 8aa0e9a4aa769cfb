"""The send store: every database step of a send (claim, re-check, record, renew, release, halt), one
implementation per database. The engine (delivery.py) sees only the SendStore protocol.

SQLite runs in-process: a consent lookup per message costs microseconds, and the processes of one
send take turns at the write lock (db.WriteTurn). PostgreSQL is a round trip away: recipients are
re-checked sixteen at a time while listening for the notifications its triggers send whenever consent
changes, results are written by statements prepared once on libpq, without waiting for the WAL flush.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from mailer import audience, db
from mailer.models import WAITING_SQL, Campaign, Contact, Enrollment, OutboxMessage
from mailer.outbound import outbox

# Rows of a halted campaign wait with this due time, so no claim takes them until staff resume it.
HELD = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A claimed row with what the send needs about its recipient."""

    id: int
    kind: str
    campaign_id: int | None
    enrollment_id: int | None
    step: int | None
    contact_id: int | None
    email: str | None
    name: str | None
    link_key: str | None
    attempts: int
    was_unknown: bool
    created_at: dt.datetime
    # A follow-up's sequence (its templates are keyed by sequence and step) and the version of the step's
    # wording current when it was queued (None or 0: the template's); None for other kinds.
    sequence: str | None = None
    step_version: int | None = None


SentRow = tuple[int, dt.datetime, str | None, int | None]  # id, sent at, Message-ID, code
Update = tuple[int, dict[str, Any]]  # id, the columns a result changes (retry.next_state)
Recheck = tuple[str, dict[str, int | str]]  # a consent rule (RECHECK_SQL's key) and its parameters


@dataclass(frozen=True, slots=True)
class Refusal:
    """A message the relay refused for good, as the recorder hands it to the refusal rule."""

    outbox_id: int
    contact_id: int | None
    campaign_id: int | None
    code: int | None
    detail: str
    stage: str  # where the transport saw it: "rcpt", "data", "mail", "connect"...
    address_rejected: bool  # the transport's own reading: the recipient's address was refused


# What a refusal does to its recipient, applied in the recorder's transaction (Kinds.refusals): the
# edge wires in the bounce rules; without them, a refused address is suppressed as a hard bounce.
RefusalRule = Callable[[Session, Refusal, dt.datetime], None]


# --- claiming ---------------------------------------------------------------------------------------

_T = OutboxMessage.__table__
_K = Contact.__table__


_E = Enrollment.__table__


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
            _T.c.id, _T.c.kind, _T.c.campaign_id, _T.c.enrollment_id, _T.c.step, _T.c.contact_id,
            _contact_column(_K.c.email), _contact_column(_K.c.name), _contact_column(_K.c.link_key),
            _T.c.attempts, _T.c.was_unknown, _T.c.created_at,
            select(_E.c.sequence).where(_E.c.id == _T.c.enrollment_id).scalar_subquery(), _T.c.step_version,
        )
    ).all()
    return sorted((Claimed(*row) for row in rows), key=lambda claimed: claimed.id)


def renew(connection: Connection, worker: str, until: dt.datetime) -> int:
    """Extend this worker's leases: a live worker's rows never look abandoned to another process."""
    result = connection.execute(
        update(_T).where(_T.c.claimed_by == worker, _T.c.state == "sending").values(lease_until=until)
    )
    return result.rowcount or 0


def release(session: Session, ids: Iterable[int]) -> int:
    """Give claimed rows back without a result (never handed over); a halted campaign's are held."""
    ids = list(ids)
    if not ids:
        return 0
    halted = select(Campaign.id).where(Campaign.id == OutboxMessage.campaign_id, Campaign.state == "halted").exists()
    result = session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id.in_(ids), OutboxMessage.state == "sending")
        .values(state="queued", lease_until=None, claimed_by=None)
    )
    session.execute(update(OutboxMessage).where(OutboxMessage.id.in_(ids), halted).values(due_at=HELD))
    return result.rowcount or 0


def record(session: Session, updates: Sequence[Update]) -> None:
    """Write results for many rows at once (an executemany of UPDATE ... WHERE id = ?)."""
    if updates:
        session.execute(update(OutboxMessage), [{"id": row_id, **changes} for row_id, changes in updates])


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

# SQLite: run with the driver's own executemany (its loop over the rows is in C; SQLAlchemy's per-row
# parameter processing cost more than the update). The times are stored as the ORM stores them.
SENT_SQLITE = (
    "UPDATE outbox SET state = 'sent', attempts = attempts + 1, lease_until = NULL, claimed_by = NULL, "
    "sent_at = ?, message_id = ?, last_error = NULL, smtp_code = ? WHERE id = ?"
)


def record_sent(connection: Connection, rows: Sequence[SentRow], statement: db.PgStatement | None = None) -> None:
    """Mark many rows sent at once (id, sent at, Message-ID, code): the hot path of a send.

    On PostgreSQL `statement` is SENT_PG prepared on this connection (a recorder keeps one); without
    it, the statement is prepared for this call only. On SQLite the rows go through the driver's
    executemany, in the connection's current transaction."""
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
        statement = db.PgStatement(connection.connection.driver_connection, SENT_PG)
    try:
        statement.run(",".join(str(row_id) for row_id, *_ in rows),
                      ",".join(at.isoformat() for _, at, *_ in rows),
                      " ".join(mid or "" for *_, mid, _ in rows),
                      ",".join("" if code is None else str(code) for *_, code in rows))
    finally:
        if once:
            statement.close()


# --- the consent re-check ---------------------------------------------------------------------------

# One indexed lookup per message, by consent rule. Plain SQL on the driver's own cursor: it runs for
# every recipient, right before the envelope goes, and the ORM's overhead would dominate it.
RECHECK_SQL = {
    # The subscription is found by its primary key and its status compared here, not in SQL: with
    # `status = 'active'` in the WHERE clause, PostgreSQL's generic plan for this prepared statement may
    # pick the (topic, status) index and walk every subscriber of the topic for each message.
    "campaign": (
        "SELECT s.status = 'active' FROM subscriptions s WHERE s.contact_id = :contact_id "
        "AND s.topic = (SELECT c.topic FROM campaigns c WHERE c.id = :campaign_id AND c.state = 'sending') "
        "AND NOT EXISTS (SELECT 1 FROM suppressions x WHERE x.contact_id = :contact_id)"
    ),
    "followup": (
        "SELECT k.followups_consent AND e.status = 'active' FROM contacts k JOIN enrollments e "
        "ON e.id = :enrollment_id WHERE k.id = :contact_id "
        "AND NOT EXISTS (SELECT 1 FROM suppressions x WHERE x.contact_id = :contact_id)"
    ),
    "confirm": (
        # A confirmation may go to someone who unsubscribed or was erased (their own sign-up can lift
        # that), never past a bounce, a complaint or a staff suppression.
        "SELECT 1 = 1 FROM contacts k WHERE k.id = :contact_id AND NOT EXISTS "
        "(SELECT 1 FROM suppressions x WHERE x.contact_id = :contact_id AND x.reason NOT IN "
        f"({', '.join(repr(reason) for reason in audience.SELF_LIFTABLE)}))"
    ),
    # A welcome goes only to someone still subscribed to something and not suppressed.
    "welcome": (
        "SELECT EXISTS (SELECT 1 FROM subscriptions s WHERE s.contact_id = :contact_id AND s.status = 'active') "
        "AND NOT EXISTS (SELECT 1 FROM suppressions x WHERE x.contact_id = :contact_id)"
    ),
    # A staff notice goes to a staff address, not a contact: always allowed, never to a suppressed
    # address (found by its keyed hash, as erasure leaves it).
    "notice": "SELECT NOT EXISTS (SELECT 1 FROM suppressions x WHERE x.email_hash = :email_hash)",
}

# The same for a group of newsletter recipients of one campaign, in one statement (PostgreSQL): one
# primary-key lookup per recipient, whatever the statistics say; the status is compared here. $1: the
# contact ids as comma-separated text; $2: the campaign. Run as a db.PgStatement.
GROUP_RECHECK_SQL = (
    "SELECT v.id, (SELECT s.status FROM subscriptions s WHERE s.contact_id = v.id AND s.topic = c.topic) "
    "FROM unnest(string_to_array($1, ',')::bigint[]) AS v(id) "
    "JOIN campaigns c ON c.id = $2::bigint AND c.state = 'sending' "
    "WHERE NOT EXISTS (SELECT 1 FROM suppressions x WHERE x.contact_id = v.id)"
)
CONSENT_CHANNEL = "mailer_consent"  # PostgreSQL triggers notify it when consent-related rows change


class ConsentCheck:
    """One sender thread's re-check on its own driver connection: one lookup per message (SQLite, where
    a lookup costs a few microseconds in-process). `group` is how many messages one check may cover."""

    group = 1

    def __init__(self, engine: Engine) -> None:
        self.raw = engine.raw_connection()
        self.driver = self.raw.driver_connection
        self.sql = self._statements()
        self.cursor = self.raw.cursor()

    def _statements(self) -> dict[str, str]:
        return RECHECK_SQL  # sqlite3 takes :name parameters as they are

    def changed(self) -> bool:
        """Whether anything consent-related may have changed since the last check (here: always)."""
        return True

    def allows(self, rule: str, params: dict[str, int | str]) -> bool:
        self.cursor.execute(self.sql[rule], params)
        row = self.cursor.fetchone()
        return row is not None and bool(row[0])

    def allowed(self, rechecks: Sequence[Recheck | None]) -> list[bool]:
        """Each message's verdict, in order (None, nothing to check: refused)."""
        return [recheck is not None and self.allows(*recheck) for recheck in rechecks]

    def close(self) -> None:
        self.cursor.close()
        self.raw.close()


class ListeningConsentCheck(ConsentCheck):
    """PostgreSQL: a driver connection in autocommit mode (no lock, no open snapshot) that LISTENs on the
    channel the database's triggers notify whenever subscriptions, suppressions, contacts, enrollments
    or campaigns change. A campaign's recipients are checked in groups; before each message goes,
    `changed()` looks for a notification without a round trip, and if one came, what was checked is
    checked again. A change committed before a message's envelope leaves stops it, as a per-message
    lookup would."""

    group = 16

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.driver.autocommit = True
        self.heard = False
        self.driver.add_notify_handler(self._hear)  # notifications that arrive along with query results
        self.cursor.execute(f"LISTEN {CONSENT_CHANNEL}")
        self.group_statement = db.PgStatement(self.driver, GROUP_RECHECK_SQL)

    def _statements(self) -> dict[str, str]:
        return {rule: re.sub(r":(\w+)", r"%(\1)s", sql) for rule, sql in RECHECK_SQL.items()}

    def _hear(self, _notification: object) -> None:
        self.heard = True

    def changed(self) -> bool:
        pgconn = self.driver.pgconn
        pgconn.consume_input()  # reads what has arrived on the socket; never waits
        while pgconn.notifies() is not None:
            self.heard = True
        return self.heard

    def allowed(self, rechecks: Sequence[Recheck | None]) -> list[bool]:
        self.heard = False  # a change committed from here on is heard before the next message goes
        verdicts = [False] * len(rechecks)
        groups: dict[int, list[int]] = {}
        for index, recheck in enumerate(rechecks):
            if recheck is None:
                continue
            rule, params = recheck
            if rule == "campaign":
                groups.setdefault(params["campaign_id"], []).append(index)
            else:
                verdicts[index] = self.allows(rule, params)
        for campaign_id, indexes in groups.items():
            ids = [rechecks[index][1]["contact_id"] for index in indexes]  # type: ignore[index]
            rows = self.group_statement.run(",".join(map(str, ids)), str(campaign_id))
            found = {int(contact_id) for contact_id, status in rows if status == "active"}
            for index, contact_id in zip(indexes, ids, strict=True):
                verdicts[index] = contact_id in found
        return verdicts

    def close(self) -> None:
        self.group_statement.close()
        with contextlib.suppress(Exception):  # a broken connection: the pool discards it
            self.cursor.execute("UNLISTEN *")  # back to the pool as it came
            self.driver.remove_notify_handler(self._hear)
        with contextlib.suppress(Exception):
            self.driver.autocommit = False  # back to the pool as SQLAlchemy expects it
        super().close()


# --- recording --------------------------------------------------------------------------------------


class Recorder(Protocol):
    """The connection a send's results are written on, one write at a time."""

    def write(self, sent: Sequence[SentRow], others: Sequence[Update], refusals: Sequence[Refusal],
              now: dt.datetime) -> None: ...

    def renew(self, worker: str, until: dt.datetime) -> None: ...

    def close(self) -> None: ...


class SendStore(Protocol):
    """What the engine asks of the database."""

    group: int  # how many messages one consent check may cover

    def reclaim_expired(self, now: dt.datetime) -> int: ...

    def claim(self, worker: str, now: dt.datetime, lease: dt.timedelta, limit: int) -> list[Claimed]: ...

    def reading(self) -> ContextManager[Session]: ...

    def consent_check(self) -> ConsentCheck: ...

    def recorder(self) -> Recorder: ...

    def release(self, ids: Iterable[int]) -> int: ...

    def halt(self, campaign_id: int, reason: str, now: dt.datetime) -> bool: ...

    def halted(self, campaign_id: int) -> bool: ...


class _SqlRecorder:
    """Sent results on a kept connection in one statement; retries, failures and suppressions (rare)
    through the ORM in their own transaction."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.connection = store.engine.connect()

    def _sent(self, sent: Sequence[SentRow]) -> None:
        with self.connection.begin():
            record_sent(self.connection, sent)

    def write(self, sent: Sequence[SentRow], others: Sequence[Update], refusals: Sequence[Refusal],
              now: dt.datetime) -> None:
        store = self.store
        if sent:
            with store.write_turn:
                self._sent(sent)
        if others or refusals:
            with store.write_turn, store.sessions.begin() as session:
                record(session, others)
                for refusal in refusals:
                    store.refusal_rule(session, refusal, now)

    def renew(self, worker: str, until: dt.datetime) -> None:
        with self.store.write_turn, self.connection.begin():
            renew(self.connection, worker, until)

    def close(self) -> None:
        self.connection.close()


class _PgRecorder(_SqlRecorder):
    """Each write is one statement in autocommit mode: one round trip instead of three (BEGIN, UPDATE,
    COMMIT). Its commits do not wait for the WAL flush (synchronous_commit off): a killed worker loses
    nothing the server received, and only a crash of the database server itself could forget the last
    fraction of a second of results, which would then be sent again, the same bound as the messages in
    flight."""

    def __init__(self, store: SqlStore) -> None:
        super().__init__(store)
        self.connection = self.connection.execution_options(isolation_level="AUTOCOMMIT")
        self.connection.exec_driver_sql("SET synchronous_commit TO OFF")
        self.connection.commit()  # ends SQLAlchemy's own bookkeeping; nothing is sent in autocommit mode
        self.statement = db.PgStatement(self.connection.connection.driver_connection, SENT_PG)

    def _sent(self, sent: Sequence[SentRow]) -> None:
        record_sent(self.connection, sent, self.statement)

    def renew(self, worker: str, until: dt.datetime) -> None:
        renew(self.connection, worker, until)

    def close(self) -> None:
        self.statement.close()
        with contextlib.suppress(Exception):  # a broken connection is discarded by the pool anyway
            self.connection.exec_driver_sql("RESET synchronous_commit")  # back to the pool as it came
            self.connection.commit()
        super().close()


class SqlStore:
    """The steps every database shares; the subclasses add what differs."""

    group = 1

    def __init__(self, engine: Engine, secret_key: str = "", refusal_rule: RefusalRule | None = None) -> None:
        self.engine = engine
        self.secret_key = secret_key  # the keyed hash a suppression keeps
        self.refusal_rule: RefusalRule = refusal_rule or self._suppress_refused_address
        self.sessions: sessionmaker[Session] = sessionmaker(engine, expire_on_commit=False)
        # Reads that take no lock (on SQLite every transaction takes the write lock).
        self._reads: sessionmaker[Session] = sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"),
                                                          expire_on_commit=False)
        self.write_turn: ContextManager[Any] = contextlib.nullcontext()

    def _suppress_refused_address(self, session: Session, refusal: Refusal, now: dt.datetime) -> None:
        """The rule without the bounce rules wired in: a refused address is a hard bounce."""
        contact = session.get(Contact, refusal.contact_id) if refusal.contact_id is not None else None
        if refusal.address_rejected and contact is not None:
            audience.suppress(session, self.secret_key, contact, "hard_bounce", now,
                              detail=f"{refusal.code} {refusal.detail}")

    def reclaim_expired(self, now: dt.datetime) -> int:
        with self.write_turn, self.sessions.begin() as session:
            return outbox.reclaim_expired(session, now)

    def claim(self, worker: str, now: dt.datetime, lease: dt.timedelta, limit: int) -> list[Claimed]:
        with self.write_turn, self.sessions.begin() as session:
            return claim(session, worker, now, lease, limit)

    @contextlib.contextmanager
    def reading(self) -> Iterator[Session]:
        with self._reads() as session:
            yield session

    def consent_check(self) -> ConsentCheck:
        return ConsentCheck(self.engine)

    def recorder(self) -> Recorder:
        return _SqlRecorder(self)

    def release(self, ids: Iterable[int]) -> int:
        with self.write_turn, self.sessions.begin() as session:
            return release(session, ids)

    def halt(self, campaign_id: int, reason: str, now: dt.datetime) -> bool:
        """Stop a sending campaign and hold its waiting messages (still queued, not failed) until staff
        resume it. False if it was not sending (already halted, cancelled, finished)."""
        with self.write_turn, self.sessions.begin() as session:
            halted = session.execute(
                update(Campaign).where(Campaign.id == campaign_id, Campaign.state == "sending")
                .values(state="halted", halted_reason=reason[:500], halted_at=now)
            ).rowcount
            session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.campaign_id == campaign_id, OutboxMessage.state.in_(outbox.WAITING))
                .values(due_at=HELD)
            )
        return bool(halted)

    def halted(self, campaign_id: int) -> bool:
        with self.reading() as session:
            return session.scalar(select(Campaign.state).where(Campaign.id == campaign_id)) == "halted"


class SqliteStore(SqlStore):
    """SQLite: the claims and result writes of every process of a send take turns (db.WriteTurn)."""

    def __init__(self, engine: Engine, secret_key: str = "", refusal_rule: RefusalRule | None = None) -> None:
        super().__init__(engine, secret_key, refusal_rule)
        self.write_turn = db.WriteTurn(engine.url.database)


class PostgresStore(SqlStore):
    """PostgreSQL: grouped, listening consent checks; results on an autocommit connection."""

    group = ListeningConsentCheck.group

    def consent_check(self) -> ConsentCheck:
        return ListeningConsentCheck(self.engine)

    def recorder(self) -> Recorder:
        return _PgRecorder(self)


def open_store(engine: Engine, secret_key: str = "", refusal_rule: RefusalRule | None = None) -> SqlStore:
    """The send store for the engine's database; `refusal_rule` says what a permanent refusal does."""
    kind = SqliteStore if engine.dialect.name == "sqlite" else PostgresStore
    return kind(engine, secret_key, refusal_rule)
