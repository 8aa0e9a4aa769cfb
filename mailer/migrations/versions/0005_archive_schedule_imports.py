"""one-offs shown in the public archive; subscriber files checked and imported on the staff pages

Revision ID: 0005
Revises: 0004
Create Date: 2027-01-11 09:00:00

campaigns.archived marks a one-off that staff chose to show in the public archive. subscriber_imports
keeps an uploaded CSV file between its dry run and its import, so the import runs on exactly the file
that was checked.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mailer.models

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("archived", sa.Boolean(), server_default=sa.text("false"), nullable=False))
    op.create_table(
        "subscriber_imports",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("staff_email", sa.String(length=320), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("outcome", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("created_at", mailer.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("imported_at", mailer.models.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint("state IN ('checked','imported')", name=op.f("ck_subscriber_imports_state")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriber_imports")),
    )


def downgrade() -> None:
    op.drop_table("subscriber_imports")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("archived")
