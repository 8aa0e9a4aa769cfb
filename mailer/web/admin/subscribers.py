"""Staff pages for subscribers: find a person, their page, suppression and erasure."""

from __future__ import annotations

import logging

from flask import Response, g, redirect, request, url_for
from sqlalchemy import func, select

from mailer import audience
from mailer import db as database
from mailer.inbound import evidence
from mailer.models import Campaign, ConsentEvent, Contact, Inquiry, OutboxMessage
from mailer.publishing import figures
from mailer.web import current_runtime
from mailer.web.admin.base import (
    MESSAGES_SHOWN,
    blueprint,
    current_settings,
    done,
    get_or_404,
    page,
)

log = logging.getLogger("mailer.web.admin")


# --- subscribers -----------------------------------------------------------------------------------


def _subscribers_page(status: int = 200, *, email: str = "", problem: str | None = None) -> Response:
    runtime = current_runtime()
    settings = runtime.settings
    with runtime.sessions() as db:
        months = figures.monthly_changes(db, settings.zone, runtime.clock())
    title = "Subscribers gained and lost per month"
    chart = figures.monthly_chart_svg(months, f"{title}, {months[0].label} to {months[-1].label}")
    return page("admin/subscribers.html", status, section="admin.subscribers", email=email, problem=problem,
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
    settings = current_settings()
    with current_runtime().sessions() as db:
        contact = get_or_404(db, Contact, contact_id, "subscriber")
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
        suppression = audience.suppression_for(db, settings.secret_key, contact)
        return page("admin/subscriber.html", section="admin.subscribers", contact=contact,
                     subscriptions=sorted(contact.subscriptions, key=lambda s: s.topic),
                     suppression=suppression, ledger=ledger, inquiries=asked, messages=messages,
                     messages_shown=MESSAGES_SHOWN, bounce_events=evidence.events_of(db, contact.id),
                     liftable=suppression is not None and suppression.reason in evidence.LIFTABLE,
                     verdict_words=evidence.WORDS)


@blueprint.post("/subscribers/<int:contact_id>/suppress")
def subscriber_suppress(contact_id: int) -> Response:
    """Stop every email to this person (reason: staff). Only their own confirmed sign-up can undo it."""
    runtime = current_runtime()
    settings = runtime.settings
    with runtime.sessions.begin() as db:
        contact = get_or_404(db, Contact, contact_id, "subscriber")
        already = audience.suppression_for(db, settings.secret_key, contact) is not None
        if not already:
            audience.suppress(db, settings.secret_key, contact, "staff", runtime.clock(),
                              detail=f"by staff account {g.staff.id}", actor=g.staff.email)
    if already:
        return done(".subscriber", "This address was already suppressed; nothing changed.", contact_id=contact_id)
    log.info("contact %s suppressed by staff account %s", contact_id, g.staff.id)
    return done(".subscriber", "Suppressed. No more emails go to this address, follow-ups included.",
                 contact_id=contact_id)


@blueprint.post("/subscribers/<int:contact_id>/lift")
def subscriber_lift(contact_id: int) -> Response:
    """Mail this address again after a hard-bounce or soft-bounce suppression (never an opt-out or complaint).

    For when the person says the address works after all; the consent ledger records who lifted it.
    """
    runtime = current_runtime()
    settings = runtime.settings
    try:
        with runtime.sessions.begin() as db:
            contact = get_or_404(db, Contact, contact_id, "subscriber")
            evidence.lift(db, settings, contact, by=f"staff account {g.staff.id}", now=runtime.clock())
    except evidence.NotLiftable as exc:
        return done(".subscriber", f"Nothing changed: {exc}.", "problem", contact_id=contact_id)
    return done(".subscriber", "Suppression lifted. This address gets email again; its earlier soft bounces no "
                 "longer count.", contact_id=contact_id)


def _erase_page(contact: Contact, status: int = 200, problem: str | None = None) -> Response:
    return page("admin/erase.html", status, section="admin.subscribers", contact=contact, problem=problem)


@blueprint.route("/subscribers/<int:contact_id>/erase", methods=["GET", "POST"])
def subscriber_erase(contact_id: int) -> Response:
    """Erasure in two steps: a page that asks for the address to be typed, then the erasure itself."""
    runtime = current_runtime()
    settings = runtime.settings
    with runtime.sessions.begin() as db:
        contact = get_or_404(db, Contact, contact_id, "subscriber")
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
        audience.erase(db, settings.secret_key, contact, runtime.clock(), actor=g.staff.email)
    database.after_erasure(runtime.engine)
    log.info("contact %s erased by staff account %s", contact_id, g.staff.id)
    return done(".subscribers", "Erased. Everything about this person is deleted; only a keyed hash of the "
                 "address stays on the suppression list, so they are never emailed again.")

