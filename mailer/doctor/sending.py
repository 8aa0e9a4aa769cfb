"""`mailer doctor --send-test EMAIL`: one email through the real path (templates, DKIM, the relay)."""

from __future__ import annotations

import datetime as dt
import secrets

from mailer.config import Settings
from mailer.doctor import Result, fail, ok, warn
from mailer.outbound.transport import Envelope, make_transport
from mailer.outbound.transport.dkim import load_dkim
from mailer.publishing.render import Recipient, Renderer, RenderError, sample_values

TEMPLATE = "email/system/test"


def send_test(settings: Settings, address: str, now: dt.datetime) -> Result:
    """Render the system test email and hand it to the configured transport; not an outbox message."""
    sender = settings.sender
    try:
        prepared = Renderer(settings).prepare(TEMPLATE, subject=f"Test email from {settings.clinic.name}'s mailer",
                                              preheader="mailer doctor sent this to check the way out.",
                                              marketing=False, sent_at=now)
        transport = make_transport(settings)
    except (RenderError, ValueError) as exc:
        return fail("send_test", str(exc).splitlines()[0], "fix what is named, then try again")
    key = f"doctor{int(now.timestamp())}{secrets.token_hex(4)}"
    message_id = f"<{key}@{sender.from_email.rpartition('@')[2]}>"
    data = prepared.build(Recipient(address, "", sample_values(settings.web.base_url), message_id), now)
    try:  # signed as the send engine signs every message (transports never sign)
        signer = load_dkim(settings.delivery.dkim, settings.dkim_private_key)
        data = signer.sign(data) if signer is not None else data
    except ValueError as exc:
        return fail("send_test", str(exc).splitlines()[0], "fix the DKIM settings named, then try again")
    connection = transport.connect()
    try:
        result = connection.send(Envelope(sender.from_email, address, data, key=key, crlf=True))
    finally:
        connection.close()
    if result.outcome != "sent":
        return fail("send_test", f"not sent to {address}: {result.outcome} {result.code or ''} {result.detail}".strip(),
                    "see the smtp_… lines above")
    if settings.delivery.transport != "smtp":
        return warn("send_test", f"written to {settings.delivery.outbox_dir} (file transport), not sent to {address}",
                    "set MAILER_SMTP_URL to send it through the relay")
    return ok("send_test", f"sent to {address} ({message_id}): check it arrived, and that its headers say "
                           "spf=pass, dkim=pass and dmarc=pass")
