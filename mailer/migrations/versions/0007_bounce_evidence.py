"""bounce evidence: every verdict applied about a delivery, and what a suppression stands on

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 12:00:00

Bounce reports, complaints and SMTP refusals are kept as evidence rows (the report's key and date, the
status, reply code and diagnostic line); a bounce or complaint suppression points at the row that caused
it. Staff may lift a bounce-based suppression: the consent ledger gains the action "lifted".
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mailer.models

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "bounce_events",
        sa.Column("id", Id, nullable=False),
        sa.Column("contact_id", Id, nullable=True),
        sa.Column("outbox_id", Id, nullable=True),
        sa.Column("campaign_id", Id, nullable=True),
        sa.Column("verdict", sa.String(length=24), nullable=False),
        sa.Column("reason", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reply_code", sa.String(length=3), nullable=False),
        sa.Column("diagnostic", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=40), nullable=False),
        sa.Column("report_key", sa.String(length=255), nullable=False),
        sa.Column("report_at", mailer.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("counted", sa.Boolean(), nullable=False),
        sa.Column("created_at", mailer.models.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "verdict IN ('address_bad','mailbox_unable','not_about_recipient','complaint')",
            name=op.f("ck_bounce_events_verdict"),
        ),
        sa.ForeignKeyConstraint(["contact_id"], ["contacts.id"], name=op.f("fk_bounce_events_contact_id_contacts"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["outbox_id"], ["outbox.id"], name=op.f("fk_bounce_events_outbox_id_outbox"),
                                ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"],
                                name=op.f("fk_bounce_events_campaign_id_campaigns"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bounce_events")),
    )
    with op.batch_alter_table("bounce_events") as batch:
        batch.create_index("ix_bounce_events_contact_report", ["contact_id", "report_at"], unique=False)
        batch.create_index("ix_bounce_events_campaign_verdict", ["campaign_id", "verdict"], unique=False)
    with op.batch_alter_table("suppressions") as batch:
        batch.add_column(sa.Column("bounce_event_id", Id, nullable=True))
        batch.create_foreign_key(op.f("fk_suppressions_bounce_event_id_bounce_events"), "bounce_events",
                                 ["bounce_event_id"], ["id"], ondelete="SET NULL")
    with op.batch_alter_table("consent_events") as batch:
        batch.drop_constraint(op.f("ck_consent_events_action"), type_="check")
        batch.create_check_constraint(op.f("ck_consent_events_action"),
                                      "action IN ('granted','confirmed','withdrawn','lifted')")


def downgrade() -> None:
    op.execute("DELETE FROM consent_events WHERE action = 'lifted'")
    with op.batch_alter_table("consent_events") as batch:
        batch.drop_constraint(op.f("ck_consent_events_action"), type_="check")
        batch.create_check_constraint(op.f("ck_consent_events_action"), "action IN ('granted','confirmed','withdrawn')")
    with op.batch_alter_table("suppressions") as batch:
        batch.drop_constraint(op.f("fk_suppressions_bounce_event_id_bounce_events"), type_="foreignkey")
        batch.drop_column("bounce_event_id")
    with op.batch_alter_table("bounce_events") as batch:
        batch.drop_index("ix_bounce_events_campaign_verdict")
        batch.drop_index("ix_bounce_events_contact_report")
    op.drop_table("bounce_events")
