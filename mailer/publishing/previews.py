"""Previews and staff test sends: a campaign rendered with sample personal values."""

from __future__ import annotations

from pathlib import Path

from mailer import files
from mailer.config import Settings
from mailer.models import Campaign
from mailer.outbound.transport import Envelope, SendResult
from mailer.outbound.transport.dkim import load_dkim
from mailer.publishing.render import Recipient, Renderer, sample_values
from mailer.runtime import Runtime


def render_parts(settings: Settings, campaign: Campaign) -> tuple[str, str, str]:
    """(subject, html, text) of the campaign as a sample recipient would see it."""
    prepared = Renderer(settings).prepare_campaign(campaign)
    values = sample_values(settings.web.base_url)
    return prepared.subject, prepared.html.fill(values), prepared.text.fill(values)


def write_preview(settings: Settings, campaign: Campaign) -> tuple[Path, str]:
    """Write var/previews/campaign-<id>.html; return its path and the text part."""
    _subject, html, text = render_parts(settings, campaign)
    folder = settings.var_dir / "previews"
    files.private_dir(folder)
    path = files.write_private(folder / f"campaign-{campaign.id}.html", html)
    return path, text


def send_test(runtime: Runtime, campaign: Campaign, address: str) -> SendResult:
    """One copy to a staff address, now, "[TEST]" in the subject; it is not an outbox message."""
    settings = runtime.settings
    renderer = Renderer(settings)
    prepared = renderer.prepare_campaign(campaign, subject_prefix="[TEST] ")
    now = runtime.clock()
    stamp = f"test{campaign.id}x{int(now.timestamp())}"
    message_id = f"<{stamp}@{settings.sender.from_email.rpartition('@')[2]}>"
    data = prepared.build(Recipient(address, "", sample_values(settings.web.base_url), message_id), now)
    signer = load_dkim(settings.delivery.dkim, settings.dkim_private_key)  # signed as the campaign will be
    if signer is not None:
        try:
            data = signer.sign(data)
        except ValueError as exc:
            return SendResult("temporary", None, str(exc), "envelope")
    connection = runtime.transport.connect()
    try:
        return connection.send(Envelope(settings.sender.from_email, address, data, key=stamp))
    finally:
        connection.close()
