"""Daily: return expired leases, purge old inquiries, rate-limit records and unimported subscriber files."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete

from mailer.models import RateEvent, SubscriberImport
from mailer.outbound import outbox
from mailer.runtime import Runtime
from mailer.sequences import followups

TRIGGER = "cron"  # daily at 03:30 clinic time


def run(runtime: Runtime, now: dt.datetime) -> dict[str, int]:
    with runtime.sessions.begin() as session:
        reclaimed = outbox.reclaim_expired(session, now)
        purged = followups.purge_inactive(session, runtime.settings, now)
        rate = session.execute(delete(RateEvent).where(RateEvent.at < now - dt.timedelta(days=2))).rowcount or 0
        # A file checked on the staff pages but never imported holds people's addresses: a day is enough.
        files = session.execute(delete(SubscriberImport).where(
            SubscriberImport.state == "checked", SubscriberImport.created_at < now - dt.timedelta(days=1))).rowcount or 0
    return {"leases_returned": reclaimed, "inquiries_purged": purged, "rate_events_purged": rate,
            "import_files_purged": files}
