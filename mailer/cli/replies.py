"""`mailer replies process`: read the replies mailbox once; a person's reply pauses their follow-ups."""

from __future__ import annotations

import click

from mailer import config
from mailer.cli.context import Context, UserError, friendly, parse_instant, pass_ctx
from mailer.inbound import replies as reply_mail
from mailer.inbound.mailbox import MailboxError


@click.group("replies")
def replies() -> None:
    """Replies to our emails: a person's reply pauses their follow-up sequence until staff decide."""


@replies.command("process")
@click.option("--at", "at", metavar="ISO-8601", help="Pretend it is this moment (default: now), as `mailer tick "
              "--at` does. Without an offset, clinic time.")
@pass_ctx
@friendly
def process(ctx: Context, at: str | None) -> None:
    """Read new messages from the maildir or IMAP folder in config.toml ([replies]) and apply them.

    A reply from a person whose follow-ups are running pauses them (staff then resume or close them on
    the inquiry page, or with `mailer inquiries resume EMAIL`). Out-of-office answers, delivery reports
    and mail from strangers change nothing. Nothing of what a reply says is kept. Every message read is
    recorded as handled in the same transaction as its effect, so running again never counts it twice.
    """
    if at:
        ctx.at = parse_instant(at, config.load(ctx.config_path).zone)
    try:
        with reply_mail.open_source(ctx.settings) as source:
            report = reply_mail.drain(ctx.runtime.sessions, ctx.settings, source, ctx.now())
    except MailboxError as exc:
        raise UserError(str(exc)) from None
    click.echo(", ".join(f"{name} {count}" for name, count in report.counts().items()))
