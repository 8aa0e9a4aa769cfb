"""staff roles and session versions, the append-only access log, intake idempotency keys

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-14 09:00:00

Staff accounts get a role (the accounts that exist become admins: until now every login could do
everything), a session version (raised to end every session of an account at once) and a disabled
time. One-offs remember who wrote and last edited them (for the second approver). A consent grant
can keep the wording the clinic published beside the wording another party's form sent.

The access log refuses UPDATE and DELETE by triggers on both databases, so no path through the app
can edit it. Intake idempotency keys keep the first answer to a request for 24 hours.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mailer.models

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REFUSAL = "the access log is append-only"


def upgrade() -> None:
    with op.batch_alter_table("staff_users") as batch:
        batch.add_column(sa.Column("role", sa.String(length=20), nullable=False, server_default="admin"))
        batch.add_column(sa.Column("session_version", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("disabled_at", mailer.models.UTCDateTime(timezone=True), nullable=True))
        batch.create_check_constraint("role", "role IN ('admin','marketing','frontdesk')")
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("created_by", sa.String(length=320), nullable=True))
        batch.add_column(sa.Column("edited_by", sa.String(length=320), nullable=True))
    with op.batch_alter_table("consent_events") as batch:
        batch.add_column(sa.Column("published_wording", sa.Text(), nullable=True))

    op.create_table(
        "access_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", mailer.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=320), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("inquiry_id", sa.BigInteger(), nullable=True),
        sa.Column("contact_id", sa.BigInteger(), nullable=True),
        sa.Column("campaign_id", sa.BigInteger(), nullable=True),
        sa.Column("staff_id", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.String(length=300), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_log")),
    )
    op.create_index(op.f("ix_access_log_at"), "access_log", ["at"], unique=False)
    op.create_index("ix_access_log_inquiry", "access_log", ["inquiry_id", "at"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION mailer_access_log_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{REFUSAL}'; END $$"
        )
        op.execute("CREATE TRIGGER access_log_append_only BEFORE UPDATE OR DELETE ON access_log "
                   "FOR EACH ROW EXECUTE FUNCTION mailer_access_log_append_only()")
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER access_log_no_{verb.lower()} BEFORE {verb} ON access_log "
                       f"BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END")

    op.create_table(
        "intake_keys",
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", mailer.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("answer", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("key_hash", name=op.f("pk_intake_keys")),
    )
    op.create_index(op.f("ix_intake_keys_created_at"), "intake_keys", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_intake_keys_created_at"), table_name="intake_keys")
    op.drop_table("intake_keys")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS access_log_append_only ON access_log")
        op.execute("DROP FUNCTION IF EXISTS mailer_access_log_append_only()")
    op.drop_index("ix_access_log_inquiry", table_name="access_log")
    op.drop_index(op.f("ix_access_log_at"), table_name="access_log")
    op.drop_table("access_log")
    with op.batch_alter_table("consent_events") as batch:
        batch.drop_column("published_wording")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("edited_by")
        batch.drop_column("created_by")
    with op.batch_alter_table("staff_users") as batch:
        batch.drop_constraint("role", type_="check")
        batch.drop_column("disabled_at")
        batch.drop_column("session_version")
        batch.drop_column("role")
