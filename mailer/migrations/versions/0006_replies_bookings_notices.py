"""replies pause sequences, bookings are recorded, staff notices; one running sequence per person

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 09:00:00

- enrollments: status "paused" (a human reply holds the sequence until staff resume or close it), when
  it was paused, and how often it was resumed; the unique index on running enrollments now covers
  paused ones too and spans every sequence (one sequence at a time per person).
- inquiries: the service asked about (for choosing a sequence), when and through what they booked.
- replies: that a person replied, when, to which of our messages; never their words.
- staff_notices: front-desk notifications, each the events gathered for one staff address, sent
  through the outbox.

SQLite cannot alter a CHECK constraint, and its usual way round (copy the table, drop the old one)
would, with foreign keys on, clear outbox.enrollment_id through ON DELETE SET NULL. Allowing one more
status only widens the constraint, so the table's stored definition is edited in place, as SQLite's
documentation describes for relaxing a CHECK constraint ("Making Other Kinds Of Table Schema
Changes"); no row is rewritten.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mailer.models

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
OLD_CHECK = "status IN ('active','stopped','completed')"
NEW_CHECK = "status IN ('active','paused','stopped','completed')"
RUNNING = "status IN ('active', 'paused')"


def _sqlite_check(old: str, new: str) -> None:
    """Replace the text of enrollments' status CHECK in the stored schema (same transaction)."""
    bind = op.get_bind()
    sql = bind.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'enrollments'").scalar()
    if old not in sql:
        raise RuntimeError("enrollments: the status constraint is not the one this migration expects")
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    bind.exec_driver_sql("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'enrollments'",
                         (sql.replace(old, new),))
    bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    bind.exec_driver_sql("PRAGMA writable_schema = OFF")
    problems = bind.exec_driver_sql("PRAGMA quick_check").scalars().all()
    if problems != ["ok"]:
        raise RuntimeError(f"enrollments: database check failed after the constraint change: {problems[:3]}")


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("inquiries") as batch:
        batch.add_column(sa.Column("service", sa.String(length=200), server_default="", nullable=False))
        batch.add_column(sa.Column("booked_at", mailer.models.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("booked_via", sa.String(length=200), nullable=True))
    with op.batch_alter_table("enrollments") as batch:
        batch.add_column(sa.Column("paused_at", mailer.models.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("resumes", sa.Integer(), server_default="0", nullable=False))
    op.drop_index("uq_enrollments_active", table_name="enrollments")
    op.create_index("uq_enrollments_running", "enrollments", ["contact_id"], unique=True,
                    sqlite_where=sa.text(RUNNING), postgresql_where=sa.text(RUNNING))
    if sqlite:
        _sqlite_check(OLD_CHECK, NEW_CHECK)
    else:
        op.drop_constraint(op.f("ck_enrollments_status"), "enrollments", type_="check")
        op.create_check_constraint(op.f("ck_enrollments_status"), "enrollments", NEW_CHECK)

    op.create_table(
        "replies",
        sa.Column("id", Id, nullable=False),
        sa.Column("contact_id", Id, nullable=False),
        sa.Column("enrollment_id", Id, nullable=True),
        sa.Column("outbox_id", Id, nullable=True),
        sa.Column("after_step", sa.Integer(), nullable=True),
        sa.Column("matched_by", sa.String(length=20), nullable=False),
        sa.Column("received_at", mailer.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["contact_id"], ["contacts.id"], name=op.f("fk_replies_contact_id_contacts"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["enrollment_id"], ["enrollments.id"],
                                name=op.f("fk_replies_enrollment_id_enrollments"), ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["outbox_id"], ["outbox.id"], name=op.f("fk_replies_outbox_id_outbox"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_replies")),
    )
    op.create_index("ix_replies_contact_received", "replies", ["contact_id", "received_at"], unique=False)
    op.create_index(op.f("ix_replies_enrollment_id"), "replies", ["enrollment_id"], unique=False)

    op.create_table(
        "staff_notices",
        sa.Column("id", Id, nullable=False),
        sa.Column("recipient", sa.String(length=320), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("created_at", mailer.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("outbox_id", Id, nullable=True),
        sa.ForeignKeyConstraint(["outbox_id"], ["outbox.id"], name=op.f("fk_staff_notices_outbox_id_outbox"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staff_notices")),
        sa.UniqueConstraint("outbox_id", name=op.f("uq_staff_notices_outbox_id")),
    )


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.drop_table("staff_notices")
    op.drop_index(op.f("ix_replies_enrollment_id"), table_name="replies")
    op.drop_index("ix_replies_contact_received", table_name="replies")
    op.drop_table("replies")
    # A paused sequence cannot exist before this revision: it goes back to running.
    op.execute("UPDATE enrollments SET status = 'active' WHERE status = 'paused'")
    if sqlite:
        _sqlite_check(NEW_CHECK, OLD_CHECK)
    else:
        op.drop_constraint(op.f("ck_enrollments_status"), "enrollments", type_="check")
        op.create_check_constraint(op.f("ck_enrollments_status"), "enrollments", OLD_CHECK)
    op.drop_index("uq_enrollments_running", table_name="enrollments")
    op.create_index("uq_enrollments_active", "enrollments", ["contact_id", "sequence"], unique=True,
                    sqlite_where=sa.text("status = 'active'"), postgresql_where=sa.text("status = 'active'"))
    # Plain DROP COLUMN (SQLite 3.35+): a batch copy of enrollments would clear outbox.enrollment_id.
    for table, column in (("enrollments", "resumes"), ("enrollments", "paused_at"), ("inquiries", "booked_via"),
                          ("inquiries", "booked_at"), ("inquiries", "service")):
        op.drop_column(table, column)
