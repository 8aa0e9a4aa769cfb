"""What every staff page shares: the blueprint, its sessions and login, CSRF, and page helpers.

Every page but the login needs a staff session: a signed Flask session cookie (HttpOnly, SameSite=Lax,
Secure behind https) holding the account id, when it logged in, when it was last active, a fingerprint
of its password hash, the account's session version and a random CSRF scope. The version is checked
against the database on every request: logging out, a new password and disabling the account raise it,
which ends every session of that account at once, also one whose cookie was copied. Every form carries
a token signed for the CSRF scope (security.form_token), so a page of another site cannot submit our forms.

A GET without a session redirects to the login page; a POST without one is refused (403), never
redirected, so a stale form never turns into a surprise action after logging in again.

Which roles may use each page is the table PAGE_ROLES below, in one place; admins may use every page,
and a page missing from the table is for admins only.
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
    abort,
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
from sqlalchemy.orm import Session

from mailer import staff as staff_accounts
from mailer.config import Settings
from mailer.models import (
    Base,
    StaffUser,
)
from mailer.web import PAGE_CSS, current_runtime, security

log = logging.getLogger("mailer.web.admin")

blueprint = Blueprint("admin", __name__)

ADMIN_CSS = "admin/_admin.css"
ASSETS = "mailer.admin"

# Session keys. The cookie is signed, not encrypted: nothing secret goes in it.
STAFF_ID, STARTED, SEEN, PASSWORD_MARK, CSRF_SCOPE = "staff_id", "started", "seen", "password_mark", "csrf"
VERSION = "version"

# Who may use each staff page besides admins, who may use them all. Deny by default: a page (endpoint)
# that is not listed here is for admins only, so a new page is never open to a role by accident.
EVERY_ROLE = frozenset({"marketing", "frontdesk"})
MARKETING = frozenset({"marketing"})
FRONTDESK = frozenset({"frontdesk"})
PAGE_ROLES: dict[str, frozenset[str]] = {
    "admin.login": EVERY_ROLE,
    "admin.logout": EVERY_ROLE,
    "admin.home": EVERY_ROLE,
    # Campaigns, compose and their figures: marketing.
    "admin.campaigns": MARKETING,
    "admin.campaign": MARKETING,
    "admin.campaign_preview": MARKETING,
    "admin.campaign_edit": MARKETING,
    "admin.campaign_test": MARKETING,
    "admin.campaign_approve": MARKETING,
    "admin.campaign_cancel": MARKETING,
    "admin.compose": MARKETING,
    "admin.campaign_schedule": MARKETING,
    "admin.campaign_unschedule": MARKETING,
    "admin.campaign_archive": MARKETING,
    # Follow-up wording: marketing writes it (the front desk sees the sequences on the inquiry pages).
    "admin.followups": MARKETING,
    "admin.followup_step": MARKETING,
    "admin.followup_step_save": MARKETING,
    "admin.followup_step_preview": MARKETING,
    # Lists come in through marketing.
    "admin.subscriber_import": MARKETING,
    "admin.subscriber_import_check": MARKETING,
    "admin.subscriber_import_result": MARKETING,
    "admin.subscriber_import_commit": MARKETING,
    # Inquiries and the visitors' messages: the front desk.
    "admin.inquiries": FRONTDESK,
    "admin.inquiry": FRONTDESK,
    "admin.inquiry_close": FRONTDESK,
    "admin.inquiry_resume": FRONTDESK,
    # How the follow-up sequences do (counts only, never a message): both.
    "admin.inquiry_figures": EVERY_ROLE,
    # People: both find them and may stop all email to them; only admins erase.
    "admin.subscribers": EVERY_ROLE,
    "admin.subscriber": EVERY_ROLE,
    "admin.subscriber_suppress": EVERY_ROLE,
    # Lifting a bounce suppression (admin.subscriber_lift) and erasure (admin.subscriber_erase): admins only.
}
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
NAV = (("admin.campaigns", "Campaigns"), ("admin.compose", "Compose"), ("admin.followups", "Follow-ups"),
       ("admin.inquiries", "Inquiries"), ("admin.subscribers", "Subscribers"))
STOP_REASONS = {
    "booked": "stopped: marked booked",
    "closed": "stopped: marked closed",
    "unsubscribed": "stopped: unsubscribed",
    "consent_withdrawn": "stopped: consent withdrawn",
    "suppressed": "stopped: address suppressed",
    "erased": "stopped: erased",
    "consent_expired": "stopped: consent expired",
    "consent_missing": "stopped: consent record missing",
    "sequence_removed": "stopped: its sequence was removed from the settings",
    "not_me": "stopped: they said they never contacted us",
}

Model = TypeVar("Model", bound=Base)


@dataclass(frozen=True)
class SignedIn:
    """The staff member of the current request."""

    id: int
    email: str
    role: str = "admin"


def may_use(role: str | None, endpoint: str | None) -> bool:
    """Whether a staff member with this role may use the page of this endpoint (PAGE_ROLES)."""
    if role is None or endpoint is None:
        return False
    return role == "admin" or role in PAGE_ROLES.get(endpoint, frozenset())


@dataclass(frozen=True)
class _Assets:
    """The two inline stylesheets of the staff pages and the policy that allows exactly them."""

    page_css: Markup
    admin_css: Markup
    csp: str


class Missing(Exception):
    """A page for a campaign, inquiry or contact that does not exist (or no longer does)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


@blueprint.record_once
def _load_assets(state: BlueprintSetupState) -> None:
    settings: Settings = state.app.extensions["mailer"].settings
    page_css = settings.template_file(PAGE_CSS).read_text(encoding="utf-8")
    admin_css = settings.template_file(ADMIN_CSS).read_text(encoding="utf-8")
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


def current_settings() -> Settings:
    return current_runtime().settings


def current_now() -> dt.datetime:
    return current_runtime().clock()


def when(value: dt.datetime | None) -> str:
    """A time for people: the clinic's local time with its zone, e.g. "Mon 2 Mar 2026, 09:00 CST"."""
    if value is None:
        return "–"
    local = value.astimezone(current_settings().zone)
    return f"{local:%a} {local.day} {local:%b %Y, %H:%M %Z}"


def _csrf_token() -> str:
    return security.form_token(current_settings().secret_key, f"admin:{session.get(CSRF_SCOPE, '')}", current_now())


@blueprint.context_processor
def _admin_globals() -> dict[str, Any]:
    settings = current_settings()
    staff = g.get("staff")
    return {
        "staff": staff,
        "nav": [(endpoint, label) for endpoint, label in NAV if staff is not None and may_use(staff.role, endpoint)],
        "may_use": lambda endpoint: staff is not None and may_use(staff.role, endpoint),
        "section": None,
        "admin_css": current_app.extensions[ASSETS].admin_css,
        "idle_minutes": settings.web.session_idle_minutes,
        "csrf_token": _csrf_token,
        "when": when,
        "topic_label": lambda topic: settings.topics.get(topic, topic),
        "clinic_topics": list(settings.topics.items()),
    }


def page(template: str, status: int = 200, **context: Any) -> Response:
    response = make_response(render_template(template, **context))
    response.status_code = status
    return response


def problem_page(status: int, title: str, message: str, *, login_link: bool = False) -> Response:
    return page("admin/problem.html", status, title=title, message=message, login_link=login_link)


@blueprint.errorhandler(Missing)
def _missing(error: Missing) -> Response:
    return problem_page(404, "Not found", f"There is no such {error.what}. It may have been erased or never existed.")


@blueprint.after_request
def _admin_headers(response: Response) -> Response:
    # Set before the app's own hook, which only fills in headers that are still missing.
    response.headers.setdefault("Content-Security-Policy", current_app.extensions[ASSETS].csp)
    return response


def get_or_404(session_: Session, model: type[Model], row_id: int, what: str) -> Model:
    row = session_.get(model, row_id) if 0 < row_id <= MAX_ID else None
    if row is None:
        raise Missing(what)
    return row


def done(endpoint: str, message: str, category: str = "notice", **values: Any) -> Response:
    """After a POST: a flash message and a redirect (303), so reloading the page never repeats the action."""
    flash(message, category)
    return redirect(url_for(endpoint, **values), code=303)


def text_field(name: str) -> str | None:
    """A textarea's value with the browser's CRLF line ends made plain; None when the field was not sent."""
    value = request.form.get(name)
    return None if value is None else value.replace("\r\n", "\n").replace("\r", "\n")


# --- sessions, login and CSRF --------------------------------------------------------------------


def _password_mark(password_hash: str) -> str:
    """Ties a session to the password it was opened with, without putting the hash in the cookie."""
    secret = current_settings().secret_key.encode()
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
    idle_minutes = current_settings().web.session_idle_minutes
    ended = None
    if stamp - float(session.get(SEEN, 0)) > idle_minutes * 60:
        ended = f"You were logged out after {idle_minutes} minutes without activity. Please log in again."
    elif stamp - float(session.get(STARTED, 0)) > MAX_SESSION.total_seconds():
        ended = ("You were logged out because you logged in more than "
                 f"{int(MAX_SESSION.total_seconds() // 3600)} hours ago. Please log in again.")
    else:
        with current_runtime().sessions() as db:
            user = db.get(StaffUser, staff_id)
            if (user is not None and user.disabled_at is None and session.get(VERSION) == user.session_version
                    and hmac.compare_digest(session.get(PASSWORD_MARK, ""), _password_mark(user.password_hash))):
                return SignedIn(user.id, user.email, user.role), None
        ended = "Your login is no longer valid. Please log in again."
    session.clear()
    return None, ended


def _here() -> str:
    query = request.query_string.decode("latin-1")
    return request.path + (f"?{query}" if query else "")


def _safe_next(value: str | None) -> str | None:
    """Where to go after logging in: only a page of ours under /admin/ (never another site); None for the
    staff member's first page.

    Control characters (a CR/LF smuggled in as %0D%0A) are refused with a 400: they could only be an
    attempt to write a header of our answer, never a page of ours.
    """
    if value and any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        abort(400)
    if not value or "\\" in value or value.startswith("//"):
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith("/admin/") or parts.path == url_for(".login"):
        return None
    return value


def landing(role: str) -> str:
    """The first staff page of a role (campaigns for admins and marketing, inquiries for the front desk)."""
    for endpoint, _label in NAV:
        if may_use(role, endpoint):
            return url_for(endpoint)
    return url_for(".login")


def _form_refusal(now: dt.datetime) -> str | None:
    """Why this POST's form is not accepted (another site, no or a stale token), or None."""
    settings = current_settings()
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
    now = current_now()
    staff, ended = _signed_in(now)
    if staff is None:
        if request.method in ("GET", "HEAD"):
            if ended:
                flash(ended, "notice")
            return redirect(url_for(".login", next=_here()))
        return problem_page(403, "Please log in", (ended or "You are not logged in.") + " Nothing was changed.",
                        login_link=True)
    g.staff = staff
    if not may_use(staff.role, request.endpoint):
        log.warning("staff account %s (%s) refused %s", staff.id, staff.role, request.endpoint)
        return problem_page(403, "Not part of your role",
                            f"This page is not part of the {staff.role} role, so nothing was shown or changed. "
                            "If you need it, ask an administrator.")
    if request.method not in ("GET", "HEAD"):
        refusal = _form_refusal(now)
        if refusal is not None:
            log.warning("staff form refused on %s for account %s", request.endpoint, staff.id)
            return problem_page(403, "This form was not accepted", refusal)
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
            return redirect(next_url or landing(staff.role))
        _ensure_csrf_scope()
        return page("admin/login.html", email="", next_url=next_url or "", problem=None)
    email = (request.form.get("email") or "").strip()[:320]
    password = request.form.get("password") or ""
    if _form_refusal(now) is not None or not session.get(CSRF_SCOPE):
        _ensure_csrf_scope()
        return page("admin/login.html", 400, email=email, next_url=next_url or "",
                     problem="This login page was open for too long (or cookies are turned off). Please try again.")
    key = security.client_key(settings.secret_key, "staff-login", request.remote_addr)
    signed_in: tuple[int, str, str, int, str] | None = None
    with runtime.sessions.begin() as db:
        limited = security.over_limit(db, key, LOGIN_ATTEMPTS, LOGIN_WINDOW, now)
        if not limited:
            user = staff_accounts.authenticate(db, email, password, now)
            if user is not None:
                signed_in = (user.id, user.email, user.password_hash, user.session_version, user.role)
    if limited:
        log.warning("staff login refused: a client went over %d attempts in %s", LOGIN_ATTEMPTS, LOGIN_WINDOW)
        return page("admin/login.html", 429, email=email, next_url=next_url or "",
                     problem="Too many login attempts from this computer. Please wait 15 minutes and try again.")
    if signed_in is None:
        return page("admin/login.html", 401, email=email, next_url=next_url or "", problem=LOGIN_REFUSED)
    staff_id, _email, password_hash, version, role = signed_in
    # A new session: nothing from before the login (a planted session or CSRF scope) survives it.
    session.clear()
    session.update({STAFF_ID: staff_id, STARTED: int(now.timestamp()), SEEN: int(now.timestamp()),
                    PASSWORD_MARK: _password_mark(password_hash), VERSION: version,
                    CSRF_SCOPE: secrets.token_urlsafe(18)})
    return redirect(next_url or landing(role), code=303)


@blueprint.post("/logout")
def logout() -> Response:
    """End every session of this account on the server (a copied cookie stops working too), then the cookie."""
    with current_runtime().sessions.begin() as db:
        user = db.get(StaffUser, g.staff.id)
        if user is not None:
            staff_accounts.end_sessions(user)
    log.info("staff account %s logged out", g.staff.id)
    session.clear()
    return done(".login", "You are logged out.")


@blueprint.get("/")
def home() -> Response:
    """The first page of the staff member's role."""
    return redirect(landing(g.staff.role))



def int_arg(name: str) -> int | None:
    value = request.args.get(name, type=int)
    return value if value is not None and 0 < value <= MAX_ID else None
