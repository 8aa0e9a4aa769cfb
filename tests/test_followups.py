"""Inquiries and consented follow-ups: scheduling (windows, weekends, DST), intake, advancing, stop rules,
CSV import, purge, the templates, and the whole way to a real SMTP server."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import io
import re
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from mailer import audience, config, jobs
from mailer.config import FollowupStep, Settings
from mailer.models import ConsentEvent, Contact, Enrollment, Inquiry, OutboxMessage
from mailer.publishing.render import Recipient, Renderer, sample_values
from mailer.runtime import Runtime, fixed_clock
from mailer.sequences import followups, inquiries
from mailer.sequences.followups import due_time, into_window
from mailer.sequences.inquiries import InquiryError
from tests.conftest import SAMPLE, utc

Sessions = sessionmaker[Session]
CHICAGO = ZoneInfo("America/Chicago")
WORDING = "Yes, Therapy Central may email me about my inquiry and its services."
SECRET_MESSAGE = "I have struggled with depression since 2019 and my sister Maria takes ketamine"


def local(text: str) -> dt.datetime:
    """A clinic wall time (America/Chicago in config.toml) as UTC."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=CHICAGO).astimezone(dt.UTC)


def wall(moment: dt.datetime) -> str:
    return moment.astimezone(CHICAGO).strftime("%Y-%m-%d %H:%M %Z")


def with_followups(settings: Settings, **changes: object) -> Settings:
    return settings.model_copy(update={"followups": settings.followups.model_copy(update=changes)})


def one_step(after: str) -> list[FollowupStep]:
    return [FollowupStep(after=after, template="thank-you", subject="Thank you")]


@pytest.fixture
def plain_settings(config_path: Path) -> Settings:
    """The repository's config without a database: for the pure scheduling functions."""
    return config.load(config_path, {"MAILER_SECRET_KEY": "test-secret-key-0123456789"})


def inquire(sessions: Sessions, settings: Settings, address: str = "jordan.lee@example.com", *,
            at: dt.datetime, now: dt.datetime | None = None, consent: bool = True, message: str = "",
            name: str = "Jordan Lee", source: str = "website-contact-form") -> inquiries.InquiryOutcome:
    with sessions.begin() as session:
        return inquiries.record_inquiry(
            session, settings, email=address, name=name, consent=consent, consent_text=WORDING if consent else "",
            source=source, received_at=at, now=now or at, message=message,
            request=audience.RequestInfo(ip="203.0.113.7", user_agent="Mozilla/5.0 (test)"),
        )


def advance(sessions: Sessions, settings: Settings, now: dt.datetime) -> dict[str, int]:
    with sessions.begin() as session:
        return followups.advance(session, settings, now)


def deliver_all(sessions: Sessions, now: dt.datetime) -> int:
    """Stand-in for delivery where a test is about scheduling: every waiting row is sent at `now`."""
    with sessions.begin() as session:
        return session.execute(
            update(OutboxMessage).where(OutboxMessage.state == "queued").values(state="sent", sent_at=now)
        ).rowcount


def followup_rows(sessions: Sessions) -> list[OutboxMessage]:
    with sessions() as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def enrollment_of(sessions: Sessions, address: str = "jordan.lee@example.com") -> Enrollment:
    with sessions() as session:
        return session.scalars(
            select(Enrollment).join(Contact, Contact.id == Enrollment.contact_id).where(Contact.email == address)
            .order_by(Enrollment.id.desc())
        ).first()


def in_window(moment: dt.datetime) -> bool:
    there = moment.astimezone(CHICAGO)
    return there.weekday() < 5 and dt.time(9) <= there.time() < dt.time(18)


# --- scheduling ----------------------------------------------------------------------------------


def test_due_time_inside_the_window_is_the_delay_itself(plain_settings: Settings) -> None:
    anchor = local("2026-11-23T10:00")  # a Monday
    assert due_time(plain_settings, anchor, 0, None) == local("2026-11-23T10:15")
    assert due_time(plain_settings, anchor, 1, None) == local("2026-11-26T10:00")
    assert due_time(plain_settings, anchor, 2, None) == local("2026-11-30T10:00")


def test_due_time_before_opening_waits_for_that_days_opening(plain_settings: Settings) -> None:
    assert due_time(plain_settings, local("2026-11-24T06:30"), 0, None) == local("2026-11-24T09:00")


@pytest.mark.parametrize("received", ["2026-11-24T17:50", "2026-11-24T17:45", "2026-11-24T23:50"])
def test_due_time_after_closing_waits_for_the_next_days_opening(plain_settings: Settings, received: str) -> None:
    # 17:45 + 15 minutes is 18:00 exactly: the window is [09:00, 18:00), so that is closed too.
    assert due_time(plain_settings, local(received), 0, None) == local("2026-11-25T09:00")


@pytest.mark.parametrize("received", ["2026-11-20T17:50", "2026-11-21T11:00", "2026-11-22T21:40"])
def test_weekends_are_skipped_unless_configured(plain_settings: Settings, received: str) -> None:
    assert due_time(plain_settings, local(received), 0, None) == local("2026-11-23T09:00")
    weekends = with_followups(plain_settings, send_on_weekends=True)
    expected = {"2026-11-20T17:50": "2026-11-21T09:00", "2026-11-21T11:00": "2026-11-21T11:15",
                "2026-11-22T21:40": "2026-11-23T09:00"}[received]
    assert due_time(weekends, local(received), 0, None) == local(expected)


def test_min_gap_after_the_previous_step_wins_over_the_delay(plain_settings: Settings) -> None:
    anchor = local("2026-11-23T10:00")
    # P3D says Thursday 10:00; the previous step went Wednesday 16:00, plus 20 hours is Thursday 12:00.
    assert due_time(plain_settings, anchor, 1, local("2026-11-25T16:00")) == local("2026-11-26T12:00")
    # ... and a gap ending after closing moves to the next opening.
    assert due_time(plain_settings, anchor, 1, local("2026-11-26T00:00")) == local("2026-11-27T09:00")


def test_spring_forward_a_step_due_at_0230_that_does_not_exist(plain_settings: Settings) -> None:
    settings = with_followups(plain_settings, send_on_weekends=True, send_window=["01:00", "18:00"],
                              steps=one_step("P1D"))
    # One local day after 02:30 on Saturday is 02:30 on Sunday 2026-03-08, a time the clocks skip:
    # the step moves forward by the gap to 03:30 CDT, never back to 01:30.
    anchor = local("2026-03-07T02:30")
    due = due_time(settings, anchor, 0, None)
    assert due == utc(2026, 3, 8, 8, 30)
    assert wall(due) == "2026-03-08 03:30 CDT"


def test_spring_forward_days_are_local_days_and_openings_local_times(plain_settings: Settings) -> None:
    weekends = with_followups(plain_settings, send_on_weekends=True, steps=one_step("P1D"))
    # Saturday 10:00 CST + one day = Sunday 10:00 CDT, which is 23 hours later, not 24.
    assert due_time(weekends, local("2026-03-07T10:00"), 0, None) == utc(2026, 3, 8, 15, 0)
    # Saturday after closing: Sunday's opening is 09:00 CDT (14:00 UTC), not Saturday's opening + 24h.
    assert into_window(weekends, local("2026-03-07T19:00")) == utc(2026, 3, 8, 14, 0)
    # Without weekends the opening is Monday's, still 09:00 local.
    assert into_window(plain_settings, local("2026-03-07T19:00")) == utc(2026, 3, 9, 14, 0)


def test_fall_back_the_window_opens_at_0900_local_on_2026_11_01(plain_settings: Settings) -> None:
    weekends = with_followups(plain_settings, send_on_weekends=True)
    saturday_evening = local("2026-10-31T19:00")  # CDT, UTC-5
    assert into_window(weekends, saturday_evening) == utc(2026, 11, 1, 15, 0)  # 09:00 CST, UTC-6
    assert wall(into_window(weekends, saturday_evening)) == "2026-11-01 09:00 CST"
    assert into_window(plain_settings, saturday_evening) == utc(2026, 11, 2, 15, 0)


def test_fall_back_a_step_due_in_the_repeated_hour_takes_the_first_one(plain_settings: Settings) -> None:
    settings = with_followups(plain_settings, send_on_weekends=True, send_window=["01:00", "18:00"],
                              steps=one_step("P1D"))
    due = due_time(settings, local("2026-10-31T01:30"), 0, None)
    assert due == utc(2026, 11, 1, 6, 30)
    assert wall(due) == "2026-11-01 01:30 CDT"


# --- recording inquiries -------------------------------------------------------------------------


def test_consent_records_the_wording_in_the_ledger_and_enrolls(settings: Settings, sessions: Sessions) -> None:
    received = local("2026-11-23T10:00")
    outcome = inquire(sessions, settings, at=received, now=received + dt.timedelta(seconds=3),
                      message=SECRET_MESSAGE)
    assert outcome.enrolled and not outcome.duplicate
    with sessions() as session:
        grant = session.scalars(select(ConsentEvent)).one()
        assert (grant.purpose, grant.action, grant.source) == ("followups", "granted", "website-contact-form")
        assert grant.wording == WORDING
        assert (grant.ip, grant.user_agent) == ("203.0.113.7", "Mozilla/5.0 (test)")
        assert grant.created_at == received  # when they agreed, not when we stored it
        contact = session.get(Contact, outcome.contact_id)
        assert contact.followups_consent and contact.name == "Jordan Lee"
        inquiry = session.get(Inquiry, outcome.inquiry_id)
        assert inquiry.message == SECRET_MESSAGE and inquiry.consent_event_id == grant.id
        assert inquiry.status == "open"
        enrollment = session.scalars(select(Enrollment)).one()
        assert enrollment.status == "active" and enrollment.next_step == 0
        assert enrollment.anchor_at == received and enrollment.inquiry_id == inquiry.id
        assert enrollment.consent_event_id == grant.id
        assert enrollment.next_due_at == local("2026-11-23T10:15")


def test_no_consent_stores_the_inquiry_and_nothing_else(settings: Settings, sessions: Sessions) -> None:
    received = local("2026-11-23T10:00")
    outcome = inquire(sessions, settings, at=received, consent=False, message=SECRET_MESSAGE)
    assert not outcome.enrolled and not outcome.duplicate
    with sessions() as session:
        assert session.get(Inquiry, outcome.inquiry_id).message == SECRET_MESSAGE
        assert session.scalar(select(func.count()).select_from(ConsentEvent)) == 0
        assert session.scalar(select(func.count()).select_from(Enrollment)) == 0
        assert not session.get(Contact, outcome.contact_id).followups_consent
    for days in range(0, 30, 2):
        assert advance(sessions, settings, received + dt.timedelta(days=days))["enqueued"] == 0
    assert followup_rows(sessions) == []


def test_a_website_retry_is_stored_but_starts_no_second_sequence(settings: Settings, sessions: Sessions) -> None:
    first = local("2026-11-23T10:00")
    one = inquire(sessions, settings, at=first)
    two = inquire(sessions, settings, "jordan.lee@EXAMPLE.com", at=first + dt.timedelta(minutes=2))
    assert one.enrolled and not two.enrolled and two.duplicate
    assert two.contact_id == one.contact_id and two.inquiry_id != one.inquiry_id
    # The very same inquiry again (an import run twice) is not even stored twice.
    three = inquire(sessions, settings, at=first, now=first + dt.timedelta(minutes=5))
    assert three == inquiries.InquiryOutcome(one.inquiry_id, one.contact_id, enrolled=False, duplicate=True)
    # Later, while the sequence runs: still one sequence, and its schedule is untouched.
    four = inquire(sessions, settings, at=first + dt.timedelta(days=2))
    assert not four.enrolled and not four.duplicate
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Inquiry)) == 3
        enrollment = session.scalars(select(Enrollment)).one()
        assert enrollment.anchor_at == first
        assert session.scalar(select(func.count()).select_from(ConsentEvent)) == 3


def test_a_new_inquiry_after_booking_may_start_again(settings: Settings, sessions: Sessions) -> None:
    first = local("2026-11-23T10:00")
    inquire(sessions, settings, at=first)
    with sessions.begin() as session:
        assert inquiries.close(session, settings, "jordan.lee@example.com", "booked", first + dt.timedelta(days=1)) == 1
    again = inquire(sessions, settings, at=first + dt.timedelta(days=40))
    assert again.enrolled
    assert enrollment_of(sessions).anchor_at == first + dt.timedelta(days=40)


def test_a_stopped_sequence_never_restarts_after_an_opt_out(settings: Settings, sessions: Sessions) -> None:
    first = local("2026-11-23T10:00")
    inquire(sessions, settings, at=first)
    with sessions.begin() as session:
        contact = audience.find_contact(session, "jordan.lee@example.com")
        audience.withdraw_followups(session, contact, source="preferences-page", now=first + dt.timedelta(hours=1))
    again = inquire(sessions, settings, at=first + dt.timedelta(days=40))
    assert not again.enrolled
    with sessions() as session:
        assert [e.stop_reason for e in session.scalars(select(Enrollment))] == ["consent_withdrawn"]
        # The ticked box is still a fact the ledger records.
        actions = session.scalars(select(ConsentEvent.action).order_by(ConsentEvent.id)).all()
        assert actions == ["granted", "withdrawn", "granted"]


def test_a_suppressed_address_is_not_enrolled(settings: Settings, sessions: Sessions) -> None:
    first = local("2026-11-23T10:00")
    with sessions.begin() as session:
        contact, _ = audience.get_or_create_contact(session, "jordan.lee@example.com", "Jordan", first)
        audience.suppress(session, settings.secret_key, contact, "hard_bounce", first)
    assert not inquire(sessions, settings, at=first).enrolled
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Enrollment)) == 0
        assert session.scalar(select(func.count()).select_from(Inquiry)) == 1


def test_invalid_inquiries_name_the_field(settings: Settings, sessions: Sessions) -> None:
    now = local("2026-11-23T10:00")
    good = dict(email="jordan.lee@example.com", name="Jordan Lee", consent=True, consent_text=WORDING,
                source="website-contact-form", received_at=now, message="")
    cases = [
        ({"email": "not an address"}, "email: not a valid email address"),
        ({"email": "a@b\r\nBcc: x@y.example"}, "email: not a valid email address"),
        ({"name": "x" * 201}, "name: longer than 200 characters"),
        ({"name": "Jordan\r\nBcc: x"}, "name: contains control characters"),
        ({"source": "  "}, "source: required"),
        ({"consent": "yes"}, "consent: must be true or false"),
        ({"consent_text": ""}, "consent_text: required"),
        ({"consent_text": "x" * 2001}, "consent_text: longer than 2000 characters"),
        ({"message": "x" * 5001}, "message: longer than 5000 characters"),
        ({"message": "nul\x00byte"}, "message: contains control characters"),
        ({"received_at": dt.datetime(2026, 11, 23, 10)}, "received_at: needs a UTC offset"),
        ({"received_at": now + dt.timedelta(hours=1)}, "received_at: is in the future"),
    ]
    with sessions.begin() as session:
        for change, expected in cases:
            with pytest.raises(InquiryError) as caught:
                inquiries.record_inquiry(session, settings, **{**good, **change}, now=now)
            assert str(caught.value).startswith(expected), change
            assert "\n" not in str(caught.value) and "x@y" not in str(caught.value)
        # A little clock skew is fine, and free text keeps its line breaks.
        inquiries.record_inquiry(session, settings, **{**good, "received_at": now + dt.timedelta(minutes=2),
                                                       "message": "line one\r\nline two"}, now=now)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Inquiry)) == 1


# --- advancing -----------------------------------------------------------------------------------


def test_steps_arrive_once_in_order_inside_the_window_across_the_dst_change(
    settings: Settings, sessions: Sessions
) -> None:
    received = local("2026-10-29T16:50")  # Thursday, CDT; the clocks go back on Sunday 2026-11-01
    inquire(sessions, settings, at=received)
    enqueued: list[tuple[int, dt.datetime]] = []
    counts = {"enqueued": 0, "stopped": 0, "completed": 0, "waiting": 0}
    now = utc(2026, 10, 29, 21, 0)
    while now < received + dt.timedelta(days=10):
        before = len(followup_rows(sessions))
        for key, value in advance(sessions, settings, now).items():
            counts[key] += value
        enqueued += [(row.step, now) for row in followup_rows(sessions)[before:]]
        deliver_all(sessions, now)
        now += dt.timedelta(minutes=30)

    assert [step for step, _ in enqueued] == [0, 1, 2]  # each once, in order
    assert [wall(at) for _, at in enqueued] == [
        "2026-10-29 17:30 CDT",  # 16:50 + 15 min = 17:05, the next half-hour tick
        "2026-11-02 09:00 CST",  # + 3 local days is Sunday 16:50: Monday's opening
        "2026-11-05 17:00 CST",  # + 7 local days, Thursday 16:50: the next tick
    ]
    afters = [config.duration(step.after) for step in settings.followups.steps]
    for (_, at), after in zip(enqueued, afters, strict=True):
        assert at >= received + after and in_window(at)
    gaps = [b - a for (_, a), (_, b) in zip(enqueued, enqueued[1:], strict=False)]
    assert all(gap >= config.duration(settings.followups.min_gap) for gap in gaps)
    assert counts["enqueued"] == 3 and counts["completed"] == 1 and counts["stopped"] == 0
    with sessions() as session:
        rows = session.scalars(select(OutboxMessage)).all()
        assert {row.dedupe_key for row in rows} == {f"f:{rows[0].enrollment_id}:{n}" for n in range(3)}
        assert all(row.kind == "followup" and row.consent_event_id is not None for row in rows)
    assert enrollment_of(sessions).status == "completed"


def test_after_downtime_one_step_per_run_then_min_gap(settings: Settings, sessions: Sessions) -> None:
    received = local("2026-11-23T10:00")
    inquire(sessions, settings, at=received)
    late = local("2026-12-23T10:00")  # 30 days later, a Wednesday: every step is overdue
    assert advance(sessions, settings, late)["enqueued"] == 1
    assert advance(sessions, settings, late)["enqueued"] == 0
    deliver_all(sessions, late)
    assert [row.step for row in followup_rows(sessions)] == [0]
    # late + 20h is Thursday 06:00: the window opens at 09:00.
    assert enrollment_of(sessions).next_due_at == local("2026-12-24T09:00")
    assert advance(sessions, settings, local("2026-12-24T08:59"))["enqueued"] == 0
    assert advance(sessions, settings, local("2026-12-24T09:00"))["enqueued"] == 1
    deliver_all(sessions, local("2026-12-24T09:00"))
    assert advance(sessions, settings, local("2026-12-25T04:59"))["enqueued"] == 0
    assert advance(sessions, settings, local("2026-12-25T09:00"))["enqueued"] == 1
    assert [row.step for row in followup_rows(sessions)] == [0, 1, 2]


def test_never_two_steps_in_one_run_even_without_a_min_gap(settings: Settings, sessions: Sessions) -> None:
    settings = with_followups(settings, min_gap="PT0S")
    inquire(sessions, settings, at=local("2026-11-23T10:00"))
    late = local("2026-12-23T10:00")
    for expected in ([0], [0, 1], [0, 1, 2]):
        assert advance(sessions, settings, late)["enqueued"] == 1
        deliver_all(sessions, late)
        assert [row.step for row in followup_rows(sessions)] == expected


def test_a_late_run_after_closing_waits_for_the_next_opening(settings: Settings, sessions: Sessions) -> None:
    inquire(sessions, settings, at=local("2026-11-23T17:30"))  # step 0 due 17:45
    result = advance(sessions, settings, local("2026-11-23T19:00"))  # the scheduler was down
    assert result["enqueued"] == 0 and result["waiting"] == 1
    assert enrollment_of(sessions).next_due_at == local("2026-11-24T09:00")
    assert advance(sessions, settings, local("2026-11-24T09:00"))["enqueued"] == 1


def test_the_next_step_waits_while_the_previous_one_is_still_in_the_outbox(
    settings: Settings, sessions: Sessions
) -> None:
    received = local("2026-11-23T10:00")
    inquire(sessions, settings, at=received)
    assert advance(sessions, settings, local("2026-11-23T10:15"))["enqueued"] == 1
    # The relay is down for days: step 1 falls due Thursday, but step 0 has not left.
    result = advance(sessions, settings, local("2026-11-26T10:00"))
    assert result == {"enqueued": 0, "stopped": 0, "completed": 0, "waiting": 1}
    delivered = local("2026-11-26T11:00")
    deliver_all(sessions, delivered)
    advance(sessions, settings, local("2026-11-26T11:00"))
    # ... then it goes once min_gap has passed since step 0 was delivered (Friday 07:00 -> 09:00).
    assert enrollment_of(sessions).next_due_at == local("2026-11-27T09:00")
    assert advance(sessions, settings, local("2026-11-27T08:59"))["enqueued"] == 0
    assert advance(sessions, settings, local("2026-11-27T09:00"))["enqueued"] == 1


def _withdraw(session: Session, settings: Settings, contact: Contact, now: dt.datetime) -> None:
    audience.withdraw_followups(session, contact, source="preferences-page", now=now)


def _unsubscribe(session: Session, settings: Settings, contact: Contact, now: dt.datetime) -> None:
    audience.unsubscribe_all(session, settings.secret_key, contact, source="one-click", now=now)


def _bounce(session: Session, settings: Settings, contact: Contact, now: dt.datetime) -> None:
    audience.suppress(session, settings.secret_key, contact, "hard_bounce", now, detail="550 5.1.1")


def _booked(session: Session, settings: Settings, contact: Contact, now: dt.datetime) -> None:
    inquiries.close(session, settings, contact.email, "booked", now)


def _closed(session: Session, settings: Settings, contact: Contact, now: dt.datetime) -> None:
    inquiries.close(session, settings, contact.email, "closed", now)


def _inquiry_marked_booked(session: Session, settings: Settings, contact: Contact, now: dt.datetime) -> None:
    # Staff changed the status some other way (the admin page): advance still sees it.
    session.execute(update(Inquiry).where(Inquiry.contact_id == contact.id).values(status="booked"))


def _consent_flag_cleared(session: Session, settings: Settings, contact: Contact, now: dt.datetime) -> None:
    contact.followups_consent = False


@pytest.mark.parametrize(("action", "reason"), [
    (_withdraw, "consent_withdrawn"),
    (_unsubscribe, "unsubscribed"),
    (_bounce, "suppressed"),
    (_booked, "booked"),
    (_closed, "closed"),
    (_inquiry_marked_booked, "booked"),
    (_consent_flag_cleared, "consent_withdrawn"),
])
def test_stop_rules_end_the_sequence_for_good(settings: Settings, sessions: Sessions, action, reason: str) -> None:  # noqa: ANN001
    received = local("2026-11-23T10:00")
    inquire(sessions, settings, at=received)
    assert advance(sessions, settings, local("2026-11-23T10:15"))["enqueued"] == 1
    with sessions.begin() as session:
        contact = audience.find_contact(session, "jordan.lee@example.com")
        action(session, settings, contact, local("2026-11-23T12:00"))
    for day in range(3, 20):
        assert advance(sessions, settings, received + dt.timedelta(days=day))["enqueued"] == 0
    enrollment = enrollment_of(sessions)
    assert (enrollment.status, enrollment.stop_reason) == ("stopped", reason)
    assert enrollment.next_due_at is None
    assert [row.step for row in followup_rows(sessions)] == [0]


def test_consent_older_than_consent_valid_days_gets_no_more_steps(settings: Settings, sessions: Sessions) -> None:
    settings = with_followups(settings, consent_valid_days=5)
    received = local("2026-11-23T10:00")
    inquire(sessions, settings, at=received)
    for at in ("2026-11-23T10:15", "2026-11-26T10:00"):
        assert advance(sessions, settings, local(at))["enqueued"] == 1
        deliver_all(sessions, local(at))
    result = advance(sessions, settings, local("2026-11-30T10:00"))  # step 2, 7 days on: consent is 5 days
    assert result["stopped"] == 1 and result["enqueued"] == 0
    assert enrollment_of(sessions).stop_reason == "consent_expired"
    # A new inquiry with fresh consent may start again: expiry was about the old consent.
    assert inquire(sessions, settings, at=local("2026-12-01T10:00")).enrolled


def test_close_an_unknown_address(settings: Settings, sessions: Sessions) -> None:
    with sessions.begin() as session:
        with pytest.raises(InquiryError, match=r"^no inquiry from nobody@example\.com$"):
            inquiries.close(session, settings, "nobody@example.com", "booked", local("2026-11-23T10:00"))
        audience.get_or_create_contact(session, "subscriber@example.com", "", local("2026-11-23T10:00"))
        with pytest.raises(InquiryError, match="no inquiry from subscriber@example.com"):
            inquiries.close(session, settings, "subscriber@example.com", "closed", local("2026-11-23T10:00"))
        with pytest.raises(InquiryError, match="^email: "):
            inquiries.close(session, settings, "not an address", "closed", local("2026-11-23T10:00"))


# --- CSV import ----------------------------------------------------------------------------------


def test_import_the_sample_csv(settings: Settings, sessions: Sessions) -> None:
    now = local("2026-11-23T10:00")
    with sessions.begin() as session:
        report = inquiries.import_csv(session, settings, SAMPLE / "inquiries.csv", now)
    assert (report.imported, report.duplicates, report.enrolled, report.rejected) == (3, 0, 2, [])
    with sessions() as session:
        enrolled = session.scalars(select(Contact.email).join(Enrollment, Enrollment.contact_id == Contact.id)).all()
        assert sorted(enrolled) == ["alex.kim@example.net", "jordan.lee@example.com"]
        grants = session.scalars(select(ConsentEvent)).all()
        assert len(grants) == 2 and {g.wording for g in grants} == {WORDING}
        sam = session.scalars(select(Inquiry).join(Contact).where(Contact.email == "sam.ortiz@example.org")).one()
        assert not sam.consent and sam.source == "phone"
        assert sam.received_at == local("2026-11-21T09:15")
    # Importing the same file again changes nothing.
    stream = io.StringIO((SAMPLE / "inquiries.csv").read_text(encoding="utf-8"))
    with sessions.begin() as session:
        again = inquiries.import_csv(session, settings, stream, now + dt.timedelta(days=1))
    assert (again.imported, again.duplicates, again.enrolled, again.rejected) == (0, 3, 0, [])
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Inquiry)) == 3
        assert session.scalar(select(func.count()).select_from(ConsentEvent)) == 2


BROKEN = """\
email,name,consent,consent_text,source,received_at
good@example.com,Good Person,yes,"I agree,
on two lines.",phone,2026-11-20T10:00:00-06:00
not-an-address,Bad Address,true,I agree,phone,2026-11-20T10:00:00-06:00
maybe@example.com,Maybe,perhaps,I agree,phone,2026-11-20T10:00:00-06:00
naive@example.com,Naive,1,I agree,phone,2026-11-20T10:00:00
future@example.com,Future,true,I agree,phone,2027-01-01T10:00:00-06:00
silent@example.com,Silent,true,,phone,2026-11-20T10:00:00-06:00
short@example.com,Short,true

nobody@example.com,No Consent,no,,walk-in,2026-11-21T10:00:00Z
"""


def test_import_reports_bad_lines_and_keeps_the_good_ones(settings: Settings, sessions: Sessions) -> None:
    with sessions.begin() as session:
        report = inquiries.import_csv(session, settings, io.StringIO(BROKEN), local("2026-11-23T10:00"))
    assert report.imported == 2 and report.enrolled == 1 and report.duplicates == 0
    assert [(line, reason.split(":")[0]) for line, reason in report.rejected] == [
        (4, "email"), (5, "consent"), (6, "received_at"), (7, "received_at"), (8, "consent_text"), (9, "expected 6 fields, found 3"),
    ]
    with sessions() as session:
        emails = session.scalars(select(Contact.email).order_by(Contact.email)).all()
        assert emails == ["good@example.com", "nobody@example.com"]
        assert session.scalars(select(ConsentEvent.wording)).one() == "I agree,\non two lines."


@pytest.mark.parametrize(("header", "expected"), [
    ("email,name,consent,source,received_at", "missing columns: consent_text"),
    ("email,name,consent,consent_text,source,received_at,topics", "unknown columns: topics"),
    ("email,name,consent,consent_text,source,received_at,email", "repeated columns: email"),
    ("", "the file is empty"),
])
def test_import_rejects_a_file_with_the_wrong_columns(settings: Settings, sessions: Sessions, header: str,
                                                      expected: str) -> None:
    with sessions.begin() as session:
        with pytest.raises(InquiryError, match=re.escape(expected)):
            inquiries.import_csv(session, settings, io.StringIO(header + ("\n" if header else "")),
                                 local("2026-11-23T10:00"))


def test_import_from_a_path_with_a_bom_and_a_missing_file(settings: Settings, sessions: Sessions,
                                                          tmp_path: Path) -> None:
    path = tmp_path / "inquiries.csv"
    path.write_text("\ufeff" + (SAMPLE / "inquiries.csv").read_text(encoding="utf-8"), encoding="utf-8")
    with sessions.begin() as session:
        assert inquiries.import_csv(session, settings, str(path), local("2026-11-23T10:00")).imported == 3
        with pytest.raises(InquiryError, match="file not found"):
            inquiries.import_csv(session, settings, tmp_path / "missing.csv", local("2026-11-23T10:00"))


# --- purge and staff rows ------------------------------------------------------------------------


def test_purge_removes_old_inactive_inquiries_and_keeps_the_ledger(settings: Settings, sessions: Sessions) -> None:
    old = local("2025-01-06T10:00")
    inquire(sessions, settings, "stopped@example.com", at=old)
    inquire(sessions, settings, "noconsent@example.com", at=old, consent=False)
    inquire(sessions, settings, "running@example.com", at=old)
    inquire(sessions, settings, "recent@example.com", at=local("2026-11-20T10:00"), consent=False)
    with sessions.begin() as session:
        inquiries.close(session, settings, "stopped@example.com", "closed", old + dt.timedelta(days=1))
    now = local("2026-11-23T10:00")
    with sessions.begin() as session:
        # "running" is still active (nobody advanced it): its inquiry stays while it runs.
        assert inquiries.purge_inactive(session, settings, now) == 2
    with sessions() as session:
        left = session.scalars(select(Contact.email).join(Inquiry).order_by(Contact.email)).all()
        assert left == ["recent@example.com", "running@example.com"]
        assert session.scalar(select(func.count()).select_from(ConsentEvent)) == 2
        stopped = session.scalars(select(Enrollment).where(Enrollment.status == "stopped")).one()
        assert stopped.inquiry_id is None
    with sessions.begin() as session:
        assert inquiries.purge_inactive(session, settings, now) == 0


def test_status_rows_show_the_sequence_and_never_the_message(settings: Settings, sessions: Sessions) -> None:
    inquire(sessions, settings, at=local("2026-11-23T10:00"), message=SECRET_MESSAGE)
    inquire(sessions, settings, "sam.ortiz@example.org", name="Sam Ortiz", at=local("2026-11-23T11:00"),
            consent=False)
    advance(sessions, settings, local("2026-11-23T10:15"))
    with sessions() as session:
        rows = inquiries.status_rows(session)
    assert [(r.email, r.consent, r.status, r.enrollment_status, r.next_step) for r in rows] == [
        ("sam.ortiz@example.org", False, "open", None, None),
        ("jordan.lee@example.com", True, "open", "active", 1),
    ]
    assert rows[1].name == "Jordan Lee" and rows[1].next_due_at == local("2026-11-26T10:00")
    assert SECRET_MESSAGE not in repr(rows)


# --- templates -----------------------------------------------------------------------------------


def _sensitive(settings: Settings, text: str) -> list[str]:
    return [word for word in settings.privacy.sensitive_words if re.search(rf"\b{re.escape(word)}\b", text, re.I)]


def test_every_step_renders_without_sensitive_words_or_tracking(plain_settings: Settings) -> None:
    renderer = Renderer(plain_settings)
    values = sample_values(plain_settings.web.base_url)
    for index, step in enumerate(plain_settings.followups.steps):
        assert _sensitive(plain_settings, step.subject) == [] and _sensitive(plain_settings, step.preheader) == []
        prepared = followups.prepare_step(renderer, plain_settings, index)
        raw = prepared.build(Recipient("jordan.lee@example.com", "Jordan Lee", values, "<1.x@example>"),
                             utc(2026, 11, 23, 16))
        message = email.message_from_bytes(raw, policy=email.policy.default)
        html = message.get_body(("html",)).get_content()
        text = message.get_body(("plain",)).get_content()
        assert message["Subject"] == step.subject
        assert message["List-Unsubscribe"] == f"<{values['unsubscribe_url']}>"
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        for part in (html, text):
            assert _sensitive(plain_settings, part) == [], step.template
            assert plain_settings.clinic.postal_address in part
            assert values["unsubscribe_url"] in part and values["preferences_url"] in part
            assert "because you asked Therapy Central" in part
            assert "Hi Sam," in part
        assert "<img" not in html and "<script" not in html  # no tracking pixel, nothing active
        hrefs = re.findall(r'href="([^"]+)"', html)
        assert hrefs and all(h.startswith(("https://", "http://", "tel:")) for h in hrefs)
    with pytest.raises(LookupError):
        followups.prepare_step(renderer, plain_settings, len(plain_settings.followups.steps))


def test_templates_work_without_phone_or_website(plain_settings: Settings) -> None:
    settings = plain_settings.model_copy(update={"clinic": plain_settings.clinic.model_copy(
        update={"phone": "", "website": ""})})
    renderer = Renderer(settings)
    for index in range(len(settings.followups.steps)):
        prepared = followups.prepare_step(renderer, settings, index)
        assert "tel:" not in prepared.html.fill({}) and "call us" not in prepared.text.fill({})


# --- the whole way: advance_followups and deliver jobs, a real SMTP server ------------------------


@pytest.fixture
def smtp_runtime(settings: Settings, engine, smtp_server):  # noqa: ANN001, ANN201
    try:
        from mailer.outbound.transport import make_transport
    except ImportError:  # the transport is written in parallel; without it this test cannot run
        pytest.skip("mailer.outbound.transport.make_transport is not available yet")
    smtp_settings = settings.model_copy(update={"delivery": settings.delivery.model_copy(
        update={"transport": "smtp", "smtp_url": smtp_server.url, "connections": 1})})
    transport = make_transport(smtp_settings)

    def tick(now: dt.datetime) -> None:
        runtime = Runtime(smtp_settings, clock=fixed_clock(now), engine_override=engine, transport_override=transport)
        jobs.run_job(runtime, "advance_followups", now)
        jobs.run_job(runtime, "deliver", now)

    return smtp_settings, tick


def _clinic_days(start: str, days: int) -> list[dt.datetime]:
    first = dt.date.fromisoformat(start)
    return [local(f"{first + dt.timedelta(days=n)}T{hour}") for n in range(days)
            for hour in ("09:00", "12:00", "17:30", "22:00")]


def test_end_to_end_consented_followups_arrive_and_the_message_never_does(
    smtp_runtime, sessions: Sessions, smtp_server  # noqa: ANN001
) -> None:
    settings, tick = smtp_runtime
    received = local("2026-10-29T16:50")
    inquire(sessions, settings, at=received, message=SECRET_MESSAGE)
    inquire(sessions, settings, at=received + dt.timedelta(minutes=1), message=SECRET_MESSAGE)  # a retry
    inquire(sessions, settings, "sam.ortiz@example.org", name="Sam Ortiz", at=received, consent=False,
            message=SECRET_MESSAGE)
    arrivals: list[tuple[str, dt.datetime]] = []
    for now in _clinic_days("2026-10-29", 12):
        before = len(smtp_server.received)
        tick(now)
        arrivals += [(item.message["Subject"], now) for item in smtp_server.received[before:]]

    assert all(item.rcpt_tos == ["jordan.lee@example.com"] for item in smtp_server.received)
    assert [subject for subject, _ in arrivals] == [step.subject for step in settings.followups.steps]
    assert [wall(at) for _, at in arrivals] == [
        "2026-10-29 17:30 CDT", "2026-11-02 09:00 CST", "2026-11-05 17:30 CST",
    ]
    for item in smtp_server.received:
        message = item.message
        parts = [item.data.decode("utf-8", "replace")] + [
            message.get_body((kind,)).get_content() for kind in ("plain", "html")]
        for part in parts:
            assert "struggled" not in part and "Maria" not in part and "ketamine" not in part.lower()
        assert message["List-Unsubscribe"].startswith("<https://mail.therapycentral.example/")
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message["To"] == "Jordan Lee <jordan.lee@example.com>"
    assert enrollment_of(sessions).status == "completed"
    with sessions() as session:
        rows = session.scalars(select(OutboxMessage)).all()
        assert [row.state for row in rows] == ["sent"] * 3
        grant = session.scalars(select(ConsentEvent).order_by(ConsentEvent.id)).first()
        assert {row.consent_event_id for row in rows} == {grant.id}


def test_end_to_end_unsubscribing_from_the_first_followup_stops_the_rest(
    smtp_runtime, sessions: Sessions, smtp_server  # noqa: ANN001
) -> None:
    settings, tick = smtp_runtime
    inquire(sessions, settings, at=local("2026-11-23T10:00"))
    tick(local("2026-11-23T10:15"))
    assert len(smtp_server.received) == 1
    with sessions.begin() as session:
        contact = audience.find_contact(session, "jordan.lee@example.com")
        audience.unsubscribe_all(session, settings.secret_key, contact, source="one-click",
                                 now=local("2026-11-23T11:00"))
    for now in _clinic_days("2026-11-23", 10):
        tick(now)
    assert len(smtp_server.received) == 1


def test_end_to_end_close_between_enqueue_and_send_skips_the_queued_step(
    smtp_runtime, engine, sessions: Sessions, smtp_server  # noqa: ANN001
) -> None:
    settings, tick = smtp_runtime
    inquire(sessions, settings, at=local("2026-11-23T10:00"))
    tick(local("2026-11-23T10:15"))
    now = local("2026-11-26T10:00")
    runtime = Runtime(settings, clock=fixed_clock(now), engine_override=engine)
    jobs.run_job(runtime, "advance_followups", now)  # step 1 is queued ...
    with sessions.begin() as session:  # ... and staff mark the contact booked before delivery runs
        assert inquiries.close(session, settings, "jordan.lee@example.com", "booked", now) == 1
    for moment in [now, *_clinic_days("2026-11-27", 7)]:
        tick(moment)
    assert len(smtp_server.received) == 1
    with sessions() as session:
        assert [row.state for row in session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))] == [
            "sent", "skipped"]
