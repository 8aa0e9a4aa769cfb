"""`mailer bounces process`: read the bounce mailbox once and apply what it reports."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import click

from mailer import bounces as bounce_reports
from mailer.cli_context import Context, UserError, friendly, pass_ctx
from mailer.config import Bounces
from mailer.runtime import Runtime

PASSWORD_VARIABLE = "MAILER_IMAP_PASSWORD"
# Messages applied per database transaction; each batch is marked processed right after its commit.
BATCH_SIZE = 100


@click.group("bounces")
def bounces() -> None:
    """Delivery reports from the bounce mailbox: hard bounces suppress, soft bounces are counted."""


@bounces.command("process")
@pass_ctx
@friendly
def process(ctx: Context) -> None:
    """Read new bounces and complaints from the maildir or IMAP folder in config.toml and apply them.

    Automatic replies ("out of office") change nothing. Every message read is marked processed (maildir:
    moved to its .processed folder; IMAP: flagged \\Seen), so running again never counts it twice.
    """
    try:
        with open_source(ctx.settings.bounces, {PASSWORD_VARIABLE: ctx.settings.imap_password}) as source:
            report = drain(ctx.runtime, source, ctx.now())
    except bounce_reports.BounceSourceError as exc:
        raise UserError(str(exc)) from None
    click.echo(", ".join(f"{name} {count}" for name, count in report.counts().items()))


def open_source(settings: Bounces, environ: Mapping[str, str]) -> bounce_reports.BounceSource:
    """The configured bounce mailbox, opened; a one-line error naming the key when it is not usable."""
    if settings.source == "maildir":
        if not settings.maildir:
            raise UserError('bounces.source is "maildir" but bounces.maildir is empty: set it to the folder '
                            "where bounces arrive")
        return bounce_reports.read_maildir(settings.maildir)
    if settings.source == "imap":
        for key in ("imap_host", "imap_user"):
            if not getattr(settings, key):
                raise UserError(f'bounces.source is "imap" but bounces.{key} is empty')
        password = environ.get(PASSWORD_VARIABLE, "")
        if not password:
            raise UserError(f'bounces.source is "imap" but {PASSWORD_VARIABLE} is not set')
        return bounce_reports.read_imap(settings.imap_host, settings.imap_port, settings.imap_user, password,
                                        settings.imap_folder)
    raise UserError('bounces.source is "none": set it to maildir or imap in config.toml')


def drain(runtime: Runtime, source: bounce_reports.BounceSource, now: dt.datetime,
          batch_size: int = BATCH_SIZE) -> bounce_reports.BounceReport:
    """Apply every unprocessed message, a batch per transaction, marking each batch only after it committed."""
    report = bounce_reports.BounceReport()
    batch: list[tuple[str, bytes]] = []

    def flush() -> None:
        nonlocal report
        with runtime.sessions.begin() as session:
            report += bounce_reports.process(session, runtime.settings, batch, now)
        # After the commit: a crash before this line re-reads the batch next time rather than losing it.
        source.mark_processed([key for key, _raw in batch])
        batch.clear()

    for item in source:
        batch.append(item)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return report
