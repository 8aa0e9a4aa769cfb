"""Staff pages for campaigns: the list, one campaign, preview, edit, test, approve, resume, cancel, compose."""

from __future__ import annotations

import datetime as dt
import logging

from flask import Response, g, request
from sqlalchemy import select

from mailer import audience, privacy
from mailer import staff as staff_accounts
from mailer.config import Settings
from mailer.inbound import evidence
from mailer.models import Campaign, StaffUser
from mailer.outbound import outbox
from mailer.publishing import archive, campaigns, figures, previews, schedules
from mailer.publishing.render import RenderError
from mailer.web import current_runtime
from mailer.web.admin.base import (
    CAMPAIGNS_PER_PAGE,
    PREVIEW_CSP,
    blueprint,
    current_now,
    current_settings,
    done,
    get_or_404,
    int_arg,
    page,
    problem_page,
    text_field,
    when,
)

log = logging.getLogger("mailer.web.admin")


# --- campaigns -------------------------------------------------------------------------------------


def next_send_time(settings: Settings, now: dt.datetime) -> dt.datetime:
    """The next nightly send time that is still in the future (today's, or tomorrow's once it passed)."""
    day = now.astimezone(settings.zone).date()
    while (moment := campaigns.scheduled_send(settings, day)) <= now:
        day += dt.timedelta(days=1)
    return moment




@blueprint.get("/campaigns", endpoint="campaigns")
def campaign_list() -> Response:
    """Newest campaigns first, with their state and figures; `?before=ID` pages back."""
    before = int_arg("before")
    with current_runtime().sessions() as db:
        query = select(Campaign).order_by(Campaign.id.desc()).limit(CAMPAIGNS_PER_PAGE + 1)
        if before is not None:
            query = query.where(Campaign.id < before)
        rows = list(db.scalars(query))
        older = rows[CAMPAIGNS_PER_PAGE - 1].id if len(rows) > CAMPAIGNS_PER_PAGE else None
        rows = rows[:CAMPAIGNS_PER_PAGE]
        numbers = figures.campaign_figures(db, [row.id for row in rows])
        return page("admin/campaigns.html", section="admin.campaigns", rows=rows, figures=numbers, older=older,
                     paged=before is not None)


@blueprint.get("/campaigns/<int:campaign_id>")
def campaign(campaign_id: int) -> Response:
    """One campaign: what it says, its preview and text part, what happened, and what can be done."""
    runtime = current_runtime()
    settings = runtime.settings
    now = runtime.clock()
    with runtime.sessions() as db:
        row = get_or_404(db, Campaign, campaign_id, "campaign")
        try:
            _subject, _html, text = previews.render_parts(settings, row)
            render_problem = None
        except RenderError as exc:
            text, render_problem = "", str(exc)
        waiting = row.state in ("draft", "approved")
        shown_preheader = row.preheader or (row.posts[0].summary if row.posts else "")
        return page(
            "admin/campaign.html", section="admin.campaigns", campaign=row, text=text,
            render_problem=render_problem, figures=figures.campaign_figures(db, [row.id])[row.id],
            audience_size=outbox.audience_size(db, row.topic) if waiting else None,
            undelivered=outbox.undelivered(db, row.id, limit=50), next_send=next_send_time(settings, now),
            setup_problems=evidence.setup_problems(db, [row.id]),
            staff_addresses=list(db.scalars(select(StaffUser.email).order_by(StaffUser.email))),
            test_addresses=settings.newsletter.test_addresses,
            scheduled=campaigns.is_scheduled(row), zone_name=settings.clinic.timezone,
            archive_url=archive.page_url(settings, row) if archive.is_public(settings, row) else None,
            archive_topic=settings.archive.enabled and row.topic in settings.archive_topics,
            zone_now=f"{now.astimezone(settings.zone):%Z}",
            send_at_value=f"{row.send_after.astimezone(settings.zone):%Y-%m-%dT%H:%M}" if row.send_after else "",
            sensitive=privacy.words_in(settings.privacy.sensitive_words, row.subject, shown_preheader),
            four_eyes_blocked=(settings.newsletter.four_eyes and row.kind == "oneoff" and g.staff.email.casefold()
                               in {who.casefold() for who in (row.created_by, row.edited_by) if who}),
        )


@blueprint.get("/campaigns/<int:campaign_id>/preview")
def campaign_preview(campaign_id: int) -> Response:
    """The email's HTML as a recipient sees it, for the campaign page's sandboxed frame."""
    with current_runtime().sessions() as db:
        row = get_or_404(db, Campaign, campaign_id, "campaign")
        try:
            _subject, html, _text = previews.render_parts(current_settings(), row)
        except RenderError as exc:
            return problem_page(500, "The email could not be rendered", str(exc))
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = PREVIEW_CSP
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


@blueprint.post("/campaigns/<int:campaign_id>/edit")
def campaign_edit(campaign_id: int) -> Response:
    """Change a draft's subject, preheader and intro (and a one-off's body)."""
    problem = None
    with current_runtime().sessions.begin() as db:
        row = get_or_404(db, Campaign, campaign_id, "campaign")
        try:
            campaigns.edit(row, subject=request.form.get("subject"), preheader=request.form.get("preheader"),
                           intro=text_field("intro"),
                           body_markdown=text_field("body_markdown") if row.kind == "oneoff" else None,
                           by=g.staff.email)
            # Staff may write any subject by hand; the guard warns (the page shows it too).
            words = privacy.screen(current_settings(), f"campaign {campaign_id}", row.subject, row.preheader,
                                   automatic=False).words
        except campaigns.CampaignError as exc:
            problem = str(exc)
    if problem is not None:
        return done(".campaign", f"Not saved: {problem}.", "problem", campaign_id=campaign_id)
    log.info("campaign %s edited by staff account %s", campaign_id, g.staff.id)
    if words:
        return done(".campaign", f"Saved, but the subject or preheader names {', '.join(words)}: inbox lists show "
                    "them to anyone who glances at the screen. Please consider a neutral wording.", "problem",
                    campaign_id=campaign_id)
    return done(".campaign", "Saved. The preview below shows the change.", campaign_id=campaign_id)


@blueprint.post("/campaigns/<int:campaign_id>/test")
def campaign_test(campaign_id: int) -> Response:
    """A test copy, now, to a staff address (the logged-in person's by default) and to any of the extra
    addresses in newsletter.test_addresses that were ticked."""
    runtime = current_runtime()
    extras = {address.lower(): address for address in runtime.settings.newsletter.test_addresses}
    ticked = request.form.getlist("extra")
    typed = (request.form.get("address") or "").strip()
    if not typed and not ticked:
        typed = g.staff.email
    addresses = []
    try:
        if typed:
            addresses.append(audience.normalize_email(typed))
    except audience.AudienceError:
        return done(".campaign", "The test was not sent: that is not a complete email address.", "problem",
                     campaign_id=campaign_id)
    unknown = [address for address in ticked if address.lower() not in extras]
    if unknown:
        return done(".campaign", "The test was not sent: an address ticked is not one of the test addresses.",
                    "problem", campaign_id=campaign_id)
    with runtime.sessions() as db:
        row = get_or_404(db, Campaign, campaign_id, "campaign")
        if typed and addresses[0].lower() not in extras and staff_accounts.find(db, addresses[0]) is None:
            # A test carries no unsubscribe link that works and rests on no consent: only staff and the
            # clinic's own test addresses may get one.
            return done(".campaign", f"The test was not sent: {addresses[0]} is not a staff login or one of the "
                         "test addresses. Tests go only to those.", "problem", campaign_id=campaign_id)
    addresses += [extras[address.lower()] for address in ticked]
    addresses = list(dict.fromkeys(addresses))
    sent, failed = [], []
    for address in addresses:
        try:
            result = previews.send_test(runtime, row, address)
        except RenderError as exc:
            return done(".campaign", f"The test was not sent: the email could not be rendered ({exc}).", "problem",
                         campaign_id=campaign_id)
        if result.outcome == "sent":
            sent.append(address)
            continue
        log.warning("test of campaign %s not sent: %s %s", campaign_id, result.outcome, result.code or "")
        detail = f" ({result.code} {result.detail})" if result.code else (f" ({result.detail})" if result.detail else "")
        failed.append(f"{address}{detail}")
    log.info("test of campaign %s sent by staff account %s to %d address(es)", campaign_id, g.staff.id, len(sent))
    if failed:
        also = f" It was sent to {_listed(sent)}." if sent else ""
        return done(".campaign", f"The test could not be sent to {_listed(failed)}: the mail server said no.{also} "
                     "Please try again later or tell your IT person.", "problem", campaign_id=campaign_id)
    return done(".campaign", f"Test sent to {_listed(sent)}. It should arrive within a minute or two.",
                 campaign_id=campaign_id)


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


@blueprint.post("/campaigns/<int:campaign_id>/approve")
def campaign_approve(campaign_id: int) -> Response:
    """Approve a draft: a newsletter for the next nightly send time (or now), a one-off now."""
    runtime = current_runtime()
    now = runtime.clock()
    problem = None
    send_after = None
    with runtime.sessions.begin() as db:
        row = get_or_404(db, Campaign, campaign_id, "campaign")
        if row.kind == "newsletter" and request.form.get("when") != "now":
            send_after = next_send_time(runtime.settings, now)
        try:
            campaigns.approve(db, row, by=g.staff.email, now=now, send_after=send_after,
                              four_eyes=runtime.settings.newsletter.four_eyes)
        except campaigns.CampaignError as exc:
            problem = str(exc)
        send_after = row.send_after
    if problem is not None:
        return done(".campaign", f"Not approved: {problem}.", "problem", campaign_id=campaign_id)
    log.info("campaign %s approved by staff account %s", campaign_id, g.staff.id)
    moment = f"at {when(send_after)}" if send_after else "on the next delivery run, within a few minutes"
    return done(".campaign", f"Approved. It goes out {moment}.", campaign_id=campaign_id)


@blueprint.post("/campaigns/<int:campaign_id>/schedule")
def campaign_schedule(campaign_id: int) -> Response:
    """Approve a draft for a time in clinic time ("Send at"), or give a scheduled campaign another time."""
    runtime = current_runtime()
    settings = runtime.settings
    now = runtime.clock()
    problem = None
    with runtime.sessions.begin() as db:
        row = get_or_404(db, Campaign, campaign_id, "campaign")
        try:
            send_at = schedules.future_send_time(request.form.get("send_at") or "", settings.zone, now)
            campaigns.schedule(db, row, by=g.staff.email, now=now, at=send_at,
                               four_eyes=settings.newsletter.four_eyes)
        except campaigns.CampaignError as exc:
            problem = str(exc)
    if problem is not None:
        return done(".campaign", f"Not scheduled: {problem}.", "problem", campaign_id=campaign_id)
    log.info("campaign %s scheduled by staff account %s", campaign_id, g.staff.id)
    return done(".campaign", f"Scheduled. It goes out at {when(send_at)}. Until then you can still edit it, "
                 "change the time or unschedule it.", campaign_id=campaign_id)


@blueprint.post("/campaigns/<int:campaign_id>/unschedule")
def campaign_unschedule(campaign_id: int) -> Response:
    """A scheduled campaign goes back to being a draft."""
    problem = None
    with current_runtime().sessions.begin() as db:
        row = get_or_404(db, Campaign, campaign_id, "campaign")
        try:
            campaigns.unschedule(db, row)
        except campaigns.CampaignError as exc:
            problem = str(exc)
    if problem is not None:
        return done(".campaign", f"Not unscheduled: {problem}.", "problem", campaign_id=campaign_id)
    log.info("campaign %s unscheduled by staff account %s", campaign_id, g.staff.id)
    return done(".campaign", "Unscheduled. It is a draft again: nothing goes out until someone approves it.",
                 campaign_id=campaign_id)


@blueprint.post("/campaigns/<int:campaign_id>/archive")
def campaign_archive(campaign_id: int) -> Response:
    """Show a one-off in the public archive, or stop showing it (newsletters are always shown)."""
    show = request.form.get("show") == "1"
    with current_runtime().sessions.begin() as db:
        row = get_or_404(db, Campaign, campaign_id, "campaign")
        if row.kind != "oneoff":
            return done(".campaign", "Newsletters are always in the public archive once sent.", "problem",
                         campaign_id=campaign_id)
        row.archived = show
    log.info("campaign %s %s the archive by staff account %s", campaign_id, "shown in" if show else "taken out of",
             g.staff.id)
    if show:
        message = ("It will be shown in the public archive once sent, and its emails carry a “View in your browser” "
                   "link (emails already sent do not).")
    else:
        message = "It is not shown in the public archive."
    return done(".campaign", message, campaign_id=campaign_id)


@blueprint.post("/campaigns/<int:campaign_id>/resume")
def campaign_resume(campaign_id: int) -> Response:
    """Send a halted campaign again, once the relay settings are fixed."""
    problem = None
    waiting = 0
    with current_runtime().sessions.begin() as db:
        row = get_or_404(db, Campaign, campaign_id, "campaign")
        try:
            waiting = campaigns.resume(db, row, current_now())
        except campaigns.CampaignError as exc:
            problem = str(exc)
    if problem is not None:
        return done(".campaign", f"Not resumed: {problem}.", "problem", campaign_id=campaign_id)
    log.info("campaign %s resumed by staff account %s (%d waiting)", campaign_id, g.staff.id, waiting)
    return done(".campaign", f"Resumed. {waiting} message(s) go out on the next delivery run, within a few minutes.",
                campaign_id=campaign_id)


@blueprint.post("/campaigns/<int:campaign_id>/cancel")
def campaign_cancel(campaign_id: int) -> Response:
    """Stop a campaign: messages not yet handed to the mail server are skipped."""
    problem = None
    skipped = 0
    with current_runtime().sessions.begin() as db:
        row = get_or_404(db, Campaign, campaign_id, "campaign")
        try:
            skipped = campaigns.cancel(db, row, current_now())
        except campaigns.CampaignError as exc:
            problem = str(exc)
    if problem is not None:
        return done(".campaign", f"Not cancelled: {problem}.", "problem", campaign_id=campaign_id)
    log.info("campaign %s cancelled by staff account %s (%d skipped)", campaign_id, g.staff.id, skipped)
    return done(".campaign", f"Cancelled. {skipped} message(s) that had not gone out will not be sent.",
                 campaign_id=campaign_id)


@blueprint.route("/compose", methods=["GET", "POST"])
def compose() -> Response:
    """A one-off campaign to one topic; saving makes a draft, reviewed on its campaign page like any other."""
    runtime = current_runtime()
    settings = runtime.settings
    form = {"topic": settings.newsletter.topic, "subject": "", "preheader": "", "body_markdown": ""}
    if request.method == "GET":
        return page("admin/compose.html", section="admin.compose", form=form, problem=None)
    form = {name: (text_field(name) or "") for name in form}
    problem = None if form["body_markdown"].strip() else "Please write the message in the Body field."
    campaign_id = None
    if problem is None:
        try:
            with runtime.sessions.begin() as db:
                row = campaigns.create_oneoff(db, settings, topic=form["topic"], subject=form["subject"],
                                              preheader=form["preheader"], body_markdown=form["body_markdown"],
                                              now=runtime.clock(), by=g.staff.email)
                campaign_id = row.id
        except campaigns.CampaignError as exc:
            problem = f"Not saved: {exc}."
    if campaign_id is None:
        return page("admin/compose.html", 400, section="admin.compose", form=form, problem=problem)
    log.info("one-off campaign %s drafted by staff account %s", campaign_id, g.staff.id)
    return done(".campaign", "Draft saved. Check the preview, send yourself a test, then approve it.",
                 campaign_id=campaign_id)


