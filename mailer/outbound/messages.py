"""Message-IDs: made for every outbox message and read back from bounces and replies, in one place.

Ours look like `<123.1f2e3d4c5b6a7988@clinic.example>`: the outbox id, then a keyed tag of it. The id
finds the outbox row without an index on the header; the tag (HMAC with the secret key) means a
stranger cannot forge a reference to someone else's message, and a relay that rewrites Message-IDs
simply gives nothing back (callers then match by address).
"""

from __future__ import annotations

import hmac
import re

from mailer.links import keyed

_OURS = re.compile(r"<(\d{1,18})\.([0-9a-f]{16})@[^<>\s]+>")
_ANY = re.compile(r"<[^<>\s@]+@[^<>\s]+>")
TAG_LENGTH = 16


def _tag(secret: str, outbox_id: int) -> str:
    mac = keyed(secret).copy()
    mac.update(f"mid:{outbox_id}".encode())
    return mac.hexdigest()[:TAG_LENGTH]


def make_message_id(secret: str, outbox_id: int, domain: str) -> str:
    """The Message-ID of outbox message `outbox_id`, under the sender's domain."""
    return f"<{outbox_id}.{_tag(secret, outbox_id)}@{domain}>"


def outbox_id_of(secret: str, message_id: str | None) -> int | None:
    """The outbox id a Message-ID of ours names, or None (not ours, or its tag does not verify)."""
    found = _OURS.fullmatch((message_id or "").strip())
    if not found:
        return None
    outbox_id = int(found.group(1))
    return outbox_id if hmac.compare_digest(found.group(2), _tag(secret, outbox_id)) else None


def message_ids_in(value: str | None) -> list[str]:
    """The `<...@...>` ids in a Message-ID, In-Reply-To or References header, in order, each once."""
    return list(dict.fromkeys(_ANY.findall(value or "")))


def replied_to(secret: str, in_reply_to: str | None, references: str | None) -> list[int]:
    """The outbox ids of our messages that a reply answers, the most direct first.

    In-Reply-To names the message answered; References lists the thread oldest first, so it is read
    from its end. Clients that drop one of the two still leave the other.
    """
    found: list[int] = []
    for message_id in [*message_ids_in(in_reply_to), *reversed(message_ids_in(references))]:
        outbox_id = outbox_id_of(secret, message_id)
        if outbox_id is not None and outbox_id not in found:
            found.append(outbox_id)
    return found
