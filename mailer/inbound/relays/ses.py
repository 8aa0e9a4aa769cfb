"""Amazon SES notifications through SNS: the envelope read and its topic checked, then the SES Bounce,
Complaint and Delivery notifications read as the bounce mailbox reads them (reports.ses_notification)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mailer.config import Settings
from mailer.inbound import reports
from mailer.inbound.evidence import Verdict
from mailer.inbound.relays.events import Refused, RelayEvent, complaint, iso_time, judged, known

NAME = "ses"
SUBSCRIPTIONS = "ses-subscription"  # where confirmed subscriptions are remembered (events.claim)
# SES bounce types as the label their words are judged against; subtypes that are about our message.
_LABELS = {"Permanent": "hard", "Transient": "soft", "Undetermined": "blocked"}
_ABOUT_OUR_MESSAGE = frozenset({"MessageTooLarge", "ContentRejected", "AttachmentRejected"})
# SES did not send: the address is on its suppression list (it bounced or complained before).
_SUPPRESSED = frozenset({"Suppressed", "OnAccountSuppressionList"})


def enabled(settings: Settings) -> bool:
    return bool(settings.relay_webhooks.ses_topic_arns)


def envelope(body: bytes, settings: Settings) -> dict[str, Any]:
    """The SNS message of a request, from one of the configured topics (checked before anything is fetched)."""
    try:
        message = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Refused(400, "the body is not an SNS message") from None
    if not isinstance(message, dict) or not isinstance(message.get("Type"), str):
        raise Refused(400, "the body is not an SNS message")
    if not message.get("Signature") or not message.get("SigningCertURL"):
        raise Refused(401, "the SNS message is not signed (turn raw message delivery off)")
    if message.get("TopicArn") not in settings.relay_webhooks.ses_topic_arns:
        raise Refused(403, "this SNS topic is not in relay_webhooks.ses_topic_arns")
    return message


def events(message: Mapping[str, Any]) -> list[RelayEvent]:
    """The events of an SNS Notification carrying an SES notification (one per recipient)."""
    sns_id = str(message.get("MessageId") or "")
    try:
        payload = json.loads(str(message.get("Message") or ""))
    except (ValueError, RecursionError):
        return [RelayEvent(sns_id, "ignored")]
    if not isinstance(payload, dict):
        return [RelayEvent(sns_id, "ignored")]
    kind = str(payload.get("notificationType") or payload.get("eventType") or "")
    if kind == "Delivery" and isinstance(payload.get("delivery"), dict):
        delivery = payload["delivery"]
        at = iso_time(delivery.get("timestamp"))
        recipients = delivery.get("recipients") if isinstance(delivery.get("recipients"), list) else []
        return [RelayEvent(f"{sns_id}:{n}", "delivered", known(r), occurred_at=at) for n, r in enumerate(recipients)]
    report = reports.ses_notification(payload)
    if report is None or report.kind not in ("bounce", "complaint"):
        return [RelayEvent(sns_id, "ignored")]
    detail = payload.get("bounce") if report.kind == "bounce" else payload.get("complaint")
    detail = detail if isinstance(detail, dict) else {}
    at = iso_time(detail.get("timestamp"))
    reference = str(detail.get("feedbackId") or sns_id)[:120]
    found = []
    for n, finding in enumerate(report.findings):
        key = f"{sns_id}:{n}"
        if report.kind == "complaint":
            verdict = complaint(finding.recipient, finding.refusal.diagnostic, finding.message_id)
            found.append(RelayEvent(key, "complaint", finding.recipient, verdict, at, reference))
            continue
        subtype = str(detail.get("bounceSubType") or "")
        if subtype in _SUPPRESSED:
            verdict = Verdict("address_bad", finding.recipient, "relay_bounce_list",
                              diagnostic=finding.refusal.diagnostic, message_id=finding.message_id)
        else:
            label = "blocked" if subtype in _ABOUT_OUR_MESSAGE else _LABELS.get(str(detail.get("bounceType")), "blocked")
            verdict = judged(label, finding.recipient, finding.refusal.diagnostic,  # type: ignore[arg-type]
                             status=finding.refusal.status, message_id=finding.message_id)
        found.append(RelayEvent(key, "bounce", finding.recipient, verdict, at, reference))
    return found or [RelayEvent(sns_id, "ignored")]
