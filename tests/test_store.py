"""The send store's contract, the same on SQLite and PostgreSQL: claim, re-check, record, renew, release,
halt."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from mailer import audience
from mailer.models import Campaign, OutboxMessage, Suppression
from mailer.outbound import outbox
from mailer.outbound.store import HELD, Refusal, open_store
from tests.builders import T0, add_subscribers, start_campaign

LEASE = dt.timedelta(minutes=5)


def states(sessions) -> dict[int, OutboxMessage]:  # noqa: ANN001
    with sessions() as session:
        return {row.id: row for row in session.scalars(select(OutboxMessage))}


def test_a_claim_takes_due_rows_once_with_the_recipient_and_a_lease(settings, sessions, engine) -> None:  # noqa: ANN001
    add_subscribers(sessions, settings, [f"c{n}@example.com" for n in range(5)])
    campaign_id = start_campaign(sessions, settings)
    store = open_store(engine, settings.secret_key)
    assert store.claim("w1", T0 - dt.timedelta(seconds=1), LEASE, 10) == []  # nothing due before it was queued
    first = store.claim("w1", T0, LEASE, 3)
    second = store.claim("w2", T0, LEASE, 10)
    assert [row.id for row in first] == sorted(row.id for row in first) and len(first) == 3
    assert len(second) == 2 and not {row.id for row in first} & {row.id for row in second}
    assert store.claim("w3", T0, LEASE, 10) == []
    row = first[0]
    assert (row.kind, row.campaign_id, row.attempts, row.was_unknown) == ("oneoff", campaign_id, 0, False)
    assert row.email == "c0@example.com" and row.link_key
    stored = states(sessions)[row.id]
    assert (stored.state, stored.claimed_by, stored.lease_until) == ("sending", "w1", T0 + LEASE)


def test_the_recheck_follows_consent_as_it_is_now(settings, sessions, engine) -> None:  # noqa: ANN001
    add_subscribers(sessions, settings, ["stay@example.com", "leave@example.com"])
    campaign_id = start_campaign(sessions, settings)
    store = open_store(engine, settings.secret_key)
    rows = {row.email: row for row in store.claim("w1", T0, LEASE, 10)}
    with sessions.begin() as session:
        audience.suppress(session, settings.secret_key, audience.find_contact(session, "leave@example.com"), "staff", T0)
    check = store.consent_check()
    try:
        asks = [("campaign", {"contact_id": rows[address].contact_id, "campaign_id": campaign_id, "enrollment_id": 0})
                for address in ("stay@example.com", "leave@example.com")]
        assert check.allowed([*asks, None]) == [True, False, False]
    finally:
        check.close()


def test_a_recorder_writes_sent_results_retries_and_suppressions(settings, sessions, engine) -> None:  # noqa: ANN001
    add_subscribers(sessions, settings, ["ok@example.com", "later@example.com", "gone@example.com"])
    start_campaign(sessions, settings)
    store = open_store(engine, settings.secret_key)
    rows = {row.email: row for row in store.claim("w1", T0, LEASE, 10)}
    recorder = store.recorder()
    try:
        recorder.write([(rows["ok@example.com"].id, T0, "<1.tag@x>", 250)],
                       [(rows["later@example.com"].id, {"state": "deferred", "due_at": T0 + LEASE, "attempts": 1,
                                                        "lease_until": None, "claimed_by": None}),
                        (rows["gone@example.com"].id, {"state": "failed", "attempts": 1, "lease_until": None,
                                                       "claimed_by": None})],
                       [Refusal(rows["gone@example.com"].id, rows["gone@example.com"].contact_id, None, 550,
                                "550 5.1.1 no such user", "rcpt", address_rejected=True)], T0)
    finally:
        recorder.close()
    found = states(sessions)
    ok, later, gone = (found[rows[a].id] for a in ("ok@example.com", "later@example.com", "gone@example.com"))
    assert (ok.state, ok.sent_at, ok.message_id, ok.smtp_code, ok.attempts) == ("sent", T0, "<1.tag@x>", 250, 1)
    assert (later.state, later.due_at, later.claimed_by) == ("deferred", T0 + LEASE, None)
    assert gone.state == "failed"
    with sessions() as session:
        assert [(s.contact_id, s.reason) for s in session.scalars(select(Suppression))] == [
            (rows["gone@example.com"].contact_id, "hard_bounce")]


def test_renew_extends_only_this_workers_leases_and_release_gives_rows_back(settings, sessions, engine) -> None:  # noqa: ANN001
    add_subscribers(sessions, settings, ["a@example.com", "b@example.com"])
    start_campaign(sessions, settings)
    store = open_store(engine, settings.secret_key)
    mine = store.claim("w1", T0, LEASE, 1)
    theirs = store.claim("w2", T0, LEASE, 1)
    recorder = store.recorder()
    try:
        recorder.renew("w1", T0 + 2 * LEASE)
    finally:
        recorder.close()
    found = states(sessions)
    assert found[mine[0].id].lease_until == T0 + 2 * LEASE and found[theirs[0].id].lease_until == T0 + LEASE
    assert store.release([mine[0].id]) == 1
    again = states(sessions)[mine[0].id]
    assert (again.state, again.claimed_by, again.lease_until, again.due_at) == ("queued", None, None, T0)
    assert store.release([]) == 0
    assert store.reclaim_expired(T0 + LEASE + dt.timedelta(seconds=1)) == 1  # w2 died: its row waits again


def test_a_halted_campaign_keeps_its_messages_queued_until_resumed(settings, sessions, engine) -> None:  # noqa: ANN001
    from mailer.publishing import campaigns

    add_subscribers(sessions, settings, [f"h{n}@example.com" for n in range(4)])
    campaign_id = start_campaign(sessions, settings)
    store = open_store(engine, settings.secret_key)
    claimed = store.claim("w1", T0, LEASE, 1)
    assert not store.halted(campaign_id)
    assert store.halt(campaign_id, "535 authentication failed", T0)
    assert not store.halt(campaign_id, "again", T0)  # once
    assert store.halted(campaign_id)
    store.release([row.id for row in claimed])  # given back held, like the others
    with sessions() as session:
        campaign = session.get(Campaign, campaign_id)
        assert (campaign.state, campaign.halted_reason, campaign.halted_at) == ("halted", "535 authentication failed", T0)
        assert outbox.counts(session, campaign_id)["queued"] == 4  # none failed, none skipped
        assert set(session.scalars(select(OutboxMessage.due_at))) == {HELD}
    assert store.claim("w1", T0 + dt.timedelta(days=30), LEASE, 10) == []  # nothing is taken meanwhile
    with sessions.begin() as session:
        assert campaigns.resume(session, session.get(Campaign, campaign_id), T0 + dt.timedelta(hours=1)) == 4
    assert len(store.claim("w1", T0 + dt.timedelta(hours=1), LEASE, 10)) == 4
