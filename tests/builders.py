"""What the send-path tests set up again and again: subscribers, a campaign under way, an inquiry, a
transport to the test relay, a send run, and waiting for something under a deadline."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import insert, select

from mailer import audience, config
from mailer.message_kinds import registry
from mailer.models import ConsentEvent, Contact, Subscription
from mailer.outbound.delivery import Delivery, Report
from mailer.outbound.transport import SMTPTransport
from mailer.publishing import campaigns
from mailer.publishing.render import Renderer
from mailer.runtime import fixed_clock
from mailer.sequences import inquiries
from tests.smtp_server import SMTPServer

T0 = dt.datetime(2026, 11, 23, 18, 0, tzinfo=dt.UTC)


def add_subscribers(sessions: Any, settings: config.Settings, addresses: list[str], now: dt.datetime = T0) -> None:
    """Newsletter subscribers, each with a consent record, as staff would add them."""
    with sessions.begin() as session:
        for address in addresses:
            audience.staff_subscribe(session, settings.secret_key, settings.topics, email=address, name="",
                                     topic_names=["newsletter"], source="test-fixture", now=now)


def bulk_subscribers(engine: Any, n: int, topic: str = "newsletter", now: dt.datetime = T0) -> None:
    """n active subscribers with their consent records, in a few set-based statements."""
    with engine.begin() as connection:
        connection.execute(insert(Contact), [
            {"email": f"r{i:06d}@example.com", "name": f"Reader {i}", "created_at": now, "link_key": f"key{i:06d}",
             "followups_consent": False, "soft_bounces": 0} for i in range(n)])
        ids = connection.execute(select(Contact.id).order_by(Contact.id)).scalars().all()
        connection.execute(insert(ConsentEvent), [
            {"contact_id": cid, "purpose": f"topic:{topic}", "action": "granted", "source": "bulk-test",
             "wording": "", "created_at": now} for cid in ids])
        events = dict(connection.execute(select(ConsentEvent.contact_id, ConsentEvent.id)).all())
        connection.execute(insert(Subscription), [
            {"contact_id": cid, "topic": topic, "status": "active", "updated_at": now, "consent_event_id": events[cid]}
            for cid in ids])


def start_campaign(sessions: Any, settings: config.Settings, now: dt.datetime = T0, subject: str = "Open evening",
                   body: str = "Join us **Thursday**.") -> int:
    """A one-off to the newsletter topic, approved and dispatched: its messages wait in the outbox."""
    with sessions.begin() as session:
        campaign = campaigns.create_oneoff(session, settings, topic="newsletter", subject=subject,
                                           body_markdown=body, now=now)
        campaigns.approve(session, campaign, by="test", now=now)
        campaigns.dispatch(session, now, Renderer(settings))
        return campaign.id


def inquire(sessions: Any, settings: config.Settings, address: str, *, at: dt.datetime,
            name: str = "Pat") -> inquiries.InquiryOutcome:
    """A consented inquiry from the website form: its follow-up sequence starts."""
    with sessions.begin() as session:
        return inquiries.record_inquiry(
            session, settings, email=address, name=name, consent=True, source="website-contact-form",
            consent_text="Yes, send me follow-up emails about my inquiry.", received_at=at, now=at)


def smtp(server: SMTPServer, timeout: float = 2.0) -> SMTPTransport:
    """A transport to the test relay."""
    return SMTPTransport(config.parse_smtp_url(server.url), timeout=timeout, local_hostname="mailer.test")


def deliver(settings: config.Settings, engine: Any, server: SMTPServer, at: dt.datetime, **kwargs: Any) -> Report:
    """One send run at the moment `at`, through the test relay."""
    return Delivery(settings, engine, smtp(server, **kwargs), fixed_clock(at), registry(settings)).run()


def csrf_of(html: str) -> str:
    """The CSRF token of the first form in a page."""
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, every: float = 0.01) -> Any:
    """Poll `condition` until it is true (its value is returned) or the deadline passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout} s: {getattr(condition, '__name__', condition)}")
        time.sleep(every)
