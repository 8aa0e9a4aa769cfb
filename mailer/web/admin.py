"""Staff pages under /admin: log in, review and approve campaigns, compose one-offs, inquiries, subscribers.

Every page but the login needs a staff session: a signed Flask session cookie (HttpOnly, SameSite=Lax,
Secure behind https) holding the account id, when it logged in, when it was last active, a fingerprint
of its password hash (a new password ends old sessions) and a random CSRF scope. Every form carries a
token signed for that scope (security.form_token), so a page of another site cannot submit our forms.

A GET without a session redirects to the login page; a POST without one is refused (403), never
redirected, so a stale form never turns into a surprise action after logging in again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    g,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sansio.blueprints import BlueprintSetupState
from markupsafe import Markup
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailer import audience
from mailer import staff as staff_accounts
from mailer.config import Settings
from mailer.models import (
    Base,
    Campaign,
    ConsentEvent,
    Contact,
    Enrollment,
    Inquiry,
    OutboxMessage,
    StaffUser,
)
from mailer.outbound import outbox
from mailer.publishing import campaigns, figures, previews
from mailer.publishing.render import RenderError
from mailer.sequences import followups
from mailer.web import PAGE_CSS, current_runtime, security

log = logging.getLogger("mailer.web.admin")

blueprint = Blueprint("admin", __name__)

ADMIN_CSS = "admin/_admin.css"
ASSETS = "mailer.admin"

# Session keys. The cookie is signed, not encrypted: nothing secret goes in it.
STAFF_ID, STARTED, SEEN, PASSWORD_MARK, CSRF_SCOPE = "staff_id", "started", "seen", "password_mark", "csrf"
# However active, a session ends after this long: a login left open on a shared computer does not live forever.
MAX_SESSION = dt.timedelta(hours=12)
# Login attempts per client address (all accounts together) before 429: slows a password-guessing run
# across many accounts, which the per-account lockout alone does not.
LOGIN_ATTEMPTS = 20
LOGIN_WINDOW = dt.timedelta(minutes=15)
LOGIN_REFUSED = ("The email address and password do not match an account that can log in now. Please check them "
                 f"and try again. After {staff_accounts.MAX_FAILURES} wrong tries an account is locked for "
                 f"{staff_accounts.LOCK_FOR.seconds // 60} minutes.")
# Ids in URLs beyond the database's BIGINT cannot exist (and would overflow the query on some backends).
MAX_ID = 2**63 - 1
CAMPAIGNS_PER_PAGE = 30
INQUIRIES_SHOWN = 200
MESSAGES_SHOWN = 20
# The rendered email shown in a frame: its own inline styles and remote images (as a mail client shows
# them), but no script, no form, no same-origin access (sandbox), and framed only by our own pages.
PREVIEW_CSP = ("sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src https: http: data:; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'self'")
NAV = (("admin.campaigns", "Campaigns"), ("admin.compose", "Compose"), ("admin.inquiries", "Inquiries"),
       ("admin.subscribers", "Subscribers"))
STOP_REASONS = {
    "booked": "stopped: marked booked",
    "closed": "stopped: marked closed",
    "unsubscribed": "stopped: unsubscribed",
    "consent_withdrawn": "stopped: consent withdrawn",
    "suppressed": "stopped: address suppressed",
    "erased": "stopped: erased",
    "consent_expired": "stopped: consent expired",
    "consent_missing": "stopped: consent record missing",
}

Model = TypeVar("Model", bound=Base)


@dataclass(frozen=True)
class SignedIn:
    """The staff member of the current request."""

    id: int
    email: str


@dataclass(frozen=True)
class _Assets:
    """The two inline stylesheets of the staff pages and the policy that allows exactly them."""

    page_css: Markup
    admin_css: Markup
    csp: str


class _Missing(Exception):
    """A page for a campaign, inquiry or contact that does not exist (or no longer does)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


@blueprint.record_once
def _load_assets(state: BlueprintSetupState) -> None:
    settings: Settings = state.app.extensions["mailer"].settings
    page_css = (settings.templates_dir / PAGE_CSS).read_text(encoding="utf-8")
    admin_css = (settings.templates_dir / ADMIN_CSS).read_text(encoding="utf-8")
    state.app.extensions[ASSETS] = _Assets(Markup(page_css), Markup(admin_css), _policy(page_css, admin_css))


def _policy(page_css: str, admin_css: str) -> str:
    """The app's default policy with the admin stylesheet's hash added beside the subscriber pages' one."""
    base = security.content_security_policy(page_css)
    page_hash = security.style_hash(page_css)
    policy = base.replace(f"style-src {page_hash}", f"style-src {page_hash} {security.style_hash(admin_css)}")
    if policy == base:  # the default policy changed shape: fail at start-up, not with unstyled pages
        raise RuntimeError("the admin pages cannot extend the Content-Security-Policy's style-src")
    return policy


# --- rendering helpers ---------------------------------------------------------------------------


def _settings() -> Settings:
    return current_runtime().settings


def _now() -> dt.datetime:
    return current_runtime().clock()


def _when(value: dt.datetime | None) -> str:
    """A time for people: the clinic's local time with its zone, e.g. "Mon 2 Mar 2026, 09:00 CST"."""
    if value is None:
        return "–"
    local = value.astimezone(_settings().zone)
    return f"{local:%a} {local.day} {local:%b %Y, %H:%M %Z}"


def _csrf_token() -> str:
    return security.form_token(_settings().secret_key, f"admin:{session.get(CSRF_SCOPE, '')}", _now())


@blueprint.context_processor
def _admin_globals() -> dict[str, Any]:
    settings = _settings()
    return {
        "staff": g.get("staff"),
        "nav": NAV,
        "section": None,
        "admin_css": current_app.extensions[ASSETS].admin_css,
        "idle_minutes": settings.web.session_idle_minutes,
        "csrf_token": _csrf_token,
        "when": _when,
        "topic_label": lambda topic: settings.topics.get(topic, topic),
        "clinic_topics": list(settings.topics.items()),
    }


def _page(template: str, status: int = 200, **context: Any) -> Response:
    response = make_response(render_template(template, **context))
    response.status_code = status
    return response


def _problem(status: int, title: str, message: str, *, login_link: bool = False) -> Response:
    return _page("admin/problem.html", status, title=title, message=message, login_link=login_link)


@blueprint.errorhandler(_Missing)
def _missing(error: _Missing) -> Response:
    return _problem(404, "Not found", f"There is no such {error.what}. It may have been erased or never existed.")


@blueprint.after_request
def _admin_headers(response: Response) -> Response:
    # Set before the app's own hook, which only fills in headers that are still missing.
    response.headers.setdefault("Content-Security-Policy", current_app.extensions[ASSETS].csp)
    return response


def _get(session_: Session, model: type[Model], row_id: int, what: str) -> Model:
    row = session_.get(model, row_id) if 0 < row_id <= MAX_ID else None
    if row is None:
        raise _Missing(what)
    return row


def _done(endpoint: str, message: str, category: str = "notice", **values: Any) -> Response:
    """After a POST: a flash message and a redirect (303), so reloading the page never repeats the action."""
    flash(message, category)
    return redirect(url_for(endpoint, **values), code=303)


def _text_field(name: str) -> str | None:
    """A textarea's value with the browser's CRLF line ends made plain; None when the field was not sent."""
    value = request.form.get(name)
    return None if value is None else value.replace("\r\n", "\n").replace("\r", "\n")


# --- sessions, login and CSRF --------------------------------------------------------------------


def _password_mark(password_hash: str) -> str:
    """Ties a session to the password it was opened with, without putting the hash in the cookie."""
    secret = _settings().secret_key.encode()
    return hmac.new(secret, f"staff-session\x1f{password_hash}".encode(), hashlib.sha256).hexdigest()[:24]


def _ensure_csrf_scope() -> None:
    if not session.get(CSRF_SCOPE):
        session[CSRF_SCOPE] = secrets.token_urlsafe(18)


def _signed_in(now: dt.datetime) -> tuple[SignedIn | None, str | None]:
    """The staff member of this session, or None and why the session ended (None: there was none)."""
    staff_id = session.get(STAFF_ID)
    if not isinstance(staff_id, int):
        return None, None
    stamp = now.timestamp()
    idle_minutes = _settings().web.session_idle_minutes
    ended = None
    if stamp - float(session.get(SEEN, 0)) > idle_minutes * 60:
        ended = f"You were logged out after {idle_minutes} minutes without activity. Please log in again."
    elif stamp - float(session.get(STARTED, 0)) > MAX_SESSION.total_seconds():
        ended = ("You were logged out because you logged in more than "
                 f"{int(MAX_SESSION.total_seconds() // 3600)} hours ago. Please log in again.")
    else:
        with current_runtime().sessions() as db:
            user = db.get(StaffUser, staff_id)
            if user is not None and hmac.compare_digest(session.get(PASSWORD_MARK, ""),
                                                        _password_mark(user.password_hash)):
                return SignedIn(user.id, user.email), None
        ended = "Your login is no longer valid. Please log in again."
    session.clear()
    return None, ended


def _here() -> str:
    query = request.query_string.decode("latin-1")
    return request.path + (f"?{query}" if query else "")


def _safe_next(value: str | None) -> str:
    """Where to go after logging in: only a page of ours under /admin/ (never another site)."""
    default = url_for(".campaigns")
    if not value or "\\" in value or value.startswith("//"):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith("/admin/") or parts.path == url_for(".login"):
        return default
    return value


def _form_refusal(now: dt.datetime) -> str | None:
    """Why this POST's form is not accepted (another site, no or a stale token), or None."""
    settings = _settings()
    if security.is_cross_site(request, settings.web.base_url):
        return "This form was sent from another website, so nothing was changed."
    problem = security.check_form_token(settings.secret_key, f"admin:{session.get(CSRF_SCOPE, '')}",
                                        request.form.get("csrf_token"), now)
    if problem is security.FormTokenProblem.EXPIRED:
        return "This page was open for a long time, so nothing was changed. Please reload it and try again."
    if problem is not None:
        return "We could not verify this form, so nothing was changed. Please reload the page and try again."
    return None


@blueprint.before_request
def _require_staff() -> Response | None:
    """Every page but the login needs a staff session; every POST a valid form token."""
    g.staff = None
    if request.endpoint == "admin.login":
        return None
    now = _now()
    staff, ended = _signed_in(now)
    if staff is None:
        if request.method in ("GET", "HEAD"):
            if ended:
                flash(ended, "notice")
            return redirect(url_for(".login", next=_here()))
        return _problem(403, "Please log in", (ended or "You are not logged in.") + " Nothing was changed.",
                        login_link=True)
    g.staff = staff
    if request.method not in ("GET", "HEAD"):
        refusal = _form_refusal(now)
        if refusal is not None:
            log.warning("staff form refused on %s for account %s", request.endpoint, staff.id)
            return _problem(403, "This form was not accepted", refusal)
    session[SEEN] = int(now.timestamp())
    return None


@blueprint.route("/login", methods=["GET", "POST"])
def login() -> Response:
    """The login form; on success a fresh session (never the one the visitor had before)."""
    runtime = current_runtime()
    settings = runtime.settings
    now = runtime.clock()
    next_url = _safe_next(request.values.get("next"))
    if request.method == "GET":
        staff, _ended = _signed_in(now)
        if staff is not None:  # e.g. the Back button after logging in
            return redirect(next_url)
        _ensure_csrf_scope()
        return _page("admin/login.html", email="", next_url=next_url, problem=None)
    email = (request.form.get("email") or "").strip()[:320]
    password = request.form.get("password") or ""
    if _form_refusal(now) is not None or not session.get(CSRF_SCOPE):
        _ensure_csrf_scope()
        return _page("admin/login.html", 400, email=email, next_url=next_url,
                     problem="This login page was open for too long (or cookies are turned off). Please try again.")
    key = security.client_key(settings.secret_key, "staff-login", request.remote_addr)
    signed_in: tuple[int, str, str] | None = None
    with runtime.sessions.begin() as db:
        limited = security.over_limit(db, key, LOGIN_ATTEMPTS, LOGIN_WINDOW, now)
        if not limited:
            user = staff_accounts.authenticate(db, email, password, now)
            if user is not None:
                signed_in = (user.id, user.email, user.password_hash)
    if limited:
        log.warning("staff login refused: a client went over %d attempts in %s", LOGIN_ATTEMPTS, LOGIN_WINDOW)
        return _page("admin/login.html", 429, email=email, next_url=next_url,
                     problem="Too many login attempts from this computer. Please wait 15 minutes and try again.")
    if signed_in is None:
        return _page("admin/login.html", 401, email=email, next_url=next_url, problem=LOGIN_REFUSED)
    staff_id, _email, password_hash = signed_in
    # A new session: nothing from before the login (a planted session or CSRF scope) survives it.
    session.clear()
    session.update({STAFF_ID: staff_id, STARTED: int(now.timestamp()), SEEN: int(now.timestamp()),
                    PASSWORD_MARK: _password_mark(password_hash), CSRF_SCOPE: secrets.token_urlsafe(18)})
    return redirect(next_url, code=303)


@blueprint.post("/logout")
def logout() -> Response:
    """End the session (the cookie is emptied)."""
    log.info("staff account %s logged out", g.staff.id)
    session.clear()
    return _done(".login", "You are logged out.")


@blueprint.get("/")
def home() -> Response:
    return redirect(url_for(".campaigns"))


# --- campaigns -------------------------------------------------------------------------------------


def next_send_time(settings: Settings, now: dt.datetime) -> dt.datetime:
    """The next nightly send time that is still in the future (today's, or tomorrow's once it passed)."""
    day = now.astimezone(settings.zone).date()
    while (moment := campaigns.scheduled_send(settings, day)) <= now:
        day += dt.timedelta(days=1)
    return moment


def _int_arg(name: str) -> int | None:
    value = request.args.get(name, type=int)
    return value if value is not None and 0 < value <= MAX_ID else None


@blueprint.get("/campaigns", endpoint="campaigns")
def campaign_list() -> Response:
    """Newest campaigns first, with their state and figures; `?before=ID` pages back."""
    before = _int_arg("before")
    with current_runtime().sessions() as db:
        query = select(Campaign).order_by(Campaign.id.desc()).limit(CAMPAIGNS_PER_PAGE + 1)
        if before is not None:
            query = query.where(Campaign.id < before)
        rows = list(db.scalars(query))
        older = rows[CAMPAIGNS_PER_PAGE - 1].id if len(rows) > CAMPAIGNS_PER_PAGE else None
        rows = rows[:CAMPAIGNS_PER_PAGE]
        numbers = figures.campaign_figures(db, [row.id for row in rows])
        return _page("admin/campaigns.html", section="admin.campaigns", rows=rows, figures=numbers, older=older,
                     paged=before is not None)


@blueprint.get("/campaigns/<int:campaign_id>")
def campaign(campaign_id: int) -> Response:
    """One campaign: what it says, its preview and text part, what happened, and what can be done."""
    runtime = current_runtime()
    settings = runtime.settings
    now = runtime.clock()
    with runtime.sessions() as db:
        row = _get(db, Campaign, campaign_id, "campaign")
        try:
            _subject, _html, text = previews.render_parts(settings, row)
            render_problem = None
        except RenderError as exc:
            text, render_problem = "", str(exc)
        waiting = row.state in ("draft", "approved")
        return _page(
            "admin/campaign.html", section="admin.campaigns", campaign=row, text=text,
            render_problem=render_problem, figures=figures.campaign_figures(db, [row.id])[row.id],
            audience_size=outbox.audience_size(db, row.topic) if waiting else None,
            undelivered=outbox.undelivered(db, row.id, limit=50), next_send=next_send_time(settings, now),
            staff_addresses=list(db.scalars(select(StaffUser.email).order_by(StaffUser.email))),
        )


@blueprint.get("/campaigns/<int:campaign_id>/preview")
def campaign_preview(campaign_id: int) -> Response:
    """The email's HTML as a recipient sees it, for the campaign page's sandboxed frame."""
    with current_runtime().sessions() as db:
        row = _get(db, Campaign, campaign_id, "campaign")
        try:
            _subject, html, _text = previews.render_parts(_settings(), row)
        except RenderError as exc:
            return _problem(500, "The email could not be rendered", str(exc))
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = PREVIEW_CSP
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


@blueprint.post("/campaigns/<int:campaign_id>/edit")
def campaign_edit(campaign_id: int) -> Response:
    """Change a draft's subject, preheader and intro (and a one-off's body)."""
    problem = None
    with current_runtime().sessions.begin() as db:
        row = _get(db, Campaign, campaign_id, "campaign")
        try:
            campaigns.edit(row, subject=request.form.get("subject"), preheader=request.form.get("preheader"),
                           intro=_text_field("intro"),
                           body_markdown=_text_field("body_markdown") if row.kind == "oneoff" else None)
        except campaigns.CampaignError as exc:
            problem = str(exc)
    if problem is not None:
        return _done(".campaign", f"Not saved: {problem}.", "problem", campaign_id=campaign_id)
    log.info("campaign %s edited by staff account %s", campaign_id, g.staff.id)
    return _done(".campaign", "Saved. The preview below shows the change.", campaign_id=campaign_id)


@blueprint.post("/campaigns/<int:campaign_id>/test")
def campaign_test(campaign_id: int) -> Response:
    """One test copy to a staff address (the logged-in person's by default), now."""
    runtime = current_runtime()
    try:
        address = audience.normalize_email(request.form.get("address") or g.staff.email)
    except audience.AudienceError:
        return _done(".campaign", "The test was not sent: that is not a complete email address.", "problem",
                     campaign_id=campaign_id)
    with runtime.sessions() as db:
        row = _get(db, Campaign, campaign_id, "campaign")
        is_staff = staff_accounts.find(db, address) is not None
    if not is_staff:
        # A test carries no unsubscribe link that works and rests on no consent: only staff may get one.
        return _done(".campaign", f"The test was not sent: {address} is not a staff login. Tests go only to staff "
                     "addresses.", "problem", campaign_id=campaign_id)
    try:
        result = previews.send_test(runtime, row, address)
    except RenderError as exc:
        return _done(".campaign", f"The test was not sent: the email could not be rendered ({exc}).", "problem",
                     campaign_id=campaign_id)
    if result.outcome != "sent":
        log.warning("test of campaign %s not sent: %s %s", campaign_id, result.outcome, result.code or "")
        detail = f" ({result.code} {result.detail})" if result.code else (f" ({result.detail})" if result.detail else "")
        return _done(".campaign", f"The test could not be sent to {address}: the mail server said no{detail}. "
                     "Please try again later or tell your IT person.", "problem", campaign_id=campaign_id)
    log.info("test of campaign %s sent by staff account %s", campaign_id, g.staff.id)
    return _done(".campaign", f"Test sent to {address}. It should arrive within a minute or two.",
                 campaign_id=campaign_id)


@blueprint.post("/campaigns/<int:campaign_id>/approve")
def campaign_approve(campaign_id: int) -> Response:
    """Approve a draft: a newsletter for the next nightly send time (or now), a one-off now."""
    runtime = current_runtime()
    now = runtime.clock()
    problem = None
    send_after = None
    with runtime.sessions.begin() as db:
        row = _get(db, Campaign, campaign_id, "campaign")
        if row.kind == "newsletter" and request.form.get("when") != "now":
            send_after = next_send_time(runtime.settings, now)
        try:
            campaigns.approve(db, row, by=g.staff.email, now=now, send_after=send_after)
        except campaigns.CampaignError as exc:
            problem = str(exc)
        send_after = row.send_after
    if problem is not None:
        return _done(".campaign", f"Not approved: {problem}.", "problem", campaign_id=campaign_id)
    log.info("campaign %s approved by staff account %s", campaign_id, g.staff.id)
    when = f"at {_when(send_after)}" if send_after else "on the next delivery run, within a few minutes"
    return _done(".campaign", f"Approved. It goes out {when}.", campaign_id=campaign_id)


@blueprint.post("/campaigns/<int:campaign_id>/cancel")
def campaign_cancel(campaign_id: int) -> Response:
    """Stop a campaign: messages not yet handed to the mail server are skipped."""
    problem = None
    skipped = 0
    with current_runtime().sessions.begin() as db:
        row = _get(db, Campaign, campaign_id, "campaign")
        try:
            skipped = campaigns.cancel(db, row, _now())
        except campaigns.CampaignError as exc:
            problem = str(exc)
    if problem is not None:
        return _done(".campaign", f"Not cancelled: {problem}.", "problem", campaign_id=campaign_id)
    log.info("campaign %s cancelled by staff account %s (%d skipped)", campaign_id, g.staff.id, skipped)
    return _done(".campaign", f"Cancelled. {skipped} message(s) that had not gone out will not be sent.",
                 campaign_id=campaign_id)


@blueprint.route("/compose", methods=["GET", "POST"])
def compose() -> Response:
    """A one-off campaign to one topic; saving makes a draft, reviewed on its campaign page like any other."""
    runtime = current_runtime()
    settings = runtime.settings
    form = {"topic": settings.newsletter.topic, "subject": "", "preheader": "", "body_markdown": ""}
    if request.method == "GET":
        return _page("admin/compose.html", section="admin.compose", form=form, problem=None)
    form = {name: (_text_field(name) or "") for name in form}
    problem = None if form["body_markdown"].strip() else "Please write the message in the Body field."
    campaign_id = None
    if problem is None:
        try:
            with runtime.sessions.begin() as db:
                row = campaigns.create_oneoff(db, settings, topic=form["topic"], subject=form["subject"],
                                              preheader=form["preheader"], body_markdown=form["body_markdown"],
                                              now=runtime.clock())
                campaign_id = row.id
        except campaigns.CampaignError as exc:
            problem = f"Not saved: {exc}."
    if campaign_id is None:
        return _page("admin/compose.html", 400, section="admin.compose", form=form, problem=problem)
    log.info("one-off campaign %s drafted by staff account %s", campaign_id, g.staff.id)
    return _done(".campaign", "Draft saved. Check the preview, send yourself a test, then approve it.",
                 campaign_id=campaign_id)


# --- inquiries -------------------------------------------------------------------------------------


def _sequence_state(enrollment_status: str | None, stop_reason: str | None, next_step: int | None,
                    consent: bool) -> str:
    """Where an inquiry's follow-up sequence stands, in words."""
    steps = len(_settings().followups.steps)
    if enrollment_status is None:
        return "none (no consent)" if not consent else "none"
    if enrollment_status == "completed":
        return f"finished: all {steps} sent"
    if enrollment_status == "stopped":
        return STOP_REASONS.get(stop_reason or "", f"stopped: {stop_reason or 'unknown reason'}")
    if next_step is not None and next_step >= steps:
        return f"all {steps} sent"
    return f"step {(next_step or 0) + 1} of {steps} next"


@blueprint.get("/inquiries")
def inquiries() -> Response:
    """The newest inquiries with their consent and follow-up state (never the visitor's message)."""
    with current_runtime().sessions() as db:
        rows = followups.status_rows(db, limit=INQUIRIES_SHOWN)
    described = [(row, _sequence_state(row.enrollment_status, row.stop_reason, row.next_step, row.consent))
                 for row in rows]
    return _page("admin/inquiries.html", section="admin.inquiries", rows=described, limit=INQUIRIES_SHOWN)


@blueprint.get("/inquiries/<int:inquiry_id>")
def inquiry(inquiry_id: int) -> Response:
    """One inquiry, with the visitor's message (for staff only), consent and follow-up state."""
    with current_runtime().sessions() as db:
        row = _get(db, Inquiry, inquiry_id, "inquiry")
        contact = db.get(Contact, row.contact_id)
        enrollment = db.scalar(select(Enrollment).where(Enrollment.inquiry_id == row.id)
                               .order_by(Enrollment.id.desc()).limit(1))
        state = _sequence_state(enrollment.status if enrollment else None,
                                enrollment.stop_reason if enrollment else None,
                                enrollment.next_step if enrollment else None, row.consent)
        return _page("admin/inquiry.html", section="admin.inquiries", inquiry=row, contact=contact,
                     enrollment=enrollment, sequence_state=state)


@blueprint.post("/inquiries/<int:inquiry_id>/close")
def inquiry_close(inquiry_id: int) -> Response:
    """Mark the inquirer booked or closed: their open inquiries close and their follow-ups stop at once."""
    reason = request.form.get("reason")
    back = ".inquiry" if request.form.get("back") == "inquiry" else ".inquiries"
    values = {"inquiry_id": inquiry_id} if back == ".inquiry" else {}
    if reason not in ("booked", "closed"):
        return _problem(400, "Nothing was changed", "Choose “Mark booked” or “Mark closed”.")
    runtime = current_runtime()
    with runtime.sessions.begin() as db:
        row = _get(db, Inquiry, inquiry_id, "inquiry")
        contact = _get(db, Contact, row.contact_id, "contact")
        stopped = followups.close(db, runtime.settings, contact.email, reason, runtime.clock())
        name = row.name or contact.name or contact.email
    log.info("inquiry %s marked %s by staff account %s", inquiry_id, reason, g.staff.id)
    follow = "Their follow-up emails are stopped." if stopped else "No follow-up emails were running."
    return _done(back, f"{name}: marked {reason}. {follow}", **values)


# --- subscribers -----------------------------------------------------------------------------------


def _subscribers_page(status: int = 200, *, email: str = "", problem: str | None = None) -> Response:
    runtime = current_runtime()
    settings = runtime.settings
    with runtime.sessions() as db:
        months = figures.monthly_changes(db, settings.zone, runtime.clock())
    title = "Subscribers gained and lost per month"
    chart = figures.monthly_chart_svg(months, f"{title}, {months[0].label} to {months[-1].label}")
    return _page("admin/subscribers.html", status, section="admin.subscribers", email=email, problem=problem,
                 months=months, chart=chart)


@blueprint.route("/subscribers", methods=["GET", "POST"])
def subscribers() -> Response:
    """Find a person by their exact address (a POST, so addresses stay out of the browser's history)."""
    if request.method == "GET":
        return _subscribers_page()
    raw = (request.form.get("email") or "").strip()[:320]
    try:
        address = audience.normalize_email(raw)
    except audience.AudienceError:
        return _subscribers_page(400, email=raw, problem="That is not a complete email address.")
    with current_runtime().sessions() as db:
        contact = audience.find_contact(db, address)
        if contact is None:
            # Addresses are stored as typed (the part before @ may differ in case); people type them in
            # any case. One match regardless of case is the person; two would be ambiguous: none shown.
            matches = db.scalars(select(Contact).where(func.lower(Contact.email) == address.lower()).limit(2)).all()
            contact = matches[0] if len(matches) == 1 else None
        contact_id = contact.id if contact else None
    if contact_id is None:
        return _subscribers_page(404, email=raw, problem=f"No one with the address {address} is on file.")
    return redirect(url_for(".subscriber", contact_id=contact_id), code=303)


@blueprint.get("/subscribers/<int:contact_id>")
def subscriber(contact_id: int) -> Response:
    """A person's subscriptions, suppression, consent history, inquiries and recent emails."""
    settings = _settings()
    with current_runtime().sessions() as db:
        contact = _get(db, Contact, contact_id, "subscriber")
        ledger = db.scalars(select(ConsentEvent).where(ConsentEvent.contact_id == contact.id)
                            .order_by(ConsentEvent.created_at.desc(), ConsentEvent.id.desc())).all()
        asked = db.scalars(select(Inquiry).where(Inquiry.contact_id == contact.id)
                           .order_by(Inquiry.received_at.desc())).all()
        messages = db.execute(
            select(OutboxMessage, Campaign.subject)
            .outerjoin(Campaign, Campaign.id == OutboxMessage.campaign_id)
            .where(OutboxMessage.contact_id == contact.id)
            .order_by(OutboxMessage.id.desc()).limit(MESSAGES_SHOWN)
        ).all()
        return _page("admin/subscriber.html", section="admin.subscribers", contact=contact,
                     subscriptions=sorted(contact.subscriptions, key=lambda s: s.topic),
                     suppression=audience.suppression_for(db, settings.secret_key, contact),
                     ledger=ledger, inquiries=asked, messages=messages, messages_shown=MESSAGES_SHOWN)


@blueprint.post("/subscribers/<int:contact_id>/suppress")
def subscriber_suppress(contact_id: int) -> Response:
    """Stop every email to this person (reason: staff). Only their own confirmed sign-up can undo it."""
    runtime = current_runtime()
    settings = runtime.settings
    with runtime.sessions.begin() as db:
        contact = _get(db, Contact, contact_id, "subscriber")
        already = audience.suppression_for(db, settings.secret_key, contact) is not None
        if not already:
            audience.suppress(db, settings.secret_key, contact, "staff", runtime.clock(),
                              detail=f"by staff account {g.staff.id}")
    if already:
        return _done(".subscriber", "This address was already suppressed; nothing changed.", contact_id=contact_id)
    log.info("contact %s suppressed by staff account %s", contact_id, g.staff.id)
    return _done(".subscriber", "Suppressed. No more emails go to this address, follow-ups included.",
                 contact_id=contact_id)


def _erase_page(contact: Contact, status: int = 200, problem: str | None = None) -> Response:
    return _page("admin/erase.html", status, section="admin.subscribers", contact=contact, problem=problem)


@blueprint.route("/subscribers/<int:contact_id>/erase", methods=["GET", "POST"])
def subscriber_erase(contact_id: int) -> Response:
    """Erasure in two steps: a page that asks for the address to be typed, then the erasure itself."""
    runtime = current_runtime()
    settings = runtime.settings
    with runtime.sessions.begin() as db:
        contact = _get(db, Contact, contact_id, "subscriber")
        if request.method == "GET":
            return _erase_page(contact)
        typed = (request.form.get("confirm_email") or "").strip()
        try:
            matches = audience.normalize_email(typed).casefold() == contact.email.casefold()
        except audience.AudienceError:
            matches = False
        if not matches:
            return _erase_page(contact, 400, "The address you typed is not this person’s address, so nothing was "
                                             "erased. Type it exactly as shown.")
        audience.erase(db, settings.secret_key, contact, runtime.clock())
    log.info("contact %s erased by staff account %s", contact_id, g.staff.id)
    return _done(".subscribers", "Erased. Everything about this person is deleted; only a keyed hash of the "
                 "address stays on the suppression list, so they are never emailed again.")

