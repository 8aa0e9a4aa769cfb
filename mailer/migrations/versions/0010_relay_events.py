"""relay webhook events already handled

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-21 09:00:00

The relay webhooks (Postmark, Mailgun, SendGrid, Amazon SES through SNS) remember each event they
handled, by a SHA-256 of the relay's own event id, and Mailgun's request tokens: a replayed or
retried request changes nothing. Housekeeping forgets them after 30 days.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mailer.models

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "relay_events",
        sa.Column("relay", sa.String(length=20), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("effect", sa.String(length=24), nullable=False),
        sa.Column("received_at", mailer.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("relay", "key", name=op.f("pk_relay_events")),
    )
    op.create_index(op.f("ix_relay_events_received_at"), "relay_events", ["received_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_relay_events_received_at"), table_name="relay_events")
    op.drop_table("relay_events")
