"""Publishing without a shell, in a real browser (Debian's chromium through Playwright, JavaScript off):
schedule a one-off from its page for the repeated hour of the autumn night, check and import a CSV
file, and read a sent newsletter in the public archive on a phone-sized screen. Screenshots go to
test-artifacts/screenshots/publishing-*.png."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from mailer import audience, config, staff
from mailer.config import Settings
from mailer.jobs import deliver
from mailer.models import Campaign, Contact
from mailer.outbound.transport import SMTPTransport
from mailer.publishing import archive, campaigns, feeds
from mailer.runtime import Runtime
from tests.smtp_server import SMTPServer
from tests.test_browser_preferences import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, require_chromium
from tests.web_fixtures import LiveServer, SettableClock

pytestmark = pytest.mark.browser

STAFF_EMAIL = "marta@therapycentral.example"
PASSWORD = "a long and memorable passphrase"
SUBSCRIBERS = {"ann@example.com": "Ann Archer", "ben@example.com": "Ben Baker"}


@pytest.fixture
def runtime(settings: Settings, engine: Engine, clock: SettableClock, smtp_server: SMTPServer) -> Runtime:
    transport = SMTPTransport(config.parse_smtp_url(smtp_server.url), timeout=5, local_hostname="mailer.test")
    return Runtime(settings, clock=clock, engine_override=engine, transport_override=transport)


@pytest.fixture
def clinic(runtime: Runtime) -> None:
    settings = runtime.settings
    with runtime.sessions.begin() as session:
        staff.create(session, STAFF_EMAIL, PASSWORD, runtime.clock())
        for address, name in SUBSCRIBERS.items():
            audience.staff_subscribe(session, settings.secret_key, settings.topics, email=address, name=name,
                                     topic_names=["newsletter"], source="paper form", now=runtime.clock())
        gone, _ = audience.staff_subscribe(session, settings.secret_key, settings.topics, email="gone@example.com",
                                           name="Gone", topic_names=["newsletter"], source="paper form",
                                           now=runtime.clock())
        audience.unsubscribe_all(session, settings.secret_key, gone, source="one-click", now=runtime.clock())


def _browser(playwright, **context):  # noqa: ANN001, ANN202
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    page = browser.new_context(java_script_enabled=False, **context).new_page()
    outside: list[str] = []
    page.context.route(re.compile(r"^(?!http://127\.0\.0\.1:)"), lambda route, request: (
        outside.append(request.url), route.abort()))
    return browser, page, outside


def _log_in(page, base: str) -> None:  # noqa: ANN001
    page.goto(f"{base}/admin/campaigns")
    page.get_by_label("Email address").fill(STAFF_EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()


def test_schedule_a_one_off_from_its_page(live_server: LiveServer, runtime: Runtime, clock: SettableClock,
                                          smtp_server: SMTPServer, clinic: None) -> None:
    require_chromium()
    from playwright.sync_api import expect, sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with runtime.sessions.begin() as session:
        campaign_id = campaigns.create_oneoff(session, runtime.settings, topic="newsletter", subject="Open evening",
                                              body_markdown="Join us on **Thursday**.", now=clock.now).id
    with sync_playwright() as playwright:
        browser, page, outside = _browser(playwright, viewport={"width": 1280, "height": 900})
        try:
            _log_in(page, live_server.url)
            page.goto(f"{live_server.url}/admin/campaigns/{campaign_id}")
            field = page.get_by_label("Send at (clinic time, America/Chicago)")
            expect(field).to_have_attribute("type", "datetime-local")
            field.fill("2027-11-07T01:30")
            field.scroll_into_view_if_needed()
            page.locator("section", has=page.get_by_role("heading", name="Schedule")).screenshot(
                path=str(SCREENSHOTS / "publishing-schedule-field.png"))
            page.get_by_role("button", name="Schedule", exact=True).click()
            expect(page.get_by_role("status")).to_contain_text("Scheduled. It goes out at Sun 7 Nov 2027, 01:30 CDT.")
            expect(page.get_by_role("button", name="Unschedule")).to_be_visible()
            expect(page.get_by_label("Send at (clinic time, America/Chicago)")).to_have_value("2027-11-07T01:30")
            page.screenshot(path=str(SCREENSHOTS / "publishing-scheduled.png"), full_page=True)
            page.get_by_role("navigation", name="Staff pages").get_by_role("link", name="Campaigns").click()
            row = page.locator("tbody tr", has_text="Open evening")
            expect(row.locator(".state")).to_have_text("scheduled")
            expect(row).to_contain_text("for Sun 7 Nov 2027, 01:30 CDT")
            page.screenshot(path=str(SCREENSHOTS / "publishing-campaigns-scheduled.png"), full_page=True)
            assert outside == []
        finally:
            browser.close()

    # The scheduler at work that night: not a minute early, once at the first 01:30, not again an hour later.
    for moment, expected in (("2027-11-07T06:29:00", 0), ("2027-11-07T06:30:00", 2), ("2027-11-07T07:30:00", 0)):
        clock.now = dt.datetime.fromisoformat(moment).replace(tzinfo=dt.UTC)
        assert deliver.run(runtime, clock.now)["sent"] == expected, moment
    assert sorted(m.rcpt_tos[0] for m in smtp_server.received) == sorted(SUBSCRIBERS)


def test_check_and_import_a_file(live_server: LiveServer, runtime: Runtime, clinic: None, tmp_path: Path) -> None:
    require_chromium()
    from playwright.sync_api import expect, sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    rows = ["email,name,topics,consent_source,consented_at"]
    rows += [f"guest{i}@example.com,Guest {i},newsletter;events,open evening sheet,2026-02-20T19:00:00Z"
             for i in range(40)]
    rows += ["ann@example.com,Ann Archer,newsletter,open evening sheet,2026-02-20T19:00:00Z",
             "gone@example.com,Gone,newsletter,open evening sheet,2026-02-20T19:00:00Z",
             "no-at-sign,Nobody,newsletter,open evening sheet,2026-02-20T19:00:00Z",
             "quiet@example.com,Quiet,newsletter,,"]
    csv_file = tmp_path / "open-evening.csv"
    csv_file.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with sync_playwright() as playwright:
        browser, page, outside = _browser(playwright, viewport={"width": 1280, "height": 900})
        try:
            _log_in(page, live_server.url)
            page.get_by_role("navigation", name="Staff pages").get_by_role("link", name="Subscribers").click()
            page.get_by_role("link", name="import subscribers").click()
            expect(page.get_by_role("heading", level=1)).to_have_text("Import subscribers")
            page.get_by_label("CSV file").set_input_files(str(csv_file))
            page.get_by_role("button", name="Check the file").click()
            expect(page.get_by_role("heading", level=1)).to_have_text("Check before importing")
            expect(page.locator("#count-imported")).to_have_text("40")
            expect(page.locator("#count-unchanged")).to_have_text("1")
            expect(page.locator("#count-skipped")).to_have_text("1")
            expect(page.locator("#count-rejected")).to_have_text("2")
            expect(page.get_by_text("gone@example.com is on the suppression list")).to_be_visible()
            page.screenshot(path=str(SCREENSHOTS / "publishing-import-dry-run.png"), full_page=True)
            with runtime.sessions() as session:
                assert session.scalar(select(Contact).where(Contact.email == "guest0@example.com")) is None
            page.get_by_role("button", name="Import 40 people").click()
            expect(page.get_by_role("status")).to_contain_text("Imported: 40 people, 80 subscriptions.")
            expect(page.get_by_role("heading", level=1)).to_have_text("Imported")
            page.screenshot(path=str(SCREENSHOTS / "publishing-import-done.png"), full_page=True)
            assert outside == []
        finally:
            browser.close()
    with runtime.sessions() as session:
        guest = session.scalar(select(Contact).where(Contact.email == "guest39@example.com"))
        assert {s.topic: s.status for s in guest.subscriptions} == {"newsletter": "active", "events": "active"}
        gone = session.scalar(select(Contact).where(Contact.email == "gone@example.com"))
        assert {s.topic: s.status for s in gone.subscriptions} == {"newsletter": "unsubscribed"}


def test_the_archive_on_a_phone(live_server: LiveServer, runtime: Runtime, clinic: None,
                                smtp_server: SMTPServer) -> None:
    require_chromium()
    from playwright.sync_api import expect, sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    feeds.ingest_with(runtime.sessions, runtime.settings.feed, runtime.clock())
    with runtime.sessions.begin() as session:
        outcome = campaigns.make_newsletter(session, runtime.settings, runtime.clock(), grace=dt.timedelta(days=2))
        campaign_id = outcome.campaign.id
    deliver.run(runtime, runtime.clock())
    received = smtp_server.messages_to("ann@example.com")[0].get_body(("html",)).get_content()
    link = re.search(r'<a href="([^"]+)"[^>]*>View in your browser</a>', received).group(1)
    path = link.removeprefix(runtime.settings.web.base_url)
    with runtime.sessions() as session:
        subject = session.get(Campaign, campaign_id).subject
        assert path == f"/archive/{archive.slug(session.get(Campaign, campaign_id))}"
    with sync_playwright() as playwright:
        browser, page, outside = _browser(playwright, viewport={"width": 375, "height": 740}, is_mobile=True,
                                          device_scale_factor=2)
        try:
            page.goto(f"{live_server.url}/archive")
            page.get_by_role("link", name=subject).click()
            expect(page).to_have_url(f"{live_server.url}{path}")
            expect(page.get_by_role("heading", level=1)).to_have_text(subject)
            expect(page.get_by_text("Hi there,")).to_be_visible()
            main = page.locator("main").bounding_box()
            assert main is not None and main["width"] <= 375  # no sideways scrolling on a phone
            body_text = page.locator("body").inner_text()
            assert "Ann" not in body_text and "ann@example.com" not in body_text
            page.screenshot(path=str(SCREENSHOTS / "publishing-archive-phone.png"), full_page=True)
            assert outside == [], outside  # no fonts, scripts or images from anywhere else
        finally:
            browser.close()
