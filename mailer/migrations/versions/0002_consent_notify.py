"""notify senders when consent-related rows change (PostgreSQL)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 00:30:00

A running send checks consent for groups of recipients and LISTENs on this channel: any committed
change to these tables (an unsubscribe, a suppression, an erasure, a stopped sequence, a cancelled
campaign; through the service or by hand) makes every sender check again before its next message.
SQLite has no notifications and needs none: there each message is looked up on its own.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("subscriptions", "suppressions", "contacts", "enrollments", "campaigns")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "CREATE FUNCTION mailer_consent_changed() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_notify('mailer_consent', TG_TABLE_NAME); RETURN NULL; END $$"
    )
    for table in TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_consent_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION mailer_consent_changed()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_consent_changed ON {table}")
    op.execute("DROP FUNCTION IF EXISTS mailer_consent_changed()")
