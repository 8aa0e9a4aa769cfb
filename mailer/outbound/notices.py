"""Front-desk notifications: events gathered for a few minutes into one short email per staff address.

An event (a new inquiry, a person's reply, a booking, a newsletter draft waiting for approval) joins
the staff address's notice whose outbox row still waits (due `notify.gather_minutes` after its first
event), or starts a new one. The email is written when it is sent, from ids: the person's name (or
"someone") and a link to the staff page; never what they wrote, never their address, never a source,
service or sequence name (those can name a treatment). It is not marketing: no unsubscribe footer.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer import audience
from mailer.config import Settings
from mailer.links import email_hash
from mailer.models import Campaign, Contact, Inquiry, OutboxMessage, StaffNotice
from mailer.outbound import outbox
from mailer.outbound.messages import PreparedMessage
from mailer.text import one_line

if TYPE_CHECKING:
    from mailer.publishing.render import Renderer

log = logging.getLogger("mailer.notify")

KIND = "notice"
TEMPLATE = "email/system/notify"
# A notice lists at most this many events; the rest are counted ("and 12 more").
SHOWN = 30
# What each event is called in a subject: (one, several).
NOUNS = {"inquiry": ("new inquiry", "new inquiries"), "reply": ("reply", "replies"),
         "booked": ("booking", "bookings"), "draft": ("newsletter draft", "newsletter drafts")}


def record(session: Session, settings: Settings, event: str, now: dt.datetime, *, inquiry_id: int | None = None,
           campaign_id: int | None = None) -> int:
    """Note an event for every staff address that wants it (notify.staff, notify.events), in the caller's
    transaction. Returns how many notices it went into."""
    notify = settings.notify
    if event not in notify.events or not notify.staff:
        return 0
    item: dict[str, object] = {"event": event, "at": now.isoformat()}
    if inquiry_id is not None:
        item["inquiry_id"] = inquiry_id
    if campaign_id is not None:
        item["campaign_id"] = campaign_id
    gathered = 0
    for address in dict.fromkeys(audience.normalize_email(a) for a in notify.staff):
        notice = _open_notice(session, address, now)
        if notice is None:
            _start_notice(session, address, item, now, now + dt.timedelta(minutes=notify.gather_minutes))
        else:
            notice.events = [*notice.events, item]  # a new list: the JSON column sees the change
            gathered += 1
    log.info("staff notified of %s (%d addresses, %d joined a waiting notice)", event, len(notify.staff), gathered)
    return len(notify.staff)


def _open_notice(session: Session, address: str, now: dt.datetime) -> StaffNotice | None:
    """This address's notice whose email still waits, its outbox row locked: a delivery claiming it now
    either waits for this transaction (and then sends the event with the rest) or has it already (and
    the row is no longer queued, so the event starts a notice of its own)."""
    return session.scalar(
        select(StaffNotice)
        .join(OutboxMessage, OutboxMessage.id == StaffNotice.outbox_id)
        .where(StaffNotice.recipient == address, OutboxMessage.state == "queued", OutboxMessage.due_at > now)
        .order_by(StaffNotice.id.desc())
        .limit(1)
        .with_for_update(of=OutboxMessage)
    )


def _start_notice(session: Session, address: str, item: dict[str, object], now: dt.datetime,
                  due_at: dt.datetime) -> StaffNotice:
    notice = StaffNotice(recipient=address, events=[item], created_at=now)
    session.add(notice)
    session.flush()
    key = f"n:{notice.id}"
    outbox.enqueue_one(session, dedupe_key=key, kind=KIND, contact_id=None, consent_event_id=None, now=now,
                       due_at=due_at)
    notice.outbox_id = session.scalar(select(OutboxMessage.id).where(OutboxMessage.dedupe_key == key))
    return notice


# --- the email -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One event as the email shows it."""

    text: str
    url: str | None


@dataclass(frozen=True)
class Notice:
    """A notice ready to send: its recipient, the keyed hash the suppression list knows them by, its message."""

    recipient: str
    recipient_hash: str
    message: PreparedMessage


def _name(settings: Settings, *candidates: str | None) -> str:
    """The person's name as staff know it, or "someone"; a name holding a sensitive word is not shown."""
    name = next((one_line(c) for c in candidates if c and one_line(c)), "")
    words = settings.privacy.sensitive_words
    if not name or any(re.search(rf"\b{re.escape(w)}\b", name, re.I) for w in words):
        return "someone"
    return name[:80]


def _line(session: Session, settings: Settings, item: dict[str, object]) -> Line:
    base = settings.web.base_url
    event = item.get("event")
    if event == "draft":
        campaign_id = item.get("campaign_id")
        exists = isinstance(campaign_id, int) and session.get(Campaign, campaign_id) is not None
        return Line("A newsletter draft is waiting for approval.",
                    f"{base}/admin/campaigns/{campaign_id}" if exists else None)
    inquiry_id = item.get("inquiry_id")
    inquiry = session.get(Inquiry, inquiry_id) if isinstance(inquiry_id, int) else None
    contact = session.get(Contact, inquiry.contact_id) if inquiry is not None else None
    who = _name(settings, inquiry.name if inquiry else None, contact.name if contact else None)
    who = who[0].upper() + who[1:]
    text = {"inquiry": f"{who} sent a new inquiry.",
            "reply": f"{who} replied to a follow-up email; their follow-ups are paused until someone decides.",
            "booked": f"{who} booked; their follow-ups are stopped."}.get(str(event), f"{who}: {event}.")
    return Line(text, f"{base}/admin/inquiries/{inquiry_id}" if inquiry is not None else None)


def subject(settings: Settings, events: list[dict[str, object]]) -> str:
    counts = Counter(str(item.get("event")) for item in events)
    parts = [f"{n} {NOUNS.get(kind, (kind, kind))[0 if n == 1 else 1]}" for kind, n in counts.items()]
    return f"{settings.clinic.name}: {', '.join(parts)}"


def prepare(session: Session, settings: Settings, renderer: Renderer, outbox_id: int) -> Notice:
    """The notice sent as outbox row `outbox_id`, written from what the database says now."""
    notice = session.scalar(select(StaffNotice).where(StaffNotice.outbox_id == outbox_id))
    if notice is None:
        raise LookupError(f"staff notice of outbox message {outbox_id} is gone")
    events = list(notice.events or [])
    lines = [_line(session, settings, item) for item in events[:SHOWN]]
    message = renderer.prepare(TEMPLATE, subject=subject(settings, events), preheader=lines[0].text if lines else "",
                               marketing=False, lines=lines, more=max(0, len(events) - SHOWN))
    return Notice(notice.recipient, email_hash(settings.secret_key, notice.recipient), message)

