"""Subscriber import benchmark: a 100,000-row CSV file checked and imported, on SQLite and PostgreSQL.

Run from the repository root (not collected by pytest):

    .venv/bin/python tests/benchmarks/bench_import.py                 # 100,000 rows
    .venv/bin/python tests/benchmarks/bench_import.py --rows 20000 --rounds 3

The file has 1% bad rows (no consent evidence or not an address) and 1% suppressed addresses, as in the
staff-page test. Each round uses a fresh database (a SQLite file; a database of its own on the server in
MAILER_TEST_POSTGRES_URL or --pg-url) and measures, in the process the staff pages and the command line
use: the dry run (mailer.imports.check) and the import (check and commit in one transaction, what
`mailer subscribers import` does), then prints seconds and rows per second.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, insert, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from mailer import db, imports, schema  # noqa: E402
from mailer.links import email_hash  # noqa: E402
from mailer.models import Suppression  # noqa: E402

NOW = dt.datetime(2026, 11, 24, 0, 30, tzinfo=dt.UTC)
SECRET = "benchmark-secret-key-0123456789"
TOPICS = {"newsletter": "Newsletter", "events": "Events"}


def make_file(rows: int, seed: int = 20) -> tuple[str, list[str]]:
    """The CSV text and the addresses to suppress beforehand."""
    rng = random.Random(seed)
    bad = set(rng.sample(range(rows), rows // 100))
    suppressed = sorted(rng.sample(sorted(set(range(rows)) - bad), rows // 100))
    lines = [",".join(imports.COLUMNS) + "\n"]
    for i in range(rows):
        if i in bad:
            lines.append(f"person{i:06d}@example.com,P,newsletter,,\n" if i % 2
                         else f"person{i}-at-example.com,P,newsletter,sheet,2026-01-01T10:00:00Z\n")
        else:
            lines.append(f"person{i:06d}@example.com,Person {i},newsletter;events,open evening sheet,"
                         "2026-01-01T10:00:00Z\n")
    return "".join(lines), [f"person{i:06d}@example.com" for i in suppressed]


class Database:
    """A fresh, migrated database per round: a SQLite file or a PostgreSQL database of its own."""

    def __init__(self, kind: str, pg_url: str | None) -> None:
        self.kind, self.pg_url, self.name = kind, pg_url, None
        if kind == "sqlite":
            self.folder = tempfile.mkdtemp(prefix="bench-import-")
            self.url = f"sqlite:///{self.folder}/mailer.db"
        else:
            self.name = f"bench_import_{uuid.uuid4().hex[:10]}"
            admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{self.name}"'))
            admin.dispose()
            self.url = make_url(pg_url).set(database=self.name).render_as_string(hide_password=False)
        self.engine = db.make_engine(self.url)
        schema.upgrade(self.engine)

    def drop(self) -> None:
        self.engine.dispose()
        if self.name:
            admin = create_engine(self.pg_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
            admin.dispose()


def one_round(kind: str, pg_url: str | None, csv_text: str, suppressed: list[str]) -> dict[str, float]:
    database = Database(kind, pg_url)
    try:
        sessions = db.session_factory(database.engine)
        with sessions.begin() as session:
            session.execute(insert(Suppression), [
                {"email_hash": email_hash(SECRET, address), "contact_id": None, "reason": "unsubscribed",
                 "detail": "", "created_at": NOW} for address in suppressed])
        started = time.perf_counter()
        with sessions() as session:
            dry = imports.check(session, SECRET, TOPICS, io.StringIO(csv_text, newline=""), NOW)
        checked = time.perf_counter() - started
        started = time.perf_counter()
        with sessions.begin() as session:
            plan = imports.import_file(session, SECRET, TOPICS, io.StringIO(csv_text, newline=""), NOW)
        imported = time.perf_counter() - started
        assert plan.summary() == dry.summary()
        return {"check_s": checked, "import_s": imported, "imported": plan.imported}
    finally:
        database.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--pg-url", default=os.environ.get("MAILER_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    csv_text, suppressed = make_file(args.rows)
    print(f"{args.rows:,} rows ({len(csv_text) / 1e6:.1f} MB), 1% bad, 1% suppressed; {args.rounds} round(s)")
    kinds = ["sqlite"] + (["postgresql"] if args.pg_url else [])
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    for _ in range(args.rounds):
        for kind in kinds:  # alternating, so a busy moment of the machine falls on both
            results[kind].append(one_round(kind, args.pg_url, csv_text, suppressed))
    for kind, rounds in results.items():
        check_s = statistics.median(r["check_s"] for r in rounds)
        import_s = statistics.median(r["import_s"] for r in rounds)
        print(f"{kind:<11} dry run {check_s:6.1f} s ({args.rows / check_s:8,.0f} rows/s)   "
              f"import {import_s:6.1f} s ({args.rows / import_s:8,.0f} rows/s), {int(rounds[0]['imported']):,} imported")


if __name__ == "__main__":
    main()
