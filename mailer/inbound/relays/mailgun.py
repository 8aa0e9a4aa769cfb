"""Mailgun's webhooks: the HMAC-SHA256 signature of timestamp and token checked, then its events read.

Two shapes: the current one (JSON with "signature" and "event-data") and the legacy one (form fields,
the signature fields among them). The signing key is Mailgun's "HTTP webhook signing key".
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

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

NAME = "mailgun"
TOKENS = "mailgun-token"  # where request tokens are remembered (events.claim), apart from the events
# Mailgun retries a request it got no 2xx for during 8 hours, with the signature it made first: older
# signatures are refused. Every token is remembered far longer (events.KEPT_FOR), so none works twice.
MAX_AGE = dt.timedelta(hours=12)
# Mailgun's own codes for messages it did not send because of its suppression lists.
_PREVIOUSLY_BOUNCED, _UNSUBSCRIBED, _COMPLAINED = "605", "606", "607"


def enabled(settings: Settings) -> bool:
    return bool(settings.mailgun_signing_key)


def signature_of(payload: Mapping[str, Any]) -> tuple[str, str, str]:
    """(timestamp, token, signature): the current shape's "signature" object, else the legacy fields."""
    block = payload.get("signature")
    source = block if isinstance(block, Mapping) else payload
    values = tuple(source.get(name) for name in ("timestamp", "token", "signature"))
    if not all(isinstance(value, str | int) and str(value) for value in values):
        raise Refused(401, "the Mailgun signature (timestamp, token, signature) is missing")
    return str(values[0]), str(values[1]), str(values[2])


def verify(settings: Settings, timestamp: str, token: str, signature: str, now: dt.datetime) -> None:
    """HMAC-SHA256 of timestamp + token with the signing key, and a timestamp within MAX_AGE of now."""
    expected = hmac.new(settings.mailgun_signing_key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256)
    if not hmac.compare_digest(expected.hexdigest(), signature.strip().lower()):
        raise Refused(403, "the Mailgun signature does not match")
    if not fresh(epoch(timestamp), now, MAX_AGE):
        raise Refused(403, "the Mailgun signature is too old (or from the future)")


def events(payload: Mapping[str, Any], token: str) -> list[RelayEvent]:
    """The event a request carries: the current shape's "event-data", else the legacy fields."""
    data = payload.get("event-data")
    if isinstance(data, Mapping):
        return [_current(data)]
    return [_legacy(payload, token)]


def _current(data: Mapping[str, Any]) -> RelayEvent:
    event = str(data.get("event") or "")
    recipient = known(data.get("recipient"))
    at = epoch(data.get("timestamp"))
    reference = str(data.get("id") or "")
    key = f"{reference}:{data.get('timestamp')}:{event}"  # Mailgun's ids are unique within a day only
    message = data.get("message") if isinstance(data.get("message"), Mapping) else {}
    headers = message.get("headers") if isinstance(message.get("headers"), Mapping) else {}
    our_id = message_id(headers.get("message-id"))
    if event == "delivered":
        return RelayEvent(key, "delivered", recipient, occurred_at=at)
    if event == "complained":
        return RelayEvent(key, "complaint", recipient, complaint(recipient, "feedback-type abuse from Mailgun", our_id),
                          at, reference)
    if event == "unsubscribed":
        return RelayEvent(key, "unsubscribe", recipient, occurred_at=at, reference=reference)
    if event != "failed":
        return RelayEvent(key, "ignored")  # accepted, opened, clicked, stored, rejected (our request)
    if data.get("severity") != "permanent":
        return RelayEvent(key, "delayed", recipient, occurred_at=at)  # Mailgun tries again; its last word counts
    status = data.get("delivery-status") if isinstance(data.get("delivery-status"), Mapping) else {}
    reason = str(data.get("reason") or "")
    code = str(status.get("code") or "")
    words = str(status.get("message") or status.get("description") or "")
    if reason == "suppress-unsubscribe" or code == _UNSUBSCRIBED:
        return RelayEvent(key, "unsubscribe", recipient, occurred_at=at, reference=reference)
    if reason == "suppress-complaint" or code == _COMPLAINED:
        verdict = complaint(recipient, "on Mailgun's complaint list", our_id)
        return RelayEvent(key, "complaint", recipient, verdict, at, reference)
    if reason == "suppress-bounce" or code == _PREVIOUSLY_BOUNCED:
        verdict = Verdict("address_bad", recipient, "relay_bounce_list", diagnostic=words, message_id=our_id)
        return RelayEvent(key, "bounce", recipient, verdict, at, reference)
    label = "soft" if reason == "old" or status.get("bounce-type") == "soft" else "hard"
    verdict = judged(label, recipient, words, status=str(status.get("enhanced-code") or ""), reply_code=code,
                     message_id=our_id)
    return RelayEvent(key, "bounce", recipient, verdict, at, reference)


def _legacy(fields: Mapping[str, Any], token: str) -> RelayEvent:
    event = str(fields.get("event") or "")
    recipient = known(fields.get("recipient"))
    at = epoch(fields.get("timestamp"))
    our_id = message_id(fields.get("Message-Id") or fields.get("message-id"))
    code = str(fields.get("code") or "")
    if event == "delivered":
        return RelayEvent(token, "delivered", recipient, occurred_at=at)
    if event == "complained":
        return RelayEvent(token, "complaint", recipient, complaint(recipient, "feedback-type abuse from Mailgun", our_id),
                          at)
    if event == "unsubscribed" or (event == "dropped" and code == _UNSUBSCRIBED):
        return RelayEvent(token, "unsubscribe", recipient, occurred_at=at)
    if event == "dropped" and code == _COMPLAINED:
        return RelayEvent(token, "complaint", recipient, complaint(recipient, "on Mailgun's complaint list", our_id), at)
    if event == "dropped" and code == _PREVIOUSLY_BOUNCED:
        words = str(fields.get("description") or "")
        verdict = Verdict("address_bad", recipient, "relay_bounce_list", diagnostic=words, message_id=our_id)
        return RelayEvent(token, "bounce", recipient, verdict, at)
    if event == "bounced":
        words = str(fields.get("error") or fields.get("notification") or "")
        return RelayEvent(token, "bounce", recipient, judged("hard", recipient, words, reply_code=code,
                                                             message_id=our_id), at)
    if event == "dropped":  # "hardfail", or "old"/"maxfails": given up after trying for a long time
        words = str(fields.get("description") or fields.get("error") or "")
        label = "hard" if fields.get("reason") == "hardfail" else "soft"
        return RelayEvent(token, "bounce", recipient, judged(label, recipient, words, reply_code=code,
                                                             message_id=our_id), at)
    return RelayEvent(token, "ignored")


def legacy_fields(form: Any) -> dict[str, Any]:
    """Form fields as one value each. Mailgun merges the message's custom variables into the legacy
    form, so a field may come twice: its own value is the first, except for the signature fields,
    which it appends last."""
    fields: dict[str, Any] = {}
    for name in form:
        values = form.getlist(name)
        fields[name] = values[-1] if name in ("timestamp", "token", "signature") else values[0]
    return fields


def parse_json(raw: bytes) -> Mapping[str, Any]:
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Refused(401, "the body is not Mailgun's JSON; no signature found") from None
    if not isinstance(payload, Mapping):
        raise Refused(401, "the body is not Mailgun's JSON; no signature found")
    return payload
