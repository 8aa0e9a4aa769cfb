"""Bounces as staff meet them in a real browser (Debian's chromium through Playwright, JavaScript off): a
campaign page warning that the sending setup has a problem, a subscriber's delivery reports, and lifting
a hard-bounce suppression when the person says the address works. Every page is saved as a screenshot."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from sqlalchemy import select

from mailer import audience, staff
from mailer.inbound import bounces, evidence
from mailer.models import Campaign, ConsentEvent, OutboxMessage, Suppression
from mailer.outbound.messages import make_message_id
from mailer.runtime import Runtime
from tests.test_bounces import corpus
from tests.test_browser_preferences import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, require_chromium
from tests.web_fixtures import LiveServer

pytestmark = pytest.mark.browser

STAFF_EMAIL = "marta@therapycentral.example"
PASSWORD = "a long and memorable passphrase"


def test_a_bounced_subscriber_and_a_sending_setup_problem_in_a_real_browser(live_server: LiveServer,
                                                                            runtime: Runtime) -> None:
    require_chromium()
    from playwright.sync_api import Page, expect, sync_playwright

    settings, sessions = runtime.settings, runtime.sessions
    now = runtime.clock()
    with sessions.begin() as session:
        staff.create(session, STAFF_EMAIL, PASSWORD, now)
        audience.staff_subscribe(session, settings.secret_key, settings.topics, email="nobody@example.com", name="Noa",
                                 topic_names=["newsletter"], source="paper form at reception", now=now)
        campaign = Campaign(kind="oneoff", topic="newsletter", subject="Open evening", state="sent", created_at=now)
        session.add(campaign)
        session.flush()
        campaign_id = campaign.id
        # Four people whose servers refused our sender: nobody suppressed, staff warned.
        for n in range(4):
            contact, _ = audience.get_or_create_contact(session, f"p{n}@example.net", "", now)
            row = OutboxMessage(dedupe_key=f"c:{campaign_id}:{contact.id}", kind="oneoff", campaign_id=campaign_id,
                                contact_id=contact.id, state="sent", attempts=1, created_at=now, due_at=now, sent_at=now)
            session.add(row)
            session.flush()
            row.message_id = make_message_id(settings.secret_key, row.id, "therapycentral.example")
            verdict = evidence.Verdict("not_about_recipient", contact.email, "sender_rejected", "5.7.1", "550",
                                       f"550 5.7.1 <{contact.email}>: Sender address rejected: not owned by user",
                                       row.message_id)
            evidence.apply(session, settings, verdict, evidence.Evidence("maildir", f"m{n}", now), now)
        bounces.process(session, settings, [("1765000000.M1P1.bounces", corpus("postfix-user-unknown.eml"))],
                        now + dt.timedelta(days=300))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def shot(page: Page, name: str) -> None:
        page.screenshot(path=str(SCREENSHOTS / f"bounces-{name}.png"), full_page=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(java_script_enabled=False, viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.goto(f"{live_server.url}/admin/campaigns/{campaign_id}")
            page.get_by_label("Email address").fill(STAFF_EMAIL)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()

            # --- the campaign: a warning, with the reason and the servers' words -----------------------
            warning = page.get_by_role("alert")
            expect(warning).to_contain_text("The sending setup has a problem")
            expect(warning).to_contain_text("4 refusals: receiving servers refuse our sender address or its domain.")
            expect(warning).to_contain_text("Sender address rejected: not owned by user")
            expect(warning).to_contain_text("<*@example.net>")  # the servers' words, addresses masked
            shot(page, "campaign-warning")

            # --- the subscriber: what the server said, and lifting it ----------------------------------
            page.get_by_role("link", name="Subscribers").click()
            page.get_by_label("Email address").fill("nobody@example.com")
            page.get_by_role("button", name="Find").click()
            expect(page.get_by_role("heading", level=1)).to_have_text("Noa")
            expect(page.get_by_text("the address does not exist (hard bounce)")).to_be_visible()
            reports = page.get_by_role("table", name=re.compile("What mail servers reported"))
            expect(reports).to_contain_text("hard bounce (user unknown)")
            expect(reports).to_contain_text("caused the suppression")
            expect(reports).to_contain_text("Recipient address rejected: User unknown")
            expect(reports).to_contain_text("1765000000.M1P1.bounces")
            shot(page, "subscriber")
            page.get_by_role("button", name="Lift the suppression").click()
            expect(page.get_by_role("status")).to_contain_text("Suppression lifted.")
            expect(page.get_by_role("button", name="Lift the suppression")).to_have_count(0)
            expect(page.get_by_role("cell", name="All emails (suppression)")).to_be_visible()
            shot(page, "lifted")
        finally:
            browser.close()
    with sessions() as session:
        assert session.scalars(select(Suppression)).all() == []
        lifted = session.scalar(select(ConsentEvent).where(ConsentEvent.action == "lifted"))
        assert lifted is not None and lifted.source.startswith("staff account ")
