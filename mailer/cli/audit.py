"""`mailer audit export --since DATE`: the access log as JSON lines."""

from __future__ import annotations

import datetime as dt
import json

import click

from mailer import access_log
from mailer.cli.context import Context, UserError, friendly, pass_ctx


@click.group("audit")
def audit() -> None:
    """The access log: who saw inquiry messages, who suppressed, erased, approved or changed a role."""


def since_instant(value: str, zone: dt.tzinfo) -> dt.datetime:
    """A date (the start of that day, clinic time) or an ISO-8601 time (clinic time without an offset)."""
    try:
        if len(value.strip()) == 10:
            return dt.datetime.combine(dt.date.fromisoformat(value.strip()), dt.time(), tzinfo=zone).astimezone(dt.UTC)
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise UserError(f"--since: not a date or an ISO-8601 time: {value!r} (e.g. 2026-12-01)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=zone)).astimezone(dt.UTC)


@audit.command("export")
@click.option("--since", "since", required=True, metavar="DATE",
              help="From this date (clinic time) or ISO-8601 time on, e.g. 2026-12-01.")
@pass_ctx
@friendly
def export(ctx: Context, since: str) -> None:
    """Print the access log from DATE on, one JSON object per line, oldest first."""
    start = since_instant(since, ctx.settings.zone)
    with ctx.runtime.sessions() as session:
        for entry in access_log.entries_since(session, start):
            click.echo(json.dumps(access_log.as_json(entry), ensure_ascii=False))
