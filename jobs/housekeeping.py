"""Daily: return expired leases; purge old inquiries, unconfirmed sign-ups, rate-limit records, intake keys,
relay webhook events remembered for replays, and subscriber files checked but never imported."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, select

from mailer import audience, db
from mailer.inbound.relays import events as relay_events
from mailer.models import IntakeKey, JobRun, RateEvent, SubscriberImport
from mailer.outbound import outbox
from mailer.runtime import Runtime
from mailer.sequences import inquiries

# Daily at 03:30 clinic time (mailer.scheduler runs it then; `mailer tick` when it has not run since).
AT = dt.time(3, 30)
# Idempotency keys of the intake API are answered for 24 hours (mailer.web.intake_guards).
INTAKE_KEY_LIFETIME = dt.timedelta(hours=24)


def run(runtime: Runtime, now: dt.datetime) -> dict[str, int]:
    settings = runtime.settings
    with runtime.sessions.begin() as session:
        reclaimed = outbox.reclaim_expired(session, now)
        purged = inquiries.purge_inactive(session, settings, now)
        unconfirmed = audience.purge_unconfirmed(session, settings.newsletter.pending_days, now)
        rate = session.execute(delete(RateEvent).where(RateEvent.at < now - dt.timedelta(days=2))).rowcount or 0
        # A file checked on the staff pages but never imported holds people's addresses: a day is enough.
        files = session.execute(delete(SubscriberImport).where(
            SubscriberImport.state == "checked", SubscriberImport.created_at < now - dt.timedelta(days=1))).rowcount or 0
        keys = session.execute(delete(IntakeKey).where(IntakeKey.created_at <= now - INTAKE_KEY_LIFETIME)).rowcount or 0
        relayed = relay_events.forget(session, now)
    if purged or unconfirmed or files:  # people's rows were deleted: their old pages leave SQLite's log too
        db.after_erasure(runtime.engine)
    return {"leases_returned": reclaimed, "inquiries_purged": purged, "unconfirmed_purged": unconfirmed,
            "rate_events_purged": rate, "intake_keys_purged": keys, "relay_events_forgotten": relayed,
            "import_files_purged": files}


def last_due(runtime: Runtime, now: dt.datetime) -> dt.datetime:
    """The latest daily run time (03:30 clinic time) at or before `now`, in UTC."""
    zone = runtime.settings.zone
    day = now.astimezone(zone).date()
    moment = dt.datetime.combine(day, AT, tzinfo=zone).astimezone(dt.UTC)
    if moment > now:
        moment = dt.datetime.combine(day - dt.timedelta(days=1), AT, tzinfo=zone).astimezone(dt.UTC)
    return moment


def is_due(runtime: Runtime, now: dt.datetime) -> bool:
    """Whether the scheduler would run housekeeping at `now`: no run has been recorded for its latest
    daily time yet (what `mailer tick` checks, so a tick after 03:30 does the day's housekeeping once)."""
    with runtime.sessions() as session:
        done = session.scalar(select(JobRun.id).where(JobRun.job_id == "housekeeping",
                                                      JobRun.scheduled_for >= last_due(runtime, now),
                                                      JobRun.outcome == "ok").limit(1))
    return done is None
