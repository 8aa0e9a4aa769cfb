"""The staff pages through Flask's test client, on SQLite and PostgreSQL: login, sessions and CSRF, campaigns
(review, edit, test, approve, cancel, compose), figures and the chart, inquiries, subscribers, `mailer staff add`."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update
from werkzeug.test import TestResponse

from mailer import audience, config, staff
from mailer.cli import main
from mailer.config import Settings
from mailer.links import email_hash
from mailer.models import (
    Campaign,
    ConsentEvent,
    Contact,
    Enrollment,
    Inquiry,
    OutboxMessage,
    StaffUser,
    StepVersion,
    Suppression,
)
from mailer.outbound import outbox
from mailer.publishing import campaigns, feeds, figures
from mailer.publishing.render import Renderer
from mailer.runtime import Runtime
from mailer.sequences import followups, inquiries
from mailer.web import create_app
from mailer.web.admin import MAX_ID, next_send_time
from tests.smtp_server import SMTPServer
from tests.web_fixtures import WEB_START, SettableClock

STAFF_EMAIL = "marta@therapycentral.example"
PASSWORD = "correct horse battery staple"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


# --- fixtures and helpers ----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def cheap_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2 at its production cost takes ~0.2 s a hash; these tests hash often and test logic, not cost."""
    monkeypatch.setattr(staff, "HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture
def staff_id(runtime: Runtime) -> int:
    with runtime.sessions.begin() as session:
        return staff.create(session, STAFF_EMAIL, PASSWORD, runtime.clock()).id


def csrf_of(response: TestResponse) -> str:
    found = CSRF.search(response.get_data(as_text=True))
    assert found, "no CSRF token in the page"
    return found.group(1)


def log_in(client: FlaskClient, email: str = STAFF_EMAIL, password: str = PASSWORD, next_url: str = "") -> TestResponse:
    token = csrf_of(client.get("/admin/login"))
    return client.post("/admin/login", data={"email": email, "password": password, "csrf_token": token,
                                             "next": next_url})


@pytest.fixture
def staff_client(client: FlaskClient, staff_id: int) -> FlaskClient:
    """A client logged in as the staff member."""
    response = log_in(client)
    assert response.status_code == 303, response.get_data(as_text=True)
    return client


def post(client: FlaskClient, path: str, data: dict[str, str] | None = None, token_from: str = "/admin/campaigns") -> TestResponse:
    """A form POST with the session's CSRF token (taken from any staff page: every page has the logout form)."""
    token = csrf_of(client.get(token_from))
    return client.post(path, data={**(data or {}), "csrf_token": token})


def text_of(response: TestResponse) -> str:
    return response.get_data(as_text=True)


def flashed(client: FlaskClient, response: TestResponse) -> str:
    """The page a redirect leads to (where the flash message is shown)."""
    assert response.status_code == 303, text_of(response)
    return text_of(client.get(response.headers["Location"]))


def manual(settings: Settings) -> Settings:
    return settings.model_copy(update={"newsletter": settings.newsletter.model_copy(update={"approval": "manual"})})


def draft_newsletter(runtime: Runtime) -> int:
    """Tonight's digest from the sample feed, waiting for approval (as with newsletter.approval = "manual")."""
    feeds.ingest_with(runtime.sessions, runtime.settings.feed, runtime.clock())
    with runtime.sessions.begin() as session:
        outcome = campaigns.make_newsletter(session, manual(runtime.settings), runtime.clock(),
                                            grace=dt.timedelta(days=2))
        assert outcome.campaign is not None
        return outcome.campaign.id


def add_subscriber(runtime: Runtime, email: str, name: str = "", topics: tuple[str, ...] = ("newsletter",),
                   at: dt.datetime | None = None) -> int:
    with runtime.sessions.begin() as session:
        contact, _ = audience.staff_subscribe(session, runtime.settings.secret_key, runtime.settings.topics,
                                              email=email, name=name, topic_names=list(topics),
                                              source="test fixture", now=at or runtime.clock(),
                                              wording="Yes, email me.")
        return contact.id


def add_inquiry(runtime: Runtime, email: str = "ines@example.com", name: str = "Ines Ortega",
                message: str = "I have been struggling with depression since spring.", consent: bool = True) -> int:
    now = runtime.clock()
    with runtime.sessions.begin() as session:
        return inquiries.record_inquiry(session, runtime.settings, email=email, name=name, consent=consent,
                                        consent_text="Yes, send me a few follow-up emails." if consent else "",
                                        source="website", received_at=now, now=now, message=message).inquiry_id


def campaign_row(runtime: Runtime, campaign_id: int) -> Campaign:
    with runtime.sessions() as session:
        row = session.get(Campaign, campaign_id)
        assert row is not None
        return row


@pytest.fixture
def world(runtime: Runtime) -> dict[str, int]:
    """One of everything a staff page can be about."""
    add_subscriber(runtime, "sub@example.com", "Sub Scriber")
    return {"campaign_id": draft_newsletter(runtime), "inquiry_id": add_inquiry(runtime),
            "contact_id": add_subscriber(runtime, "other@example.com"), "import_id": 1, "sequence": "default",
            "number": 2}


def admin_routes(app: Flask, ids: dict[str, int]) -> Iterator[tuple[str, str]]:
    """(method, path) of every staff route except the login, with real ids filled in."""
    with app.test_request_context():
        for rule in app.url_map.iter_rules():
            if not rule.endpoint.startswith("admin.") or rule.endpoint == "admin.login":
                continue
            path = rule.build({name: ids[name] for name in rule.arguments}, append_unknown=False)[1]
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                yield method, path


def database_snapshot(runtime: Runtime) -> tuple[object, ...]:
    """Enough of the database to notice any change a staff action makes."""
    with runtime.sessions() as session:
        return (
            session.execute(select(Campaign.id, Campaign.state, Campaign.subject, Campaign.intro, Campaign.send_after)
                            .order_by(Campaign.id)).all(),
            session.scalar(select(func.count()).select_from(Contact)),
            session.execute(select(Suppression.reason).order_by(Suppression.id)).all(),
            session.execute(select(Inquiry.status).order_by(Inquiry.id)).all(),
            session.execute(select(Enrollment.status).order_by(Enrollment.id)).all(),
            session.scalar(select(func.count()).select_from(OutboxMessage)),
            session.scalar(select(func.count()).select_from(StepVersion)),
        )


# --- access without a login ---------------------------------------------------------------------------


def test_every_page_needs_a_login(client: FlaskClient, app: Flask, runtime: Runtime, world: dict[str, int],
                                  smtp_server: SMTPServer) -> None:
    before = database_snapshot(runtime)
    routes = list(admin_routes(app, world))
    assert len(routes) >= 18  # every page and form of the staff pages, found from the app's own URL map
    for method, path in routes:
        response = client.open(path, method=method, data={"subject": "x", "reason": "booked", "when": "now"})
        if method == "GET":
            assert response.status_code == 302, path
            assert response.headers["Location"].startswith("/admin/login?next="), path
        else:
            assert response.status_code == 403, (method, path)
            assert "log in" in text_of(response).lower()
    assert database_snapshot(runtime) == before
    assert smtp_server.received == []


def test_login_page_and_redirect_keep_where_you_were_going(client: FlaskClient, staff_id: int) -> None:
    response = client.get("/admin/campaigns/7")
    assert response.headers["Location"] == "/admin/login?next=/admin/campaigns/7"
    page = client.get(response.headers["Location"])
    html = text_of(page)
    assert page.status_code == 200
    assert '<html lang="en">' in html and 'class="skip" href="#main"' in html
    assert '<label for="email">' in html and '<label for="password">' in html
    assert 'autocomplete="current-password"' in html
    assert 'value="/admin/campaigns/7"' in html
    assert log_in(client, next_url="/admin/campaigns/7").headers["Location"] == "/admin/campaigns/7"
    assert client.get("/admin/login").headers["Location"] == "/admin/campaigns"  # already logged in


@pytest.mark.parametrize("target", ["https://evil.example/admin/", "//evil.example/admin/", "/\\evil.example",
                                    "/unsubscribe/x", "javascript:alert(1)"])
def test_login_never_redirects_away_from_the_staff_pages(client: FlaskClient, staff_id: int, target: str) -> None:
    assert log_in(client, next_url=target).headers["Location"] == "/admin/campaigns"


# --- login, lockout, sessions ------------------------------------------------------------------------------


def test_login_good_and_bad(client: FlaskClient, runtime: Runtime, staff_id: int) -> None:
    wrong = log_in(client, password="not the password at all")
    unknown = log_in(client, email="nobody@therapycentral.example")
    invalid = log_in(client, email="not an address")
    assert wrong.status_code == unknown.status_code == invalid.status_code == 401
    message = "The email address and password do not match an account that can log in now."
    for response in (wrong, unknown, invalid):
        assert message in text_of(response)
    assert client.get("/admin/campaigns").status_code == 302

    good = log_in(client, email=" Marta@THERAPYCENTRAL.example")  # as people type their own address
    assert good.status_code == 303 and good.headers["Location"] == "/admin/campaigns"
    cookie = good.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" in cookie  # the tests' base URL is https
    page = client.get("/admin/campaigns")
    assert page.status_code == 200 and f"Logged in as {STAFF_EMAIL}" in text_of(page)
    with runtime.sessions() as session:
        user = session.get(StaffUser, staff_id)
        assert user.last_login_at == WEB_START and user.failed_logins == 0


def test_session_cookie_is_not_secure_on_plain_http(runtime: Runtime, settings: Settings, staff_id: int) -> None:
    plain = settings.model_copy(update={"web": settings.web.model_copy(update={"base_url": "http://127.0.0.1:8025"})})
    client = create_app(Runtime(plain, clock=runtime.clock, engine_override=runtime.engine)).test_client()
    assert "Secure" not in log_in(client).headers["Set-Cookie"]


def test_lockout_after_five_failures(client: FlaskClient, runtime: Runtime, clock: SettableClock, staff_id: int) -> None:
    for attempt in range(staff.MAX_FAILURES):
        assert log_in(client, password=f"wrong password {attempt}").status_code == 401
    with runtime.sessions() as session:
        user = session.get(StaffUser, staff_id)
        assert user.locked_until == WEB_START + staff.LOCK_FOR
    locked = log_in(client)  # the right password, while locked: the same answer as a wrong one
    assert locked.status_code == 401
    assert "do not match an account that can log in now" in text_of(locked)
    clock.advance(minutes=14)
    assert log_in(client).status_code == 401
    clock.advance(minutes=2)
    assert log_in(client).status_code == 303
    with runtime.sessions() as session:
        user = session.get(StaffUser, staff_id)
        assert user.locked_until is None and user.failed_logins == 0


def test_unknown_accounts_are_not_created_or_locked(client: FlaskClient, runtime: Runtime) -> None:
    for _ in range(staff.MAX_FAILURES + 1):
        assert log_in(client, email="ghost@therapycentral.example").status_code == 401
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(StaffUser)) == 0


def test_too_many_attempts_from_one_client_get_429(client: FlaskClient, staff_id: int) -> None:
    from mailer.web.admin import LOGIN_ATTEMPTS

    for attempt in range(LOGIN_ATTEMPTS):
        log_in(client, email=f"guess{attempt}@therapycentral.example")
    response = log_in(client)
    assert response.status_code == 429
    assert "Too many login attempts" in text_of(response)


def test_login_form_needs_its_csrf_token(client: FlaskClient, staff_id: int) -> None:
    client.get("/admin/login")
    response = client.post("/admin/login", data={"email": STAFF_EMAIL, "password": PASSWORD})
    assert response.status_code == 400
    assert "Please try again" in text_of(response)
    # Without the cookie of the login page (another site's form), a token alone does not do either.
    token = csrf_of(client.get("/admin/login"))
    fresh = client.application.test_client()
    assert fresh.post("/admin/login", data={"email": STAFF_EMAIL, "password": PASSWORD,
                                            "csrf_token": token}).status_code == 400


def test_idle_timeout(staff_client: FlaskClient, clock: SettableClock, settings: Settings) -> None:
    idle = settings.web.session_idle_minutes
    clock.advance(minutes=idle - 1)
    assert staff_client.get("/admin/campaigns").status_code == 200  # activity moves the idle clock on
    clock.advance(minutes=idle - 1)
    assert staff_client.get("/admin/inquiries").status_code == 200
    token = csrf_of(staff_client.get("/admin/campaigns"))
    clock.advance(minutes=idle + 1)
    refused = staff_client.post("/admin/compose", data={"csrf_token": token, "topic": "newsletter",
                                                        "subject": "Late", "body_markdown": "Hello"})
    assert refused.status_code == 403
    assert f"logged out after {idle} minutes" in text_of(refused)
    response = staff_client.get("/admin/campaigns")
    assert response.status_code == 302 and response.headers["Location"].startswith("/admin/login")


def test_idle_timeout_says_why(staff_client: FlaskClient, clock: SettableClock, settings: Settings) -> None:
    clock.advance(minutes=settings.web.session_idle_minutes + 1)
    response = staff_client.get("/admin/subscribers", follow_redirects=True)
    assert f"You were logged out after {settings.web.session_idle_minutes} minutes without activity" in text_of(response)


def test_sessions_end_after_twelve_hours_however_active(staff_client: FlaskClient, clock: SettableClock) -> None:
    for _ in range(12 * 60 // 25):
        clock.advance(minutes=25)
        assert staff_client.get("/admin/campaigns").status_code == 200
    clock.advance(minutes=25)
    assert staff_client.get("/admin/campaigns").status_code == 302


def test_a_new_password_ends_old_sessions(staff_client: FlaskClient, runtime: Runtime, staff_id: int) -> None:
    with runtime.sessions.begin() as session:
        session.get(StaffUser, staff_id).password_hash = staff.HASHER.hash("another long password")
    assert staff_client.get("/admin/campaigns").status_code == 302


def test_logout(staff_client: FlaskClient) -> None:
    assert staff_client.post("/admin/logout").status_code == 403  # a form without its token: refused
    response = post(staff_client, "/admin/logout")
    assert response.status_code == 303 and response.headers["Location"] == "/admin/login"
    assert "You are logged out." in text_of(staff_client.get("/admin/login"))
    assert staff_client.get("/admin/campaigns").status_code == 302


# --- CSRF ----------------------------------------------------------------------------------------------


def test_every_form_refuses_a_post_without_a_valid_token(staff_client: FlaskClient, app: Flask, runtime: Runtime,
                                                         world: dict[str, int], smtp_server: SMTPServer) -> None:
    good = csrf_of(staff_client.get("/admin/campaigns"))
    stamp, _, mac = good.partition(".")
    forged = f"{stamp}.{'A' * len(mac)}"
    other_session = csrf_of(app.test_client().get("/admin/login"))  # signed for another session's scope
    before = database_snapshot(runtime)
    posts = [path for method, path in admin_routes(app, world) if method == "POST"]
    assert len(posts) >= 9
    data = {"subject": "Changed", "intro": "x", "reason": "booked", "when": "now", "topic": "newsletter",
            "body_markdown": "Hello", "email": "sub@example.com", "confirm_email": "other@example.com"}
    for path in posts:
        for token in (None, "", forged, other_session):
            form = dict(data) if token is None else {**data, "csrf_token": token}
            response = staff_client.post(path, data=form)
            assert response.status_code == 403, (path, token)
            assert "nothing was changed" in text_of(response)
        # A valid token sent by another site's page (the browser says so) is refused as well.
        cross = staff_client.post(path, data={**data, "csrf_token": good}, headers={"Sec-Fetch-Site": "cross-site"})
        assert cross.status_code == 403, path
    assert database_snapshot(runtime) == before
    assert smtp_server.received == []


# --- campaigns -----------------------------------------------------------------------------------------


def test_campaign_list_shows_state_and_figures(staff_client: FlaskClient, runtime: Runtime) -> None:
    campaign_id = draft_newsletter(runtime)
    subject = campaign_row(runtime, campaign_id).subject
    html = text_of(staff_client.get("/admin/campaigns"))
    assert f'href="/admin/campaigns/{campaign_id}"' in html
    assert subject.replace("'", "&#39;") in html
    assert 'class="state state-draft">draft<' in html
    for heading in ("Queued", "Sent", "Deferred", "Failed", "Skipped", "Unsubscribed after"):
        assert f">{heading}</th>" in html
    assert '<a href="/admin/campaigns" aria-current="page">Campaigns</a>' in html


def test_campaign_list_pages_back(staff_client: FlaskClient, runtime: Runtime) -> None:
    from mailer.web.admin import CAMPAIGNS_PER_PAGE

    with runtime.sessions.begin() as session:
        ids = [campaigns.create_oneoff(session, runtime.settings, topic="events", subject=f"Event {n}",
                                       body_markdown="Hi", now=runtime.clock()).id
               for n in range(CAMPAIGNS_PER_PAGE + 2)]
    first = text_of(staff_client.get("/admin/campaigns"))
    older = re.search(r'href="/admin/campaigns\?before=(\d+)"', first)
    assert older and int(older.group(1)) == ids[2]
    second = text_of(staff_client.get(f"/admin/campaigns?before={older.group(1)}"))
    assert "Event 1<" in second and "Event 0<" in second and "Event 2<" not in second
    assert staff_client.get(f"/admin/campaigns?before={10**30}").status_code == 200


def test_campaign_page_shows_subject_preview_and_text(staff_client: FlaskClient, runtime: Runtime) -> None:
    campaign_id = draft_newsletter(runtime)
    response = staff_client.get(f"/admin/campaigns/{campaign_id}")
    html = text_of(response)
    assert response.status_code == 200
    assert f'<iframe class="preview" src="/admin/campaigns/{campaign_id}/preview" sandbox=""' in html
    assert '<pre class="text-part"' in html and "Hi Sam," in html  # the text part, with sample values
    assert "Approve for Mon 2 Mar 2026, 18:00 CST" in html and ">Send now<" in html
    assert f'name="address" value="{STAFF_EMAIL}"' in html
    assert "<script" not in html
    # Headings in order: one h1, then h2s.
    levels = [int(level) for level in re.findall(r"<h([1-6])", html)]
    assert levels[0] == 1 and levels.count(1) == 1 and max(levels) == 2
    # Every visible form field has a label.
    fields = re.findall(r'<(?:input|textarea|select)(?![^>]*type="hidden")[^>]*id="([^"]+)"', html)
    assert fields and all(f'<label for="{field}">' in html for field in fields)
    policy = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and len(re.findall(r"'sha256-", policy)) == 2


def test_preview_is_sandboxed_and_framed_only_by_us(staff_client: FlaskClient, runtime: Runtime) -> None:
    campaign_id = draft_newsletter(runtime)
    response = staff_client.get(f"/admin/campaigns/{campaign_id}/preview")
    policy = response.headers["Content-Security-Policy"]
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert policy.startswith("sandbox;") and "frame-ancestors 'self'" in policy and "script-src" not in policy
    assert "default-src 'none'" in policy
    assert response.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert "Hi Sam," in text_of(response) and "/unsubscribe/preview" in text_of(response)


def test_unknown_campaign_is_a_404_page(staff_client: FlaskClient) -> None:
    for path in ("/admin/campaigns/424242", f"/admin/campaigns/{MAX_ID + 1}", "/admin/inquiries/9",
                 "/admin/subscribers/9", "/admin/campaigns/424242/preview"):
        response = staff_client.get(path)
        assert response.status_code == 404, path
        assert "There is no such" in text_of(response)


def test_edit_a_draft(staff_client: FlaskClient, runtime: Runtime) -> None:
    campaign_id = draft_newsletter(runtime)
    response = post(staff_client, f"/admin/campaigns/{campaign_id}/edit",
                    {"subject": "Spring at the clinic", "preheader": "Three new articles",
                     "intro": "Dear friends,\r\nspring is here."})
    assert "Saved." in flashed(staff_client, response)
    row = campaign_row(runtime, campaign_id)
    assert (row.subject, row.preheader, row.intro) == ("Spring at the clinic", "Three new articles",
                                                       "Dear friends,\nspring is here.")
    preview = text_of(staff_client.get(f"/admin/campaigns/{campaign_id}/preview"))
    assert "spring is here." in preview and "Spring at the clinic" in preview

    emptied = post(staff_client, f"/admin/campaigns/{campaign_id}/edit", {"subject": "  ", "intro": "x"})
    assert "Not saved: a subject is required." in flashed(staff_client, emptied)
    assert campaign_row(runtime, campaign_id).subject == "Spring at the clinic"


def test_only_drafts_can_be_edited(staff_client: FlaskClient, runtime: Runtime) -> None:
    campaign_id = draft_newsletter(runtime)
    post(staff_client, f"/admin/campaigns/{campaign_id}/approve", {"when": "now"})
    html = text_of(staff_client.get(f"/admin/campaigns/{campaign_id}"))
    assert 'id="edit-heading"' not in html and 'id="approve-heading"' not in html
    response = post(staff_client, f"/admin/campaigns/{campaign_id}/edit", {"subject": "Too late", "intro": ""})
    assert "only drafts and scheduled campaigns can be edited" in flashed(staff_client, response)
    assert campaign_row(runtime, campaign_id).subject != "Too late"


def test_send_test_arrives_at_the_smtp_server(runtime: Runtime, config_path: Path, environ: dict[str, str],
                                              clock: SettableClock, smtp_server: SMTPServer, staff_id: int) -> None:
    settings = config.load(config_path, {**environ, "MAILER_SMTP_URL": smtp_server.url})
    smtp_runtime = Runtime(settings, clock=clock, engine_override=runtime.engine)
    client = create_app(smtp_runtime).test_client()
    log_in(client)
    campaign_id = draft_newsletter(smtp_runtime)
    subject = campaign_row(runtime, campaign_id).subject

    response = post(client, f"/admin/campaigns/{campaign_id}/test", {"address": ""})  # empty: my own address
    assert f"Test sent to {STAFF_EMAIL}." in flashed(client, response)
    assert len(smtp_server.received) == 1
    message = smtp_server.received[0].message
    assert smtp_server.received[0].rcpt_tos == [STAFF_EMAIL]
    assert message["Subject"] == f"[TEST] {subject}"
    assert "Hi Sam," in message.get_body(("plain",)).get_content()

    refused = post(client, f"/admin/campaigns/{campaign_id}/test", {"address": "patient@example.com"})
    assert "is not a staff login" in flashed(client, refused)
    smtp_server.faults.rcpt["*"] = "550 5.1.1 no such user"
    failed = flashed(client, post(client, f"/admin/campaigns/{campaign_id}/test", {"address": STAFF_EMAIL}))
    assert "could not be sent" in failed and "550" in failed
    assert len(smtp_server.received) == 1
    assert campaign_row(runtime, campaign_id).state == "draft"


def test_approve_a_newsletter_for_the_next_send_time(staff_client: FlaskClient, runtime: Runtime) -> None:
    campaign_id = draft_newsletter(runtime)
    response = post(staff_client, f"/admin/campaigns/{campaign_id}/approve", {"when": "next"})
    assert "Approved. It goes out at Mon 2 Mar 2026, 18:00 CST." in flashed(staff_client, response)
    row = campaign_row(runtime, campaign_id)
    assert row.state == "approved" and row.approved_by == STAFF_EMAIL and row.approved_at == WEB_START
    assert row.send_after == dt.datetime(2026, 3, 3, 0, 0, tzinfo=dt.UTC)  # 18:00 in Chicago (CST)
    with runtime.sessions() as session:
        assert campaigns.ready(session, WEB_START) == []  # not before its time


def test_next_send_time_after_tonights_has_passed(settings: Settings) -> None:
    evening = dt.datetime(2026, 3, 3, 0, 30, tzinfo=dt.UTC)  # 18:30 CST on 2 March
    assert next_send_time(settings, evening) == dt.datetime(2026, 3, 4, 0, 0, tzinfo=dt.UTC)
    # The night the clocks go forward (8 March 2026): 18:00 CDT is 23:00 UTC.
    assert next_send_time(settings, dt.datetime(2026, 3, 8, 12, 0, tzinfo=dt.UTC)) == \
        dt.datetime(2026, 3, 8, 23, 0, tzinfo=dt.UTC)


def test_send_now_and_one_offs_approve_without_waiting(staff_client: FlaskClient, runtime: Runtime) -> None:
    campaign_id = draft_newsletter(runtime)
    response = post(staff_client, f"/admin/campaigns/{campaign_id}/approve", {"when": "now"})
    assert "on the next delivery run" in flashed(staff_client, response)
    row = campaign_row(runtime, campaign_id)
    assert row.state == "approved" and row.send_after is None
    with runtime.sessions.begin() as session:
        oneoff_id = campaigns.create_oneoff(session, runtime.settings, topic="events", subject="Open evening",
                                            body_markdown="Come by.", now=runtime.clock()).id
    post(staff_client, f"/admin/campaigns/{oneoff_id}/approve", {})
    oneoff = campaign_row(runtime, oneoff_id)
    assert oneoff.state == "approved" and oneoff.send_after is None


def test_cancel(staff_client: FlaskClient, runtime: Runtime) -> None:
    add_subscriber(runtime, "a@example.com")
    campaign_id = draft_newsletter(runtime)
    post(staff_client, f"/admin/campaigns/{campaign_id}/approve", {"when": "now"})
    with runtime.sessions.begin() as session:
        assert campaigns.dispatch(session, runtime.clock(), Renderer(runtime.settings)) == {campaign_id: 1}
    response = post(staff_client, f"/admin/campaigns/{campaign_id}/cancel")
    assert "Cancelled. 1 message(s)" in flashed(staff_client, response)
    assert campaign_row(runtime, campaign_id).state == "cancelled"
    with runtime.sessions() as session:
        assert outbox.counts(session, campaign_id)["skipped"] == 1
    again = post(staff_client, f"/admin/campaigns/{campaign_id}/cancel")
    assert "Not cancelled: campaign" in flashed(staff_client, again)


def test_compose_creates_a_one_off_draft(staff_client: FlaskClient, runtime: Runtime) -> None:
    page = staff_client.get("/admin/compose")
    html = text_of(page)
    assert '<a href="/admin/compose" aria-current="page">Compose</a>' in html
    assert all(f'<label for="{field}">' in html for field in ("topic", "subject", "preheader", "body_markdown"))
    response = post(staff_client, "/admin/compose", {
        "topic": "events", "subject": "Open evening on Thursday", "preheader": "Meet our clinicians",
        "body_markdown": "Join us **Thursday** at 6pm.\r\n\r\n- tea\r\n- questions"}, token_from="/admin/compose")
    assert response.status_code == 303
    campaign_id = int(response.headers["Location"].rsplit("/", 1)[1])
    row = campaign_row(runtime, campaign_id)
    assert (row.kind, row.topic, row.state, row.subject, row.preheader) == (
        "oneoff", "events", "draft", "Open evening on Thursday", "Meet our clinicians")
    assert row.body_markdown == "Join us **Thursday** at 6pm.\n\n- tea\n- questions"
    assert "Draft saved." in text_of(staff_client.get(response.headers["Location"]))
    preview = text_of(staff_client.get(f"/admin/campaigns/{campaign_id}/preview"))
    assert "<strong>Thursday</strong>" in preview and "<li>tea</li>" in preview
    # The draft's own page lets the body be edited, as Markdown.
    assert 'id="body_markdown"' in text_of(staff_client.get(f"/admin/campaigns/{campaign_id}"))


@pytest.mark.parametrize(("form", "message"), [
    ({"topic": "nonsense", "subject": "Hi", "body_markdown": "Hello"}, "unknown topic"),
    ({"topic": "events", "subject": " ", "body_markdown": "Hello"}, "a subject is required"),
    ({"topic": "events", "subject": "Hi", "body_markdown": "  "}, "Please write the message"),
])
def test_compose_problems_keep_what_was_typed(staff_client: FlaskClient, runtime: Runtime,
                                              form: dict[str, str], message: str) -> None:
    response = post(staff_client, "/admin/compose", form)
    assert response.status_code == 400
    assert message in text_of(response)
    assert f">{form['body_markdown']}</textarea>" in text_of(response)
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Campaign)) == 0


# --- figures ------------------------------------------------------------------------------------------


def test_campaign_figures_for_a_constructed_scenario(staff_client: FlaskClient, runtime: Runtime) -> None:
    settings = runtime.settings
    people = {name: add_subscriber(runtime, f"{name}@example.com", topics=("newsletter", "events"))
              for name in ("ann", "ben", "cat", "dan", "eve", "fay", "gus")}
    with runtime.sessions.begin() as session:
        campaign = campaigns.create_oneoff(session, settings, topic="newsletter", subject="Figures",
                                           body_markdown="x", now=WEB_START)
        campaigns.approve(session, campaign, by="test", now=WEB_START)
        campaigns.dispatch(session, WEB_START, Renderer(settings))
        campaign_id = campaign.id
        first_send = WEB_START + dt.timedelta(minutes=5)
        states = {"ann": "sent", "ben": "sent", "cat": "sent", "dan": "failed", "eve": "deferred",
                  "fay": "skipped", "gus": "queued"}
        for name, state in states.items():
            session.execute(update(OutboxMessage).where(OutboxMessage.contact_id == people[name]).values(
                state=state, sent_at=first_send + dt.timedelta(minutes=len(name)) if state == "sent" else None))
        contacts = {name: session.get(Contact, contact_id) for name, contact_id in people.items()}
        later = first_send + dt.timedelta(hours=2)
        # ann: unsubscribes from everything after receiving it -> counts (withdrawal and suppression: once).
        audience.unsubscribe_all(session, settings.secret_key, contacts["ann"], source="one-click", now=later)
        # ben: unticks the newsletter on the preference page -> counts.
        audience.set_topics(session, contacts["ben"], {"events"}, source="preference-page", request=None, now=later)
        # cat: unticks only "events", another topic -> does not count.
        audience.set_topics(session, contacts["cat"], {"newsletter"}, source="preference-page", request=None,
                            now=later)
        # dan: the message failed, then he unsubscribed -> not a recipient, does not count.
        audience.unsubscribe_all(session, settings.secret_key, contacts["dan"], source="one-click", now=later)
    with runtime.sessions() as session:
        numbers = figures.campaign_figures(session, [campaign_id])[campaign_id]
    assert numbers == figures.CampaignFigures(queued=1, sent=3, deferred=1, failed=1, skipped=1,
                                              unsubscribed_after=2)
    # A withdrawal before the campaign's first send is not "after it".
    with runtime.sessions.begin() as session:
        session.execute(update(ConsentEvent).where(ConsentEvent.contact_id == people["ben"],
                                                   ConsentEvent.action == "withdrawn")
                        .values(created_at=WEB_START))
    with runtime.sessions() as session:
        assert figures.unsubscribed_after(session, [campaign_id]) == {campaign_id: 1}

    html = text_of(staff_client.get(f"/admin/campaigns/{campaign_id}"))
    for label, value in (("Queued", 1), ("Sent", 3), ("Deferred (will retry)", 1), ("Failed", 1), ("Skipped", 1),
                         ("Unsubscribed after it", 1)):
        assert f"<dt>{label}</dt><dd>{value}</dd>" in html
    assert "dan@example.com</td><td>failed</td>" in html  # who was not delivered
    listing = text_of(staff_client.get("/admin/campaigns"))
    assert re.search(r'<td class="num">1</td>\s*<td class="num">3</td>\s*<td class="num">1</td>\s*'
                     r'<td class="num">1</td>\s*<td class="num">1</td>\s*<td class="num">1</td>', listing)


def test_monthly_gained_and_lost_for_a_constructed_scenario(staff_client: FlaskClient, runtime: Runtime) -> None:
    settings = runtime.settings
    secret = settings.secret_key

    def at(month: int, day: int, year: int = 2026, hour: int = 12) -> dt.datetime:
        return dt.datetime(year, month, day, hour, tzinfo=settings.zone).astimezone(dt.UTC)

    add_subscriber(runtime, "old@example.com", at=at(2, 20, 2025))  # 13 months back: outside the chart
    add_subscriber(runtime, "apr1@example.com", at=at(4, 3, 2025))
    add_subscriber(runtime, "apr2@example.com", topics=("newsletter", "events"), at=at(4, 9, 2025))  # one person
    # Midnight on 1 Jan local time is still 31 Dec in UTC: it belongs to January.
    jan = add_subscriber(runtime, "jan@example.com", at=dt.datetime(2026, 1, 1, 0, 30, tzinfo=settings.zone))
    with runtime.sessions.begin() as session:
        # A web sign-up confirmed a month later counts when confirmed, once.
        contact, _ = audience.get_or_create_contact(session, "web@example.com", "", at(1, 30))
        audience.request_subscription(session, contact, "newsletter", source="signup-form", wording="w",
                                      request=None, now=at(1, 30))
        audience.confirm_pending(session, secret, contact, request=None, now=at(2, 2))
        # A sign-up never confirmed is not a subscriber.
        pending, _ = audience.get_or_create_contact(session, "pending@example.com", "", at(2, 5))
        audience.request_subscription(session, pending, "newsletter", source="signup-form", wording="w",
                                      request=None, now=at(2, 5))
        # Unsubscribing from everything: withdrawals and a suppression, one lost person.
        audience.unsubscribe_all(session, secret, session.get(Contact, jan), source="one-click", now=at(2, 10))
        # A hard bounce of a subscriber is lost too; an inquiry-only contact's suppression is not.
        bounced, _ = audience.get_or_create_contact(session, "apr1@example.com", "", at(3, 1))
        audience.suppress(session, secret, bounced, "hard_bounce", at(3, 1))
        inquirer, _ = audience.get_or_create_contact(session, "asked@example.com", "", at(3, 1))
        audience.suppress(session, secret, inquirer, "unsubscribed", at(3, 1))
        # An erased person leaves only a hashed suppression: counted once, in the month of the erasure.
        gone, _ = audience.get_or_create_contact(session, "apr2@example.com", "", at(3, 1))
        audience.erase(session, secret, gone, at(3, 1))
    with runtime.sessions() as session:
        months = figures.monthly_changes(session, settings.zone, WEB_START)
    assert [m.month for m in months] == [dt.date(2025, m, 1) for m in range(4, 13)] + \
        [dt.date(2026, m, 1) for m in range(1, 4)]
    table = {m.month.strftime("%Y-%m"): (m.gained, m.lost) for m in months if m.gained or m.lost}
    # apr2's ledger went with the erasure, so April 2025 keeps only apr1.
    assert table == {"2025-04": (1, 0), "2026-01": (1, 0), "2026-02": (1, 1), "2026-03": (0, 2)}

    svg = str(figures.monthly_chart_svg(months, "Subscribers"))
    assert svg.startswith("<svg") and "<script" not in svg.lower() and "<title>Subscribers</title>" in svg
    assert 'role="img"' in svg and 'aria-label="Subscribers.' in svg
    assert 'fill="url(#lost-hatch)"' in svg  # lost bars are hatched, not only another colour
    assert ">+1<" in svg and ">−2<" in svg  # every bar has its number as text
    assert "http" not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "")  # no external font or image

    html = text_of(staff_client.get("/admin/subscribers"))
    assert "<svg" in html and "<script" not in html
    assert '<th scope="row">March 2026</th><td class="num">0</td><td class="num">2</td>' in html


def test_chart_scale_and_empty_year(settings: Settings) -> None:
    empty = [figures.MonthFigures(dt.date(2026, m, 1), 0, 0) for m in range(1, 13)]
    svg = str(figures.monthly_chart_svg(empty, "Nothing yet"))
    assert svg.count(">0<") >= 24 and "<rect x" in svg
    busy = [figures.MonthFigures(dt.date(2026, 1, 1), 137, 12)]
    assert ">200<" in str(figures.monthly_chart_svg(busy, "Busy"))  # the axis ends on a round number


# --- inquiries ---------------------------------------------------------------------------------------------


def test_inquiries_list_and_mark_booked(staff_client: FlaskClient, runtime: Runtime) -> None:
    message = "I have been struggling with depression since spring."
    inquiry_id = add_inquiry(runtime, message=message)
    add_inquiry(runtime, email="no.consent@example.com", name="Noel", consent=False)
    page = text_of(staff_client.get("/admin/inquiries"))
    assert "Ines Ortega" in page and "ines@example.com" in page and "none (no consent)" in page
    assert "step 1 of 3 next" in page and "Mon 2 Mar 2026, 09:15 CST" in page  # 15 minutes after, in the window
    assert message not in page and "depression" not in page  # the visitor's text stays off the list
    assert "Mark booked<span class=\"visually-hidden\">: Ines Ortega</span>" in page
    detail = text_of(staff_client.get(f"/admin/inquiries/{inquiry_id}"))
    assert message in detail and "Yes, send me a few follow-up emails." in detail

    response = post(staff_client, f"/admin/inquiries/{inquiry_id}/close", {"reason": "booked"})
    assert "Ines Ortega: marked booked. Their follow-up emails are stopped." in flashed(staff_client, response)
    with runtime.sessions() as session:
        inquiry = session.get(Inquiry, inquiry_id)
        enrollment = session.scalar(select(Enrollment).where(Enrollment.inquiry_id == inquiry_id))
        assert inquiry.status == "booked" and inquiry.closed_at == WEB_START
        assert (enrollment.status, enrollment.stop_reason, enrollment.next_due_at) == ("stopped", "booked", None)
    with runtime.sessions.begin() as session:
        assert followups.advance(session, runtime.settings, WEB_START + dt.timedelta(days=30))["enqueued"] == 0
    assert "stopped: marked booked" in text_of(staff_client.get("/admin/inquiries"))


def test_mark_closed_from_the_detail_page(staff_client: FlaskClient, runtime: Runtime) -> None:
    inquiry_id = add_inquiry(runtime)
    response = post(staff_client, f"/admin/inquiries/{inquiry_id}/close", {"reason": "closed", "back": "inquiry"})
    assert response.headers["Location"] == f"/admin/inquiries/{inquiry_id}"
    assert "marked closed" in flashed(staff_client, response)
    assert post(staff_client, f"/admin/inquiries/{inquiry_id}/close", {"reason": "deleted"}).status_code == 400


# --- subscribers -----------------------------------------------------------------------------------------


def test_subscriber_search_and_page(staff_client: FlaskClient, runtime: Runtime) -> None:
    contact_id = add_subscriber(runtime, "Pat.Doe@Example.com", "Pat Doe", topics=("newsletter", "events"))
    with runtime.sessions.begin() as session:
        contact = session.get(Contact, contact_id)
        audience.set_topics(session, contact, {"newsletter"}, source="preference-page",
                            request=audience.RequestInfo(ip="203.0.113.9", user_agent="Firefox"),
                            now=WEB_START + dt.timedelta(hours=1))
    page = text_of(staff_client.get("/admin/subscribers"))
    assert 'autocomplete="off"' in page and '<label for="find-email">' in page
    assert "Pat.Doe@example.com" not in page  # no list of everyone
    found = post(staff_client, "/admin/subscribers", {"email": "  Pat.Doe@EXAMPLE.com "})
    assert found.status_code == 303 and found.headers["Location"] == f"/admin/subscribers/{contact_id}"
    html = text_of(staff_client.get(found.headers["Location"]))
    assert "<h1>Pat Doe</h1>" in html
    assert "Events: open evenings and talks</td><td>unsubscribed" in html
    assert "preference-page" in html and "203.0.113.9" in html and "Firefox" in html
    assert "test fixture" in html and "Yes, email me." in html  # source and wording of the grant
    assert "Mon 2 Mar 2026, 10:00 CST" in html
    missing = post(staff_client, "/admin/subscribers", {"email": "pat.doe@example.org"})
    assert missing.status_code == 404 and "No one with the address pat.doe@example.org" in text_of(missing)
    invalid = post(staff_client, "/admin/subscribers", {"email": "pat.doe"})
    assert invalid.status_code == 400 and "not a complete email address" in text_of(invalid)


def test_suppress(staff_client: FlaskClient, runtime: Runtime, staff_id: int) -> None:
    contact_id = add_subscriber(runtime, "pat@example.com")
    response = post(staff_client, f"/admin/subscribers/{contact_id}/suppress")
    assert "Suppressed." in flashed(staff_client, response)
    with runtime.sessions() as session:
        row = session.scalar(select(Suppression).where(Suppression.contact_id == contact_id))
        assert (row.reason, row.detail) == ("staff", f"by staff account {staff_id}")
        assert outbox.audience_size(session, "newsletter") == 0
    page = text_of(staff_client.get(f"/admin/subscribers/{contact_id}"))
    assert "Yes: stopped by staff" in page and "Suppress this address" not in page
    again = post(staff_client, f"/admin/subscribers/{contact_id}/suppress")
    assert "already suppressed" in flashed(staff_client, again)


def test_erase_needs_the_address_typed(staff_client: FlaskClient, runtime: Runtime) -> None:
    contact_id = add_subscriber(runtime, "pat@example.com", "Pat")
    page = staff_client.get(f"/admin/subscribers/{contact_id}/erase")
    assert page.status_code == 200 and "This cannot be undone." in text_of(page)
    assert '<label for="confirm-email">' in text_of(page)
    wrong = post(staff_client, f"/admin/subscribers/{contact_id}/erase", {"confirm_email": "pat@example.org"})
    assert wrong.status_code == 400 and "nothing was erased" in text_of(wrong)
    assert post(staff_client, f"/admin/subscribers/{contact_id}/erase", {}).status_code == 400
    with runtime.sessions() as session:
        assert session.get(Contact, contact_id) is not None

    done = post(staff_client, f"/admin/subscribers/{contact_id}/erase", {"confirm_email": "PAT@example.com"})
    assert done.headers["Location"] == "/admin/subscribers"
    assert "Erased." in flashed(staff_client, done)
    with runtime.sessions() as session:
        assert session.get(Contact, contact_id) is None
        assert session.scalar(select(func.count()).select_from(ConsentEvent)) == 0
        hashed = session.scalar(select(Suppression).where(
            Suppression.email_hash == email_hash(runtime.settings.secret_key, "pat@example.com")))
        assert hashed is not None and hashed.reason == "erased" and hashed.contact_id is None
    assert staff_client.get(f"/admin/subscribers/{contact_id}").status_code == 404


def test_html_in_names_and_subjects_is_escaped(staff_client: FlaskClient, runtime: Runtime) -> None:
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    contact_id = add_subscriber(runtime, "evil@example.com", name="Evan")
    add_inquiry(runtime, email="evil2@example.com", name="Evan", message=evil)
    with runtime.sessions.begin() as session:  # names stored before they had rules (forms refuse these now)
        session.get(Contact, contact_id).name = evil[:60]
        session.execute(update(Inquiry).values(name=evil[:60]))
    with runtime.sessions.begin() as session:
        campaign_id = campaigns.create_oneoff(session, runtime.settings, topic="events", subject=evil,
                                              body_markdown=evil, intro=evil, now=runtime.clock()).id
    pages = [f"/admin/subscribers/{contact_id}", "/admin/inquiries", "/admin/campaigns",
             f"/admin/campaigns/{campaign_id}"]
    with runtime.sessions() as session:
        pages.append(f"/admin/inquiries/{session.scalar(select(Inquiry.id))}")
    for path in pages:
        html = text_of(staff_client.get(path))
        assert "<script" not in html and "<img src=x" not in html, path
        assert "&lt;script&gt;" in html or "&lt;img" in html, path
    preview = text_of(staff_client.get(f"/admin/campaigns/{campaign_id}/preview"))
    assert "<script" not in preview and 'onerror="' not in preview


def test_pages_have_no_external_assets(staff_client: FlaskClient, runtime: Runtime, world: dict[str, int]) -> None:
    for path in ("/admin/campaigns", f"/admin/campaigns/{world['campaign_id']}", "/admin/compose",
                 "/admin/inquiries", f"/admin/inquiries/{world['inquiry_id']}", "/admin/subscribers",
                 f"/admin/subscribers/{world['contact_id']}", f"/admin/subscribers/{world['contact_id']}/erase"):
        html = text_of(staff_client.get(path))
        assert "<script" not in html and "<link rel=\"stylesheet\"" not in html and "@import" not in html, path
        assert not re.search(r'src="(?:https?:)?//', html) and "url(http" not in html, path
        assert 'lang="en"' in html and 'href="#main"' in html and "<h1>" in html, path
        assert ":focus-visible" in html


def test_home_redirects_to_campaigns(staff_client: FlaskClient) -> None:
    assert staff_client.get("/admin/").headers["Location"] == "/admin/campaigns"


# --- mailer staff add ----------------------------------------------------------------------------------


def staff_cli(config_path: Path, environ: dict[str, str], *args: str, password: str | None = None):  # noqa: ANN201
    env = {**environ, "MAILER_STAFF_PASSWORD": password}
    return CliRunner().invoke(main, ["--config", str(config_path), "staff", *args], env=env)


def test_staff_add_creates_an_argon2_login(config_path: Path, environ: dict[str, str], runtime: Runtime) -> None:
    result = staff_cli(config_path, environ, "add", "Rosa@TherapyCentral.example", "--role", "admin", password="a long passphrase!")
    assert result.exit_code == 0, result.output
    assert "Staff login rosa@therapycentral.example created with the role admin." in result.output
    with runtime.sessions() as session:
        user = session.scalar(select(StaffUser))
        assert user.email == "rosa@therapycentral.example" and user.password_hash.startswith("$argon2id$")
        assert "a long passphrase!" not in user.password_hash
    client = create_app(runtime).test_client()
    assert log_in(client, "rosa@therapycentral.example", "a long passphrase!").status_code == 303

    again = staff_cli(config_path, environ, "add", "rosa@therapycentral.example", "--role", "admin", password="another passphrase")
    assert again.exit_code == 1
    assert again.output == "mailer: error: a staff account for rosa@therapycentral.example already exists\n"


@pytest.mark.parametrize(("email", "password", "error"), [
    ("rosa@therapycentral.example", "short", "the password must be at least 12 characters long"),
    ("rosa@therapycentral.example", None, "no password: run this on a terminal to be asked for one, or set "
                                          "MAILER_STAFF_PASSWORD"),
    ("not-an-address", "a long passphrase!", "not a valid email address"),
])
def test_staff_add_errors_are_one_line(config_path: Path, environ: dict[str, str], runtime: Runtime,
                                       email: str, password: str | None, error: str) -> None:
    result = staff_cli(config_path, environ, "add", email, "--role", "marketing", password=password)
    assert result.exit_code == 1
    assert result.output.startswith(f"mailer: error: {error}") and result.output.count("\n") == 1
    assert "Traceback" not in result.output
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(StaffUser)) == 0


def test_staff_password_sets_a_new_one_and_ends_sessions(config_path: Path, environ: dict[str, str],
                                                         staff_client: FlaskClient, runtime: Runtime) -> None:
    other = create_app(runtime).test_client()
    for attempt in range(staff.MAX_FAILURES):  # someone locked the account meanwhile
        log_in(other, password=f"guess {attempt}")
    result = staff_cli(config_path, environ, "password", STAFF_EMAIL.upper(), password="a brand new passphrase")
    assert result.exit_code == 0, result.output
    assert result.output == f"New password set for {STAFF_EMAIL}.\n"
    assert staff_client.get("/admin/campaigns").status_code == 302  # the old session ended
    assert log_in(other, password=PASSWORD).status_code == 401
    assert log_in(other, password="a brand new passphrase").status_code == 303  # and the lock lifted
    unknown = staff_cli(config_path, environ, "password", "nobody@therapycentral.example", password="long enough pw")
    assert unknown.output == "mailer: error: no staff account for nobody@therapycentral.example\n"
