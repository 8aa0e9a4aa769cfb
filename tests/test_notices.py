"""Front-desk notifications: events gathered for a few minutes into one short email per staff address, sent
through the outbox to a real SMTP server; names and links only, never anyone's words. Both databases."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, select

from mailer import audience, config, jobs
from mailer.config import Settings
from mailer.links import email_hash
from mailer.models import Campaign, OutboxMessage, StaffNotice, Suppression
from mailer.outbound import notices
from mailer.outbound.transport import make_transport
from mailer.publishing import feeds
from mailer.publishing.render import Renderer
from mailer.runtime import Runtime, fixed_clock
from mailer.sequences import inquiries
from tests.smtp_server import SMTPServer
from tests.test_replies import write_section
from tests.web_fixtures import SettableClock

AUTH = {"Authorization": "Bearer test-intake-token"}
FRONT_DESK = "frontdesk@therapycentral.example"
MANAGER = "Clinic.Manager@TherapyCentral.example"
WORDS = "ORCHID-5521 my anxiety has been worse since the accident"


@pytest.fixture
def settings(config_path: Path, environ: dict[str, str], smtp_server: SMTPServer) -> Settings:
    """Notices for the front desk and the manager, delivered by SMTP (replaces conftest's settings)."""
    write_section(config_path, "notify", {"staff": [FRONT_DESK, MANAGER], "gather_minutes": 5,
                                          "events": ["inquiry", "reply", "booked", "draft"]})
    return config.load(config_path, {**environ, "MAILER_SMTP_URL": smtp_server.url})


def deliver(settings: Settings, engine: Engine, now: dt.datetime) -> dict[str, int]:
    runtime = Runtime(settings, clock=fixed_clock(now), engine_override=engine,
                      transport_override=make_transport(settings))
    return jobs.run_job(runtime, "deliver", now)


def inquire(client: FlaskClient, email: str, name: str, source: str = "website") -> int:
    answer = client.post("/api/inquiries", headers=AUTH, json={
        "email": email, "name": name, "consent": True, "consent_text": "Yes, email me.", "source": source,
        "message": WORDS, "service": "ketamine-assisted therapy"})
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()["inquiry_id"]


def test_three_inquiries_within_a_minute_make_one_email(client: FlaskClient, settings: Settings, engine: Engine,
                                                        clock: SettableClock, smtp_server: SMTPServer) -> None:
    start = clock.now
    ids = [inquire(client, "ann@example.com", "Ann Avery")]
    clock.advance(seconds=20)
    ids.append(inquire(client, "ben@example.com", "Ben Brook"))
    clock.advance(seconds=30)
    ids.append(inquire(client, "cat@example.com", ""))

    deliver(settings, engine, start + dt.timedelta(minutes=2))
    assert smtp_server.messages_to(FRONT_DESK) == []  # still gathering
    deliver(settings, engine, start + dt.timedelta(minutes=5, seconds=1))
    (notice,) = smtp_server.messages_to(FRONT_DESK)
    (manager_copy,) = smtp_server.messages_to(MANAGER.lower())
    assert notice["Subject"] == manager_copy["Subject"] == "Therapy Central: 3 new inquiries"
    text = notice.get_body(("plain",)).get_content().replace("\r\n", "\n")
    for name, inquiry_id in zip(("Ann Avery", "Ben Brook", "Someone"), ids, strict=True):
        assert f"{name} sent a new inquiry." in text
        assert f"https://mail.therapycentral.example/admin/inquiries/{inquiry_id}\n" in text
    # Not marketing: no unsubscribe header or footer; the clinic's From and Reply-To as always.
    assert notice["List-Unsubscribe"] is None and "unsubscribe" not in text.lower()
    assert notice["From"] == "Therapy Central <news@therapycentral.example>"
    raw = b"".join(item.data for item in smtp_server.received)
    for secret in (b"ORCHID-5521", b"anxiety", b"accident", b"ketamine", b"ann@example.com", b"website"):
        assert secret not in raw, secret  # no message text, no treatment word, no address, no source

    # An inquiry after the notice went out starts a notice of its own.
    clock.now = start + dt.timedelta(minutes=10)
    inquire(client, "dan@example.com", "Dan Dale")
    deliver(settings, engine, start + dt.timedelta(minutes=16))
    assert [m["Subject"] for m in smtp_server.messages_to(FRONT_DESK)] == [
        "Therapy Central: 3 new inquiries", "Therapy Central: 1 new inquiry"]
    with Runtime(settings, engine_override=engine).sessions() as session:
        rows = session.execute(select(OutboxMessage.kind, OutboxMessage.contact_id, OutboxMessage.state)
                               .where(OutboxMessage.kind == "notice")).all()
        assert rows == [("notice", None, "sent")] * 4  # two gatherings, two staff addresses each


def test_the_draft_notice_links_to_the_campaign_page(settings: Settings, engine: Engine,
                                                     smtp_server: SMTPServer) -> None:
    manual = settings.model_copy(update={"newsletter": settings.newsletter.model_copy(update={"approval": "manual"})})
    send_time = dt.datetime(2027, 1, 12, 0, 0, tzinfo=dt.UTC)  # 18:00 in the clinic, Monday 11 January
    runtime = Runtime(manual, clock=fixed_clock(send_time), engine_override=engine)
    feeds.ingest_with(runtime.sessions, manual.feed, send_time - dt.timedelta(hours=2))
    assert jobs.run_job(runtime, "nightly_newsletter", send_time)["state"] == "draft"
    with runtime.sessions() as session:
        campaign_id = session.scalars(select(Campaign.id)).one()
    deliver(manual, engine, send_time + dt.timedelta(minutes=6))
    (notice,) = smtp_server.messages_to(FRONT_DESK)
    assert notice["Subject"] == "Therapy Central: 1 newsletter draft"
    text = notice.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert "A newsletter draft is waiting for approval." in text
    assert f"https://mail.therapycentral.example/admin/campaigns/{campaign_id}\n" in text
    html = notice.get_body(("html",)).get_content()
    assert f'href="https://mail.therapycentral.example/admin/campaigns/{campaign_id}"' in html


def test_a_suppressed_staff_address_gets_nothing(client: FlaskClient, settings: Settings, engine: Engine,
                                                 clock: SettableClock, smtp_server: SMTPServer) -> None:
    inquire(client, "ann@example.com", "Ann Avery")
    with Runtime(settings, engine_override=engine).sessions.begin() as session:  # e.g. it bounced for good
        session.add(Suppression(email_hash=email_hash(settings.secret_key, FRONT_DESK), contact_id=None,
                                reason="hard_bounce", detail="", created_at=clock.now))
    deliver(settings, engine, clock.now + dt.timedelta(minutes=6))
    assert smtp_server.messages_to(FRONT_DESK) == []
    assert len(smtp_server.messages_to(MANAGER.lower())) == 1
    with Runtime(settings, engine_override=engine).sessions() as session:
        states = dict(session.execute(
            select(StaffNotice.recipient, OutboxMessage.state).join(OutboxMessage, OutboxMessage.id == StaffNotice.outbox_id)
        ).all())
    assert states == {FRONT_DESK: "skipped", MANAGER.lower(): "sent"}


def test_names_that_hold_a_sensitive_word_are_not_shown(settings: Settings, engine: Engine,
                                                        clock: SettableClock) -> None:
    runtime = Runtime(settings, engine_override=engine)
    with runtime.sessions.begin() as session:
        outcome = inquiries.record_inquiry(session, settings, email="pat@example.com", name="Pat (PTSD group)",
                                           consent=False, consent_text="", source="website",
                                           received_at=clock.now, now=clock.now)
        assert notices.record(session, settings, "inquiry", clock.now, inquiry_id=outcome.inquiry_id) == 2
    with runtime.sessions() as session:
        outbox_id = session.scalars(select(StaffNotice.outbox_id)).first()
        prepared = notices.prepare(session, settings, Renderer(settings), outbox_id)
    assert "Someone sent a new inquiry." in prepared.message.text.fill({})
    assert "PTSD" not in prepared.message.text.fill({}) + prepared.message.html.fill({})


def test_only_the_chosen_events_and_only_with_staff_addresses(settings: Settings, engine: Engine,
                                                              clock: SettableClock) -> None:
    runtime = Runtime(settings, engine_override=engine)
    only_drafts = settings.model_copy(update={"notify": settings.notify.model_copy(update={"events": ["draft"]})})
    nobody = settings.model_copy(update={"notify": settings.notify.model_copy(update={"staff": []})})
    with runtime.sessions.begin() as session:
        assert notices.record(session, only_drafts, "inquiry", clock.now, inquiry_id=1) == 0
        assert notices.record(session, nobody, "draft", clock.now, campaign_id=1) == 0
        assert session.scalars(select(StaffNotice)).all() == []


def test_a_notice_for_a_removed_inquiry_says_someone_without_a_link(settings: Settings, engine: Engine,
                                                                    clock: SettableClock) -> None:
    runtime = Runtime(settings, engine_override=engine)
    with runtime.sessions.begin() as session:
        notices.record(session, settings, "reply", clock.now, inquiry_id=424242)
    with runtime.sessions() as session:
        outbox_id = session.scalars(select(StaffNotice.outbox_id)).first()
        prepared = notices.prepare(session, settings, Renderer(settings), outbox_id)
    text = prepared.message.text.fill({})
    assert "Someone replied to a follow-up email" in text and "/admin/inquiries/" not in text
    assert audience.normalize_email(MANAGER) == MANAGER.lower()
