"""Campaigns: the nightly digest from unsent posts, one-offs, approval, and draft → approved → sending → sent."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import exists, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, object_session

from mailer import access_log, privacy
from mailer.config import Settings, hhmm
from mailer.models import Campaign, OutboxMessage, Post
from mailer.outbound import outbox
from mailer.publishing.render import Renderer, RenderError
from mailer.text import one_line

log = logging.getLogger("mailer.campaigns")

EDITABLE = ("draft",)
ANALYZE_AFTER = 10_000  # enqueued rows after which PostgreSQL's statistics on the outbox are refreshed


class CampaignError(Exception):
    """A campaign cannot do what was asked (unknown id, wrong state); the message is one line."""


def get(session: Session, campaign_id: int) -> Campaign:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise CampaignError(f"no campaign with id {campaign_id}")
    return campaign


def unsent_posts(session: Session, limit: int | None = None) -> list[Post]:
    """Posts not yet in any newsletter (and not archived at the first ingest), newest first."""
    query = (
        select(Post)
        .where(Post.campaign_id.is_(None), Post.archived.is_(False))
        .order_by(Post.published_at.desc().nulls_last(), Post.id.desc())
    )
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def scheduled_send(settings: Settings, local_date: dt.date) -> dt.datetime:
    """The UTC instant of the nightly send on a local date. A time that does not exist that night (the
    clocks jump over it) is taken as the same wall time before the jump, i.e. an hour later in real time."""
    local = dt.datetime.combine(local_date, hhmm(settings.newsletter.send_time), tzinfo=settings.zone)
    return local.astimezone(dt.UTC)


def latest_send_date(settings: Settings, now: dt.datetime) -> dt.date:
    """The most recent local date whose send time is at or before `now`."""
    today = now.astimezone(settings.zone).date()
    return today if scheduled_send(settings, today) <= now else today - dt.timedelta(days=1)


@dataclass(frozen=True)
class NewsletterOutcome:
    campaign: Campaign | None
    reason: str  # created | exists | no-posts | missed


def make_newsletter(session: Session, settings: Settings, now: dt.datetime, *, grace: dt.timedelta | None = None) -> NewsletterOutcome:
    """At the nightly send time: all unsent posts become one digest for that local date, once.

    Safe to call any number of times for the same moment (a unique key on the date). A send time missed
    by more than the grace time is skipped: its posts wait for the next night, never sent by surprise.
    """
    grace = grace if grace is not None else dt.timedelta(minutes=settings.newsletter.misfire_grace_minutes)
    local_date = latest_send_date(settings, now)
    existing = session.scalar(select(Campaign).where(Campaign.newsletter_date == local_date))
    if existing is not None:
        return NewsletterOutcome(existing, "exists")
    due = scheduled_send(settings, local_date)
    if now - due > grace:
        return NewsletterOutcome(None, "missed")
    posts = unsent_posts(session, settings.newsletter.max_posts)
    if not posts:
        return NewsletterOutcome(None, "no-posts")
    subject = settings.newsletter.subject.format(
        clinic=settings.clinic.name, first_title=posts[0].title, count=len(posts)
    )
    # The preheader a digest would show: the first post's summary (Renderer.campaign_documents).
    screened = privacy.screen(settings, "digest", one_line(subject), one_line(posts[0].summary or "")[:150],
                              automatic=True, count=len(posts))
    campaign = Campaign(
        kind="newsletter",
        newsletter_date=local_date,
        topic=settings.newsletter.topic,
        subject=one_line(screened.subject)[:300],
        preheader=one_line(screened.preheader)[:300] if screened.neutral else "",
        note=(f"The subject and preheader made from the articles named {', '.join(screened.words)}, so the "
              "neutral ones are used." if screened.neutral else ""),
        intro=settings.newsletter.intro,
        state="draft",
        created_at=now,
    )
    try:
        with session.begin_nested():
            session.add(campaign)
            session.flush()
    except IntegrityError:  # another process made tonight's digest a moment ago
        return NewsletterOutcome(session.scalar(select(Campaign).where(Campaign.newsletter_date == local_date)), "exists")
    session.execute(update(Post).where(Post.id.in_([p.id for p in posts])).values(campaign_id=campaign.id))
    session.refresh(campaign)
    if settings.newsletter.approval == "auto":
        approve(session, campaign, by="auto", now=now)
    log.info("newsletter campaign %s for %s: %d posts, %s", campaign.id, local_date, len(posts), campaign.state)
    return NewsletterOutcome(campaign, "created")


def create_oneoff(session: Session, settings: Settings, *, topic: str, subject: str, body_markdown: str,
                  now: dt.datetime, preheader: str = "", intro: str = "", by: str | None = None) -> Campaign:
    """A one-off draft to one topic: what the compose page and `mailer campaigns new` both make. `by` (who
    wrote it) may not approve it when newsletter.four_eyes is on."""
    if topic not in settings.topics:
        raise CampaignError(f"unknown topic {topic!r} (topics: {', '.join(settings.topics)})")
    if not one_line(subject):
        raise CampaignError("a subject is required")
    if not body_markdown.strip():
        raise CampaignError("the body is empty")
    privacy.screen(settings, "one-off", one_line(subject), one_line(preheader), automatic=False)
    campaign = Campaign(kind="oneoff", topic=topic, subject=one_line(subject)[:300], preheader=one_line(preheader)[:300],
                        intro=intro, body_markdown=body_markdown, state="draft", created_at=now, created_by=by)
    session.add(campaign)
    session.flush()
    return campaign


def _lock(campaign: Campaign) -> None:
    """Read the campaign again under a row lock (PostgreSQL): a delivery run enqueuing it finishes first."""
    session = object_session(campaign)
    if session is not None and campaign.id is not None:
        session.flush()
        session.refresh(campaign, with_for_update=True)


def is_scheduled(campaign: Campaign) -> bool:
    """Approved for a later time and not yet enqueued: it can still be edited or unscheduled."""
    return campaign.state == "approved" and campaign.send_after is not None


def edit(campaign: Campaign, *, subject: str | None = None, intro: str | None = None, preheader: str | None = None,
         body_markdown: str | None = None, by: str | None = None, four_eyes: bool = False) -> None:
    """Change a draft, or a scheduled campaign until its time comes (it stays scheduled). `by` is remembered
    as its last editor (who then may not approve it under four-eyes); with `four_eyes`, an edited scheduled
    one-off goes back to draft, since its approval was for other words."""
    if campaign.state == "approved" and campaign.send_after is not None:
        # The delivery run may be enqueuing it right now: wait for it, then look again.
        _lock(campaign)
    if campaign.state not in EDITABLE and not is_scheduled(campaign):
        raise CampaignError(f"campaign {campaign.id} is {campaign.state}; only drafts and scheduled campaigns "
                            "can be edited")
    if subject is not None:
        if not one_line(subject):
            raise CampaignError("a subject is required")
        campaign.subject = one_line(subject)[:300]
    if intro is not None:
        campaign.intro = intro
    if preheader is not None:
        campaign.preheader = one_line(preheader)[:300]
    if body_markdown is not None:
        campaign.body_markdown = body_markdown
    if by is not None:
        campaign.edited_by = by
    if four_eyes and campaign.kind == "oneoff" and is_scheduled(campaign):
        _back_to_draft(campaign)


def approve(session: Session, campaign: Campaign, *, by: str, now: dt.datetime, send_after: dt.datetime | None = None,
            four_eyes: bool = False) -> None:
    """A draft becomes approved; it is enqueued at `send_after` (default: at once, on the next delivery run).

    With `four_eyes` (newsletter.four_eyes), a one-off is approved only by someone other than the person
    who wrote it and the one who last edited it."""
    if campaign.state == "approved":
        return
    if campaign.state != "draft":
        raise CampaignError(f"campaign {campaign.id} is {campaign.state}; only drafts can be approved")
    if four_eyes and campaign.kind == "oneoff":
        writers = {who.casefold() for who in (campaign.created_by, campaign.edited_by) if who}
        if by.casefold() in writers:
            raise CampaignError("another staff member must approve it: whoever wrote or last edited a one-off "
                                "cannot approve it too (newsletter.four_eyes)")
    campaign.state = "approved"
    campaign.approved_at = now
    campaign.approved_by = by
    campaign.send_after = send_after
    access_log.record(session, actor=by if by != "auto" else access_log.SYSTEM, action=access_log.APPROVED,
                      now=now, campaign_id=campaign.id)


def schedule(session: Session, campaign: Campaign, *, by: str, now: dt.datetime, at: dt.datetime,
             four_eyes: bool = False) -> None:
    """Approve a draft for `at` (a future instant), or move a scheduled campaign to another time."""
    if at <= now:
        raise CampaignError("the send time is in the past")
    if campaign.state == "approved":
        _lock(campaign)  # not while the delivery run enqueues it
    if campaign.state == "approved":
        campaign.send_after = at
        return
    approve(session, campaign, by=by, now=now, send_after=at, four_eyes=four_eyes)


def unschedule(session: Session, campaign: Campaign) -> None:
    """A scheduled campaign goes back to being a draft: nothing is sent until it is approved again."""
    _lock(campaign)
    if not is_scheduled(campaign):
        raise CampaignError(f"campaign {campaign.id} is {campaign.state}"
                            + ("" if campaign.state != "approved" else " to go out at once")
                            + "; only a scheduled campaign can be unscheduled")
    _back_to_draft(campaign)


def _back_to_draft(campaign: Campaign) -> None:
    campaign.state = "draft"
    campaign.send_after = None
    campaign.approved_at = None
    campaign.approved_by = None


def resume(session: Session, campaign: Campaign, now: dt.datetime) -> int:
    """A halted campaign (the relay kept refusing us) sends again: its waiting messages are due now, on
    the next delivery run. Returns how many messages wait."""
    if campaign.state != "halted":
        raise CampaignError(f"campaign {campaign.id} is {campaign.state}; only a halted campaign can be resumed")
    campaign.state = "sending"
    campaign.halted_reason = None
    campaign.halted_at = None
    result = session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.campaign_id == campaign.id, OutboxMessage.state.in_(outbox.WAITING))
        .values(due_at=now)
    )
    return result.rowcount or 0


def cancel(session: Session, campaign: Campaign, now: dt.datetime) -> int:
    """Stop a campaign: messages not yet handed over are skipped. Returns how many were skipped."""
    if campaign.state in ("sent", "cancelled"):
        raise CampaignError(f"campaign {campaign.id} is already {campaign.state}")
    campaign.state = "cancelled"
    campaign.finished_at = now
    result = session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.campaign_id == campaign.id, OutboxMessage.state.in_(outbox.WAITING))
        .values(state="skipped", last_error="campaign cancelled")
    )
    # Posts of a cancelled digest go back to the pool for the next one.
    session.execute(update(Post).where(Post.campaign_id == campaign.id).values(campaign_id=None))
    return result.rowcount or 0


def ready(session: Session, now: dt.datetime, *, lock: bool = False) -> list[Campaign]:
    """Approved campaigns whose time has come (what the next delivery run enqueues)."""
    query = (
        select(Campaign)
        .where(Campaign.state == "approved")
        .where((Campaign.send_after.is_(None)) | (Campaign.send_after <= now))
        .order_by(Campaign.id)
    )
    # Two workers dispatching at once: each campaign is enqueued by one of them (the other skips it).
    return list(session.scalars(query.with_for_update(skip_locked=True) if lock else query))


def dispatch(session: Session, now: dt.datetime, renderer: Renderer) -> dict[int, int]:
    """Enqueue every approved campaign whose time has come; returns {campaign id: rows enqueued}.

    Each is rendered here, once, and keeps those bodies for its whole send (Campaign.frozen_html). One
    whose templates fail to render stays approved, enqueued for no one, and the error is logged: it
    goes out once the template is fixed."""
    enqueued = {}
    for campaign in ready(session, now, lock=True):
        try:
            campaign.frozen_html, campaign.frozen_text = renderer.campaign_documents(campaign)
        except RenderError as exc:
            log.error("campaign %s not sent: %s", campaign.id, exc)
            continue
        enqueued[campaign.id] = outbox.enqueue_campaign(session, campaign, now)
        campaign.state = "sending"
        campaign.enqueued_at = now
        log.info("campaign %s enqueued: %d messages", campaign.id, enqueued[campaign.id])
    if sum(enqueued.values()) >= ANALYZE_AFTER and session.get_bind().dialect.name == "postgresql":
        # The planner's statistics still say the outbox is small; left so, it would sort every waiting row
        # on each claim instead of walking the waiting-rows index. Autovacuum would get there, later.
        session.execute(text("ANALYZE outbox"))
    return enqueued


def finish(session: Session, now: dt.datetime) -> list[int]:
    """Campaigns whose every message reached a final state are sent."""
    waiting = (
        select(OutboxMessage.id)
        .where(OutboxMessage.campaign_id == Campaign.id, OutboxMessage.state.in_((*outbox.WAITING, "sending")))
        .exists()
    )
    done = session.scalars(select(Campaign).where(Campaign.state == "sending", ~waiting)).all()
    for campaign in done:
        campaign.state = "sent"
        campaign.finished_at = now
    return [campaign.id for campaign in done]


def listing(session: Session, limit: int = 50) -> list[Campaign]:
    return list(session.scalars(select(Campaign).order_by(Campaign.id.desc()).limit(limit)))


def has_unsent_posts(session: Session) -> bool:
    return bool(session.scalar(select(exists().where(Post.campaign_id.is_(None), Post.archived.is_(False)))))
