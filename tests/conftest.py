"""Shared fixtures: settings, a fresh database per test (SQLite always, PostgreSQL when
MAILER_TEST_POSTGRES_URL is set), and a real SMTP server on loopback."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from mailer import config as config_module
from mailer import db, schema
from mailer.models import Base
from tests.smtp_server import SMTPServer

pytest_plugins = ["tests.web_fixtures"]

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "mailer" / "sample"
POSTGRES_URL = os.environ.get("MAILER_TEST_POSTGRES_URL", "")
BACKENDS = ["sqlite", "postgresql"]


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- databases -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file per test run; each test gets a copy (migrations run once)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = db.make_engine(f"sqlite:///{path}")
    schema.upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of its own for this test run, migrated once, dropped at the end."""
    if not POSTGRES_URL:
        pytest.skip("MAILER_TEST_POSTGRES_URL is not set")
    name = f"mailer_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    engine = db.make_engine(url)
    schema.upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _truncate_postgres(url: str) -> None:
    engine = create_engine(url)
    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, migrated, empty database for one test, on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "mailer.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("postgres_database")
    _truncate_postgres(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """A fresh SQLite database only, for tests about SQLite itself or too slow to run twice."""
    path = tmp_path / "mailer.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


# --- settings ------------------------------------------------------------------------------------


@pytest.fixture
def environ(tmp_path: Path, database_url: str) -> dict[str, str]:
    """The environment a test's mailer runs with: its own database, folders and secret."""
    return {
        "MAILER_DATABASE_URL": database_url,
        "MAILER_SECRET_KEY": "test-secret-key-0123456789",
        "MAILER_INTAKE_TOKEN": "test-intake-token",
        "MAILER_BASE_URL": "https://mail.therapycentral.example",
    }


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    """A copy of the repository's config.toml whose var/ and outbox point into the test's folder."""
    text_ = (ROOT / "config.toml").read_text()
    text_ = text_.replace('outbox_dir = "var/outbox"', f'outbox_dir = "{tmp_path / "outbox"}"')
    text_ = text_.replace('var = "var"', f'var = "{tmp_path / "var"}"')
    text_ = text_.replace('templates = "templates"', f'templates = "{ROOT / "templates"}"')
    text_ = text_.replace('url = "mailer/sample/blog-feed.xml"', f'url = "{SAMPLE / "blog-feed.xml"}"')
    path = tmp_path / "config.toml"
    path.write_text(text_)
    return path


@pytest.fixture
def settings(config_path: Path, environ: dict[str, str]) -> config_module.Settings:
    return config_module.load(config_path, environ)


@pytest.fixture
def engine(settings: config_module.Settings):
    engine = db.make_engine(settings.database.url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine):
    return db.session_factory(engine)


# --- SMTP ----------------------------------------------------------------------------------------


@pytest.fixture
def smtp_server() -> Iterator[SMTPServer]:
    """A real SMTP server on loopback that records every message; tell it to misbehave per test."""
    server = SMTPServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_server() -> Iterator[Callable[..., SMTPServer]]:
    """Start an SMTPServer with aiosmtpd options (TLS, AUTH, no SMTPUTF8); stopped after the test."""
    started: list[SMTPServer] = []

    def start(**kwargs: object) -> SMTPServer:
        server = SMTPServer(**kwargs)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
