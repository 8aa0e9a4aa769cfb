"""Enqueue approved campaigns and hand every due message to the transport (every minute)."""

from __future__ import annotations

import datetime as dt

from mailer.outbound import runner
from mailer.outbound.delivery import Progress
from mailer.publishing import campaigns
from mailer.publishing.render import Renderer
from mailer.runtime import Runtime
from mailer.stopping import Stop


def run(
    runtime: Runtime,
    now: dt.datetime,
    stop: Stop | None = None,
    progress: Progress | None = None,
    processes: int | None = None,
) -> dict[str, int]:
    """Dispatch, send (from as many processes as delivery.processes says), finish."""
    with runtime.sessions.begin() as session:
        enqueued = campaigns.dispatch(session, now, Renderer(runtime.settings))
    counts = runner.send(runtime, now, stop=stop, progress=progress, processes=processes)
    with runtime.sessions.begin() as session:
        finished = campaigns.finish(session, runtime.clock())
    return {"enqueued": sum(enqueued.values()), **{k: counts[k] for k in runner.COUNTS},
            "campaigns_finished": len(finished)}
