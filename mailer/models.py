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
    UniqueConstraint,
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
    # Who wrote a one-off and who last edited it: with newsletter.four_eyes, neither may approve it.
    created_by: Mapped[str | None] = mapped_column(String(320))
    edited_by: Mapped[str | None] = mapped_column(String(320))
    # When an approved campaign may be enqueued (None: at once).
    send_after: Mapped[dt.datetime | None]
    enqueued_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    note: Mapped[str] = mapped_column(Text, default="")
    # The bodies as rendered when the send began (campaigns.dispatch): templates applied, CSS inlined,
    # placeholders where the personal values go. Every process and every night of the send uses these.
    frozen_html: Mapped[str | None] = mapped_column(Text)
    frozen_text: Mapped[str | None] = mapped_column(Text)
    # A one-off that staff chose to show in the public archive (newsletters always are).
    archived: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
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
        CheckConstraint("action IN ('granted','confirmed','withdrawn','lifted')", name="action"),
        Index("ix_consent_events_contact_created", "contact_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    # "topic:newsletter" | "followups" | "suppression" (staff lifted a bounce-based suppression: action "lifted")
    purpose: Mapped[str] = mapped_column(String(80))
    action: Mapped[str] = mapped_column(String(20))
    source: Mapped[str] = mapped_column(String(200))
    wording: Mapped[str] = mapped_column(Text, default="")
    # The wording the clinic itself published for this purpose when the grant came from another party's
    # form (the intake API): `wording` is what that form says it showed, this is what the clinic configured.
    published_wording: Mapped[str | None] = mapped_column(Text)
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
    # The report or reply that caused a bounce or complaint suppression (see BounceEvent).
    bounce_event_id: Mapped[int | None] = mapped_column(ForeignKey("bounce_events.id", ondelete="SET NULL"))


BOUNCE_VERDICTS = ("address_bad", "mailbox_unable", "not_about_recipient", "complaint")


class BounceEvent(Base):
    """One verdict about a delivery, kept as evidence: what a bounce report, complaint or SMTP reply said.

    The diagnostic line has the local parts of addresses masked. Rows go with their contact on erasure.
    """

    __tablename__ = "bounce_events"
    __table_args__ = (
        CheckConstraint("verdict IN ('address_bad','mailbox_unable','not_about_recipient','complaint')",
                        name="verdict"),
        Index("ix_bounce_events_contact_report", "contact_id", "report_at"),
        Index("ix_bounce_events_campaign_verdict", "campaign_id", "verdict"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id", ondelete="SET NULL"))
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id", ondelete="SET NULL"))
    verdict: Mapped[str] = mapped_column(String(24))
    reason: Mapped[str] = mapped_column(String(40), default="")  # a short tag: user_unknown, mailbox_full, ...
    status: Mapped[str] = mapped_column(String(16), default="")  # enhanced status code, e.g. 5.1.1
    reply_code: Mapped[str] = mapped_column(String(3), default="")  # SMTP reply code, e.g. 550
    diagnostic: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(40))  # maildir | imap | smtp | relay:<name>
    report_key: Mapped[str] = mapped_column(String(255), default="")  # maildir file name, IMAP UID, outbox id
    report_at: Mapped[dt.datetime]  # when the report says it happened
    # A soft bounce counts towards the limit until staff lift the suppression it led to.
    counted: Mapped[bool] = mapped_column(Boolean, default=True)
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
    # What the person asked about, when the website's form says (a follow-up sequence may match it).
    service: Mapped[str] = mapped_column(String(200), default="", server_default="")
    # When they booked (the booking webhook's time, or when staff marked it) and through what: figures.
    booked_at: Mapped[dt.datetime | None]
    booked_via: Mapped[str | None] = mapped_column(String(200))


# Enrollments whose sequence is under way: running, or paused by a reply until staff decide.
RUNNING = ("active", "paused")
RUNNING_SQL = "status IN ('active', 'paused')"


class Enrollment(Base):
    """A contact's place in a follow-up sequence. At most one running (active or paused) enrollment per
    contact, whatever the sequence: nobody gets two sequences at once."""

    __tablename__ = "enrollments"
    __table_args__ = (
        CheckConstraint("status IN ('active','paused','stopped','completed')", name="status"),
        Index(
            "uq_enrollments_running",
            "contact_id",
            unique=True,
            sqlite_where=text(RUNNING_SQL),
            postgresql_where=text(RUNNING_SQL),
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
    # Set while a reply holds the sequence (status "paused"): when the reply came.
    paused_at: Mapped[dt.datetime | None]
    # How often staff resumed it: resumed steps get fresh outbox keys ("f:<id>:<step>:<resumes>"), since
    # the step a pause cancelled keeps its own key as a skipped row.
    resumes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class StepVersion(Base):
    """One saved wording of a follow-up step: its subject, preheader and Markdown body, who saved it, when.

    Version 0 of every step is not stored: it is the step's template and its subject and preheader in
    config.toml. Each save on the staff pages adds the next number; rows are never changed, so a message
    queued with a version (OutboxMessage.step_version) is always sent with exactly that wording.
    """

    __tablename__ = "followup_versions"
    __table_args__ = (UniqueConstraint("sequence", "step", "version"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    sequence: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer)  # 0-based, as Enrollment.next_step and OutboxMessage.step
    version: Mapped[int] = mapped_column(Integer)
    # The step's template when it was saved: a step given another template in config.toml starts again
    # from that template's wording.
    template: Mapped[str] = mapped_column(String(100))
    subject: Mapped[str] = mapped_column(String(300))
    preheader: Mapped[str] = mapped_column(String(300), default="")
    body_markdown: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[dt.datetime]


class Reply(Base):
    """That a person replied, when, and to which of our messages: never what they wrote."""

    __tablename__ = "replies"
    __table_args__ = (Index("ix_replies_contact_received", "contact_id", "received_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    enrollment_id: Mapped[int | None] = mapped_column(ForeignKey("enrollments.id", ondelete="SET NULL"), index=True)
    # The message of ours it answers (In-Reply-To/References), when the mail client kept the thread.
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id", ondelete="SET NULL"))
    # How many steps of the sequence had gone out when it came: the step it was "after".
    after_step: Mapped[int | None] = mapped_column(Integer)
    matched_by: Mapped[str] = mapped_column(String(20))  # "thread" | "address"
    received_at: Mapped[dt.datetime]


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
    kind: Mapped[str] = mapped_column(String(20))  # newsletter | oneoff | followup | confirm | welcome | notice
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    enrollment_id: Mapped[int | None] = mapped_column(ForeignKey("enrollments.id", ondelete="SET NULL"))
    step: Mapped[int | None] = mapped_column(Integer)
    # A follow-up's wording: the version of its step that was current when it was queued (0 or NULL: the
    # template and config.toml), so wording saved later never changes an email already on its way.
    step_version: Mapped[int | None] = mapped_column(Integer)
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


class StaffNotice(Base):
    """A front-desk notification to one staff address: the events gathered into it until it is sent.

    Its outbox row (kind "notice", no contact) is due a few minutes after the first event; events that
    happen meanwhile join it while that row still waits. Events name ids only (an inquiry, a campaign):
    the email is written when it is sent, from what the database says then.
    """

    __tablename__ = "staff_notices"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    recipient: Mapped[str] = mapped_column(String(320))
    # [{"event": "inquiry"|"reply"|"booked"|"draft", "inquiry_id" | "campaign_id": id, "at": ISO-8601}, ...]
    events: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime]
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id", ondelete="CASCADE"), unique=True)


# --- staff, scheduler ----------------------------------------------------------------------------


STAFF_ROLES = ("admin", "marketing", "frontdesk")


class StaffUser(Base):
    __tablename__ = "staff_users"
    __table_args__ = (CheckConstraint("role IN ('admin','marketing','frontdesk')", name="role"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[dt.datetime]
    last_login_at: Mapped[dt.datetime | None]
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[dt.datetime | None]
    role: Mapped[str] = mapped_column(String(20), default="admin")
    # Every session carries the version it was opened with; raising it (logout, a new password, disabling)
    # ends all of the account's sessions at once, wherever their cookies are.
    session_version: Mapped[int] = mapped_column(Integer, default=0)
    disabled_at: Mapped[dt.datetime | None]


class AccessEntry(Base):
    """The access log: who saw an inquiry's message, and who suppressed, erased, approved or changed a role.

    Append-only: database triggers refuse UPDATE and DELETE. It holds ids and staff addresses only,
    never a contact's address or an inquiry's words, and has no foreign keys so it outlives what it names.
    """

    __tablename__ = "access_log"
    __table_args__ = (Index("ix_access_log_inquiry", "inquiry_id", "at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(40))
    inquiry_id: Mapped[int | None] = mapped_column(BigInteger)
    contact_id: Mapped[int | None] = mapped_column(BigInteger)
    campaign_id: Mapped[int | None] = mapped_column(BigInteger)
    staff_id: Mapped[int | None] = mapped_column(BigInteger)
    detail: Mapped[str] = mapped_column(String(300), default="")


class IntakeKey(Base):
    """An Idempotency-Key seen on the intake API (as a keyed hash) and the answer its first request got."""

    __tablename__ = "intake_keys"

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(index=True)
    status: Mapped[int] = mapped_column(Integer)
    answer: Mapped[dict[str, Any]] = mapped_column(JSON)


class SubscriberImport(Base):
    """A CSV file uploaded on the staff pages: checked (dry run), then imported exactly as checked."""

    __tablename__ = "subscriber_imports"
    __table_args__ = (CheckConstraint("state IN ('checked','imported')", name="state"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    staff_email: Mapped[str] = mapped_column(String(320))
    filename: Mapped[str] = mapped_column(String(255), default="")
    # SHA-256 of the file's bytes: the import runs only on the very file the dry run checked.
    sha256: Mapped[str] = mapped_column(String(64))
    # The file itself until it is imported (then emptied: the subscribers are in their own tables).
    content: Mapped[str] = mapped_column(Text, default="")
    # The dry run's outcome: counts and the lines rejected or skipped, each with its reason.
    outcome: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(20), default="checked")
    created_at: Mapped[dt.datetime]
    imported_at: Mapped[dt.datetime | None]


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


class HandledRelayEvent(Base):
    """A relay webhook event (or a Mailgun request token) already handled, kept so a replay changes nothing.

    The key is a SHA-256 of the relay's own event id (never an address); `effect` says what the event did.
    """

    __tablename__ = "relay_events"

    relay: Mapped[str] = mapped_column(String(20), primary_key=True)  # postmark | mailgun | mailgun-token | ...
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    effect: Mapped[str] = mapped_column(String(24))  # hard | soft | complaint | unsubscribe | delivered | ...
    received_at: Mapped[dt.datetime] = mapped_column(index=True)


class RateEvent(Base):
    """Recent requests per client key, for rate limits shared by every process on the database."""

    __tablename__ = "rate_events"
    __table_args__ = (Index("ix_rate_events_key_at", "key", "at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    key: Mapped[str] = mapped_column(String(200))
    at: Mapped[dt.datetime]


__all__ = [
    "BOUNCE_VERDICTS",
    "AccessEntry",
    "Base",
    "BounceEvent",
    "Campaign",
    "ConsentEvent",
    "Contact",
    "Enrollment",
    "FeedState",
    "HandledMessage",
    "HandledRelayEvent",
    "Inquiry",
    "IntakeKey",
    "JobRun",
    "Lease",
    "MailboxCursor",
    "OutboxMessage",
    "Post",
    "RateEvent",
    "Reply",
    "StaffNotice",
    "StaffUser",
    "StepVersion",
    "SubscriberImport",
    "Subscription",
    "Suppression",
]
