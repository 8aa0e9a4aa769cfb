"""The follow-up sequences defined in config: when each step is due, and advancing enrollments step by
step under the stop rules (inquiries coming in, and what staff do with them: mailer.sequences.inquiries)."""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer import audience
from mailer.config import DEFAULT_SEQUENCE, Settings, duration, hhmm
from mailer.models import ConsentEvent, Contact, Enrollment, Inquiry, OutboxMessage
from mailer.outbound import outbox
from mailer.sequences import wording

# A step's email is made in mailer.sequences.steps; these names stay here for the callers that know them.
from mailer.sequences.steps import prepare_step as prepare_step
from mailer.sequences.steps import why_text as why_text

log = logging.getLogger("mailer.followups")

# The sequence of [[followups.steps]] (and of enrollments made before there were several).
SEQUENCE = DEFAULT_SEQUENCE

# Enrollments handled per database round trip in advance().
BATCH = 200
# How soon advance() looks again at an enrollment whose previous follow-up is still in the outbox.
RECHECK = dt.timedelta(minutes=15)


# --- scheduling ----------------------------------------------------------------------------------


def _local(wall: dt.datetime, zone: dt.tzinfo) -> dt.datetime:
    """A local wall time as UTC. zoneinfo's fold=0 moves a time in the spring gap forward by the gap
    (02:30 on 2026-03-08 becomes 03:30 CDT) and takes the first of the two 01:30s in the autumn."""
    return wall.replace(tzinfo=zone).astimezone(dt.UTC)


def _after(start: dt.datetime, delay: dt.timedelta, zone: dt.tzinfo) -> dt.datetime:
    """`start` plus `delay`, whole days counted on the local calendar (P3D from 16:50 is 16:50 three
    days later, even across a DST change), the rest (hours, minutes) as elapsed time."""
    days = dt.timedelta(days=delay.days)
    wall = start.astimezone(zone).replace(tzinfo=None) + days
    return _local(wall, zone) + (delay - days)


def _sending_day(settings: Settings, day: dt.date) -> bool:
    return settings.followups.send_on_weekends or day.weekday() < 5


def into_window(settings: Settings, moment: dt.datetime) -> dt.datetime:
    """The first instant at or after `moment` inside the send window (local, [opens, closes))."""
    zone = settings.zone
    opens, closes = (hhmm(value) for value in settings.followups.send_window)
    local = moment.astimezone(zone)
    day = local.date()
    if _sending_day(settings, day):
        if local.time() < opens:
            return _local(dt.datetime.combine(day, opens), zone)
        if local.time() < closes:
            return moment.astimezone(dt.UTC)
    # After closing, or a weekend: the next sending day's opening, as a local wall time (never +24h).
    day += dt.timedelta(days=1)
    while not _sending_day(settings, day):
        day += dt.timedelta(days=1)
    return _local(dt.datetime.combine(day, opens), zone)


def due_time(settings: Settings, anchor_at: dt.datetime, step_index: int, last_sent_at: dt.datetime | None,
             sequence: str = SEQUENCE) -> dt.datetime:
    """When step `step_index` of `sequence` may go: its delay after the inquiry, at least min_gap after the
    previous step, moved into the send window. UTC."""
    followups = settings.followups
    due = _after(anchor_at, duration(followups.steps_of(sequence)[step_index].after), settings.zone)
    if last_sent_at is not None:
        due = max(due, last_sent_at + duration(followups.min_gap))
    return into_window(settings, due)


# --- advancing -----------------------------------------------------------------------------------


def advance(session: Session, settings: Settings, now: dt.datetime) -> dict[str, int]:
    """Enqueue the next due step of every active enrollment that has fallen due, one step each.

    Each enrollment is visited at most once per call (keyset pagination by id), so a late run after
    downtime sends one step and schedules the next at least `min_gap` later, never two at once.
    Counts: enqueued, stopped, completed, waiting (due, but held: outside the window, or the
    previous step still in the outbox or sent less than min_gap ago).
    """
    counts = {"enqueued": 0, "stopped": 0, "completed": 0, "waiting": 0}
    after_id = 0
    while True:
        batch = session.scalars(
            select(Enrollment)
            .where(Enrollment.status == "active", Enrollment.next_due_at <= now, Enrollment.id > after_id)
            .order_by(Enrollment.id)
            .limit(BATCH)
            # Two schedulers by mistake: each enrollment is handled by one (the dedupe key covers the rest).
            .with_for_update(skip_locked=True)
        ).all()
        if not batch:
            return counts
        for enrollment in batch:
            counts[_advance_one(session, settings, enrollment, now)] += 1
        after_id = batch[-1].id
        session.flush()


def _advance_one(session: Session, settings: Settings, enrollment: Enrollment, now: dt.datetime) -> str:
    contact = session.get(Contact, enrollment.contact_id)
    inquiry = session.get(Inquiry, enrollment.inquiry_id) if enrollment.inquiry_id is not None else None
    reason = _stop_reason(session, settings, enrollment, contact, inquiry, now)
    if reason is not None:
        _stop(enrollment, reason, now)
        return "stopped"
    if enrollment.next_step >= len(settings.followups.steps_of(enrollment.sequence)):
        return _finish(session, enrollment, now)
    # A run after the window closed (late scheduler) waits for the next opening instead of sending now.
    opening = into_window(settings, now)
    if opening != now:
        enrollment.next_due_at = opening
        return "waiting"
    hold = _hold_for_previous(session, settings, enrollment, now)
    if hold is not None:
        enrollment.next_due_at = hold
        return "waiting"
    _enqueue_step(session, settings, enrollment, now)
    if inquiry is not None:
        inquiry.last_activity_at = now
    return "enqueued"


def _stop_reason(session: Session, settings: Settings, enrollment: Enrollment, contact: Contact | None,
                 inquiry: Inquiry | None, now: dt.datetime) -> str | None:
    """Why this enrollment must end now, or None. Checked before every step."""
    if contact is None:
        return "erased"
    if settings.followups.sequence(enrollment.sequence) is None:
        return "sequence_removed"  # config.toml no longer has it: nothing left to send
    if audience.suppression_for(session, settings.secret_key, contact) is not None:
        return "suppressed"
    if not contact.followups_consent:
        return "consent_withdrawn"
    if inquiry is not None and inquiry.status in ("booked", "closed"):
        return inquiry.status
    grant = session.get(ConsentEvent, enrollment.consent_event_id) if enrollment.consent_event_id else None
    if grant is None:
        return "consent_missing"  # the ledger entry this sequence relied on is gone
    if now - grant.created_at > dt.timedelta(days=settings.followups.consent_valid_days):
        return "consent_expired"
    return None


def _stop(enrollment: Enrollment, reason: str, now: dt.datetime) -> None:
    enrollment.status = "stopped"
    enrollment.stop_reason = reason
    enrollment.stopped_at = now
    enrollment.next_due_at = None
    log.info("enrollment %s of contact %s stopped: %s", enrollment.id, enrollment.contact_id, reason)


def _finish(session: Session, enrollment: Enrollment, now: dt.datetime) -> str:
    """Every step is enqueued. The enrollment stays active until the last message has left the outbox,
    because delivery's consent re-check only sends follow-ups of active enrollments. Steps leave in
    order (see _hold_for_previous), so the last one is the only one that can still be waiting; it is
    found by its dedupe key, which is indexed (outbox.enrollment_id is not)."""
    last = step_message(session, enrollment, enrollment.next_step - 1)
    state = last.state if last is not None else None
    if state in (*outbox.WAITING, "sending"):
        enrollment.next_due_at = now + RECHECK
        return "waiting"
    enrollment.status = "completed"
    enrollment.next_due_at = None
    log.info("enrollment %s of contact %s completed", enrollment.id, enrollment.contact_id)
    return "completed"


def _hold_for_previous(session: Session, settings: Settings, enrollment: Enrollment,
                       now: dt.datetime) -> dt.datetime | None:
    """Keep steps in order and apart when delivery lagged: while the previous step is still in the
    outbox (a relay outage), or was delivered less than min_gap ago, this step waits."""
    if enrollment.next_step == 0:
        return None
    previous = step_message(session, enrollment, enrollment.next_step - 1)
    if previous is None:
        return None
    if previous.state in (*outbox.WAITING, "sending"):
        return into_window(settings, now + RECHECK)
    if previous.state == "sent" and previous.sent_at is not None:
        due = due_time(settings, enrollment.anchor_at, enrollment.next_step, previous.sent_at, enrollment.sequence)
        return due if due > now else None
    return None  # failed or skipped: the stop rules have had their say


def dedupe_key(enrollment_id: int, step: int, resumes: int = 0) -> str:
    """A step's outbox key; after a resume the step gets a fresh one (the cancelled row keeps its key)."""
    return f"f:{enrollment_id}:{step}" if not resumes else f"f:{enrollment_id}:{step}:{resumes}"


def step_message(session: Session, enrollment: Enrollment, step: int) -> OutboxMessage | None:
    """The newest outbox row of one step of this enrollment, whichever resume made it (by its indexed keys)."""
    keys = [dedupe_key(enrollment.id, step, n) for n in range(enrollment.resumes + 1)]
    return session.scalar(
        select(OutboxMessage).where(OutboxMessage.dedupe_key.in_(keys)).order_by(OutboxMessage.id.desc()).limit(1)
    )


def _enqueue_step(session: Session, settings: Settings, enrollment: Enrollment, now: dt.datetime) -> None:
    step = enrollment.next_step
    # The wording current now goes with this message, whatever staff save before it is sent.
    version = wording.current_number(session, settings, enrollment.sequence, step)
    inserted = outbox.enqueue_one(
        session, dedupe_key=dedupe_key(enrollment.id, step, enrollment.resumes), kind="followup",
        contact_id=enrollment.contact_id, consent_event_id=enrollment.consent_event_id, now=now, due_at=now,
        enrollment_id=enrollment.id, step=step, step_version=version,
    )
    steps = settings.followups.steps_of(enrollment.sequence)
    log.info("enrollment %s of contact %s: %s step %d (%s, version %d) %s", enrollment.id, enrollment.contact_id,
             enrollment.sequence, step, steps[step].template, version,
             "enqueued" if inserted else "was already in the outbox")
    enrollment.next_step = step + 1
    enrollment.last_sent_at = now
    # After the last step, look again at once: _finish completes the enrollment when the message is out.
    enrollment.next_due_at = (due_time(settings, enrollment.anchor_at, step + 1, now, enrollment.sequence)
                              if step + 1 < len(steps) else now)
