"""Signed tokens and the absolute URLs put in emails.

A token names a contact by its id and proves it with an HMAC over the contact's random link key, so it
reveals no address, cannot be forged or edited, and dies with the contact (erasure deletes the key).
Confirmation tokens also carry their issue time and expire.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import hmac
import re
from dataclasses import dataclass

PURPOSES = ("unsubscribe", "preferences", "confirm", "not-me")
_TOKEN = re.compile(r"^([0-9]{1,19})(?:\.([0-9]{1,12}))?\.([A-Za-z0-9_-]{22})$")


@functools.lru_cache(maxsize=8)
def keyed(secret: str) -> hmac.HMAC:
    """An HMAC-SHA256 keyed with `secret` and fed nothing: copy() it per message (the key's two hash
    blocks are not computed again; a send makes three MACs per recipient). Never update it itself."""
    return hmac.new(secret.encode(), digestmod=hashlib.sha256)


def _mac(secret: str, *parts: str) -> str:
    mac = keyed(secret).copy()
    mac.update("\x1f".join(parts).encode())
    return base64.urlsafe_b64encode(mac.digest()[:16]).rstrip(b"=").decode()


def make_token(secret: str, purpose: str, contact_id: int, link_key: str, issued: dt.datetime | None = None) -> str:
    """A token for one contact and one purpose; `issued` (for expiring tokens) is part of what is signed."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown link purpose {purpose!r}")
    if issued is None:
        return f"{contact_id}.{_mac(secret, purpose, str(contact_id), link_key)}"
    stamp = str(int(issued.timestamp()))
    return f"{contact_id}.{stamp}.{_mac(secret, purpose, str(contact_id), link_key, stamp)}"


@dataclass(frozen=True)
class ParsedToken:
    contact_id: int
    issued: dt.datetime | None
    mac: str


def parse_token(token: str) -> ParsedToken | None:
    """The token's parts, or None when it is not even shaped like one (nothing looked up)."""
    match = _TOKEN.match(token or "")
    if not match:
        return None
    stamp = match.group(2)
    issued = dt.datetime.fromtimestamp(int(stamp), dt.UTC) if stamp else None
    return ParsedToken(int(match.group(1)), issued, match.group(3))


def verify_token(secret: str, purpose: str, parsed: ParsedToken, link_key: str) -> bool:
    """Constant-time check that the token was made by us for this contact and purpose."""
    parts = [purpose, str(parsed.contact_id), link_key]
    if parsed.issued is not None:
        parts.append(str(int(parsed.issued.timestamp())))
    return hmac.compare_digest(parsed.mac, _mac(secret, *parts))


@dataclass(frozen=True)
class Links:
    """Absolute URLs under the public base URL."""

    base_url: str
    secret: str

    def unsubscribe(self, contact_id: int, link_key: str) -> str:
        return f"{self.base_url}/unsubscribe/{make_token(self.secret, 'unsubscribe', contact_id, link_key)}"

    def preferences(self, contact_id: int, link_key: str) -> str:
        return f"{self.base_url}/preferences/{make_token(self.secret, 'preferences', contact_id, link_key)}"

    def confirm(self, contact_id: int, link_key: str, issued: dt.datetime) -> str:
        return f"{self.base_url}/confirm/{make_token(self.secret, 'confirm', contact_id, link_key, issued)}"

    def not_me(self, contact_id: int, link_key: str) -> str:
        """"Didn't contact us? Let us know": stops everything for the address (the first follow-up carries it)."""
        return f"{self.base_url}/not-me/{make_token(self.secret, 'not-me', contact_id, link_key)}"


def email_hash(secret: str, normalized_email: str) -> str:
    """The keyed hash that stands for an address in the suppression list (and outlives erasure)."""
    return hmac.new(secret.encode(), normalized_email.encode(), hashlib.sha256).hexdigest()
