"""The scheduler service: the leader lock, the nightly trigger on DST nights, jobs safe to run twice,
catch-up after downtime, and `mailer serve` as a real process (health, SIGTERM mid-send, takeover)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, func, select, text

from mailer import audience, config, db, jobs
from mailer.cli import main
from mailer.cli.serve import LEASE_ENV
from mailer.leader import LeaderLock
from mailer.models import Campaign, JobRun, OutboxMessage, Post
from mailer.publishing import campaigns, feeds
from mailer.runtime import Runtime
from mailer.scheduler import DailyAt, SchedulerService, build_scheduler, catch_up_newsletter, run_scheduled
from tests.conftest import free_port
from tests.smtp_server import SMTPServer

CHICAGO = ZoneInfo("America/Chicago")
LEASE_SECONDS = 2.0  # short, so a takeover test takes seconds, not half a minute


class Clock:
    """A clock that stays where a test puts it."""

    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def __call__(self) -> dt.datetime:
        return self.at

    def advance(self, **delta: float) -> None:
        self.at += dt.timedelta(**delta)


def local(*args: int) -> dt.datetime:
    """A clinic-time instant (America/Chicago), as UTC."""
    return dt.datetime(*args, tzinfo=CHICAGO).astimezone(dt.UTC)


def with_send_time(config_path: Path, send_time: str) -> None:
    text_ = config_path.read_text()
    assert 'send_time = "18:00"' in text_
    config_path.write_text(text_.replace('send_time = "18:00"', f'send_time = "{send_time}"'))


def newsletters(runtime: Runtime) -> list[tuple[dt.date | None, str]]:
    with runtime.sessions() as session:
        return [(c.newsletter_date, c.state) for c in session.scalars(select(Campaign).order_by(Campaign.id))]


def job_runs(runtime: Runtime, job_id: str) -> list[tuple[str, dict]]:
    with runtime.sessions() as session:
        rows = session.execute(select(JobRun.outcome, JobRun.counts).where(JobRun.job_id == job_id)
                               .order_by(JobRun.id)).all()
    return [(outcome, counts) for outcome, counts in rows]


def ingest(runtime: Runtime, at: dt.datetime) -> None:
    with runtime.sessions.begin() as session:
        assert feeds.ingest(session, runtime.settings.feed, at).new == 1  # first_run_posts = 1


@pytest.fixture
def sqlite_settings(config_path: Path, sqlite_url: str) -> config.Settings:
    """Settings on SQLite only, for tests where the database plays no part."""
    return config.load(config_path, {"MAILER_DATABASE_URL": sqlite_url, "MAILER_SECRET_KEY": "test-secret-key-0123"})


@pytest.fixture
def runtime_at(settings: config.Settings) -> Iterator:
    """Build runtimes on the test's database at a settable clock; closed at the end."""
    made: list[Runtime] = []

    def make(at: dt.datetime, settings_: config.Settings | None = None) -> tuple[Runtime, Clock]:
        clock = Clock(at)
        runtime = Runtime(settings_ or settings, clock=clock)
        made.append(runtime)
        return runtime, clock

    yield make
    for runtime in made:
        runtime.close()


@pytest.fixture
def leading_service(runtime_at) -> Iterator:  # noqa: ANN001
    """A SchedulerService (never started) whose lock is held: its job functions run as the leader's."""
    made: list[SchedulerService] = []

    def make(at: dt.datetime, settings_: config.Settings | None = None) -> tuple[SchedulerService, Clock]:
        runtime, clock = runtime_at(at, settings_)
        lock = LeaderLock(runtime.engine, f"test-{len(made)}", clock)
        assert lock.try_acquire()
        service = SchedulerService(runtime, lock)
        made.append(service)
        return service, clock

    yield make
    for service in made:
        service.lock.release()
        service.close()


# --- the leader lock ---------------------------------------------------------------------------------


def test_one_holder_at_a_time(database_url: str) -> None:
    engine = db.make_engine(database_url)
    clock = Clock(dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC))
    first, second = LeaderLock(engine, "host-a:1:aa", clock), LeaderLock(engine, "host-b:2:bb", clock)
    try:
        assert first.try_acquire() and first.is_leader
        assert not second.try_acquire() and not second.is_leader
        assert first.try_acquire(), "renewing is acquiring again"
        first.release()
        assert not first.is_leader
        assert second.try_acquire() and second.is_leader
        assert not first.try_acquire()
    finally:
        first.release()
        second.release()
        engine.dispose()


def test_sqlite_lease_ends_by_itself_when_its_holder_stops_renewing(sqlite_url: str) -> None:
    engine = db.make_engine(sqlite_url)
    start = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
    clock_a, clock_b = Clock(start), Clock(start)
    first = LeaderLock(engine, "host:1:aa", clock_a, lease=dt.timedelta(seconds=30))
    second = LeaderLock(engine, "host:2:bb", clock_b, lease=dt.timedelta(seconds=30))
    try:
        assert first.try_acquire()
        clock_b.advance(seconds=29)
        assert not second.try_acquire()
        # A standby tries again right when the holder's lease runs out, not a heartbeat later.
        assert 0.9 < second.next_attempt_in() < 1.2
        # The holder died (no more heartbeats): its lease runs out and the standby takes over.
        clock_b.advance(seconds=2)
        assert second.try_acquire() and second.is_leader
        clock_a.advance(seconds=31)
        assert not first.is_leader, "an unrenewed lease stops counting for its holder too"
        assert not first.try_acquire()
        # Heartbeats keep it: renewed every 10 s, it never expires for the other.
        for _ in range(5):
            clock_b.advance(seconds=10)
            clock_a.advance(seconds=10)
            assert second.try_acquire()
            assert not first.try_acquire()
    finally:
        first.release()
        second.release()
        engine.dispose()


def test_postgres_leadership_ends_with_its_connection(postgres_database: str) -> None:
    database_url = postgres_database
    engine = db.make_engine(database_url)
    clock = Clock(dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC))
    first, second = LeaderLock(engine, "host-a:1:aa", clock), LeaderLock(engine, "host-b:2:bb", clock)
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        assert first.try_acquire()
        assert not second.try_acquire()
        # Without a confirmed heartbeat for a whole lease, the holder stops counting itself leader...
        clock.advance(seconds=31)
        assert not first.is_leader
        assert first.try_acquire() and first.is_leader  # ...until its session answers again.
        # The holder's session ends (process killed, network cut): the server frees the lock at once.
        with admin.connect() as connection:
            ended = connection.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                            "WHERE application_name = :name"),
                                       {"name": f"mailer-leader:{first.holder}"}).scalars().all()
        assert ended == [True]
        deadline = time.monotonic() + 5
        while not second.try_acquire():
            assert time.monotonic() < deadline, "the lock was not freed with its session"
            time.sleep(0.05)
        assert not first.try_acquire() and not first.is_leader
    finally:
        first.release()
        second.release()
        admin.dispose()
        engine.dispose()


# --- the nightly trigger on DST nights -----------------------------------------------------------------

DST_NIGHTS = [dt.date(2026, 3, 8), dt.date(2026, 11, 1), dt.date(2027, 3, 14), dt.date(2027, 11, 7)]


@pytest.mark.parametrize("send_time", ["02:30", "01:30", "02:00", "00:30", "03:30", "18:00", "23:59", "00:00"])
def test_the_nightly_trigger_fires_once_per_local_date_on_dst_nights(sqlite_settings: config.Settings,
                                                                     send_time: str) -> None:
    newsletter = sqlite_settings.newsletter.model_copy(update={"send_time": send_time})
    settings = sqlite_settings.model_copy(update={"newsletter": newsletter})
    trigger = DailyAt(config.hhmm(send_time), CHICAGO)
    for night in DST_NIGHTS:
        start = dt.datetime.combine(night - dt.timedelta(days=3), dt.time(12), tzinfo=CHICAGO).astimezone(dt.UTC)
        end = dt.datetime.combine(night + dt.timedelta(days=3), dt.time(12), tzinfo=CHICAGO).astimezone(dt.UTC)
        fires = []
        fire = trigger.get_next_fire_time(None, start)
        while fire.astimezone(dt.UTC) < end:  # in UTC: wall-time comparisons are wrong on these nights
            fires.append(fire)
            fire = trigger.get_next_fire_time(fire, fire)
        dates = [fire.astimezone(CHICAGO).date() for fire in fires]
        days = range(-2, 4) if send_time < "12:00" else range(-3, 3)  # from noon 3 days before to noon 3 after
        expected = [night + dt.timedelta(days=n) for n in days]
        assert dates == expected, (send_time, night, fires)
        # Each fire is the very instant make_newsletter treats as that date's send time.
        assert [f.astimezone(dt.UTC) for f in fires] == [campaigns.scheduled_send(settings, d) for d in dates]
        # Asked from any moment of the night (inside a skipped or repeated hour too), never the same date twice.
        for minutes in range(0, 24 * 60, 10):
            now = dt.datetime.combine(night, dt.time(0), tzinfo=CHICAGO).astimezone(dt.UTC) + dt.timedelta(minutes=minutes)
            fire = trigger.get_next_fire_time(None, now)
            after = trigger.get_next_fire_time(fire, fire)
            assert fire >= now and after.astimezone(CHICAGO).date() > fire.astimezone(CHICAGO).date()


def test_the_dst_nights_fire_at_the_expected_instants() -> None:
    """02:30 does not exist on 2026-03-08: it runs at 03:30 CDT (08:30 UTC), once. 01:30 happens twice on
    2026-11-01: it runs at the first one (CDT, 06:30 UTC), once."""
    spring = DailyAt(dt.time(2, 30), CHICAGO).get_next_fire_time(None, local(2026, 3, 8, 0, 0))
    assert spring == dt.datetime(2026, 3, 8, 8, 30, tzinfo=dt.UTC)
    fall = DailyAt(dt.time(1, 30), CHICAGO)
    first = fall.get_next_fire_time(None, local(2026, 11, 1, 0, 0))
    assert first == dt.datetime(2026, 11, 1, 6, 30, tzinfo=dt.UTC)
    assert fall.get_next_fire_time(first, first) == dt.datetime(2026, 11, 2, 7, 30, tzinfo=dt.UTC)
    # Started between the two 01:30s (01:45 CDT), the next run is the next night's.
    between = dt.datetime(2026, 11, 1, 6, 45, tzinfo=dt.UTC)
    assert fall.get_next_fire_time(None, between) == dt.datetime(2026, 11, 2, 7, 30, tzinfo=dt.UTC)


def test_every_job_is_registered_once_with_its_trigger(sqlite_settings: config.Settings) -> None:
    settings = sqlite_settings
    scheduler = build_scheduler("test", settings)
    registered = {job.id: job for job in scheduler.get_jobs()}
    assert set(registered) == set(jobs.registry())
    for job in registered.values():
        assert job.coalesce and job.max_instances == 1 and job.misfire_grace_time
        assert job.func is run_scheduled and job.args == ("test", job.id)
    nightly = registered["nightly_newsletter"]
    assert isinstance(nightly.trigger, DailyAt) and nightly.trigger.at == dt.time(18, 0)
    assert nightly.trigger.timezone == CHICAGO
    assert nightly.misfire_grace_time == settings.newsletter.misfire_grace_minutes * 60
    assert registered["housekeeping"].trigger.at == dt.time(3, 30)
    assert registered["ingest_feed"].trigger.interval == dt.timedelta(minutes=settings.feed.poll_minutes)
    assert registered["advance_followups"].trigger.interval == dt.timedelta(minutes=5)
    assert registered["deliver"].trigger.interval == dt.timedelta(seconds=60)


# --- every job is safe to run twice --------------------------------------------------------------------


def test_the_nightly_job_twice_for_the_same_moment_makes_one_campaign(
        leading_service, config_path: Path, environ: dict[str, str]) -> None:  # noqa: ANN001
    at = local(2026, 11, 23, 18, 0)
    service, _ = leading_service(at)
    ingest(service.runtime, at - dt.timedelta(hours=3))
    run_scheduled(service.id, "nightly_newsletter")
    run_scheduled(service.id, "nightly_newsletter")
    catch_up_newsletter(service.id)  # a run is recorded for tonight: nothing to catch up
    assert newsletters(service.runtime) == [(dt.date(2026, 11, 23), "approved")]
    assert [counts["result"] for _, counts in job_runs(service.runtime, "nightly_newsletter")] == ["created", "exists"]
    # `mailer tick --at` runs the same function: still the one campaign, which it now sends.
    runner = CliRunner()
    for _ in range(2):
        result = runner.invoke(main, ["--config", str(config_path), "tick", "--at", "2026-11-23T18:00"], env=environ,
                               catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert "nightly_newsletter: result exists" in result.output
    assert newsletters(service.runtime) == [(dt.date(2026, 11, 23), "sent")]


@pytest.mark.parametrize(("send_time", "fires", "night"), [
    # The clocks skip 02:00-03:00: the 02:30 run happens once, at 03:30 CDT.
    ("02:30", [dt.datetime(2026, 3, 8, 8, 30, tzinfo=dt.UTC)], dt.date(2026, 3, 8)),
    # 01:00-02:00 happens twice: whether woken at the first 01:30 or the second, one digest.
    ("01:30", [dt.datetime(2026, 11, 1, 6, 30, tzinfo=dt.UTC), dt.datetime(2026, 11, 1, 7, 30, tzinfo=dt.UTC)],
     dt.date(2026, 11, 1)),
    ("02:30", [dt.datetime(2027, 3, 14, 8, 30, tzinfo=dt.UTC)], dt.date(2027, 3, 14)),
    ("01:30", [dt.datetime(2027, 11, 7, 6, 30, tzinfo=dt.UTC), dt.datetime(2027, 11, 7, 7, 30, tzinfo=dt.UTC)],
     dt.date(2027, 11, 7)),
])
def test_a_dst_night_makes_one_digest(leading_service, config_path: Path, environ: dict[str, str], send_time: str,
                                      fires: list[dt.datetime], night: dt.date) -> None:  # noqa: ANN001
    with_send_time(config_path, send_time)
    settings = config.load(config_path, environ)
    assert DailyAt(config.hhmm(send_time), CHICAGO).get_next_fire_time(None, fires[0] - dt.timedelta(hours=6)) == fires[0]
    service, clock = leading_service(fires[0], settings)
    ingest(service.runtime, fires[0] - dt.timedelta(hours=6))
    for fire in fires:
        clock.at = fire
        run_scheduled(service.id, "nightly_newsletter")
        run_scheduled(service.id, "nightly_newsletter")
    result = CliRunner().invoke(main, ["--config", str(config_path), "tick", "--at", fires[-1].isoformat()],
                                env=environ, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [date for date, _ in newsletters(service.runtime)] == [night]
    results = [counts["result"] for _, counts in job_runs(service.runtime, "nightly_newsletter")]
    assert results[0] == "created" and set(results[1:]) == {"exists"}


# --- downtime, standby, failures -------------------------------------------------------------------------


def test_downtime_within_the_grace_time_is_caught_up_once(leading_service) -> None:  # noqa: ANN001
    # The service was down at 18:00 and is back at 18:40 (grace: 120 minutes).
    service, clock = leading_service(local(2026, 11, 23, 18, 40))
    ingest(service.runtime, local(2026, 11, 23, 12, 0))
    catch_up_newsletter(service.id)
    catch_up_newsletter(service.id)
    assert newsletters(service.runtime) == [(dt.date(2026, 11, 23), "approved")]
    assert len(job_runs(service.runtime, "nightly_newsletter")) == 1
    # The next night runs as usual (no new posts: no campaign, and nothing to catch up afterwards).
    clock.at = local(2026, 11, 24, 18, 0)
    assert service.lock.try_acquire()  # a day without heartbeats: leadership must be renewed first
    run_scheduled(service.id, "nightly_newsletter")
    catch_up_newsletter(service.id)
    assert [counts["result"] for _, counts in job_runs(service.runtime, "nightly_newsletter")] == ["created", "no-posts"]


def test_downtime_beyond_the_grace_time_is_logged_and_left_for_staff(leading_service, caplog) -> None:  # noqa: ANN001
    service, _ = leading_service(local(2026, 11, 23, 20, 30))  # 2.5 hours late
    ingest(service.runtime, local(2026, 11, 23, 12, 0))
    with caplog.at_level("INFO"):
        catch_up_newsletter(service.id)
    assert newsletters(service.runtime) == []
    assert job_runs(service.runtime, "nightly_newsletter") == [("skipped", {"result": "missed"})]
    assert any("missed its send time" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    with service.runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Post).where(Post.campaign_id.is_(None),
                                                                           Post.archived.is_(False))) == 1
    catch_up_newsletter(service.id)  # the skip is a recorded run: no second warning on the next start
    assert len(job_runs(service.runtime, "nightly_newsletter")) == 1


def test_nothing_to_catch_up_without_waiting_posts(leading_service, caplog) -> None:  # noqa: ANN001
    # A fresh install started the morning after a send time: no posts, so no "missed" warning either.
    service, _ = leading_service(local(2026, 11, 24, 9, 0))
    with caplog.at_level("INFO"):
        catch_up_newsletter(service.id)
    assert job_runs(service.runtime, "nightly_newsletter") == []
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_a_standby_runs_nothing(leading_service, runtime_at) -> None:  # noqa: ANN001
    leading_service(local(2026, 11, 23, 18, 0))  # another process holds the lock
    runtime, clock = runtime_at(local(2026, 11, 23, 18, 0))
    standby = SchedulerService(runtime, LeaderLock(runtime.engine, "standby", clock))
    try:
        assert not standby.lock.try_acquire()
        for job_id in ("ingest_feed", "nightly_newsletter", "deliver"):
            run_scheduled(standby.id, job_id)
        catch_up_newsletter(standby.id)
        with runtime.sessions() as session:
            assert session.scalar(select(func.count()).select_from(JobRun)) == 0
    finally:
        standby.close()


def test_a_failing_job_is_recorded_and_never_escapes(leading_service, settings: config.Settings, tmp_path: Path) -> None:  # noqa: ANN001
    broken = settings.model_copy(update={"feed": settings.feed.model_copy(update={"url": str(tmp_path / "no-feed.xml")})})
    service, _ = leading_service(local(2026, 11, 23, 18, 0), broken)
    run_scheduled(service.id, "ingest_feed")  # must not raise: APScheduler would only log it
    [(outcome, _counts)] = job_runs(service.runtime, "ingest_feed")
    assert outcome == "error"
    # A stopping service starts nothing more.
    service.stop.set()
    run_scheduled(service.id, "ingest_feed")
    assert len(job_runs(service.runtime, "ingest_feed")) == 1


def test_shutdown_waits_for_running_jobs_within_its_timeout(leading_service, runtime_at) -> None:  # noqa: ANN001
    service, clock = leading_service(local(2026, 11, 23, 18, 0))
    release = threading.Event()

    def long_job() -> None:
        with service.slot("deliver") as admitted:
            assert admitted
            release.wait(5)

    worker = threading.Thread(target=long_job)
    worker.start()
    deadline = time.monotonic() + 2
    while not service.running_jobs():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started = time.monotonic()
    assert service.shutdown(timeout=0.3) is False, "a job still running is reported"
    assert 0.25 < time.monotonic() - started < 2
    release.set()
    worker.join()
    # The lock was released all the same: another process leads at once.
    runtime, _ = runtime_at(clock())
    other = LeaderLock(runtime.engine, "next", clock)
    try:
        assert other.try_acquire()
    finally:
        other.release()
    with service.slot("ingest_feed") as admitted:
        assert not admitted, "nothing starts after shutdown"


# --- `mailer serve` as a process ---------------------------------------------------------------------------


@dataclass
class Server:
    """A `mailer serve` subprocess, its port and its log file."""

    process: subprocess.Popen
    port: int
    log_path: Path

    def health(self) -> dict | None:
        try:
            response = httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2)
        except httpx.TransportError:
            return None
        return response.json() if response.status_code == 200 else None

    def wait_healthy(self, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"mailer serve exited with {self.process.returncode}:\n{self.log()}")
            if (health := self.health()) is not None:
                return health
            time.sleep(0.1)
        raise AssertionError(f"/healthz did not answer within {timeout} s:\n{self.log()}")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, float]:
        """Send SIGTERM (or `signum`); return the exit code and how long the process took to end."""
        started = time.monotonic()
        self.process.send_signal(signum)
        code = self.process.wait(timeout=timeout)
        return code, time.monotonic() - started

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def serve_argv(config_path: Path, *args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("mailer")), "--config", str(config_path), *args]


@pytest.fixture
def start_server(config_path: Path, environ: dict[str, str], tmp_path: Path) -> Iterator:
    """Start `mailer serve` processes on free ports; whatever is still running is killed at the end."""
    servers: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Server:
        port = free_port()
        log_path = tmp_path / f"serve-{len(servers)}.log"
        full_env = {**os.environ, **environ, LEASE_ENV: str(LEASE_SECONDS), **(env or {})}
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(serve_argv(config_path, *args, "serve", "--port", str(port)),
                                       env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
        server = Server(process, port, log_path)
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(timeout=10)


@pytest.mark.slow
def test_serve_answers_health_and_stops_on_sigterm(start_server) -> None:  # noqa: ANN001
    server = start_server("--log-format", "json")
    health = server.wait_healthy()
    assert health["database"] is True and health["leader"] is True
    code, took = server.stop()
    assert code == 0, server.log()
    assert took < 30
    lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    messages = [line["message"] for line in lines if line["logger"] == "mailer.serve"]
    assert messages[0].startswith(f"serving on http://127.0.0.1:{server.port} as leader")
    assert messages[-1] == "stopped"
    assert any(line["logger"] == "mailer.jobs" and line.get("job") == "deliver" for line in lines)


@pytest.mark.slow
def test_serve_refuses_a_database_without_schema(config_path: Path, tmp_path: Path) -> None:
    env = {**os.environ, "MAILER_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}",
           "MAILER_SECRET_KEY": "test-secret-key-0123456789"}
    result = subprocess.run(serve_argv(config_path, "serve", "--port", str(free_port())), env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip().endswith("mailer: error: the database has no schema yet; run `mailer init` first")
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_sigterm_during_a_send_finishes_in_flight_and_leaves_nothing_sending(
        start_server, settings: config.Settings, smtp_server: SMTPServer) -> None:  # noqa: ANN001
    now = dt.datetime.now(dt.UTC)
    engine = db.make_engine(settings.database.url)
    sessions = db.session_factory(engine)
    try:
        with sessions.begin() as session:
            for n in range(300):
                audience.staff_subscribe(session, settings.secret_key, settings.topics, email=f"patient{n}@example.com",
                                         name=f"Patient {n}", topic_names=["newsletter"], source="test", now=now)
            campaign = campaigns.create_oneoff(session, settings, topic="newsletter", subject="Open evening",
                                               body_markdown="Join us on Thursday.", now=now)
            campaigns.approve(session, campaign, by="test", now=now)
        smtp_server.faults.data_delay = 0.3  # each message takes a while: SIGTERM lands mid-send
        server = start_server(env={"MAILER_SMTP_URL": smtp_server.url})
        server.wait_healthy()
        deadline = time.monotonic() + 20
        while len(smtp_server.received) < 8:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        code, took = server.stop()
        assert code == 0, server.log()
        assert took < 10, f"stopping took {took:.1f} s"
        with sessions() as session:
            states = dict(session.execute(select(OutboxMessage.state, func.count()).group_by(OutboxMessage.state)).all())
        assert "sending" not in states, states
        # Every message handed to SMTP is recorded as sent; the rest wait for the next run.
        assert states.get("sent") == len(smtp_server.received)
        assert states.get("queued", 0) + states["sent"] == 300 and states.get("queued", 0) > 0, states
    finally:
        engine.dispose()


@pytest.mark.slow
def test_sigterm_stops_the_services_send_helpers_too(start_server, settings: config.Settings, config_path: Path,
                                                      smtp_server: SMTPServer) -> None:  # noqa: ANN001
    """The service runs threads, so its send helpers are started fresh, not forked: SIGTERM still reaches
    them, each finishes its message in flight, and the service exits within its documented 30 s."""
    from tests.builders import bulk_subscribers, wait_until

    now = dt.datetime.now(dt.UTC)
    config_path.write_text(config_path.read_text().replace('processes = "auto"', "processes = 2"))
    engine = db.make_engine(settings.database.url)
    sessions = db.session_factory(engine)
    try:
        bulk_subscribers(engine, 1200, now=now)
        with sessions.begin() as session:
            campaign = campaigns.create_oneoff(session, settings, topic="newsletter", subject="Open evening",
                                               body_markdown="Join us on Thursday.", now=now)
            campaigns.approve(session, campaign, by="test", now=now)
        smtp_server.faults.data_delay = 0.05
        server = start_server(env={"MAILER_SMTP_URL": smtp_server.url})
        server.wait_healthy()
        helpers = wait_until(lambda: [pid for pid in _children(server.process.pid)
                                      if b"mailer.outbound.helper" in _cmdline(pid)], timeout=30)
        wait_until(lambda: len(smtp_server.received) >= 40, timeout=30)
        code, took = server.stop()
        assert code == 0, server.log()
        assert took < 30, f"stopping took {took:.1f} s"
        assert not [pid for pid in helpers if Path(f"/proc/{pid}").exists() and _cmdline(pid)], server.log()
        with sessions() as session:
            states = dict(session.execute(select(OutboxMessage.state, func.count()).group_by(OutboxMessage.state)).all())
        assert "sending" not in states, states
        received = [r.rcpt_tos[0] for r in smtp_server.received]
        assert len(set(received)) == len(received) == states.get("sent"), states
        assert states.get("queued", 0) + states["sent"] == 1200 and states.get("queued", 0) > 0, states
    finally:
        engine.dispose()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in children.read_text().split()]
        except OSError:
            continue
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.slow
def test_of_two_servers_one_leads_and_the_other_takes_over(start_server) -> None:  # noqa: ANN001
    first = start_server()
    assert first.wait_healthy()["leader"] is True
    second = start_server()
    assert second.wait_healthy()["leader"] is False
    assert first.health()["leader"] is True
    first.process.kill()  # kill -9: no clean release; the lock must free itself
    first.process.wait(timeout=10)
    killed = time.monotonic()
    while not (second.health() or {}).get("leader"):
        assert time.monotonic() - killed < LEASE_SECONDS + 2, second.log()
        time.sleep(0.05)
    took_over = time.monotonic() - killed
    assert took_over < LEASE_SECONDS + 1.5, f"takeover after {took_over:.1f} s"
    code, _ = second.stop(signal.SIGINT)  # Ctrl-C stops it as cleanly as SIGTERM
    assert code == 0, second.log()
    assert "leader lock acquired" in second.log()
