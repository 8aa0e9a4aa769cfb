"""Subscriber pages: unsubscribe, one-click, preferences, sign-up and confirm.

Links in emails carry signed tokens (mailer.links): a contact id and an HMAC over the contact's random
link key. A token that is malformed, tampered with, or names no contact gets the same 404 page, and
nothing is looked up beyond the id.

GET never changes anything: mail providers' link scanners open every link in a message, so an
unsubscribe or a confirmation happens only on POST (a button on the page, or RFC 8058 one-click).
"""

from __future__ import annotations

import datetime as dt
import logging

from flask import (
    Blueprint,
    Response,
    abort,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer import audience
from mailer.audience import AudienceError, RequestInfo
from mailer.config import Settings
from mailer.links import ParsedToken, make_token, parse_token, verify_token
from mailer.models import ConsentEvent, Contact, OutboxMessage
from mailer.outbound import outbox
from mailer.web import current_runtime, error_response, security

log = logging.getLogger("mailer.web")

blueprint = Blueprint("public", __name__)

# Ids in tokens are at most 19 digits; larger ones cannot exist and would overflow the database's BIGINT.
MAX_CONTACT_ID = 2**63 - 1
CONFIRM_VALID_FOR = dt.timedelta(days=7)
CONFIRM_EMAIL_INTERVAL = dt.timedelta(hours=24)
RATE_WINDOW = dt.timedelta(hours=1)
DEFAULT_SIGNUP_WORDING = (
    "Yes, please email me the topics I ticked. I can unsubscribe at any time with the link in every email."
)
UNSUBSCRIBE_BODY = ("List-Unsubscribe", "One-Click")


# --- helpers ------------------------------------------------------------------------------------


def contact_for(session: Session, settings: Settings, token: str, purpose: str) -> tuple[Contact, ParsedToken]:
    """The contact a link token names, or a 404 that reveals nothing."""
    parsed = parse_token(token)
    if parsed is None or parsed.contact_id > MAX_CONTACT_ID:
        abort(404)
    contact = session.get(Contact, parsed.contact_id)
    # An unknown id costs the same HMAC as a known one, so the answer's timing tells nothing either.
    valid = verify_token(settings.secret_key, purpose, parsed, contact.link_key if contact else "\x00none")
    if contact is None or not valid:
        abort(404)
    return contact, parsed


def _masked(email: str) -> str:
    """Enough of the address for the person to recognise it, too little to harvest from a forwarded link."""
    local, _, domain = email.rpartition("@")
    return f"{local[:1]}•••@{domain}"


def _topic_statuses(contact: Contact) -> dict[str, str]:
    return {subscription.topic: subscription.status for subscription in contact.subscriptions}


# --- one-click unsubscribe -------------------------------------------------------------------------


@blueprint.get("/unsubscribe/<token>")
def unsubscribe_page(token: str) -> str:
    """A page with a button; GET itself never unsubscribes (link scanners follow GETs)."""
    runtime = current_runtime()
    settings = runtime.settings
    with runtime.sessions.begin() as session:
        contact, _ = contact_for(session, settings, token, "unsubscribe")
        suppression = audience.suppression_for(session, settings.secret_key, contact)
        active = [s for s in contact.subscriptions if s.status in ("active", "pending")]
        already = suppression is not None and not active and not contact.followups_consent
        preferences_token = make_token(settings.secret_key, "preferences", contact.id, contact.link_key)
    return render_template("pages/unsubscribe.html", state="already" if already else "ask", token=token,
                           preferences_token=preferences_token)


@blueprint.post("/unsubscribe/<token>")
def unsubscribe(token: str) -> tuple[str, int]:
    """RFC 8058 one-click (and the page's button): no cookie, no login, no CSRF token; 200, never a redirect."""
    runtime = current_runtime()
    settings = runtime.settings
    now = runtime.clock()
    with runtime.sessions.begin() as session:
        contact, _ = contact_for(session, settings, token, "unsubscribe")
        # request.form reads both application/x-www-form-urlencoded and multipart/form-data bodies.
        if request.form.get(UNSUBSCRIBE_BODY[0]) != UNSUBSCRIBE_BODY[1]:
            return render_template("pages/unsubscribe.html", state="ask", token=token,
                                   preferences_token=None), 400
        source = "unsubscribe-page" if request.form.get("via") == "page" else "one-click"
        changed = audience.unsubscribe_all(session, settings.secret_key, contact, source=source, now=now,
                                           request=security.request_info())
        preferences_token = make_token(settings.secret_key, "preferences", contact.id, contact.link_key)
        contact_id = contact.id
    if changed:
        log.info("contact %s unsubscribed from everything (%s)", contact_id, source)
    return render_template("pages/unsubscribe.html", state="done", token=token,
                           preferences_token=preferences_token), 200


# --- the preference page -------------------------------------------------------------------------


def _blocking_reason(session: Session, settings: Settings, contact: Contact) -> str | None:
    """The suppression reason that the person cannot lift from their own page, if any."""
    suppression = audience.suppression_for(session, settings.secret_key, contact)
    if suppression is not None and suppression.reason not in audience.SELF_LIFTABLE:
        return suppression.reason
    return None


def _had_followups(session: Session, contact: Contact) -> bool:
    if contact.followups_consent:
        return True
    found = session.scalar(select(ConsentEvent.id).where(ConsentEvent.contact_id == contact.id,
                                                          ConsentEvent.purpose == audience.FOLLOWUPS).limit(1))
    return found is not None


def _render_preferences(session: Session, settings: Settings, contact: Contact, token: str, now: dt.datetime, *,
                        saved: bool = False, problem: str | None = None) -> str:
    statuses = _topic_statuses(contact)
    suppression = audience.suppression_for(session, settings.secret_key, contact)
    topics = [
        {"name": name, "label": label, "checked": statuses.get(name) in ("active", "pending"),
         "pending": statuses.get(name) == "pending"}
        for name, label in settings.topics.items()
    ]
    return render_template(
        "pages/preferences.html",
        token=token,
        name=contact.name,
        masked_email=_masked(contact.email),
        topics=topics,
        blocked=_blocking_reason(session, settings, contact),
        stopped_all=(suppression is not None and suppression.reason == "unsubscribed"
                     and not any(topic["checked"] for topic in topics)),
        show_followups=_had_followups(session, contact),
        followups=contact.followups_consent,
        csrf_token=security.form_token(settings.secret_key, f"preferences:{token}", now),
        saved=saved,
        problem=problem,
    )


@blueprint.get("/preferences/<token>")
def preferences_page(token: str) -> str:
    """Topics, follow-up consent and "stop all emails", behind the link in every email."""
    runtime = current_runtime()
    settings = runtime.settings
    with runtime.sessions.begin() as session:
        contact, _ = contact_for(session, settings, token, "preferences")
        return _render_preferences(session, settings, contact, token, runtime.clock(),
                                   saved=request.args.get("saved") == "1")


@blueprint.post("/preferences/<token>")
def preferences_save(token: str) -> Response | tuple[str, int]:
    """Save the form: a signed form token and a same-origin request are required; every change is on the ledger."""
    runtime = current_runtime()
    settings = runtime.settings
    now = runtime.clock()
    if security.is_cross_site(request, settings.web.base_url):
        abort(403)
    with runtime.sessions.begin() as session:
        contact, _ = contact_for(session, settings, token, "preferences")
        problem = security.check_form_token(settings.secret_key, f"preferences:{token}",
                                            request.form.get("csrf_token"), now)
        if problem is not None:
            # The page again, with a fresh token and nothing saved: the person only has to submit again.
            wording = ("This page was open for a long time, so your changes were not saved."
                       if problem is security.FormTokenProblem.EXPIRED
                       else "We could not verify this form, so your changes were not saved.")
            return _render_preferences(session, settings, contact, token, now,
                                       problem=f"{wording} Please make your choices again."), 400
        info = security.request_info()
        source = "preference-page"
        if request.form.get("action") == "stop-all":
            audience.unsubscribe_all(session, settings.secret_key, contact, source=source, now=now, request=info)
            log.info("contact %s stopped all emails on the preference page", contact.id)
        else:
            _save_choices(session, settings, contact, info, now)
    return redirect(url_for(".preferences_page", token=token, saved=1), code=303)


def _save_choices(session: Session, settings: Settings, contact: Contact, info: RequestInfo, now: dt.datetime) -> None:
    source = "preference-page"
    # Disabled checkboxes are not submitted, so the topics of a blocked contact are left as they are.
    if _blocking_reason(session, settings, contact) is None:
        ticked = {topic for topic in request.form.getlist("topics") if topic in settings.topics}
        # Topics no longer in the config are not on the page; an absent checkbox must not withdraw them.
        unlisted = {s.topic for s in contact.subscriptions
                    if s.topic not in settings.topics and s.status in ("active", "pending")}
        added, removed = audience.set_topics(session, contact, ticked | unlisted, source=source, request=info,
                                             now=now)
        if added:
            # Re-ticking a topic on one's own page is the person's own consent (set_topics records it), so
            # it lifts their own earlier opt-out; otherwise the ticked topic would silently never arrive.
            audience.lift_suppression(session, settings.secret_key, contact)
        if added or removed:
            log.info("contact %s changed topics on the preference page: +%d -%d", contact.id, len(added),
                     len(removed))
    # Only a box that was on the page and is now unticked withdraws: a consent given after the page was
    # shown (an inquiry a minute later) is not withdrawn by an old form.
    if request.form.get("followups_shown") == "1" and request.form.get("followups") != "1" \
            and contact.followups_consent:
        audience.withdraw_followups(session, contact, source=source, now=now, request=info)
        log.info("contact %s withdrew follow-up consent on the preference page", contact.id)


# --- sign-up and double opt-in -----------------------------------------------------------------------


def _is(reason: str) -> str:
    """A reason from mailer.names as the end of a sentence about "that name"."""
    return reason if reason.startswith(("looks", "has", "contains")) else f"is {reason}"


@blueprint.get("/subscribe")
def subscribe_page() -> str:
    """A plain sign-up form (the clinic's website may post its own form to POST /subscribe instead)."""
    settings = current_runtime().settings
    return render_template("pages/subscribe.html", topics=settings.topics,
                           default_topic=settings.newsletter.topic, wording=DEFAULT_SIGNUP_WORDING)


@blueprint.post("/subscribe")
def subscribe() -> tuple[str, int] | Response:
    """Double opt-in sign-up. The answer is the same page whatever the address's state, so it reveals nothing."""
    runtime = current_runtime()
    settings = runtime.settings
    now = runtime.clock()
    form = request.form
    try:
        email = audience.normalize_email(form.get("email", ""))
    except AudienceError:
        return error_response(400, "Please check the email address",
                              "That does not look like a complete email address. Please go back and try again.")
    try:
        name = audience.clean_name(form.get("name", ""))
    except AudienceError as exc:
        return error_response(400, "Please check the name",
                              f"That name {_is(str(exc).removeprefix('name: '))}. Please use just your name, "
                              "or leave it empty.")
    topics = [topic for topic in dict.fromkeys(form.getlist("topics")) if topic] or [settings.newsletter.topic]
    if any(topic not in settings.topics for topic in topics):
        return error_response(400, "Please choose from the topics offered",
                              "One of the topics in the form is not one we offer. Please go back and try again.")
    # The ledger records the wording the clinic's own sign-up page shows, never what the request claims
    # was shown: a "consent_text" field is anyone's to write.
    wording = DEFAULT_SIGNUP_WORDING
    key = security.client_key(settings.secret_key, "subscribe", request.remote_addr)
    with runtime.sessions.begin() as session:
        limited = security.over_limit(session, key, settings.web.subscribe_per_client_per_hour, RATE_WINDOW, now)
        if not limited:
            _sign_up(session, settings, email, name, topics, wording, now)
    if limited:
        log.warning("sign-up refused: a client went over %d sign-ups an hour", settings.web.subscribe_per_client_per_hour)
        return error_response(429)
    return render_template("pages/subscribe_done.html"), 200


def _sign_up(session: Session, settings: Settings, email: str, name: str, topics: list[str], wording: str,
             now: dt.datetime) -> None:
    """Pending subscriptions and at most one confirmation email per address per 24 hours."""
    contact, _ = audience.get_or_create_contact(session, email, name, now)
    suppression = audience.suppression_for(session, settings.secret_key, contact)
    if suppression is not None and suppression.reason not in audience.SELF_LIFTABLE:
        # A confirmation could not lift a bounce or complaint, and mailing such an address hurts the
        # clinic's reputation: nothing is recorded or sent (and the page says the same as always).
        return
    consent_event_id = None
    for topic in topics:
        subscription = audience.request_subscription(session, contact, topic, source="signup-form",
                                                     wording=wording, request=security.request_info(), now=now)
        if subscription.status == "pending":
            consent_event_id = subscription.consent_event_id
    if consent_event_id is None:
        return  # already subscribed to everything asked for: nothing to confirm, nothing to send
    recent = session.scalar(
        select(OutboxMessage.id).where(OutboxMessage.contact_id == contact.id, OutboxMessage.kind == "confirm",
                                       OutboxMessage.created_at > now - CONFIRM_EMAIL_INTERVAL).limit(1)
    )
    if recent is not None:
        return  # one confirmation a day at most: a sign-up form must not be a way to flood a stranger
    # The explicit check above is the 24-hour rule; the day-bucket key stops two concurrent requests.
    bucket = int(now.timestamp()) // int(CONFIRM_EMAIL_INTERVAL.total_seconds())
    outbox.enqueue_one(session, dedupe_key=f"confirm:{contact.id}:{bucket}", kind="confirm", contact_id=contact.id,
                       consent_event_id=consent_event_id, now=now)


def _welcome(session: Session, contact: Contact, confirmed: list[str], now: dt.datetime) -> None:
    """One welcome email per person, ever (a second sign-up later is no news to them)."""
    subscription = next(s for s in contact.subscriptions if s.topic == confirmed[0])
    outbox.enqueue_one(session, dedupe_key=f"welcome:{contact.id}", kind="welcome", contact_id=contact.id,
                       consent_event_id=subscription.consent_event_id, now=now)


def _confirm_contact(session: Session, settings: Settings, token: str, now: dt.datetime) -> Contact | None:
    """The contact of a confirmation link; None when the link has expired."""
    contact, parsed = contact_for(session, settings, token, "confirm")
    if parsed.issued is None:
        abort(404)
    if now - parsed.issued > CONFIRM_VALID_FOR:
        return None
    return contact


def _expired() -> tuple[str, int]:
    return render_template("pages/confirm.html", state="expired", token=None, topics=[]), 410


@blueprint.get("/confirm/<token>")
def confirm_page(token: str) -> tuple[str, int]:
    """A page with a Confirm button; GET never confirms (link scanners follow GETs)."""
    runtime = current_runtime()
    settings = runtime.settings
    with runtime.sessions.begin() as session:
        contact = _confirm_contact(session, settings, token, runtime.clock())
        if contact is None:
            return _expired()
        statuses = _topic_statuses(contact)
    pending = [settings.topics.get(topic, topic) for topic, status in statuses.items() if status == "pending"]
    if pending:
        state = "ask"
    else:
        state = "already" if "active" in statuses.values() else "nothing"
    return render_template("pages/confirm.html", state=state, token=token, topics=pending), 200


@blueprint.post("/confirm/<token>")
def confirm(token: str) -> tuple[str, int]:
    """Confirm the pending topics; a second time is harmless and says so."""
    runtime = current_runtime()
    settings = runtime.settings
    now = runtime.clock()
    if security.is_cross_site(request, settings.web.base_url):
        abort(403)
    with runtime.sessions.begin() as session:
        contact = _confirm_contact(session, settings, token, now)
        if contact is None:
            return _expired()
        confirmed = audience.confirm_pending(session, settings.secret_key, contact, request=security.request_info(), now=now)
        if confirmed and settings.newsletter.welcome:
            _welcome(session, contact, confirmed, now)
        statuses = _topic_statuses(contact)
        contact_id = contact.id
    if confirmed:
        log.info("contact %s confirmed %d topic(s)", contact_id, len(confirmed))
        return render_template("pages/confirm.html", state="confirmed", token=token,
                               topics=[settings.topics.get(topic, topic) for topic in confirmed]), 200
    state = "already" if "active" in statuses.values() else "nothing"
    return render_template("pages/confirm.html", state=state, token=token, topics=[]), 200
