"""`mailer demo`: the whole main job on the embedded default, on simulated clinic days, repeat-safe."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import logging
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select

from mailer import bundled, config, files, imports, jobs, schema
from mailer.models import Campaign, Contact, Inquiry, OutboxMessage
from mailer.publishing import previews
from mailer.runtime import Runtime, fixed_clock
from mailer.sequences import inquiries

SAMPLE = bundled.sample_dir()

# Simulated clinic-time moments (America/Chicago in the sample config), after the sample inquiries.
NIGHTS = (
    ("2026-11-23T10:00", "blog-feed-first-post-only.xml", "morning: follow-ups for new inquiries"),
    ("2026-11-23T18:00", "blog-feed-first-post-only.xml", "evening: the newsletter with the clinic's article"),
    ("2026-11-24T18:00", "blog-feed.xml", "next evening: two new posts on the blog"),
    ("2026-11-25T10:00", "blog-feed.xml", "two days later: the next follow-up steps"),
)


def demo_settings(config_path: Path | None, var_dir: Path) -> config.Settings:
    """The configured settings, pinned to the embedded default: SQLite and .eml files under var_dir."""
    # Nothing from the environment (the demo never touches a configured database or relay); its own key.
    settings = config.load(config_path, environ={"MAILER_SECRET_KEY": config.development_secret(var_dir)})
    return settings.model_copy(update={
        "database": settings.database.model_copy(update={"url": f"sqlite:///{var_dir / 'demo.db'}"}),
        "delivery": settings.delivery.model_copy(update={"transport": "file", "outbox_dir": str(var_dir / "outbox"),
                                                         "smtp_url": ""}),
        "paths": settings.paths.model_copy(update={"var": str(var_dir)}),
    })


def run(config_path: Path | None, var_dir: Path, echo: Callable[[str], None] = print) -> dict[str, int]:
    files.private_dir(var_dir)
    base = demo_settings(config_path, var_dir)
    outbox_dir = Path(base.delivery.outbox_dir)
    before = set(outbox_dir.glob("*.eml")) if outbox_dir.exists() else set()
    echo(f"mailer demo: SQLite at {var_dir / 'demo.db'}, emails written to {outbox_dir}/")

    runtime = Runtime(base)
    schema.upgrade(runtime.engine)
    first_moment = config_instant(base, NIGHTS[0][0])
    with runtime.sessions.begin() as session:
        with open(SAMPLE / "subscribers.csv", encoding="utf-8") as stream:
            subs = imports.import_file(session, base.secret_key, base.topics, stream, first_moment)
        with open(SAMPLE / "inquiries.csv", encoding="utf-8") as stream:
            inq = inquiries.import_csv(session, base, stream, first_moment)
    echo(f"  sample subscribers: {subs.imported} imported, {subs.unchanged} already there")
    echo(f"  sample inquiries:   {inq.imported} imported, {inq.duplicates} already there "
         "(two agreed to follow-ups, one did not)")
    runtime.close()

    # The first simulated morning comes after a send time the demo never had: not worth a warning here.
    logging.getLogger("mailer.newsletter").setLevel(logging.ERROR)
    sent_total = 0
    for moment, feed_file, label in NIGHTS:
        settings = base.model_copy(update={"feed": base.feed.model_copy(update={"url": str(SAMPLE / feed_file)})})
        now = config_instant(settings, moment)
        runtime = Runtime(settings, clock=fixed_clock(now))
        try:
            results = {job_id: jobs.run_job(runtime, job_id, now) for job_id in jobs.TICK_ORDER}
        finally:
            runtime.close()
        new_posts = results["ingest_feed"].get("new", 0)
        newsletter = results["nightly_newsletter"]
        queued_followups = results["advance_followups"].get("enqueued", 0)
        sent = results["deliver"].get("sent", 0)
        sent_total += sent
        made = f"newsletter campaign {newsletter['campaign']}" if newsletter.get("result") == "created" else "no newsletter"
        echo(f"  {moment} ({label}): {new_posts} new posts, {made}, {queued_followups} follow-ups due, "
             f"{sent} emails sent")

    runtime = Runtime(base)
    try:
        with runtime.sessions() as session:
            campaign_rows = session.scalars(select(Campaign).order_by(Campaign.id)).all()
            states = dict(session.execute(select(OutboxMessage.state, func.count()).group_by(OutboxMessage.state)).all())
            preview_paths = [previews.write_preview(base, c)[0] for c in campaign_rows]
            followups_sent = session.execute(
                select(Contact.email, Inquiry.consent, func.count(OutboxMessage.id))
                .join(Inquiry, Inquiry.contact_id == Contact.id)
                .outerjoin(OutboxMessage, (OutboxMessage.contact_id == Contact.id) & (OutboxMessage.kind == "followup")
                           & (OutboxMessage.state == "sent"))
                .group_by(Contact.email, Inquiry.consent).order_by(Contact.email)
            ).all()
    finally:
        runtime.close()
    created = sorted(set(outbox_dir.glob("*.eml")) - before, key=lambda path: (len(path.name), path.name))
    echo("")
    echo(f"This run sent {sent_total} emails ({'none again: everything was already sent' if not sent_total else 'see below'}).")
    echo("Outbox: " + ", ".join(f"{state} {count}" for state, count in sorted(states.items())))
    for address, consent, count in followups_sent:
        agreed = "agreed to follow-ups" if consent else "did not agree to follow-ups"
        echo(f"Inquiry from {address} ({agreed}): {count or 'no'} follow-up email{'s' if count != 1 else ''} sent")
    for path in created:
        echo(f"  {path}  {describe(path)}")
    for path in preview_paths:
        echo(f"HTML preview: {path}")
    echo("Open a preview in a browser, or an .eml file in a mail program. Run `mailer demo` again: nothing is sent twice.")
    return {"sent": sent_total, "files": len(created)}


def describe(path: Path) -> str:
    """"to <address>: <subject>" of an .eml file, for the summary."""
    with open(path, "rb") as handle:
        message = email.message_from_binary_file(handle, policy=email.policy.default)
    return f"to {message['To'].addresses[0].addr_spec}: {message['Subject']}"


def config_instant(settings: config.Settings, local: str) -> dt.datetime:
    return dt.datetime.fromisoformat(local).replace(tzinfo=settings.zone).astimezone(dt.UTC)
