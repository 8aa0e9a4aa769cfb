"""campaigns keep the bodies they were sent with

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 14:30:00

campaigns.dispatch renders a campaign once, when its send begins, and stores the result: a template
edited mid-send changes nothing already under way, and a send needs neither Jinja nor premailer for it.
Campaigns dispatched before this revision have none and are rendered at send time, as before.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("frozen_html", sa.Text(), nullable=True))
        batch.add_column(sa.Column("frozen_text", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("frozen_text")
        batch.drop_column("frozen_html")
