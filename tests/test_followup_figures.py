"""Follow-up figures without tracking: per sequence and step, sent, replied, booked and stopped, and the
booking rate and time to booking over 30 and 90 days; the inquiry page after a reply, with Resume. Both
databases."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest
from argon2 import PasswordHasher
from flask.testing import FlaskClient
from sqlalchemy import select, update

from mailer import audience, staff
from mailer.config import Settings
from mailer.inbound import bookings, replies
from mailer.models import Contact, Enrollment, Inquiry, OutboxMessage
from mailer.runtime import Runtime
from mailer.sequences import figures, followups, inquiries, pausing
from tests.test_admin import STAFF_EMAIL, log_in, post, text_of
from tests.web_fixtures import SettableClock

DAY = dt.timedelta(days=1)


@pytest.fixture(autouse=True)
def cheap_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staff, "HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


class Story:
    """People going through the default sequence, day by day, with the real functions."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings: Settings = runtime.settings

    def inquire(self, email: str, at: dt.datetime) -> int:
        with self.runtime.sessions.begin() as session:
            return inquiries.record_inquiry(session, self.settings, email=email, name=email.split("@")[0].title(),
                                            consent=True, consent_text="Yes.", source="website", received_at=at,
                                            now=at).inquiry_id

    def send_due(self, now: dt.datetime) -> None:
        """advance_followups, then every queued follow-up marked sent at `now` (delivery is tested elsewhere)."""
        with self.runtime.sessions.begin() as session:
            followups.advance(session, self.settings, now)
            session.execute(update(OutboxMessage).where(OutboxMessage.state == "queued")
                            .values(state="sent", sent_at=now))

    def enrollment(self, session, email: str) -> Enrollment:  # noqa: ANN001
        return session.scalars(select(Enrollment).join(Contact, Contact.id == Enrollment.contact_id)
                               .where(Contact.email == email)).one()

    def reply(self, email: str, at: dt.datetime) -> None:
        with self.runtime.sessions.begin() as session:
            contact = session.scalars(select(Contact).where(Contact.email == email)).one()
            found = replies.Match(contact, self.enrollment(session, email), None, "address")
            replies.record_reply(session, self.settings, found, at, at)

    def book(self, email: str, at: dt.datetime) -> None:
        with self.runtime.sessions.begin() as session:
            assert bookings.record(session, self.settings, bookings.Booking(email, at, "Cliniko"), at)

    def unsubscribe(self, email: str, at: dt.datetime) -> None:
        with self.runtime.sessions.begin() as session:
            contact = audience.find_contact(session, email)
            audience.unsubscribe_all(session, self.settings.secret_key, contact, source="one-click", now=at)


@pytest.fixture
def story(runtime: Runtime, clock: SettableClock) -> tuple[Story, dt.datetime]:
    """Five people; the last one inquired two months ago. Returns the story and "now" (the web clock)."""
    now = clock.now
    story = Story(runtime)
    start = now - 20 * DAY  # a Monday: 2026-02-10
    for email in ("ann@example.com", "ben@example.com", "cat@example.com", "dan@example.com"):
        story.inquire(email, start)
    story.unsubscribe("dan@example.com", start + dt.timedelta(minutes=5))  # before the first email
    old = now - 60 * DAY
    story.inquire("eve@example.com", old)
    story.send_due(old + dt.timedelta(hours=1))
    story.book("eve@example.com", old + 5 * DAY)  # booked after email 1, five days after inquiring

    story.send_due(start + dt.timedelta(hours=1))  # email 1 to Ann, Ben, Cat
    story.book("ben@example.com", start + 2 * DAY)  # Ben books after email 1
    story.send_due(start + 3 * DAY + dt.timedelta(hours=1))  # email 2 to Ann and Cat
    story.reply("ann@example.com", start + 4 * DAY)  # Ann replies after email 2: paused
    for day in (8, 9, 10):
        story.send_due(start + day * DAY + dt.timedelta(hours=2))  # email 3 to Cat; then she completes
    return story, now


def test_per_step_and_per_sequence_figures(story: tuple[Story, dt.datetime]) -> None:
    teller, now = story
    with teller.runtime.sessions() as session:
        (default,) = figures.sequence_figures(session, teller.settings, now, days=90)
        (recent,) = figures.sequence_figures(session, teller.settings, now, days=30)
    assert default.name == "default" and default.enrolled == 5
    assert default.status == Counter({"stopped": 3, "paused": 1, "completed": 1})
    table = [(s.step, s.sent, s.replied, s.booked, dict(s.stopped)) for s in default.steps]
    assert table == [
        (0, 0, 0, 0, {"unsubscribed": 1}),
        (1, 4, 0, 2, {"booked": 2}),
        (2, 2, 1, 0, {}),
        (3, 1, 0, 0, {}),
    ]
    assert [s.subject for s in default.steps][1:] == [step.subject for step in teller.settings.followups.steps]
    assert [(o.days, o.enrolled, o.booked, o.median_days) for o in default.outcomes] == [
        (30, 4, 1, 2.0), (90, 5, 2, 3.5)]
    assert default.outcomes[0].rate == 0.25
    assert recent.enrolled == 4 and recent.steps[1].booked == 1  # Eve is older than 30 days


def test_the_figures_page_and_an_inquiry_after_a_reply(client: FlaskClient, runtime: Runtime,
                                                       story: tuple[Story, dt.datetime]) -> None:
    with runtime.sessions.begin() as session:
        staff.create(session, STAFF_EMAIL, "correct horse battery staple", runtime.clock())
        ann = session.scalars(select(Inquiry.id).join(Contact, Contact.id == Inquiry.contact_id)
                              .where(Contact.email == "ann@example.com")).one()
    assert log_in(client, password="correct horse battery staple").status_code == 303

    page = text_of(client.get("/admin/inquiries/figures"))
    assert "Sequence “default”" in page
    assert "Booked, last 30 days</dt><dd>25% (1 of 4)" in page
    assert "Median days to booking, last 90 days</dt><dd>3.5" in page
    assert "<th scope=\"row\">Email 2: What a first visit with us looks like</th>\n      <td>2</td>\n      <td>1</td>" in page
    assert "unsubscribed 1" in page and "marked booked 2" in page
    assert "30 days" in text_of(client.get("/admin/inquiries/figures?days=30"))

    detail = text_of(client.get(f"/admin/inquiries/{ann}"))
    assert "paused: they replied on Sat 14 Feb 2026, 09:00 CST" in detail
    assert "replied on Sat 14 Feb 2026, 09:00 CST (after email 2)" in detail
    assert "Resume follow-ups" in detail and "Close the inquiry" in detail
    listing = text_of(client.get("/admin/inquiries"))
    assert "paused: they replied on" in listing

    response = post(client, f"/admin/inquiries/{ann}/resume", token_from=f"/admin/inquiries/{ann}")
    assert response.status_code == 303 and response.headers["Location"] == f"/admin/inquiries/{ann}"
    after = text_of(client.get(f"/admin/inquiries/{ann}"))
    assert "follow-up emails resumed. The next one goes Mon 2 Mar 2026, 09:00 CST." in after
    assert "Resume follow-ups" not in after and "step 3 of 3 next" in after
    with runtime.sessions() as session:
        enrollment = session.scalars(select(Enrollment).where(Enrollment.inquiry_id == ann)).one()
    assert (enrollment.status, enrollment.next_step) == ("active", 2)
    # Pressed twice (a second tab): nothing changes, and the page says why.
    again = post(client, f"/admin/inquiries/{ann}/resume", token_from=f"/admin/inquiries/{ann}")
    assert again.status_code == 409 and "not paused any more" in text_of(again)
    assert pausing.PAUSED_NOTE  # (the note a cancelled step carries; see tests/test_pausing.py)
