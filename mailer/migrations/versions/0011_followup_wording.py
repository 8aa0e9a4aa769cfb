"""follow-up wording edited on the staff pages: the versions of each step, and the one a message was queued with

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-21 09:00:00

Each save of a follow-up step's subject, preheader and body is a new row (version 1, 2, ...); version 0
is the step's template and config.toml, not stored. An outbox row of a follow-up records the version
that was current when its step was queued (NULL for rows queued before: they were queued with version 0).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mailer.models

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "followup_versions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sequence", sa.String(length=64), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("template", sa.String(length=100), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("preheader", sa.String(length=300), nullable=False),
        sa.Column("body_markdown", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=320), nullable=False),
        sa.Column("created_at", mailer.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_followup_versions")),
        sa.UniqueConstraint("sequence", "step", "version", name=op.f("uq_followup_versions_sequence")),
    )
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("step_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("step_version")
    op.drop_table("followup_versions")
