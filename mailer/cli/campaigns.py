"""`mailer campaigns list|show|preview|new|approve|unschedule|cancel|resume|test`: staff's campaign
workflow from the shell, the same steps the staff pages take."""

from __future__ import annotations

import datetime as dt
import io

import click

from mailer import audience
from mailer.cli.context import Context, UserError, cli_actor, friendly, pass_ctx
from mailer.outbound import outbox
from mailer.publishing import campaigns


@click.group("campaigns")
def campaigns_group() -> None:
    """Review, preview, test and approve campaigns."""


@campaigns_group.command("list")
@pass_ctx
@friendly
def campaigns_list(ctx: Context) -> None:
    """Recent campaigns with their state."""
    zone = ctx.settings.zone
    with ctx.runtime.sessions() as session:
        rows = campaigns.listing(session)
        if not rows:
            click.echo("No campaigns yet.")
            return
        click.echo(f"{'id':>4}  {'kind':<10} {'state':<9} {'created (local)':<16}  subject")
        for c in rows:
            created = c.created_at.astimezone(zone).strftime("%Y-%m-%d %H:%M")
            at = f"  (scheduled for {c.send_after.astimezone(zone):%Y-%m-%d %H:%M %Z})" if c.state == "approved" \
                and c.send_after else ""
            click.echo(f"{c.id:>4}  {c.kind:<10} {c.state:<9} {created:<16}  {c.subject}{at}")


@campaigns_group.command("show")
@click.argument("campaign_id", type=int)
@pass_ctx
@friendly
def campaigns_show(ctx: Context, campaign_id: int) -> None:
    """A campaign's details, counts by state, and who was not delivered and why."""
    zone = ctx.settings.zone
    with ctx.runtime.sessions() as session:
        c = campaigns.get(session, campaign_id)

        def local(value: dt.datetime | None) -> str:
            return value.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z") if value else "-"

        click.echo(f"Campaign {c.id}: {c.subject}")
        click.echo(f"  kind {c.kind}, topic {c.topic}, state {c.state}")
        click.echo(f"  created {local(c.created_at)}, approved {local(c.approved_at)}"
                   f"{' by ' + c.approved_by if c.approved_by else ''}, finished {local(c.finished_at)}")
        for post in c.posts:
            click.echo(f"  post: {post.title} <{post.link}>")
        counts = outbox.counts(session, c.id)
        click.echo("  messages: " + ", ".join(f"{state} {n}" for state, n in counts.items()))
        problems = outbox.undelivered(session, c.id)
        if problems:
            click.echo("  not delivered:")
            for _id, address, state, reason, code in problems:
                click.echo(f"    {address or '(erased)'}: {state}{f' {code}' if code else ''} {reason or ''}".rstrip())


@campaigns_group.command("preview")
@click.argument("campaign_id", type=int)
@click.option("--text", "as_text", is_flag=True, help="Print the plain-text part instead of writing HTML.")
@pass_ctx
@friendly
def campaigns_preview(ctx: Context, campaign_id: int, as_text: bool) -> None:
    """Write the campaign's HTML as a file to open in a browser (and print its path)."""
    from mailer.publishing import previews

    with ctx.runtime.sessions() as session:
        campaign = campaigns.get(session, campaign_id)
        html_path, text = previews.write_preview(ctx.settings, campaign)
    if as_text:
        click.echo(text)
    else:
        click.echo(str(html_path))


@campaigns_group.command("new")
@click.option("--topic", required=True, help="The topic whose subscribers get it.")
@click.option("--subject", required=True, help="The subject line.")
@click.option("--body", "body_file", required=True, type=click.File("r", encoding="utf-8-sig"), metavar="FILE.md",
              help="The message in Markdown (as on the compose page).")
@click.option("--preheader", default="", help="The line inboxes show after the subject.")
@pass_ctx
@friendly
def campaigns_new(ctx: Context, topic: str, subject: str, body_file: io.TextIOBase, preheader: str) -> None:
    """Write a one-off draft, as the compose page does; prints its id."""
    body = body_file.read().replace("\r\n", "\n").replace("\r", "\n")
    with ctx.runtime.sessions.begin() as session:
        campaign = campaigns.create_oneoff(session, ctx.settings, topic=topic, subject=subject, body_markdown=body,
                                           preheader=preheader, now=ctx.now(), by=cli_actor())
        campaign_id = campaign.id
    click.echo(campaign_id)


@campaigns_group.command("approve")
@click.argument("campaign_id", type=int)
@click.option("--at", "at", metavar="ISO-8601", help="Send at this time instead of on the next delivery run. "
              "Without an offset, clinic time.")
@pass_ctx
@friendly
def campaigns_approve(ctx: Context, campaign_id: int, at: str | None) -> None:
    """Approve a draft: it is sent on the next delivery run (`mailer send`, `mailer tick` or the scheduler),
    or at the time given with --at (a scheduled campaign can be given another time the same way)."""
    from mailer.publishing import schedules

    zone = ctx.settings.zone
    now = ctx.now()
    by = cli_actor()
    four_eyes = ctx.settings.newsletter.four_eyes
    with ctx.runtime.sessions.begin() as session:
        campaign = campaigns.get(session, campaign_id)
        if at is None:
            campaigns.approve(session, campaign, by=by, now=now, four_eyes=four_eyes)
        else:
            send_at = schedules.future_send_time(at, zone, now)
            campaigns.schedule(session, campaign, by=by, now=now, at=send_at, four_eyes=four_eyes)
    if at is None:
        click.echo(f"Campaign {campaign_id} approved; it goes out on the next delivery run.")
    else:
        click.echo(f"Campaign {campaign_id} scheduled for {send_at.astimezone(zone):%Y-%m-%d %H:%M %Z}.")


@campaigns_group.command("unschedule")
@click.argument("campaign_id", type=int)
@pass_ctx
@friendly
def campaigns_unschedule(ctx: Context, campaign_id: int) -> None:
    """Take a scheduled campaign back to a draft: nothing goes out until it is approved again."""
    with ctx.runtime.sessions.begin() as session:
        campaigns.unschedule(session, campaigns.get(session, campaign_id))
    click.echo(f"Campaign {campaign_id} unscheduled; it is a draft again.")


@campaigns_group.command("cancel")
@click.argument("campaign_id", type=int)
@pass_ctx
@friendly
def campaigns_cancel(ctx: Context, campaign_id: int) -> None:
    """Cancel a campaign: messages not yet handed over are skipped."""
    with ctx.runtime.sessions.begin() as session:
        skipped = campaigns.cancel(session, campaigns.get(session, campaign_id), ctx.now())
    click.echo(f"Campaign {campaign_id} cancelled; {skipped} message(s) will not be sent.")


@campaigns_group.command("resume")
@click.argument("campaign_id", type=int)
@pass_ctx
@friendly
def campaigns_resume(ctx: Context, campaign_id: int) -> None:
    """Send a halted campaign again (once the relay settings are fixed)."""
    with ctx.runtime.sessions.begin() as session:
        waiting = campaigns.resume(session, campaigns.get(session, campaign_id), ctx.now())
    click.echo(f"Campaign {campaign_id} resumed; {waiting} message(s) go out on the next delivery run.")


@campaigns_group.command("test")
@click.argument("campaign_id", type=int)
@click.option("--to", "to", required=True, metavar="EMAIL", help="Where the test goes (a staff address).")
@pass_ctx
@friendly
def campaigns_test(ctx: Context, campaign_id: int, to: str) -> None:
    """Send one test copy of the campaign to an address, now, with sample personal values."""
    from mailer.publishing import previews

    address = audience.normalize_email(to)
    with ctx.runtime.sessions() as session:
        campaign = campaigns.get(session, campaign_id)
        result = previews.send_test(ctx.runtime, campaign, address)
    if result.outcome != "sent":
        raise UserError(f"test to {address} not sent: {result.outcome} {result.code or ''} {result.detail}".strip())
    click.echo(f"Test of campaign {campaign_id} sent to {address}.")
