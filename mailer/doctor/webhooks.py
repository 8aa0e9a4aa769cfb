"""Doctor checks of the relay webhooks that are turned on: their secrets are complete and parse."""

from __future__ import annotations

from mailer.config import Settings
from mailer.doctor import Result, fail, ok, warn
from mailer.inbound.relays import mailgun, postmark, sendgrid, ses

SHORTEST_PASSWORD = 16


def configured(settings: Settings) -> list[str]:
    """The relays whose webhook is on (its secret is set)."""
    return [relay.NAME for relay in (postmark, mailgun, sendgrid, ses) if relay.enabled(settings)]


def check(settings: Settings) -> list[Result]:
    """One line per relay webhook that is on, or half set up; nothing when none is."""
    results = []
    path = f"{settings.web.base_url}/api/relay/"
    if settings.postmark_webhook_user or settings.postmark_webhook_password:
        results.append(_postmark(settings, path + postmark.NAME))
    if mailgun.enabled(settings):
        results.append(ok("relay_webhook_mailgun", f"on at {path}{mailgun.NAME}, signed with MAILER_MAILGUN_SIGNING_KEY"))
    if sendgrid.enabled(settings):
        try:
            sendgrid.public_key(settings.sendgrid_public_key)
        except sendgrid.KeyProblem as exc:
            results.append(fail("relay_webhook_sendgrid", f"MAILER_SENDGRID_PUBLIC_KEY is {exc}: SendGrid's events are "
                                "refused (503) and wait at SendGrid", "copy the verification key from SendGrid's "
                                "Mail Settings › Signed Event Webhook Requests (base64, one line)"))
        else:
            results.append(ok("relay_webhook_sendgrid", f"on at {path}{sendgrid.NAME}, verification key parses "
                                                        "(ECDSA P-256)"))
    if ses.enabled(settings):
        topics = settings.relay_webhooks.ses_topic_arns
        results.append(ok("relay_webhook_ses", f"on at {path}{ses.NAME} for {len(topics)} SNS topic(s): "
                                               + ", ".join(topics)))
    return results


def _postmark(settings: Settings, url: str) -> Result:
    if not postmark.enabled(settings):
        missing = "MAILER_POSTMARK_WEBHOOK_PASSWORD" if settings.postmark_webhook_user else "MAILER_POSTMARK_WEBHOOK_USER"
        return fail("relay_webhook_postmark", f"{missing} is not set: the Postmark webhook is off",
                    "set both, and the same user and password in the webhook's basic auth at Postmark")
    if len(settings.postmark_webhook_password) < SHORTEST_PASSWORD:
        return warn("relay_webhook_postmark", f"MAILER_POSTMARK_WEBHOOK_PASSWORD is short "
                    f"({len(settings.postmark_webhook_password)} characters)",
                    "use a long random one, e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(24))'")
    return ok("relay_webhook_postmark", f"on at {url}, behind HTTP basic auth")
