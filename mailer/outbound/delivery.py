"""The send loop: claim → re-check consent → personalise → transport → record, on parallel connections.

One thread (the caller's) claims rows in batches and builds each message's bytes from the campaign's
prepared parts. `connections` sender threads each own one transport connection and one database
connection; right before a message's envelope goes to the relay they re-check consent and suppression
(ConsentCheck: a lookup per message on SQLite, per group with change notifications on PostgreSQL), so
an opt-out takes effect even in the middle of a campaign. The transport pipelines each message's
content with the next envelope. A recorder thread writes each result as soon as the reply has come
(whatever has arrived, in one statement), and never before.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import queue
import random
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, select
from sqlalchemy.orm import Session, sessionmaker

from mailer import audience, db, privacy
from mailer.config import Settings, duration
from mailer.links import Links
from mailer.models import Campaign, Enrollment
from mailer.names import greetable
from mailer.outbound import notices, outbox
from mailer.outbound.messages import make_message_id
from mailer.outbound.transport import Envelope, SendResult, Transport
from mailer.publishing.render import PreparedMessage, Recipient, Renderer
from mailer.stopping import Stop, StopRequest

log = logging.getLogger("mailer.delivery")

Clock = Callable[[], dt.datetime]

# The consent re-check, one indexed lookup per message, by kind of message. Plain SQL on the driver's
# own cursor: it runs for every recipient, right before SMTP, and the ORM's overhead would dominate it.
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
    """One sender thread's re-check: a driver connection in autocommit mode (no lock, no open snapshot).

    On SQLite every message is looked up on its own right before its envelope is sent (a lookup costs a
    few microseconds in-process). On PostgreSQL a lookup is a round trip to the server, so the
    messages of a campaign are checked in groups, and the connection LISTENs on the channel the
    database's triggers notify whenever subscriptions, suppressions, contacts, enrollments or campaigns
    change: before each message goes, `changed()` looks for such a notification without a round trip,
    and if one came, what was checked is checked again. A change committed before a message's envelope
    leaves stops it, as a per-message lookup would.
    """

    def __init__(self, engine: Engine) -> None:
        self.raw = engine.raw_connection()
        self.driver = self.raw.driver_connection
        self.listening = engine.dialect.name == "postgresql"
        if not self.listening:
            self.sql = RECHECK_SQL  # sqlite3 takes :name parameters as they are
        else:
            self.sql = {k: re.sub(r":(\w+)", r"%(\1)s", v) for k, v in RECHECK_SQL.items()}
            self.driver.autocommit = True
        self.group = 16 if self.listening else 1  # the most messages one lookup covers
        self.cursor = self.raw.cursor()
        self.heard = False
        self.group_statement: db.PgStatement | None = None
        if self.listening:
            self.driver.add_notify_handler(self._hear)  # notifications that arrive along with query results
            self.cursor.execute(f"LISTEN {CONSENT_CHANNEL}")
            # Notifications that arrive with this statement's rows stay in libpq's queue for changed().
            self.group_statement = db.PgStatement(self.driver, GROUP_RECHECK_SQL)

    def _hear(self, _notification: object) -> None:
        self.heard = True

    def changed(self) -> bool:
        """Whether anything consent-related may have changed since the last check."""
        if not self.listening:
            return True
        pgconn = self.driver.pgconn
        pgconn.consume_input()  # reads what has arrived on the socket; never waits
        while pgconn.notifies() is not None:
            self.heard = True
        return self.heard

    def allows(self, kind: str, params: dict[str, int | str]) -> bool:
        self.cursor.execute(self.sql[kind], params)
        row = self.cursor.fetchone()
        return row is not None and bool(row[0])

    def allowed(self, jobs: list[_Job]) -> list[bool]:
        """Each job's verdict, in order (jobs with nothing to send are refused)."""
        if not self.listening:  # one lookup each
            return [job.recheck is not None and self.allows(*job.recheck) for job in jobs]
        self.heard = False  # a change committed from here on is heard before the next message goes
        verdicts = [False] * len(jobs)
        groups: dict[int, list[int]] = {}
        for index, job in enumerate(jobs):
            if job.recheck is None:
                continue
            kind, params = job.recheck
            if self.listening and kind == "campaign":
                groups.setdefault(params["campaign_id"], []).append(index)
            else:
                verdicts[index] = self.allows(kind, params)
        for campaign_id, indexes in groups.items():
            ids = [jobs[index].recheck[1]["contact_id"] for index in indexes]  # type: ignore[index]
            assert self.group_statement is not None
            rows = self.group_statement.run(",".join(map(str, ids)), str(campaign_id))
            found = {int(contact_id) for contact_id, status in rows if status == "active"}
            for index, contact_id in zip(indexes, ids, strict=True):
                verdicts[index] = contact_id in found
        return verdicts

    def close(self) -> None:
        if self.group_statement is not None:
            self.group_statement.close()
        if self.listening:
            try:
                self.cursor.execute("UNLISTEN *")  # back to the pool as it came
                self.driver.remove_notify_handler(self._hear)
            except Exception:  # a broken connection: the pool discards it
                pass
        self.cursor.close()
        if getattr(self.driver, "autocommit", None) is True:
            try:
                self.driver.autocommit = False  # back to the pool as SQLAlchemy expects it
            except Exception:  # a broken connection: the pool discards it
                pass
        self.raw.close()


def recheck_kind(kind: str) -> str:
    return "campaign" if kind in ("newsletter", "oneoff") else kind


@dataclass
class Report:
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    skipped: int = 0
    unknown: int = 0
    released: int = 0

    def add(self, state: str) -> None:
        setattr(self, state, getattr(self, state) + 1)

    @property
    def handled(self) -> int:
        return self.sent + self.deferred + self.failed + self.skipped + self.unknown

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("sent", "deferred", "failed", "skipped", "unknown")}


class RateLimiter:
    """At most `rate` sends per second across the threads of this process (0: no limit)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next_at = time.monotonic()
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            at = max(self.next_at, now)
            self.next_at = at + self.interval
        if at > now:
            time.sleep(at - now)


def backoff(settings: Settings, attempts: int, rng: random.Random) -> dt.timedelta:
    """Exponential backoff with ±20% jitter: retry_initial, doubled per attempt, capped at retry_max."""
    first = duration(settings.delivery.retry_initial)
    cap = duration(settings.delivery.retry_max)
    delay = min(cap, first * (2 ** min(max(0, attempts - 1), 20)))
    return delay * rng.uniform(0.8, 1.2)


GROUP_SPAN = 0.02  # seconds of one connection's sending that one group consent check may cover


def group_size(largest: int, waiting: int, connections: int, seconds_per_message: float) -> int:
    """How many queued messages a connection takes (and checks consent for) at once: no more than its
    share of what is waiting, and about GROUP_SPAN of its sending: up to `largest` for a fast relay, one
    at a time for a slow one, so that every connection keeps busy."""
    return max(1, min(largest, 1 + waiting // connections, int(GROUP_SPAN / seconds_per_message)))


class _Pace:
    """Seconds per message on one connection, smoothed; slow (one message a second) until measured."""

    def __init__(self) -> None:
        self.seconds = 1.0
        self._last: float | None = None

    def tick(self) -> None:
        now = time.monotonic()
        if self._last is not None:
            self.seconds = 0.8 * self.seconds + 0.2 * (now - self._last)
        self._last = now


class Permits:
    """A counting semaphore on queue.SimpleQueue, whose put and get are single C calls: it is taken and
    given back for every message, and threading.Semaphore's Python-level Condition cost several
    microseconds each time."""

    __slots__ = ("_tokens",)

    def __init__(self, count: int) -> None:
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(count):
            self._tokens.put(None)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        try:
            self._tokens.get(blocking, timeout)
        except queue.Empty:
            return False
        return True

    def release(self) -> None:
        self._tokens.put(None)


@dataclass
class _Job:
    row: outbox.Claimed
    envelope: Envelope | None  # None: nothing to send (the row is skipped with `reason`)
    message_id: str | None
    recheck: tuple[str, dict[str, int | str]] | None
    reason: str = ""


@dataclass
class _Result:
    """What the recorder needs of a handled job: not the message's bytes, which are dropped as soon as
    the relay has answered (a backlog of results must not hold kilobytes per message)."""

    row: outbox.Claimed
    message_id: str | None
    result: SendResult
    finished_at: dt.datetime
    permit: Permits | None = None  # the sending connection's, given back once this is committed

    @classmethod
    def of(cls, job: _Job, result: SendResult, finished_at: dt.datetime,
           permit: Permits | None = None) -> _Result:
        return cls(job.row, job.message_id, result, finished_at, permit)


# A connection's messages that may be sent (final dot gone) while their result is not committed yet.
# Normally one or two: the recorder writes results as they come. When it falls behind (a slow database,
# a starved machine) the connection waits once this many are unwritten, so a crash can send again at
# most this many messages per connection, whatever the delay. Tighter costs throughput on a busy
# machine: on PostgreSQL 2 cost about 15% in the send benchmark, 4 about 9%; on SQLite, where a
# recorder waits while another process claims a batch, 8 cost about 15%. 32 costs nothing measurable.
UNRECORDED_PER_CONNECTION = 32

BUILD_STEP = 16  # messages the claiming thread builds between offers of the GIL to the sender threads

# After the first result of a write arrives, the recorder waits this long for others to join it. On a
# fast relay this turns about two rows per statement into about six, which halves the database's work
# per message and lifted the send benchmark by about a fifth; a crash can send again only the few
# messages answered in that half millisecond. On a slow relay one result rarely has company anyway.
RECORD_GATHER_SECONDS = 0.0005


@dataclass
class Delivery:
    """Everything a send run needs, passed in: settings, database, transport, clock."""

    settings: Settings
    engine: Engine
    transport: Transport
    clock: Clock
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}")
    renderer: Renderer | None = None
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        needed = self.settings.delivery.connections + 2  # re-checks, the recorder, the claims
        capacity = getattr(self.engine.pool, "size", lambda: needed)() + getattr(self.engine.pool, "_max_overflow", 0)
        if capacity < needed:
            raise ValueError(f"the database pool holds {capacity} connections; delivery.connections = "
                             f"{self.settings.delivery.connections} needs {needed} (make the engine with a larger pool)")
        self.sessions: sessionmaker[Session] = sessionmaker(self.engine, expire_on_commit=False)
        # Reads that take no lock (on SQLite every transaction takes the write lock).
        self.reads: sessionmaker[Session] = sessionmaker(self.engine.execution_options(isolation_level="AUTOCOMMIT"),
                                                         expire_on_commit=False)
        self.renderer = self.renderer or Renderer(self.settings)
        self.links = Links(self.settings.web.base_url, self.settings.secret_key)
        self.prepared: dict[tuple[str, ...], PreparedMessage | LookupError] = {}
        # Each follow-up row's sequence (its templates are keyed by sequence and step), and each staff
        # notice's recipient and its keyed hash, learnt when their rows are prepared.
        self.sequence_of: dict[int, str] = {}
        self.notice_to: dict[int, tuple[str, str]] = {}
        self.mail_from = self.settings.sender.from_email
        self.from_domain = self.mail_from.rpartition("@")[2]
        self.sqlite = self.engine.dialect.name == "sqlite"
        # On SQLite the claims and the result writes of every process of a send take turns (db.WriteTurn).
        self.write_turn: db.WriteTurn | contextlib.nullcontext = (
            db.WriteTurn(self.engine.url.database) if self.sqlite else contextlib.nullcontext()
        )

    # --- preparing ---------------------------------------------------------------------------

    def _key(self, row: outbox.Claimed) -> tuple[str, ...]:
        if row.kind in ("newsletter", "oneoff"):
            return ("campaign", str(row.campaign_id or 0))
        if row.kind == "followup":  # rendered once per step and version of its wording
            return ("followup", self.sequence_of.get(row.enrollment_id or 0, ""), str(row.step or 0),
                    str(row.step_version or 0))
        if row.kind == notices.KIND:
            return (row.kind, str(row.id))  # each notice is its own message
        return (row.kind, "")

    def _prepare(self, session: Session, rows: list[outbox.Claimed]) -> None:
        """Prepare the campaigns and templates these rows need, once per run (premailer runs here only)."""
        unknown = {row.enrollment_id for row in rows
                   if row.kind == "followup" and row.enrollment_id and row.enrollment_id not in self.sequence_of}
        if unknown:
            self.sequence_of.update(session.execute(
                select(Enrollment.id, Enrollment.sequence).where(Enrollment.id.in_(unknown))).all())
        for row in rows:
            key = self._key(row)
            if key not in self.prepared:
                try:
                    self.prepared[key] = self._make_prepared(session, row)
                except LookupError as exc:
                    self.prepared[key] = exc

    def _make_prepared(self, session: Session, row: outbox.Claimed) -> PreparedMessage:
        if row.kind in ("newsletter", "oneoff"):
            campaign = session.get(Campaign, row.campaign_id)
            if campaign is None:
                raise LookupError(f"campaign {row.campaign_id} is gone")
            return self.renderer.prepare_frozen(campaign)
        if row.kind == "followup":
            from mailer.sequences import steps, wording  # the sequences wing builds on outbound; import late

            sequence = self.sequence_of.get(row.enrollment_id or 0)
            if sequence is None:
                raise LookupError(f"the enrollment of follow-up message {row.id} is gone")
            version = None
            if row.step_version:  # the wording saved when the step was queued (0 or none: the template)
                version = wording.saved(session, sequence, row.step or 0, row.step_version)
                if version is None:
                    raise LookupError(f"version {row.step_version} of follow-up step {(row.step or 0) + 1} is gone")
            return steps.prepare_step(self.renderer, self.settings, row.step or 0, sequence, version)
        if row.kind == notices.KIND:
            notice = notices.prepare(session, self.settings, self.renderer, row.id)
            self.notice_to[row.id] = (notice.recipient, notice.recipient_hash)
            return notice.message
        if row.kind == "confirm":
            subject = f"Please confirm your subscription to {self.settings.clinic.name}"
            preheader = "One click to confirm, and you are on the list."
            privacy.screen(self.settings, "confirmation", subject, preheader, automatic=False)
            return self.renderer.prepare("email/system/confirm", subject=subject, preheader=preheader,
                                         marketing=False)
        if row.kind == "welcome":
            archive_url = f"{self.settings.web.base_url}/archive" if self.settings.archive.enabled else None
            subject = f"Welcome to {self.settings.clinic.name}"
            preheader = "You are on the list. Here is what to expect."
            privacy.screen(self.settings, "welcome", subject, preheader, automatic=False)
            return self.renderer.prepare("email/system/welcome", subject=subject, preheader=preheader,
                                         archive_url=archive_url)
        raise LookupError(f"unknown message kind {row.kind!r}")

    def message_id(self, outbox_id: int) -> str:
        return make_message_id(self.settings.secret_key, outbox_id, self.from_domain)

    def _job(self, row: outbox.Claimed, now: dt.datetime) -> _Job:
        if row.kind == notices.KIND:
            return self._notice_job(row, now)
        if row.contact_id is None or row.email is None:
            return _Job(row, None, None, None, reason="contact erased")
        prepared = self.prepared.get(self._key(row))
        if not isinstance(prepared, PreparedMessage):
            return _Job(row, None, None, None, reason=str(prepared or "not prepared"))
        # Only a name that passes the rules greets the person or goes in To: (older rows may hold others).
        name = greetable(row.name)
        values = {
            "first_name": name.split()[0] if name else "there",
            "unsubscribe_url": self.links.unsubscribe(row.contact_id, row.link_key),
            "preferences_url": self.links.preferences(row.contact_id, row.link_key),
        }
        if row.kind == "confirm":
            values["confirm_url"] = self.links.confirm(row.contact_id, row.link_key, row.created_at)
        elif row.kind == "followup" and not row.step:
            values["not_me_url"] = self.links.not_me(row.contact_id, row.link_key)
        message_id = self.message_id(row.id)
        data = prepared.build(Recipient(row.email, name, values, message_id), now)
        kind = recheck_kind(row.kind)
        params = {"contact_id": row.contact_id, "campaign_id": row.campaign_id or 0,
                  "enrollment_id": row.enrollment_id or 0}
        return _Job(row, Envelope(self.mail_from, row.email, data, key=str(row.id), crlf=True), message_id,
                    (kind, params))

    def _notice_job(self, row: outbox.Claimed, now: dt.datetime) -> _Job:
        """A staff notice: addressed to its recipient, re-checked against the suppression list only."""
        prepared = self.prepared.get(self._key(row))
        if not isinstance(prepared, PreparedMessage) or row.id not in self.notice_to:
            return _Job(row, None, None, None, reason=str(prepared or "not prepared"))
        recipient, hashed = self.notice_to[row.id]
        message_id = self.message_id(row.id)
        data = prepared.build(Recipient(recipient, "", {}, message_id), now)
        return _Job(row, Envelope(self.mail_from, recipient, data, key=str(row.id), crlf=True), message_id,
                    (notices.KIND, {"email_hash": hashed}))

    # --- recording ---------------------------------------------------------------------------

    def _outcome(self, session: Session, item: _Result, report: Report) -> dict[str, object]:
        row, result, now = item.row, item.result, item.finished_at
        attempts = row.attempts + 1
        base: dict[str, object] = {"id": row.id, "lease_until": None, "claimed_by": None}
        if result.outcome == "sent":
            report.add("sent")
            return {**base, "state": "sent", "attempts": attempts, "sent_at": now, "message_id": item.message_id,
                    "smtp_code": result.code, "last_error": None}
        if result.outcome == "skipped":
            report.add("skipped")
            return {**base, "state": "skipped", "last_error": result.detail}
        if result.outcome == "permanent":
            report.add("failed")
            # The reply is judged like a bounce report of it: only a refusal of the address suppresses
            # (a relay refusing our sender or IP must not suppress real people); each is kept as evidence.
            from mailer.inbound.evidence import apply_refusal  # rare path: keeps the send start short

            apply_refusal(session, self.settings, contact_id=row.contact_id, outbox_id=row.id,
                          campaign_id=row.campaign_id, code=result.code, text=result.detail, stage=result.stage,
                          now=now)
            return {**base, "state": "failed", "attempts": attempts, "smtp_code": result.code,
                    "last_error": result.detail[:2000]}
        if result.outcome == "unknown":
            if row.was_unknown:
                report.add("failed")
                return {**base, "state": "failed", "attempts": attempts, "smtp_code": result.code,
                        "last_error": f"no reply after the message was sent, twice: {result.detail}"[:2000]}
            report.add("unknown")
            return {**base, "state": "unknown", "was_unknown": True, "attempts": attempts,
                    "due_at": now + duration(self.settings.delivery.unknown_retry_delay),
                    "last_error": f"no reply after the message was sent: {result.detail}"[:2000]}
        # temporary
        if now - row.created_at >= duration(self.settings.delivery.max_age):
            report.add("failed")
            return {**base, "state": "failed", "attempts": attempts, "smtp_code": result.code,
                    "last_error": f"gave up after {self.settings.delivery.max_age}: {result.detail}"[:2000]}
        report.add("deferred")
        return {**base, "state": "deferred", "attempts": attempts, "smtp_code": result.code,
                "due_at": now + backoff(self.settings, attempts, self.rng), "last_error": result.detail[:2000]}

    def _open_recorder(self) -> tuple[Connection, db.PgStatement | None]:
        """The connection results are written on. On PostgreSQL its commits do not wait for the WAL
        flush (synchronous_commit off): a killed worker loses nothing the server received, and only a
        crash of the database server itself could forget the last fraction of a second of results,
        which would then be sent again — the same bound as the messages in flight. On PostgreSQL the
        write of sent results is prepared on it once (outbox.SENT_PG)."""
        connection = self.engine.connect()
        if self.engine.dialect.name == "postgresql":
            # Each write is one statement, so it needs no transaction around it: in autocommit mode it
            # costs one round trip instead of three (BEGIN, UPDATE, COMMIT).
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            connection.exec_driver_sql("SET synchronous_commit TO OFF")
            connection.commit()  # ends SQLAlchemy's own bookkeeping; nothing is sent in autocommit mode
            return connection, db.PgStatement(connection.connection.driver_connection, outbox.SENT_PG)
        return connection, None

    def _close_recorder(self, connection: Connection, statement: db.PgStatement | None) -> None:
        if statement is not None:
            statement.close()
        if self.engine.dialect.name == "postgresql":
            try:
                connection.exec_driver_sql("RESET synchronous_commit")  # back to the pool as it came
                connection.commit()
            except Exception:  # a broken connection is discarded by the pool anyway
                pass
        connection.close()

    def _record(self, connection: Connection, statement: db.PgStatement | None, results: list[_Result],
                report: Report) -> None:
        """Write results: the common case (sent) in one statement on a kept connection, the rest
        (retries, failures, suppressions) through the ORM; then their connections may go on."""
        sent = [(item.row.id, item.finished_at, item.message_id, item.result.code)
                for item in results if item.result.outcome == "sent"]
        if sent:
            # PostgreSQL: the connection is in autocommit mode, and one statement needs no transaction.
            with self.write_turn, connection.begin() if self.sqlite else contextlib.nullcontext():
                outbox.record_sent(connection, sent, statement)
            report.sent += len(sent)
        others = [item for item in results if item.result.outcome != "sent"]
        if others:
            with self.write_turn, self.sessions.begin() as session:
                outbox.record(session, [self._outcome(session, item, report) for item in others])
        for item in results:
            if item.permit is not None:
                item.permit.release()

    # --- the loop ----------------------------------------------------------------------------

    def run(
        self,
        *,
        stop: Stop | None = None,
        limit: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Report:
        """Send every due message (or `limit` of them); return what happened. `stop` ends it cleanly:
        no new claims, the messages in flight finish, claimed but unsent rows are released.

        Three kinds of thread: this one claims rows and builds messages; `connections` senders re-check
        consent and talk SMTP; one recorder writes results as they come and renews this worker's
        leases. A connection goes on only while at most UNRECORDED_PER_CONNECTION of its messages wait
        for their result to be written (what a crash could send twice); when it would have to wait,
        it writes what has arrived itself (`_Recorder`).
        """
        stop = stop or StopRequest()
        settings = self.settings.delivery
        report = Report()
        lease = duration(settings.lease)
        with self.write_turn, self.sessions.begin() as session:
            reclaimed = outbox.reclaim_expired(session, self.clock())
        if reclaimed:
            log.warning("%d messages of a stopped worker returned to the queue", reclaimed)

        connections = settings.connections
        # Room for a batch and a half: the next claim (and its rendering) happens while the senders still
        # have half a batch to send, so they never wait for the database.
        ahead = max(connections * 4, settings.batch_size // 2)
        # SimpleQueues: a put or a get is one C call, with no Python-level Condition (twice per message each).
        # The work queue holds at most `ahead` plus one batch: a batch is claimed only below `ahead`.
        work: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        results: queue.SimpleQueue[_Result | None] = queue.SimpleQueue()
        failure: list[BaseException] = []
        recorder = _Recorder(self, results, report, progress, stop, failure)
        limiter = RateLimiter(settings.max_per_second)
        released: list[int] = []  # taken by a sender after the stop request: never handed to SMTP
        senders = [
            threading.Thread(target=self._sender, args=(work, recorder, limiter, stop, released), name=f"sender-{n}",
                             daemon=True)
            for n in range(connections)
        ]
        recording = threading.Thread(target=recorder.loop, args=(lease,), name="recorder", daemon=True)
        recording.start()
        for thread in senders:
            thread.start()
        pending: deque[outbox.Claimed] = deque()  # claimed, not yet built and handed to a sender thread
        claimed_total = 0
        completed = False
        now = self.clock()
        try:
            while not stop.is_set():
                if not pending:
                    if work.qsize() >= ahead:  # the senders have enough to do for now
                        time.sleep(0.005 if ahead >= 64 else 0.001)  # each look costs a wake-up
                        continue
                    batch = settings.batch_size if limit is None else min(settings.batch_size, limit - claimed_total)
                    if batch <= 0:
                        break
                    with self.write_turn, self.sessions.begin() as session:
                        now = self.clock()
                        rows = outbox.claim(session, self.worker, now, lease, batch)
                    # Prepared and built after the commit, without a lock: none is held while a campaign is
                    # rendered (on SQLite the other processes' recorders would wait for it).
                    with self.reads() as session:
                        self._prepare(session, rows)
                    pending = deque(rows)
                    claimed_total += len(rows)
                    if not rows:
                        break  # nothing else is due; what is in flight finishes below
                # Built a few at a time, each few handed over at once and the GIL offered to the senders
                # (a batch built in one go would hold it for tens of milliseconds, and the connections whose
                # replies came meanwhile would wait for the interpreter's switch interval).
                for _ in range(min(BUILD_STEP, len(pending))):
                    work.put(self._job(pending.popleft(), now))
                time.sleep(0)
            completed = not stop.is_set()
        finally:
            # When stopped (or failing), jobs not yet taken by a sender were never handed to SMTP: they go
            # back unsent. When done, the senders work through what is queued before the stop markers
            # (and still give back what they take after a stop request arrives meanwhile).
            unsent = [row.id for row in pending]
            while not completed:
                try:
                    job = work.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    unsent.append(job.row.id)
            for _ in senders:
                work.put(None)
            # The messages the senders are handing over now finish, and their results are recorded.
            for thread in senders:
                thread.join(timeout=max(5.0, settings.timeout_seconds * 3))
            results.put(None)
            recording.join()
            with self.write_turn, self.sessions.begin() as session:  # the processes of a send stop together
                report.released = outbox.release(session, unsent + released)
        if failure:
            raise failure[0]
        return report

    def _sender(self, work: queue.SimpleQueue, recorder: _Recorder, limiter: RateLimiter, stop: Stop,
                released: list[int]) -> None:
        """One connection, reused: take a job, re-check consent, send, report. The connection asks for the
        next job only when it can send it (while the previous message's content is going out), so the
        re-check is the last thing before that message's envelope leaves."""
        check = ConsentCheck(self.engine)
        pace = _Pace()
        # One per message taken and not yet recorded (see UNRECORDED_PER_CONNECTION): the next message's
        # envelope goes with this one's content, so that one is taken too.
        permits = Permits(UNRECORDED_PER_CONNECTION + 1)
        finished = False
        checked: deque[_Job] = deque()  # allowed when last checked, in order
        connections = self.settings.delivery.connections

        def pull(wait: bool) -> list[_Job]:
            """Up to a group of jobs from the queue, never more than this connection's share of what is
            waiting (the other connections must not sit idle); the first may be waited for."""
            nonlocal finished
            jobs: list[_Job] = []
            size = 1 if check.group == 1 else group_size(check.group, work.qsize(), connections, pace.seconds)
            while not finished and len(jobs) < size:
                try:
                    job = work.get() if wait and not jobs else work.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    finished = True
                else:
                    jobs.append(job)
            return jobs

        def take(wait: bool) -> tuple[_Job, Envelope] | None:
            """The next message to send, once fewer than the permitted number of this connection's
            messages wait for their result to be written (a recorder that falls behind holds the
            connection back instead of leaving more to be sent again after a crash)."""
            while not permits.acquire(blocking=False):
                if stop.is_set():
                    return pick(wait)  # hands out nothing once stopped
                # Rather than wait for the recorder thread to wake up, write what has arrived now.
                if not recorder.write_arrived() and permits.acquire(timeout=0.005):
                    break
            taken = pick(wait)
            if taken is None:
                permits.release()
            return taken

        def pick(wait: bool) -> tuple[_Job, Envelope] | None:
            while True:
                if stop.is_set():
                    # Never handed to SMTP: given back. list.extend is atomic; read after the senders are joined.
                    released.extend(job.row.id for job in checked)
                    checked.clear()
                    released.extend(job.row.id for job in pull(False))
                    if finished or not wait:
                        return None
                    time.sleep(0.01)  # until the run's stop markers arrive
                    continue
                if checked and not check.changed():
                    job = checked.popleft()
                    limiter.wait()
                    pace.tick()
                    return job, job.envelope
                jobs = list(checked) or pull(wait)  # a change was heard: what was checked is checked again
                checked.clear()
                if not jobs:
                    return None
                for job, allowed in zip(jobs, check.allowed(jobs), strict=True):  # (nothing to send: refused)
                    if allowed:
                        checked.append(job)
                    elif job.envelope is None:
                        recorder.add(_Result.of(job, SendResult("skipped", None, job.reason), self.clock()))
                    else:
                        recorder.add(_Result.of(job, SendResult("skipped", None, "no consent or suppressed at send time"),
                                            self.clock()))
                if checked:  # checked just now
                    pace.tick()
                    job = checked.popleft()
                    limiter.wait()
                    return job, job.envelope

        def done(job: _Job, result: SendResult) -> None:
            recorder.add(_Result.of(job, result, self.clock(), permits))

        connection = self.transport.connect()
        try:
            while not finished:
                try:
                    connection.stream(take, done)
                except Exception:  # a transport bug: the messages it held keep their lease and are retried
                    log.exception("transport error; the connection is reopened")
                    permits = Permits(UNRECORDED_PER_CONNECTION + 1)  # those held no result
                    connection.close()
                    connection = self.transport.connect()
        finally:
            connection.close()
            check.close()


class _Recorder:
    """Writes a run's results on one connection, one write at a time, whatever has arrived in one go.

    The recorder thread (`loop`) waits for results and renews the worker's leases. A sender that may not
    go on until its earlier results are written does the next write itself (`write_arrived`) instead
    of waiting for that thread to be woken and scheduled (a third of a result's delay, measured on a
    busy machine).
    """

    def __init__(self, delivery: Delivery, results: queue.SimpleQueue, report: Report,
                 progress: Callable[[int], None] | None, stop: Stop, failure: list[BaseException]) -> None:
        self.delivery = delivery
        self.results = results
        self.report = report
        self.progress = progress
        self.stop = stop
        self.failure = failure
        self.turn = threading.Lock()  # one write at a time on the connection
        self.connection, self.statement = delivery._open_recorder()
        self.finished = False

    def add(self, result: _Result) -> None:
        self.results.put(result)

    def _write(self, batch: list[_Result]) -> None:
        """Under `turn`. A failed write (the database went away) stops the run, which then fails loudly;
        the rows not written keep their lease and are retried once it runs out."""
        if not batch or self.failure:
            return
        try:
            self.delivery._record(self.connection, self.statement, batch, self.report)
        except BaseException as exc:
            self.failure.append(exc)
            self.stop.set()
            return
        if self.progress:
            self.progress(len(batch))

    def _drain(self, first: _Result | None = None) -> list[_Result]:
        batch = [] if first is None else [first]
        while True:
            try:
                item = self.results.get_nowait()
            except queue.Empty:
                return batch
            if item is None:  # every sender has finished
                self.finished = True
                return batch
            batch.append(item)

    def write_arrived(self) -> bool:
        """Write what has arrived (from a sender thread); False if nothing had."""
        with self.turn:
            batch = self._drain()
            self._write(batch)
        return bool(batch)

    def loop(self, lease: dt.timedelta) -> None:
        """The recorder thread, until every sender has finished and everything is written."""
        delivery = self.delivery
        renew_every = max(0.5, lease.total_seconds() / 3)
        renewed_at = time.monotonic()
        try:
            while not self.finished:
                try:
                    first = self.results.get(timeout=0.1)
                except queue.Empty:
                    first = None
                else:
                    if first is None:
                        self.finished = True
                    else:
                        time.sleep(RECORD_GATHER_SECONDS)
                with self.turn:
                    self._write(self._drain(first))
                    if not self.failure and time.monotonic() - renewed_at >= renew_every:
                        try:
                            with delivery.write_turn, self.connection.begin():
                                outbox.renew(self.connection, delivery.worker, delivery.clock() + lease)
                        except BaseException as exc:
                            self.failure.append(exc)
                            self.stop.set()
                        renewed_at = time.monotonic()
        finally:
            delivery._close_recorder(self.connection, self.statement)
