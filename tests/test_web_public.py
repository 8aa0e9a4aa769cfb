"""The subscriber pages, one-click unsubscribe, sign-up and confirmation, the intake API and /healthz,
through Flask's test client against the real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from flask.testing import FlaskClient
from sqlalchemy import create_engine, func, select

from mailer import audience
from mailer.config import Settings, parse_smtp_url
from mailer.links import make_token
from mailer.models import (
    ConsentEvent,
    Contact,
    Inquiry,
    JobRun,
    OutboxMessage,
    RateEvent,
    Suppression,
)
from mailer.outbound.delivery import Delivery
from mailer.outbound.transport import SMTPTransport
from mailer.publishing import campaigns
from mailer.publishing.render import Renderer
from mailer.runtime import Runtime
from mailer.web import create_app
from mailer.web.public import DEFAULT_SIGNUP_WORDING
from tests.conftest import free_port
from tests.smtp_server import SMTPServer
from tests.web_fixtures import SettableClock

UA = "Mozilla/5.0 (test; mailer)"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


# --- helpers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    id: int
    link_key: str
    email: str


def add_subscriber(runtime: Runtime, email: str = "pat@example.com", *, name: str = "Pat Doe",
                   topics: tuple[str, ...] = ("newsletter",), followups: bool = False) -> Person:
    """A subscriber added by staff (active topics), optionally with follow-up consent."""
    with runtime.sessions.begin() as session:
        contact, _ = audience.staff_subscribe(session, runtime.settings.secret_key, runtime.settings.topics,
                                              email=email, name=name, topic_names=list(topics),
                                              source="test fixture", now=runtime.clock())
        if followups:
            audience.grant_followups(session, contact, source="test fixture", wording="yes please",
                                     now=runtime.clock())
        return Person(contact.id, contact.link_key, contact.email)


def token(runtime: Runtime, purpose: str, person: Person, issued: dt.datetime | None = None) -> str:
    return make_token(runtime.settings.secret_key, purpose, person.id, person.link_key, issued)


@dataclass(frozen=True)
class State:
    """What the database says about one contact: compared before and after a request."""

    topics: dict[str, str]
    ledger: list[tuple[str, str, str]]
    suppression: str | None
    followups: bool
    confirms: int


def state(runtime: Runtime, contact_id: int) -> State:
    with runtime.sessions() as session:
        contact = session.get(Contact, contact_id)
        assert contact is not None
        ledger = session.execute(
            select(ConsentEvent.purpose, ConsentEvent.action, ConsentEvent.source)
            .where(ConsentEvent.contact_id == contact_id).order_by(ConsentEvent.id)
        ).all()
        suppression = session.scalar(select(Suppression.reason).where(Suppression.contact_id == contact_id))
        confirms = session.scalar(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.contact_id == contact_id, OutboxMessage.kind == "confirm"))
        return State({s.topic: s.status for s in contact.subscriptions}, [tuple(row) for row in ledger],
                     suppression, contact.followups_consent, int(confirms or 0))


def ledger_rows(runtime: Runtime, contact_id: int) -> list[ConsentEvent]:
    with runtime.sessions() as session:
        return list(session.scalars(select(ConsentEvent).where(ConsentEvent.contact_id == contact_id)
                                    .order_by(ConsentEvent.id)))


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def contact_by_email(runtime: Runtime, email: str) -> Contact | None:
    with runtime.sessions() as session:
        return session.scalar(select(Contact).where(Contact.email == email))


# --- headers and error pages ------------------------------------------------------------------------


def test_security_headers_on_pages_and_errors(client: FlaskClient) -> None:
    for response in (client.get("/subscribe"), client.get("/no-such-page"), client.get("/healthz")):
        headers = response.headers
        assert headers["Content-Security-Policy"].startswith("default-src 'self'")
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert "style-src 'sha256-" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Cache-Control"] == "no-store"
        assert "Set-Cookie" not in headers


def test_page_has_no_external_assets_and_an_allowed_inline_style(client: FlaskClient) -> None:
    import base64
    import hashlib

    html = client.get("/subscribe").get_data(as_text=True)
    assert "<script" not in html
    assert not re.search(r'(src|href)="https?://(?!therapycentral\.example)', html)
    style = re.search(r"<style>(.*?)</style>", html, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in client.get("/subscribe").headers["Content-Security-Policy"]
    assert ":focus-visible" in style


@pytest.mark.parametrize(("method", "path", "code"), [
    ("get", "/no-such-page", 404),
    ("put", "/subscribe", 405),
    ("get", "/api/inquiries", 405),
])
def test_error_pages(client: FlaskClient, method: str, path: str, code: int) -> None:
    response = getattr(client, method)(path)
    assert response.status_code == code
    if path.startswith("/api/"):
        assert response.is_json and response.json["error"]
    else:
        assert response.mimetype == "text/html"
        assert "<h1>" in response.get_data(as_text=True)
    if code == 405:
        assert "Allow" in response.headers


def test_server_error_is_a_page_without_traceback(runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(runtime)

    detail = "secret detail " + "@".join(["pat", "example.com"])

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError(detail)

    with caplog.at_level(logging.ERROR, logger="mailer.web"):
        response = app.test_client().get("/boom")
    body = response.get_data(as_text=True)
    assert response.status_code == 500
    assert "Something went wrong" in body
    assert "Traceback" not in body and "secret detail" not in body
    assert "RuntimeError" in caplog.text and "pat@example.com" not in caplog.text


def test_oversize_form_gets_413_page(client: FlaskClient, settings: Settings) -> None:
    response = client.post("/subscribe", data={"email": "a@example.com", "name": "x" * (settings.web.max_body_bytes + 1)})
    assert response.status_code == 413
    assert response.mimetype == "text/html"


# --- one-click unsubscribe --------------------------------------------------------------------------


def test_one_click_urlencoded(client: FlaskClient, runtime: Runtime) -> None:
    person = add_subscriber(runtime, followups=True)
    response = client.post(f"/unsubscribe/{token(runtime, 'unsubscribe', person)}", data=ONE_CLICK,
                           headers={"User-Agent": UA}, environ_base={"REMOTE_ADDR": "203.0.113.7"})
    assert response.status_code == 200
    assert "Location" not in response.headers and "Set-Cookie" not in response.headers
    assert "You are unsubscribed" in response.get_data(as_text=True)
    after = state(runtime, person.id)
    assert after.topics == {"newsletter": "unsubscribed"}
    assert after.suppression == "unsubscribed"
    assert after.followups is False
    withdrawn = [e for e in ledger_rows(runtime, person.id) if e.action == "withdrawn"]
    assert {e.purpose for e in withdrawn} == {"topic:newsletter", "followups"}
    assert all(e.source == "one-click" and e.ip == "203.0.113.7" and e.user_agent == UA for e in withdrawn)


def test_one_click_multipart_without_cookie(client: FlaskClient, runtime: Runtime) -> None:
    person = add_subscriber(runtime)
    client.delete_cookie("session")
    response = client.post(f"/unsubscribe/{token(runtime, 'unsubscribe', person)}", data=ONE_CLICK,
                           content_type="multipart/form-data", headers={"User-Agent": UA})
    assert response.status_code == 200
    assert not response.headers.get("Location")
    after = state(runtime, person.id)
    assert after.suppression == "unsubscribed"
    assert after.topics == {"newsletter": "unsubscribed"}
    assert ledger_rows(runtime, person.id)[-1].user_agent == UA


def test_one_click_repeat_is_harmless(client: FlaskClient, runtime: Runtime, clock: SettableClock) -> None:
    person = add_subscriber(runtime)
    url = f"/unsubscribe/{token(runtime, 'unsubscribe', person)}"
    assert client.post(url, data=ONE_CLICK).status_code == 200
    first = state(runtime, person.id)
    clock.advance(days=61)  # the link still works two months later
    second = client.post(url, data=ONE_CLICK)
    assert second.status_code == 200
    assert state(runtime, person.id) == first
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Suppression)) == 1


def test_unsubscribe_get_shows_a_form_and_changes_nothing(client: FlaskClient, runtime: Runtime) -> None:
    person = add_subscriber(runtime)
    before = state(runtime, person.id)
    unsubscribe_token = token(runtime, "unsubscribe", person)
    response = client.get(f"/unsubscribe/{unsubscribe_token}")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert f'<form method="post" action="/unsubscribe/{unsubscribe_token}">' in html
    assert 'name="List-Unsubscribe" value="One-Click"' in html
    assert client.head(f"/unsubscribe/{unsubscribe_token}").status_code == 200
    assert state(runtime, person.id) == before


def test_unsubscribe_button_on_the_page(client: FlaskClient, runtime: Runtime) -> None:
    person = add_subscriber(runtime)
    response = client.post(f"/unsubscribe/{token(runtime, 'unsubscribe', person)}",
                           data={**ONE_CLICK, "via": "page"})
    assert response.status_code == 200
    assert state(runtime, person.id).suppression == "unsubscribed"
    assert {e.source for e in ledger_rows(runtime, person.id) if e.action == "withdrawn"} == {"unsubscribe-page"}
    assert f"/preferences/{token(runtime, 'preferences', person)}" in response.get_data(as_text=True)


def test_unsubscribe_post_without_the_one_click_body_changes_nothing(client: FlaskClient, runtime: Runtime) -> None:
    person = add_subscriber(runtime)
    before = state(runtime, person.id)
    response = client.post(f"/unsubscribe/{token(runtime, 'unsubscribe', person)}", data={"something": "else"})
    assert response.status_code == 400
    assert state(runtime, person.id) == before


def _tampered(runtime: Runtime, person: Person, other: Person) -> dict[str, str]:
    good = token(runtime, "unsubscribe", person)
    contact_id, mac = good.split(".")
    flipped = mac[:5] + ("A" if mac[5] != "A" else "B") + mac[6:]
    return {
        "flipped mac": f"{contact_id}.{flipped}",
        "other id, same mac": f"{other.id}.{mac}",
        "unknown id": f"987654.{mac}",
        "id beyond BIGINT": f"9999999999999999999.{mac}",
        "garbage": "not-a-token",
        "truncated": good[:-1],
        "preferences token": token(runtime, "preferences", person),
        "confirm token": token(runtime, "confirm", person, runtime.clock()),
    }


@pytest.mark.parametrize("case", ["flipped mac", "other id, same mac", "unknown id", "id beyond BIGINT", "garbage",
                                  "truncated", "preferences token", "confirm token"])
def test_tampered_or_unknown_unsubscribe_token_is_404(client: FlaskClient, runtime: Runtime, case: str) -> None:
    person = add_subscriber(runtime)
    other = add_subscriber(runtime, "other@example.com", name="Other")
    bad = _tampered(runtime, person, other)[case]
    before = (state(runtime, person.id), state(runtime, other.id))
    for response in (client.get(f"/unsubscribe/{bad}"), client.post(f"/unsubscribe/{bad}", data=ONE_CLICK)):
        assert response.status_code == 404
        body = response.get_data(as_text=True)
        assert "pat@example.com" not in body and "other@example.com" not in body and "Pat" not in body
    assert (state(runtime, person.id), state(runtime, other.id)) == before


def test_tampered_preferences_and_confirm_tokens_are_404(client: FlaskClient, runtime: Runtime) -> None:
    person = add_subscriber(runtime)
    before = state(runtime, person.id)
    good = token(runtime, "preferences", person)
    bad = good[:-3] + ("xyz" if not good.endswith("xyz") else "abc")
    assert client.get(f"/preferences/{bad}").status_code == 404
    assert client.post(f"/preferences/{bad}", data={"action": "stop-all"}).status_code == 404
    confirm = token(runtime, "confirm", person, runtime.clock())
    assert client.post(f"/confirm/{confirm[:-2]}AA").status_code == 404
    # A confirmation needs its issue time: the same MAC scheme without one is not a confirm link.
    assert client.post(f"/confirm/{token(runtime, 'unsubscribe', person)}").status_code == 404
    assert state(runtime, person.id) == before


# --- the preference page -------------------------------------------------------------------------------


def test_preferences_page_shows_topics(client: FlaskClient, runtime: Runtime, settings: Settings) -> None:
    person = add_subscriber(runtime)
    response = client.get(f"/preferences/{token(runtime, 'preferences', person)}")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers
    for name, label in settings.topics.items():
        assert f'<label for="topic-{name}">{label}' in html
    assert re.search(r'id="topic-newsletter" name="topics" value="newsletter" checked', html)
    assert re.search(r'id="topic-events" name="topics" value="events">', html)
    assert "p•••@example.com" in html and "pat@example.com" not in html
    assert 'name="followups"' not in html  # never had follow-up consent
    assert "Stop all emails" in html
    # Headings in order: one h1, then h2s.
    levels = [int(level) for level in re.findall(r"<h([1-6])", html)]
    assert levels[0] == 1 and levels.count(1) == 1 and all(b - a <= 1 for a, b in zip(levels, levels[1:], strict=False))


def test_every_form_field_has_a_label(client: FlaskClient, runtime: Runtime) -> None:
    person = add_subscriber(runtime, followups=True)
    for path in (f"/preferences/{token(runtime, 'preferences', person)}", "/subscribe"):
        html = client.get(path).get_data(as_text=True)
        for field_id in re.findall(r'<input type="(?:checkbox|email|text)" id="([^"]+)"', html):
            assert f'<label for="{field_id}"' in html, f"{path}: no label for {field_id}"


def test_preferences_post_without_csrf_token_is_400_and_changes_nothing(client: FlaskClient, runtime: Runtime) -> None:
    person = add_subscriber(runtime)
    before = state(runtime, person.id)
    url = f"/preferences/{token(runtime, 'preferences', person)}"
    response = client.post(url, data={"action": "save", "topics": ["events"]})
    assert response.status_code == 400
    assert "not saved" in response.get_data(as_text=True)
    assert client.post(url, data={"action": "stop-all"}).status_code == 400
    assert state(runtime, person.id) == before


def test_preferences_post_with_a_bad_or_old_csrf_token_is_400(client: FlaskClient, runtime: Runtime,
                                                              clock: SettableClock) -> None:
    person = add_subscriber(runtime)
    other = add_subscriber(runtime, "other@example.com")
    before = state(runtime, person.id)
    url = f"/preferences/{token(runtime, 'preferences', person)}"
    good = csrf_of(client.get(url).get_data(as_text=True))
    others = csrf_of(client.get(f"/preferences/{token(runtime, 'preferences', other)}").get_data(as_text=True))
    stamp, mac = good.split(".")
    for bad in (f"{stamp}.{mac[:-2]}AA", f"{int(stamp) + 1}.{mac}", others):
        assert client.post(url, data={"csrf_token": bad, "action": "stop-all"}).status_code == 400
    clock.advance(hours=25)
    response = client.post(url, data={"csrf_token": good, "action": "stop-all"})
    assert response.status_code == 400
    assert "open for a long time" in response.get_data(as_text=True)
    assert state(runtime, person.id) == before


def test_preferences_save_persists_and_records_the_ledger(client: FlaskClient, runtime: Runtime) -> None:
    person = add_subscriber(runtime)
    url = f"/preferences/{token(runtime, 'preferences', person)}"
    csrf = csrf_of(client.get(url).get_data(as_text=True))
    response = client.post(url, data={"csrf_token": csrf, "action": "save", "topics": ["events"]},
                           headers={"User-Agent": UA, "Origin": "https://mail.therapycentral.example"},
                           environ_base={"REMOTE_ADDR": "198.51.100.4"})
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"{url}?saved=1")
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Saved." in page
    assert re.search(r'value="events" checked', page) and not re.search(r'value="newsletter" checked', page)
    after = state(runtime, person.id)
    assert after.topics == {"newsletter": "unsubscribed", "events": "active"}
    assert after.suppression is None
    changes = [e for e in ledger_rows(runtime, person.id) if e.source == "preference-page"]
    assert {(e.purpose, e.action) for e in changes} == {("topic:newsletter", "withdrawn"), ("topic:events", "granted")}
    assert all(e.ip == "198.51.100.4" and e.user_agent == UA for e in changes)


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"},
    {"Origin": "http://mail.therapycentral.example.evil.example"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Referer": "https://evil.example/page"},
])
def test_cross_origin_preference_post_is_refused(client: FlaskClient, runtime: Runtime, headers: dict[str, str]) -> None:
    person = add_subscriber(runtime)
    before = state(runtime, person.id)
    url = f"/preferences/{token(runtime, 'preferences', person)}"
    csrf = csrf_of(client.get(url).get_data(as_text=True))
    response = client.post(url, data={"csrf_token": csrf, "action": "stop-all"}, headers=headers)
    assert response.status_code == 403
    assert state(runtime, person.id) == before


@pytest.mark.parametrize("headers", [
    {"Origin": "null", "Sec-Fetch-Site": "same-origin"},  # what a browser sends under Referrer-Policy: no-referrer
    {"Origin": "http://localhost"},  # the test client's own host
    {"Origin": "https://mail.therapycentral.example"},  # web.base_url, behind a TLS proxy
    {},
])
def test_same_origin_preference_post_is_accepted(client: FlaskClient, runtime: Runtime, headers: dict[str, str]) -> None:
    person = add_subscriber(runtime)
    url = f"/preferences/{token(runtime, 'preferences', person)}"
    csrf = csrf_of(client.get(url).get_data(as_text=True))
    assert client.post(url, data={"csrf_token": csrf, "action": "stop-all"}, headers=headers).status_code == 303
    assert state(runtime, person.id).suppression == "unsubscribed"


def test_stop_all_from_the_preference_page(client: FlaskClient, runtime: Runtime) -> None:
    person = add_subscriber(runtime, topics=("newsletter", "events"), followups=True)
    url = f"/preferences/{token(runtime, 'preferences', person)}"
    csrf = csrf_of(client.get(url).get_data(as_text=True))
    assert client.post(url, data={"csrf_token": csrf, "action": "stop-all"}).status_code == 303
    after = state(runtime, person.id)
    assert after.topics == {"newsletter": "unsubscribed", "events": "unsubscribed"}
    assert after.suppression == "unsubscribed" and after.followups is False
    assert {(p, a) for p, a, s in after.ledger if s == "preference-page"} == {
        ("topic:newsletter", "withdrawn"), ("topic:events", "withdrawn"), ("followups", "withdrawn")}
    page = client.get(url).get_data(as_text=True)
    assert "You are unsubscribed from all emails" in page


def test_followup_consent_can_be_withdrawn(client: FlaskClient, runtime: Runtime) -> None:
    person = add_subscriber(runtime, followups=True)
    url = f"/preferences/{token(runtime, 'preferences', person)}"
    html = client.get(url).get_data(as_text=True)
    assert 'id="followups" name="followups" value="1" checked' in html
    response = client.post(url, data={"csrf_token": csrf_of(html), "action": "save", "topics": ["newsletter"],
                                      "followups_shown": "1"})
    assert response.status_code == 303
    after = state(runtime, person.id)
    assert after.followups is False and after.topics == {"newsletter": "active"} and after.suppression is None
    assert ("followups", "withdrawn", "preference-page") in after.ledger
    # Shown again, but switched off for good: the page does not offer to restart a sequence.
    html = client.get(url).get_data(as_text=True)
    assert 'id="followups" disabled' in html and "will not start again" in html


def test_a_consent_given_after_the_page_was_shown_is_kept(client: FlaskClient, runtime: Runtime) -> None:
    person = add_subscriber(runtime)
    url = f"/preferences/{token(runtime, 'preferences', person)}"
    csrf = csrf_of(client.get(url).get_data(as_text=True))  # no follow-up box on this page
    with runtime.sessions.begin() as session:
        audience.grant_followups(session, session.get(Contact, person.id), source="inquiry", wording="ok",
                                 now=runtime.clock())
    client.post(url, data={"csrf_token": csrf, "action": "save", "topics": ["newsletter"]})
    assert state(runtime, person.id).followups is True


def test_reticking_after_unsubscribing_resubscribes(client: FlaskClient, runtime: Runtime) -> None:
    person = add_subscriber(runtime)
    client.post(f"/unsubscribe/{token(runtime, 'unsubscribe', person)}", data=ONE_CLICK)
    assert state(runtime, person.id).suppression == "unsubscribed"
    url = f"/preferences/{token(runtime, 'preferences', person)}"
    csrf = csrf_of(client.get(url).get_data(as_text=True))
    client.post(url, data={"csrf_token": csrf, "action": "save", "topics": ["newsletter"]})
    after = state(runtime, person.id)
    assert after.topics == {"newsletter": "active"}
    assert after.suppression is None  # their own action lifts their own opt-out
    assert after.ledger[-1] == ("topic:newsletter", "granted", "preference-page")


@pytest.mark.parametrize("reason", ["hard_bounce", "complaint"])
def test_bounced_or_complaining_contact_cannot_change_topics(client: FlaskClient, runtime: Runtime, reason: str) -> None:
    person = add_subscriber(runtime)
    with runtime.sessions.begin() as session:
        audience.suppress(session, runtime.settings.secret_key, session.get(Contact, person.id), reason,
                          runtime.clock())
    before = state(runtime, person.id)
    url = f"/preferences/{token(runtime, 'preferences', person)}"
    html = client.get(url).get_data(as_text=True)
    assert 'value="newsletter" checked disabled' in html and 'value="events" disabled' in html
    assert "Topics cannot be changed here" in html
    csrf = csrf_of(html)
    client.post(url, data={"csrf_token": csrf, "action": "save", "topics": ["events"]})
    client.post(url, data={"csrf_token": csrf, "action": "save"})
    assert state(runtime, person.id) == before


def test_names_are_escaped_on_the_preference_page(client: FlaskClient, runtime: Runtime) -> None:
    person = add_subscriber(runtime, name="Pat")
    with runtime.sessions.begin() as session:  # stored before names had rules (a form refuses it now)
        session.get(Contact, person.id).name = "<script>alert(1)</script>"
    html = client.get(f"/preferences/{token(runtime, 'preferences', person)}").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


# --- sign-up and confirmation --------------------------------------------------------------------------


def test_subscribe_creates_a_pending_subscription_and_one_confirmation(client: FlaskClient, runtime: Runtime) -> None:
    response = client.post("/subscribe", data={"email": "New.Person@Example.COM", "name": "New Person",
                                               "consent_text": "Email me the newsletter."},
                           headers={"User-Agent": UA}, environ_base={"REMOTE_ADDR": "192.0.2.10"})
    assert response.status_code == 200
    contact = contact_by_email(runtime, "new.person@example.com")  # stored lower-cased whole
    assert contact is not None and contact.name == "New Person"
    after = state(runtime, contact.id)
    assert after.topics == {"newsletter": "pending"}
    assert after.confirms == 1
    (grant,) = ledger_rows(runtime, contact.id)
    assert (grant.purpose, grant.action, grant.source) == ("topic:newsletter", "granted", "signup-form")
    # The server's own wording, not the "consent_text" the request claimed was shown.
    assert grant.wording == DEFAULT_SIGNUP_WORDING and grant.ip == "192.0.2.10" and grant.user_agent == UA
    with runtime.sessions() as session:
        row = session.scalar(select(OutboxMessage).where(OutboxMessage.contact_id == contact.id))
        assert row.kind == "confirm" and row.state == "queued" and row.consent_event_id == grant.id
        # The rate-limit table never holds the client's IP address.
        assert "192.0.2.10" not in "".join(session.scalars(select(RateEvent.key)))


def test_subscribe_with_chosen_topics(client: FlaskClient, runtime: Runtime) -> None:
    client.post("/subscribe", data={"email": "t@example.com", "topics": ["events", "newsletter"]})
    assert state(runtime, contact_by_email(runtime, "t@example.com").id).topics == {
        "events": "pending", "newsletter": "pending"}
    assert client.post("/subscribe", data={"email": "u@example.com", "topics": ["nope"]}).status_code == 400
    assert contact_by_email(runtime, "u@example.com") is None


def test_one_confirmation_email_per_address_per_24_hours(client: FlaskClient, runtime: Runtime,
                                                         clock: SettableClock) -> None:
    form = {"email": "pat@example.com"}
    client.post("/subscribe", data=form)
    contact_id = contact_by_email(runtime, "pat@example.com").id
    clock.advance(hours=2)
    client.post("/subscribe", data=form, environ_base={"REMOTE_ADDR": "192.0.2.99"})
    clock.advance(hours=21, minutes=59)  # 23:59 after the first: still the same day's confirmation
    client.post("/subscribe", data=form)
    assert state(runtime, contact_id).confirms == 1
    clock.advance(minutes=2)
    client.post("/subscribe", data=form)
    assert state(runtime, contact_id).confirms == 2


@pytest.mark.parametrize("case", ["already subscribed", "unsubscribed", "hard bounce", "complaint", "address limit"])
def test_the_answer_is_the_same_for_every_address(client: FlaskClient, runtime: Runtime, case: str) -> None:
    new = client.post("/subscribe", data={"email": "fresh@example.com"})
    person = add_subscriber(runtime, "known@example.com")
    if case == "unsubscribed":
        client.post(f"/unsubscribe/{token(runtime, 'unsubscribe', person)}", data=ONE_CLICK)
    elif case in ("hard bounce", "complaint"):
        with runtime.sessions.begin() as session:
            audience.suppress(session, runtime.settings.secret_key, session.get(Contact, person.id),
                              case.replace(" ", "_"), runtime.clock())
    elif case == "address limit":
        client.post("/subscribe", data={"email": "known@example.com", "topics": ["events"]})
    before = state(runtime, person.id)
    known = client.post("/subscribe", data={"email": "known@example.com", "topics": ["events"]})
    assert known.status_code == new.status_code == 200
    assert known.get_data() == new.get_data()
    assert dict(known.headers) == dict(new.headers)
    after = state(runtime, person.id)
    if case in ("hard bounce", "complaint"):
        assert after == before  # nothing recorded, nothing sent
    if case == "address limit":
        assert after.confirms == 1
    if case == "unsubscribed":
        assert after.topics["events"] == "pending" and after.confirms == 1 and after.suppression == "unsubscribed"


def test_already_subscribed_gets_no_confirmation(client: FlaskClient, runtime: Runtime) -> None:
    person = add_subscriber(runtime, "known@example.com")
    before = state(runtime, person.id)
    assert client.post("/subscribe", data={"email": "KNOWN@example.com"}).status_code == 200
    assert state(runtime, person.id) == before


def test_per_client_rate_limit(client: FlaskClient, runtime: Runtime, settings: Settings,
                               clock: SettableClock) -> None:
    limit = settings.web.subscribe_per_client_per_hour
    here = {"REMOTE_ADDR": "192.0.2.50"}
    for n in range(limit):
        assert client.post("/subscribe", data={"email": f"p{n}@example.com"}, environ_base=here).status_code == 200
    refused = client.post("/subscribe", data={"email": "one-more@example.com"}, environ_base=here)
    assert refused.status_code == 429
    assert "Too many requests" in refused.get_data(as_text=True)
    assert contact_by_email(runtime, "one-more@example.com") is None
    # Another client is not affected; the same one is welcome again an hour later.
    assert client.post("/subscribe", data={"email": "x@example.com"},
                       environ_base={"REMOTE_ADDR": "192.0.2.51"}).status_code == 200
    clock.advance(minutes=61)
    assert client.post("/subscribe", data={"email": "later@example.com"}, environ_base=here).status_code == 200


@pytest.mark.parametrize("email", ["", "not-an-address", "a@b", "two@@example.com", "x@example.com\r\nBcc: y@z.com"])
def test_subscribe_with_an_invalid_address_is_400(client: FlaskClient, runtime: Runtime, email: str) -> None:
    response = client.post("/subscribe", data={"email": email})
    assert response.status_code == 400
    assert "email address" in response.get_data(as_text=True)
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Contact)) == 0


def test_subscribe_with_a_long_name_is_400(client: FlaskClient) -> None:
    response = client.post("/subscribe", data={"email": "a@example.com", "name": "n" * 201})
    assert response.status_code == 400
    assert "The name longer than 60 characters" not in response.get_data(as_text=True)
    assert "is longer than 60 characters" in response.get_data(as_text=True)


def _signed_up(client: FlaskClient, runtime: Runtime, email: str = "pat@example.com") -> tuple[Person, str]:
    """Sign up through the form; return the person and the confirm token the confirmation email carries."""
    client.post("/subscribe", data={"email": email})
    with runtime.sessions() as session:
        contact = session.scalar(select(Contact).where(Contact.email == email))
        row = session.scalar(select(OutboxMessage).where(OutboxMessage.contact_id == contact.id))
        person = Person(contact.id, contact.link_key, contact.email)
    # delivery.py builds the link from the outbox row's creation time.
    return person, token(runtime, "confirm", person, row.created_at)


def test_confirm_get_does_not_confirm_post_does(client: FlaskClient, runtime: Runtime) -> None:
    person, confirm = _signed_up(client, runtime)
    page = client.get(f"/confirm/{confirm}")
    assert page.status_code == 200
    assert f'<form method="post" action="/confirm/{confirm}">' in page.get_data(as_text=True)
    assert state(runtime, person.id).topics == {"newsletter": "pending"}
    response = client.post(f"/confirm/{confirm}", headers={"User-Agent": UA})
    assert response.status_code == 200
    assert "You are subscribed" in response.get_data(as_text=True)
    after = state(runtime, person.id)
    assert after.topics == {"newsletter": "active"}
    assert after.ledger[-1] == ("topic:newsletter", "confirmed", "double-opt-in-link")
    assert ledger_rows(runtime, person.id)[-1].user_agent == UA


def test_confirming_twice_is_harmless(client: FlaskClient, runtime: Runtime) -> None:
    person, confirm = _signed_up(client, runtime)
    client.post(f"/confirm/{confirm}")
    first = state(runtime, person.id)
    again = client.post(f"/confirm/{confirm}")
    assert again.status_code == 200
    assert "already confirmed" in again.get_data(as_text=True)
    assert state(runtime, person.id) == first
    assert "already confirmed" in client.get(f"/confirm/{confirm}").get_data(as_text=True)


def test_confirmation_lifts_an_earlier_unsubscribe(client: FlaskClient, runtime: Runtime, clock: SettableClock) -> None:
    person = add_subscriber(runtime)
    client.post(f"/unsubscribe/{token(runtime, 'unsubscribe', person)}", data=ONE_CLICK)
    clock.advance(days=3)
    _, confirm = _signed_up(client, runtime)
    client.post(f"/confirm/{confirm}")
    after = state(runtime, person.id)
    assert after.topics == {"newsletter": "active"} and after.suppression is None


def test_expired_confirmation_link_is_410(client: FlaskClient, runtime: Runtime, clock: SettableClock) -> None:
    person, confirm = _signed_up(client, runtime)
    clock.advance(days=7, seconds=1)
    for response in (client.get(f"/confirm/{confirm}"), client.post(f"/confirm/{confirm}")):
        assert response.status_code == 410
        assert "sign up again" in response.get_data(as_text=True)
    assert state(runtime, person.id).topics == {"newsletter": "pending"}


def test_confirmation_from_another_site_is_refused(client: FlaskClient, runtime: Runtime) -> None:
    person, confirm = _signed_up(client, runtime)
    response = client.post(f"/confirm/{confirm}", headers={"Origin": "https://evil.example"})
    assert response.status_code == 403
    assert state(runtime, person.id).topics == {"newsletter": "pending"}


# --- the intake API ---------------------------------------------------------------------------------------

AUTH = {"Authorization": "Bearer test-intake-token"}
INQUIRY = {"email": "visitor@example.com", "name": "Vi Sitor", "consent": True,
           "consent_text": "You may email me about my inquiry.", "source": "website-form",
           "message": "I have a private question about my health."}


def post_inquiry(client: FlaskClient, body: object, headers: dict[str, str] | None = None):  # noqa: ANN201
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post("/api/inquiries", data=data, content_type="application/json",
                       headers=AUTH if headers is None else headers)


def test_intake_creates_an_inquiry(client: FlaskClient, runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        response = post_inquiry(client, INQUIRY, {**AUTH, "User-Agent": UA})
    assert response.status_code == 201
    inquiry_id = response.json["inquiry_id"]
    with runtime.sessions() as session:
        inquiry = session.get(Inquiry, inquiry_id)
        assert inquiry is not None and inquiry.consent is True and inquiry.message == INQUIRY["message"]
        contact = session.get(Contact, inquiry.contact_id)
        assert contact.email == "visitor@example.com" and contact.followups_consent
    grant = ledger_rows(runtime, contact.id)[-1]
    assert (grant.purpose, grant.action, grant.user_agent) == ("followups", "granted", UA)
    # Neither the address nor the visitor's words ever reach a log line.
    assert "visitor@example.com" not in caplog.text and "private question" not in caplog.text


def test_intake_without_consent_stores_no_grant(client: FlaskClient, runtime: Runtime) -> None:
    response = post_inquiry(client, {**INQUIRY, "consent": False, "consent_text": None, "message": None})
    assert response.status_code == 201
    contact = contact_by_email(runtime, "visitor@example.com")
    assert not contact.followups_consent and ledger_rows(runtime, contact.id) == []


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "test-intake-token"},
                                     {"Authorization": "Basic dGVzdA=="}, {"Authorization": "Bearer tëst"}])
def test_intake_without_the_right_token_is_401(client: FlaskClient, runtime: Runtime, headers: dict[str, str]) -> None:
    response = post_inquiry(client, INQUIRY, headers)
    assert response.status_code == 401
    assert response.is_json and response.json["error"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert contact_by_email(runtime, "visitor@example.com") is None


def test_intake_is_closed_when_no_token_is_configured(runtime: Runtime) -> None:
    closed = Runtime(runtime.settings.model_copy(update={"intake_token": ""}), clock=runtime.clock,
                     engine_override=runtime.engine)
    client = create_app(closed).test_client()
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer"}):
        assert post_inquiry(client, INQUIRY, headers).status_code == 401


@pytest.mark.parametrize(("body", "field"), [
    ("{not json", None),
    (b"\xff\xfe", None),
    ("", None),
    ("[1, 2]", None),
    ('"a string"', None),
    ({**INQUIRY, "consent": "yes"}, "consent"),
    ({**INQUIRY, "consent": 1}, "consent"),
    ({k: v for k, v in INQUIRY.items() if k != "consent"}, "consent"),
    ({**INQUIRY, "email": "not an address"}, "email"),
    ({**INQUIRY, "email": 42}, "email"),
    ({k: v for k, v in INQUIRY.items() if k != "email"}, "email"),
    ({**INQUIRY, "name": "n" * 500}, "name"),
    ({**INQUIRY, "name": ["a"]}, "name"),
    ({**INQUIRY, "message": {"text": "hi"}}, "message"),
    ({**INQUIRY, "source": ""}, "source"),
])
def test_intake_bad_input_is_400_naming_the_field(client: FlaskClient, runtime: Runtime, body: object,
                                                  field: str | None) -> None:
    response = post_inquiry(client, body)
    assert response.status_code == 400
    assert response.is_json
    assert response.json["error"]
    assert response.json["field"] == field
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Inquiry)) == 0


def test_intake_oversize_body_is_413_json(client: FlaskClient, settings: Settings) -> None:
    response = post_inquiry(client, {**INQUIRY, "message": "x" * settings.web.max_body_bytes})
    assert response.status_code == 413
    assert response.is_json and response.json["error"]


# --- /healthz ---------------------------------------------------------------------------------------------


def test_healthz_reports_the_database_and_jobs(client: FlaskClient, runtime: Runtime) -> None:
    now = runtime.clock()
    with runtime.sessions.begin() as session:
        for minutes, outcome, counts in ((10, "error", {}), (2, "ok", {"sent": 3})):
            started = now - dt.timedelta(minutes=minutes)
            session.add(JobRun(job_id="deliver", scheduled_for=started, started_at=started, finished_at=started,
                               outcome=outcome, counts=counts, host="test"))
        session.add(JobRun(job_id="ingest_feed", scheduled_for=now, started_at=now, outcome="running", counts={},
                           host="test"))
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json
    assert body["status"] == "ok" and body["database"] is True and body["leader"] is True
    assert body["jobs"]["deliver"] == {"last_run": (now - dt.timedelta(minutes=2)).isoformat(), "outcome": "ok",
                                       "counts": {"sent": 3}}
    assert body["jobs"]["ingest_feed"]["outcome"] == "running"


def test_healthz_without_a_leader_check(runtime: Runtime) -> None:
    assert create_app(runtime).test_client().get("/healthz").json["leader"] is None


def test_healthz_is_503_when_the_database_does_not_answer(settings: Settings) -> None:
    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing",
                           connect_args={"connect_timeout": 2})
    try:
        app = create_app(Runtime(settings, engine_override=engine), leader=lambda: False)
        response = app.test_client().get("/healthz")
    finally:
        engine.dispose()
    assert response.status_code == 503
    assert response.json == {"status": "error", "database": False, "leader": False, "jobs": {}}


def test_healthz_is_503_with_an_unusable_sqlite_file(settings: Settings, tmp_path) -> None:  # noqa: ANN001
    folder = tmp_path / "not-a-database"
    folder.mkdir()
    engine = create_engine(f"sqlite:///{folder}")  # a directory: SQLite cannot open it
    try:
        response = create_app(Runtime(settings, engine_override=engine)).test_client().get("/healthz")
    finally:
        engine.dispose()
    assert response.status_code == 503
    assert response.json["database"] is False


# --- end to end, through the real SMTP fixture ----------------------------------------------------------


def _deliver(runtime: Runtime, server: SMTPServer) -> None:
    transport = SMTPTransport(parse_smtp_url(server.url), timeout=5.0, local_hostname="mailer.test")
    Delivery(runtime.settings, runtime.engine, transport, runtime.clock, runtime.kinds).run()


def _path_of(url: str) -> str:
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == "https://mail.therapycentral.example"
    return parts.path


def test_the_link_in_the_confirmation_email_confirms(client: FlaskClient, runtime: Runtime, smtp_server: SMTPServer,
                                                     clock: SettableClock) -> None:
    client.post("/subscribe", data={"email": "reader@example.com", "name": "Rea Der"})
    _deliver(runtime, smtp_server)
    (message,) = smtp_server.messages_to("reader@example.com")
    text = message.get_body(("plain",)).get_content()
    confirm_url = re.search(r"https://\S+/confirm/\S+", text).group(0)
    # A second sign-up the same day sends nothing more.
    clock.advance(hours=3)
    client.post("/subscribe", data={"email": "reader@example.com"})
    _deliver(runtime, smtp_server)
    assert len(smtp_server.messages_to("reader@example.com")) == 1

    path = _path_of(confirm_url)
    assert client.get(path).status_code == 200
    contact = contact_by_email(runtime, "reader@example.com")
    assert state(runtime, contact.id).topics == {"newsletter": "pending"}
    assert client.post(path).status_code == 200
    assert state(runtime, contact.id).topics == {"newsletter": "active"}


def test_one_click_from_a_received_email_and_the_next_campaign_skips(client: FlaskClient, runtime: Runtime,
                                                                     smtp_server: SMTPServer,
                                                                     clock: SettableClock) -> None:
    add_subscriber(runtime, "leaver@example.com")
    add_subscriber(runtime, "stayer@example.com")

    def campaign(subject: str) -> None:
        with runtime.sessions.begin() as session:
            created = campaigns.create_oneoff(session, runtime.settings, topic="newsletter", subject=subject,
                                              body_markdown="Join us.", now=clock.now)
            campaigns.approve(session, created, by="test", now=clock.now)
            campaigns.dispatch(session, clock.now, Renderer(runtime.settings))
        _deliver(runtime, smtp_server)

    campaign("Open evening")
    (first,) = smtp_server.messages_to("leaver@example.com")
    assert first["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe_url = re.search(r"<(https://[^>]+/unsubscribe/[^>]+)>", first["List-Unsubscribe"]).group(1)
    # What a mailbox provider does: a POST with the one-click body, no cookie, no page visit first.
    response = client.post(_path_of(unsubscribe_url), data=ONE_CLICK, headers={"User-Agent": "MailProvider/1.0"})
    assert response.status_code == 200

    clock.advance(days=1)
    campaign("Talk on Thursday")
    assert len(smtp_server.messages_to("leaver@example.com")) == 1
    assert len(smtp_server.messages_to("stayer@example.com")) == 2
