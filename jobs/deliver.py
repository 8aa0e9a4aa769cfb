"""Enqueue approved campaigns and hand every due message to the transport (every minute)."""

from __future__ import annotations

import datetime as dt
import threading

from mailer import campaigns
from mailer.delivery import Delivery
from mailer.runtime import Runtime

TRIGGER = "interval"  # seconds = 60


def run(runtime: Runtime, now: dt.datetime, stop: threading.Event | None = None, progress=None) -> dict[str, int]:  # noqa: ANN001
    with runtime.sessions.begin() as session:
        enqueued = campaigns.dispatch(session, now)
    report = Delivery(runtime.settings, runtime.engine, runtime.transport, runtime.clock).run(stop=stop, progress=progress)
    with runtime.sessions.begin() as session:
        finished = campaigns.finish(session, runtime.clock())
    return {"enqueued": sum(enqueued.values()), **report.as_dict(), "campaigns_finished": len(finished)}
