"""what the bounce and replies mailboxes have handled

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 09:00:00

The mailbox reader records what it handled in the same transaction as what the messages changed: an
IMAP folder's UIDVALIDITY and highest UID handled, and the names of handled maildir messages while they
are still in the maildir.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mailer.models

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mailbox_cursors",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("last_uid", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", mailer.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_mailbox_cursors")),
    )
    op.create_table(
        "handled_messages",
        sa.Column("mailbox", sa.String(length=40), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("handled_at", mailer.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("mailbox", "key", name=op.f("pk_handled_messages")),
    )


def downgrade() -> None:
    op.drop_table("handled_messages")
    op.drop_table("mailbox_cursors")
