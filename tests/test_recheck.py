"""The send-time consent re-check: what it refuses, and that it stays one primary-key lookup."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from mailer import db
from mailer.models import Campaign, Contact, Enrollment, Subscription, Suppression
from mailer.outbound.pacing import group_size
from mailer.outbound.store import GROUP_RECHECK_SQL, RECHECK_SQL, open_store

NOW = dt.datetime(2026, 11, 24, 0, 30, tzinfo=dt.UTC)


@pytest.fixture
def people(sessions) -> dict[str, int]:  # noqa: ANN001
    """One sending campaign, a subscriber, a follow-up contact with an active enrollment."""
    with sessions.begin() as session:
        campaign = Campaign(kind="newsletter", topic="newsletter", subject="News", state="sending", created_at=NOW)
        reader = Contact(email="reader@example.com", created_at=NOW, link_key="k-reader")
        patient = Contact(email="patient@example.com", created_at=NOW, link_key="k-patient", followups_consent=True)
        session.add_all([campaign, reader, patient])
        session.flush()
        session.add(Subscription(contact_id=reader.id, topic="newsletter", status="active", updated_at=NOW))
        enrollment = Enrollment(contact_id=patient.id, status="active", anchor_at=NOW, created_at=NOW)
        session.add(enrollment)
        session.flush()
        return {"campaign": campaign.id, "reader": reader.id, "patient": patient.id, "enrollment": enrollment.id}


def _allows(engine, kind: str, contact_id: int, campaign_id: int = 0, enrollment_id: int = 0) -> bool:  # noqa: ANN001
    check = open_store(engine).consent_check()
    try:
        return check.allows(kind, {"contact_id": contact_id, "campaign_id": campaign_id,
                                   "enrollment_id": enrollment_id})
    finally:
        check.close()


def test_a_campaign_goes_only_to_an_active_subscription_of_a_sending_campaign(engine, sessions, people) -> None:  # noqa: ANN001
    assert _allows(engine, "campaign", people["reader"], people["campaign"])
    assert not _allows(engine, "campaign", people["patient"], people["campaign"])  # not subscribed
    with sessions.begin() as session:
        session.get(Subscription, (people["reader"], "newsletter")).status = "unsubscribed"
    assert not _allows(engine, "campaign", people["reader"], people["campaign"])
    with sessions.begin() as session:
        session.get(Subscription, (people["reader"], "newsletter")).status = "active"
        session.get(Campaign, people["campaign"]).state = "cancelled"
    assert not _allows(engine, "campaign", people["reader"], people["campaign"])


def test_a_suppression_stops_every_kind(engine, sessions, people) -> None:  # noqa: ANN001
    assert _allows(engine, "followup", people["patient"], enrollment_id=people["enrollment"])
    with sessions.begin() as session:
        for key in ("reader", "patient"):
            session.add(Suppression(email_hash=f"h-{key}", contact_id=people[key], reason="complaint",
                                    created_at=NOW))
    assert not _allows(engine, "campaign", people["reader"], people["campaign"])
    assert not _allows(engine, "followup", people["patient"], enrollment_id=people["enrollment"])
    assert not _allows(engine, "confirm", people["reader"])


def test_a_followup_needs_consent_and_a_running_enrollment(engine, sessions, people) -> None:  # noqa: ANN001
    with sessions.begin() as session:
        session.get(Contact, people["patient"]).followups_consent = False
    assert not _allows(engine, "followup", people["patient"], enrollment_id=people["enrollment"])
    with sessions.begin() as session:
        session.get(Contact, people["patient"]).followups_consent = True
        session.get(Enrollment, people["enrollment"]).status = "stopped"
    assert not _allows(engine, "followup", people["patient"], enrollment_id=people["enrollment"])


def _numbered(sql: str) -> tuple[str, list[str]]:
    """:name parameters as PREPARE's $1, $2, ...; and the names in that order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    return re.sub(r":(\w+)", number, sql), names


@pytest.fixture
def unanalyzed(postgres_database) -> Iterator:  # noqa: ANN001
    """An engine on 5,000 bulk-loaded subscriptions with no statistics yet (as right after a large
    import) and one sending campaign."""
    engine = db.make_engine(postgres_database)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE contacts, campaigns, subscriptions, suppressions RESTART IDENTITY CASCADE"))
        conn.execute(text(
            "INSERT INTO contacts (email, name, created_at, link_key, followups_consent, soft_bounces) "
            "SELECT 'r' || i || '@example.com', '', now(), 'k' || i, false, 0 FROM generate_series(1, 5000) i"))
        conn.execute(text("INSERT INTO subscriptions (contact_id, topic, status, updated_at) "
                          "SELECT id, 'newsletter', 'active', now() FROM contacts"))
        conn.execute(text("INSERT INTO campaigns (kind, topic, subject, preheader, intro, body_markdown, state, "
                          "created_at, note) VALUES ('newsletter', 'newsletter', 's', '', '', '', 'sending', "
                          "now(), '')"))
    yield engine
    engine.dispose()


def _generic_plan(engine, prepare: str, execute: str) -> str:  # noqa: ANN001
    """The plan PostgreSQL uses for a prepared statement once it settles on a generic one, as JSON text."""
    with engine.connect() as conn:
        conn.execute(text("SET plan_cache_mode = force_generic_plan"))
        conn.exec_driver_sql(prepare)
        plan = json.dumps(conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {execute}").scalar())
        conn.rollback()
    return plan


def test_the_postgresql_generic_plan_is_a_primary_key_lookup(unanalyzed) -> None:  # noqa: ANN001
    """The prepared re-check must find one subscription by its key, not walk every subscriber of the topic."""
    sql, names = _numbered(RECHECK_SQL["campaign"])
    args = ", ".join({"contact_id": "2500", "campaign_id": "1"}[name] for name in names)
    plan = _generic_plan(unanalyzed, f"PREPARE recheck AS {sql}", f"EXECUTE recheck({args})")
    assert "pk_subscriptions" in plan and "ix_subscriptions_topic_status" not in plan, plan


def test_the_group_recheck_plan_is_a_primary_key_lookup(unanalyzed) -> None:  # noqa: ANN001
    plan = _generic_plan(unanalyzed, f"PREPARE group_recheck(text, bigint) AS {GROUP_RECHECK_SQL}",
                         "EXECUTE group_recheck('1,2,3', 1)")
    assert "pk_subscriptions" in plan and "ix_subscriptions_topic_status" not in plan, plan


def test_a_check_hears_a_change_committed_elsewhere_and_stops_listening_when_closed(postgres_database) -> None:  # noqa: ANN001
    engine = db.make_engine(postgres_database)
    try:
        check = open_store(engine).consent_check()
        assert check.group > 1
        check.allowed([])  # a check was made: nothing heard since
        assert not check.changed()
        with engine.begin() as conn:
            conn.execute(text("UPDATE suppressions SET detail = detail"))  # any statement on a watched table
        deadline = time.monotonic() + 5
        while not check.changed() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert check.changed()
        check.close()
        with engine.connect() as conn:  # the pooled connection it used listens no more, keeps no statement
            assert conn.exec_driver_sql("SELECT count(*) FROM pg_listening_channels()").scalar() == 0
            assert conn.exec_driver_sql("SELECT count(*) FROM pg_prepared_statements").scalar() == 0
    finally:
        engine.dispose()


def test_a_prepared_statement_runs_on_libpq_and_fails_loudly(postgres_database) -> None:  # noqa: ANN001
    import psycopg

    engine = db.make_engine(postgres_database)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            driver = conn.connection.driver_connection
            statement = db.PgStatement(driver, "SELECT x, 10 / x::int, NULLIF($2, '') FROM unnest(string_to_array($1, ',')) x")
            assert statement.run("1,2,5", "é") == [("1", "10", "é"), ("2", "5", "é"), ("5", "2", "é")]
            assert statement.run("1", "") == [("1", "10", None)]
            assert statement.run("", None) == []
            with pytest.raises(psycopg.errors.DivisionByZero, match="division by zero"):
                statement.run("0", "x")
            assert statement.run("2", "y") == [("2", "5", "y")]  # the connection is still usable
            with pytest.raises(psycopg.errors.SyntaxError):
                db.PgStatement(driver, "SELEC 1")
            statement.close()
            assert conn.exec_driver_sql("SELECT count(*) FROM pg_prepared_statements").scalar() == 0
    finally:
        engine.dispose()


def test_on_sqlite_every_message_is_looked_up_on_its_own(sqlite_url) -> None:  # noqa: ANN001
    engine = db.make_engine(sqlite_url)
    try:
        check = open_store(engine).consent_check()
        assert check.group == 1 and check.changed()
        check.close()
    finally:
        engine.dispose()


def test_a_connection_takes_a_group_only_when_the_relay_is_fast() -> None:
    assert group_size(16, 500, 4, 0.0005) == 16  # a fast relay, plenty waiting: a full group
    assert group_size(16, 500, 4, 1.0) == 1  # a relay that takes a second per message: one at a time
    assert group_size(16, 500, 4, 0.005) == 4  # about 20 ms of sending
    assert group_size(16, 8, 4, 0.0005) == 3  # never more than a share of what is waiting
    assert group_size(1, 500, 4, 0.0005) == 1  # SQLite: every message on its own
