"""Doctor checks of the mailboxes mail comes back to (bounces, replies): each opens, and nothing in it changes."""

from __future__ import annotations

from mailer.config import MailboxSettings, Settings
from mailer.doctor import Result, fail, ok, warn, webhooks
from mailer.inbound.mailbox import MailboxError, open_mailbox

UNREAD = {
    "bounces": "hard bounces and complaints are not read, so dead addresses keep being mailed",
    "replies": "replies do not pause anyone's follow-ups",
}


def check(settings: Settings) -> list[Result]:
    return [
        mailbox("bounces", settings.bounces, settings.imap_password, "MAILER_IMAP_PASSWORD", settings),
        mailbox("replies", settings.replies, settings.replies_imap_password, "MAILER_REPLIES_IMAP_PASSWORD", settings),
    ]


def mailbox(name: str, where: MailboxSettings, password: str, password_env: str, settings: Settings) -> Result:
    check = f"{name}_mailbox"
    if where.source == "none" and name == "bounces" and webhooks.configured(settings):
        relays = webhooks.configured(settings)
        return ok(check, f"bounces and complaints arrive by the {', '.join(relays)} webhook"
                         + ("s" if len(relays) > 1 else ""))
    if where.source == "none":
        return warn(check, f'{name}.source is "none": {UNREAD[name]}',
                    f"point [{name}] in config.toml at the maildir or IMAP folder where they arrive")
    try:
        # mark="none": opening and closing only; nothing is read, moved or flagged.
        with open_mailbox(name, where, password, password_env=password_env, mark="none") as box:
            shown = box.where
    except MailboxError as exc:
        return fail(check, str(exc), f"check [{name}] in config.toml (and {password_env} for IMAP)")
    return ok(check, f"{shown} opens")
