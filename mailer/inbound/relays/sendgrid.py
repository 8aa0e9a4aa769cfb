"""SendGrid's Signed Event Webhook: the ECDSA (P-256, SHA-256) signature of timestamp + body checked with
the verification key, then the JSON array of events read."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from mailer.config import Settings
from mailer.inbound.evidence import Verdict
from mailer.inbound.relays.events import (
    Refused,
    RelayEvent,
    complaint,
    epoch,
    fresh,
    judged,
    known,
    message_id,
)

NAME = "sendgrid"
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
# SendGrid retries a batch it got no 2xx for during 72 hours. Every event is applied once by its
# sg_event_id whatever its age; older signatures are refused all the same.
MAX_AGE = dt.timedelta(days=4)
# SendGrid's bounce_classification, as the label its words are judged against (events.judged).
_CLASSIFICATIONS = {"Invalid Address": "hard", "Mailbox Unavailable": "soft", "Technical": "blocked",
                    "Content": "blocked", "Reputation": "blocked", "Frequency or Volume Too High": "blocked"}


class KeyProblem(ValueError):
    """MAILER_SENDGRID_PUBLIC_KEY is not an ECDSA P-256 public key in base64 DER; the message says why."""


def enabled(settings: Settings) -> bool:
    return bool(settings.sendgrid_public_key)


@functools.lru_cache(maxsize=4)
def public_key(text: str) -> ec.EllipticCurvePublicKey:
    """The verification key as SendGrid shows it (base64 of the DER SubjectPublicKeyInfo; PEM armour allowed)."""
    body = "".join(line for line in text.strip().splitlines() if not line.startswith("-----"))
    try:
        key = load_der_public_key(base64.b64decode("".join(body.split()), validate=True))
    except (binascii.Error, ValueError) as exc:
        raise KeyProblem("not a base64 DER public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise KeyProblem("not an ECDSA P-256 public key")
    return key


def verify(settings: Settings, signature: str, timestamp: str, body: bytes, now: dt.datetime) -> None:
    """The signature headers verify over timestamp + the raw body, and the timestamp is recent."""
    if not signature.strip() or not timestamp.strip():
        raise Refused(401, f"the {SIGNATURE_HEADER} and {TIMESTAMP_HEADER} headers are required")
    try:
        key = public_key(settings.sendgrid_public_key)
    except KeyProblem as exc:  # answered 503 so that SendGrid keeps the events and tries again
        raise Refused(503, f"MAILER_SENDGRID_PUBLIC_KEY: {exc}") from None
    try:
        key.verify(base64.b64decode(signature.strip(), validate=True), timestamp.strip().encode() + body,
                   ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        raise Refused(403, "the SendGrid signature does not verify") from None
    if not fresh(epoch(timestamp.strip()), now, MAX_AGE):
        raise Refused(403, "the SendGrid signature is too old (or from the future)")


def parse(body: bytes) -> list[Mapping[str, Any]]:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Refused(400, "the body is not valid JSON") from None
    if not isinstance(payload, list) or not all(isinstance(item, Mapping) for item in payload):
        raise Refused(400, "the body must be a JSON array of events")
    return payload


def events(payload: list[Mapping[str, Any]]) -> list[RelayEvent]:
    return [_event(item) for item in payload]


def _event(item: Mapping[str, Any]) -> RelayEvent:
    event = str(item.get("event") or "")
    key = str(item.get("sg_event_id") or "") or hashlib.sha256(
        json.dumps(item, sort_keys=True, default=str).encode()).hexdigest()
    reference = str(item.get("sg_event_id") or "")[:100]
    recipient = known(item.get("email"))
    at = epoch(item.get("timestamp"))
    our_id = message_id(item.get("smtp-id"))
    if event == "delivered":
        return RelayEvent(key, "delivered", recipient, occurred_at=at)
    if event == "deferred":
        return RelayEvent(key, "delayed", recipient, occurred_at=at)
    if event == "spamreport":
        return RelayEvent(key, "complaint", recipient, complaint(recipient, "feedback-type abuse from SendGrid", our_id),
                          at, reference)
    if event in ("unsubscribe", "group_unsubscribe"):
        return RelayEvent(key, "unsubscribe", recipient, occurred_at=at, reference=reference)
    if event == "dropped":
        return _dropped(item, key, recipient, at, reference, our_id)
    if event != "bounce":
        return RelayEvent(key, "ignored")  # processed, open, click, group_resubscribe, account events
    # type "bounce": the receiving server refused for good; "blocked": it refused this message for now.
    label = "blocked" if item.get("type") == "blocked" else "hard"
    label = _CLASSIFICATIONS.get(str(item.get("bounce_classification") or ""), label)
    verdict = judged(label, recipient, str(item.get("reason") or ""), status=str(item.get("status") or ""),  # type: ignore[arg-type]
                     message_id=our_id)
    return RelayEvent(key, "bounce", recipient, verdict, at, reference)


def _dropped(item: Mapping[str, Any], key: str, recipient: str | None, at: dt.datetime | None, reference: str,
             our_id: str | None) -> RelayEvent:
    """A message SendGrid did not send: only its own lists' reasons say something about the person."""
    reason = str(item.get("reason") or "")
    if reason == "Bounced Address":
        verdict = Verdict("address_bad", recipient, "relay_bounce_list", diagnostic=reason, message_id=our_id)
        return RelayEvent(key, "bounce", recipient, verdict, at, reference)
    if reason == "Invalid":
        verdict = Verdict("address_bad", recipient, "invalid_address", diagnostic=reason, message_id=our_id)
        return RelayEvent(key, "bounce", recipient, verdict, at, reference)
    if reason == "Spam Reporting Address":
        return RelayEvent(key, "complaint", recipient, complaint(recipient, "on SendGrid's spam report list", our_id),
                          at, reference)
    if reason == "Unsubscribed Address":
        return RelayEvent(key, "unsubscribe", recipient, occurred_at=at, reference=reference)
    return RelayEvent(key, "ignored")  # spam content, a bad SMTPAPI header, ...: about our message
