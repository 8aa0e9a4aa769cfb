"""The send loop against a real, misbehaving SMTP server: every fault ends in its documented state."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from sqlalchemy import func, select

from mailer import audience, config
from mailer.message_kinds import registry
from mailer.models import Campaign, OutboxMessage, Suppression
from mailer.outbound import outbox, store
from mailer.outbound.delivery import Delivery
from mailer.outbound.retry import Policy, backoff
from mailer.publishing import campaigns
from mailer.runtime import fixed_clock
from tests.builders import T0, add_subscribers, deliver, smtp, start_campaign, wait_until


def rows(sessions) -> dict[str, OutboxMessage]:  # noqa: ANN001
    with sessions() as session:
        found = session.execute(
            select(OutboxMessage, audience.Contact.email).join(audience.Contact, audience.Contact.id == OutboxMessage.contact_id)
        ).all()
        return {email: row for row, email in found}


def suppressed(sessions) -> list[str]:  # noqa: ANN001
    with sessions() as session:
        return list(session.scalars(select(Suppression.reason)))


def test_sends_each_message_once_over_reused_connections(settings, sessions, engine, smtp_server) -> None:  # noqa: ANN001
    addresses = [f"person{n}@example.com" for n in range(30)]
    add_subscribers(sessions, settings, addresses)
    campaign_id = start_campaign(sessions, settings)
    report = deliver(settings, engine, smtp_server, T0)
    assert report.sent == 30 and report.handled == 30
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == sorted(addresses)
    assert smtp_server.connections <= settings.delivery.connections  # reused, not one per message
    assert deliver(settings, engine, smtp_server, T0).handled == 0  # nothing twice
    with sessions() as session:
        assert outbox.counts(session, campaign_id)["sent"] == 30
        assert campaigns.finish(session, T0) == [campaign_id]


@pytest.mark.parametrize("reply", ["451 4.7.1 greylisted, try later", "452 4.2.2 mailbox full"])
def test_temporary_rcpt_failure_is_retried_at_the_backoff_time(settings, sessions, engine, smtp_server, reply) -> None:  # noqa: ANN001
    add_subscribers(sessions, settings, ["grey@example.com"])
    start_campaign(sessions, settings)
    smtp_server.faults.rcpt["grey@example.com"] = reply
    report = deliver(settings, engine, smtp_server, T0)
    assert report.deferred == 1 and smtp_server.received == []
    row = rows(sessions)["grey@example.com"]
    assert row.state == "deferred" and row.smtp_code == int(reply[:3]) and row.attempts == 1
    first = config.duration(settings.delivery.retry_initial)
    assert first * 0.8 <= row.due_at - T0 <= first * 1.2
    # Not before it is due...
    assert deliver(settings, engine, smtp_server, row.due_at - dt.timedelta(seconds=1)).handled == 0
    # ...and delivered once it is, when the relay has recovered.
    smtp_server.faults.rcpt.clear()
    assert deliver(settings, engine, smtp_server, row.due_at).sent == 1
    assert len(smtp_server.received) == 1 and rows(sessions)["grey@example.com"].attempts == 2
    assert suppressed(sessions) == []


@pytest.mark.parametrize("reply", ["550 5.1.1 no such user", "553 5.1.3 bad address syntax"])
def test_permanent_rcpt_failure_fails_and_suppresses_only_that_recipient(settings, sessions, engine, smtp_server, reply) -> None:  # noqa: ANN001
    add_subscribers(sessions, settings, ["gone@example.com", "fine@example.com"])
    start_campaign(sessions, settings)
    smtp_server.faults.rcpt["gone@example.com"] = reply
    report = deliver(settings, engine, smtp_server, T0)
    assert (report.sent, report.failed) == (1, 1)
    found = rows(sessions)
    assert found["gone@example.com"].state == "failed" and found["gone@example.com"].smtp_code == int(reply[:3])
    assert reply[4:] in found["gone@example.com"].last_error
    assert found["fine@example.com"].state == "sent"
    assert suppressed(sessions) == ["hard_bounce"]
    # The next campaign does not even enqueue the bounced address.
    start_campaign(sessions, settings, T0 + dt.timedelta(days=1))
    deliver(settings, engine, smtp_server, T0 + dt.timedelta(days=1))
    assert [r.rcpt_tos for r in smtp_server.received].count(["gone@example.com"]) == 0


@pytest.mark.parametrize(("reply", "suppression"), [("554 5.7.1 message refused as spam", []),
                                                    ("550 5.1.1 user unknown", ["hard_bounce"])])
def test_permanent_data_failure(settings, sessions, engine, smtp_server, reply, suppression) -> None:  # noqa: ANN001
    """5xx after DATA fails the message; only a bad-mailbox status (5.1.x) suppresses the address."""
    add_subscribers(sessions, settings, ["x@example.com"])
    start_campaign(sessions, settings)
    smtp_server.faults.data = reply
    assert deliver(settings, engine, smtp_server, T0).failed == 1
    row = rows(sessions)["x@example.com"]
    assert row.state == "failed" and row.smtp_code == int(reply[:3]) and reply[4:] in row.last_error
    assert suppressed(sessions) == suppression


def test_a_refused_sender_is_temporary_and_suppresses_nobody(settings, sessions, engine, smtp_server) -> None:  # noqa: ANN001
    add_subscribers(sessions, settings, ["a@example.com", "b@example.com"])
    start_campaign(sessions, settings)
    smtp_server.faults.mail = "553 5.7.1 sender not allowed"
    report = deliver(settings, engine, smtp_server, T0)
    assert report.deferred == 2 and suppressed(sessions) == []


def test_temporary_failures_give_up_after_max_age_without_suppression(settings, sessions, engine, smtp_server) -> None:  # noqa: ANN001
    add_subscribers(sessions, settings, ["slow@example.com"])
    start_campaign(sessions, settings)
    smtp_server.faults.rcpt["*"] = "421 4.3.2 service not available"
    at = T0
    for _ in range(100):
        deliver(settings, engine, smtp_server, at)
        row = rows(sessions)["slow@example.com"]
        if row.state != "deferred":
            break
        assert row.due_at - at <= config.duration(settings.delivery.retry_max) * 1.2
        at = row.due_at
    assert row.state == "failed" and "gave up after P2D" in row.last_error
    assert at - T0 >= config.duration(settings.delivery.max_age) - config.duration(settings.delivery.retry_max) * 1.2
    assert suppressed(sessions) == []
    assert smtp_server.received == []


def test_drop_after_the_final_dot_is_unknown_and_retried_once(settings, sessions, engine, smtp_server) -> None:  # noqa: ANN001
    add_subscribers(sessions, settings, ["maybe@example.com"])
    start_campaign(sessions, settings)
    smtp_server.faults.drop_after_dot = True
    report = deliver(settings, engine, smtp_server, T0)
    assert report.unknown == 1
    row = rows(sessions)["maybe@example.com"]
    delay = config.duration(settings.delivery.unknown_retry_delay)
    assert row.state == "unknown" and row.was_unknown and row.due_at == T0 + delay
    assert deliver(settings, engine, smtp_server, T0 + delay - dt.timedelta(seconds=1)).handled == 0
    # The retry happens once; a second unknown is reported as failed, never retried forever.
    assert deliver(settings, engine, smtp_server, T0 + delay).failed == 1
    assert rows(sessions)["maybe@example.com"].state == "failed"
    assert suppressed(sessions) == []


def test_drop_after_the_dot_then_success_on_the_retry(settings, sessions, engine, smtp_server) -> None:  # noqa: ANN001
    add_subscribers(sessions, settings, ["maybe@example.com"])
    start_campaign(sessions, settings)
    smtp_server.faults.drop_after_dot = True
    deliver(settings, engine, smtp_server, T0)
    smtp_server.faults.drop_after_dot = False
    later = T0 + config.duration(settings.delivery.unknown_retry_delay)
    assert deliver(settings, engine, smtp_server, later).sent == 1
    assert rows(sessions)["maybe@example.com"].state == "sent"


def test_a_stall_past_the_timeout_after_data_is_unknown(settings, sessions, engine, smtp_server) -> None:  # noqa: ANN001
    add_subscribers(sessions, settings, ["stall@example.com"])
    start_campaign(sessions, settings)
    smtp_server.faults.data_delay = 1.5
    report = deliver(settings, engine, smtp_server, T0, timeout=0.5)
    assert report.unknown == 1


def test_unsubscribe_during_a_campaign_stops_the_next_message(settings, sessions, engine, smtp_server) -> None:  # noqa: ANN001
    addresses = [f"p{n:02d}@example.com" for n in range(20)]
    add_subscribers(sessions, settings, addresses)
    start_campaign(sessions, settings)
    settings = settings.model_copy(update={"delivery": settings.delivery.model_copy(update={"connections": 1})})
    leaver = "p15@example.com"
    seen = threading.Event()

    def on_data(count: int) -> None:
        # After the 5th message reaches the relay, p15 unsubscribes (as a one-click POST would).
        if count == 5 and not seen.is_set():
            seen.set()
            with sessions.begin() as session:
                contact = audience.find_contact(session, leaver)
                audience.unsubscribe_all(session, settings.secret_key, contact, source="one-click", now=T0)
        return None

    smtp_server.faults.data_script = on_data
    report = deliver(settings, engine, smtp_server, T0)
    delivered = [r.rcpt_tos[0] for r in smtp_server.received]
    assert leaver not in delivered
    assert report.sent == 19 and report.skipped == 1
    assert rows(sessions)[leaver].state == "skipped"


@pytest.mark.parametrize("how", ["unsubscribe", "suppress", "cancel"])
def test_a_change_stops_a_message_that_was_already_checked(settings, sessions, engine, smtp_server, how) -> None:  # noqa: ANN001
    """The recipient two places further in line was checked with a group (PostgreSQL) or is about to
    be (SQLite): a change committed now must still stop it; a cancelled campaign stops every message."""
    addresses = [f"p{n:02d}@example.com" for n in range(20)]
    add_subscribers(sessions, settings, addresses)
    campaign_id = start_campaign(sessions, settings)
    settings = settings.model_copy(update={"delivery": settings.delivery.model_copy(update={"connections": 1})})
    leaver = "p06@example.com"

    def on_data(count: int) -> None:
        if count == 5:  # p04's content has arrived; p05's envelope left with it, p06 is next
            with sessions.begin() as session:
                contact = audience.find_contact(session, leaver)
                if how == "unsubscribe":
                    audience.unsubscribe_all(session, settings.secret_key, contact, source="one-click", now=T0)
                elif how == "suppress":
                    audience.suppress(session, settings.secret_key, contact, "complaint", T0)
                else:
                    session.get(Campaign, campaign_id).state = "cancelled"
        return None

    smtp_server.faults.data_script = on_data
    report = deliver(settings, engine, smtp_server, T0)
    delivered = [r.rcpt_tos[0] for r in smtp_server.received]
    assert leaver not in delivered
    if how == "cancel":
        assert delivered == addresses[:6] and report.skipped == 14
    else:
        assert report.sent == 19 and report.skipped == 1


def test_a_stop_request_releases_unsent_claims(settings, sessions, engine, smtp_server) -> None:  # noqa: ANN001
    add_subscribers(sessions, settings, [f"s{n}@example.com" for n in range(40)])
    start_campaign(sessions, settings)
    stop = threading.Event()
    smtp_server.faults.data_script = lambda count: stop.set() if count == 3 else None
    smtp_server.faults.data_delay = 0.05
    report = Delivery(settings, engine, smtp(smtp_server), fixed_clock(T0), registry(settings)).run(stop=stop)
    with sessions() as session:
        counts = outbox.counts(session)
    assert counts["sending"] == 0
    assert counts["sent"] == report.sent == len(smtp_server.received)
    assert counts["queued"] == 40 - report.sent and report.sent < 40


def test_sent_results_are_recorded_exactly(settings, sessions, engine) -> None:  # noqa: ANN001
    """record_sent, the hot path's one write per batch: every row gets its own time, Message-ID and
    code (None for the file transport), and nothing else is touched."""
    add_subscribers(sessions, settings, [f"w{n}@example.com" for n in range(4)])
    start_campaign(sessions, settings)
    with sessions.begin() as session:
        claimed = store.claim(session, "worker-1", T0, dt.timedelta(minutes=5), 10)
    ids = [row.id for row in claimed]
    written = [(row_id, T0 + dt.timedelta(seconds=n, microseconds=123), f"<{row_id}.tag{n}@example.org>",
                None if n == 3 else 250) for n, row_id in enumerate(ids[:3])] + [(ids[3], T0, "<x@y>", None)]
    with engine.connect() as connection, connection.begin():
        store.record_sent(connection, written)
    with sessions() as session:
        stored = {row.id: row for row in session.scalars(select(OutboxMessage))}
    for row_id, at, mid, code in written:
        row = stored[row_id]
        assert (row.state, row.sent_at, row.message_id, row.smtp_code, row.attempts) == ("sent", at, mid, code, 1)
        assert row.claimed_by is None and row.lease_until is None
        with sessions() as session:  # stored as the ORM stores times: comparisons in SQL find it
            assert session.scalar(select(OutboxMessage.id).where(OutboxMessage.sent_at == at)) == row_id


def test_the_due_count_can_stop_early(settings, sessions) -> None:  # noqa: ANN001
    add_subscribers(sessions, settings, [f"d{n}@example.com" for n in range(5)])
    start_campaign(sessions, settings)
    with sessions() as session:
        assert outbox.due_count(session, T0) == 5
        assert outbox.due_count(session, T0, at_most=3) == 3
        assert outbox.due_count(session, T0 - dt.timedelta(days=1)) == 0  # nothing due before it was queued


def test_backoff_grows_and_is_capped(settings) -> None:  # noqa: ANN001
    import random

    rng = random.Random(1)
    delays = [backoff(Policy.of(settings), attempt, rng.uniform(0.8, 1.2)) for attempt in range(1, 12)]
    cap = config.duration(settings.delivery.retry_max)
    assert delays[0] < delays[2] < delays[4]
    assert all(d <= cap * 1.2 for d in delays) and delays[-1] >= cap * 0.8


def test_enqueue_is_set_based_counts_and_repeats_safely(settings, sessions) -> None:  # noqa: ANN001
    add_subscribers(sessions, settings, ["a@example.com", "b@example.com", "c@example.com"])
    with sessions.begin() as session:
        audience.suppress(session, settings.secret_key, audience.find_contact(session, "c@example.com"), "staff", T0)
        campaign = campaigns.create_oneoff(session, settings, topic="newsletter", subject="s", body_markdown="b", now=T0)
        assert outbox.enqueue_campaign(session, campaign, T0) == 2  # the suppressed address is not enqueued
        assert outbox.enqueue_campaign(session, campaign, T0) == 0
        assert outbox.counts(session, campaign.id)["queued"] == 2


def test_a_live_worker_keeps_its_leases(settings, sessions, engine, smtp_server) -> None:  # noqa: ANN001
    """A slow relay makes a batch outlast the lease; the worker renews it, so nobody takes its rows."""
    from mailer.runtime import system_clock

    add_subscribers(sessions, settings, [f"slow{n}@example.com" for n in range(16)])
    start_campaign(sessions, settings)
    settings = settings.model_copy(update={"delivery": settings.delivery.model_copy(
        update={"connections": 1, "lease": "PT2S"})})
    smtp_server.faults.data_delay = 0.25  # 16 messages: about 4 s, twice the lease
    reports = []
    worker = threading.Thread(target=lambda: reports.append(
        Delivery(settings, engine, smtp(smtp_server), system_clock, registry(settings)).run()))
    worker.start()

    def first_lease() -> dt.datetime | None:
        with sessions() as session:
            return session.scalar(select(func.min(OutboxMessage.lease_until)).where(OutboxMessage.state == "sending"))

    try:
        lease_end = wait_until(first_lease)
        wait_until(lambda: system_clock() > lease_end + dt.timedelta(seconds=0.2))  # past the first lease...
        assert worker.is_alive()  # ...while the worker is still sending
        with sessions.begin() as session:
            assert outbox.reclaim_expired(session, system_clock()) == 0
    finally:
        worker.join(30)
    assert reports and reports[0].sent == 16
    assert len(smtp_server.received) == 16


def test_max_per_second_paces_all_connections_together(settings, sessions, engine, smtp_server) -> None:  # noqa: ANN001
    add_subscribers(sessions, settings, [f"r{n}@example.com" for n in range(12)])
    start_campaign(sessions, settings)
    settings = settings.model_copy(update={"delivery": settings.delivery.model_copy(
        update={"connections": 4, "max_per_second": 20.0})})
    started = time.monotonic()
    assert deliver(settings, engine, smtp_server, T0).sent == 12
    # 12 messages at 20/s across four connections: the last may start 11/20 s after the first.
    assert time.monotonic() - started >= 0.5


def test_a_slow_relay_gets_every_connection_busy(settings, sessions, engine, smtp_server) -> None:  # noqa: ANN001
    """With a relay that takes its time over each message, the work is shared out: no connection takes
    more than its share while others wait (throughput grows with the connections)."""
    add_subscribers(sessions, settings, [f"s{n:02d}@example.com" for n in range(16)])
    start_campaign(sessions, settings)
    settings = settings.model_copy(update={"delivery": settings.delivery.model_copy(update={"connections": 4})})
    smtp_server.faults.data_delay = 0.15
    started = time.monotonic()
    assert deliver(settings, engine, smtp_server, T0).sent == 16
    elapsed = time.monotonic() - started
    assert smtp_server.connections == 4
    assert elapsed < 1.5, f"16 messages at 0.15 s each over 4 connections took {elapsed:.2f} s"  # ideal 0.6 s


def test_sixteen_connections_share_one_process(settings, sessions, smtp_server, database_url) -> None:  # noqa: ANN001
    from mailer import db

    add_subscribers(sessions, settings, [f"c{n}@example.com" for n in range(40)])
    start_campaign(sessions, settings)
    settings = settings.model_copy(update={"delivery": settings.delivery.model_copy(update={"connections": 16})})
    with pytest.raises(ValueError, match="needs 18"):
        Delivery(settings, db.make_engine(database_url, pool_size=5), smtp(smtp_server), fixed_clock(T0), registry(settings))
    engine = db.make_engine(database_url, pool_size=settings.delivery.connections + 4)  # what Runtime makes
    try:
        assert deliver(settings, engine, smtp_server, T0).sent == 40
    finally:
        engine.dispose()
    assert 1 < smtp_server.connections <= 16


@pytest.mark.parametrize(("reason", "outcome"), [("unsubscribed", "sent"), ("staff", "skipped"),
                                                 ("hard_bounce", "skipped")])
def test_a_confirmation_goes_only_past_suppressions_the_person_can_lift(settings, sessions, engine, smtp_server,
                                                                       reason, outcome) -> None:  # noqa: ANN001
    with sessions.begin() as session:
        contact, _ = audience.get_or_create_contact(session, "again@example.com", "", T0)
        audience.suppress(session, settings.secret_key, contact, reason, T0)
        outbox.enqueue_one(session, dedupe_key=f"confirm:{contact.id}:1", kind="confirm", contact_id=contact.id,
                           consent_event_id=None, now=T0)
    report = deliver(settings, engine, smtp_server, T0)
    assert getattr(report, outcome) == 1
    assert len(smtp_server.received) == (1 if outcome == "sent" else 0)


class _OutboxLock:
    """Another session holding the outbox: on PostgreSQL every row locked, on SQLite the write lock."""

    def __init__(self, engine) -> None:  # noqa: ANN001
        self.raw = engine.raw_connection()
        cursor = self.raw.cursor()
        if engine.dialect.name == "sqlite":
            self.raw.driver_connection.isolation_level = None  # BEGIN as written, not the driver's own
            cursor.execute("BEGIN IMMEDIATE")
        else:
            cursor.execute("SELECT id FROM outbox FOR UPDATE")

    def release(self) -> None:
        self.raw.rollback()
        self.raw.invalidate()  # closed, not handed back to the pool as it was changed


def test_a_recorder_that_cannot_write_holds_the_connections_back(settings, sessions, engine, smtp_server) -> None:  # noqa: ANN001
    """Replies whose results cannot be written (the database is locked) stop each connection after
    UNRECORDED_PER_CONNECTION of them: that, and no more, is what a crash then could send twice. When the
    database answers again the send goes on, each message once."""
    from mailer.outbound.delivery import UNRECORDED_PER_CONNECTION

    settings = settings.model_copy(update={"delivery": settings.delivery.model_copy(update={"connections": 1})})
    addresses = [f"person{n:03d}@example.com" for n in range(120)]
    add_subscribers(sessions, settings, addresses)
    start_campaign(sessions, settings)
    smtp_server.faults.data_delay = 0.005  # without the limit, the queued messages would all go in 0.6 s
    outcome: list[object] = []
    sending = threading.Thread(target=lambda: outcome.append(deliver(settings, engine, smtp_server, T0)))
    sending.start()
    wait_until(lambda: len(smtp_server.received) >= 8, timeout=20, every=0.005)
    lock = _OutboxLock(engine)
    try:
        time.sleep(1.5)
        held = len(smtp_server.received)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:  # takes no lock
            written = connection.scalar(select(func.count()).where(OutboxMessage.state == "sent"))
        time.sleep(0.3)
        assert len(smtp_server.received) == held  # nothing more goes while nothing can be written
    finally:
        lock.release()
    sending.join(timeout=30)
    limit = settings.delivery.connections * UNRECORDED_PER_CONNECTION
    assert 0 < held - written <= limit, (held, written, limit)
    assert held < len(addresses)
    assert outcome[0].sent == len(addresses)
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == addresses
