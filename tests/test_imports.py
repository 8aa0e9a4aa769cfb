"""Subscriber CSV import (mailer.imports and `mailer subscribers import`), on both databases: the rules
row by row, the consent ledger, skipped versus rejected rows and the exit status, all or nothing."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from mailer import audience, imports
from mailer.cli import main
from mailer.models import ConsentEvent, Contact, Subscription, Suppression
from mailer.runtime import Runtime

HEADER = "email,name,topics,consent_source,consented_at\n"
NOW = dt.datetime(2026, 3, 2, 15, 0, tzinfo=dt.UTC)


def counts(runtime: Runtime) -> tuple[int, int, int, int]:
    with runtime.sessions() as session:
        return tuple(session.scalar(select(func.count()).select_from(model))
                     for model in (Contact, ConsentEvent, Subscription, Suppression))


@pytest.fixture
def known(runtime: Runtime) -> dict[str, int]:
    """People already on file: active, pending, unsubscribed from one topic, suppressed, erased, nameless."""
    settings = runtime.settings
    secret, topics = settings.secret_key, settings.topics
    ids = {}
    with runtime.sessions.begin() as session:
        for email, name, wanted in (("active@example.com", "Al", ["newsletter"]),
                                    ("partly@example.com", "Pat", ["newsletter", "events"]),
                                    ("bounced@example.com", "Bo", ["newsletter"]),
                                    ("nameless@example.com", "", ["events"])):
            contact, _ = audience.staff_subscribe(session, secret, topics, email=email, name=name,
                                                  topic_names=wanted, source="fixture", now=NOW)
            ids[email] = contact.id
        pending, _ = audience.get_or_create_contact(session, "pending@example.com", "Pen", NOW)
        audience.request_subscription(session, pending, "newsletter", source="signup-form", wording="w",
                                      request=None, now=NOW)
        ids["pending@example.com"] = pending.id
        partly = session.get(Contact, ids["partly@example.com"])
        audience.set_topics(session, partly, {"newsletter"}, source="preference-page", request=None, now=NOW)
        audience.suppress(session, secret, session.get(Contact, ids["bounced@example.com"]), "hard_bounce", NOW)
        erased, _ = audience.get_or_create_contact(session, "erased@example.com", "Er", NOW)
        audience.erase(session, secret, erased, NOW)
    return ids


def test_every_kind_of_row(runtime: Runtime, known: dict[str, int]) -> None:
    settings = runtime.settings
    csv_text = HEADER + "\n".join([
        "new@example.com,New Person,newsletter;events,event sign-up sheet,2026-02-01T10:00:00Z",  # 2
        "active@example.com,Al,newsletter,old list,2026-01-01T10:00:00Z",  # 3: already subscribed
        "active@example.com,Al,events,old list,2026-01-01T10:00:00Z",  # 4: adds a topic
        "pending@example.com,,newsletter,paper form,2026-01-02T10:00:00Z",  # 5: pending becomes active
        "partly@example.com,Pat,newsletter;events,old list,2026-01-01T10:00:00Z",  # 6: unsubscribed from events
        "BOUNCED@example.com,Bo,newsletter,old list,2026-01-01T10:00:00Z",  # 7: suppressed
        "erased@example.com,Er,newsletter,old list,2026-01-01T10:00:00Z",  # 8: erased: only a hash is left
        "nameless@example.com,Nia Name,newsletter,old list,2026-01-01T10:00:00Z",  # 9: name filled in
        "noconsent@example.com,No,newsletter,,",  # 10
        "bad-address,Bad,newsletter,web,2026-01-01T10:00:00Z",  # 11
        "later@example.com,Lat,newsletter,web,2027-01-01T10:00:00Z",  # 12
        "topic@example.com,Top,gardening,web,2026-01-01T10:00:00Z",  # 13
        "short@example.com,Short,newsletter",  # 14
        "new@example.com,New Person,events,again,2026-02-01T10:00:00Z",  # 15: added by line 2 already
        "twice@example.com,Two,newsletter,web,2026-01-01T10:00:00Z",  # 16
        "Twice@Example.com,Two,newsletter;events,web,2026-01-01T10:00:00Z",  # 17: only events is new
    ]) + "\n"
    before = counts(runtime)
    with runtime.sessions() as session:
        dry = imports.check(session, settings.secret_key, settings.topics, io.StringIO(csv_text), NOW)
    assert counts(runtime) == before  # the dry run changes nothing
    assert dry.rows == 16
    assert [a.line for a in dry.additions] == [2, 4, 5, 9, 16, 17]
    assert dry.unchanged == 2 and dry.subscriptions == 7
    assert [line for line, _ in dry.skipped] == [6, 7, 8]
    assert "unsubscribed from 'events'" in dry.skipped[0][1] and "suppression list" in dry.skipped[1][1]
    assert [line for line, _ in dry.rejected] == [10, 11, 12, 13, 14]
    assert [reason.split(":")[0] for _, reason in dry.rejected] == [
        "no consent", "not a valid email address", "consented_at is in the future", "unknown topic 'gardening' (topics",
        "expected 5 fields, found 3"]

    with runtime.sessions.begin() as session:
        plan = imports.import_file(session, settings.secret_key, settings.topics, io.StringIO(csv_text), NOW)
    assert plan.summary() == dry.summary()
    contacts, events, subscriptions, suppressions = counts(runtime)
    # pending@ already had its (pending) subscription row: 7 grants, 6 new rows.
    assert (contacts - before[0], events - before[1], subscriptions - before[2]) == (2, 7, 6)
    assert suppressions == before[3]
    with runtime.sessions() as session:
        def topics_of(email: str) -> dict[str, str]:
            contact = session.scalar(select(Contact).where(Contact.email == email))
            return {s.topic: s.status for s in contact.subscriptions}

        assert topics_of("new@example.com") == {"newsletter": "active", "events": "active"}
        assert topics_of("active@example.com") == {"newsletter": "active", "events": "active"}
        assert topics_of("pending@example.com") == {"newsletter": "active"}
        assert topics_of("partly@example.com") == {"newsletter": "active", "events": "unsubscribed"}
        assert topics_of("bounced@example.com") == {"newsletter": "active"}  # untouched, still suppressed
        assert session.scalar(select(Contact).where(Contact.email == "erased@example.com")) is None
        assert session.scalar(select(Contact.name).where(Contact.email == "nameless@example.com")) == "Nia Name"
        assert session.scalar(select(Contact.name).where(Contact.email == "active@example.com")) == "Al"
        # One ledger entry per imported subscription, dated when the person consented, named by its source.
        new = session.scalar(select(Contact).where(Contact.email == "new@example.com"))
        ledger = session.scalars(select(ConsentEvent).where(ConsentEvent.contact_id == new.id)
                                 .order_by(ConsentEvent.id)).all()
        assert [(e.purpose, e.action, e.source, e.wording, e.created_at) for e in ledger] == [
            (f"topic:{topic}", "granted", "event sign-up sheet", "imported: event sign-up sheet",
             dt.datetime(2026, 2, 1, 10, 0, tzinfo=dt.UTC)) for topic in ("newsletter", "events")]
        assert {s.consent_event_id for s in new.subscriptions} == {e.id for e in ledger}
        assert len(new.link_key) >= 30 and new.created_at == NOW

    # The same file again: nothing new.
    with runtime.sessions.begin() as session:
        again = imports.import_file(session, settings.secret_key, settings.topics, io.StringIO(csv_text), NOW)
    assert again.imported == 0 and again.unchanged == 8


def test_a_failure_half_way_leaves_nothing(runtime: Runtime, known: dict[str, int]) -> None:
    settings = runtime.settings
    csv_text = HEADER + "".join(f"person{i}@example.com,P {i},newsletter,web,2026-01-01T10:00:00Z\n"
                                for i in range(5000))
    before = counts(runtime)
    seen = []

    def fail_half_way(count: int) -> None:
        seen.append(count)
        if sum(seen) >= 2000:
            raise RuntimeError("the disk is full")

    with pytest.raises(RuntimeError, match="the disk is full"), runtime.sessions.begin() as session:
        imports.import_file(session, settings.secret_key, settings.topics, io.StringIO(csv_text), NOW,
                            progress=fail_half_way)
    assert seen == [2000]
    assert counts(runtime) == before


def test_the_command_line_exits_0_for_skipped_rows_and_2_for_rejected(config_path: Path, environ: dict[str, str],
                                                                      runtime: Runtime, known: dict[str, int],
                                                                      tmp_path: Path) -> None:
    runner = CliRunner()

    def cli(*args: str):  # noqa: ANN202
        return runner.invoke(main, ["--config", str(config_path), *args], env=environ, catch_exceptions=False)

    skipped = tmp_path / "skipped.csv"
    skipped.write_text(HEADER + "bounced@example.com,Bo,newsletter,old list,2026-01-01T10:00:00Z\n"
                       "fresh@example.com,Fresh,newsletter,old list,2026-01-01T10:00:00Z\n")
    result = cli("subscribers", "import", str(skipped))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "line 2: skipped: bounced@example.com is on the suppression list and cannot be subscribed by staff",
        "1 imported, 0 already subscribed, 1 skipped (suppressed or unsubscribed), 0 rejected."]
    rejected = tmp_path / "rejected.csv"
    rejected.write_text(HEADER + "x@example.com,X,newsletter,,\n")
    result = cli("subscribers", "import", str(rejected))
    assert result.exit_code == 2
    assert "line 2: rejected: no consent" in result.output and "0 imported" in result.output
    before = counts(runtime)
    columns = tmp_path / "columns.csv"
    columns.write_text("email,name\nx@example.com,X\n")
    result = cli("subscribers", "import", str(columns))
    assert result.exit_code == 1 and result.output == (
        "mailer: error: expected the columns email,name,topics,consent_source,consented_at, found email,name\n")
    assert counts(runtime) == before
