"""The follow-up step editor in a real browser (Debian's chromium through Playwright, JavaScript on for the
live preview): a marketing person rewrites email 2, watches the preview follow the typing, saves it, and
is refused a subject that names a treatment. Screenshot: test-artifacts/screenshots/publishing-step-editor.png."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from mailer import staff
from mailer.models import StepVersion
from mailer.runtime import Runtime
from tests.test_browser_preferences import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, require_chromium
from tests.web_fixtures import LiveServer

pytestmark = pytest.mark.browser

STAFF_EMAIL = "marta@therapycentral.example"
PASSWORD = "a long and memorable passphrase"
NEW_TEXT = "Our new front door is on Summit Avenue, next to the bakery. Parking is free behind the building."


@pytest.fixture
def account(runtime: Runtime) -> None:
    with runtime.sessions.begin() as session:
        staff.create(session, STAFF_EMAIL, PASSWORD, runtime.clock(), role="marketing")


def test_edit_a_step_with_a_live_preview_and_save(live_server: LiveServer, runtime: Runtime, account: None) -> None:
    require_chromium()
    from playwright.sync_api import expect, sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()  # JavaScript on
            outside: list[str] = []
            page.context.route(re.compile(r"^(?!http://127\.0\.0\.1:)"), lambda route, request: (
                outside.append(request.url), route.abort()))
            # Console errors such as a blocked script (the policy must allow the editor's own); the answers
            # 400 to refused wording are expected and not counted.
            errors: list[str] = []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error"
                    and not message.text.startswith("Failed to load resource") else None)

            page.goto(f"{live_server.url}/admin/followups")
            page.get_by_label("Email address").fill(STAFF_EMAIL)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.get_by_role("navigation", name="Staff pages").get_by_role("link", name="Follow-ups").click()
            expect(page.get_by_role("heading", name="Sequence “default”")).to_be_visible()
            page.screenshot(path=str(SCREENSHOTS / "publishing-followups.png"), full_page=True)
            page.get_by_role("link", name="Edit email 2 of “default”").click()
            expect(page.get_by_role("heading", level=1)).to_contain_text("Email 2 of 3")
            preview = page.frame_locator("#preview-frame")
            expect(preview.get_by_text("People often tell us that knowing what to expect")).to_be_visible()
            expect(page.get_by_label("Text", exact=True)).to_have_value(re.compile(r"### Before you come"))

            # Typing updates the preview by itself: nothing is clicked until Save.
            page.get_by_label("Subject", exact=True).fill("Finding your way to us")
            page.get_by_label("Text", exact=True).fill(
                f"{NEW_TEXT}\n\n[Book a time online](https://therapycentral.example/book)\n\nSee you soon,  \n"
                "The team at Therapy Central")
            expect(preview.locator("h1")).to_have_text("Finding your way to us")
            expect(preview.get_by_text("Our new front door is on Summit Avenue")).to_be_visible()
            expect(preview.get_by_role("link", name="Book a time online")).to_be_visible()
            expect(preview.get_by_text("People often tell us")).to_have_count(0)
            page.screenshot(path=str(SCREENSHOTS / "publishing-step-editor.png"), full_page=True)

            page.get_by_role("button", name="Save as version 1").click()
            expect(page.get_by_role("status")).to_contain_text("Saved as version 1.")
            first_row = page.locator("#history tbody tr").first
            expect(first_row).to_contain_text(STAFF_EMAIL)
            expect(first_row).to_contain_text("subject, body")  # the preheader was kept
            expect(preview.get_by_text("Our new front door is on Summit Avenue")).to_be_visible()

            # A treatment in the subject: the preview says so at once, and saving is refused.
            page.get_by_label("Subject", exact=True).fill("Ketamine: what to expect")
            expect(preview.get_by_role("alert")).to_contain_text("the subject names “ketamine”")
            page.get_by_role("button", name="Save as version 2").click()
            expect(page.get_by_role("alert").first).to_contain_text("Not saved: the subject names “ketamine”")
            expect(page.get_by_label("Subject", exact=True)).to_have_value("Ketamine: what to expect")
            expect(preview.get_by_role("alert")).to_contain_text("the subject names “ketamine”")  # not version 1
            page.screenshot(path=str(SCREENSHOTS / "publishing-step-editor-refused.png"), full_page=True)
            assert outside == [] and errors == []
        finally:
            browser.close()
    with runtime.sessions() as session:
        assert session.execute(select(StepVersion.version, StepVersion.subject, StepVersion.created_by)).all() == [
            (1, "Finding your way to us", STAFF_EMAIL)]
