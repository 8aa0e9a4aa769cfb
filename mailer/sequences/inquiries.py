"""Inquiries coming in (the intake API, the staff page, CSV imports): validated, stored, and with consent
starting the follow-up sequence they match; and what staff do with them (close, the list, the purge)."""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailer import audience, names
from mailer.config import Settings, duration
from mailer.models import RUNNING, ConsentEvent, Contact, Enrollment, Inquiry
from mailer.sequences.followups import due_time
from mailer.spreadsheets import Sheet, SheetError

log = logging.getLogger("mailer.followups")

MAX_NAME = 200
MAX_SOURCE = 200
MAX_SERVICE = 200
MAX_CONSENT_TEXT = 2000
MAX_MESSAGE = 5000
# Clocks of the website and of this server differ a little; more than this is a wrong time, not drift.
FUTURE_TOLERANCE = dt.timedelta(minutes=5)

# A new inquiry, with its own fresh consent, may start the sequence again only after these endings.
# Everything else (unsubscribed, consent_withdrawn, suppressed, erased, ...) was the person saying no,
# or their address failing: a form anyone can fill in with anyone's address must not undo that.
RESTARTABLE = frozenset({"completed", "booked", "closed", "consent_expired"})

CSV_COLUMNS = ("email", "name", "consent", "consent_text", "source", "received_at")
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})

# One-line fields allow no control characters; free text keeps tabs and line breaks.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_MULTILINE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class InquiryError(Exception):
    """Bad inquiry input or an unknown inquiry; the message is one line and names the field."""


@dataclass(frozen=True)
class InquiryOutcome:
    inquiry_id: int
    contact_id: int
    enrolled: bool
    duplicate: bool


@dataclass
class ImportReport:
    """What an import did. Every data line is counted once: imported, duplicate or rejected."""

    imported: int = 0
    duplicates: int = 0
    enrolled: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class InquiryStatus:
    """One row of the staff page. `next_step == steps` on an active enrollment: all sent, finishing."""

    inquiry_id: int
    name: str
    email: str
    received_at: dt.datetime
    consent: bool
    status: str
    enrollment_status: str | None
    stop_reason: str | None
    next_step: int | None
    next_due_at: dt.datetime | None
    sequence: str | None = None
    paused_at: dt.datetime | None = None


# --- validation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fields:
    email: str
    name: str
    consent: bool
    consent_text: str
    source: str
    received_at: dt.datetime
    message: str
    service: str = ""


def _address(value: object) -> str:
    if not isinstance(value, str):
        raise InquiryError("email: must be text")
    try:
        return audience.normalize_email(value)
    except audience.AudienceError:
        raise InquiryError("email: not a valid email address") from None


def _text(name: str, value: object, *, limit: int, required: bool = False, multiline: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InquiryError(f"{name}: must be text")
    text = value.strip()
    if required and not text:
        raise InquiryError(f"{name}: required")
    if len(text) > limit:
        raise InquiryError(f"{name}: longer than {limit} characters")
    if (_CONTROL_MULTILINE if multiline else _CONTROL).search(text):
        raise InquiryError(f"{name}: contains control characters")
    return text


def _name(value: object) -> str:
    """The inquirer's name by mailer.names' rules (it is shown to staff and greets the person)."""
    text = _text("name", value, limit=MAX_NAME)
    try:
        return names.check(text)
    except names.NotAName as exc:
        raise InquiryError(f"name: {exc}") from None


def _received_at(value: object, now: dt.datetime) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise InquiryError("received_at: must be a date and time")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InquiryError("received_at: needs a UTC offset, e.g. 2026-11-20T17:04:00-06:00")
    if value > now + FUTURE_TOLERANCE:
        raise InquiryError("received_at: is in the future")
    return value.astimezone(dt.UTC)


def _validate(*, email: object, name: object, consent: object, consent_text: object, source: object,
              received_at: object, message: object, now: dt.datetime, service: object = "") -> _Fields:
    if not isinstance(consent, bool):
        raise InquiryError("consent: must be true or false")
    return _Fields(
        email=_address(email),
        name=_name(name),
        consent=consent,
        consent_text=_text("consent_text", consent_text, limit=MAX_CONSENT_TEXT, required=consent,
                           multiline=True),
        source=_text("source", source, limit=MAX_SOURCE, required=True),
        received_at=_received_at(received_at, now),
        message=_text("message", message, limit=MAX_MESSAGE, multiline=True),
        service=_text("service", service, limit=MAX_SERVICE),
    )


# --- recording inquiries -------------------------------------------------------------------------


def record_inquiry(
    session: Session,
    settings: Settings,
    *,
    email: str,
    name: str,
    consent: bool,
    consent_text: str,
    source: str,
    received_at: dt.datetime,
    now: dt.datetime,
    message: str = "",
    request: audience.RequestInfo | None = None,
    service: str = "",
) -> InquiryOutcome:
    """Store an inquiry; with consent, record the grant in the ledger and start its sequence (the first
    of followups.sequences whose `match` names the inquiry's source or service, else "default").

    The inquiry is always stored (staff follow it up by hand). With consent=True the ledger gets a
    "followups" grant, dated `received_at`, with the wording the person saw; then the sequence starts
    unless one of these holds (the inquiry is stored all the same):

    - an enrollment of this contact was created within `followups.duplicate_window`: a website
      retry or a double click (`duplicate=True`);
    - the address is suppressed (unsubscribed, bounced, erased): an inquiry form cannot undo that;
    - an enrollment of any sequence is running (active, or paused by a reply): one sequence at a time,
      the running one keeps its schedule;
    - a sequence completed less than `followups.restart_after` (after its last step) ago;
    - an earlier enrollment was stopped for a reason outside RESTARTABLE (unsubscribe, withdrawal of
      follow-up consent, suppression, ...): a stopped sequence never restarts by itself. One that
      completed, or ended because the person booked, the inquiry was closed or the consent expired,
      may start again with a new inquiry and its fresh consent, once the duplicate window has passed;
    - the consent is already older than `followups.consent_valid_days` (an old imported inquiry).

    The same inquiry received again (same contact, time, source and consent, e.g. a CSV imported
    twice) is not stored twice: its first record is returned with `duplicate=True`.

    consent=False stores the inquiry only: no ledger grant, no sequence, nothing is ever sent. It
    is not a withdrawal either: a running sequence from an earlier, consented inquiry continues.
    """
    fields = _validate(email=email, name=name, consent=consent, consent_text=consent_text, source=source,
                       received_at=received_at, message=message, now=now, service=service)
    contact, _ = audience.get_or_create_contact(session, fields.email, fields.name, now)
    repeat = _same_inquiry(session, contact, fields)
    if repeat is not None:
        log.info("inquiry %s of contact %s received again; nothing new stored", repeat.id, contact.id)
        return InquiryOutcome(repeat.id, contact.id, enrolled=False, duplicate=True)

    grant = None
    if fields.consent:
        # The sent text is what the form says it showed; the clinic's published wording is kept beside it.
        grant = audience.grant_followups(session, contact, source=fields.source, wording=fields.consent_text,
                                         now=fields.received_at, request=request,
                                         published_wording=settings.followups.consent_wording or None)
    inquiry = Inquiry(
        contact_id=contact.id, name=fields.name, source=fields.source, consent=fields.consent,
        consent_text=fields.consent_text, consent_event_id=grant.id if grant else None, message=fields.message,
        received_at=fields.received_at, created_at=now, last_activity_at=fields.received_at, status="open",
        service=fields.service,
    )
    session.add(inquiry)
    session.flush()

    decision = "no consent"
    sequence = settings.followups.choose(fields.source, fields.service)
    if grant is not None:
        decision = _enrollment_decision(session, settings, contact, fields.received_at, now,
                                        sequence.name if sequence else None)
        if decision == "enroll" and not _enroll(session, settings, contact, inquiry, grant, now, sequence.name):
            decision = "duplicate"  # a concurrent request enrolled the same person a moment ago
    enrolled = decision == "enroll"
    log.info("inquiry %s recorded for contact %s: %s", inquiry.id, contact.id,
             "follow-ups scheduled" if enrolled else f"no follow-ups ({decision})")
    return InquiryOutcome(inquiry.id, contact.id, enrolled=enrolled, duplicate=decision == "duplicate")


def _same_inquiry(session: Session, contact: Contact, fields: _Fields) -> Inquiry | None:
    return session.scalars(
        select(Inquiry).where(
            Inquiry.contact_id == contact.id,
            Inquiry.received_at == fields.received_at,
            Inquiry.source == fields.source,
            Inquiry.consent == fields.consent,
        ).limit(1)
    ).first()


def _enrollment_decision(session: Session, settings: Settings, contact: Contact, received_at: dt.datetime,
                         now: dt.datetime, sequence: str | None) -> str:
    """"enroll", or why not (a short phrase for the log; "duplicate" is reported to the caller).
    Every sequence's enrollments count: a stop or a running sequence in one holds for all."""
    followups = settings.followups
    if sequence is None:
        return "no sequence for this inquiry"
    enrollments = session.scalars(select(Enrollment).where(Enrollment.contact_id == contact.id)).all()
    if any(e.created_at > now - duration(followups.duplicate_window) for e in enrollments):
        return "duplicate"
    if audience.suppression_for(session, settings.secret_key, contact) is not None:
        return "suppressed"
    if any(e.status in RUNNING for e in enrollments):
        return "already active"
    if any(e.status == "stopped" and e.stop_reason not in RESTARTABLE for e in enrollments):
        return "stopped earlier"
    restart_after = duration(followups.restart_after)
    if any(e.status == "completed" and (e.last_sent_at or e.created_at) > now - restart_after for e in enrollments):
        return "completed within restart_after"
    if now - received_at > dt.timedelta(days=followups.consent_valid_days):
        return "consent expired"
    return "enroll"


def _enroll(session: Session, settings: Settings, contact: Contact, inquiry: Inquiry, grant: ConsentEvent,
            now: dt.datetime, sequence: str) -> bool:
    enrollment = Enrollment(
        contact_id=contact.id, inquiry_id=inquiry.id, sequence=sequence, status="active", next_step=0,
        next_due_at=due_time(settings, inquiry.received_at, 0, None, sequence), anchor_at=inquiry.received_at,
        last_sent_at=None, consent_event_id=grant.id, created_at=now, resumes=0,
    )
    try:
        # The partial unique index (one running enrollment per contact) is the final word when two
        # requests for the same address race; the savepoint keeps the inquiry itself.
        with session.begin_nested():
            session.add(enrollment)
    except IntegrityError:
        return False
    return True


# --- staff actions -------------------------------------------------------------------------------


def close(session: Session, settings: Settings, email: str, reason: Literal["booked", "closed"],
          now: dt.datetime, *, booked_at: dt.datetime | None = None, via: str = "staff") -> int:
    """The contact booked, or staff closed the inquiry: mark their open inquiries and stop their
    sequence (running or paused) at once (a message already queued is skipped by delivery's re-check).
    A booking is dated `booked_at` (default now) for the figures, with what it came through. Returns
    how many sequences were stopped."""
    if reason not in ("booked", "closed"):
        raise InquiryError("reason: must be booked or closed")
    address = _address(email)
    contact = session.scalar(select(Contact).where(Contact.email == address))
    inquiries = [] if contact is None else session.scalars(
        select(Inquiry).where(Inquiry.contact_id == contact.id)).all()
    if contact is None or not inquiries:
        raise InquiryError(f"no inquiry from {address}")
    marked = 0
    for inquiry in inquiries:
        if inquiry.status == "open":
            inquiry.status = reason
            inquiry.closed_at = now
            inquiry.last_activity_at = now
            if reason == "booked":
                inquiry.booked_at = booked_at or now
                inquiry.booked_via = via[:MAX_SOURCE]
            marked += 1
    stopped = audience.stop_enrollments(session, contact.id, reason, now)
    log.info("contact %s marked %s: %d inquiries, %d sequences stopped", contact.id, reason, marked, stopped)
    return stopped


def purge_inactive(session: Session, settings: Settings, now: dt.datetime) -> int:
    """Delete inquiries (and so their messages) with no activity for retention_days, unless their
    sequence is still running. The consent ledger keeps its rows; enrollments lose their link."""
    cutoff = now - dt.timedelta(days=settings.followups.retention_days)
    running = (select(Enrollment.id)
               .where(Enrollment.inquiry_id == Inquiry.id, Enrollment.status.in_(RUNNING))
               .exists())
    result = session.execute(
        delete(Inquiry).where(Inquiry.last_activity_at < cutoff, ~running)
        .execution_options(synchronize_session=False)
    )
    purged = result.rowcount or 0
    if purged:
        log.info("%d inquiries older than %d days purged", purged, settings.followups.retention_days)
    return purged


def status_rows(session: Session, limit: int = 200) -> list[InquiryStatus]:
    """The newest inquiries with their sequence state, for the staff pages (never the message)."""
    rows = session.execute(
        select(
            Inquiry.id, Inquiry.name, Contact.name, Contact.email, Inquiry.received_at, Inquiry.consent,
            Inquiry.status, Enrollment.status, Enrollment.stop_reason, Enrollment.next_step, Enrollment.next_due_at,
            Enrollment.sequence, Enrollment.paused_at,
        )
        .join(Contact, Contact.id == Inquiry.contact_id)
        .outerjoin(Enrollment, Enrollment.inquiry_id == Inquiry.id)
        .order_by(Inquiry.received_at.desc(), Inquiry.id.desc())
        .limit(limit)
    ).all()
    return [
        InquiryStatus(inquiry_id=row[0], name=row[1] or row[2] or "", email=row[3], received_at=row[4],
                      consent=row[5], status=row[6], enrollment_status=row[7], stop_reason=row[8],
                      next_step=row[9], next_due_at=row[10], sequence=row[11], paused_at=row[12])
        for row in rows
    ]


# --- CSV import ----------------------------------------------------------------------------------


def import_csv(session: Session, settings: Settings, source: str | Path | TextIO, now: dt.datetime) -> ImportReport:
    """Import inquiries from CSV (columns: email,name,consent,consent_text,source,received_at).

    Each line is validated like record_inquiry and stored in its own savepoint: a bad line is
    reported (line number and reason) and skipped, the good lines are imported. A file whose columns
    are wrong raises InquiryError naming them. `source` is a path or an open text stream.
    """
    if isinstance(source, str | Path):
        try:
            with open(source, encoding="utf-8-sig", newline="") as stream:
                return _import_stream(session, settings, stream, now)
        except FileNotFoundError:
            raise InquiryError(f"{source}: file not found") from None
        except UnicodeDecodeError:
            raise InquiryError(f"{source}: not UTF-8 text") from None
        except OSError as exc:
            raise InquiryError(f"{source}: cannot read: {exc.strerror or exc}") from None
    try:
        return _import_stream(session, settings, source, now)
    except UnicodeDecodeError:
        raise InquiryError("the file is not UTF-8 text") from None


def _check_columns(names: list[str]) -> None:
    problems = []
    missing = [column for column in CSV_COLUMNS if column not in names]
    unknown = [name for name in names if name not in CSV_COLUMNS]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if missing:
        problems.append("missing columns: " + ", ".join(missing))
    if unknown:
        problems.append("unknown columns: " + ", ".join(name or "(empty)" for name in unknown))
    if repeated:
        problems.append("repeated columns: " + ", ".join(repeated))
    if problems:
        raise InquiryError("; ".join(problems) + f" (expected {','.join(CSV_COLUMNS)})")


def _parse_consent(value: str) -> bool:
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise InquiryError("consent: must be true or false (or yes/no, 1/0)")


def _parse_time(value: str) -> dt.datetime:
    text = value.strip()
    if not text:
        raise InquiryError("received_at: required")
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InquiryError("received_at: not an ISO-8601 date and time, e.g. 2026-11-20T17:04:00-06:00") from None
    if moment.tzinfo is None:
        raise InquiryError("received_at: needs a UTC offset, e.g. 2026-11-20T17:04:00-06:00")
    return moment


def _import_stream(session: Session, settings: Settings, stream: TextIO, now: dt.datetime) -> ImportReport:
    try:
        sheet = Sheet(stream)
    except SheetError as exc:
        raise InquiryError(f"{exc} (expected columns {','.join(CSV_COLUMNS)})") from None
    _check_columns(sheet.names)
    report = ImportReport()
    for line, values in sheet.records(report.rejected):
        try:
            with session.begin_nested():
                outcome = record_inquiry(
                    session, settings, email=values["email"], name=values["name"],
                    consent=_parse_consent(values["consent"]), consent_text=values["consent_text"],
                    source=values["source"], received_at=_parse_time(values["received_at"]), now=now,
                )
        except InquiryError as exc:
            report.rejected.append((line, str(exc)))
            continue
        if outcome.duplicate:
            report.duplicates += 1
        else:
            report.imported += 1
        report.enrolled += outcome.enrolled
    log.info("inquiry import: %d imported, %d duplicates, %d enrolled, %d rejected", report.imported,
             report.duplicates, report.enrolled, len(report.rejected))
    return report
