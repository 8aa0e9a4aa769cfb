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


def _fill(connection, table, **values) -> None:  # noqa: ANN001
    """Insert one row into a reflected table, giving every other NOT NULL column a plain value."""
    import datetime as dt

    from sqlalchemy import Boolean, DateTime, Integer

    row = dict(values)
    for column in table.columns:
        if column.name in row or column.nullable or column.server_default is not None:
            continue
        if column.primary_key and isinstance(column.type, Integer):
            continue
        if isinstance(column.type, Boolean):
            row[column.name] = False
        elif isinstance(column.type, Integer):
            row[column.name] = 0
        elif isinstance(column.type, DateTime):
            row[column.name] = dt.datetime(2026, 11, 1, 12, 0)
        else:
            row[column.name] = f"{table.name}-{column.name}-{len(row)}"
    connection.execute(table.insert().values(**row))


def test_an_upgrade_on_sqlite_keeps_every_row_and_every_link(tmp_path) -> None:  # noqa: ANN001
    """Migrations that rebuild a table (a changed constraint) must not fire ON DELETE actions on the rows
    that point at it: an installation upgraded from the first release keeps its outbox and ledger links."""
    from alembic import command
    from sqlalchemy import MetaData, select

    engine = db.make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        config = schema.alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0004")  # the schema the first release left
        with engine.begin() as connection:
            meta = MetaData()
            meta.reflect(connection)
            t = meta.tables
            _fill(connection, t["contacts"], id=1, email="pat@example.com", link_key="k1")
            _fill(connection, t["consent_events"], id=1, contact_id=1, purpose="topic:newsletter", action="granted")
            _fill(connection, t["subscriptions"], contact_id=1, topic="newsletter", status="active", consent_event_id=1)
            _fill(connection, t["campaigns"], id=1, kind="newsletter", topic="newsletter", state="sending")
            _fill(connection, t["posts"], id=1, guid="g1", campaign_id=1)
            _fill(connection, t["inquiries"], id=1, contact_id=1, consent=True, consent_event_id=1, status="open")
            _fill(connection, t["enrollments"], id=1, contact_id=1, inquiry_id=1, consent_event_id=1, status="active",
                  sequence="default", next_step=1)
            _fill(connection, t["outbox"], id=1, dedupe_key="c:1:1", kind="newsletter", campaign_id=1, contact_id=1,
                  consent_event_id=1, state="queued", was_unknown=False)
            _fill(connection, t["outbox"], id=2, dedupe_key="f:1:0", kind="followup", enrollment_id=1, step=0,
                  contact_id=1, consent_event_id=1, state="sent", was_unknown=False)
            _fill(connection, t["staff_users"], id=1, email="admin@example.com")

        before, after = schema.upgrade(engine)
        assert (before, after) == ("0004", schema.head_revision())
        with engine.connect() as connection:
            meta = MetaData()
            meta.reflect(connection)
            t = meta.tables
            outbox = connection.execute(select(t["outbox"].c.id, t["outbox"].c.campaign_id, t["outbox"].c.enrollment_id,
                                               t["outbox"].c.consent_event_id).order_by(t["outbox"].c.id)).all()
            assert [tuple(row) for row in outbox] == [(1, 1, None, 1), (2, None, 1, 1)]
            assert connection.execute(select(t["posts"].c.campaign_id)).scalar_one() == 1
            assert connection.execute(select(t["subscriptions"].c.consent_event_id)).scalar_one() == 1
            assert tuple(connection.execute(select(t["enrollments"].c.inquiry_id, t["enrollments"].c.consent_event_id))
                         .one()) == (1, 1)
            assert connection.execute(select(t["inquiries"].c.consent_event_id)).scalar_one() == 1
            assert connection.execute(select(t["staff_users"].c.role)).scalar_one() == "admin"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1  # back on for what follows
    finally:
        engine.dispose()
