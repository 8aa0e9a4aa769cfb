"""The SQLAlchemy 2.0 typed models: one class per table. Times are stored in UTC."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite (naive storage) and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; pass aware UTC times")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BigInteger ids on PostgreSQL, INTEGER PRIMARY KEY (rowid) on SQLite.
Id = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON()}


# --- the blog feed -----------------------------------------------------------------------------


class FeedState(Base):
    """What we know about the feed between fetches: validators for conditional GET."""

    __tablename__ = "feed_state"

    url: Mapped[str] = mapped_column(String(2000), primary_key=True)
    etag: Mapped[str | None] = mapped_column(String(500))
    last_modified: Mapped[str | None] = mapped_column(String(200))
    last_fetched_at: Mapped[dt.datetime | None]
    last_status: Mapped[str | None] = mapped_column(String(200))


class Post(Base):
    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    guid: Mapped[str] = mapped_column(String(2000), unique=True)
    link: Mapped[str] = mapped_column(String(2000))
    title: Mapped[str] = mapped_column(String(500))
    summary: Mapped[str] = mapped_column(Text, default="")
    content_html: Mapped[str] = mapped_column(Text, default="")
    author: Mapped[str] = mapped_column(String(200), default="")
    published_at: Mapped[dt.datetime | None]
    fetched_at: Mapped[dt.datetime]
    # Posts already in the feed at the very first ingest, beyond feed.first_run_posts, never go out.
    archived: Mapped[bool] = mapped_column(Boolean, default=False)
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id", ondelete="SET NULL"), index=True)


# --- campaigns ---------------------------------------------------------------------------------


class Campaign(Base):
    """A newsletter digest, a one-off, or (kind="followup") the per-template campaign of a sequence step."""

    __tablename__ = "campaigns"
    __table_args__ = (
        CheckConstraint("state IN ('draft','approved','sending','halted','sent','cancelled','skipped')", name="state"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))  # newsletter | oneoff
    # The local date a nightly digest belongs to: one digest per date, whoever makes it.
    newsletter_date: Mapped[dt.date | None] = mapped_column(Date, unique=True)
    topic: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(300))
    preheader: Mapped[str] = mapped_column(String(300), default="")
    intro: Mapped[str] = mapped_column(Text, default="")
    body_markdown: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(20), default="draft")
    created_at: Mapped[dt.datetime]
    approved_at: Mapped[dt.datetime | None]
    approved_by: Mapped[str | None] = mapped_column(String(320))
    # When an approved campaign may be enqueued (None: at once).
    send_after: Mapped[dt.datetime | None]
    enqueued_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    note: Mapped[str] = mapped_column(Text, default="")
    # The bodies as rendered when the send began (campaigns.dispatch): templates applied, CSS inlined,
    # placeholders where the personal values go. Every process and every night of the send uses these.
    frozen_html: Mapped[str | None] = mapped_column(Text)
    frozen_text: Mapped[str | None] = mapped_column(Text)
    # Why and when the send stopped by itself ("halted": the relay kept refusing us); staff resume it.
    halted_reason: Mapped[str | None] = mapped_column(Text)
    halted_at: Mapped[dt.datetime | None]

    posts: Mapped[list[Post]] = relationship(order_by="Post.published_at.desc()", lazy="selectin")


# --- audience ----------------------------------------------------------------------------------


class Contact(Base):
    """A person we may email: a subscriber, an inquiry contact, or both."""

    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime]
    # A random token that identifies the contact in preference and unsubscribe links.
    link_key: Mapped[str] = mapped_column(String(64), unique=True)
    # Consent to follow-up emails about an inquiry (derived from the ledger, kept here for fast checks).
    followups_consent: Mapped[bool] = mapped_column(Boolean, default=False)
    soft_bounces: Mapped[int] = mapped_column(Integer, default=0)

    subscriptions: Mapped[list[Subscription]] = relationship(
        back_populates="contact", cascade="all, delete-orphan", lazy="selectin"
    )


class Subscription(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (
        CheckConstraint("status IN ('pending','active','unsubscribed')", name="status"),
        Index("ix_subscriptions_topic_status", "topic", "status"),
    )

    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True)
    topic: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(20))
    updated_at: Mapped[dt.datetime]
    # The ledger entry this subscription stands on (what an outbox row records as its consent).
    consent_event_id: Mapped[int | None] = mapped_column(ForeignKey("consent_events.id", ondelete="SET NULL"))

    contact: Mapped[Contact] = relationship(back_populates="subscriptions")


class ConsentEvent(Base):
    """The append-only consent ledger. Rows are never edited; erasure removes them with the contact."""

    __tablename__ = "consent_events"
    __table_args__ = (
        CheckConstraint("action IN ('granted','confirmed','withdrawn')", name="action"),
        Index("ix_consent_events_contact_created", "contact_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(String(80))  # "topic:newsletter" | "followups"
    action: Mapped[str] = mapped_column(String(20))
    source: Mapped[str] = mapped_column(String(200))
    wording: Mapped[str] = mapped_column(Text, default="")
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[dt.datetime]


class Suppression(Base):
    """Addresses that are never mailed. Keyed by a keyed hash, so erasure can drop the address itself."""

    __tablename__ = "suppressions"
    __table_args__ = (
        CheckConstraint(
            "reason IN ('unsubscribed','hard_bounce','complaint','erased','staff','soft_bounces')", name="reason"
        ),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    email_hash: Mapped[str] = mapped_column(String(64), unique=True)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id", ondelete="SET NULL"), unique=True)
    reason: Mapped[str] = mapped_column(String(20))
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime]


# --- inquiries and follow-ups --------------------------------------------------------------------


class Inquiry(Base):
    __tablename__ = "inquiries"
    __table_args__ = (CheckConstraint("status IN ('open','booked','closed')", name="status"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    source: Mapped[str] = mapped_column(String(200))
    consent: Mapped[bool] = mapped_column(Boolean)
    consent_text: Mapped[str] = mapped_column(Text, default="")
    consent_event_id: Mapped[int | None] = mapped_column(ForeignKey("consent_events.id", ondelete="SET NULL"))
    # The visitor's free text: for staff only, never in an email or a log line.
    message: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[dt.datetime]
    created_at: Mapped[dt.datetime]
    last_activity_at: Mapped[dt.datetime]
    status: Mapped[str] = mapped_column(String(20), default="open")
    closed_at: Mapped[dt.datetime | None]


class Enrollment(Base):
    """A contact's place in the follow-up sequence. At most one active enrollment per contact and sequence."""

    __tablename__ = "enrollments"
    __table_args__ = (
        CheckConstraint("status IN ('active','stopped','completed')", name="status"),
        Index(
            "uq_enrollments_active",
            "contact_id",
            "sequence",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
        Index("ix_enrollments_status_next_due", "status", "next_due_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    inquiry_id: Mapped[int | None] = mapped_column(ForeignKey("inquiries.id", ondelete="SET NULL"))
    sequence: Mapped[str] = mapped_column(String(64), default="default")
    status: Mapped[str] = mapped_column(String(20), default="active")
    stop_reason: Mapped[str | None] = mapped_column(String(40))
    # Index of the next step to send (0-based) and when it falls due (already moved into the send window).
    next_step: Mapped[int] = mapped_column(Integer, default=0)
    next_due_at: Mapped[dt.datetime | None]
    anchor_at: Mapped[dt.datetime]  # the inquiry time the steps' delays count from
    last_sent_at: Mapped[dt.datetime | None]
    consent_event_id: Mapped[int | None] = mapped_column(ForeignKey("consent_events.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime]
    stopped_at: Mapped[dt.datetime | None]


# --- the outbox ----------------------------------------------------------------------------------

OUTBOX_STATES = ("queued", "sending", "sent", "deferred", "failed", "skipped", "unknown")
# States a message waits in until it is due, as SQL with literals (so the planner can use the partial index).
WAITING_SQL = "state IN ('queued', 'deferred', 'unknown')"


class OutboxMessage(Base):
    """One message to one person. It exists before it is sent; its state is the truth about it."""

    __tablename__ = "outbox"
    __table_args__ = (
        CheckConstraint(
            "state IN ('queued','sending','sent','deferred','failed','skipped','unknown')", name="state"
        ),
        # The claim walks this small index in order (only waiting rows are in it) and stops at the batch
        # size: no sort of a million rows per claim.
        Index("ix_outbox_waiting", "due_at", "id", sqlite_where=text(WAITING_SQL), postgresql_where=text(WAITING_SQL)),
        # A worker's own claims (lease renewal) and abandoned ones (reclaim).
        Index("ix_outbox_sending", "claimed_by", sqlite_where=text("state = 'sending'"),
              postgresql_where=text("state = 'sending'")),
        Index("ix_outbox_campaign_state", "campaign_id", "state"),
        Index("ix_outbox_contact", "contact_id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    # "c:<campaign>:<contact>", "f:<enrollment>:<step>", "confirm:<contact>:<n>": enqueue twice, get one row.
    dedupe_key: Mapped[str] = mapped_column(String(120), unique=True)
    kind: Mapped[str] = mapped_column(String(20))  # newsletter | oneoff | followup | confirm
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    enrollment_id: Mapped[int | None] = mapped_column(ForeignKey("enrollments.id", ondelete="SET NULL"))
    step: Mapped[int | None] = mapped_column(Integer)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id", ondelete="SET NULL"))
    # The ledger entry this message relies on: "why did this person get this email".
    consent_event_id: Mapped[int | None] = mapped_column(ForeignKey("consent_events.id", ondelete="SET NULL"))
    state: Mapped[str] = mapped_column(String(20), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Set once a send ended without a reply after the final dot: such a message is retried only once.
    was_unknown: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime]
    due_at: Mapped[dt.datetime]
    lease_until: Mapped[dt.datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    sent_at: Mapped[dt.datetime | None]
    message_id: Mapped[str | None] = mapped_column(String(300))
    last_error: Mapped[str | None] = mapped_column(Text)
    smtp_code: Mapped[int | None] = mapped_column(Integer)


# --- staff, scheduler ----------------------------------------------------------------------------


class StaffUser(Base):
    __tablename__ = "staff_users"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[dt.datetime]
    last_login_at: Mapped[dt.datetime | None]
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[dt.datetime | None]


class JobRun(Base):
    """One row per scheduled job run: what /healthz and the logs report."""

    __tablename__ = "job_runs"
    __table_args__ = (Index("ix_job_runs_job_started", "job_id", "started_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64))
    scheduled_for: Mapped[dt.datetime]
    started_at: Mapped[dt.datetime]
    finished_at: Mapped[dt.datetime | None]
    outcome: Mapped[str] = mapped_column(String(20), default="running")  # running | ok | error | skipped
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    host: Mapped[str] = mapped_column(String(200), default="")


class Lease(Base):
    """A named lease with a heartbeat: the scheduler's leader lock on SQLite."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[dt.datetime]
    acquired_at: Mapped[dt.datetime]


class MailboxCursor(Base):
    """How far an IMAP folder has been read: its UIDVALIDITY and the highest UID handled."""

    __tablename__ = "mailbox_cursors"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)  # "bounces" | "replies"
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[dt.datetime]


class HandledMessage(Base):
    """A maildir message already handled, kept while it is still in the maildir."""

    __tablename__ = "handled_messages"

    mailbox: Mapped[str] = mapped_column(String(40), primary_key=True)  # "bounces" | "replies"
    key: Mapped[str] = mapped_column(String(255), primary_key=True)  # the maildir's unique name
    handled_at: Mapped[dt.datetime]


class RateEvent(Base):
    """Recent requests per client key, for rate limits shared by every process on the database."""

    __tablename__ = "rate_events"
    __table_args__ = (Index("ix_rate_events_key_at", "key", "at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    key: Mapped[str] = mapped_column(String(200))
    at: Mapped[dt.datetime]


__all__ = [
    "Base",
    "Campaign",
    "ConsentEvent",
    "Contact",
    "Enrollment",
    "FeedState",
    "HandledMessage",
    "Inquiry",
    "JobRun",
    "Lease",
    "MailboxCursor",
    "OutboxMessage",
    "Post",
    "RateEvent",
    "StaffUser",
    "Subscription",
    "Suppression",
]
