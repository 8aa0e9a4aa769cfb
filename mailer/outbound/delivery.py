"""The send engine: claim → re-check consent → personalise → send → record, on parallel connections.

Three kinds of thread. The caller's thread claims due rows in batches (SendStore) and builds each
message from its kind's prepared parts (outbound.kinds), signing it once (DKIM). `connections` sender
threads each own one transport connection and one consent check; right before a message's envelope
goes they re-check its recipient, so an opt-out takes effect even in the middle of a campaign. One
recorder thread writes each result as soon as the reply has come (whatever has arrived, in one write),
never before. What a result makes of its row is retry.next_state's business; the database's, the
store's; talking to the relay, the transport's.

    claim ─► build ─► [work] ─► sender: re-check ─► send ─► [results] ─► recorder: write
                                   ▲ permits: at most UNRECORDED_PER_CONNECTION unwritten ◄─┘
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from sqlalchemy import Engine

from mailer.config import Settings, duration
from mailer.outbound.kinds import Kinds
from mailer.outbound.messages import PreparedMessage, Recipient, make_message_id
from mailer.outbound.pacing import Pace, Permits, RateLimiter, group_size
from mailer.outbound.retry import Policy, next_state
from mailer.outbound.store import Claimed, Recheck, Refusal, SendStore, SentRow, Update, open_store
from mailer.outbound.transport import Envelope, SendResult, Transport
from mailer.outbound.transport.dkim import load_dkim
from mailer.stopping import Stop, StopRequest

log = logging.getLogger("mailer.delivery")

Clock = Callable[[], dt.datetime]
Progress = Callable[[int], None]

# A connection's messages that may be sent (final dot gone) while their result is not written yet: a
# crash can send again at most this many per connection, however slow the database. Tighter limits
# cost throughput on a busy machine (see the README's benchmark section).
UNRECORDED_PER_CONNECTION = 32
BUILD_STEP = 16  # messages the claiming thread builds between offers of the GIL to the sender threads
# After the first result of a write arrives, the recorder waits this long for others to join it:
# fewer, larger writes; a crash can send again only what was answered in that half millisecond.
RECORD_GATHER_SECONDS = 0.0005
# The relay refusing us (authentication, the sender) this many times in a row for one campaign, with
# nothing sent in between, halts that campaign: its remaining messages wait for staff.
HALT_AFTER_REFUSALS = 5


@dataclass
class Report:
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    skipped: int = 0
    unknown: int = 0

    def add(self, state: str, count: int = 1) -> None:
        setattr(self, state, getattr(self, state) + count)

    @property
    def handled(self) -> int:
        return self.sent + self.deferred + self.failed + self.skipped + self.unknown

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("sent", "deferred", "failed", "skipped", "unknown")}


@dataclass(slots=True)
class _Job:
    row: Claimed
    envelope: Envelope
    message_id: str
    recheck: Recheck


@dataclass(slots=True)
class _Result:
    """What the recorder needs of a handled message: not its bytes, dropped once the relay answered."""

    row: Claimed
    message_id: str | None
    result: SendResult
    finished_at: dt.datetime
    permit: Permits | None = None  # the sending connection's, given back once this is written


class Breaker:
    """Counts, per campaign, the relay's refusals of us (`sender_refused`) since its last sent message."""

    def __init__(self, limit: int = HALT_AFTER_REFUSALS) -> None:
        self.limit = limit
        self.refusals: dict[int, int] = {}

    def trips(self, campaign_id: int | None, result: SendResult) -> bool:
        """Note one result (from any sender thread); True once the campaign's refusals reach the limit."""
        if campaign_id is None:
            return False
        if result.sender_refused:
            self.refusals[campaign_id] = self.refusals.get(campaign_id, 0) + 1
            return self.refusals[campaign_id] >= self.limit
        if result.outcome == "sent":
            self.refusals.pop(campaign_id, None)
        return False


@dataclass
class Delivery:
    """One send run's engine: settings, database, transport, clock and message kinds, passed in."""

    settings: Settings
    engine: Engine
    transport: Transport
    clock: Clock
    kinds: Kinds
    store: SendStore | None = None
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}")
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        needed = self.settings.delivery.connections + 2  # re-checks, the recorder, the claims
        capacity = getattr(self.engine.pool, "size", lambda: needed)() + getattr(self.engine.pool, "_max_overflow", 0)
        if capacity < needed:
            raise ValueError(f"the database pool holds {capacity} connections; delivery.connections = "
                             f"{self.settings.delivery.connections} needs {needed} (make the engine with a larger pool)")
        self.store = self.store or open_store(self.engine, self.settings.secret_key,
                                              getattr(self.kinds, "refusals", None))
        self.policy = Policy.of(self.settings)
        self.dkim = load_dkim(self.settings.delivery.dkim, self.settings.dkim_private_key)
        self.mail_from = self.settings.sender.from_email
        self.from_domain = self.mail_from.rpartition("@")[2]
        self.prepared: dict[tuple[str, Hashable], PreparedMessage | LookupError] = {}
        self.breaker = Breaker()
        self.halted: set[int] = set()  # campaigns halted during this run: their messages are given back

    # --- the loop -------------------------------------------------------------------------------

    def run(self, *, stop: Stop | None = None, limit: int | None = None, progress: Progress | None = None) -> Report:
        """Send every due message (or `limit` of them); return what happened. `stop` ends it cleanly:
        no new claims, the messages in flight finish, claimed but unsent rows are given back."""
        stop = stop or StopRequest()
        settings = self.settings.delivery
        store = self.store
        assert store is not None
        report = Report()
        lease = duration(settings.lease)
        reclaimed = store.reclaim_expired(self.clock())
        if reclaimed:
            log.warning("%d messages of a stopped worker returned to the queue", reclaimed)
        # Room for a batch and a half: the next claim happens while the senders still have half a batch.
        ahead = max(settings.connections * 4, settings.batch_size // 2)
        # SimpleQueues: a put or a get is one C call, with no Python-level Condition (twice per message each).
        work: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        recorder = _Recorder(self, report, progress, stop)
        limiter = RateLimiter(settings.max_per_second)
        released: list[int] = []  # taken by a sender but never handed over (stopped, halted campaign)
        senders = [_Sender(self, work, recorder, limiter, stop, released) for _ in range(settings.connections)]
        threads = [threading.Thread(target=recorder.loop, args=(lease,), name="recorder", daemon=True)]
        threads += [threading.Thread(target=sender.run, name=f"sender-{n}", daemon=True)
                    for n, sender in enumerate(senders)]
        for thread in threads:
            thread.start()
        pending: deque[Claimed] = deque()  # claimed, not yet built and handed to a sender
        claimed_total = 0
        completed = False
        now = self.clock()
        try:
            while not stop.is_set():
                if not pending:
                    if work.qsize() >= ahead:  # the senders have enough to do for now
                        time.sleep(0.005 if ahead >= 64 else 0.001)
                        continue
                    batch = settings.batch_size if limit is None else min(settings.batch_size, limit - claimed_total)
                    if batch <= 0:
                        break
                    now = self.clock()
                    rows = store.claim(self.worker, now, lease, batch)
                    if not rows:
                        break  # nothing else is due; what is in flight finishes below
                    with store.reading() as session:  # no lock held while a campaign is prepared
                        self._prepare(session, rows)
                    pending = deque(rows)
                    claimed_total += len(rows)
                # A few at a time, then the GIL is offered to the senders whose replies came meanwhile.
                for _ in range(min(BUILD_STEP, len(pending))):
                    row = pending.popleft()
                    job = self._job(row, now)
                    if isinstance(job, SendResult):  # nothing to send: recorded as it is
                        recorder.add(_Result(row, None, job, now))
                    else:
                        work.put(job)
                time.sleep(0)
            completed = not stop.is_set()
        finally:
            # Stopped (or failing): the jobs no sender took were never handed over and go back. Done: the
            # senders work through what is queued before their stop markers.
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
            for thread in threads[1:]:  # the messages being handed over finish, and are recorded
                thread.join(timeout=max(5.0, settings.timeout_seconds * 3))
            recorder.finish()
            threads[0].join()
            store.release(unsent + released)
        if recorder.failure:
            raise recorder.failure[0]
        return report

    # --- building -------------------------------------------------------------------------------

    def _prepare(self, session: object, rows: list[Claimed]) -> None:
        """Prepare the messages these rows need, once per run (premailer runs here, if anywhere)."""
        for row in rows:
            kind = self.kinds.get(row.kind)
            key = (row.kind, kind.shared_by(row) if kind else None)
            if key in self.prepared:
                continue
            try:
                if kind is None:
                    raise LookupError(f"unknown message kind {row.kind!r}")
                self.prepared[key] = kind.prepare(session, row)  # type: ignore[arg-type]
            except LookupError as exc:
                self.prepared[key] = exc

    def message_id(self, outbox_id: int) -> str:
        return make_message_id(self.settings.secret_key, outbox_id, self.from_domain)

    def _job(self, row: Claimed, now: dt.datetime) -> _Job | SendResult:
        """One recipient's message, ready to send; or the result of a message that cannot be made."""
        kind = self.kinds.get(row.kind)
        prepared = self.prepared.get((row.kind, kind.shared_by(row) if kind else None))
        if kind is None or not isinstance(prepared, PreparedMessage):
            return SendResult("skipped", None, str(prepared or "not prepared"))
        params: dict[str, int | str]
        if kind.addressed is not None:  # not the row's contact (a staff notice)
            target = kind.addressed(row)
            if target is None:
                return SendResult("skipped", None, "no recipient")
            address, params = target
        elif row.contact_id is None or row.email is None:
            return SendResult("skipped", None, "contact erased")
        else:
            address = row.email
            params = {"contact_id": row.contact_id, "campaign_id": row.campaign_id or 0,
                      "enrollment_id": row.enrollment_id or 0}
        name, values = kind.personalise(row)
        message_id = self.message_id(row.id)
        data = prepared.build(Recipient(address, name, values, message_id), now)
        if self.dkim is not None:
            try:
                data = self.dkim.sign(data)
            except ValueError as exc:
                return SendResult("temporary", None, str(exc), "envelope")
        return _Job(row, Envelope(self.mail_from, address, data, key=str(row.id), crlf=True), message_id,
                    (kind.consent, params))

    # --- halting a campaign ---------------------------------------------------------------------

    def halt(self, campaign_id: int, result: SendResult, now: dt.datetime) -> None:
        """The relay keeps refusing us: stop the campaign, its remaining messages wait for staff."""
        if campaign_id in self.halted:
            return
        self.halted.add(campaign_id)  # first: the senders give its messages back from now on
        reason = f"the relay refused the sender {self.breaker.limit} times in a row: {result.detail}"
        assert self.store is not None
        if self.store.halt(campaign_id, reason, now):
            log.error("campaign %d halted, its messages kept queued: %s; fix the relay settings, then resume it",
                      campaign_id, reason, extra={"campaign": campaign_id})

    def is_halted(self, campaign_id: int) -> bool:
        """Whether a campaign whose recipient was refused at the re-check was halted (here or by another
        process): its messages are then given back rather than skipped."""
        assert self.store is not None
        if campaign_id not in self.halted and self.store.halted(campaign_id):
            self.halted.add(campaign_id)
        return campaign_id in self.halted


class _Sender:
    """One connection, reused: take a message, re-check its recipient, send, hand the result over. The
    connection asks for the next message only when it can send it (while the previous one's content
    goes out), so the re-check is the last thing before that message's envelope leaves."""

    def __init__(self, delivery: Delivery, work: queue.SimpleQueue, recorder: _Recorder, limiter: RateLimiter,
                 stop: Stop, released: list[int]) -> None:
        self.delivery = delivery
        self.work = work
        self.recorder = recorder
        self.limiter = limiter
        self.stop = stop
        self.released = released
        self.connections = delivery.settings.delivery.connections
        self.pace = Pace()
        # One per message taken and not yet recorded; the next message's envelope goes with this one's
        # content, so that one is taken too.
        self.permits = Permits(UNRECORDED_PER_CONNECTION + 1)
        self.checked: deque[_Job] = deque()  # allowed when last checked, in order
        self.finished = False  # the run's stop marker was taken
        self.check = None

    def run(self) -> None:
        assert self.delivery.store is not None
        self.check = self.delivery.store.consent_check()
        connection = self.delivery.transport.connect()
        try:
            while not self.finished:
                try:
                    connection.stream(self.take, self.done)
                except Exception:  # a transport bug: the messages it held keep their lease and are retried
                    log.exception("transport error; the connection is reopened")
                    self.permits = Permits(UNRECORDED_PER_CONNECTION + 1)  # those held no result
                    connection.close()
                    connection = self.delivery.transport.connect()
        finally:
            connection.close()
            self.check.close()

    def take(self, wait: bool) -> tuple[_Job, Envelope] | None:
        """The next message to send, once fewer than UNRECORDED_PER_CONNECTION of this connection's
        messages wait for their result to be written (a recorder that falls behind holds the connection
        back instead of leaving more to be sent again after a crash)."""
        while not self.permits.acquire(blocking=False):
            if self.stop.is_set():
                return self._next(wait)  # hands out nothing once stopped
            # Rather than wait for the recorder thread to wake up, write what has arrived now.
            if not self.recorder.write_arrived() and self.permits.acquire(timeout=0.005):
                break
        taken = self._next(wait)
        if taken is None:
            self.permits.release()
        return taken

    def done(self, job: _Job, result: SendResult) -> None:
        delivery = self.delivery
        now = delivery.clock()
        # Counted here, as the replies come, not when they are written: a relay refuses us in a millisecond.
        if (result.sender_refused or delivery.breaker.refusals) and delivery.breaker.trips(job.row.campaign_id, result):
            delivery.halt(job.row.campaign_id, result, now)  # type: ignore[arg-type]
        self.recorder.add(_Result(job.row, job.message_id, result, now, self.permits))

    def _next(self, wait: bool) -> tuple[_Job, Envelope] | None:
        """The next message allowed to go now: re-checked just now, or checked earlier with no change
        to consent heard since."""
        halted = self.delivery.halted
        while True:
            if self.stop.is_set():
                self._give_back(self._pull(False))
                if self.finished or not wait:
                    return None
                time.sleep(0.01)  # until the run's stop markers arrive
                continue
            if not self.checked or self.check.changed():
                jobs = list(self.checked) or self._pull(wait)  # a change was heard: checked again
                self.checked.clear()
                if not jobs:
                    return None
                self._recheck(jobs)
                if not self.checked:
                    continue
            job = self.checked.popleft()
            if job.row.campaign_id in halted:
                self.released.append(job.row.id)
                continue
            self.pace.tick()
            self.limiter.wait()
            return job, job.envelope

    def _pull(self, wait: bool) -> list[_Job]:
        """Up to a group of jobs, never more than this connection's share of what is waiting (the other
        connections must not sit idle); the first may be waited for."""
        group = self.check.group
        size = 1 if group == 1 else group_size(group, self.work.qsize(), self.connections, self.pace.seconds)
        jobs: list[_Job] = []
        while not self.finished and len(jobs) < size:
            try:
                job = self.work.get() if wait and not jobs else self.work.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self.finished = True
            else:
                jobs.append(job)
        return jobs

    def _recheck(self, jobs: list[_Job]) -> None:
        """Keep the jobs whose recipient may still be sent to; the others are skipped (or, when their
        campaign was halted, given back)."""
        for job, allowed in zip(jobs, self.check.allowed([job.recheck for job in jobs]), strict=True):
            if allowed:
                self.checked.append(job)
            elif job.row.campaign_id is not None and self.delivery.is_halted(job.row.campaign_id):
                self.released.append(job.row.id)
            else:
                self.recorder.add(_Result(job.row, None, SendResult("skipped", None, "no consent or suppressed at "
                                                                    "send time"), self.delivery.clock()))

    def _give_back(self, jobs: list[_Job]) -> None:
        """Never handed over: given back. (list.extend is atomic; read after the senders are joined.)"""
        self.released.extend(job.row.id for job in self.checked)
        self.checked.clear()
        self.released.extend(job.row.id for job in jobs)


class _Recorder:
    """Writes a run's results, one write at a time, whatever has arrived in one go.

    Its thread (`loop`) waits for results and renews the worker's leases. A sender that may not go on
    until its earlier results are written does the next write itself (`write_arrived`) instead of
    waiting for that thread to be woken and scheduled.
    """

    def __init__(self, delivery: Delivery, report: Report, progress: Progress | None, stop: Stop) -> None:
        self.delivery = delivery
        self.report = report
        self.progress = progress
        self.stop = stop
        self.results: queue.SimpleQueue[_Result | None] = queue.SimpleQueue()
        self.failure: list[BaseException] = []
        self.turn = threading.Lock()  # one write at a time
        assert delivery.store is not None
        self.writer = delivery.store.recorder()
        self.finished = False

    def add(self, result: _Result) -> None:
        self.results.put(result)

    def finish(self) -> None:
        """Every sender has finished: write what is left and end the thread."""
        self.results.put(None)

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
                            self.writer.renew(delivery.worker, delivery.clock() + lease)
                        except BaseException as exc:
                            self._fail(exc)
                        renewed_at = time.monotonic()
        finally:
            self.writer.close()

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

    def _fail(self, exc: BaseException) -> None:
        """A failed write (the database went away) stops the run, which then fails loudly; the rows not
        written keep their lease and are retried once it runs out."""
        self.failure.append(exc)
        self.stop.set()

    def _write(self, batch: list[_Result]) -> None:
        """Under `turn`: each result's next state (retry.next_state), written in one go; then the
        connections that sent them may go on."""
        if not batch or self.failure:
            return
        delivery = self.delivery
        sent: list[SentRow] = []
        others: list[Update] = []
        refusals: list[Refusal] = []
        for item in batch:
            row, result = item.row, item.result
            if result.outcome == "sent":
                sent.append((row.id, item.finished_at, item.message_id, result.code))
                continue
            after = next_state(row, result, item.finished_at, delivery.policy, delivery.rng.uniform(0.8, 1.2))
            others.append((row.id, after.changes))
            self.report.add(after.state)
            if result.outcome == "permanent":  # what it does to the recipient: the refusal rule's call
                refusals.append(Refusal(row.id, row.contact_id, row.campaign_id, result.code, result.detail,
                                        result.stage, after.suppress))
        try:
            self.writer.write(sent, others, refusals, batch[-1].finished_at)
        except BaseException as exc:
            self._fail(exc)
            return
        self.report.sent += len(sent)
        for item in batch:
            if item.permit is not None:
                item.permit.release()
        if self.progress:
            self.progress(len(batch))
