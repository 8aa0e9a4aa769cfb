"""Scheduled jobs: one module each, a `run(runtime, now)` that calls mailer services and returns counts.

`mailer tick` and the scheduler call the same functions through `run_job`, which records each run
(for /healthz) and logs one line with its counts and duration.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from mailer.models import JobRun
from mailer.runtime import Runtime

log = logging.getLogger("mailer.jobs")

JobFunction = Callable[[Runtime, dt.datetime], dict[str, Any]]


# Job id -> the module that runs it, in the order `mailer tick` runs them; imported when the job runs, so
# a tick does not load the bounce rules or the housekeeping for jobs that are not due.
JOBS = ("ingest_feed", "nightly_newsletter", "advance_followups", "deliver", "housekeeping", "process_bounces",
        "process_replies")


def registry() -> dict[str, JobFunction]:
    """Job id -> function (each job's module imported on first call)."""
    return {job_id: _runner(job_id) for job_id in JOBS}


def _runner(job_id: str) -> JobFunction:
    def run(runtime: Runtime, now: dt.datetime, **options: Any) -> dict[str, Any]:
        return importlib.import_module(f"mailer.jobs.{job_id}").run(runtime, now, **options)

    run.__name__ = job_id
    return run


# Replies are read before the follow-ups advance: a reply that came in pauses the next step, never
# after it was queued.
# Bounces and replies before the follow-ups advance and delivery runs: a dead address or a reply read now
# stops the next message.
TICK_ORDER = ("ingest_feed", "nightly_newsletter", "process_bounces", "process_replies", "advance_followups",
              "deliver", "housekeeping")
# Jobs `mailer tick` runs only when their interval has passed since their last recorded run (the others
# decide for themselves whether there is anything to do).
TICK_WHEN_DUE = {"process_bounces": dt.timedelta(minutes=15), "process_replies": dt.timedelta(minutes=5)}
# Jobs that read a mailbox: nothing to do while it is not configured.
MAILBOX_JOBS = {"process_bounces": "bounces", "process_replies": "replies"}


def is_due(runtime: Runtime, job_id: str, now: dt.datetime) -> bool:
    """Whether `mailer tick` at `now` runs this job: housekeeping once a day; a mailbox job only when its
    mailbox is configured; a TICK_WHEN_DUE job when no run is recorded within its interval before `now`;
    the others always."""
    if job_id == "housekeeping":
        from mailer.jobs import housekeeping

        return housekeeping.is_due(runtime, now)
    mailbox = MAILBOX_JOBS.get(job_id)
    if mailbox is not None and getattr(runtime.settings, mailbox).source == "none":
        return False
    every = TICK_WHEN_DUE.get(job_id)
    if every is None:
        return True
    with runtime.sessions() as session:
        recent = session.scalar(
            select(JobRun.id).where(JobRun.job_id == job_id, JobRun.scheduled_for > now - every,
                                    JobRun.scheduled_for <= now).limit(1)
        )
    return recent is None


def run_job(runtime: Runtime, job_id: str, now: dt.datetime, function: JobFunction | None = None) -> dict[str, Any]:
    """Run one job for the moment `now`; record it; log one line. Errors are recorded and re-raised."""
    function = function or registry()[job_id]
    started = time.monotonic()
    with runtime.sessions.begin() as session:
        run = JobRun(job_id=job_id, scheduled_for=now, started_at=runtime.clock(), outcome="running",
                     counts={}, host=socket.gethostname())
        session.add(run)
        session.flush()
        run_id = run.id
    outcome, counts, error = "ok", {}, None
    try:
        counts = function(runtime, now) or {}
        if counts.pop("_skipped", False):
            outcome = "skipped"
        return counts
    except Exception as exc:
        outcome, error = "error", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        elapsed = time.monotonic() - started
        with runtime.sessions.begin() as session:
            run = session.get(JobRun, run_id)
            run.finished_at = runtime.clock()
            run.outcome = outcome
            run.counts = {k: v for k, v in counts.items() if isinstance(v, int | float | str | bool)}
            run.error = error
        summary = " ".join(f"{key}={value}" for key, value in counts.items())
        log_fn = log.error if outcome == "error" else log.info
        log_fn("job %s %s in %.2fs%s%s", job_id, outcome, elapsed, f" {summary}" if summary else "",
               f" error={error}" if error else "", extra={"job": job_id, "outcome": outcome, "counts": counts,
                                                          "duration_s": round(elapsed, 3)})
