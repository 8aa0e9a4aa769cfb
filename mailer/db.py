"""Engine and session factory; SQLite pragmas (WAL, busy timeout, foreign keys); dialect helpers."""

from __future__ import annotations

import itertools
import logging
import os
import threading
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from mailer import files

log = logging.getLogger("mailer.db")

SQLITE_BUSY_TIMEOUT_MS = 15_000


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    """An engine for the configured URL; SQLite gets WAL, a busy timeout and foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            _private_database(Path(database))
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
            # Deleted rows are overwritten with zeros, not left in free space: erasure must reach the file.
            cursor.execute("PRAGMA secure_delete=ON")
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


def _private_database(database: Path) -> None:
    """The database's folder 0700 and the file 0600 before SQLite opens it: SQLite then makes its -wal
    and -shm files with the database file's own mode, so none of them is ever readable by others.
    Files an older version left readable are made private."""
    files.private_dir(database.parent)
    if not database.exists():
        try:
            os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, files.FILE_MODE))  # an empty file is an empty database
        except FileExistsError:  # another process made it a moment ago
            pass
    for suffix in ("", "-wal", "-shm", "-writers"):
        files.tighten(f"{database}{suffix}")


def after_erasure(engine: Engine) -> bool:
    """After an erasure has committed: on SQLite, copy the write-ahead log into the database and empty it
    (wal_checkpoint(TRUNCATE)), so the erased rows' old pages do not stay in the -wal file. True when the
    log was emptied (False on PostgreSQL, or when a reader held it: the next checkpoint catches up)."""
    if engine.dialect.name != "sqlite":
        return False
    with engine.connect() as connection:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        busy, _log, _done = connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
    if busy:
        log.warning("after an erasure the SQLite write-ahead log could not be emptied (a reader held it); "
                    "it is emptied at the next checkpoint")
    return not busy


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


class WriteTurn:
    """Turns at SQLite's write lock for the threads and processes of a send.

    SQLite has one writer at a time, and a writer that finds the lock taken sleeps in steps of
    milliseconds (1, 2, 5, 10 ...) before it tries again: replies would wait unwritten meanwhile. The
    claiming and recording threads of one process take turns through a thread lock; the processes
    through an flock(2) on a file beside the database, which wakes the next one the moment it is free.
    """

    def __init__(self, database: str | None) -> None:
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        if database and database != ":memory:":
            try:
                import fcntl

                self._fcntl = fcntl
                self._fd = os.open(f"{database}-writers", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except (ImportError, OSError):  # no flock here: the busy timeout still serialises processes
                self._fd = None
            else:
                weakref.finalize(self, os.close, self._fd)

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        if self._fd is not None:
            try:
                self._fcntl.flock(self._fd, self._fcntl.LOCK_EX)
            except BaseException:
                self._thread_lock.release()
                raise

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._fd is not None:
            self._fcntl.flock(self._fd, self._fcntl.LOCK_UN)
        self._thread_lock.release()


class PgStatement:
    """One statement prepared on one PostgreSQL connection and run straight through libpq.

    For the statements of a send that run thousands of times (writing results, re-checking consent):
    psycopg's cursor costs about as much client time per execution as libpq's whole round trip. The SQL
    numbers its parameters ($1, $2 ...); values go as text (str, or None for NULL) and rows come back as
    text. Each execution is its own transaction on a connection in autocommit mode. `close` drops the
    statement, so the connection goes back to the pool as it came.
    """

    _numbers = itertools.count()

    def __init__(self, driver_connection: Any, sql: str) -> None:
        self._pgconn = driver_connection.pgconn
        self._name = f"mailer_{os.getpid()}_{next(self._numbers)}".encode()
        self._check(self._pgconn.prepare(self._name, sql.encode()))

    def _check(self, result: Any) -> Any:
        from psycopg import OperationalError, errors, pq

        if result.status in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
            return result
        if self._pgconn.status != pq.ConnStatus.OK:
            message = self._pgconn.error_message.decode("utf-8", "replace").strip()
            raise OperationalError(message or "the connection to PostgreSQL was lost")
        raise errors.error_from_result(result, encoding="utf-8")

    def run(self, *params: str | None) -> list[tuple[str | None, ...]]:
        """Execute with these parameters; the rows returned (none for a statement without RETURNING)."""
        result = self._check(self._pgconn.exec_prepared(
            self._name, [None if value is None else value.encode() for value in params]))
        columns = range(result.nfields)
        return [tuple(None if (value := result.get_value(row, column)) is None else value.decode()
                      for column in columns) for row in range(result.ntuples)]

    def close(self) -> None:
        """Drop the statement; never raises (a broken connection is discarded by the pool anyway)."""
        try:
            self._pgconn.exec_(b"DEALLOCATE " + self._name)
        except Exception:
            pass
