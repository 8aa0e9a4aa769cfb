"""Staff pages for follow-up wording: every step of every sequence, and one step's editor with its history."""

from __future__ import annotations

import base64
import hashlib
import logging
from dataclasses import dataclass

from flask import Response, current_app, g, request
from flask.sansio.blueprints import BlueprintSetupState
from markupsafe import Markup
from sqlalchemy.orm import Session

from mailer.config import FollowupStep, Settings, duration
from mailer.publishing.render import RenderError, sample_values
from mailer.sequences import steps, wording
from mailer.sequences.wording import Wording, WordingError
from mailer.web import current_runtime
from mailer.web.admin.base import (
    ASSETS,
    PREVIEW_CSP,
    Missing,
    blueprint,
    done,
    page,
    text_field,
)

log = logging.getLogger("mailer.web.admin")

# The editor's one script (a live preview while typing), allowed by its hash on that page only.
WORDING_JS = "admin/_wording.js"
SCRIPT = "mailer.admin.wording"


@dataclass(frozen=True)
class _Script:
    source: Markup
    csp: str


@blueprint.record_once
def _load_script(state: BlueprintSetupState) -> None:
    settings: Settings = state.app.extensions["mailer"].settings
    source = settings.template_file(WORDING_JS).read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()
    state.app.extensions[SCRIPT] = _Script(Markup(source), f"script-src 'sha256-{digest}'")


def _step_or_404(settings: Settings, sequence: str, number: int) -> tuple[int, FollowupStep]:
    """The 0-based index and config of step `number` (1-based, as staff count) of a configured sequence."""
    configured = settings.followups.steps_of(sequence)
    if not 1 <= number <= len(configured):
        raise Missing("follow-up step")
    return number - 1, configured[number - 1]


def delay_words(after: str) -> str:
    """A step's delay for people: "15 minutes", "3 days", "1 day 2 hours"."""
    delay = duration(after)
    parts = []
    days, seconds = delay.days, delay.seconds
    for amount, unit in ((days, "day"), (seconds // 3600, "hour"), (seconds % 3600 // 60, "minute")):
        if amount:
            parts.append(f"{amount} {unit}{'' if amount == 1 else 's'}")
    return " ".join(parts) or "at once"


@dataclass(frozen=True)
class _Row:
    """One step on the list page."""

    number: int
    after: str
    template: str
    subject: str
    version: int
    saved_by: str
    saved_at: object


@blueprint.get("/followups", endpoint="followups")
def followup_list() -> Response:
    """Every sequence in config.toml with its steps: when each goes, its subject now, and its version."""
    runtime = current_runtime()
    settings = runtime.settings
    sequences = []
    with runtime.sessions() as db:
        for sequence in settings.followups.all_sequences:
            rows = []
            for index, step in enumerate(sequence.steps):
                number = wording.current_number(db, settings, sequence.name, index)
                found = wording.saved(db, sequence.name, index, number) if number else None
                rows.append(_Row(index + 1, delay_words(step.after), step.template,
                                 found.subject if found else step.subject, number,
                                 found.created_by if found else "", found.created_at if found else None))
            sequences.append((sequence, rows))
    return page("admin/followups.html", section="admin.followups", sequences=sequences)


def _history(session: Session, current: Wording, first: Wording) -> list[tuple[Wording, list[str]]]:
    """Each version (newest first, version 0 last) with what it changed from the one before it."""
    saved = wording.history(session, current.sequence, current.step)
    versions = [*saved, first]
    return [(version, version.changes_from(versions[n + 1]) if n + 1 < len(versions) else [])
            for n, version in enumerate(versions)]


def _editor(sequence: str, number: int, *, form: dict[str, str] | None = None, problem: str | None = None,
            status: int = 200) -> Response:
    runtime = current_runtime()
    settings = runtime.settings
    index, step = _step_or_404(settings, sequence, number)
    renderer = runtime.renderer
    with runtime.sessions() as db:
        current = steps.current(db, renderer, settings, sequence, index)
        first = steps.first_version(renderer, settings, sequence, index)
        history = _history(db, current, first)
    values = form or {"subject": current.subject, "preheader": current.preheader,
                      "body_markdown": current.body_markdown}
    script: _Script = current_app.extensions[SCRIPT]
    response = page("admin/followup_step.html", status, section="admin.followups", sequence=sequence, number=number,
                    steps_in_sequence=len(settings.followups.steps_of(sequence)), step=step,
                    after=delay_words(step.after), current=current, form=values, problem=problem, history=history,
                    body_warning=wording.body_words(settings, current.body_markdown), wording_js=script.source,
                    template_has_body=bool(first.body_markdown))
    # This page alone may run a script: the one above, by its hash.
    response.headers["Content-Security-Policy"] = f"{current_app.extensions[ASSETS].csp}; {script.csp}"
    return response


@blueprint.get("/followups/<sequence>/<int:number>")
def followup_step(sequence: str, number: int) -> Response:
    """One step's wording: the editor with a live preview, and who changed what and when."""
    return _editor(sequence, number)


@blueprint.post("/followups/<sequence>/<int:number>")
def followup_step_save(sequence: str, number: int) -> Response:
    """Save the wording as the step's next version; refused (and nothing saved) when the subject or
    preheader names a condition or treatment."""
    runtime = current_runtime()
    settings = runtime.settings
    index, _step = _step_or_404(settings, sequence, number)
    form = {name: text_field(name) or "" for name in ("subject", "preheader", "body_markdown")}
    renderer = runtime.renderer
    problem = None
    try:
        with runtime.sessions.begin() as db:
            current = steps.current(db, renderer, settings, sequence, index)
            saved = wording.save(db, settings, current=current, subject=form["subject"], preheader=form["preheader"],
                                 body_markdown=form["body_markdown"], by=g.staff.email, now=runtime.clock())
    except WordingError as exc:
        problem = f"Not saved: {exc}."
    if problem is not None:  # the page again, with what they typed, so nothing written is lost
        return _editor(sequence, number, form=form, problem=problem, status=400)
    if saved is None:
        return done(".followup_step", "Nothing was changed, so no new version was saved.", sequence=sequence,
                    number=number)
    log.info("follow-up %s step %d: version %d saved by staff account %s", sequence, number, saved.version, g.staff.id)
    message = (f"Saved as version {saved.version}. Emails of this step queued from now on use it; those already "
               "queued keep the wording they were queued with.")
    words = wording.body_words(settings, saved.body_markdown)
    if words:
        return done(".followup_step", message + f" Note: the body names {', '.join(words)}; whoever sees the open "
                    "email on a screen reads it.", "problem", sequence=sequence, number=number)
    return done(".followup_step", message, sequence=sequence, number=number)


def _framed(html: str, status: int = 200) -> Response:
    """A page for the editor's sandboxed preview frame (the campaign preview's policy)."""
    response = Response(html, status=status, mimetype="text/html")
    response.headers["Content-Security-Policy"] = PREVIEW_CSP
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


def _preview_problem(message: str, status: int) -> Response:
    text = Markup("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Not shown</title></head>"
                  "<body style=\"font: 16px/1.5 Helvetica, Arial, sans-serif; color: #8a1c1c; margin: 1.5rem;\">"
                  "<p role=\"alert\">{}</p></body></html>").format(message)
    return _framed(str(text), status)


@blueprint.route("/followups/<sequence>/<int:number>/preview", methods=["GET", "POST"])
def followup_step_preview(sequence: str, number: int) -> Response:
    """The email as a person gets it (sample details, "Sam"): GET a version (`?version=N`, default the
    current one); POST the editor's unsaved wording, for the live preview."""
    runtime = current_runtime()
    settings = runtime.settings
    index, _step = _step_or_404(settings, sequence, number)
    renderer = runtime.renderer
    with runtime.sessions() as db:
        current = steps.current(db, renderer, settings, sequence, index)
        if request.method == "POST":
            try:
                subject, preheader, body = wording.check(
                    settings, subject=text_field("subject") or "", preheader=text_field("preheader") or "",
                    body_markdown=text_field("body_markdown") or "")
            except WordingError as exc:
                return _preview_problem(f"This wording cannot be saved: {exc}.", 400)
            shown: Wording | None = Wording(sequence, index, current.version + 1, current.template, subject, preheader,
                                            body)
        else:
            asked = request.args.get("version", type=int)
            number_shown = current.version if asked is None else asked
            shown = current if number_shown == current.version else (
                wording.saved(db, sequence, index, number_shown) if number_shown > 0 else None)
            if shown is None and number_shown != 0:
                raise Missing("version of this follow-up step")
    try:
        prepared = steps.prepare_step(renderer, settings, index, sequence, shown)
    except RenderError as exc:
        return _preview_problem(f"This email cannot be shown: {exc}. Please tell your IT person.", 500)
    return _framed(prepared.html.fill(sample_values(settings.web.base_url)))
