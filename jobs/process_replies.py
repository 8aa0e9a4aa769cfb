"""Read the replies mailbox: a person's reply pauses their follow-ups (every 5 minutes, when replies.source is set)."""

from __future__ import annotations

import datetime as dt

from mailer.inbound import replies
from mailer.runtime import Runtime

EVERY = dt.timedelta(minutes=5)


def run(runtime: Runtime, now: dt.datetime) -> dict[str, object]:
    settings = runtime.settings
    if settings.replies.source == "none":
        return {"_skipped": True}
    with replies.open_source(settings) as source:
        report = replies.drain(runtime.sessions, settings, source, now)
    return dict(report.counts())
