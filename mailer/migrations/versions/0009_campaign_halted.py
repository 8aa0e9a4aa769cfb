"""a campaign the relay keeps refusing halts

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-10 09:00:00

When the relay refuses our authentication or sender for a campaign's first messages, the send engine
halts the campaign (state "halted", with why and when) and keeps its remaining messages queued until
staff resume it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mailer.models

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEFORE = "state IN ('draft','approved','sending','sent','cancelled','skipped')"
AFTER = "state IN ('draft','approved','sending','halted','sent','cancelled','skipped')"


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("halted_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("halted_at", mailer.models.UTCDateTime(timezone=True), nullable=True))
        batch.drop_constraint(op.f("ck_campaigns_state"), type_="check")
        batch.create_check_constraint(op.f("ck_campaigns_state"), AFTER)


def downgrade() -> None:
    op.execute("UPDATE campaigns SET state = 'sending' WHERE state = 'halted'")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_constraint(op.f("ck_campaigns_state"), type_="check")
        batch.create_check_constraint(op.f("ck_campaigns_state"), BEFORE)
        batch.drop_column("halted_at")
        batch.drop_column("halted_reason")
