"""A consistent copy of a SQLite database while mailer runs (SQLite's online backup API)."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from mailer.db import SQLITE_BUSY_TIMEOUT_MS


class BackupError(Exception):
    """The copy cannot be made; the message is one line."""


@dataclass(frozen=True)
class Copy:
    source: Path
    target: Path
    pages: int
    size: int


def sqlite_path(database_url: str) -> Path:
    """The file behind a sqlite:/// URL; BackupError for anything else (PostgreSQL has pg_dump)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        raise BackupError(f"mailer backup copies SQLite databases; this one is {url.get_backend_name()}: use "
                          f"pg_dump, e.g. pg_dump --format=custom --file=mailer.dump "
                          f"'{_without_password(url)}' (see README)")
    if not url.database or url.database == ":memory:":
        raise BackupError("the database is in memory: there is nothing to back up")
    return Path(url.database)


def _without_password(url: URL) -> str:
    """The URL for pg_dump, its password left out (pg_dump reads PGPASSWORD or ~/.pgpass)."""
    return URL.create("postgresql", username=url.username, host=url.host, port=url.port,
                      database=url.database).render_as_string()


def copy(source: Path, target: Path) -> Copy:
    """Copy `source` to the new file `target` in one step of the backup API: a snapshot of one moment,
    taken while `mailer serve` or `mailer send` goes on writing (WAL readers do not block writers).
    The copy is checked (PRAGMA integrity_check), made a single file (no -wal beside it) and only then
    named `target`; a failure leaves nothing behind."""
    if not source.is_file():
        raise BackupError(f"{source}: no database there (run `mailer init`)")
    if target.exists():
        raise BackupError(f"{target} already exists: a backup never overwrites a file; choose a new name")
    if not target.parent.is_dir():
        raise BackupError(f"{target.parent}: no such folder")
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        reader = sqlite3.connect(source, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
        writer = sqlite3.connect(partial)
        try:
            reader.backup(writer, pages=-1)
            pages = writer.execute("PRAGMA page_count").fetchone()[0]
            verdict = writer.execute("PRAGMA integrity_check").fetchone()[0]
            if verdict != "ok":
                raise BackupError(f"the copy of {source} failed its integrity check: {verdict}")
            writer.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            writer.close()
            reader.close()
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.link(partial, target)  # never replaces a file that appeared meanwhile
    except sqlite3.Error as exc:
        raise BackupError(f"{source}: {exc}") from None
    except FileExistsError:
        raise BackupError(f"{target} already exists: a backup never overwrites a file; choose a new name") from None
    finally:
        partial.unlink(missing_ok=True)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return Copy(source, target, pages, target.stat().st_size)
