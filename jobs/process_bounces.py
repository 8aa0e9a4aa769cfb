"""Read the bounce mailbox and apply what it reports (every 15 minutes, when bounces.source is set)."""

from __future__ import annotations

import datetime as dt

from mailer.inbound import bounces
from mailer.runtime import Runtime


def run(runtime: Runtime, now: dt.datetime) -> dict[str, object]:
    settings = runtime.settings
    if settings.bounces.source == "none":
        return {"_skipped": True}
    with bounces.open_source(settings) as source:
        report = bounces.drain(runtime.sessions, settings, source, now)
    return report.counts()
