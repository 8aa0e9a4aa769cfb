"""Enqueue approved campaigns and hand every due message to the transport (every minute)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from mailer.outbound.delivery import Delivery
from mailer.outbound.workers import Worker, wait_all
from mailer.publishing import campaigns
from mailer.publishing.render import Renderer
from mailer.runtime import Runtime
from mailer.stopping import Stop

TRIGGER = "interval"  # seconds = 60
COUNTS = ("sent", "deferred", "failed", "skipped", "unknown")


def run(
    runtime: Runtime,
    now: dt.datetime,
    stop: Stop | None = None,
    progress: Callable[[int], None] | None = None,
    helpers: Callable[[], Sequence[Worker]] | None = None,
) -> dict[str, int]:
    """Dispatch, send, finish. `helpers` starts helper processes (mailer.workers) that drain the
    same outbox alongside this one; their counts are added in."""
    renderer = Renderer(runtime.settings)
    with runtime.sessions.begin() as session:
        enqueued = campaigns.dispatch(session, now, renderer)
    workers = list(helpers()) if helpers else []
    try:
        report = Delivery(runtime.settings, runtime.engine, runtime.transport, runtime.clock, renderer=renderer).run(
            stop=stop, progress=progress)
    finally:
        results = wait_all(workers)
    counts = report.as_dict()
    for result in results:
        for key, value in result.items():
            counts[key] = counts.get(key, 0) + int(value)
    with runtime.sessions.begin() as session:
        finished = campaigns.finish(session, runtime.clock())
    return {"enqueued": sum(enqueued.values()), **{k: counts[k] for k in COUNTS}, "campaigns_finished": len(finished)}
