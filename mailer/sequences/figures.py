"""Follow-up figures without tracking: per sequence and step, what was sent and what people did next.

Only what people do on their own counts: replies (the replies mailbox), bookings (the booking webhook
or staff marking them) and the reasons sequences stopped. No pixel, no redirected link: a follow-up
"after step 2" means that two steps had gone out when it happened.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.models import Enrollment, Inquiry, OutboxMessage, Reply

WINDOWS = (30, 90)


@dataclass
class StepFigures:
    """What happened after `step` emails had gone out (0: before the first)."""

    step: int
    subject: str
    sent: int = 0
    replied: int = 0
    booked: int = 0
    stopped: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Outcome:
    """Of the people enrolled in the last `days` days: how many booked, and how soon after inquiring."""

    days: int
    enrolled: int
    booked: int
    median_days: float | None

    @property
    def rate(self) -> float | None:
        return self.booked / self.enrolled if self.enrolled else None


@dataclass
class SequenceFigures:
    name: str
    enrolled: int = 0
    status: Counter[str] = field(default_factory=Counter)
    steps: list[StepFigures] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)


@dataclass(frozen=True)
class _Person:
    enrollment_id: int
    sequence: str
    status: str
    stop_reason: str | None
    stopped_at: dt.datetime | None
    created_at: dt.datetime
    received_at: dt.datetime | None
    booked_at: dt.datetime | None


def _steps_by(sent: list[dt.datetime], moment: dt.datetime | None) -> int:
    """How many of a person's steps had gone out by `moment` (all of them when it is unknown)."""
    return len(sent) if moment is None else sum(1 for at in sent if at <= moment)


def sequence_figures(session: Session, settings: Settings, now: dt.datetime, days: int = 90) -> list[SequenceFigures]:
    """Every configured sequence (and any with enrollments left from an earlier configuration), its
    per-step table over the people enrolled in the last `days` days, and its outcomes for WINDOWS."""
    since = now - dt.timedelta(days=max(WINDOWS + (days,)))
    people = [
        _Person(*row) for row in session.execute(
            select(Enrollment.id, Enrollment.sequence, Enrollment.status, Enrollment.stop_reason,
                   Enrollment.stopped_at, Enrollment.created_at, Inquiry.received_at, Inquiry.booked_at)
            .outerjoin(Inquiry, Inquiry.id == Enrollment.inquiry_id)
            .where(Enrollment.created_at >= since)
        ).all()
    ]
    ids = [person.enrollment_id for person in people]
    sent: dict[int, dict[int, dt.datetime]] = defaultdict(dict)
    replies: dict[int, list[tuple[dt.datetime, int]]] = defaultdict(list)
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        for enrollment_id, step, sent_at in session.execute(
            # Joined on the contact as well: outbox.contact_id is indexed, outbox.enrollment_id is not.
            select(OutboxMessage.enrollment_id, OutboxMessage.step, OutboxMessage.sent_at)
            .join(Enrollment, (Enrollment.contact_id == OutboxMessage.contact_id)
                  & (Enrollment.id == OutboxMessage.enrollment_id))
            .where(Enrollment.id.in_(chunk), OutboxMessage.kind == "followup", OutboxMessage.state == "sent")
        ).all():
            if step is not None and sent_at is not None:
                earlier = sent[enrollment_id].get(step)
                sent[enrollment_id][step] = min(earlier, sent_at) if earlier else sent_at
        for enrollment_id, received_at, after_step in session.execute(
            select(Reply.enrollment_id, Reply.received_at, Reply.after_step).where(Reply.enrollment_id.in_(chunk))
        ).all():
            replies[enrollment_id].append((received_at, after_step or 0))

    names = [sequence.name for sequence in settings.followups.all_sequences]
    names += sorted({person.sequence for person in people} - set(names))
    table_since = now - dt.timedelta(days=days)
    result = []
    for name in names:
        configured = settings.followups.steps_of(name)
        figures = SequenceFigures(name)
        mine = [person for person in people if person.sequence == name]
        largest = max([len(configured)] + [len(sent[p.enrollment_id]) for p in mine])
        figures.steps = [StepFigures(step, "before the first email" if step == 0 else
                                     (configured[step - 1].subject if step <= len(configured) else f"step {step}"))
                         for step in range(largest + 1)]
        for person in mine:
            if person.created_at < table_since:
                continue
            times = sorted(sent[person.enrollment_id].values())
            figures.enrolled += 1
            figures.status[person.status] += 1
            for step in sent[person.enrollment_id]:
                if step < largest:
                    figures.steps[step + 1].sent += 1
            if replies[person.enrollment_id]:
                _first, after = min(replies[person.enrollment_id])
                figures.steps[min(after, largest)].replied += 1
            if person.booked_at is not None:
                figures.steps[_steps_by(times, person.booked_at)].booked += 1
            if person.status == "stopped":
                figures.steps[_steps_by(times, person.stopped_at)].stopped[person.stop_reason or "unknown"] += 1
        figures.outcomes = [_outcome(mine, now, window) for window in WINDOWS]
        result.append(figures)
    return result


def _outcome(people: list[_Person], now: dt.datetime, days: int) -> Outcome:
    since = now - dt.timedelta(days=days)
    enrolled = [person for person in people if person.created_at >= since]
    waits = [(person.booked_at - person.received_at).total_seconds() / 86400 for person in enrolled
             if person.booked_at is not None and person.received_at is not None]
    booked = sum(1 for person in enrolled if person.booked_at is not None)
    return Outcome(days, len(enrolled), booked, round(statistics.median(waits), 1) if waits else None)
