"""Pausing a sequence when the person replies, and resuming it: no step lost, none sent twice, on both
databases and through a real SMTP server; the `mailer inquiries resume` command."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select

from mailer import jobs
from mailer.cli import main
from mailer.config import Settings
from mailer.models import Enrollment, OutboxMessage
from mailer.outbound import store
from mailer.outbound.transport import make_transport
from mailer.runtime import Runtime, fixed_clock
from mailer.sequences import inquiries, pausing
from tests.smtp_server import SMTPServer

ZONE = ZoneInfo("America/Chicago")
PERSON = "jordan.lee@example.com"
SUBJECTS = ["Thank you for getting in touch with Therapy Central", "What a first visit with us looks like",
            "We are here when you are ready"]


def local(wall: str) -> dt.datetime:
    return dt.datetime.fromisoformat(wall).replace(tzinfo=ZONE).astimezone(dt.UTC)


INQUIRED = local("2027-01-11T10:00")  # a Monday


class Clinic:
    """The follow-up and delivery jobs at chosen moments, sending to the SMTP fixture."""

    def __init__(self, settings: Settings, engine: Engine, smtp: SMTPServer) -> None:
        self.settings = settings.model_copy(update={"delivery": settings.delivery.model_copy(
            update={"transport": "smtp", "smtp_url": smtp.url, "connections": 1})})
        self.engine = engine
        self.transport = make_transport(self.settings)
        self.smtp = smtp
        self.runtime = Runtime(self.settings, clock=fixed_clock(INQUIRED), engine_override=engine,
                               transport_override=self.transport)
        self.sessions = self.runtime.sessions

    def at(self, now: dt.datetime) -> Runtime:
        return Runtime(self.settings, clock=fixed_clock(now), engine_override=self.engine,
                       transport_override=self.transport)

    def advance(self, now: dt.datetime) -> dict[str, int]:
        return jobs.run_job(self.at(now), "advance_followups", now)

    def deliver(self, now: dt.datetime) -> dict[str, int]:
        return jobs.run_job(self.at(now), "deliver", now)

    def tick(self, now: dt.datetime) -> None:
        self.advance(now)
        self.deliver(now)

    def enrollment(self) -> Enrollment:
        with self.sessions() as session:
            return session.scalars(select(Enrollment)).one()

    def pause(self, now: dt.datetime) -> bool:
        with self.sessions.begin() as session:
            return pausing.pause(session, session.scalars(select(Enrollment)).one(), now)

    def resume(self, now: dt.datetime) -> dt.datetime:
        with self.sessions.begin() as session:
            return pausing.resume(session, self.settings, PERSON, now)

    def rows(self) -> list[tuple[str, int | None, str]]:
        with self.sessions() as session:
            return [(row.dedupe_key.split(":", 1)[1], row.step, row.state) for row in
                    session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))]

    def subjects(self) -> list[str]:
        return [message["Subject"] for message in self.smtp.messages_to(PERSON)]


@pytest.fixture
def clinic(settings: Settings, engine: Engine, smtp_server: SMTPServer) -> Clinic:
    clinic = Clinic(settings, engine, smtp_server)
    with clinic.sessions.begin() as session:
        inquiries.record_inquiry(session, clinic.settings, email=PERSON, name="Jordan Lee", consent=True,
                                 consent_text="Yes, email me about my inquiry.", source="website",
                                 received_at=INQUIRED, now=INQUIRED)
    return clinic


def days(first: dt.datetime, count: int) -> list[dt.datetime]:
    start = first.astimezone(ZONE).date()
    return [local(f"{start + dt.timedelta(days=n)}T{hour}") for n in range(count) for hour in ("09:30", "14:00")]


def test_a_pause_cancels_the_queued_step_and_a_resume_sends_it_once(clinic: Clinic) -> None:
    clinic.tick(INQUIRED + dt.timedelta(minutes=20))
    assert clinic.subjects() == SUBJECTS[:1]
    # Step 2 falls due on Thursday and is queued; the reply comes before delivery hands it over.
    thursday = local("2027-01-14T10:00")
    assert clinic.advance(thursday)["enqueued"] == 1
    assert clinic.pause(thursday + dt.timedelta(minutes=1))
    assert not clinic.pause(thursday + dt.timedelta(minutes=2))  # already paused: nothing more to do
    assert clinic.rows() == [(f"{clinic.enrollment().id}:0", 0, "sent"), (f"{clinic.enrollment().id}:1", 1, "skipped")]
    paused = clinic.enrollment()
    assert (paused.status, paused.next_step, paused.next_due_at) == ("paused", 1, None)
    for now in days(thursday, 4):
        clinic.tick(now)
    assert clinic.subjects() == SUBJECTS[:1]  # nothing while paused, not even the step that was queued

    # Staff resume on Monday; the step goes again under a fresh key. Paused again before it went, and
    # resumed once more: still exactly once.
    monday = local("2027-01-18T11:00")
    assert clinic.resume(monday) == monday
    clinic.advance(monday)
    assert clinic.pause(monday + dt.timedelta(minutes=1))
    assert clinic.resume(monday + dt.timedelta(minutes=30)) == monday + dt.timedelta(minutes=30)
    for now in [monday + dt.timedelta(minutes=31), *days(monday + dt.timedelta(days=1), 12)]:
        clinic.tick(now)
    assert clinic.subjects() == SUBJECTS  # every step, each once, in order
    enrollment = clinic.enrollment()
    assert enrollment.status == "completed" and enrollment.resumes == 2
    key = enrollment.id
    assert clinic.rows() == [(f"{key}:0", 0, "sent"), (f"{key}:1", 1, "skipped"), (f"{key}:1:1", 1, "skipped"),
                             (f"{key}:1:2", 1, "sent"), (f"{key}:2:2", 2, "sent")]
    with clinic.sessions() as session:
        notes = session.scalars(select(OutboxMessage.last_error).where(OutboxMessage.state == "skipped")).all()
    assert notes == [pausing.PAUSED_NOTE] * 2


def test_after_a_resume_the_next_step_goes_now_and_the_rest_keep_their_spacing(clinic: Clinic) -> None:
    clinic.tick(INQUIRED + dt.timedelta(minutes=20))
    clinic.pause(INQUIRED + dt.timedelta(hours=1))
    # Resumed ten days later: the next step now, the last one as long after it as it would have been.
    later = INQUIRED + dt.timedelta(days=10, hours=1)
    clinic.resume(later)
    clinic.tick(later)
    assert clinic.subjects() == SUBJECTS[:2]
    enrollment = clinic.enrollment()
    assert enrollment.anchor_at == local("2027-01-18T11:00")  # as if the inquiry came P3D before the resume
    assert enrollment.next_due_at == local("2027-01-25T11:00")  # so the last step keeps its P7D


def test_a_step_already_sent_is_not_sent_again(clinic: Clinic) -> None:
    clinic.tick(INQUIRED + dt.timedelta(minutes=20))
    clinic.pause(INQUIRED + dt.timedelta(hours=1))  # nothing queued: nothing to cancel
    with clinic.sessions.begin() as session:  # as if a stale rewind had happened: the outbox is the truth
        session.scalars(select(Enrollment)).one().next_step = 0
    clinic.resume(INQUIRED + dt.timedelta(hours=2))
    for now in days(INQUIRED + dt.timedelta(hours=2), 12):
        clinic.tick(now)
    assert clinic.subjects() == SUBJECTS


def test_a_step_being_handed_over_when_the_pause_came_is_skipped_then_sent_after_resume(
        clinic: Clinic, engine: Engine) -> None:
    clinic.tick(INQUIRED + dt.timedelta(minutes=20))
    thursday = local("2027-01-14T10:00")
    clinic.advance(thursday)
    with clinic.sessions.begin() as session:  # a delivery run has claimed step 2 (state "sending")
        (claimed,) = store.claim(session, "other-worker", thursday, dt.timedelta(minutes=5), 10)
    assert clinic.pause(thursday + dt.timedelta(seconds=1))
    assert clinic.rows()[1][2] == "sending"  # left to delivery...
    check = store.open_store(engine).consent_check()
    try:  # ...whose re-check, right before the envelope, refuses it
        assert not check.allows("followup", {"contact_id": claimed.contact_id, "enrollment_id": claimed.enrollment_id})
    finally:
        check.close()
    with clinic.sessions.begin() as session:
        store.record(session, [(claimed.id, {"state": "skipped", "lease_until": None, "claimed_by": None,
                                             "last_error": "no consent or suppressed at send time"})])
    monday = local("2027-01-18T11:00")
    clinic.resume(monday)
    for now in [monday, *days(monday + dt.timedelta(days=1), 10)]:
        clinic.tick(now)
    assert clinic.subjects() == SUBJECTS


def test_resume_waits_for_the_send_window(clinic: Clinic) -> None:
    clinic.tick(INQUIRED + dt.timedelta(minutes=20))
    clinic.pause(INQUIRED + dt.timedelta(hours=1))
    saturday_night = local("2027-01-16T20:00")
    assert clinic.resume(saturday_night) == local("2027-01-18T09:00")
    clinic.tick(saturday_night)
    assert clinic.subjects() == SUBJECTS[:1]


def test_a_booking_or_a_close_ends_a_paused_sequence(clinic: Clinic) -> None:
    clinic.tick(INQUIRED + dt.timedelta(minutes=20))
    clinic.pause(INQUIRED + dt.timedelta(hours=1))
    with clinic.sessions.begin() as session:
        assert inquiries.close(session, clinic.settings, PERSON, "closed", INQUIRED + dt.timedelta(hours=2)) == 1
    enrollment = clinic.enrollment()
    assert (enrollment.status, enrollment.stop_reason) == ("stopped", "closed")
    with clinic.sessions.begin() as session, pytest.raises(inquiries.InquiryError, match="not paused"):
        pausing.resume(session, clinic.settings, PERSON, INQUIRED + dt.timedelta(hours=3))


def test_one_running_sequence_per_person_includes_a_paused_one(clinic: Clinic) -> None:
    clinic.tick(INQUIRED + dt.timedelta(minutes=20))
    clinic.pause(INQUIRED + dt.timedelta(hours=1))
    later = INQUIRED + dt.timedelta(days=2)
    with clinic.sessions.begin() as session:
        outcome = inquiries.record_inquiry(session, clinic.settings, email=PERSON, name="Jordan Lee", consent=True,
                                           consent_text="Yes.", source="phone", received_at=later, now=later)
    assert not outcome.enrolled
    with clinic.sessions() as session:
        assert session.scalars(select(Enrollment.status)).all() == ["paused"]


# --- the command ---------------------------------------------------------------------------------------


def test_the_resume_command(clinic: Clinic, config_path: Path, environ: dict[str, str]) -> None:
    def resume(*args: str):  # noqa: ANN202
        return CliRunner().invoke(main, ["--config", str(config_path), "inquiries", "resume", *args], env=environ)

    clinic.tick(INQUIRED + dt.timedelta(minutes=20))
    result = resume(PERSON)
    assert result.exit_code == 1
    assert result.output == f"mailer: error: the follow-ups of {PERSON} are not paused (they are active)\n"
    clinic.pause(INQUIRED + dt.timedelta(hours=1))
    result = resume("Jordan.Lee@EXAMPLE.com")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Follow-ups resumed; the next email is due ")
    assert clinic.enrollment().status == "active"
    assert resume("nobody@example.com").output == "mailer: error: no inquiry from nobody@example.com\n"
    assert resume("not an address").output == "mailer: error: email: not a valid email address\n"
