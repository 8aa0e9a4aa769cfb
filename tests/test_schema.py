"""`mailer init` creates and upgrades the schema, is safe to repeat, and the migrations match the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from mailer import db, schema
from mailer.models import Base


def test_init_is_idempotent_and_creates_every_table(database_url: str) -> None:
    engine = db.make_engine(database_url)
    try:
        before, after = schema.upgrade(engine)  # the fixture database is already migrated
        assert before == after == schema.head_revision()
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrations_match_the_models(database_url: str) -> None:
    engine = db.make_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, Base.metadata)
        assert differences == [], "models changed without a migration: " + repr(differences)
    finally:
        engine.dispose()


def test_sqlite_pragmas(tmp_path) -> None:  # noqa: ANN001
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.SQLITE_BUSY_TIMEOUT_MS
    finally:
        engine.dispose()
