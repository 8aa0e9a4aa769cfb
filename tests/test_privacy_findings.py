"""What a privacy review found in what people see and what is kept: names that carry a sentence into emails,
addresses in log lines, consent wording taken from the client, health words in subjects, one-offs approved by
their own author; on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import logging
import re
import warnings
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from flask.testing import FlaskClient
from sqlalchemy import select, update

from mailer import audience, config, names, privacy, staff
from mailer.config import Settings
from mailer.models import AccessEntry, Campaign, ConsentEvent, Contact
from mailer.outbound.delivery import Delivery
from mailer.publishing import campaigns, previews
from mailer.publishing.render import Renderer
from mailer.runtime import Runtime, fixed_clock
from mailer.sequences import followups, inquiries
from tests.smtp_server import SMTPServer
from tests.test_admin import PASSWORD, csrf_of, log_in, text_of
from tests.test_delivery import T0, add_subscribers, deliver, rows, smtp, start_campaign

ATTACK = "Your\u00a0clinic\u00a0account\u00a0is\u00a0overdue:\u00a0pay\u00a0at\u00a0https://evil.example/pay"


# --- finding 1: names carry an attacker's sentence into the clinic's emails ----------------------------------


def newsletter_to(runtime: Runtime, smtp_server: SMTPServer, address: str):  # noqa: ANN201
    with runtime.sessions.begin() as session:
        campaign = campaigns.create_oneoff(session, runtime.settings, topic="newsletter", subject="Open evening",
                                           body_markdown="Join us.", now=T0)
        campaigns.approve(session, campaign, by="test", now=T0)
        campaigns.dispatch(session, T0, Renderer(runtime.settings))
    Delivery(runtime.settings, runtime.engine, smtp(smtp_server), fixed_clock(T0), runtime.kinds).run()
    (message,) = smtp_server.messages_to(address)
    return message


def test_a_sign_up_cannot_put_a_sentence_in_the_greeting_or_to_header(client: FlaskClient, runtime: Runtime,
                                                                      smtp_server: SMTPServer) -> None:
    add_subscribers(runtime.sessions, runtime.settings, ["jane.patient@example.com"])  # no name yet
    response = client.post("/subscribe", data={"email": "jane.patient@example.com", "name": ATTACK})
    assert response.status_code == 400
    assert "That name looks like an address or a link, not a name" in text_of(response)
    with runtime.sessions() as session:
        assert session.scalar(select(Contact.name).where(Contact.email == "jane.patient@example.com")) == ""
    message = newsletter_to(runtime, smtp_server, "jane.patient@example.com")
    assert message["To"] == "jane.patient@example.com"
    body = message.get_body(("plain",)).get_content()
    assert "Hi there," in body and "evil" not in body and "overdue" not in body


def test_a_name_stored_before_the_rules_is_not_used(runtime: Runtime, smtp_server: SMTPServer) -> None:
    add_subscribers(runtime.sessions, runtime.settings, ["jane.patient@example.com"])
    with runtime.sessions.begin() as session:
        session.execute(update(Contact).values(name=ATTACK))
    message = newsletter_to(runtime, smtp_server, "jane.patient@example.com")
    assert message["To"] == "jane.patient@example.com"
    assert "Hi there," in message.get_body(("plain",)).get_content()


def test_a_name_that_passes_greets_by_its_first_word_on_any_whitespace(runtime: Runtime,
                                                                      smtp_server: SMTPServer) -> None:
    with runtime.sessions.begin() as session:
        audience.staff_subscribe(session, runtime.settings.secret_key, runtime.settings.topics,
                                 email="ines@example.com", name="Inés\u00a0\u3000Ortega-Núñez",
                                 topic_names=["newsletter"], source="front desk", now=T0)
        assert session.scalar(select(Contact.name)) == "Inés Ortega-Núñez"  # whitespace normalised when stored
    message = newsletter_to(runtime, smtp_server, "ines@example.com")
    assert message["To"].addresses[0].display_name == "Inés Ortega-Núñez"
    assert "Hi Inés," in message.get_body(("plain",)).get_content()


@pytest.mark.parametrize("name", ["Jane", "Mary J. Blige", "O'Brien", "O’Brien", "Jean-Luc Picard", "Smith, Jane",
                                  "李小龍", "Nguyễn Văn An", "Zoë", "Ali\u00a0Khan", "Patient 0", "Sam (Samira)"])
def test_names_that_look_like_names_pass(name: str) -> None:
    assert names.check(name) == names.normalise(name)


@pytest.mark.parametrize(("name", "reason"), [
    (ATTACK, "looks like an address or a link"),
    ("jane@example.com", "looks like an address or a link"),
    ("visit www.evil.example now", "looks like an address or a link"),
    ("Jane\u202eeno", "invisible formatting characters"),  # right-to-left override
    ("Ja\u200bne", "invisible formatting characters"),  # zero-width space
    ("Jane <b>", "contains '<'"),
    ("Pay $5", "contains '$'"),
    ("Pay: now", "contains ':'"),
    ("J" * 61, "longer than 60 characters"),
    ("...", "has no letters"),
])
def test_names_that_do_not_are_refused(name: str, reason: str) -> None:
    assert reason in (names.problem(names.normalise(name)) or "")
    assert names.greetable(name) == "" and names.first_name(name) == ""


def test_the_intake_and_imports_refuse_such_names_too(runtime: Runtime, settings: Settings) -> None:
    with runtime.sessions.begin() as session, pytest.raises(inquiries.InquiryError, match="^name: looks like"):
        inquiries.record_inquiry(session, settings, email="a@example.com", name=ATTACK, consent=False,
                                 consent_text="", source="website", received_at=T0, now=T0)


def test_a_public_form_never_overwrites_a_name_staff_set(client: FlaskClient, runtime: Runtime) -> None:
    with runtime.sessions.begin() as session:
        audience.staff_subscribe(session, runtime.settings.secret_key, runtime.settings.topics,
                                 email="pat@example.com", name="Pat Doe", topic_names=["newsletter"],
                                 source="front desk", now=T0)
    assert client.post("/subscribe", data={"email": "pat@example.com", "name": "Someone Else"}).status_code == 200
    with runtime.sessions() as session:
        assert session.scalar(select(Contact.name)) == "Pat Doe"


# --- finding 6: addresses in info-level logs -------------------------------------------------------------------


def test_a_relays_reply_is_logged_without_the_address(settings, sessions, engine, smtp_server,  # noqa: ANN001
                                                     caplog: pytest.LogCaptureFixture) -> None:
    add_subscribers(sessions, settings, ["jane.patient@example.com", "fine@example.com"])
    start_campaign(sessions, settings)
    smtp_server.faults.rcpt["jane.patient@example.com"] = \
        "550 5.1.1 <jane.patient@example.com>: Recipient address rejected: User unknown"
    with caplog.at_level(logging.INFO):
        deliver(settings, engine, smtp_server, T0)
    # Our own log lines (the test relay's log of its own session is not ours).
    logged = "\n".join(record.getMessage() for record in caplog.records if record.name.startswith("mailer"))
    assert "550 5.1.1 <[address]>: Recipient address rejected" in logged
    assert "jane.patient" not in logged
    # The outbox row keeps the whole reply (staff see it on the campaign page).
    assert "<jane.patient@example.com>: Recipient address rejected" in rows(sessions)["jane.patient@example.com"].last_error


# --- finding 11: consent wording comes from the client ------------------------------------------------------


def test_a_sign_up_records_the_servers_wording_not_the_requests(client: FlaskClient, runtime: Runtime) -> None:
    from mailer.web.public import DEFAULT_SIGNUP_WORDING

    client.post("/subscribe", data={"email": "pat@example.com", "consent_text": "I agree to nothing at all."})
    with runtime.sessions() as session:
        assert session.scalar(select(ConsentEvent.wording)) == DEFAULT_SIGNUP_WORDING


def test_an_intake_keeps_the_sent_wording_and_the_published_one(client: FlaskClient, runtime: Runtime,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staff, "HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    response = client.post("/api/inquiries", headers={"Authorization": "Bearer test-intake-token"}, json={
        "email": "ines@example.com", "name": "Ines", "consent": True, "consent_text": "Sure, email me.",
        "source": "website"})
    assert response.status_code == 201
    published = runtime.settings.followups.consent_wording
    assert published.startswith("Yes, Therapy Central may send me")
    with runtime.sessions() as session:
        grant = session.scalar(select(ConsentEvent))
        assert (grant.wording, grant.published_wording) == ("Sure, email me.", published)
    with runtime.sessions.begin() as session:
        staff.create(session, "desk@therapycentral.example", PASSWORD, T0, role="frontdesk")
    assert log_in(client, "desk@therapycentral.example").status_code == 303
    page = text_of(client.get(f"/admin/inquiries/{response.json['inquiry_id']}"))
    assert "Wording their form sent</dt><dd>Sure, email me." in page
    assert f"Wording the clinic published</dt><dd>{published}" in page


# --- finding 12: subjects that name conditions -----------------------------------------------------------------


def post_titled(runtime: Runtime, title: str, summary: str) -> None:
    from mailer.models import Post

    with runtime.sessions.begin() as session:
        session.add(Post(guid=title, link="https://therapycentral.example/blog/x", title=title, summary=summary,
                         content_html=f"<p>{summary}</p>", published_at=T0, fetched_at=T0))


def test_an_automatic_digest_naming_a_condition_gets_the_neutral_subject(runtime: Runtime) -> None:
    post_titled(runtime, "Ketamines for Anxiety and Depression: How do they Work?", "A look at how ketamine helps.")
    at = dt.datetime(2026, 11, 24, 0, 0, tzinfo=dt.UTC)  # 18:00 in Chicago
    with runtime.sessions.begin() as session:
        campaign = campaigns.make_newsletter(session, runtime.settings, at).campaign
        assert campaign.subject == "Therapy Central: 1 new article(s) on our blog"
        assert campaign.preheader == "New on our blog: 1 article(s) to read when it suits you."
        assert "named ketamine, depression, anxiety" in campaign.note
        _subject, html, _text = previews.render_parts(runtime.settings, campaign)
    assert "A look at how ketamine helps." not in html.split("<body")[1].split("<h1")[0]  # not as the preheader
    assert "Ketamines for Anxiety" in html  # the article itself is in the email


def test_a_digest_with_plain_titles_keeps_its_subject(runtime: Runtime) -> None:
    post_titled(runtime, "Our new opening hours", "We are open on Saturdays now.")
    with runtime.sessions.begin() as session:
        campaign = campaigns.make_newsletter(session, runtime.settings, dt.datetime(2026, 11, 24, tzinfo=dt.UTC)).campaign
        assert (campaign.subject, campaign.preheader, campaign.note) == ("Therapy Central: Our new opening hours", "", "")


def test_staff_may_write_any_subject_with_a_warning(client: FlaskClient, runtime: Runtime,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(staff, "HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    with runtime.sessions.begin() as session:
        staff.create(session, "ada@therapycentral.example", PASSWORD, T0, role="marketing")
    log_in(client, "ada@therapycentral.example")
    token = csrf_of(client.get("/admin/compose"))
    response = client.post("/admin/compose", data={"csrf_token": token, "topic": "newsletter",
                                                   "subject": "Ketamine evenings", "body_markdown": "Hello"})
    page = text_of(client.get(response.headers["Location"]))
    assert "The subject or preheader names ketamine" in page
    with runtime.sessions() as session:
        campaign = session.scalar(select(Campaign))
        assert campaign.subject == "Ketamine evenings"  # kept as written
    edited = client.post(f"/admin/campaigns/{campaign.id}/edit", data={
        "csrf_token": token, "subject": "Evenings", "preheader": "About trauma", "intro": ""})
    assert "Saved, but the subject or preheader names trauma" in text_of(client.get(edited.headers["Location"]))
    assert any("names trauma" in record.getMessage() for record in caplog.records)


def test_every_kind_is_checked_when_it_is_made(runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    steps = [step.model_copy(update={"subject": "About your PTSD"}) if index == 1 else step
             for index, step in enumerate(runtime.settings.followups.steps)]
    settings = runtime.settings.model_copy(update={"followups": runtime.settings.followups.model_copy(
        update={"steps": steps})})
    with caplog.at_level(logging.WARNING, "mailer.privacy"):
        followups.prepare_step(Renderer(settings), settings, 1)
    assert "follow-up step 2 (first-visit): the subject or preheader names ptsd" in caplog.text
    screened = privacy.screen(settings, "welcome", "Welcome", "Your anxiety matters", automatic=False)
    assert screened.words == ("anxiety",) and not screened.neutral and screened.subject == "Welcome"


def test_the_old_key_is_read_with_a_warning_and_both_are_refused(config_path: Path, environ: dict[str, str]) -> None:
    text = config_path.read_text()
    without_new = re.sub(r"(?ms)^\[privacy\]\n.*?^sensitive_words = \[.*?\]\n", "[privacy]\n", text)
    assert "ketamine" not in without_new
    config_path.write_text(without_new.replace("[followups]\n", '[followups]\nsensitive_words = ["tinnitus"]\n', 1))
    with pytest.warns(config.ConfigWarning, match="followups.sensitive_words is deprecated; rename it to privacy"):
        loaded = config.load(config_path, environ)
    assert loaded.privacy.sensitive_words == ["tinnitus"]
    config_path.write_text(text.replace("[followups]\n", '[followups]\nsensitive_words = ["tinnitus"]\n', 1))
    with warnings.catch_warnings(), pytest.raises(config.ConfigError, match="moved to privacy.sensitive_words"):
        warnings.simplefilter("ignore")
        config.load(config_path, environ)


# --- four-eyes: a one-off written by one person is approved by another ------------------------------------------


def test_four_eyes_one_offs_need_a_second_person(runtime: Runtime, settings: Settings, app,  # noqa: ANN001
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staff, "HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    four = settings.model_copy(update={"newsletter": settings.newsletter.model_copy(update={"four_eyes": True})})
    from mailer.web import create_app

    app = create_app(Runtime(four, clock=runtime.clock, engine_override=runtime.engine))
    with runtime.sessions.begin() as session:
        for who in ("ada", "bo"):
            staff.create(session, f"{who}@therapycentral.example", PASSWORD, T0, role="marketing")
    ada, bo = app.test_client(), app.test_client()
    log_in(ada, "ada@therapycentral.example")
    log_in(bo, "bo@therapycentral.example")
    token = csrf_of(ada.get("/admin/compose"))
    created = ada.post("/admin/compose", data={"csrf_token": token, "topic": "newsletter", "subject": "Open evening",
                                               "body_markdown": "Join us."})
    campaign_path = created.headers["Location"]
    page = text_of(ada.get(campaign_path))
    assert "another staff member must approve it" in page and ">Approve</button>" not in page
    refused = ada.post(campaign_path + "/approve", data={"csrf_token": token, "when": "now"})
    assert "Not approved: another staff member must approve it" in text_of(ada.get(refused.headers["Location"]))
    # Bo edits it: now Bo may not approve either, and Ada still may not.
    bo_token = csrf_of(bo.get(campaign_path))
    bo.post(campaign_path + "/edit", data={"csrf_token": bo_token, "subject": "Open evening, Thursday",
                                           "preheader": "", "intro": "", "body_markdown": "Join us."})
    bo.post(campaign_path + "/approve", data={"csrf_token": bo_token, "when": "now"})
    with runtime.sessions() as session:
        assert session.scalar(select(Campaign.state)) == "draft"
    with runtime.sessions.begin() as session:
        staff.create(session, "cy@therapycentral.example", PASSWORD, T0, role="admin")
    cy = app.test_client()
    log_in(cy, "cy@therapycentral.example")
    cy.post(campaign_path + "/approve", data={"csrf_token": csrf_of(cy.get(campaign_path)), "when": "now"})
    with runtime.sessions() as session:
        row = session.scalar(select(Campaign))
        assert (row.state, row.approved_by, row.created_by, row.edited_by) == (
            "approved", "cy@therapycentral.example", "ada@therapycentral.example", "bo@therapycentral.example")
        assert session.scalar(select(AccessEntry.actor).where(AccessEntry.action == "approved")) == \
            "cy@therapycentral.example"


def test_without_four_eyes_the_author_may_approve(runtime: Runtime) -> None:
    with runtime.sessions.begin() as session:
        campaign = campaigns.create_oneoff(session, runtime.settings, topic="newsletter", subject="Open evening",
                                           body_markdown="Join us.", now=T0, by="ada@therapycentral.example")
        campaigns.approve(session, campaign, by="ada@therapycentral.example", now=T0,
                          four_eyes=runtime.settings.newsletter.four_eyes)
        assert campaign.state == "approved"

