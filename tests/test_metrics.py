"""`GET /metrics`: off unless web.metrics = true; the outbox, the jobs and the suppressions as Prometheus
reads them, and never an address."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, insert

from mailer import audience, jobs
from mailer.config import Settings
from mailer.models import BounceEvent, Contact, OutboxMessage
from mailer.runtime import Runtime
from mailer.web import create_app
from tests.web_fixtures import SettableClock

ADDRESSES = ["riley.chen@example.com", "sam.ortiz@example.org", "pat@example.net"]


@pytest.fixture
def metrics_client(settings: Settings, engine: Engine, clock: SettableClock) -> FlaskClient:
    settings = settings.model_copy(update={"web": settings.web.model_copy(update={"metrics": True})})
    return create_app(Runtime(settings, clock=clock, engine_override=engine), leader=lambda: True).test_client()


def scrape(client: FlaskClient) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


def test_metrics_are_off_unless_turned_on(client: FlaskClient, settings: Settings) -> None:
    assert settings.web.metrics is False
    response = client.get("/metrics")
    assert response.status_code == 404
    assert b"mailer_" not in response.data


def test_the_outbox_jobs_and_suppressions_without_an_address(metrics_client: FlaskClient, runtime: Runtime,
                                                             clock: SettableClock) -> None:
    now = clock.now
    settings = runtime.settings
    with runtime.sessions.begin() as session:
        contacts = [audience.staff_subscribe(session, settings.secret_key, settings.topics, email=address,
                                             name="Riley Chen", topic_names=["newsletter"], source="test",
                                             now=now)[0] for address in ADDRESSES]
        session.flush()
        ids = [contact.id for contact in contacts]

        def message(n: int, state: str, kind: str, created: dt.timedelta, sent: dt.timedelta | None = None) -> dict:
            return {"dedupe_key": f"t:{n}", "kind": kind, "state": state, "contact_id": ids[n % 3],
                    "created_at": now - created, "due_at": now - created,
                    "sent_at": now - sent if sent is not None else None}

        rows = [message(n, "sent", "newsletter", dt.timedelta(hours=1), dt.timedelta(minutes=2 if n < 6 else 30))
                for n in range(10)]  # 6 of them in the last five minutes
        rows += [message(10, "sent", "followup", dt.timedelta(hours=2), dt.timedelta(hours=1))]
        rows += [message(11, "queued", "newsletter", dt.timedelta(minutes=3)),
                 message(12, "deferred", "newsletter", dt.timedelta(minutes=45)),  # the oldest waiting
                 message(13, "unknown", "followup", dt.timedelta(minutes=10)),
                 message(14, "failed", "followup", dt.timedelta(days=1)),
                 message(15, "skipped", "confirm", dt.timedelta(days=2))]
        session.execute(insert(OutboxMessage), rows)
        audience.suppress(session, settings.secret_key, contacts[0], "hard_bounce", now, detail="550 5.1.1 unknown")
        audience.suppress(session, settings.secret_key, contacts[1], "complaint", now, detail="abuse report")
        # Soft bounces count as the bounce rules count them: days within the window, per address.
        session.get(Contact, ids[2]).soft_bounces = 7  # a stale copy the metric must not read

        def bounce(contact: int, ago: dt.timedelta, verdict: str = "mailbox_unable", counted: bool = True) -> BounceEvent:
            return BounceEvent(contact_id=ids[contact], verdict=verdict, reason="mailbox_full", source="maildir",
                               report_key="k", report_at=now - ago, counted=counted, created_at=now)

        session.add_all([bounce(2, dt.timedelta(hours=1)), bounce(2, dt.timedelta(hours=2)),  # one day
                         bounce(2, dt.timedelta(days=3)),  # a second day
                         bounce(2, dt.timedelta(days=31)),  # outside bounces.soft_bounce_window (30 days)
                         bounce(1, dt.timedelta(days=1), counted=False),  # lifted by staff
                         bounce(0, dt.timedelta(days=1), verdict="address_bad")])
    jobs.run_job(runtime, "deliver", now, lambda rt, at: {"sent": 3})
    with pytest.raises(RuntimeError):
        jobs.run_job(runtime, "ingest_feed", now, lambda rt, at: (_ for _ in ()).throw(RuntimeError("feed down")))

    text, samples = scrape(metrics_client)

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("mailer_messages", state="sent", kind="newsletter") == 10
    assert value("mailer_messages", state="sent", kind="followup") == 1
    assert value("mailer_messages", state="failed", kind="followup") == 1
    assert value("mailer_messages_sent_total", kind="newsletter") == 10
    assert value("mailer_send_rate_per_second") == pytest.approx(6 / 300)
    assert value("mailer_queue_depth") == 3
    assert value("mailer_oldest_queued_age_seconds") == 45 * 60
    assert value("mailer_job_last_outcome", job="deliver", outcome="ok") == 1
    assert value("mailer_job_last_outcome", job="deliver", outcome="error") == 0
    assert value("mailer_job_last_outcome", job="ingest_feed", outcome="error") == 1
    assert value("mailer_job_last_run_timestamp_seconds", job="deliver") == now.timestamp()
    assert value("mailer_suppressed_addresses", reason="hard_bounce") == 1
    assert value("mailer_suppressed_addresses", reason="complaint") == 1
    assert value("mailer_suppressed_addresses", reason="unsubscribed") == 0
    assert value("mailer_soft_bounces") == 2

    # Labels hold fixed words only: no address, no name, not even a part of one.
    assert "@" not in text and "riley" not in text.lower() and "Chen" not in text
    for (_name, labels) in samples:
        for _key, label in labels:
            assert re.fullmatch(r"[a-z_]+", label), label


def test_an_empty_database_scrapes_to_zeros(metrics_client: FlaskClient) -> None:
    _text, samples = scrape(metrics_client)
    assert samples[("mailer_queue_depth", ())] == 0
    assert samples[("mailer_oldest_queued_age_seconds", ())] == 0
    assert samples[("mailer_send_rate_per_second", ())] == 0


def test_a_database_that_does_not_answer_is_a_503(settings: Settings, clock: SettableClock, tmp_path) -> None:  # noqa: ANN001
    broken = settings.model_copy(update={
        "web": settings.web.model_copy(update={"metrics": True}),
        "database": settings.database.model_copy(update={"url": f"sqlite:///{tmp_path}/missing.db"}),
    })
    (tmp_path / "missing.db").mkdir()  # a folder where the database file should be: sqlite cannot open it
    client = create_app(Runtime(broken, clock=clock), leader=lambda: True).test_client()
    response = client.get("/metrics")
    assert response.status_code == 503
