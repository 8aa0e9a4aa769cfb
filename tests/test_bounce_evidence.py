"""Every verdict kept as evidence, on SQLite and PostgreSQL: what a suppression stands on, what staff see and
lift on the subscriber page, the sending-setup warning on the campaign page and in `mailer status`, SMTP
refusals while sending judged by the same rules, and erasure and export of the evidence."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailer import audience, staff
from mailer.cli import main
from mailer.config import Settings
from mailer.inbound import bounces, evidence
from mailer.models import BounceEvent, Campaign, ConsentEvent, Contact, Enrollment, OutboxMessage, Suppression
from mailer.outbound.messages import make_message_id
from mailer.runtime import Runtime
from tests.test_admin import PASSWORD, STAFF_EMAIL, flashed, log_in, post, text_of
from tests.test_bounces import corpus, dated, dsn, group, inquire, subscribe
from tests.test_delivery import T0 as SENDING
from tests.test_delivery import add_subscribers, deliver, start_campaign
from tests.web_fixtures import WEB_START

T0 = WEB_START
Sessions = sessionmaker[Session]


@pytest.fixture
def staff_client(client: FlaskClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> FlaskClient:
    """A client logged in as a staff member (argon2 at a test's cost: these tests check pages, not hashing)."""
    monkeypatch.setattr(staff, "HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    with runtime.sessions.begin() as session:
        staff.create(session, STAFF_EMAIL, PASSWORD, runtime.clock())
    assert log_in(client).status_code == 303
    return client


def run(sessions: Sessions, settings: Settings, *raws: bytes, now: dt.datetime = T0) -> bounces.BounceReport:
    with sessions.begin() as session:
        return bounces.process(session, settings, [(f"key{n}", raw) for n, raw in enumerate(raws)], now)


def events(sessions: Sessions) -> list[BounceEvent]:
    with sessions() as session:
        return list(session.scalars(select(BounceEvent).order_by(BounceEvent.id)))


def suppression_of(sessions: Sessions, address: str) -> Suppression | None:
    with sessions() as session:
        contact = audience.find_contact(session, address)
        assert contact is not None
        return session.scalar(select(Suppression).where(Suppression.contact_id == contact.id))


# --- evidence ------------------------------------------------------------------------------------------


def test_every_verdict_is_evidence_and_a_suppression_points_at_its_own(settings: Settings, sessions: Sessions) -> None:
    subscribe(sessions, settings, "nobody@example.com", "full.box@example.org")
    later = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    report = run(sessions, settings, corpus("postfix-user-unknown.eml"), corpus("postfix-mailbox-full-failed.eml"),
                 now=later)
    assert (report.hard, report.soft, report.suppressed) == (1, 1, 1)
    hard, soft = events(sessions)
    assert (hard.verdict, hard.reason, hard.status, hard.reply_code, hard.source, hard.report_key) == (
        "address_bad", "user_unknown", "5.1.1", "550", "maildir", "key0")
    # The diagnostic as the server gave it, with the address's local part masked.
    assert hard.diagnostic == "550 5.1.1 <*@example.com>: Recipient address rejected: User unknown in virtual mailbox table"
    # When the report says it happened (its Date header), not when it was read; never later than that.
    assert hard.report_at == dt.datetime(2026, 11, 24, 0, 0, 4, tzinfo=dt.UTC) and hard.created_at == later
    assert (soft.verdict, soft.reason, soft.counted) == ("mailbox_unable", "mailbox_full", True)
    suppressed = suppression_of(sessions, "nobody@example.com")
    assert suppressed is not None and suppressed.bounce_event_id == hard.id
    assert suppression_of(sessions, "full.box@example.org") is None


def test_a_report_not_about_the_recipient_is_kept_and_changes_nothing(settings: Settings, sessions: Sessions) -> None:
    subscribe(sessions, settings, "riley@example.com")
    inquire(sessions, settings, "riley@example.com")
    blocked = dsn(group("riley@example.com", "failed", "5.7.1",
                        "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org"))
    report = run(sessions, settings, blocked)
    assert (report.not_about_recipient, report.hard, report.soft, report.suppressed) == (1, 0, 0, 0)
    [event] = events(sessions)
    assert (event.verdict, event.reason) == ("not_about_recipient", "blocked")
    with sessions() as session:
        assert session.scalars(select(Suppression)).all() == []
        assert session.scalars(select(Enrollment.status)).all() == ["active"]
        assert session.scalar(select(Contact.soft_bounces)) == 0


# --- lifting -----------------------------------------------------------------------------------------


def test_staff_lift_a_bounce_suppression_and_the_ledger_says_so(settings: Settings, sessions: Sessions) -> None:
    subscribe(sessions, settings, "nobody@example.com")
    run(sessions, settings, corpus("postfix-user-unknown.eml"))
    with sessions.begin() as session:
        contact = audience.find_contact(session, "nobody@example.com")
        assert contact is not None
        lifted = evidence.lift(session, settings, contact, by="staff account 7", now=T0)
        assert lifted.reason == "hard_bounce"
    assert suppression_of(sessions, "nobody@example.com") is None
    with sessions() as session:
        entry = session.scalar(select(ConsentEvent).where(ConsentEvent.action == "lifted"))
        assert entry is not None
        assert (entry.purpose, entry.source) == ("suppression", "staff account 7")
        assert entry.wording.startswith("hard_bounce: 5.1.1 550 5.1.1 <*@example.com>")
    # The evidence stays; a new report of the same kind suppresses again.
    assert len(events(sessions)) == 1
    assert run(sessions, settings, corpus("postfix-user-unknown.eml")).suppressed == 1


def test_soft_bounces_no_longer_count_once_lifted(settings: Settings, sessions: Sessions) -> None:
    limited = settings.bounces.model_copy(update={"soft_bounce_limit": 2})
    settings = settings.model_copy(update={"bounces": limited})
    subscribe(sessions, settings, "full.box@example.org")
    failed = corpus("postfix-mailbox-full-failed.eml")
    report = run(sessions, settings, dated(failed, T0 - dt.timedelta(days=2)), dated(failed, T0 - dt.timedelta(days=1)))
    assert report.suppressed == 1
    assert suppression_of(sessions, "full.box@example.org").reason == "soft_bounces"  # type: ignore[union-attr]
    with sessions.begin() as session:
        contact = audience.find_contact(session, "full.box@example.org")
        evidence.lift(session, settings, contact, by="staff account 7", now=T0)  # type: ignore[arg-type]
    # One more full mailbox is one day again, not the third.
    assert run(sessions, settings, dated(failed, T0)).suppressed == 0
    with sessions() as session:
        assert session.scalar(select(Contact.soft_bounces)) == 1


@pytest.mark.parametrize("reason", ["unsubscribed", "complaint", "staff"])
def test_a_persons_wish_or_a_staff_decision_cannot_be_lifted(settings: Settings, sessions: Sessions,
                                                             reason: str) -> None:
    subscribe(sessions, settings, "sam@example.org")
    with sessions.begin() as session:
        contact = audience.find_contact(session, "sam@example.org")
        audience.suppress(session, settings.secret_key, contact, reason, T0)  # type: ignore[arg-type]
    with sessions.begin() as session, pytest.raises(evidence.NotLiftable, match=reason.replace("_", " ")):
        evidence.lift(session, settings, audience.find_contact(session, "sam@example.org"), by="x", now=T0)  # type: ignore[arg-type]
    assert suppression_of(sessions, "sam@example.org").reason == reason  # type: ignore[union-attr]


def test_the_subscriber_page_shows_the_evidence_and_lifts_with_csrf(runtime: Runtime, staff_client: FlaskClient) -> None:
    settings, sessions = runtime.settings, runtime.sessions
    subscribe(sessions, settings, "nobody@example.com", "sam.complains@mail.example")
    run(sessions, settings, corpus("postfix-user-unknown.eml"), corpus("arf-abuse-complaint.eml"))
    with sessions() as session:
        bounced = audience.find_contact(session, "nobody@example.com").id  # type: ignore[union-attr]
        complained = audience.find_contact(session, "sam.complains@mail.example").id  # type: ignore[union-attr]
    page = text_of(staff_client.get(f"/admin/subscribers/{bounced}"))
    assert "Delivery reports" in page and "caused the suppression" in page
    assert "hard bounce (user unknown)" in page and "550 5.1.1" in page
    assert "&lt;*@example.com&gt;: Recipient address rejected" in page  # masked, escaped
    assert "Lift the suppression" in page

    # Without the CSRF token nothing happens.
    assert staff_client.post(f"/admin/subscribers/{bounced}/lift").status_code == 403
    assert suppression_of(sessions, "nobody@example.com") is not None
    shown = flashed(staff_client, post(staff_client, f"/admin/subscribers/{bounced}/lift"))
    assert "Suppression lifted." in shown and "Lift the suppression" not in shown
    assert suppression_of(sessions, "nobody@example.com") is None
    assert "All emails (suppression)" in shown and "lifted" in shown  # the ledger row on the page

    # A complaint is the person's wish: no button, and the route refuses.
    page = text_of(staff_client.get(f"/admin/subscribers/{complained}"))
    assert "Lift the suppression" not in page and "complaint" in page
    shown = flashed(staff_client, post(staff_client, f"/admin/subscribers/{complained}/lift"))
    assert "Nothing changed: a suppression for complaint cannot be lifted by staff." in shown
    assert suppression_of(sessions, "sam.complains@mail.example") is not None


# --- the sending setup -------------------------------------------------------------------------------


def refused(settings: Settings, sessions: Sessions, campaign_id: int, count: int, reason_text: str,
            first: int = 0) -> None:
    """`count` recipients of the campaign whose reports blame our sending setup."""
    with sessions.begin() as session:
        for n in range(first, first + count):
            contact, _ = audience.get_or_create_contact(session, f"p{n}@example.net", "", T0)
            row = OutboxMessage(dedupe_key=f"c:{campaign_id}:{contact.id}", kind="newsletter", campaign_id=campaign_id,
                                contact_id=contact.id, state="sent", attempts=1, created_at=T0, due_at=T0, sent_at=T0)
            session.add(row)
            session.flush()
            row.message_id = make_message_id(settings.secret_key, row.id, "therapycentral.example")
            verdict = evidence.Verdict("not_about_recipient", contact.email, "sender_rejected", "5.7.1", "550",
                                       reason_text, row.message_id)
            evidence.apply(session, settings, verdict, evidence.Evidence("maildir", f"m{n}", T0), T0)


def campaign(sessions: Sessions) -> int:
    with sessions.begin() as session:
        row = Campaign(kind="oneoff", topic="newsletter", subject="Open evening", state="sent", created_at=T0)
        session.add(row)
        session.flush()
        return row.id


def test_several_refusals_of_our_sender_warn_on_the_campaign_page(runtime: Runtime, staff_client: FlaskClient) -> None:
    settings, sessions = runtime.settings, runtime.sessions
    campaign_id = campaign(sessions)
    refused(settings, sessions, campaign_id, 2, "550 5.7.1 Sender address rejected: not owned by user")
    assert "The sending setup has a problem" not in text_of(staff_client.get(f"/admin/campaigns/{campaign_id}"))
    refused(settings, sessions, campaign_id, 3, "550 5.7.1 Sender address rejected: not owned by user", first=2)
    page = text_of(staff_client.get(f"/admin/campaigns/{campaign_id}"))
    assert "The sending setup has a problem" in page
    assert "5 refusals:</strong> receiving servers refuse our sender address or its domain." in page
    assert "Sender address rejected: not owned by user" in page
    with sessions() as session:
        assert session.scalars(select(Suppression)).all() == []


def test_mailer_status_warns_about_the_sending_setup(settings: Settings, sessions: Sessions, config_path: Path,
                                                     environ: dict[str, str]) -> None:
    campaign_id = campaign(sessions)
    refused(settings, sessions, campaign_id, 4, "550 5.7.1 Sender address rejected: not owned by user")
    result = CliRunner().invoke(main, ["--config", str(config_path), "status"], env=environ, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (f"Warning: the sending setup has a problem: campaign {campaign_id}: 4 refusals say receiving servers "
            "refuse our sender address or its domain (sender_rejected); for example: 550 5.7.1 Sender address "
            "rejected: not owned by user") in result.output


# --- SMTP refusals while sending -------------------------------------------------------------------------


@pytest.mark.parametrize(("reply", "suppressed", "verdict", "reason"), [
    ("550 5.1.1 <x>: Recipient address rejected: User unknown", ["hard_bounce"], "address_bad", "user_unknown"),
    ("554 5.7.1 <gone@example.com>: Relay access denied", [], "not_about_recipient", "relay_denied"),
    ("550 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using zen.spamhaus.org", [],
     "not_about_recipient", "blocked"),
    ("552 5.2.2 Mailbox full", [], "mailbox_unable", "mailbox_full"),
])
def test_a_refusal_at_rcpt_suppresses_only_a_bad_address(settings: Settings, sessions: Sessions, engine,  # noqa: ANN001
                                                         smtp_server, reply: str, suppressed: list[str],  # noqa: ANN001
                                                         verdict: str, reason: str) -> None:
    add_subscribers(sessions, settings, ["gone@example.com", "fine@example.com"])
    start_campaign(sessions, settings)
    smtp_server.faults.rcpt["gone@example.com"] = reply
    report = deliver(settings, engine, smtp_server, SENDING)
    assert (report.sent, report.failed) == (1, 1)
    with sessions() as session:
        assert [s.reason for s in session.scalars(select(Suppression))] == suppressed
        [event] = session.scalars(select(BounceEvent)).all()
        row = session.get(OutboxMessage, int(event.report_key))
        assert row is not None and row.state == "failed"
        assert (event.verdict, event.reason, event.source, event.reply_code) == (verdict, reason, "smtp", reply[:3])
        assert event.campaign_id == row.campaign_id and event.contact_id == row.contact_id
        assert "gone@" not in event.diagnostic
        if verdict == "mailbox_unable":
            assert session.get(Contact, row.contact_id).soft_bounces == 1  # type: ignore[union-attr]


# --- the person's rights ---------------------------------------------------------------------------------


def test_erasure_removes_the_evidence_and_export_shows_it(settings: Settings, sessions: Sessions) -> None:
    subscribe(sessions, settings, "nobody@example.com")
    run(sessions, settings, corpus("postfix-user-unknown.eml"))
    with sessions() as session:
        exported = audience.export_contact(session, "nobody@example.com")
    [item] = exported["bounce_reports"]  # type: ignore[misc]
    assert (item["verdict"], item["reason"], item["report"]) == ("address_bad", "user_unknown", "key0")
    with sessions.begin() as session:
        audience.erase(session, settings.secret_key, audience.find_contact(session, "nobody@example.com"), T0)  # type: ignore[arg-type]
    assert events(sessions) == []
    with sessions() as session:
        [row] = session.scalars(select(Suppression)).all()
        assert row.reason == "hard_bounce" and row.contact_id is None and row.bounce_event_id is None


def test_status_line_names_no_address(settings: Settings, sessions: Sessions) -> None:
    """Evidence keeps the servers' words; the local parts of every address in them are masked."""
    assert evidence.mask("550 <riley.chen@example.com>... and pat@ex.example said no") == (
        "550 <*@example.com>... and *@ex.example said no")
    assert re.fullmatch(r"[^@]*", evidence.mask("no address here"))
