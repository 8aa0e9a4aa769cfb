"""The front desk after a reply, in a real browser (Debian's chromium through Playwright, JavaScript off):
the inquiry list and page show that the person replied and their follow-ups are paused, Resume starts them
again, and the follow-up figures table counts the reply. Every page is saved as a screenshot."""

from __future__ import annotations

import datetime as dt
import re
from email.message import EmailMessage
from email.utils import format_datetime

import pytest
from sqlalchemy import select, update

from mailer import staff
from mailer.inbound import replies
from mailer.inbound.mailbox import Incoming
from mailer.models import Enrollment, Inquiry, OutboxMessage
from mailer.outbound.messages import make_message_id
from mailer.runtime import Runtime
from mailer.sequences import followups, inquiries
from tests.test_browser_preferences import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, require_chromium
from tests.web_fixtures import LiveServer, SettableClock

pytestmark = pytest.mark.browser

STAFF_EMAIL = "marta@therapycentral.example"
PASSWORD = "a long and memorable passphrase"
PERSON = "ines@example.com"
REPLY_WORDS = "QUARTZ-9911 thank you, I would like a call on Thursday"


@pytest.fixture
def replied(runtime: Runtime, clock: SettableClock) -> int:
    """Ines inquired last week, got the first two follow-ups, and replied this morning. The inquiry id."""
    settings = runtime.settings
    received = clock.now - dt.timedelta(days=7)
    with runtime.sessions.begin() as session:
        staff.create(session, STAFF_EMAIL, PASSWORD, clock.now)
        inquiry_id = inquiries.record_inquiry(
            session, settings, email=PERSON, name="Ines Ortega", consent=True, consent_text="Yes, email me.",
            source="website", received_at=received, now=received, message="Do you have evening appointments?",
        ).inquiry_id
    for sent_at in (received + dt.timedelta(hours=1), received + dt.timedelta(days=3, hours=1)):
        with runtime.sessions.begin() as session:
            followups.advance(session, settings, sent_at)
            session.execute(update(OutboxMessage).where(OutboxMessage.state == "queued")
                            .values(state="sent", sent_at=sent_at))
    with runtime.sessions.begin() as session:
        last = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id.desc())).first()
        reply = EmailMessage()
        reply["From"] = f"Ines Ortega <{PERSON}>"
        reply["To"] = settings.sender.reply_to
        reply["Subject"] = "Re: What a first visit with us looks like"
        reply["Date"] = format_datetime(clock.now - dt.timedelta(hours=2))
        reply["In-Reply-To"] = make_message_id(settings.secret_key, last.id, "therapycentral.example")
        reply.set_content(REPLY_WORDS)
        report = replies.apply(session, settings, [Incoming("1", reply.as_bytes())], clock.now - dt.timedelta(hours=2))
        assert (report.replies, report.paused) == (1, 1)
    return inquiry_id


def test_the_inquiry_page_after_a_reply_resume_and_the_figures(live_server: LiveServer, runtime: Runtime,
                                                                 replied: int) -> None:
    require_chromium()
    from playwright.sync_api import Page, expect, sync_playwright

    base = live_server.url
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def shot(page: Page, name: str) -> None:
        page.screenshot(path=str(SCREENSHOTS / f"replies-{name}.png"), full_page=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(java_script_enabled=False, viewport={"width": 1280, "height": 900})
            outside: list[str] = []

            def block_outside(route, request) -> None:  # noqa: ANN001
                outside.append(request.url)
                route.abort()

            context.route(re.compile(r"^(?!http://127\.0\.0\.1:)"), block_outside)
            page = context.new_page()
            page.goto(f"{base}/admin/inquiries")
            page.get_by_label("Email address").fill(STAFF_EMAIL)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()

            # --- the list: the row says they replied --------------------------------------------
            expect(page.get_by_role("heading", level=1)).to_have_text("Inquiries")
            row = page.locator("tbody tr", has_text="Ines Ortega")
            expect(row).to_contain_text("paused: they replied on Mon 2 Mar 2026, 07:00 CST")
            shot(page, "inquiries")

            # --- the inquiry page: replied on ..., Resume and Close -----------------------------
            page.get_by_role("link", name="Ines Ortega").click()
            expect(page.get_by_role("heading", level=1)).to_have_text("Inquiry from Ines Ortega")
            facts = page.locator("dl.facts")
            expect(facts).to_contain_text("paused: they replied on Mon 2 Mar 2026, 07:00 CST")
            expect(facts).to_contain_text("replied on Mon 2 Mar 2026, 07:00 CST (after email 2)")
            expect(page.get_by_role("heading", name="They replied: what next?")).to_be_visible()
            expect(page.get_by_text("QUARTZ-9911")).to_have_count(0)  # never their words
            shot(page, "inquiry-paused")

            page.get_by_role("button", name="Resume follow-ups").click()
            expect(page.get_by_role("status")).to_contain_text(
                "Ines Ortega: follow-up emails resumed. The next one goes Mon 2 Mar 2026, 09:00 CST.")
            expect(facts).to_contain_text("step 3 of 3 next")
            expect(page.get_by_role("button", name="Resume follow-ups")).to_have_count(0)
            shot(page, "inquiry-resumed")
            with runtime.sessions() as session:
                enrollment = session.scalars(select(Enrollment).where(Enrollment.inquiry_id == replied)).one()
                assert (enrollment.status, enrollment.next_step, enrollment.resumes) == ("active", 2, 1)
                assert session.get(Inquiry, replied).status == "open"

            # --- the figures ------------------------------------------------------------------
            page.goto(f"{base}/admin/inquiries")
            page.get_by_role("link", name="Follow-up figures").click()
            expect(page.get_by_role("heading", level=1)).to_have_text("Follow-up figures")
            table = page.get_by_role("table", name=re.compile("Sequence “default”, step by step"))
            second = table.get_by_role("row", name=re.compile("Email 2: What a first visit"))
            expect(second.get_by_role("cell")).to_have_text(["1", "1", "0", "0"])
            expect(table.get_by_role("row", name=re.compile("Email 1: Thank you"))
                   .get_by_role("cell")).to_have_text(["1", "0", "0", "0"])
            expect(page.locator("dl.figures div", has_text="Enrolled").locator("dd")).to_have_text("1")
            shot(page, "figures")
            assert outside == []
        finally:
            browser.close()
