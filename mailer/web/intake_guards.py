"""Guards on the intake API: a limit per client address, and Idempotency-Key replays.

The website's form stays frictionless for people; what it must not become is a way to start follow-ups
to any address in bulk. Per client address (after web.trusted_proxies) at most
`web.intake_per_client_per_hour` requests an hour are taken (429 beyond). A request with an
`Idempotency-Key` header that was seen in the last 24 hours gets the first answer again, and nothing is
created; the key is kept as a keyed hash only. (At most one new enrollment per address per
`followups.duplicate_window` is the sequence's own rule, in inquiries.record_inquiry.)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from typing import Any

from flask import Request
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.models import IntakeKey
from mailer.web import security

KEY_HEADER = "Idempotency-Key"
KEY_LIFETIME = dt.timedelta(hours=24)
RATE_WINDOW = dt.timedelta(hours=1)
# Printable ASCII, as UUIDs and the keys of payment APIs are; long enough for any of them.
_KEY = re.compile(r"[\x21-\x7e]{1,255}")


class BadKey(ValueError):
    """The Idempotency-Key header is there but is not a usable key (the message is one line)."""


class KeyTaken(Exception):
    """Another request with the same key was answered a moment ago (its answer is the one to give)."""


def idempotency_key(request: Request) -> str | None:
    """The request's Idempotency-Key, None without one; BadKey when it is empty or not printable ASCII."""
    value = request.headers.get(KEY_HEADER)
    if value is None:
        return None
    value = value.strip()
    if not _KEY.fullmatch(value):
        raise BadKey(f"{KEY_HEADER}: expected 1 to 255 printable ASCII characters")
    return value


def key_hash(secret: str, key: str) -> str:
    """A keyed hash of the key: whatever the website uses as keys never lies in the database as it is."""
    return hmac.new(secret.encode(), f"intake-key\x1f{key}".encode(), hashlib.sha256).hexdigest()


def replay(session: Session, hashed: str, now: dt.datetime) -> tuple[dict[str, Any], int] | None:
    """The first answer given to this key within the last 24 hours, or None."""
    row = session.get(IntakeKey, hashed)
    if row is None or row.created_at <= now - KEY_LIFETIME:
        return None
    return row.answer, row.status


def remember(session: Session, hashed: str, answer: dict[str, Any], status: int, now: dt.datetime) -> None:
    """Keep this key's answer, in the transaction that created what it reports; KeyTaken when another
    request with the key won the race (the caller rolls back: nothing of this request is kept)."""
    stale = session.get(IntakeKey, hashed)
    if stale is not None:  # seen more than 24 hours ago: the key starts afresh
        session.delete(stale)
        session.flush()
    session.add(IntakeKey(key_hash=hashed, created_at=now, status=status, answer=answer))
    try:
        session.flush()
    except IntegrityError:
        raise KeyTaken() from None


def over_client_limit(session: Session, settings: Settings, client_ip: str | None, now: dt.datetime) -> bool:
    """Count this request for its client address; True when it is over web.intake_per_client_per_hour."""
    key = security.client_key(settings.secret_key, "intake", client_ip)
    return security.over_limit(session, key, settings.web.intake_per_client_per_hour, RATE_WINDOW, now)




