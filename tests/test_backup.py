"""`mailer backup FILE`: a consistent copy of the SQLite database, taken while a send is running."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailer import db, schema
from mailer.cli import main
from tests.smtp_server import SMTPServer
from tests.test_crash import MAILER, campaign_to, outbox_counts, settle, spawn

RECIPIENTS = 1500


@pytest.fixture
def sqlite_env(config_path: Path, sqlite_url: str) -> dict[str, str]:
    return {**os.environ, "MAILER_DATABASE_URL": sqlite_url, "MAILER_SECRET_KEY": "test-secret-key-0123456789",
            "MAILER_BASE_URL": "https://mail.therapycentral.example", "MAILER_CONFIG": str(config_path)}


def _rows(path: Path, sql: str) -> list[tuple]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


@pytest.mark.slow
def test_a_backup_taken_during_a_running_send_is_whole_and_consistent(tmp_path: Path, config_path: Path,
                                                                       sqlite_env: dict[str, str], sqlite_url: str,
                                                                       smtp_server: SMTPServer) -> None:
    env = {**sqlite_env, "MAILER_SMTP_URL": smtp_server.url}
    engine = db.make_engine(sqlite_url)
    try:
        settings = campaign_to(RECIPIENTS, config_path, env, engine)
    finally:
        engine.dispose()
    smtp_server.faults.data_delay = 0.008  # a relay that takes a little time: the send lasts a few seconds
    target = tmp_path / "backups" / "mailer-backup.db"
    target.parent.mkdir()

    sending = spawn(env)
    try:
        deadline = time.monotonic() + 60
        while len(smtp_server.received) < 300 and time.monotonic() < deadline and sending.poll() is None:
            time.sleep(0.02)
        copied = subprocess.run([MAILER, "backup", str(target)], env=env, capture_output=True, text=True, timeout=60)
        delivered_then = len(smtp_server.received)
        still_sending = sending.poll() is None
    finally:
        settle(sending, timeout=120)

    assert copied.returncode == 0, copied.stderr
    assert copied.stdout.startswith(f"Backed up {settings.database.url.removeprefix('sqlite:///')} to {target}: ")
    assert copied.stdout.rstrip().endswith("integrity ok.")
    assert still_sending, "the send ended before the backup: the test proves nothing"
    assert _rows(target, "PRAGMA integrity_check") == [("ok",)]
    assert _rows(target, "PRAGMA journal_mode") == [("delete",)]  # one file, nothing beside it
    assert not list(target.parent.glob(".*partial*")) and sorted(p.name for p in target.parent.iterdir()) == [target.name]
    # One moment of the send: every message is there, some sent and some not yet, none half-recorded.
    states = dict(_rows(target, "SELECT state, count(*) FROM outbox GROUP BY state"))
    assert sum(states.values()) == RECIPIENTS
    assert 0 < states.get("sent", 0) < RECIPIENTS
    assert states.get("sent", 0) <= delivered_then
    # The copy is a mailer database at the current schema, and the send went on to the end.
    copy_engine = db.make_engine(f"sqlite:///{target}")
    try:
        assert schema.current_revision(copy_engine) == schema.head_revision()
    finally:
        copy_engine.dispose()
    assert outbox_counts(settings)["sent"] == RECIPIENTS


def test_a_backup_never_overwrites_and_says_so_in_one_line(tmp_path: Path, sqlite_env: dict[str, str]) -> None:
    target = tmp_path / "taken.db"
    target.write_bytes(b"an earlier backup")
    result = CliRunner(env=sqlite_env).invoke(main, ["backup", str(target)])
    assert result.exit_code == 1
    assert result.output == f"mailer: error: {target} already exists: a backup never overwrites a file; choose a new name\n"
    assert target.read_bytes() == b"an earlier backup"


def test_no_database_yet(tmp_path: Path, sqlite_env: dict[str, str]) -> None:
    env = {**sqlite_env, "MAILER_DATABASE_URL": f"sqlite:///{tmp_path / 'none.db'}"}
    result = CliRunner(env=env).invoke(main, ["backup", str(tmp_path / "copy.db")])
    assert result.exit_code == 1
    assert result.output == f"mailer: error: {tmp_path / 'none.db'}: no database there (run `mailer init`)\n"
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "copy.db").exists()


def test_postgresql_is_pointed_to_pg_dump(tmp_path: Path, sqlite_env: dict[str, str]) -> None:
    env = {**sqlite_env, "MAILER_DATABASE_URL": "postgresql+psycopg://mailer:s3cret@db.internal/mailer"}
    result = CliRunner(env=env).invoke(main, ["backup", str(tmp_path / "copy.db")])
    assert result.exit_code == 1
    assert result.output == ("mailer: error: mailer backup copies SQLite databases; this one is postgresql: use "
                             "pg_dump, e.g. pg_dump --format=custom --file=mailer.dump "
                             "'postgresql://mailer@db.internal/mailer' (see README)\n")
    assert "s3cret" not in result.output
