"""Daily: return expired leases, purge old inquiries and rate-limit records."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete

from mailer.models import RateEvent
from mailer.outbound import outbox
from mailer.runtime import Runtime
from mailer.sequences import followups


def run(runtime: Runtime, now: dt.datetime) -> dict[str, int]:
    with runtime.sessions.begin() as session:
        reclaimed = outbox.reclaim_expired(session, now)
        purged = followups.purge_inactive(session, runtime.settings, now)
        rate = session.execute(delete(RateEvent).where(RateEvent.at < now - dt.timedelta(days=2))).rowcount or 0
    return {"leases_returned": reclaimed, "inquiries_purged": purged, "rate_events_purged": rate}
