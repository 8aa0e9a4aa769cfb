"""A real browser (Debian's chromium through Playwright) changes topics on the preference page."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import select

from mailer import audience
from mailer.links import Links
from mailer.models import ConsentEvent, Contact
from mailer.runtime import Runtime
from tests.conftest import ROOT
from tests.web_fixtures import LiveServer

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.browser


def require_chromium() -> None:
    """Skip on a laptop without chromium; in CI a missing browser is a failure, never a silent skip."""
    if CHROMIUM.exists():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is missing in CI: install it with `apt-get install -y chromium`")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium); browser test skipped")


def test_change_topics_in_a_real_browser(live_server: LiveServer, runtime: Runtime) -> None:
    require_chromium()
    from playwright.sync_api import expect, sync_playwright

    settings = runtime.settings
    with runtime.sessions.begin() as session:
        contact, _ = audience.staff_subscribe(session, settings.secret_key, settings.topics,
                                              email="browser@example.com", name="Bea Browser",
                                              topic_names=["newsletter"], source="test fixture", now=runtime.clock())
        contact_id, link_key = contact.id, contact.link_key
    # The link as an email carries it, but on the live server's address instead of web.base_url.
    url = Links(live_server.url, settings.secret_key).preferences(contact_id, link_key)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(java_script_enabled=False)  # the page must work without JavaScript
            errors: list[str] = []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            response = page.goto(url)
            assert response is not None and response.status == 200
            expect(page.get_by_role("heading", level=1)).to_have_text("Your email preferences")
            newsletter = page.get_by_label(settings.topics["newsletter"])
            events = page.get_by_label(settings.topics["events"])
            expect(newsletter).to_be_checked()
            expect(events).not_to_be_checked()

            newsletter.uncheck()
            events.check()
            page.get_by_role("button", name="Save my choices").click()

            expect(page.get_by_role("status")).to_contain_text("Saved")
            expect(page.get_by_label(settings.topics["newsletter"])).not_to_be_checked()
            expect(page.get_by_label(settings.topics["events"])).to_be_checked()
            # The inline stylesheet is allowed by the CSP (a blocked one is reported on the console).
            assert not [e for e in errors if "Content Security Policy" in e], errors
            expect(page.get_by_role("button", name="Save my choices")).to_have_css("background-color",
                                                                                    "rgb(47, 111, 94)")
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "preferences.png"), full_page=True)
        finally:
            browser.close()

    with runtime.sessions() as session:
        contact = session.get(Contact, contact_id)
        assert {s.topic: s.status for s in contact.subscriptions} == {"newsletter": "unsubscribed", "events": "active"}
        changes = session.execute(
            select(ConsentEvent.purpose, ConsentEvent.action, ConsentEvent.ip, ConsentEvent.user_agent)
            .where(ConsentEvent.contact_id == contact_id, ConsentEvent.source == "preference-page")
        ).all()
    assert {(purpose, action) for purpose, action, _, _ in changes} == {
        ("topic:newsletter", "withdrawn"), ("topic:events", "granted")}
    assert all(ip == "127.0.0.1" and "Chrome" in (agent or "") for _, _, ip, agent in changes)
