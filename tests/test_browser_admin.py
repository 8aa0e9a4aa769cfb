"""A marketing person's evening in a real browser (Debian's chromium through Playwright, JavaScript off):
review the nightly newsletter, test it, approve it, watch it go out; write, test and approve a one-off;
mark an inquiry booked; find and erase a subscriber. Every page is saved as a screenshot."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from sqlalchemy import Engine, select

from mailer import audience, config, staff
from mailer.config import Settings
from mailer.jobs import deliver
from mailer.models import Campaign, Contact, Enrollment
from mailer.outbound.transport import SMTPTransport
from mailer.publishing import campaigns, feeds
from mailer.runtime import Runtime
from mailer.sequences import inquiries
from tests.smtp_server import SMTPServer
from tests.test_browser_preferences import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, require_chromium
from tests.web_fixtures import LiveServer, SettableClock

pytestmark = pytest.mark.browser

STAFF_EMAIL = "marta@therapycentral.example"
PASSWORD = "a long and memorable passphrase"
SUBSCRIBERS = ("ann@example.com", "ben@example.com", "cat@example.com")
EVENTS_SUBSCRIBER = "dora@example.com"
INQUIRY_MESSAGE = "Could you call me back about the evening appointments? Thank you."


@pytest.fixture
def runtime(settings: Settings, engine: Engine, clock: SettableClock, smtp_server: SMTPServer) -> Runtime:
    """The served app's runtime, delivering to the SMTP fixture (replaces tests.web_fixtures' runtime)."""
    transport = SMTPTransport(config.parse_smtp_url(smtp_server.url), timeout=5, local_hostname="mailer.test")
    return Runtime(settings, clock=clock, engine_override=engine, transport_override=transport)


@pytest.fixture
def clinic(runtime: Runtime) -> int:
    """A staff login, subscribers, an inquiry, and tonight's digest waiting for approval (its id)."""
    settings = runtime.settings
    now = runtime.clock()
    with runtime.sessions.begin() as session:
        staff.create(session, STAFF_EMAIL, PASSWORD, now)
        for address in SUBSCRIBERS:
            audience.staff_subscribe(session, settings.secret_key, settings.topics, email=address,
                                     name=address.split("@")[0].title(), topic_names=["newsletter"],
                                     source="paper form at reception", now=now, wording="Email me new articles.")
        audience.staff_subscribe(session, settings.secret_key, settings.topics, email=EVENTS_SUBSCRIBER,
                                 name="Dora", topic_names=["events"], source="open evening sign-up sheet", now=now)
        inquiries.record_inquiry(session, settings, email="ines@example.com", name="Ines Ortega", consent=True,
                                 consent_text="Yes, send me a few emails about my inquiry.", source="website",
                                 received_at=now, now=now, message=INQUIRY_MESSAGE)
    feeds.ingest_with(runtime.sessions, settings.feed, now)
    # As with newsletter.approval = "manual": tonight's digest waits for staff.
    manual = settings.model_copy(update={"newsletter": settings.newsletter.model_copy(update={"approval": "manual"})})
    with runtime.sessions.begin() as session:
        outcome = campaigns.make_newsletter(session, manual, now, grace=dt.timedelta(days=2))
        assert outcome.campaign is not None and outcome.campaign.state == "draft"
        return outcome.campaign.id


def test_nightly_newsletter_and_a_one_off_in_a_real_browser(live_server: LiveServer, runtime: Runtime,
                                                             clock: SettableClock, smtp_server: SMTPServer,
                                                             clinic: int) -> None:
    require_chromium()
    from playwright.sync_api import Page, expect, sync_playwright

    settings = runtime.settings
    base = live_server.url
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def shot(page: Page, name: str) -> None:
        page.screenshot(path=str(SCREENSHOTS / f"admin-{name}.png"), full_page=True)

    def log_in(page: Page) -> None:
        page.get_by_label("Email address").fill(STAFF_EMAIL)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()

    def deliver_at(moment: dt.datetime) -> dict[str, int]:
        clock.now = moment
        return deliver.run(runtime, moment)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(java_script_enabled=False, viewport={"width": 1280, "height": 900})
            page = context.new_page()
            console: list[str] = []
            outside: list[tuple[str, str]] = []
            page.on("console", lambda message: console.append(message.text) if message.type == "error" else None)

            def block_outside(route, request) -> None:  # noqa: ANN001
                outside.append((request.resource_type, request.url))
                route.abort()

            # Nothing leaves the loopback; what tries to is recorded (only the email's own images may).
            context.route(re.compile(r"^(?!http://127\.0\.0\.1:)"), block_outside)

            # --- log in -------------------------------------------------------------------------
            page.goto(f"{base}/admin/campaigns")
            expect(page.get_by_role("heading", level=1)).to_have_text("Staff login")
            expect(page.get_by_label("Email address")).to_be_focused()  # ready to type
            shot(page, "login")
            log_in(page)

            # --- the nightly newsletter: review, edit, test, approve -----------------------------
            expect(page.get_by_role("heading", level=1)).to_have_text("Campaigns")
            page.keyboard.press("Tab")  # the first stop is the skip link, and it shows itself when focused
            skip = page.get_by_role("link", name="Skip to the content")
            expect(skip).to_be_focused()
            box = skip.bounding_box()
            assert box is not None and box["x"] >= 0 and box["y"] >= 0
            expect(skip).to_have_css("outline-style", "solid")  # focus is visible
            with runtime.sessions() as session:
                subject = session.get(Campaign, clinic).subject
            shot(page, "campaigns")
            page.get_by_role("link", name=subject).click()
            expect(page.get_by_role("heading", level=1)).to_have_text(subject)
            preview = page.frame_locator("iframe.preview")
            expect(preview.get_by_text("Hi Sam,")).to_be_visible()
            expect(page.locator("pre.text-part")).to_contain_text("Hi Sam,")
            expect(page.locator("#campaign-state")).to_contain_text("not sent")

            page.get_by_label("Intro paragraph").fill("A warm hello from the whole team.")
            page.get_by_role("button", name="Save changes").click()
            expect(page.get_by_role("status")).to_contain_text("Saved.")
            expect(preview.get_by_text("A warm hello from the whole team.")).to_be_visible()
            shot(page, "campaign-draft")

            expect(page.get_by_label("Send a test to")).to_have_value(STAFF_EMAIL)
            page.get_by_role("button", name="Send test").click()
            expect(page.get_by_role("status")).to_contain_text(f"Test sent to {STAFF_EMAIL}")
            tests = smtp_server.messages_to(STAFF_EMAIL)
            assert len(tests) == 1 and tests[0]["Subject"] == f"[TEST] {subject}"
            assert "A warm hello from the whole team." in tests[0].get_body(("plain",)).get_content()

            page.get_by_role("button", name="Approve for Mon 2 Mar 2026, 18:00 CST").click()
            expect(page.get_by_role("status")).to_contain_text("Approved. It goes out at Mon 2 Mar 2026, 18:00 CST")
            expect(page.locator("#campaign-state")).to_contain_text("Approved by marta@therapycentral.example")
            # Scheduled for tonight: still editable until then, or back to a draft with Unschedule.
            expect(page.get_by_role("button", name="Unschedule")).to_be_visible()
            shot(page, "campaign-approved")
            with runtime.sessions() as session:
                campaign = session.get(Campaign, clinic)
                assert campaign.state == "approved"
                send_after = campaign.send_after
            assert send_after == dt.datetime(2026, 3, 3, 0, 0, tzinfo=dt.UTC)

            # --- 18:00: the scheduler sends it; the figures change ------------------------------
            assert deliver_at(send_after - dt.timedelta(minutes=1))["enqueued"] == 0  # not before its time
            report = deliver_at(send_after)
            assert report["enqueued"] == len(SUBSCRIBERS) and report["sent"] == len(SUBSCRIBERS)
            assert all(len(smtp_server.messages_to(address)) == 1 for address in SUBSCRIBERS)
            # Nine hours later the session has long timed out: log in again, back to the same page.
            page.reload()
            expect(page.get_by_role("status")).to_contain_text("logged out after 30 minutes without activity")
            log_in(page)
            expect(page).to_have_url(f"{base}/admin/campaigns/{clinic}")
            figures = page.locator("dl.figures")
            expect(figures.locator("div", has_text="Sent").locator("dd")).to_have_text(str(len(SUBSCRIBERS)))
            expect(figures.locator("div", has_text="Queued").locator("dd")).to_have_text("0")
            expect(page.locator("#campaign-state")).to_contain_text("Sent.")
            shot(page, "campaign-sent")

            # --- a one-off to the events topic: compose, preview, test, approve -----------------
            page.get_by_role("navigation", name="Staff pages").get_by_role("link", name="Compose").click()
            expect(page.get_by_role("heading", level=1)).to_have_text("Compose a one-off email")
            page.get_by_label("Send to subscribers of").select_option(label=settings.topics["events"])
            page.get_by_label("Subject").fill("Open evening on Thursday")
            page.get_by_label("Preheader (optional)").fill("Meet the clinicians over tea")
            page.get_by_label("Body").fill("Join us on **Thursday at 6pm**.\n\n- tea\n- time for your questions")
            shot(page, "compose")
            page.get_by_role("button", name="Save draft and preview").click()
            expect(page.get_by_role("status")).to_contain_text("Draft saved.")
            expect(page.get_by_role("heading", level=1)).to_have_text("Open evening on Thursday")
            expect(preview.locator("strong", has_text="Thursday at 6pm")).to_be_visible()
            page.get_by_role("button", name="Send test").click()
            expect(page.get_by_role("status")).to_contain_text("Test sent")
            assert [m["Subject"] for m in smtp_server.messages_to(STAFF_EMAIL)][-1] == "[TEST] Open evening on Thursday"
            shot(page, "oneoff-draft")
            page.get_by_role("button", name="Approve", exact=True).click()
            expect(page.get_by_role("status")).to_contain_text("on the next delivery run")
            oneoff_id = int(page.url.rsplit("/", 1)[1])
            with runtime.sessions() as session:
                oneoff = session.get(Campaign, oneoff_id)
                assert (oneoff.kind, oneoff.topic, oneoff.state, oneoff.send_after) == ("oneoff", "events",
                                                                                        "approved", None)
            assert deliver_at(clock.now + dt.timedelta(minutes=1))["sent"] == 1
            assert [m["Subject"] for m in smtp_server.messages_to(EVENTS_SUBSCRIBER)] == ["Open evening on Thursday"]
            page.reload()
            expect(page.locator("dl.figures div", has_text="Sent").locator("dd")).to_have_text("1")
            page.get_by_role("navigation", name="Staff pages").get_by_role("link", name="Campaigns").click()
            expect(page.locator("tbody tr")).to_have_count(2)
            expect(page.locator("tbody tr").first).to_contain_text("Open evening on Thursday")
            expect(page.locator("tbody tr").first.locator(".state")).to_have_text("sent")
            shot(page, "campaigns-after")

            # --- inquiries ------------------------------------------------------------------------
            page.get_by_role("link", name="Inquiries").click()
            expect(page.get_by_role("heading", level=1)).to_have_text("Inquiries")
            expect(page.get_by_text(INQUIRY_MESSAGE)).to_have_count(0)  # never on the list
            shot(page, "inquiries")
            page.get_by_role("link", name="Ines Ortega").click()
            expect(page.get_by_text(INQUIRY_MESSAGE)).to_be_visible()
            shot(page, "inquiry")
            page.get_by_role("button", name="Mark booked").click()
            expect(page.get_by_role("status")).to_contain_text("Ines Ortega: marked booked.")
            with runtime.sessions() as session:
                assert session.scalar(select(Enrollment.stop_reason)) == "booked"

            # --- subscribers: the chart, find, the consent history, erase -------------------------
            page.get_by_role("link", name="Subscribers").click()
            chart = page.get_by_role("img", name=re.compile("Subscribers gained and lost per month"))
            expect(chart).to_be_visible()
            expect(page.get_by_role("row", name=re.compile("^March 2026"))).to_contain_text("4")
            shot(page, "subscribers")
            page.get_by_label("Email address").fill("ANN@example.com")
            page.get_by_role("button", name="Find").click()
            expect(page.get_by_role("heading", level=1)).to_have_text("Ann")
            expect(page.get_by_role("cell", name="paper form at reception")).to_be_visible()
            expect(page.get_by_role("cell", name="Email me new articles.")).to_be_visible()
            shot(page, "subscriber")
            page.get_by_role("link", name="Erase this person…").click()
            expect(page.get_by_role("heading", level=1)).to_have_text("Erase ann@example.com?")
            shot(page, "erase")
            page.get_by_label(re.compile("To confirm, type the address")).fill("ann@example.com")
            page.get_by_role("button", name="Erase for good").click()
            expect(page.get_by_role("status")).to_contain_text("Erased.")
            with runtime.sessions() as session:
                assert session.scalar(select(Contact).where(Contact.email == "ann@example.com")) is None

            # --- log out ------------------------------------------------------------------------
            page.get_by_role("button", name="Log out").click()
            expect(page.get_by_role("status")).to_have_text("You are logged out.")
            page.goto(f"{base}/admin/campaigns")
            expect(page.get_by_role("heading", level=1)).to_have_text("Staff login")

            assert not [text for text in console if "Content Security Policy" in text], console
            # Only the emails' own pictures (in the preview frame) reach for anything beyond the app.
            assert all(kind == "image" for kind, _url in outside), outside
        finally:
            browser.close()
