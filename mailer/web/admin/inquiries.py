"""Staff pages for inquiries: the list, one inquiry, booked or closed, resumed after a reply; follow-up figures."""

from __future__ import annotations

import logging

from flask import Response, g, request
from sqlalchemy import select

from mailer import access_log
from mailer.models import ConsentEvent, Contact, Enrollment, Inquiry, Reply
from mailer.sequences import figures as sequence_figures
from mailer.sequences import followups, pausing
from mailer.sequences import inquiries as intake
from mailer.web import current_runtime
from mailer.web.admin.base import (
    INQUIRIES_SHOWN,
    STOP_REASONS,
    blueprint,
    current_now,
    current_settings,
    done,
    get_or_404,
    page,
    problem_page,
    when,
)

log = logging.getLogger("mailer.web.admin")


# --- inquiries -------------------------------------------------------------------------------------


def _sequence_state(enrollment_status: str | None, stop_reason: str | None, next_step: int | None,
                    consent: bool, sequence: str | None = None, paused_at: object = None) -> str:
    """Where an inquiry's follow-up sequence stands, in words."""
    steps = len(current_settings().followups.steps_of(sequence or followups.SEQUENCE))
    if enrollment_status is None:
        return "none (no consent)" if not consent else "none"
    if enrollment_status == "completed":
        return f"finished: all {steps} sent"
    if enrollment_status == "stopped":
        return STOP_REASONS.get(stop_reason or "", f"stopped: {stop_reason or 'unknown reason'}")
    if enrollment_status == "paused":
        return f"paused: they replied on {when(paused_at)}" if paused_at else "paused: they replied"
    if next_step is not None and next_step >= steps:
        return f"all {steps} sent"
    return f"step {(next_step or 0) + 1} of {steps} next"


@blueprint.get("/inquiries")
def inquiries() -> Response:
    """The newest inquiries with their consent and follow-up state (never the visitor's message)."""
    with current_runtime().sessions() as db:
        rows = intake.status_rows(db, limit=INQUIRIES_SHOWN)
    described = [(row, _sequence_state(row.enrollment_status, row.stop_reason, row.next_step, row.consent,
                                       row.sequence, row.paused_at))
                 for row in rows]
    return page("admin/inquiries.html", section="admin.inquiries", rows=described, limit=INQUIRIES_SHOWN)


@blueprint.get("/inquiries/<int:inquiry_id>")
def inquiry(inquiry_id: int) -> Response:
    """One inquiry, with the visitor's message (for staff only), consent and follow-up state.

    Showing the message is written to the access log first, in the same transaction: if it cannot be
    logged, it is not shown. The page lists everyone who has seen it.
    """
    with current_runtime().sessions.begin() as db:
        row = get_or_404(db, Inquiry, inquiry_id, "inquiry")
        if row.message:
            access_log.record(db, actor=g.staff.email, action=access_log.MESSAGE_VIEWED, now=current_now(),
                              inquiry_id=row.id, contact_id=row.contact_id, staff_id=g.staff.id)
        contact = db.get(Contact, row.contact_id)
        grant = db.get(ConsentEvent, row.consent_event_id) if row.consent_event_id else None
        enrollment = db.scalar(select(Enrollment).where(Enrollment.inquiry_id == row.id)
                               .order_by(Enrollment.id.desc()).limit(1))
        state = _sequence_state(enrollment.status if enrollment else None,
                                enrollment.stop_reason if enrollment else None,
                                enrollment.next_step if enrollment else None, row.consent,
                                enrollment.sequence if enrollment else None,
                                enrollment.paused_at if enrollment else None)
        # That they replied and when, never what: the words stay in the mailbox, for staff to read there.
        replies = [] if contact is None else db.execute(
            select(Reply.received_at, Reply.after_step, Reply.matched_by)
            .where(Reply.contact_id == contact.id).order_by(Reply.received_at.desc()).limit(20)
        ).all()
        several = len(current_settings().followups.all_sequences) > 1
        return page("admin/inquiry.html", section="admin.inquiries", inquiry=row, contact=contact,
                     enrollment=enrollment, sequence_state=state, replies=replies, show_sequence=several,
                     published_wording=grant.published_wording if grant else None,
                     views=access_log.message_views(db, row.id))


@blueprint.post("/inquiries/<int:inquiry_id>/close")
def inquiry_close(inquiry_id: int) -> Response:
    """Mark the inquirer booked or closed: their open inquiries close and their follow-ups stop at once."""
    reason = request.form.get("reason")
    back = ".inquiry" if request.form.get("back") == "inquiry" else ".inquiries"
    values = {"inquiry_id": inquiry_id} if back == ".inquiry" else {}
    if reason not in ("booked", "closed"):
        return problem_page(400, "Nothing was changed", "Choose “Mark booked” or “Mark closed”.")
    runtime = current_runtime()
    with runtime.sessions.begin() as db:
        row = get_or_404(db, Inquiry, inquiry_id, "inquiry")
        contact = get_or_404(db, Contact, row.contact_id, "contact")
        stopped = intake.close(db, runtime.settings, contact.email, reason, runtime.clock())
        name = row.name or contact.name or contact.email
    log.info("inquiry %s marked %s by staff account %s", inquiry_id, reason, g.staff.id)
    follow = "Their follow-up emails are stopped." if stopped else "No follow-up emails were running."
    return done(back, f"{name}: marked {reason}. {follow}", **values)




@blueprint.post("/inquiries/<int:inquiry_id>/resume")
def inquiry_resume(inquiry_id: int) -> Response:
    """After a reply: run the person's paused follow-ups again, the next one from now (in the send window)."""
    runtime = current_runtime()
    with runtime.sessions.begin() as db:
        row = get_or_404(db, Inquiry, inquiry_id, "inquiry")
        contact = get_or_404(db, Contact, row.contact_id, "contact")
        try:
            due = pausing.resume(db, runtime.settings, contact.email, runtime.clock())
        except intake.InquiryError:
            return problem_page(409, "Nothing was changed", "These follow-up emails are not paused any more: "
                                "someone may have resumed or closed them a moment ago.")
        name = row.name or contact.name or contact.email
    log.info("inquiry %s: follow-ups resumed by staff account %s", inquiry_id, g.staff.id)
    return done(".inquiry", f"{name}: follow-up emails resumed. The next one goes {when(due)}.",
                inquiry_id=inquiry_id)


@blueprint.get("/inquiries/figures")
def inquiry_figures() -> Response:
    """Per sequence and step: sent, replied, booked, stopped; booking rate and time to booking. No tracking."""
    days = 30 if request.args.get("days") == "30" else 90
    runtime = current_runtime()
    with runtime.sessions() as db:
        sequences = sequence_figures.sequence_figures(db, runtime.settings, runtime.clock(), days)
    return page("admin/followup_figures.html", section="admin.inquiries", sequences=sequences, days=days,
                reasons=STOP_REASONS)
