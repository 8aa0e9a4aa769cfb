"""`GET /metrics`: the outbox, the jobs and the suppressions in Prometheus' text format (web.metrics = true).

Every figure is read from the database at scrape time, so all `mailer serve` processes report the same
numbers. Labels only ever hold fixed words (states, kinds, job names, outcomes, reasons): never an
address or a name.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import Connection, case, func, select
from sqlalchemy.exc import SQLAlchemyError

from mailer.config import Settings, duration
from mailer.models import BounceEvent, JobRun, OutboxMessage, Suppression
from mailer.web import current_runtime, error_response

blueprint = Blueprint("metrics", __name__)

WAITING = ("queued", "deferred", "unknown")
# The send rate is the messages sent over this last stretch of time.
RATE_WINDOW = dt.timedelta(minutes=5)
OUTCOMES = ("running", "ok", "error", "skipped")
SUPPRESSION_REASONS = ("unsubscribed", "hard_bounce", "complaint", "erased", "staff", "soft_bounces")


@dataclass
class Snapshot:
    """The figures of one scrape."""

    messages: dict[tuple[str, str], int] = field(default_factory=dict)  # (state, kind) -> count
    sent_recently: int = 0
    queue_depth: int = 0
    oldest_waiting: dt.datetime | None = None
    jobs: list[tuple[str, dt.datetime, dt.datetime | None, str]] = field(default_factory=list)
    suppressions: dict[str, int] = field(default_factory=dict)
    soft_bounces: int = 0


def snapshot(connection: Connection, now: dt.datetime, settings: Settings) -> Snapshot:
    """One pass over the outbox (counts, recent sends, the oldest waiting message) and small reads beside it."""
    figures = Snapshot()
    waiting = OutboxMessage.state.in_(WAITING)
    rows = connection.execute(
        select(OutboxMessage.state, OutboxMessage.kind, func.count(),
               func.sum(case((OutboxMessage.sent_at >= now - RATE_WINDOW, 1), else_=0)),
               func.min(case((waiting, OutboxMessage.created_at), else_=None)))
        .group_by(OutboxMessage.state, OutboxMessage.kind)
    ).all()
    for state, kind, count, recent, oldest in rows:
        figures.messages[(state, kind)] = count
        figures.sent_recently += int(recent or 0) if state == "sent" else 0
        if state in WAITING:
            figures.queue_depth += count
            oldest = _utc(oldest)
            if oldest is not None and (figures.oldest_waiting is None or oldest < figures.oldest_waiting):
                figures.oldest_waiting = oldest
    newest = select(func.max(JobRun.id)).group_by(JobRun.job_id)
    figures.jobs = [(job, _utc(started), _utc(finished), outcome) for job, started, finished, outcome in connection.execute(
        select(JobRun.job_id, JobRun.started_at, JobRun.finished_at, JobRun.outcome)
        .where(JobRun.id.in_(newest)).order_by(JobRun.job_id))]
    figures.suppressions = dict(connection.execute(
        select(Suppression.reason, func.count()).group_by(Suppression.reason)).all())
    figures.soft_bounces = soft_bounce_days(connection, now, settings)
    return figures


def soft_bounce_days(connection: Connection, now: dt.datetime, settings: Settings) -> int:
    """Soft bounces as the bounce rules count them (evidence.soft_bounce_days): per contact, the clinic-local
    days within bounces.soft_bounce_window with a counted soft bounce, summed over contacts."""
    since = now - duration(settings.bounces.soft_bounce_window)
    rows = connection.execute(select(BounceEvent.contact_id, BounceEvent.report_at).where(
        BounceEvent.verdict == "mailbox_unable", BounceEvent.counted.is_(True), BounceEvent.contact_id.is_not(None),
        BounceEvent.report_at > since, BounceEvent.report_at <= now))
    days = {(contact_id, at.astimezone(settings.zone).date()) for contact_id, at in rows}
    return len(days)


def _utc(value: dt.datetime | str | None) -> dt.datetime | None:
    """Aggregates (min over a CASE) come back untyped on SQLite: as text there, as datetimes elsewhere."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value


def families(figures: Snapshot, now: dt.datetime) -> Iterator[Metric]:
    messages = GaugeMetricFamily("mailer_messages", "Outbox messages by state and kind.", labels=["state", "kind"])
    for (state, kind), count in sorted(figures.messages.items()):
        messages.add_metric([state, kind], count)
    yield messages
    sent = CounterMetricFamily("mailer_messages_sent", "Messages handed to the relay, by kind (Prometheus' rate() "
                                                       "of it is the send rate).", labels=["kind"])
    by_kind: dict[str, int] = {}
    for (state, kind), count in figures.messages.items():
        if state == "sent":
            by_kind[kind] = by_kind.get(kind, 0) + count
    for kind, count in sorted(by_kind.items()):
        sent.add_metric([kind], count)
    yield sent
    yield GaugeMetricFamily("mailer_send_rate_per_second", f"Messages sent per second over the last "
                            f"{int(RATE_WINDOW.total_seconds() // 60)} minutes.",
                            value=figures.sent_recently / RATE_WINDOW.total_seconds())
    yield GaugeMetricFamily("mailer_queue_depth", "Messages waiting to be sent (queued, deferred, unknown).",
                            value=figures.queue_depth)
    age = (now - figures.oldest_waiting).total_seconds() if figures.oldest_waiting else 0.0
    yield GaugeMetricFamily("mailer_oldest_queued_age_seconds", "Age of the oldest message still waiting (0: none).",
                            value=max(age, 0.0))
    last_run = GaugeMetricFamily("mailer_job_last_run_timestamp_seconds", "When each job last started (Unix time).",
                                 labels=["job"])
    duration = GaugeMetricFamily("mailer_job_last_run_duration_seconds", "How long each job's last finished run took.",
                                 labels=["job"])
    outcome = GaugeMetricFamily("mailer_job_last_outcome", "1 for the outcome of each job's last run, 0 for the others.",
                                labels=["job", "outcome"])
    for job, started, finished, result in figures.jobs:
        last_run.add_metric([job], started.timestamp())
        if finished is not None:
            duration.add_metric([job], max((finished - started).total_seconds(), 0.0))
        for name in OUTCOMES:
            outcome.add_metric([job, name], 1.0 if result == name else 0.0)
    yield last_run
    yield duration
    yield outcome
    suppressed = GaugeMetricFamily("mailer_suppressed_addresses", "Addresses never mailed again, by reason "
                                   "(hard_bounce and complaint are the bounce and complaint counts).", labels=["reason"])
    for reason in SUPPRESSION_REASONS:
        suppressed.add_metric([reason], figures.suppressions.get(reason, 0))
    yield suppressed
    yield GaugeMetricFamily("mailer_soft_bounces", "Soft bounces counted against addresses now: days with one "
                            "within bounces.soft_bounce_window, per address, summed.",
                            value=figures.soft_bounces)


class _Scrape:
    """A collector for one scrape: the figures read just before."""

    def __init__(self, figures: Snapshot, now: dt.datetime) -> None:
        self.figures, self.now = figures, now

    def collect(self) -> Iterator[Metric]:
        return families(self.figures, self.now)


@blueprint.get("/metrics")
def metrics() -> Response:
    runtime = current_runtime()
    now = runtime.clock()
    try:
        # AUTOCOMMIT: on SQLite a scrape must not queue behind a writer's lock (as /healthz).
        with runtime.engine.connect() as connection:
            figures = snapshot(connection.execution_options(isolation_level="AUTOCOMMIT"), now, runtime.settings)
    except (SQLAlchemyError, OSError):
        return error_response(503, message="The database does not answer.")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Scrape(figures, now))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
