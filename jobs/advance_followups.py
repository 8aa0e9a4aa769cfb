"""Enqueue the follow-up steps that have fallen due (every few minutes)."""

from __future__ import annotations

import datetime as dt

from mailer.runtime import Runtime
from mailer.sequences import followups


def run(runtime: Runtime, now: dt.datetime) -> dict[str, int]:
    with runtime.sessions.begin() as session:
        return followups.advance(session, runtime.settings, now)
