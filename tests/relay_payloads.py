"""Relay webhook payloads in the shapes each relay documents (Postmark's webhook pages, Mailgun's webhook
payloads, SendGrid's Event Webhook reference, Amazon SES's notification examples and SNS's message
formats), with the clinic's test addresses and times filled in, and signed with keys the tests make."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from mailer.inbound.relays import sns


def iso(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


# --- Postmark ---------------------------------------------------------------------------------------


def postmark_bounce(email: str, at: dt.datetime, *, bounce_id: int = 42, kind: str = "HardBounce",
                    details: str = "Test bounce details") -> dict[str, Any]:
    return {
        "RecordType": "Bounce", "MessageStream": "outbound", "ID": bounce_id, "Type": kind,
        "TypeCode": {"HardBounce": 1, "SoftBounce": 4096, "Transient": 2}.get(kind, 1),
        "Name": {"HardBounce": "Hard bounce", "SoftBounce": "Soft bounce"}.get(kind, kind), "Tag": "Test",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483", "Metadata": {"a_key": "a_value"}, "ServerID": 23,
        "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
        "Details": details, "Email": email, "From": "news@therapycentral.example",
        "BouncedAt": at.isoformat(), "DumpAvailable": True, "Inactive": True, "CanActivate": True,
        "Subject": "Test subject", "Content": "Test content",
    }


def postmark_complaint(email: str, at: dt.datetime, complaint_id: int = 43) -> dict[str, Any]:
    return {
        "RecordType": "SpamComplaint", "MessageStream": "outbound", "ID": complaint_id, "Type": "SpamComplaint",
        "TypeCode": 512, "Name": "Spam complaint", "Tag": "Test", "MessageID": "00000000-0000-0000-0000-000000000000",
        "Metadata": {"a_key": "a_value"}, "ServerID": 1234,
        "Description": "The subscriber explicitly marked this message as spam.", "Details": "Test spam complaint details",
        "Email": email, "From": "news@therapycentral.example", "BouncedAt": at.isoformat(), "DumpAvailable": True,
        "Inactive": True, "CanActivate": False, "Subject": "Test subject", "Content": "<Abuse report dump>",
    }


def postmark_delivery(email: str, at: dt.datetime) -> dict[str, Any]:
    return {"RecordType": "Delivery", "ServerID": 23, "MessageStream": "outbound",
            "MessageID": "00000000-0000-0000-0000-000000000000", "Recipient": email, "Tag": "welcome-email",
            "DeliveredAt": at.isoformat(), "Details": "Test delivery webhook details",
            "Metadata": {"a_key": "a_value"}}


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- Mailgun ----------------------------------------------------------------------------------------


def mailgun_signature(key: str, at: dt.datetime, token: str) -> dict[str, str]:
    timestamp = str(int(at.timestamp()))
    signature = hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()
    return {"timestamp": timestamp, "token": token, "signature": signature}


def mailgun_failed(email: str, at: dt.datetime, *, event_id: str, code: int, message: str,
                   severity: str = "permanent", reason: str = "bounce") -> dict[str, Any]:
    """The event-data of a "failed" event (Mailgun's permanent/temporary failure payloads)."""
    return {
        "id": event_id, "timestamp": at.timestamp(), "log-level": "error", "event": "failed",
        "severity": severity, "reason": reason,
        "envelope": {"sender": "news@therapycentral.example", "transport": "smtp", "targets": email},
        "flags": {"is-routed": False, "is-authenticated": True, "is-system-test": False, "is-test-mode": False},
        "delivery-status": {"tls": True, "mx-host": "smtp-in.example.com", "attempt-no": 1, "description": "",
                            "session-seconds": 0.1, "utf8": True, "code": code, "message": message,
                            "certificate-verified": True},
        "message": {"headers": {"to": email, "message-id": "20130503182626.18666.16540@therapycentral.example",
                                "from": "news@therapycentral.example", "subject": "Test permanent_fail webhook"},
                    "attachments": [], "size": 111},
        "recipient": email, "recipient-domain": email.rpartition("@")[2],
        "storage": {"url": "https://se.api.mailgun.net/v3/domains/therapycentral.example/messages/message_key",
                    "key": "message_key"},
        "campaigns": [], "tags": ["my_tag_1", "my_tag_2"], "user-variables": {"my_var_1": "Mailgun Variable #1"},
    }


def mailgun_event(email: str, at: dt.datetime, *, event_id: str, event: str) -> dict[str, Any]:
    """The event-data of a "complained", "unsubscribed" or "delivered" event."""
    return {"id": event_id, "timestamp": at.timestamp(), "log-level": "warn" if event == "complained" else "info",
            "event": event, "envelope": {"sending-ip": "173.193.210.33"}, "flags": {"is-test-mode": False},
            "message": {"headers": {"to": email, "message-id": "20110215055645.25246.63817@therapycentral.example",
                                    "from": "news@therapycentral.example", "subject": "Newsletter"},
                        "attachments": [], "size": 111},
            "recipient": email, "campaigns": [], "tags": ["my_tag_1"], "user-variables": {}}


# --- SendGrid ---------------------------------------------------------------------------------------


def sendgrid_keys() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A P-256 key pair, the public half as SendGrid shows its verification key (base64 DER)."""
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, base64.b64encode(der).decode()


def sendgrid_headers(private: ec.EllipticCurvePrivateKey, body: bytes, at: dt.datetime) -> dict[str, str]:
    timestamp = str(int(at.timestamp()))
    signature = private.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {"X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp, "Content-Type": "application/json"}


def sendgrid_event(email: str, at: dt.datetime, event: str, event_id: str, **extra: Any) -> dict[str, Any]:
    return {"email": email, "timestamp": int(at.timestamp()), "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
            "event": event, "category": "cat facts", "sg_event_id": event_id,
            "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0", **extra}


# --- Amazon SES through SNS ---------------------------------------------------------------------------


def sns_keys(now: dt.datetime) -> tuple[rsa.RSAPrivateKey, bytes]:
    """An RSA key and a self-signed certificate for it (PEM), valid around `now`."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.us-east-1.amazonaws.com")])
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=365))
                   .not_valid_after(now + dt.timedelta(days=365)).sign(key, hashes.SHA256()))
    return key, certificate.public_bytes(serialization.Encoding.PEM)


def ses_mail(email: str, at: dt.datetime, message_id: str = "custom-message-ID") -> dict[str, Any]:
    return {"timestamp": iso(at), "source": "news@therapycentral.example",
            "sourceArn": "arn:aws:ses:us-east-1:888888888888:identity/therapycentral.example",
            "sourceIp": "127.0.3.0", "sendingAccountId": "123456789012", "callerIdentity": "IAM_user_or_role_name",
            "messageId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000", "destination": [email],
            "headersTruncated": False,
            "headers": [{"name": "From", "value": "Therapy Central <news@therapycentral.example>"},
                        {"name": "To", "value": email}, {"name": "Message-ID", "value": message_id},
                        {"name": "Subject", "value": "Hello"}, {"name": "Content-Type",
                                                               "value": "text/plain; charset=UTF-8"}],
            "commonHeaders": {"from": ["Therapy Central <news@therapycentral.example>"], "to": [email],
                              "messageId": message_id, "subject": "Hello"}}


def ses_bounce(email: str, at: dt.datetime, *, bounce_type: str = "Permanent", subtype: str = "General",
               diagnostic: str | None = "smtp; 550 5.1.1 <{email}>... User", status: str = "5.1.1") -> dict[str, Any]:
    recipient: dict[str, Any] = {"emailAddress": email}
    if diagnostic is not None:  # "Bounce notification with a DSN"; without: the address alone
        recipient.update(status=status, action="failed", diagnosticCode=diagnostic.format(email=email))
    return {"notificationType": "Bounce",
            "bounce": {"bounceType": bounce_type, "reportingMTA": "dns; email.example.com",
                       "bouncedRecipients": [recipient], "bounceSubType": subtype, "timestamp": iso(at),
                       "feedbackId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa068a-000000",
                       "remoteMtaIp": "127.0.2.0"},
            "mail": ses_mail(email, at)}


def ses_complaint(email: str, at: dt.datetime) -> dict[str, Any]:
    return {"notificationType": "Complaint",
            "complaint": {"userAgent": "AnyCompany Feedback Loop (V0.01)",
                          "complainedRecipients": [{"emailAddress": email}], "complaintFeedbackType": "abuse",
                          "arrivalDate": iso(at), "timestamp": iso(at),
                          "feedbackId": "000001378603177f-18c07c78-fa81-4a58-9dd1-fedc3cb8f49a-000000"},
            "mail": ses_mail(email, at)}


def ses_delivery(email: str, at: dt.datetime) -> dict[str, Any]:
    return {"notificationType": "Delivery", "mail": ses_mail(email, at),
            "delivery": {"timestamp": iso(at), "recipients": [email], "processingTimeMillis": 546,
                         "reportingMTA": "a8-70.smtp-out.amazonses.com",
                         "smtpResponse": "250 ok:  Message 64111812 accepted", "remoteMtaIp": "127.0.2.0"}}


def sns_notification(topic: str, payload: dict[str, Any], at: dt.datetime, message_id: str,
                     certificate_url: str) -> dict[str, Any]:
    return {"Type": "Notification", "MessageId": message_id, "TopicArn": topic, "Message": json.dumps(payload),
            "Timestamp": iso(at), "SignatureVersion": "1", "Signature": "", "SigningCertURL": certificate_url,
            "UnsubscribeURL": f"https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={topic}:c9135db0"}


def sns_subscription(topic: str, at: dt.datetime, message_id: str, subscribe_url: str,
                     certificate_url: str) -> dict[str, Any]:
    token = "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a747ba6f3beb71854e285d6ad02428b"
    return {"Type": "SubscriptionConfirmation", "MessageId": message_id, "Token": token, "TopicArn": topic,
            "Message": f"You have chosen to subscribe to the topic {topic}.\nTo confirm the subscription, visit the "
                       "SubscribeURL included in this message.",
            "SubscribeURL": subscribe_url, "Timestamp": iso(at), "SignatureVersion": "1", "Signature": "",
            "SigningCertURL": certificate_url}


def sns_sign(message: dict[str, Any], key: rsa.RSAPrivateKey, version: str = "1") -> dict[str, Any]:
    signed = dict(message, SignatureVersion=version)
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    signed["Signature"] = base64.b64encode(key.sign(sns.canonical(signed), padding.PKCS1v15(), algorithm)).decode()
    return signed
