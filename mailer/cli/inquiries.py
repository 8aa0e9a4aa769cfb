"""`mailer inquiries add|import|close|resume`: inquiries recorded from the shell, and their follow-ups."""

from __future__ import annotations

import io
import sys

import click

from mailer.cli.context import Context, friendly, pass_ctx


@click.group("inquiries")
def inquiries_group() -> None:
    """Record inquiries and manage their follow-ups."""


@inquiries_group.command("add")
@click.argument("email")
@click.option("--name", required=True, help="The person's name.")
@click.option("--consent/--no-consent", required=True, default=None,
              help="Whether they agreed to follow-up emails.")
@click.option("--consent-text", default="", help="The wording they agreed to (required with --consent).")
@click.option("--source", required=True, help="phone, walk-in, email, ...")
@pass_ctx
@friendly
def inquiries_add(ctx: Context, email: str, name: str, consent: bool, consent_text: str, source: str) -> None:
    """Record an inquiry (staff entry)."""
    from mailer.sequences import inquiries

    if consent and not consent_text:
        consent_text = f"Agreed by {source} to follow-up emails from {ctx.settings.clinic.name} about the inquiry."
    now = ctx.now()
    with ctx.runtime.sessions.begin() as session:
        outcome = inquiries.record_inquiry(session, ctx.settings, email=email, name=name, consent=consent,
                                           consent_text=consent_text, source=source, received_at=now, now=now)
    what = "follow-ups scheduled" if outcome.enrolled else "no follow-ups"
    click.echo(f"Inquiry {outcome.inquiry_id} recorded; {what}.")


@inquiries_group.command("import")
@click.argument("csv_file", type=click.File("r", encoding="utf-8-sig"))
@pass_ctx
@friendly
def inquiries_import(ctx: Context, csv_file: io.TextIOBase) -> None:
    """Import inquiries from CSV with columns email,name,consent,consent_text,source,received_at."""
    from mailer.sequences import inquiries

    with ctx.runtime.sessions.begin() as session:
        report = inquiries.import_csv(session, ctx.settings, csv_file, ctx.now())
    for line, reason in report.rejected:
        click.echo(f"line {line}: rejected: {reason}", err=True)
    click.echo(f"{report.imported} imported, {report.duplicates} duplicates, {len(report.rejected)} rejected.")
    if report.rejected:
        sys.exit(2)


@inquiries_group.command("close")
@click.argument("email")
@click.option("--reason", required=True, type=click.Choice(["booked", "closed"]))
@pass_ctx
@friendly
def inquiries_close(ctx: Context, email: str, reason: str) -> None:
    """Stop a contact's follow-ups: they booked, or the inquiry is closed."""
    from mailer.sequences import inquiries

    with ctx.runtime.sessions.begin() as session:
        stopped = inquiries.close(session, ctx.settings, email, reason, ctx.now())
    click.echo(f"Marked {reason}; {stopped} follow-up sequence(s) stopped.")


@inquiries_group.command("resume")
@click.argument("email")
@pass_ctx
@friendly
def inquiries_resume(ctx: Context, email: str) -> None:
    """Restart follow-ups that a reply paused: the next step goes from now, inside the send window."""
    from mailer.sequences import pausing

    with ctx.runtime.sessions.begin() as session:
        due = pausing.resume(session, ctx.settings, email, ctx.now())
    local = due.astimezone(ctx.settings.zone).strftime("%Y-%m-%d %H:%M %Z")
    click.echo(f"Follow-ups resumed; the next email is due {local}.")
