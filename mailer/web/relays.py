"""`POST /api/relay/<relay>`: the relays' bounce, complaint and delivery webhooks, each verified its own way.

A relay whose secret is not set is off (404, like an unknown relay); a request without its credentials
gets 401, one with wrong ones 403, and neither changes anything. Accepted events are applied in the
request's one transaction, so a relay that gets no 2xx sends them again and nothing is lost.
"""

from __future__ import annotations

import json
import logging

from flask import Blueprint, Response, current_app, jsonify, request

from mailer.inbound.relays import events, mailgun, postmark, sendgrid, ses, sns
from mailer.inbound.relays.events import Refused, RelayReport
from mailer.web import current_runtime

log = logging.getLogger("mailer.relays")

blueprint = Blueprint("relays", __name__)

# Where SNS signing certificates and subscription confirmations are fetched (tests put their own here).
SNS_EXTENSION = "mailer.sns"


def sns_client() -> sns.Sns:
    client = current_app.extensions.get(SNS_EXTENSION)
    if client is None:
        client = current_app.extensions[SNS_EXTENSION] = sns.Sns()
    return client


def _answer(code: int, **body: object) -> tuple[Response, int]:
    return jsonify(body), code


def _refused(relay: str, problem: Refused) -> tuple[Response, int]:
    log.warning("relay %s: request refused (%d: %s)", relay, problem.status, problem)
    response, status = _answer(problem.status, error=str(problem), field=None)
    if problem.status == 401 and relay == postmark.NAME:
        response.headers["WWW-Authenticate"] = 'Basic realm="mailer relay webhook"'
    return response, status


def _done(relay: str, report: RelayReport) -> tuple[Response, int]:
    # Counts only: never an address in a log line.
    log.info("relay %s: %s", relay, ", ".join(f"{name} {count}" for name, count in report.counts().items() if count))
    return _answer(200, status="ok", **report.counts())


@blueprint.post("/api/relay/<relay>")
def relay_webhook(relay: str) -> tuple[Response, int]:
    runtime = current_runtime()
    settings = runtime.settings
    handlers = {postmark.NAME: (postmark.enabled, _postmark), mailgun.NAME: (mailgun.enabled, _mailgun),
                sendgrid.NAME: (sendgrid.enabled, _sendgrid), ses.NAME: (ses.enabled, _ses)}
    if relay not in handlers or not handlers[relay][0](settings):
        return _answer(404, error="no such relay webhook", field=None)
    try:
        return handlers[relay][1]()
    except Refused as problem:
        return _refused(relay, problem)


def _postmark() -> tuple[Response, int]:
    runtime = current_runtime()
    postmark.verify(runtime.settings, request.headers.get("Authorization", ""))
    found = postmark.events(_json_body())
    now = runtime.clock()
    with runtime.sessions.begin() as session:
        report = events.apply_events(session, runtime.settings, postmark.NAME, found, now)
    return _done(postmark.NAME, report)


def _mailgun() -> tuple[Response, int]:
    runtime = current_runtime()
    settings, now = runtime.settings, runtime.clock()
    if request.mimetype == "application/json":
        payload = mailgun.parse_json(request.get_data(cache=False))
    else:  # the legacy webhooks post form fields (multipart when they carry the message)
        payload = mailgun.legacy_fields(request.form)
    timestamp, token, signature = mailgun.signature_of(payload)
    mailgun.verify(settings, timestamp, token, signature, now)
    with runtime.sessions.begin() as session:
        if events.claim(session, mailgun.TOKENS, token, "token", now) is None:
            # A request seen before (a replay, or Mailgun's retry of one we answered): nothing to do.
            return _done(mailgun.NAME, RelayReport(events=1, replayed=1))
        report = events.apply_events(session, settings, mailgun.NAME, mailgun.events(payload, token), now)
    return _done(mailgun.NAME, report)


def _sendgrid() -> tuple[Response, int]:
    runtime = current_runtime()
    settings, now = runtime.settings, runtime.clock()
    body = request.get_data(cache=False)
    sendgrid.verify(settings, request.headers.get(sendgrid.SIGNATURE_HEADER, ""),
                    request.headers.get(sendgrid.TIMESTAMP_HEADER, ""), body, now)
    found = sendgrid.events(sendgrid.parse(body))
    with runtime.sessions.begin() as session:
        report = events.apply_events(session, settings, sendgrid.NAME, found, now)
    return _done(sendgrid.NAME, report)


def _ses() -> tuple[Response, int]:
    runtime = current_runtime()
    settings, now = runtime.settings, runtime.clock()
    message = ses.envelope(request.get_data(cache=False), settings)
    client = sns_client()
    sns.verify(message, client, now)
    kind = message["Type"]
    if kind == "SubscriptionConfirmation":
        key = str(message.get("MessageId"))
        with runtime.sessions() as session:
            if events.seen(session, ses.SUBSCRIPTIONS, key):
                return _answer(200, status="already confirmed")
        # Amazon is asked outside any transaction (a SQLite write lock is not held over the network); if
        # it cannot be reached, nothing is remembered and a repeat of this request tries again.
        client.confirm(str(message.get("SubscribeURL") or ""))
        with runtime.sessions.begin() as session:
            events.claim(session, ses.SUBSCRIPTIONS, key, "confirmed", now)
        log.info("relay ses: subscription to %s confirmed", message.get("TopicArn"))
        return _answer(200, status="confirmed")
    if kind != "Notification":  # UnsubscribeConfirmation: someone unsubscribed the endpoint at Amazon
        log.warning("relay ses: SNS %s for %s; nothing done", kind, message.get("TopicArn"))
        return _answer(200, status="ignored")
    with runtime.sessions.begin() as session:
        report = events.apply_events(session, settings, ses.NAME, ses.events(message), now)
    return _done(ses.NAME, report)


def _json_body() -> object:
    try:
        return json.loads(request.get_data(cache=False))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Refused(400, "the body is not valid JSON") from None
