"""Postmark's webhooks: HTTP basic auth checked, then its Bounce, SpamComplaint, Delivery and
SubscriptionChange records read into relay events.

Postmark's `MessageID` is its own id, not our Message-ID header, so the person is found by address.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any

from mailer.config import Settings
from mailer.inbound.evidence import Verdict
from mailer.inbound.relays.events import Refused, RelayEvent, complaint, iso_time, judged, known

NAME = "postmark"

# Bounce types (the record's "Type") that are a refusal, with the label Postmark gives them; the
# words decide first (see events.judged).
_BOUNCES = {"HardBounce": "hard", "SoftBounce": "soft", "DnsError": "soft", "Unknown": "blocked",
            "SpamNotification": "blocked", "VirusNotification": "blocked", "Blocked": "blocked",
            "DMARCPolicy": "blocked"}
# Bounce types that are not a refusal at all: automatic replies, a delay before the real outcome, a
# receiving server testing Postmark, an address Postmark itself stopped sending to, its own API errors.
_NOT_REFUSALS = frozenset({"Transient", "AutoResponder", "AddressChange", "ChallengeVerification", "Subscribe",
                           "OpenRelayTest", "ManuallyDeactivated", "Unconfirmed", "SMTPApiError", "InboundError",
                           "TemplateRenderingFailed"})


def enabled(settings: Settings) -> bool:
    return bool(settings.postmark_webhook_user and settings.postmark_webhook_password)


def verify(settings: Settings, authorization: str) -> None:
    """The request's HTTP basic auth is the configured user and password (compared in constant time)."""
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise Refused(401, "HTTP basic auth is required")
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise Refused(401, "HTTP basic auth is required") from None
    # Both compared, whatever the first gives, so the time taken does not tell which one was wrong.
    user_ok = hmac.compare_digest(user.encode(), settings.postmark_webhook_user.encode())
    password_ok = hmac.compare_digest(password.encode(), settings.postmark_webhook_password.encode())
    if not (sep and user_ok and password_ok):
        raise Refused(403, "wrong user or password")


def events(payload: Any) -> list[RelayEvent]:
    """The one record a Postmark webhook request carries, as a relay event."""
    if not isinstance(payload, dict):
        raise Refused(400, "the body must be a JSON object")
    record = str(payload.get("RecordType") or "")
    kind = str(payload.get("Type") or "")
    if record == "Bounce" or (not record and kind in _BOUNCES):
        return [_bounce(payload, kind)]
    if record == "SpamComplaint" or kind == "SpamComplaint":
        recipient = known(payload.get("Email"))
        verdict = complaint(recipient, f"feedback-type abuse from Postmark ({kind or record})")
        return [RelayEvent(f"complaint:{payload.get('ID')}", "complaint", recipient, verdict,
                           iso_time(payload.get("BouncedAt")), str(payload.get("ID", "")))]
    recipient = known(payload.get("Recipient"))
    if record == "Delivery":
        return [RelayEvent(f"delivery:{payload.get('MessageID')}:{recipient}", "delivered", recipient,
                           occurred_at=iso_time(payload.get("DeliveredAt")))]
    if record == "SubscriptionChange":
        # A person who unsubscribed through Postmark's own link (or support did it for them); the bounce
        # and complaint reasons arrive as their own Bounce and SpamComplaint records.
        wish = payload.get("SuppressSending") is True and payload.get("SuppressionReason") == "ManualSuppression"
        changed = f"change:{payload.get('MessageID')}:{recipient}:{payload.get('ChangedAt')}"
        return [RelayEvent(changed, "unsubscribe" if wish else "ignored", recipient,
                           occurred_at=iso_time(payload.get("ChangedAt")))]
    return [RelayEvent(f"other:{record}", "ignored")]  # Open, Click, Inbound: nothing to do


def _bounce(payload: dict[str, Any], kind: str) -> RelayEvent:
    recipient = known(payload.get("Email"))
    key, reference, at = f"bounce:{payload.get('ID')}", str(payload.get("ID", "")), iso_time(payload.get("BouncedAt"))
    if kind == "Unsubscribe":  # an unsubscribe request Postmark received for us (e.g. by the List-Unsubscribe mailto)
        return RelayEvent(key, "unsubscribe", recipient, occurred_at=at, reference=reference)
    if kind == "BadEmailAddress":  # Postmark refused to send: the address is not one
        verdict = Verdict("address_bad", recipient, "invalid_address", diagnostic=str(payload.get("Details") or ""))
        return RelayEvent(key, "bounce", recipient, verdict, at, reference)
    if kind in _NOT_REFUSALS:
        return RelayEvent(key, "delayed" if kind == "Transient" else "ignored", recipient, occurred_at=at)
    # Details is the receiving server's reply when there is one; Description is only Postmark's gloss of
    # the type, so without Details the type decides.
    label = _BOUNCES.get(kind, "blocked")
    verdict = judged(label, recipient, str(payload.get("Details") or ""))  # type: ignore[arg-type]
    return RelayEvent(key, "bounce", recipient, verdict, at, reference)
