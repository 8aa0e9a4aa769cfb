"""Bookings reported by the clinic's scheduling system: the person's follow-ups stop by themselves.

A booking marks the person booked exactly as staff's "Mark booked" does (inquiries.close), dated when
it was made, for the figures. An address that is not an inquiry's changes nothing, and the caller is
told the same either way: the webhook must not reveal who is a contact.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer import audience
from mailer.config import Settings
from mailer.models import Contact, Inquiry
from mailer.outbound import notices
from mailer.sequences import inquiries

log = logging.getLogger("mailer.bookings")

MAX_SOURCE = 200
FUTURE_TOLERANCE = dt.timedelta(minutes=5)  # clocks differ a little; more is a wrong time
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class BookingError(Exception):
    """A bad field in a booking; the message is one line and starts with the field's name."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Booking:
    email: str
    booked_at: dt.datetime
    source: str


def read(payload: object, now: dt.datetime) -> Booking:
    """A booking from the webhook's JSON object, or BookingError naming the bad field. Other fields
    (scheduling systems send many) are ignored."""
    if not isinstance(payload, dict):
        raise BookingError(None, "the body must be a JSON object")
    email = payload.get("email")
    if not isinstance(email, str) or not email.strip():
        raise BookingError("email", "email: required (a string)")
    try:
        address = audience.normalize_email(email)
    except audience.AudienceError:
        raise BookingError("email", "email: not a valid email address") from None
    source = payload.get("source")
    if not isinstance(source, str) or not source.strip():
        raise BookingError("source", "source: required (a string naming the scheduling system)")
    source = source.strip()
    if len(source) > MAX_SOURCE:
        raise BookingError("source", f"source: longer than {MAX_SOURCE} characters")
    if _CONTROL.search(source):
        raise BookingError("source", "source: contains control characters")
    return Booking(address, _booked_at(payload.get("booked_at"), now), source)


def _booked_at(value: object, now: dt.datetime) -> dt.datetime:
    if value is None:
        return now
    if not isinstance(value, str):
        raise BookingError("booked_at", "booked_at: must be an ISO-8601 date and time (a string)")
    try:
        moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BookingError("booked_at", "booked_at: not an ISO-8601 date and time, e.g. 2026-11-20T17:04:00-06:00") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise BookingError("booked_at", "booked_at: needs a UTC offset, e.g. 2026-11-20T17:04:00-06:00")
    if moment > now + FUTURE_TOLERANCE:
        raise BookingError("booked_at", "booked_at: is in the future (it is when the booking was made)")
    return moment.astimezone(dt.UTC)


def record(session: Session, settings: Settings, booking: Booking, now: dt.datetime) -> bool:
    """Mark the person's open inquiries booked and stop their follow-ups; tell the front desk. False
    (nothing changed) for an address with no open inquiry: a stranger, or a repeat of this booking."""
    contact = session.scalar(select(Contact).where(Contact.email == booking.email))
    open_inquiries = [] if contact is None else session.scalars(
        select(Inquiry.id).where(Inquiry.contact_id == contact.id, Inquiry.status == "open")
        .order_by(Inquiry.received_at.desc(), Inquiry.id.desc())
    ).all()
    if contact is None or not open_inquiries:
        log.info("booking for an address with no open inquiry: nothing changed")
        return False
    stopped = inquiries.close(session, settings, booking.email, "booked", now, booked_at=booking.booked_at,
                              via=booking.source)
    notices.record(session, settings, "booked", now, inquiry_id=open_inquiries[0])
    log.info("booking for contact %s recorded: %d inquiries booked, %d sequences stopped", contact.id,
             len(open_inquiries), stopped)
    return True
