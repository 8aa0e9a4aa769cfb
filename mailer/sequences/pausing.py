"""Pausing a follow-up sequence when the person replies, and resuming it when staff decide to.

A pause takes effect at once: the enrollment leaves "active" (delivery's consent re-check sends
follow-ups of active enrollments only) and the step waiting in the outbox is cancelled, with the
sequence rewound to it. A resume schedules that step again from now, inside the send window, under a
fresh outbox key: the cancelled row keeps its own key as "skipped", and enqueueing under it again would
find it and send nothing. Which steps went out is read from the outbox, so a step is never lost (it was
cancelled, so it goes again) and never doubled (it was sent, so the sequence goes on after it).
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from mailer import audience
from mailer.config import Settings, duration
from mailer.models import Contact, Enrollment, Inquiry, OutboxMessage
from mailer.sequences.followups import into_window
from mailer.sequences.inquiries import InquiryError

log = logging.getLogger("mailer.followups")

# Outbox states of a step not yet handed to the relay. A "sending" row is left to delivery: its re-check
# skips it (the enrollment is no longer active), unless it was being handed over that very moment.
# An "unknown" row (no reply after its final dot) may have arrived: it is not taken back either.
CANCELLABLE = ("queued", "deferred")
PAUSED_NOTE = "not sent: the person replied and the sequence was paused"


def pause(session: Session, enrollment: Enrollment, now: dt.datetime) -> bool:
    """Pause a running sequence because the person replied. False when it was not active."""
    # The row lock orders this with advance(), which locks the enrollments it enqueues for: a step it is
    # enqueueing right now is committed first and cancelled below, never left to go out.
    locked = session.scalar(select(Enrollment).where(Enrollment.id == enrollment.id).with_for_update())
    if locked is None or locked.status != "active":
        return False
    cancelled = session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.contact_id == locked.contact_id, OutboxMessage.enrollment_id == locked.id,
               OutboxMessage.kind == "followup", OutboxMessage.state.in_(CANCELLABLE))
        .values(state="skipped", last_error=PAUSED_NOTE, lease_until=None, claimed_by=None)
        .returning(OutboxMessage.step)
    ).scalars().all()
    if cancelled:
        locked.next_step = min(step for step in cancelled if step is not None)
    locked.status = "paused"
    locked.paused_at = now
    locked.next_due_at = None
    log.info("enrollment %s of contact %s paused by a reply (%d queued step cancelled)", locked.id,
             locked.contact_id, len(cancelled))
    return True


def next_step_after(session: Session, enrollment: Enrollment) -> int:
    """The first step after the last one that went out (or may have: handed over, or no reply after
    its final dot). Steps go out in order, so nothing before it is missing."""
    rows = session.execute(
        select(OutboxMessage.step, OutboxMessage.state, OutboxMessage.was_unknown)
        .where(OutboxMessage.contact_id == enrollment.contact_id, OutboxMessage.enrollment_id == enrollment.id,
               OutboxMessage.kind == "followup")
    ).all()
    gone = [step for step, state, was_unknown in rows
            if step is not None and (state != "skipped" or was_unknown)]
    return max(gone) + 1 if gone else 0


def resume_enrollment(session: Session, settings: Settings, enrollment: Enrollment, now: dt.datetime) -> dt.datetime:
    """Run a paused sequence again: its next step from now (inside the send window, and never sooner than
    followups.min_gap after the previous email), the later steps as far apart as configured. Returns
    when the next step is due."""
    locked = session.scalar(select(Enrollment).where(Enrollment.id == enrollment.id).with_for_update())
    if locked is None or locked.status != "paused":
        raise InquiryError("this sequence is not paused")
    locked.next_step = next_step_after(session, locked)
    last_sent = session.scalar(
        select(func.max(OutboxMessage.sent_at))
        .where(OutboxMessage.contact_id == locked.contact_id, OutboxMessage.enrollment_id == locked.id,
               OutboxMessage.kind == "followup", OutboxMessage.state == "sent")
    )
    start = now if last_sent is None else max(now, last_sent + duration(settings.followups.min_gap))
    due = into_window(settings, start)
    steps = settings.followups.steps_of(locked.sequence)
    if locked.next_step < len(steps):
        # The steps' delays count from the inquiry; moved so that this step's delay ends at `due`.
        locked.anchor_at = before(due, duration(steps[locked.next_step].after), settings.zone)
    locked.resumes += 1
    locked.status = "active"
    locked.paused_at = None
    locked.next_due_at = due
    log.info("enrollment %s of contact %s resumed at step %d", locked.id, locked.contact_id, locked.next_step)
    return due


def before(moment: dt.datetime, delay: dt.timedelta, zone: dt.tzinfo) -> dt.datetime:
    """The instant `delay` before `moment`, counted as followups counts it forward (whole days on the
    local calendar, the rest as elapsed time)."""
    days = dt.timedelta(days=delay.days)
    wall = moment.astimezone(zone).replace(tzinfo=None) - days
    return wall.replace(tzinfo=zone).astimezone(dt.UTC) - (delay - days)


def paused_enrollment(session: Session, email: str) -> Enrollment:
    """The paused sequence of the person with this address, or InquiryError naming what is wrong."""
    try:
        address = audience.normalize_email(email)
    except audience.AudienceError:
        raise InquiryError("email: not a valid email address") from None
    contact = session.scalar(select(Contact).where(Contact.email == address))
    if contact is None or session.scalar(select(Inquiry.id).where(Inquiry.contact_id == contact.id).limit(1)) is None:
        raise InquiryError(f"no inquiry from {address}")
    enrollment = session.scalar(
        select(Enrollment).where(Enrollment.contact_id == contact.id).order_by(Enrollment.id.desc()).limit(1)
    )
    if enrollment is None:
        raise InquiryError(f"{address} has no follow-up sequence")
    if enrollment.status != "paused":
        raise InquiryError(f"the follow-ups of {address} are not paused (they are {enrollment.status})")
    return enrollment


def resume(session: Session, settings: Settings, email: str, now: dt.datetime) -> dt.datetime:
    """Resume the paused sequence of the person with this address (staff decided after their reply)."""
    return resume_enrollment(session, settings, paused_enrollment(session, email), now)
