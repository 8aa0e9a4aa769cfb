"""The access log: who saw an inquiry's message, and who suppressed, erased, approved or changed an account or wording.

Rows are only ever added (the database refuses UPDATE and DELETE on the table). They hold ids and staff
addresses, never a contact's address or an inquiry's words, so the log can be kept and exported whole.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer.models import AccessEntry

MESSAGE_VIEWED = "message_viewed"
SUPPRESSED = "suppressed"
ERASED = "erased"
APPROVED = "approved"
STAFF_ADDED = "staff_added"
ROLE_CHANGED = "role_changed"
STAFF_DISABLED = "staff_disabled"
STAFF_ENABLED = "staff_enabled"
WORDING_SAVED = "wording_saved"  # a follow-up step's wording: which step and version, in `detail`
ACTIONS = (MESSAGE_VIEWED, SUPPRESSED, ERASED, APPROVED, STAFF_ADDED, ROLE_CHANGED, STAFF_DISABLED, STAFF_ENABLED,
           WORDING_SAVED)
# The actor of what the service does by itself (an automatic approval, a bounce's suppression).
SYSTEM = "system"


def record(session: Session, *, actor: str, action: str, now: dt.datetime, inquiry_id: int | None = None,
           contact_id: int | None = None, campaign_id: int | None = None, staff_id: int | None = None,
           detail: str = "") -> AccessEntry:
    """Append one entry in the caller's transaction: it exists exactly when what it records happened."""
    if action not in ACTIONS:
        raise ValueError(f"unknown access log action {action!r}")
    entry = AccessEntry(at=now, actor=(actor or SYSTEM)[:320], action=action, inquiry_id=inquiry_id,
                        contact_id=contact_id, campaign_id=campaign_id, staff_id=staff_id, detail=detail[:300])
    session.add(entry)
    session.flush()
    return entry


def message_views(session: Session, inquiry_id: int) -> list[AccessEntry]:
    """Every time this inquiry's message was shown, newest first."""
    return list(session.scalars(
        select(AccessEntry).where(AccessEntry.inquiry_id == inquiry_id, AccessEntry.action == MESSAGE_VIEWED)
        .order_by(AccessEntry.at.desc(), AccessEntry.id.desc())
    ))


def entries_since(session: Session, since: dt.datetime, batch: int = 1000) -> Iterator[AccessEntry]:
    """Entries at or after `since`, oldest first, read in batches (the log only grows)."""
    after_id = 0
    while True:
        rows = list(session.scalars(
            select(AccessEntry).where(AccessEntry.at >= since, AccessEntry.id > after_id)
            .order_by(AccessEntry.id).limit(batch)
        ))
        yield from rows
        if len(rows) < batch:
            return
        after_id = rows[-1].id


def as_json(entry: AccessEntry) -> dict[str, object]:
    """One entry as a JSON-ready object (what `mailer audit export` prints, one per line)."""
    return {"id": entry.id, "at": entry.at.isoformat(), "actor": entry.actor, "action": entry.action,
            "inquiry_id": entry.inquiry_id, "contact_id": entry.contact_id, "campaign_id": entry.campaign_id,
            "staff_id": entry.staff_id, "detail": entry.detail}
