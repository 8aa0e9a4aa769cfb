"""Engine and session factory; SQLite pragmas (WAL, busy timeout, foreign keys); dialect helpers."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 15_000


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    """An engine for the configured URL; SQLite gets WAL, a busy timeout and foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            hide_parameters=True,  # error messages must never carry a contact's address into a log
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # noqa: ANN001
            # pysqlite's own transaction handling is off so that BEGIN IMMEDIATE below takes effect.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection):  # noqa: ANN001
            # Take the write lock at the start: two writers never deadlock on a lock upgrade.
            # AUTOCOMMIT connections (read-only lookups such as the consent re-check) take no lock.
            if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
                driver = connection.connection.driver_connection
                if driver.isolation_level is not None:  # as left by an AUTOCOMMIT use of this connection
                    driver.isolation_level = None
                connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, hide_parameters=True)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
