"""Erased data must not survive in SQLite's files, and every file mailer makes under var/ is private
(finding 4 of the privacy review). SQLite only: these are about SQLite's own files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner
from sqlalchemy import select

from mailer import audience, config, db, staff
from mailer.cli import main
from mailer.models import Contact
from mailer.runtime import Runtime
from mailer.sequences import inquiries
from mailer.web import create_app
from tests.test_admin import PASSWORD, csrf_of, log_in
from tests.web_fixtures import WEB_START, SettableClock

ADDRESS = "jane.patient@example.com"
MESSAGE = "I have severe depression and my sister takes ketamine since the spring"
MAILER = str(Path(sys.executable).with_name("mailer"))


def sqlite_env(sqlite_url: str) -> dict[str, str]:
    return {"MAILER_DATABASE_URL": sqlite_url, "MAILER_SECRET_KEY": "test-secret-key-0123456789",
            "MAILER_INTAKE_TOKEN": "test-intake-token", "MAILER_BASE_URL": "https://mail.therapycentral.example"}


def record_the_person(runtime: Runtime) -> int:
    now = runtime.clock()
    with runtime.sessions.begin() as session:
        outcome = inquiries.record_inquiry(session, runtime.settings, email=ADDRESS, name="Jane Patient",
                                           consent=True, consent_text="Yes, email me.", source="website",
                                           received_at=now, now=now, message=MESSAGE)
        audience.staff_subscribe(session, runtime.settings.secret_key, runtime.settings.topics, email=ADDRESS,
                                 name="Jane Patient", topic_names=["newsletter"], source="front desk", now=now)
        return outcome.contact_id


def leftovers(database: Path) -> dict[str, list[str]]:
    """Which of the person's details each of the database's files still holds."""
    found = {}
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{database}{suffix}")
        data = path.read_bytes() if path.exists() else b""
        found[path.name] = [text for text in (ADDRESS, "Jane Patient", "severe depression")
                            if text.encode() in data]
    return found


def test_an_erasure_on_the_staff_page_leaves_nothing_in_the_database_or_its_wal(
        config_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staff, "HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    settings = config.load(config_path, sqlite_env(sqlite_url))
    engine = db.make_engine(settings.database.url)
    try:  # the engine stays open throughout, as in a running `mailer serve`: the WAL is not closed away
        runtime = Runtime(settings, clock=SettableClock(WEB_START), engine_override=engine)
        contact_id = record_the_person(runtime)
        with runtime.sessions.begin() as session:
            staff.create(session, "admin@therapycentral.example", PASSWORD, WEB_START, role="admin")
        database = Path(engine.url.database)
        assert any(leftovers(database).values())  # the details are there before
        client = create_app(runtime).test_client()
        log_in(client, "admin@therapycentral.example")
        page = f"/admin/subscribers/{contact_id}/erase"
        response = client.post(page, data={"csrf_token": csrf_of(client.get(page)), "confirm_email": ADDRESS})
        assert response.status_code == 303
        with runtime.sessions() as session:
            assert session.scalar(select(Contact.id)) is None
        assert leftovers(database) == {"mailer.db": [], "mailer.db-wal": [], "mailer.db-shm": []}
        assert Path(f"{database}-wal").stat().st_size == 0  # emptied, not only overwritten
    finally:
        engine.dispose()


def test_an_erasure_from_the_shell_leaves_nothing_in_the_files(config_path: Path, sqlite_url: str) -> None:
    env = sqlite_env(sqlite_url)
    settings = config.load(config_path, env)
    engine = db.make_engine(settings.database.url)
    try:
        record_the_person(Runtime(settings, clock=SettableClock(WEB_START), engine_override=engine))
    finally:
        engine.dispose()
    result = CliRunner().invoke(main, ["--config", str(config_path), "contacts", "erase", ADDRESS, "--yes"], env=env)
    assert result.exit_code == 0, result.output
    database = Path(settings.database.url.removeprefix("sqlite:///"))
    assert leftovers(database) == {"mailer.db": [], "mailer.db-wal": [], "mailer.db-shm": []}


def test_secure_delete_is_on(sqlite_url: str) -> None:
    engine = db.make_engine(sqlite_url)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
    finally:
        engine.dispose()


def test_every_file_under_var_is_private_whatever_the_umask(tmp_path: Path, config_path: Path) -> None:
    var = tmp_path / "var"
    text = config_path.read_text().replace(f'outbox_dir = "{tmp_path / "outbox"}"', f'outbox_dir = "{var / "outbox"}"')
    config_path.write_text(text)
    var.mkdir(mode=0o755)
    os.chmod(var, 0o755)
    database = var / "data" / "mailer.db"
    env = {**os.environ, "MAILER_DATABASE_URL": f"sqlite:///{database}"}  # no secret: var/secret.key is made
    env.pop("MAILER_SECRET_KEY", None)

    def mailer(*args: str) -> str:
        done = subprocess.run([MAILER, "--config", str(config_path), *args], env=env, capture_output=True, text=True,
                              timeout=120, preexec_fn=lambda: os.umask(0o022))
        assert done.returncode == 0, done.stderr
        return done.stdout

    mailer("init")
    mailer("subscribers", "add", "pat@example.com", "--name", "Pat", "--source", "front desk")
    mailer("inquiries", "add", "sam@example.com", "--name", "Sam", "--consent", "--source", "phone")
    mailer("ingest")
    mailer("tick", "--at", "2026-11-23T18:00")
    preview = mailer("campaigns", "preview", "1").strip()
    assert Path(preview).is_relative_to(var)
    made = {path: stat.S_IMODE(path.stat().st_mode) for path in var.rglob("*")}
    assert any(path.suffix == ".eml" for path in made) and database in made and var / "secret.key" in made
    wrong = {str(path.relative_to(var)): oct(mode) for path, mode in made.items()
             if mode != (0o700 if path.is_dir() else 0o600)}
    assert wrong == {}
    assert stat.S_IMODE(var.stat().st_mode) == 0o755  # a folder that was there keeps its mode


def test_an_older_readable_database_is_made_private(tmp_path: Path) -> None:
    database = tmp_path / "old.db"
    engine = db.make_engine(f"sqlite:///{database}")
    with engine.connect() as connection:
        connection.exec_driver_sql("CREATE TABLE t (x)")
    engine.dispose()
    os.chmod(database, 0o644)
    engine = db.make_engine(f"sqlite:///{database}")
    engine.dispose()
    assert stat.S_IMODE(database.stat().st_mode) == 0o600

