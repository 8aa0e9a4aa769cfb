"""Pull the blog feed and store new posts (every feed.poll_minutes)."""

from __future__ import annotations

import datetime as dt

from mailer.publishing import feeds
from mailer.runtime import Runtime


def run(runtime: Runtime, now: dt.datetime) -> dict[str, int]:
    result = feeds.ingest_with(runtime.sessions, runtime.settings.feed, now, website=runtime.settings.clinic.website)
    return {"new": result.new, "archived": result.archived, "not_modified": int(result.not_modified)}
