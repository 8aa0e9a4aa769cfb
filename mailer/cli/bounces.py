"""`mailer bounces process`: read the bounce mailbox once and apply what it reports."""

from __future__ import annotations

import click

from mailer.cli.context import Context, UserError, friendly, pass_ctx
from mailer.inbound import bounces as bounce_reports
from mailer.inbound.mailbox import MailboxError


@click.group("bounces")
def bounces() -> None:
    """Delivery reports from the bounce mailbox: hard bounces suppress, soft bounces are counted."""


@bounces.command("process")
@pass_ctx
@friendly
def process(ctx: Context) -> None:
    """Read new bounces and complaints from the maildir or IMAP folder in config.toml and apply them.

    Automatic replies ("out of office") change nothing. Every message read is recorded as handled, in
    the same transaction as its effect, and marked (maildir: moved to its .processed folder; IMAP: flagged
    \\Seen), so running again never counts it twice.
    """
    try:
        with bounce_reports.open_source(ctx.settings) as source:
            report = bounce_reports.drain(ctx.runtime.sessions, ctx.settings, source, ctx.now())
    except MailboxError as exc:
        raise UserError(str(exc)) from None
    click.echo(", ".join(f"{name} {count}" for name, count in report.counts().items()))
