"""Real `mailer send` processes: killed with SIGKILL mid-campaign, and several draining one campaign."""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import logging
import os
import pty
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mailer import config, db
from mailer.models import Campaign, OutboxMessage
from mailer.outbound import outbox
from mailer.publishing import campaigns
from mailer.publishing.render import Renderer
from tests.builders import bulk_subscribers, start_campaign, wait_until
from tests.smtp_server import SMTPServer

MAILER = str(Path(sys.executable).with_name("mailer"))
NOW = dt.datetime(2026, 11, 23, 18, 0, tzinfo=dt.UTC)
ROOT = Path(__file__).resolve().parent.parent


def campaign_to(recipients: int, config_path: Path, send_env: dict[str, str], engine) -> config.Settings:  # noqa: ANN001
    """The send's settings, after a campaign to `recipients` new subscribers was approved and enqueued."""
    settings = config.load(config_path, send_env)
    bulk_subscribers(engine, recipients, now=NOW)
    start_campaign(db.session_factory(engine), settings, NOW, body="Join us.")
    return settings


@pytest.fixture
def send_env(config_path: Path, environ: dict[str, str], smtp_server: SMTPServer) -> dict[str, str]:
    text = config_path.read_text().replace('lease = "PT5M"', 'lease = "PT2S"')
    config_path.write_text(text)
    return {**os.environ, **environ, "MAILER_SMTP_URL": smtp_server.url, "MAILER_CONFIG": str(config_path)}


def spawn(env: dict[str, str], *args: str) -> subprocess.Popen:
    """`mailer send` in a session of its own: `settle` can end every process of it, helpers included."""
    return subprocess.Popen([MAILER, "send", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def settle(process: subprocess.Popen, timeout: float = 30) -> tuple[str, str]:
    """Wait for a send (and its helpers, which hold its output open) to end, and return its stdout and
    stderr; if it does not end, kill them all, so the failure is this test's and leaves nothing running
    into the next."""
    try:
        out, err = process.communicate(timeout=timeout)
        return out.decode(errors="replace"), err.decode(errors="replace")
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise


def leases_ended(settings: config.Settings) -> bool:
    """Whether every claim of the outbox has run out (a killed worker's rows may be reclaimed)."""
    engine = db.make_engine(settings.database.url)
    try:
        with engine.connect() as connection:
            latest = connection.scalar(select(func.max(OutboxMessage.lease_until))
                                       .where(OutboxMessage.state == "sending"))
    finally:
        engine.dispose()
    return latest is None or latest < dt.datetime.now(dt.UTC)


def outbox_counts(settings: config.Settings) -> dict[str, int]:
    engine = db.make_engine(settings.database.url)
    try:
        with db.session_factory(engine)() as session:
            return outbox.counts(session)
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("processes", ["auto", "4"])
def test_sigkill_during_a_campaign_loses_nothing(config_path: Path, send_env: dict[str, str], smtp_server: SMTPServer,
                                                 engine, processes: str) -> None:  # noqa: ANN001
    # "auto": as many processes as this machine has cores (up to 4); "4": a larger machine's, on any machine.
    # Each SIGKILL makes its helpers stop (the parent-death signal, sometimes several times over).
    args = () if processes == "auto" else ("--processes", processes)
    recipients = 2000
    settings = campaign_to(recipients, config_path, send_env, engine)
    smtp_server.faults.data_delay = 0.002  # a relay that takes a little time, so kills land mid-send
    rng = random.Random(7)
    kills = 0
    for _ in range(5):
        # Killed mid-send, whatever the machine's speed: once the relay has seen some of its messages.
        target = smtp_server.data_commands + rng.randint(20, 250)
        process = spawn(send_env, *args)
        try:
            wait_until(lambda target=target, process=process: smtp_server.data_commands >= target
                       or process.poll() is not None, every=0.005)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
        finally:
            settle(process)
    wait_until(lambda: leases_ended(settings), timeout=30, every=0.1)  # the killed workers' leases ran out
    final = subprocess.run([MAILER, "send"], env=send_env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr

    per_recipient = collections.Counter(r.rcpt_tos[0] for r in smtp_server.received)
    missing = recipients - len(per_recipient)
    duplicates = sum(per_recipient.values()) - len(per_recipient)
    # In flight at a kill: a message on each connection, and replies received whose result write had not
    # committed yet (the recorder writes them as they come; about one more per connection). The hard
    # limit, UNRECORDED_PER_CONNECTION, has its own test in test_delivery.py.
    in_flight_bound = kills * settings.delivery.connections * 2
    print(f"\ncrash test: {recipients} recipients, {kills} SIGKILLs, {missing} missing, {duplicates} duplicates "
          f"(bound {in_flight_bound})")
    assert kills >= 3
    assert missing == 0
    assert duplicates <= in_flight_bound
    counts = outbox_counts(settings)
    assert counts["sent"] == recipients and counts["sending"] == counts["queued"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 4])
def test_several_processes_drain_one_campaign_exactly_once(config_path: Path, send_env: dict[str, str],
                                                           smtp_server: SMTPServer, engine, processes: int) -> None:  # noqa: ANN001
    # PostgreSQL is where this scales out (FOR UPDATE SKIP LOCKED); on SQLite the processes take turns
    # at the one write lock, and the promise is the same: nobody gets the message twice.
    recipients = 1500
    campaign_to(recipients, config_path, send_env, engine)
    env = {**send_env}
    config_path.write_text(config_path.read_text().replace("batch_size = 200", "batch_size = 50"))
    workers = [spawn(env) for _ in range(processes)]
    try:
        outputs = [w.communicate(timeout=180) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    assert all(w.returncode == 0 for w in workers), outputs
    per_recipient = collections.Counter(r.rcpt_tos[0] for r in smtp_server.received)
    assert len(per_recipient) == recipients
    assert max(per_recipient.values()) == 1
    sent_by = [int(out.decode().split("sent ")[1].split(",")[0]) for out, _err in outputs]
    print(f"\n{processes} processes: {recipients} recipients, sent per process {sent_by}")
    assert sum(sent_by) == recipients and sum(1 for n in sent_by if n > 0) >= 2


@pytest.mark.slow
def test_send_with_several_processes_reports_every_message_once(config_path: Path, send_env: dict[str, str],
                                                                 smtp_server: SMTPServer, engine) -> None:  # noqa: ANN001
    recipients = 600
    settings = campaign_to(recipients, config_path, send_env, engine)
    result = subprocess.run([MAILER, "send", "--processes", "3"], env=send_env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"sent {recipients}," in result.stdout and "failed 0" in result.stdout
    per_recipient = collections.Counter(r.rcpt_tos[0] for r in smtp_server.received)
    assert len(per_recipient) == recipients and max(per_recipient.values()) == 1
    assert outbox_counts(settings)["sent"] == recipients


@pytest.mark.slow
def test_sigterm_stops_every_process_of_a_send_cleanly(config_path: Path, send_env: dict[str, str],
                                                       smtp_server: SMTPServer, engine) -> None:  # noqa: ANN001
    """The helpers are forked from the command: SIGTERM to it reaches them, each finishes what it has in
    flight, gives back the rest, and the command exits 0 with every result recorded."""
    recipients = 400
    settings = campaign_to(recipients, config_path, send_env, engine)
    smtp_server.faults.data_delay = 0.02  # slow enough to be stopped half-way
    process = subprocess.Popen([MAILER, "send", "--processes", "2"], env=send_env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_until(lambda: smtp_server.data_commands >= 40, timeout=30, every=0.02)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    counts = outbox_counts(settings)
    assert counts["sending"] == 0
    received = collections.Counter(r.rcpt_tos[0] for r in smtp_server.received)
    assert max(received.values()) == 1
    assert 40 <= counts["sent"] == len(received) < recipients
    assert counts["queued"] == recipients - counts["sent"]
    assert f"sent {counts['sent']}," in out


def helper_pids(pid: int) -> list[int]:
    """The processes `pid` forked (Linux: /proc/<pid>/task/*/children)."""
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in children.read_text().split()]
        except OSError:  # the thread ended meanwhile
            continue
    return found


@pytest.mark.slow
def test_repeated_signals_stop_every_process_of_a_send_cleanly(config_path: Path, send_env: dict[str, str],
                                                               smtp_server: SMTPServer, engine) -> None:  # noqa: ANN001
    """A helper may be told to stop several times in a row: Linux sends the parent-death signal again
    each time one of a killed parent's threads, having adopted the helper, dies in turn; and an impatient
    operator presses Ctrl-C twice. Every repeat is ignored, none blocks the stop (a signal handler that
    took a lock deadlocked when a repeat interrupted it inside), and every result is recorded."""
    recipients = 600
    settings = campaign_to(recipients, config_path, send_env, engine)
    smtp_server.faults.data_delay = 0.01
    process = spawn(send_env, "--processes", "3")
    wait_until(lambda: smtp_server.data_commands >= 40, timeout=30, every=0.02)
    helpers = helper_pids(process.pid)
    assert len(helpers) == 2, helpers
    end = time.monotonic() + 1.0
    while time.monotonic() < end:  # a stream of repeats: some land while an earlier one is being handled
        for pid in (process.pid, *helpers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    _, err = settle(process, timeout=60)  # a deadlocked process fails here
    assert process.returncode == 0, err
    assert err.count("finishing the messages in flight") == 3, err  # once per process, whatever the repeats
    counts = outbox_counts(settings)
    received = collections.Counter(r.rcpt_tos[0] for r in smtp_server.received)
    assert counts["sending"] == 0 and max(received.values()) == 1
    assert counts["sent"] == len(received) and counts["queued"] == recipients - counts["sent"]


@pytest.mark.slow
def test_a_large_send_with_the_default_config_shares_the_work_out(config_path: Path, send_env: dict[str, str],
                                                                   smtp_server: SMTPServer, engine) -> None:  # noqa: ANN001
    """processes = "auto": on a machine with several cores a send of 1,000 or more forks helpers."""
    recipients = 1200
    settings = campaign_to(recipients, config_path, send_env, engine)
    assert settings.delivery.processes == "auto"
    result = subprocess.run([MAILER, "send"], env=send_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"sent {recipients}," in result.stdout and "failed 0" in result.stdout
    per_recipient = collections.Counter(r.rcpt_tos[0] for r in smtp_server.received)
    assert len(per_recipient) == recipients and max(per_recipient.values()) == 1


@pytest.mark.slow
def test_on_a_terminal_the_progress_bar_counts_every_process(config_path: Path, send_env: dict[str, str],
                                                            smtp_server: SMTPServer, engine) -> None:  # noqa: ANN001
    recipients = 1200
    campaign_to(recipients, config_path, send_env, engine)
    controller, terminal = pty.openpty()
    process = subprocess.Popen([MAILER, "send", "--processes", "2"], env=send_env, stdin=subprocess.DEVNULL,
                               stdout=terminal, stderr=subprocess.PIPE)
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed with the command
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    text = shown.decode(errors="replace")
    assert "Sending" in text and f"{recipients}/{recipients}" in text, text[-500:]
    assert f"sent {recipients}," in text


@pytest.mark.slow
def test_a_killed_send_stops_its_helpers_cleanly(config_path: Path, send_env: dict[str, str],
                                                 smtp_server: SMTPServer, engine) -> None:  # noqa: ANN001
    """SIGKILL to the command: its forked helper is told (SIGTERM on the parent's death), finishes what
    it has in flight, records it and gives the rest back; it does not go on sending unseen."""
    recipients = 1200
    settings = campaign_to(recipients, config_path, send_env, engine)
    smtp_server.faults.data_delay = 0.01
    process = subprocess.Popen([MAILER, "send", "--processes", "2"], env=send_env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_until(lambda: smtp_server.data_commands >= 60, timeout=30, every=0.02)
    helpers = helper_pids(process.pid)
    assert len(helpers) == 1, helpers
    process.kill()
    process.wait(timeout=10)
    wait_until(lambda: not Path(f"/proc/{helpers[0]}/cmdline").exists()
               or not Path(f"/proc/{helpers[0]}/cmdline").read_bytes(), timeout=30)  # the helper's clean stop
    settled = smtp_server.data_commands
    time.sleep(0.5)
    assert smtp_server.data_commands == settled  # nobody is sending any more
    engine_now = db.make_engine(settings.database.url)
    try:
        with engine_now.connect() as connection:
            holders = connection.execute(select(OutboxMessage.claimed_by).where(OutboxMessage.state == "sending")
                                         .distinct()).scalars().all()
    finally:
        engine_now.dispose()
    # Only the killed process's own claims wait for their lease to run out; the helper gave its back.
    assert all(f":{process.pid}:" in holder for holder in holders), holders


def test_a_campaign_goes_out_as_dispatched_whatever_happens_to_the_templates(
        config_path: Path, send_env: dict[str, str], smtp_server: SMTPServer, engine, tmp_path: Path) -> None:  # noqa: ANN001
    """campaigns.dispatch freezes the bodies: a template edited mid-send changes nothing already under
    way, and the send itself neither renders nor imports premailer (a tenth of a second per command)."""
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    text_ = config_path.read_text()
    config_path.write_text(re.sub(r'templates = "[^"]*"', f'templates = "{templates}"', text_))
    campaign_to(3, config_path, send_env, engine)
    digest = templates / "email" / "newsletter" / "digest.html"
    digest.write_text(digest.read_text().replace("</body>", "EDITED-AFTER-DISPATCH</body>"))
    result = subprocess.run([sys.executable, "-X", "importtime", MAILER, "send"], env=send_env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "sent 3," in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "mailer.outbound.delivery" in imported and "premailer" not in imported
    bodies = [item.data for item in smtp_server.received]
    assert len(bodies) == 3 and all(b"Join us." in body and b"EDITED-AFTER-DISPATCH" not in body for body in bodies)


def test_a_campaign_whose_template_is_broken_waits_approved(config_path: Path, send_env: dict[str, str],
                                                            engine, tmp_path: Path, caplog) -> None:  # noqa: ANN001
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    digest = templates / "email" / "newsletter" / "digest.html"
    digest.write_text(digest.read_text() + "{% if %}")
    config_path.write_text(re.sub(r'templates = "[^"]*"', f'templates = "{templates}"', config_path.read_text()))
    settings = config.load(config_path, send_env)
    with db.session_factory(engine).begin() as session:
        campaign = campaigns.create_oneoff(session, settings, topic="newsletter", subject="Open evening",
                                           body_markdown="Join us.", now=NOW)
        campaigns.approve(session, campaign, by="test", now=NOW)
    bulk_subscribers(engine, 2)
    with caplog.at_level(logging.ERROR, logger="mailer.campaigns"), db.session_factory(engine).begin() as session:
        assert campaigns.dispatch(session, NOW, Renderer(settings)) == {}
    assert f"campaign {campaign.id} not sent: template email/newsletter/digest.html" in caplog.text
    with db.session_factory(engine)() as session:
        stored = session.get(Campaign, campaign.id)
        assert stored.state == "approved" and stored.frozen_html is None
        assert outbox.counts(session)["queued"] == 0


@pytest.mark.slow
def test_sigterm_stops_a_tick_and_its_forked_helpers_cleanly(config_path: Path, send_env: dict[str, str],
                                                             smtp_server: SMTPServer, engine) -> None:  # noqa: ANN001
    """`mailer tick` sends from several processes too (the scheduler's path): SIGTERM reaches every one of
    them, each finishes its message in flight, and the command exits 0 with every result recorded."""
    recipients = 1200
    settings = campaign_to(recipients, config_path, send_env, engine)
    smtp_server.faults.data_delay = 0.02
    process = subprocess.Popen([MAILER, "tick", "--at", NOW.isoformat()], env=send_env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_until(lambda: smtp_server.data_commands >= 40, timeout=30, every=0.02)
        helpers = helper_pids(process.pid)
        assert len(helpers) == 1, helpers  # delivery.processes = "auto": one per core on this 2-core machine
        process.send_signal(signal.SIGTERM)
        out, err = settle(process, timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, err
    assert err.count("finishing the messages in flight") == 2, err  # the command and its helper
    counts = outbox_counts(settings)
    received = collections.Counter(r.rcpt_tos[0] for r in smtp_server.received)
    assert counts["sending"] == 0 and max(received.values()) == 1
    assert counts["sent"] == len(received) < recipients
    assert counts["queued"] == recipients - counts["sent"]
    assert f"sent {counts['sent']}," in out
