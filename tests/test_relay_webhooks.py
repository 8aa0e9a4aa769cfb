"""The relay webhooks: each relay's documented payloads, signed with keys the tests make, feed the bounce
rules (a hard bounce or a complaint suppresses, a soft bounce counts, a refusal of our sender or IP
changes nothing for the person); unsigned, badly signed, replayed and unknown requests change nothing."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, func, select

from mailer import audience, jobs
from mailer.config import Settings
from mailer.inbound import evidence
from mailer.inbound.relays import events, sns
from mailer.models import BounceEvent, ConsentEvent, HandledRelayEvent
from mailer.runtime import Runtime
from mailer.web import create_app, relays
from tests import relay_payloads as P
from tests.web_fixtures import SettableClock

RILEY, SAM, PAT = "riley.chen@example.com", "sam.ortiz@example.org", "pat.lee@example.net"
TOPIC = "arn:aws:sns:us-east-1:123456789012:clinic-ses-notifications"
POSTMARK_USER = "postmark-webhook"


@dataclass
class Relays:
    """The app with every relay turned on, its secrets, and the people it knows."""

    app: Flask
    client: FlaskClient
    runtime: Runtime
    clock: SettableClock
    postmark_password: str
    mailgun_key: str
    sendgrid_private: Any
    sns_key: Any = None
    certificate: bytes = b""

    @property
    def now(self) -> dt.datetime:
        return self.clock.now

    def person(self, email: str) -> tuple[str | None, int, list[str]]:
        """(suppression reason, soft-bounce days counted, the verdicts kept as evidence, oldest first)."""
        settings = self.runtime.settings
        with self.runtime.sessions() as session:
            contact = audience.find_contact(session, email)
            assert contact is not None
            row = audience.suppression_for(session, settings.secret_key, contact)
            days = evidence.soft_bounce_days(session, settings, contact, self.now)
            verdicts = [e.verdict for e in reversed(evidence.events_of(session, contact.id))]
            return (row.reason if row else None, days, verdicts)

    def untouched(self, *emails: str) -> None:
        for email in emails:
            assert self.person(email) == (None, 0, []), email


@pytest.fixture
def relays_on(settings: Settings, engine: Engine, clock: SettableClock) -> Relays:
    private, public = P.sendgrid_keys()
    password, mailgun_key = secrets.token_urlsafe(18), secrets.token_hex(24)
    settings = settings.model_copy(update={
        "postmark_webhook_user": POSTMARK_USER, "postmark_webhook_password": password,
        "mailgun_signing_key": mailgun_key, "sendgrid_public_key": public,
        "relay_webhooks": settings.relay_webhooks.model_copy(update={"ses_topic_arns": [TOPIC]}),
    })
    runtime = Runtime(settings, clock=clock, engine_override=engine)
    with runtime.sessions.begin() as session:
        for email in (RILEY, SAM, PAT):
            audience.staff_subscribe(session, settings.secret_key, settings.topics, email=email, name=None,
                                     topic_names=["newsletter"], source="test", now=clock.now)
    app = create_app(runtime, leader=lambda: True)
    return Relays(app, app.test_client(), runtime, clock, password, mailgun_key, private)


def handled(relays_on: Relays, relay: str) -> int:
    with relays_on.runtime.sessions() as session:
        return session.scalar(select(func.count()).select_from(HandledRelayEvent)
                              .where(HandledRelayEvent.relay == relay)) or 0


def evidence_rows(relays_on: Relays) -> int:
    with relays_on.runtime.sessions() as session:
        return session.scalar(select(func.count()).select_from(BounceEvent)) or 0


# --- Postmark -----------------------------------------------------------------------------------------


def test_postmark_hard_bounce_suppresses_complaint_suppresses_soft_bounce_counts(relays_on: Relays) -> None:
    r = relays_on
    auth = {"Authorization": P.basic_auth(POSTMARK_USER, r.postmark_password)}

    def post(payload: dict[str, Any]) -> dict[str, Any]:
        response = r.client.post("/api/relay/postmark", json=payload, headers=auth)
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    hard = P.postmark_bounce(RILEY, r.now, bounce_id=4201,
                             details="smtp;550 5.1.1 The email account that you tried to reach does not exist.")
    assert post(hard)["hard"] == 1
    assert r.person(RILEY) == ("hard_bounce", 0, ["address_bad"])
    assert post(hard)["replayed"] == 1  # Postmark retries what it got no answer for: nothing twice
    assert r.person(RILEY) == ("hard_bounce", 0, ["address_bad"])

    assert post(P.postmark_complaint(SAM, r.now))["complaints"] == 1
    assert r.person(SAM) == ("complaint", 0, ["complaint"])

    soft = P.postmark_bounce(PAT, r.now, bounce_id=4202, kind="SoftBounce",
                             details="smtp;452 4.2.2 The email account that you tried to reach is over quota.")
    assert post(soft)["soft"] == 1
    assert r.person(PAT) == (None, 1, ["mailbox_unable"])
    assert post(P.postmark_delivery(PAT, r.now))["delivered"] == 1
    assert r.person(PAT) == (None, 1, ["mailbox_unable"])


def test_postmark_hard_bounce_that_refuses_our_ip_changes_nothing_for_the_person(relays_on: Relays) -> None:
    r = relays_on
    # Postmark calls it a hard bounce; the server's words say it refused our sending IP.
    blocked = P.postmark_bounce(RILEY, r.now, bounce_id=4300, details=(
        "smtp;550 5.7.1 Service unavailable; Client host [192.0.2.10] blocked using zen.spamhaus.org"))
    response = r.client.post("/api/relay/postmark", json=blocked,
                             headers={"Authorization": P.basic_auth(POSTMARK_USER, r.postmark_password)})
    assert response.status_code == 200 and response.get_json()["not_about_recipient"] == 1
    assert r.person(RILEY) == (None, 0, ["not_about_recipient"])  # kept as evidence, nothing for the person


def test_postmark_without_or_with_wrong_basic_auth_changes_nothing(relays_on: Relays) -> None:
    r = relays_on
    hard = P.postmark_bounce(RILEY, r.now, details="smtp;550 5.1.1 user unknown")
    missing = r.client.post("/api/relay/postmark", json=hard)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Basic")
    wrong = r.client.post("/api/relay/postmark", json=hard,
                          headers={"Authorization": P.basic_auth(POSTMARK_USER, r.postmark_password + "x")})
    assert wrong.status_code == 403
    other_user = r.client.post("/api/relay/postmark", json=hard,
                               headers={"Authorization": P.basic_auth("someone", r.postmark_password)})
    assert other_user.status_code == 403
    garbage = r.client.post("/api/relay/postmark", json=hard, headers={"Authorization": "Basic !!!"})
    assert garbage.status_code == 401
    r.untouched(RILEY)
    assert handled(r, "postmark") == 0


# --- Mailgun ------------------------------------------------------------------------------------------


def mailgun_post(r: Relays, data: dict[str, Any], *, token: str | None = None, at: dt.datetime | None = None,
                 key: str | None = None) -> Any:
    body = {"signature": P.mailgun_signature(key or r.mailgun_key, at or r.now, token or secrets.token_hex(25)),
            "event-data": data}
    return r.client.post("/api/relay/mailgun", json=body)


def test_mailgun_current_events_follow_the_bounce_rules(relays_on: Relays) -> None:
    r = relays_on
    hard = P.mailgun_failed(RILEY, r.now, event_id="G9Bn5sl1TC6nu79C8C0bwg", code=550, message=(
        "5.1.1 The email account that you tried to reach does not exist. Please try double-checking the "
        "recipient's email address for typos or unnecessary spaces."))
    assert mailgun_post(r, hard).get_json()["hard"] == 1
    assert r.person(RILEY) == ("hard_bounce", 0, ["address_bad"])

    complained = P.mailgun_event(SAM, r.now, event_id="-Agny091SquKnsrW2NEKUA", event="complained")
    assert mailgun_post(r, complained).get_json()["complaints"] == 1
    assert r.person(SAM)[0] == "complaint"

    full = P.mailgun_failed(PAT, r.now, event_id="Fs7-5t81S2ukAWXmGn7G3Q", code=552, message=(
        "5.2.2 The email account that you tried to reach is over quota and inactive."))
    assert mailgun_post(r, full).get_json()["soft"] == 1
    assert r.person(PAT) == (None, 1, ["mailbox_unable"])
    # A temporary failure: Mailgun tries again, and its last word is the one that counts.
    deferred = P.mailgun_failed(PAT, r.now, event_id="czsjqFATSlC3QtAK-C80nw", code=452, severity="temporary",
                                reason="generic", message="4.2.2 The email account that you tried to reach is over quota.")
    assert mailgun_post(r, deferred).get_json()["delayed"] == 1
    # Mailgun refused our own sending: nothing for the person.
    ours = P.mailgun_failed(PAT, r.now, event_id="AHbyOXiBQU-8ivtv5pVUrw", code=550, message=(
        "5.7.1 [192.0.2.10] Our system has detected that this message is likely unsolicited mail. To reduce "
        "the amount of spam sent to Gmail, this message has been blocked."))
    assert mailgun_post(r, ours).get_json()["not_about_recipient"] == 1
    assert r.person(PAT) == (None, 1, ["mailbox_unable", "not_about_recipient"])


def test_mailgun_signature_freshness_and_replays(relays_on: Relays) -> None:
    r = relays_on
    hard = P.mailgun_failed(RILEY, r.now, event_id="G9Bn5sl1TC6nu79C8C0bwg", code=550, message="5.1.1 user unknown")
    wrong_key = mailgun_post(r, hard, key=secrets.token_hex(24))
    assert wrong_key.status_code == 403
    stale = mailgun_post(r, hard, at=r.now - dt.timedelta(hours=13))
    assert stale.status_code == 403
    unsigned = r.client.post("/api/relay/mailgun", json={"event-data": hard})
    assert unsigned.status_code == 401
    not_json = r.client.post("/api/relay/mailgun", data=b"{", content_type="application/json")
    assert not_json.status_code == 401
    r.untouched(RILEY)

    token = secrets.token_hex(25)
    first = mailgun_post(r, hard, token=token)
    assert first.status_code == 200 and first.get_json()["hard"] == 1
    again = mailgun_post(r, hard, token=token)  # the very same request replayed
    assert again.status_code == 200 and again.get_json()["replayed"] == 1
    resent = mailgun_post(r, hard)  # the same event under a new token (signed anew)
    assert resent.status_code == 200 and resent.get_json()["replayed"] == 1
    assert r.person(RILEY) == ("hard_bounce", 0, ["address_bad"])
    # Retried within Mailgun's 8 hours: still inside the window.
    late = mailgun_post(r, P.mailgun_event(SAM, r.now, event_id="x1", event="delivered"),
                        at=r.now - dt.timedelta(hours=8))
    assert late.status_code == 200 and late.get_json()["delivered"] == 1


def test_mailgun_legacy_form_webhooks(relays_on: Relays) -> None:
    r = relays_on

    def legacy(fields: dict[str, str], token: str) -> Any:
        form = {**fields, **P.mailgun_signature(r.mailgun_key, r.now, token)}
        return r.client.post("/api/relay/mailgun", data=form)

    bounced = {
        "event": "bounced", "recipient": RILEY, "domain": "therapycentral.example",
        "message-headers": json.dumps([["To", RILEY], ["Message-Id", "<20130503182626.18666.16540@therapycentral.example>"]]),
        "Message-Id": "<20130503182626.18666.16540@therapycentral.example>", "code": "550",
        "error": "5.1.1 The email account that you tried to reach does not exist.",
        "notification": "", "X-Mailgun-Sid": "WyIwNzI5MCIsICJpZG91YmF0IiwgIjZiMzI3MCJd",
    }
    token = secrets.token_hex(25)
    assert legacy(bounced, token).get_json()["hard"] == 1
    assert legacy(bounced, token).get_json()["replayed"] == 1
    assert r.person(RILEY) == ("hard_bounce", 0, ["address_bad"])
    dropped = {"event": "dropped", "recipient": SAM, "domain": "therapycentral.example", "reason": "hardfail",
               "code": "607", "description": "Not delivering to a user who marked your messages as spam"}
    assert legacy(dropped, secrets.token_hex(25)).get_json()["complaints"] == 1
    assert r.person(SAM)[0] == "complaint"
    forged = {**bounced, "recipient": PAT, **P.mailgun_signature("not-the-key", r.now, secrets.token_hex(25))}
    assert r.client.post("/api/relay/mailgun", data=forged).status_code == 403
    r.untouched(PAT)


# --- SendGrid -----------------------------------------------------------------------------------------


def sendgrid_batch(r: Relays) -> list[dict[str, Any]]:
    return [
        P.sendgrid_event(RILEY, r.now, "bounce", "ZmIzZmJhYTctNTdiMC00MjY0", reason="500 unknown recipient",
                         status="5.0.0", type="bounce", bounce_classification="Invalid Address"),
        P.sendgrid_event(SAM, r.now, "spamreport", "c3BhbXJlcG9ydC0xMjM0NTY"),
        P.sendgrid_event(PAT, r.now, "bounce", "Ym91bmNlLTQtNTA0ODUxOTU", type="blocked",
                         reason="550 5.7.1 Mail from IP 192.0.2.10 was rejected due to listing in Spamhaus SBL",
                         status="5.7.1", bounce_classification="Reputation"),
        P.sendgrid_event(PAT, r.now, "deferred", "cXRlc3QtZGVmZXJyZWQtMDE", response="400 try again later",
                         attempt="5"),
        P.sendgrid_event(PAT, r.now, "delivered", "hqFbp3HH9WxIM0R2-x2M1Q", response="250 OK"),
        P.sendgrid_event(PAT, r.now, "open", "b3BlbmVkLTEyMzQ1Ng", useragent="Mozilla/4.0", ip="255.255.255.255"),
    ]


def test_sendgrid_signed_batch_follows_the_bounce_rules_once(relays_on: Relays) -> None:
    r = relays_on
    body = json.dumps(sendgrid_batch(r)).encode()
    response = r.client.post("/api/relay/sendgrid", data=body, headers=P.sendgrid_headers(r.sendgrid_private, body, r.now))
    assert response.status_code == 200
    counts = response.get_json()
    assert (counts["events"], counts["hard"], counts["complaints"], counts["not_about_recipient"], counts["delayed"],
            counts["delivered"], counts["ignored"]) == (6, 1, 1, 1, 1, 1, 1)
    assert r.person(RILEY) == ("hard_bounce", 0, ["address_bad"])
    assert r.person(SAM)[0] == "complaint"
    assert r.person(PAT) == (None, 0, ["not_about_recipient"])  # our IP on a blocklist: not the person's fault

    r.clock.advance(minutes=10)  # SendGrid sends the batch again, signed anew
    replay = r.client.post("/api/relay/sendgrid", data=body, headers=P.sendgrid_headers(r.sendgrid_private, body, r.now))
    assert replay.status_code == 200 and replay.get_json()["replayed"] == 4  # all but the deferral and the open
    assert evidence_rows(r) == 3

    full = json.dumps([P.sendgrid_event(PAT, r.now, "bounce", "bWFpbGJveC1mdWxs", type="bounce", status="5.2.2",
                                        reason="552 5.2.2 The email account that you tried to reach is over quota.",
                                        bounce_classification="Mailbox Unavailable")]).encode()
    assert r.client.post("/api/relay/sendgrid", data=full,
                         headers=P.sendgrid_headers(r.sendgrid_private, full, r.now)).get_json()["soft"] == 1
    assert r.person(PAT) == (None, 1, ["not_about_recipient", "mailbox_unable"])

    goodbye = json.dumps([P.sendgrid_event(PAT, r.now, "unsubscribe", "dW5zdWJzY3JpYmUtMQ")]).encode()
    assert r.client.post("/api/relay/sendgrid", data=goodbye,
                         headers=P.sendgrid_headers(r.sendgrid_private, goodbye, r.now)).get_json()["unsubscribes"] == 1
    assert r.person(PAT)[0] == "unsubscribed"
    with r.runtime.sessions() as session:
        withdrawn = session.scalars(select(ConsentEvent.source).where(ConsentEvent.action == "withdrawn")).all()
    assert "relay:sendgrid" in withdrawn


def test_sendgrid_bad_missing_or_stale_signatures_change_nothing(relays_on: Relays) -> None:
    r = relays_on
    body = json.dumps(sendgrid_batch(r)).encode()
    stranger, _ = P.sendgrid_keys()
    assert r.client.post("/api/relay/sendgrid", data=body,
                         headers=P.sendgrid_headers(stranger, body, r.now)).status_code == 403
    headers = P.sendgrid_headers(r.sendgrid_private, body, r.now)
    tampered = body.replace(RILEY.encode(), PAT.encode())
    assert r.client.post("/api/relay/sendgrid", data=tampered, headers=headers).status_code == 403
    assert r.client.post("/api/relay/sendgrid", data=body, headers={"Content-Type": "application/json"}).status_code == 401
    old = P.sendgrid_headers(r.sendgrid_private, body, r.now - dt.timedelta(days=5))
    assert r.client.post("/api/relay/sendgrid", data=body, headers=old).status_code == 403
    r.untouched(RILEY, SAM, PAT)
    assert handled(r, "sendgrid") == 0


def test_a_sendgrid_key_that_does_not_parse_keeps_the_events_at_sendgrid(relays_on: Relays) -> None:
    r = relays_on
    runtime = Runtime(r.runtime.settings.model_copy(update={"sendgrid_public_key": "bm90IGEga2V5"}), clock=r.clock,
                      engine_override=r.runtime.engine)
    body = json.dumps(sendgrid_batch(r)).encode()
    response = create_app(runtime).test_client().post(
        "/api/relay/sendgrid", data=body, headers=P.sendgrid_headers(r.sendgrid_private, body, r.now))
    assert response.status_code == 503  # SendGrid keeps them and tries again once the key is fixed
    r.untouched(RILEY, SAM, PAT)


# --- Amazon SES through SNS ---------------------------------------------------------------------------


@dataclass
class FakeAmazon:
    """Amazon's side, on loopback: the signing certificate and the subscription confirmation endpoint."""

    url: str
    certificate_url: str
    subscribe_url: str
    hits: list[str] = field(default_factory=list)


@pytest.fixture
def amazon(relays_on: Relays) -> Iterator[FakeAmazon]:
    key, certificate = P.sns_keys(relays_on.now)
    relays_on.sns_key, relays_on.certificate = key, certificate
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            body = certificate if self.path.endswith(".pem") else b"<ConfirmSubscriptionResponse/>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    # The test's own rule: its loopback server stands in for sns.<region>.amazonaws.com.
    relays_on.app.extensions[relays.SNS_EXTENSION] = sns.Sns(
        allowed=lambda url, certificate: url.startswith(base + "/") and url.endswith(".pem") == certificate)
    try:
        yield FakeAmazon(base, f"{base}/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
                         f"{base}/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=2336412f37fb", hits)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def sns_post(r: Relays, message: dict[str, Any]) -> Any:
    return r.client.post("/api/relay/ses", data=json.dumps(message), content_type="text/plain; charset=UTF-8",
                         headers={"x-amz-sns-message-type": message["Type"], "x-amz-sns-message-id": message["MessageId"],
                                  "x-amz-sns-topic-arn": message["TopicArn"]})


def test_ses_bounce_complaint_transient_and_delivery_through_sns(relays_on: Relays, amazon: FakeAmazon) -> None:
    r = relays_on

    def notify(payload: dict[str, Any], message_id: str, version: str = "1") -> dict[str, Any]:
        message = P.sns_sign(P.sns_notification(TOPIC, payload, r.now, message_id, amazon.certificate_url),
                             r.sns_key, version)
        response = sns_post(r, message)
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    assert notify(P.ses_bounce(RILEY, r.now), "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324")["hard"] == 1
    assert r.person(RILEY) == ("hard_bounce", 0, ["address_bad"])
    assert notify(P.ses_bounce(RILEY, r.now), "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324")["replayed"] == 1
    assert notify(P.ses_complaint(SAM, r.now), "7f7d0b29-1a8f-4a5c-9bd4-3c39c07bd0a1", version="2")["complaints"] == 1
    assert r.person(SAM)[0] == "complaint"
    transient = P.ses_bounce(PAT, r.now, bounce_type="Transient", subtype="MailboxFull", diagnostic=None)
    assert notify(transient, "0c3d8a2e-5b7e-4f55-9a57-6b1d2f7f8e11")["soft"] == 1
    assert notify(P.ses_delivery(PAT, r.now), "a3c5e7f9-1b2d-4e6f-8a0c-2e4f6a8c0e1f")["delivered"] == 1
    assert r.person(PAT) == (None, 1, ["mailbox_unable"])
    assert amazon.hits == [amazon.certificate_url.removeprefix(amazon.url)]  # fetched once, then kept


def test_ses_forged_tampered_or_foreign_messages_change_nothing(relays_on: Relays, amazon: FakeAmazon) -> None:
    r = relays_on
    good = P.sns_sign(P.sns_notification(TOPIC, P.ses_bounce(RILEY, r.now), r.now, "m-1", amazon.certificate_url),
                      r.sns_key)
    tampered = dict(good, Message=json.dumps(P.ses_bounce(SAM, r.now)))
    assert sns_post(r, tampered).status_code == 403
    unsigned = dict(good, Signature="")
    assert sns_post(r, unsigned).status_code == 401
    other_topic = "arn:aws:sns:us-east-1:999999999999:someone-else"
    foreign = P.sns_sign(P.sns_notification(other_topic, P.ses_bounce(RILEY, r.now), r.now, "m-2",
                                            amazon.certificate_url), r.sns_key)
    assert sns_post(r, foreign).status_code == 403
    stale = P.sns_sign(P.sns_notification(TOPIC, P.ses_bounce(RILEY, r.now), r.now - dt.timedelta(days=5), "m-3",
                                          amazon.certificate_url), r.sns_key)
    assert sns_post(r, stale).status_code == 403
    elsewhere = P.sns_sign(P.sns_notification(TOPIC, P.ses_bounce(RILEY, r.now), r.now, "m-4",
                                              "https://example.com/SimpleNotificationService-x.pem"), r.sns_key)
    assert sns_post(r, elsewhere).status_code == 403
    r.untouched(RILEY, SAM)
    # The foreign topic and the certificate elsewhere were refused before anything was fetched.
    assert amazon.hits == [amazon.certificate_url.removeprefix(amazon.url)]


def test_sns_subscription_is_confirmed_once_and_only_for_a_configured_topic(relays_on: Relays,
                                                                           amazon: FakeAmazon) -> None:
    r = relays_on
    confirm_path = amazon.subscribe_url.removeprefix(amazon.url)
    foreign = P.sns_sign(P.sns_subscription("arn:aws:sns:us-east-1:999999999999:someone-else", r.now, "s-0",
                                            amazon.subscribe_url, amazon.certificate_url), r.sns_key)
    assert sns_post(r, foreign).status_code == 403
    forged = dict(P.sns_sign(P.sns_subscription(TOPIC, r.now, "s-1", amazon.subscribe_url, amazon.certificate_url),
                             r.sns_key), SubscribeURL=amazon.url + "/?Action=ConfirmSubscription&Token=other")
    assert sns_post(r, forged).status_code == 403
    assert confirm_path not in amazon.hits

    message = P.sns_sign(P.sns_subscription(TOPIC, r.now, "s-2", amazon.subscribe_url, amazon.certificate_url),
                         r.sns_key, version="2")
    first = sns_post(r, message)
    assert first.status_code == 200 and first.get_json()["status"] == "confirmed"
    again = sns_post(r, message)
    assert again.status_code == 200 and again.get_json()["status"] == "already confirmed"
    assert amazon.hits.count(confirm_path) == 1


def test_in_production_the_certificate_and_confirmation_come_only_from_amazon(relays_on: Relays,
                                                                             amazon: FakeAmazon) -> None:
    assert sns.amazon_url("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-f3ecfb72.pem", certificate=True)
    assert sns.amazon_url("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-1.pem", certificate=True)
    assert sns.amazon_url(f"https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=1",
                          certificate=False)
    for url in ("http://sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem",
                "https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-1.pem",
                "https://evil.example/sns.us-east-1.amazonaws.com/x.pem",
                "https://sns.us-east-1.amazonaws.com:8443/SimpleNotificationService-1.pem",
                "https://user@sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem",
                "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-1.txt",
                "https://s3.amazonaws.com/SimpleNotificationService-1.pem",
                amazon.certificate_url):
        assert not sns.amazon_url(url, certificate=True), url
    assert not sns.amazon_url("https://sns.us-east-1.amazonaws.com/evil?Action=ConfirmSubscription", certificate=False)
    assert not sns.amazon_url(f"https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={TOPIC}:1",
                              certificate=False)

    # The app's own client (what production uses) refuses the loopback certificate without fetching it.
    r = relays_on
    r.app.extensions[relays.SNS_EXTENSION] = sns.Sns()
    message = P.sns_sign(P.sns_notification(TOPIC, P.ses_bounce(RILEY, r.now), r.now, "m-9", amazon.certificate_url),
                         r.sns_key)
    assert sns_post(r, message).status_code == 403
    assert amazon.hits == []
    r.untouched(RILEY)


# --- every relay ---------------------------------------------------------------------------------------


def test_relays_without_secrets_and_unknown_relays_are_404(client: FlaskClient, settings: Settings) -> None:
    assert not (settings.postmark_webhook_user or settings.mailgun_signing_key or settings.sendgrid_public_key
                or settings.relay_webhooks.ses_topic_arns)
    for relay in ("postmark", "mailgun", "sendgrid", "ses", "sparkpost", "..%2Fadmin"):
        response = client.post(f"/api/relay/{relay}", json={"RecordType": "Bounce"})
        assert response.status_code == 404, relay
        assert response.is_json
    assert client.get("/api/relay/postmark").status_code in (404, 405)


def test_unknown_relay_while_others_are_on_and_the_body_limit(relays_on: Relays) -> None:
    r = relays_on
    assert r.client.post("/api/relay/sparkpost", json=[{"event": "bounce"}]).status_code == 404
    assert r.client.get("/api/relay/postmark").status_code == 405
    big = b"[" + b" " * r.runtime.settings.web.max_body_bytes + b"]"
    response = r.client.post("/api/relay/sendgrid", data=big, headers=P.sendgrid_headers(r.sendgrid_private, big, r.now))
    assert response.status_code == 413
    r.untouched(RILEY, SAM, PAT)


def test_housekeeping_forgets_handled_events_after_thirty_days(relays_on: Relays) -> None:
    r = relays_on
    body = json.dumps(sendgrid_batch(r)).encode()
    assert r.client.post("/api/relay/sendgrid", data=body,
                         headers=P.sendgrid_headers(r.sendgrid_private, body, r.now)).status_code == 200
    assert handled(r, "sendgrid") == 4  # the events that did something: bounces, complaint, delivery
    counts = jobs.run_job(r.runtime, "housekeeping", r.now + dt.timedelta(days=29), None)
    assert counts["relay_events_forgotten"] == 0
    counts = jobs.run_job(r.runtime, "housekeeping", r.now + events.KEPT_FOR + dt.timedelta(hours=1), None)
    assert counts["relay_events_forgotten"] == 4
    assert handled(r, "sendgrid") == 0


def test_the_doctor_knows_bounces_arrive_by_webhook(relays_on: Relays, settings: Settings) -> None:
    from mailer.doctor import mailboxes

    assert settings.bounces.source == "none"
    assert mailboxes.check(settings)[0].status == "warn"  # no mailbox, no webhook: nobody hears of bounces
    (bounces, _replies) = mailboxes.check(relays_on.runtime.settings)
    assert bounces.status == "ok"
    assert bounces.message == "bounces and complaints arrive by the postmark, mailgun, sendgrid, ses webhooks"
