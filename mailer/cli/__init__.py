"""The `mailer` command: each command parses, calls a service function, prints. Errors are one line."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import click

from mailer import audience, config
from mailer.cli.context import (
    ALLOW_DEV_SECRET,
    Context,
    LazyGroup,
    UserError,
    cli_actor,
    friendly,
    parse_instant,
    pass_ctx,
    refuse_development_secret,
    setup_logging,
)
from mailer.outbound import outbox
from mailer.publishing import campaigns as campaign_records  # (mailer.cli.campaigns is the command group)

__all__ = ["Context", "UserError", "friendly", "main", "parse_instant", "pass_ctx", "setup_logging"]

log = logging.getLogger("mailer.cli")


@click.group(
    cls=LazyGroup,
    lazy_subcommands={"audit": "mailer.cli.audit:audit", "backup": "mailer.cli.backup:backup",
                      "bounces": "mailer.cli.bounces:bounces", "campaigns": "mailer.cli.campaigns:campaigns_group",
                      "doctor": "mailer.cli.doctor:doctor", "inquiries": "mailer.cli.inquiries:inquiries_group",
                      "replies": "mailer.cli.replies:replies", "serve": "mailer.cli.serve:serve",
                      "staff": "mailer.cli.staff:staff", "templates": "mailer.cli.templates:templates"},
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Config file (default: $MAILER_CONFIG, else ./config.toml).")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              help="Log lines at or above this level go to stderr.")
@click.option("--log-format", default="text", show_default=True, type=click.Choice(["text", "json"]),
              help="json: one JSON object per line, for log collectors.")
@click.version_option(package_name="mailer")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None, log_level: str, log_format: str) -> None:
    """mailer: a clinic's newsletters from its blog, consented follow-ups for inquiries,
    and unsubscribes that always hold.

    Start with `mailer demo`. Each command's --help says more.
    """
    setup_logging(log_level, log_format)
    chosen = config_path is not None or bool(os.environ.get("MAILER_CONFIG"))
    ctx.obj = Context(config_path or config.default_config_path(), config_chosen=chosen)
    ctx.call_on_close(ctx.obj.close)


# --- init, ingest, tick, send, status -----------------------------------------------------------


@main.command()
@pass_ctx
@friendly
def init(ctx: Context) -> None:
    """Create or upgrade the database schema. Safe to run again.

    Where there is no config file yet, first write the commented default one there to edit.
    """
    from mailer import bundled, schema  # Alembic: only this command needs it

    path = ctx.config_path
    if not path.exists():
        try:
            bundled.write_default_config(path)
        except OSError as exc:
            raise UserError(f"{path}: cannot write the default config: {exc.strerror}") from None
        click.echo(f"Wrote {path}: a commented configuration with a sample clinic's values; edit it, "
                   "then run `mailer doctor`.")
    before, after = schema.upgrade(ctx.runtime.engine)
    if before == after:
        click.echo(f"Database is up to date (schema {after}).")
    else:
        click.echo(f"Database schema {'created' if before is None else 'upgraded from ' + before} at {after}.")


@main.command()
@pass_ctx
@friendly
def ingest(ctx: Context) -> None:
    """Pull the blog feed now and store new posts."""
    from mailer.publishing import feeds

    result = feeds.ingest_with(ctx.runtime.sessions, ctx.settings.feed, ctx.now(), website=ctx.settings.clinic.website)
    if result.not_modified:
        click.echo("Feed not modified since the last pull: 0 new posts.")
    else:
        extra = f" ({result.archived} older posts recorded as already published)" if result.archived else ""
        click.echo(f"{result.new} new post{'s' if result.new != 1 else ''}{extra}.")


@main.command()
@click.option("--at", "at", metavar="ISO-8601", help="Pretend it is this moment (default: now). "
              "Without an offset, clinic time.")
@pass_ctx
@friendly
def tick(ctx: Context, at: str | None) -> None:
    """Run every job that is due, once, as the scheduler would at that moment: ingest, newsletter,
    bounces (every 15 minutes) and replies (every 5) when their mailbox is set, follow-ups, delivery, and
    the daily housekeeping (03:30 clinic time) when it has not run since."""
    import gc

    from mailer import jobs

    if at:
        settings = config.load(ctx.config_path)
        ctx.at = parse_instant(at, settings.zone)
    now = ctx.now()
    # What is loaded by now lives as long as the command: frozen, a long send's garbage collections skip it.
    gc.freeze()
    for job_id in jobs.TICK_ORDER:
        if not jobs.is_due(ctx.runtime, job_id, now):
            continue
        counts = jobs.run_job(ctx.runtime, job_id, now)
        summary = ", ".join(f"{k} {v}" for k, v in counts.items())
        click.echo(f"{job_id}: {summary or 'done'}")


@main.command()
@click.option("--dry-run", is_flag=True, help="Show what would be sent; send nothing.")
@click.option("--processes", type=click.IntRange(1, 32), default=None,
              help="Worker processes sharing the connections (default: delivery.processes).")
@ALLOW_DEV_SECRET
@pass_ctx
@friendly
def send(ctx: Context, dry_run: bool, processes: int | None, allow_dev_secret: bool) -> None:
    """Hand every due outbox message to the transport now (SMTP or .eml files)."""
    import gc
    import signal

    from mailer.jobs import deliver
    from mailer.outbound import runner, workers
    from mailer.stopping import StopRequest, announce

    runtime = ctx.runtime
    if not dry_run:
        refuse_development_secret(runtime.settings, allow_dev_secret)
    now = ctx.now()
    if dry_run:
        with runtime.sessions() as session:
            due = outbox.due_summary(session, now)
            ready = {c.id: outbox.audience_size(session, c.topic) for c in campaign_records.ready(session, now)}
        total = sum(count for *_, count in due) + sum(ready.values())
        for kind, campaign_id, count in due:
            click.echo(f"would send {count} {kind} message(s)" + (f" of campaign {campaign_id}" if campaign_id else ""))
        for campaign_id, count in ready.items():
            click.echo(f"would enqueue and send {count} message(s) of approved campaign {campaign_id}")
        click.echo(f"{total} message(s) due; nothing sent (dry run).")
        return
    # What is loaded by now (modules, config, the prepared engine) lives as long as the command: frozen,
    # the garbage collector stops walking it again and again during a long send.
    gc.freeze()
    show_bar = sys.stdout.isatty()  # the bar needs the whole count; choosing the processes does not
    with runtime.sessions() as session:
        total = outbox.due_count(session, now, at_most=None if show_bar else workers.AUTO_MINIMUM)
        total += sum(outbox.audience_size(session, c.topic) for c in campaign_records.ready(session, now))
    processes = processes or runner.processes_for(runtime, now, total)
    stop = StopRequest()
    if threading.current_thread() is threading.main_thread():  # the runner passes the stop on to the helpers
        handler = stop.handler(announce)
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def sending(progress: Callable[[int], None] | None) -> dict[str, int]:
        return deliver.run(runtime, now, stop=stop, progress=progress, processes=processes)

    if show_bar and total:
        with click.progressbar(length=total, label="Sending", show_pos=True) as bar:
            lock = threading.Lock()  # the helpers' progress arrives on their reader threads

            def advance(count: int) -> None:
                with lock:
                    bar.update(count)

            counts = sending(advance)
    else:
        counts = sending(None)
    click.echo(", ".join(f"{k} {v}" for k, v in counts.items()))


@main.command()
@pass_ctx
@friendly
def status(ctx: Context) -> None:
    """Outbox counts by state and each campaign's progress."""
    with ctx.runtime.sessions() as session:
        totals = outbox.counts(session)
        click.echo("Outbox: " + ", ".join(f"{state} {n}" for state, n in totals.items()))
        rows = campaign_records.listing(session, limit=20)
        if rows:
            click.echo("")
            click.echo(f"{'id':>4}  {'state':<9} {'sent':>6} {'waiting':>7} {'failed':>6} {'skipped':>7}  subject")
        for campaign in rows:
            c = outbox.counts(session, campaign.id)
            waiting = c["queued"] + c["sending"] + c["deferred"] + c["unknown"]
            click.echo(f"{campaign.id:>4}  {campaign.state:<9} {c['sent']:>6} {waiting:>7} {c['failed']:>6} "
                       f"{c['skipped']:>7}  {campaign.subject}")
        from mailer.inbound import evidence  # only status needs it

        problems = evidence.setup_problems(session, [campaign.id for campaign in rows])
        if problems:
            click.echo("")
        for problem in problems:
            click.echo(f"Warning: the sending setup has a problem: campaign {problem.campaign_id}: "
                       f"{problem.reports} refusals say {problem.explanation} ({problem.reason}); "
                       f"for example: {problem.example}")
        for campaign in rows:
            if campaign.state == "halted":
                click.echo(f"\nCampaign {campaign.id} is halted: {campaign.halted_reason} Its messages wait; fix the "
                           f"relay settings, then `mailer campaigns resume {campaign.id}`.")


# --- subscribers, contacts ---------------------------------------------------------------------


@main.group("subscribers")
def subscribers_group() -> None:
    """Add and import newsletter subscribers (each with a consent record)."""


@subscribers_group.command("add")
@click.argument("email")
@click.option("--name", default="", help="The subscriber's name.")
@click.option("--topic", "topics", multiple=True, metavar="TOPIC",
              help="A topic to subscribe to (repeatable; default: the newsletter topic).")
@click.option("--source", required=True, help="Where and how the person agreed (kept in the consent ledger).")
@pass_ctx
@friendly
def subscribers_add(ctx: Context, email: str, name: str, topics: tuple[str, ...], source: str) -> None:
    """Add a subscriber with a consent record."""
    settings = ctx.settings
    with ctx.runtime.sessions.begin() as session:
        contact, added = audience.staff_subscribe(
            session, settings.secret_key, settings.topics, email=email, name=name,
            topic_names=list(topics) or [settings.newsletter.topic], source=source, now=ctx.now(),
        )
        address = contact.email
    if added:
        click.echo(f"Subscribed {address} to {', '.join(added)}.")
    else:
        click.echo(f"{address} was already subscribed; nothing changed.")


@subscribers_group.command("import")
@click.argument("csv_file", type=click.File("r", encoding="utf-8-sig"))
@pass_ctx
@friendly
def subscribers_import(ctx: Context, csv_file: io.TextIOBase) -> None:
    """Import subscribers from CSV with columns email,name,topics,consent_source,consented_at.

    topics is separated by ';'. The whole file is imported or nothing is. Rows without consent (no
    source or no time) or with bad data are rejected and reported by line number (exit status 2); a
    suppressed address, or a topic someone unsubscribed from, is skipped and reported, never
    resubscribed (exit status 0).
    """
    from mailer import imports

    settings = ctx.settings
    show_bar = sys.stdout.isatty()
    bar = None

    def checked(plan: imports.ImportPlan) -> None:
        nonlocal bar
        if show_bar and plan.imported:
            bar = click.progressbar(length=plan.imported, label="Importing", show_pos=True)
            bar.__enter__()

    try:
        with ctx.runtime.sessions.begin() as session:
            plan = imports.import_file(session, settings.secret_key, settings.topics, csv_file, ctx.now(),
                                       progress=lambda count: bar.update(count) if bar else None,
                                       on_checked=checked)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    for line, reason in plan.rejected:
        click.echo(f"line {line}: rejected: {reason}", err=True)
    for line, reason in plan.skipped:
        click.echo(f"line {line}: skipped: {reason}", err=True)
    click.echo(f"{plan.imported} imported, {plan.unchanged} already subscribed, {len(plan.skipped)} skipped "
               f"(suppressed or unsubscribed), {len(plan.rejected)} rejected.")
    if plan.rejected:
        sys.exit(2)


@main.group("contacts")
def contacts_group() -> None:
    """Access and erasure requests about one person."""


@contacts_group.command("export")
@click.argument("email")
@pass_ctx
@friendly
def contacts_export(ctx: Context, email: str) -> None:
    """Everything stored about a person, as JSON on stdout."""
    with ctx.runtime.sessions() as session:
        data = audience.export_contact(session, email)
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


@contacts_group.command("erase")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
@friendly
def contacts_erase(ctx: Context, email: str, yes: bool) -> None:
    """Erase a person: their data goes; a keyed hash keeps them from being mailed again."""
    with ctx.runtime.sessions.begin() as session:
        contact = audience.find_contact(session, email)
        if contact is None:
            raise UserError(f"no contact with address {audience.normalize_email(email)}")
        if not yes and sys.stdin.isatty():
            click.confirm(f"Erase {contact.email} and everything about them?", abort=True)
        audience.erase(session, ctx.settings.secret_key, contact, ctx.now(), actor=cli_actor())
    from mailer import db

    db.after_erasure(ctx.runtime.engine)
    click.echo("Erased. The address is kept only as a keyed hash on the suppression list.")


# --- demo -----------------------------------------------------------------------------------------


@main.command()
@click.option("--var", "var_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("var"),
              show_default=True, help="Working folder for the demo's database, outbox and previews.")
@pass_ctx
@friendly
def demo(ctx: Context, var_dir: Path) -> None:
    """The whole main job on the embedded default: SQLite under ./var/, the sample feed, sample
    subscribers and inquiries, delivery into ./var/outbox/ as .eml files. Safe to run again.

    Without a config file here (and none named), it uses mailer's default configuration."""
    from mailer import bundled
    from mailer.cli import demo_run

    config_path = ctx.config_path
    if not config_path.exists() and not ctx.config_chosen:
        click.echo(f"No {config_path} here: the demo uses mailer's default configuration "
                   "(`mailer init` writes a copy to edit).")
        config_path = bundled.default_config_path()
    demo_run.run(config_path, var_dir.resolve(), echo=click.echo)


if __name__ == "__main__":  # pragma: no cover
    main()
