"""The scheduler: APScheduler 3.x runs the jobs in jobs/ at their times, in the process that holds the lock.

Every `mailer serve` process runs the same BackgroundScheduler; the job callables check the leader lock
first, so on a standby each run is a no-op. The callables are module-level functions taking only ids
(APScheduler's advice): they find the process's runtime, lock and stop signal through the service id.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from apscheduler.events import (
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobExecutionEvent,
    JobSubmissionEvent,
)
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

from mailer import jobs
from mailer.config import Settings, hhmm
from mailer.leader import LeaderLock
from mailer.models import JobRun
from mailer.publishing import campaigns
from mailer.runtime import Runtime

log = logging.getLogger("mailer.scheduler")

NIGHTLY = "nightly_newsletter"
CATCH_UP = "nightly_newsletter_catch_up"
HOUSEKEEPING_AT = dt.time(3, 30)  # jobs.housekeeping.AT


class DailyAt(BaseTrigger):
    """Once per local date at a wall-clock time, DST nights included.

    APScheduler 3.11's CronTrigger fires twice when the time falls in the repeated hour of a fall-back
    night (01:30 on 2026-11-01 in America/Chicago) and can skip the day after a spring-forward night,
    so the nightly jobs use this instead. A time the clocks skip runs at the same offset as before the
    jump (02:30 CST = 03:30 CDT); a repeated time runs at its first occurrence. That is exactly
    campaigns.scheduled_send, so a run at the fire time always finds its send time due and in grace.
    """

    __slots__ = ("at", "timezone")

    def __init__(self, at: dt.time, timezone: ZoneInfo) -> None:
        self.at = at
        self.timezone = timezone

    def fire_time(self, day: dt.date) -> dt.datetime:
        """The instant of `day`'s run, in UTC. (A local datetime inside the repeated hour never compares
        equal to one in another zone (PEP 495), and two sharing a zone compare by wall time: UTC is safe.)"""
        return dt.datetime.combine(day, self.at, tzinfo=self.timezone).astimezone(dt.UTC)

    def get_next_fire_time(self, previous_fire_time: dt.datetime | None, now: dt.datetime) -> dt.datetime:
        # After a run, the next date's time: never the same date again, even if the wall clock steps back.
        start = (previous_fire_time + dt.timedelta(microseconds=1) if previous_fire_time else now).astimezone(dt.UTC)
        day = start.astimezone(self.timezone).date()
        while (candidate := self.fire_time(day)) < start:
            day += dt.timedelta(days=1)
        return candidate

    def __str__(self) -> str:
        return f"daily at {self.at:%H:%M} ({self.timezone.key})"

    def __repr__(self) -> str:
        return f"<DailyAt at={self.at:%H:%M} timezone={self.timezone.key!r}>"


@dataclass(frozen=True)
class Schedule:
    """When one job runs, and how late a run may still start (APScheduler's misfire grace time)."""

    job_id: str
    trigger: BaseTrigger
    misfire_grace_seconds: int


def schedules(settings: Settings) -> list[Schedule]:
    """Every job of jobs.registry() with its trigger, in the clinic's time zone."""
    zone = settings.zone
    poll = settings.feed.poll_minutes
    return [
        Schedule("ingest_feed", IntervalTrigger(minutes=poll, timezone=zone), poll * 60),
        Schedule(NIGHTLY, DailyAt(hhmm(settings.newsletter.send_time), zone),
                 settings.newsletter.misfire_grace_minutes * 60),
        Schedule("advance_followups", IntervalTrigger(minutes=5, timezone=zone), 5 * 60),
        Schedule("deliver", IntervalTrigger(seconds=60, timezone=zone), 60),
        # Housekeeping late is harmless; it still runs after a long pause.
        Schedule("housekeeping", DailyAt(HOUSEKEEPING_AT, zone), 6 * 3600),
        Schedule("process_bounces", IntervalTrigger(minutes=15, timezone=zone), 15 * 60),
        Schedule("process_replies", IntervalTrigger(minutes=5, timezone=zone), 5 * 60),
    ]


def build_scheduler(service_id: str, settings: Settings) -> BackgroundScheduler:
    """A BackgroundScheduler with every job registered, not started."""
    scheduler = BackgroundScheduler(timezone=settings.zone)
    planned = schedules(settings)
    missing = set(jobs.registry()) - {item.job_id for item in planned}
    if missing:
        raise RuntimeError(f"jobs without a schedule: {', '.join(sorted(missing))}")
    for item in planned:
        scheduler.add_job(
            run_scheduled, trigger=item.trigger, args=[service_id, item.job_id], id=item.job_id, name=item.job_id,
            replace_existing=True, coalesce=True, max_instances=1, misfire_grace_time=item.misfire_grace_seconds,
        )
    scheduler.add_listener(functools.partial(_skipped_run, service_id), EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
    return scheduler


class SchedulerService:
    """One process's scheduler, leader-lock heartbeat and stop signal (`mailer serve` owns one)."""

    def __init__(self, runtime: Runtime, lock: LeaderLock) -> None:
        self.id = uuid.uuid4().hex
        self.runtime = runtime
        self.lock = lock
        # Set on shutdown: no job starts any more, and the deliver job stops claiming messages.
        self.stop = threading.Event()
        self._slots = threading.Condition()
        self._running: set[str] = set()
        self._heartbeat_stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._leading = False
        self.scheduler = build_scheduler(self.id, runtime.settings)
        _services[self.id] = self

    # --- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> bool:
        """Try for leadership once, start the scheduler and the heartbeat; True when this process leads."""
        self._leading = self.lock.try_acquire()
        self.scheduler.start()
        if self._leading:
            self._took_over()
        self._heartbeat = threading.Thread(target=self._keep_lock, name="leader-heartbeat", daemon=True)
        self._heartbeat.start()
        return self._leading

    def shutdown(self, timeout: float) -> bool:
        """Start no more runs, stop delivery claiming, wait (at most `timeout` s) for running jobs, release
        the lock. True when every job finished in time."""
        deadline = time.monotonic() + timeout
        with self._slots:
            self.stop.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)  # the jobs already running carry on; they are waited for below
        finished = self.wait_idle(deadline - time.monotonic())
        if not finished:
            log.error("jobs still running at shutdown: %s", ", ".join(sorted(self.running_jobs())))
        self._heartbeat_stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=max(0.5, deadline - time.monotonic()))
        self.lock.release()
        self.close()
        return finished

    def close(self) -> None:
        """Forget this service (its scheduled callables become no-ops)."""
        _services.pop(self.id, None)

    # --- leadership ------------------------------------------------------------------------------------

    def _keep_lock(self) -> None:
        """Renew (leader) or retry (standby) the lock every heartbeat until shutdown."""
        while not self._heartbeat_stop.wait(self.lock.next_attempt_in()):
            try:
                leading = self.lock.try_acquire()
                if leading and not self._leading:
                    self._took_over()
                self._leading = leading
            except Exception:  # this thread must outlive any surprise, or the lease silently runs out
                log.exception("leader heartbeat failed; retrying")

    def _took_over(self) -> None:
        """Leadership starts (at start-up or after the leader died): catch up on tonight's newsletter if
        its run was missed, and resume delivery at once instead of a minute later."""
        if self.stop.is_set():
            return
        self.scheduler.add_job(catch_up_newsletter, args=[self.id], id=CATCH_UP, name=CATCH_UP,
                               replace_existing=True, misfire_grace_time=None)
        self.scheduler.modify_job("deliver", next_run_time=dt.datetime.now(self.runtime.settings.zone))

    # --- job slots: what shutdown waits for ------------------------------------------------------------

    @contextlib.contextmanager
    def slot(self, job_id: str) -> Iterator[bool]:
        """Yield True if the job may run now (not stopping, not already running here), and hold its slot."""
        with self._slots:
            admitted = not self.stop.is_set() and job_id not in self._running
            if admitted:
                self._running.add(job_id)
        try:
            yield admitted
        finally:
            if admitted:
                with self._slots:
                    self._running.discard(job_id)
                    self._slots.notify_all()

    def running_jobs(self) -> set[str]:
        with self._slots:
            return set(self._running)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no job runs; False if some still run after `timeout` seconds."""
        with self._slots:
            return self._slots.wait_for(lambda: not self._running, timeout=max(0.0, timeout))


_services: dict[str, SchedulerService] = {}


def describe(exc: BaseException) -> str:
    """A one-line account of an error, without a database error's statement parameters (addresses)."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        detail = str(exc.orig).strip().splitlines()
        return f"{type(exc.orig).__name__}: {detail[0] if detail else ''}"[:300]
    detail = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {detail[0] if detail else ''}"[:300]


def run_scheduled(service_id: str, job_id: str) -> None:
    """What APScheduler calls: if this process leads, run one job for the clock's now. Never raises: a
    failing job is recorded and logged, and the scheduler carries on."""
    service = _services.get(service_id)
    if service is None:
        return
    with service.slot(job_id) as admitted:
        if not admitted:
            log.debug("job %s not started: stopping, or already running", job_id)
            return
        if not service.lock.is_leader:
            log.debug("job %s not run: standby", job_id)
            return
        runtime = service.runtime
        failed_inside = False

        def guarded(rt: Runtime, now: dt.datetime) -> dict[str, object]:
            nonlocal failed_inside
            function = jobs.registry()[job_id]
            if job_id == "deliver":
                # The shared stop signal: on SIGTERM the send loop stops claiming, finishes what is in flight.
                function = functools.partial(function, stop=service.stop)
            try:
                return function(rt, now)
            except Exception:
                failed_inside = True
                raise

        try:
            jobs.run_job(runtime, job_id, runtime.clock(), guarded)
        except Exception as exc:
            if not failed_inside:  # run_job logs a job's own failure; this one happened around it
                log.error("job %s could not run: %s", job_id, describe(exc), extra={"job": job_id})
            # Tracebacks at debug only: an exception's message may quote a contact's address.
            log.debug("job %s traceback", job_id, exc_info=True)


def newsletter_ran_since(session: Session, since: dt.datetime) -> bool:
    """Whether a nightly run for a moment at or after `since` finished (made, found or skipped a digest)."""
    return session.scalar(
        select(JobRun.id)
        .where(JobRun.job_id == NIGHTLY, JobRun.scheduled_for >= since, JobRun.outcome.in_(("ok", "skipped")))
        .limit(1)
    ) is not None


def catch_up_newsletter(service_id: str) -> None:
    """After a start or a takeover: if the latest send time passed with no nightly run recorded (the
    service was down) and posts are waiting, run the nightly job once now. make_newsletter decides:
    within the grace time it makes that night's digest; beyond it, it logs the night as missed and
    leaves the posts for staff."""
    service = _services.get(service_id)
    if service is None:
        return
    with service.slot(CATCH_UP) as admitted:
        if not admitted or not service.lock.is_leader:
            return
        runtime = service.runtime
        settings = runtime.settings
        now = runtime.clock()
        due = campaigns.scheduled_send(settings, campaigns.latest_send_date(settings, now))
        try:
            with runtime.sessions() as session:
                # No posts waiting: nothing could have been missed (and a fresh install warns of nothing).
                needed = not newsletter_ran_since(session, due) and campaigns.has_unsent_posts(session)
        except SQLAlchemyError as exc:
            log.error("nightly newsletter catch-up: %s", describe(exc))
            return
    if not needed:
        log.debug("nightly newsletter of %s: already run, or no posts waiting", due.astimezone(settings.zone))
        return
    log.info("nightly newsletter: no run recorded since its send time %s; running it now",
             due.astimezone(settings.zone).strftime("%Y-%m-%d %H:%M %Z"), extra={"job": NIGHTLY})
    run_scheduled(service_id, NIGHTLY)


def _skipped_run(service_id: str, event: JobExecutionEvent | JobSubmissionEvent) -> None:
    """APScheduler did not start a run: too late (the process was paused), or the previous one still runs."""
    service = _services.get(service_id)
    if service is None or not service.lock.is_leader:
        return
    if event.code == EVENT_JOB_MISSED:
        scheduled = getattr(event, "scheduled_run_time", None)
        log.warning("job %s missed its run at %s by more than its grace time (was the process paused?)",
                    event.job_id, scheduled.isoformat() if scheduled else "?", extra={"job": event.job_id})
    else:  # expected while a long delivery run outlasts the next interval
        log.debug("job %s still running; this interval's run skipped", event.job_id)
