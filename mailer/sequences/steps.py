"""A follow-up step's email, rendered once per step and version: the template's wording, or a saved one."""

from __future__ import annotations

import re
from typing import Any

from markupsafe import Markup
from sqlalchemy.orm import Session

from mailer import privacy
from mailer.config import DEFAULT_SEQUENCE, FollowupStep, Settings
from mailer.publishing.render import PreparedMessage, Renderer, html_to_text
from mailer.sequences import wording
from mailer.sequences.wording import Wording

# The frame saved wording is rendered in: the layout, heading and greeting every step template shares.
STEP_FRAME = "email/followup/_step"
# A paragraph that is nothing but a web link, in sanitised Markdown output: shown as a button, as the
# templates show "Book a time online" (so a step keeps its look once its wording is edited).
_LONE_LINK = re.compile(r'<p><a href="(https?://[^"]+)"[^>]*>([^<]+)</a></p>')


def why_text(settings: Settings) -> str:
    return (f"You receive this email because you asked {settings.clinic.name} about its services "
            "and agreed to hear from us about it.")


def _step(settings: Settings, sequence: str, step_index: int) -> FollowupStep:
    steps: list[FollowupStep] = settings.followups.steps_of(sequence)
    if not 0 <= step_index < len(steps):
        raise LookupError(f"follow-up step {step_index} is not in the configured sequence {sequence!r}")
    return steps[step_index]


def _context(settings: Settings, sequence: str, step_index: int, step: FollowupStep) -> dict[str, Any]:
    """What every follow-up template gets besides subject and preheader. No open or click tracking: plain
    links only. The first step says "Didn't contact us? Let us know": a form anyone can fill in with
    anyone's address must give that address a way to stop it all with one click."""
    return {"marketing": True, "step": step, "why": why_text(settings), "sequence": sequence,
            "booking_url": settings.clinic.booking_url, "not_me": step_index == 0}


def prepare_step(renderer: Renderer, settings: Settings, step_index: int, sequence: str = DEFAULT_SEQUENCE,
                 version: Wording | None = None) -> PreparedMessage:
    """A follow-up step's message, rendered once: with `version` (saved on the staff pages) its subject,
    preheader and body in the step frame; without (or version 0), the step's template and config.toml's
    subject and preheader. Every template gets `booking_url` (clinic.booking_url, "" when there is none)."""
    step = _step(settings, sequence, step_index)
    context = _context(settings, sequence, step_index, step)
    if version is None or version.version == 0:
        privacy.screen(settings, f"follow-up step {step_index + 1} ({step.template})", step.subject, step.preheader,
                       automatic=False)
        return renderer.prepare(f"email/followup/{step.template}", subject=step.subject, preheader=step.preheader,
                                **context)
    privacy.screen(settings, f"follow-up step {step_index + 1} version {version.version}", version.subject,
                   version.preheader, automatic=False)
    body = body_html(renderer, version.body_markdown)
    return renderer.prepare(STEP_FRAME, subject=version.subject, preheader=version.preheader, body_html=body,
                            body_text=html_to_text(body), **context)


def body_html(renderer: Renderer, body_markdown: str) -> str:
    """Saved wording as email HTML: Markdown sanitised as a one-off's is, a lone link made a button."""
    html = renderer.staff_html(body_markdown)
    button = renderer.env.get_template("email/_partials/button.html").module.button  # type: ignore[attr-defined]
    # The sanitiser's output is already escaped: handed on as markup, it is not escaped twice.
    return _LONE_LINK.sub(lambda link: str(button(Markup(link[1]), Markup(link[2]))), html)


def first_version(renderer: Renderer, settings: Settings, sequence: str, step_index: int) -> Wording:
    """Version 0 of a step: config.toml's subject and preheader, and the wording of the template's `body`
    block as Markdown (empty for a template that does not extend email/followup/_step.html)."""
    step = _step(settings, sequence, step_index)
    html = renderer.render_template(f"email/followup/{step.template}.html", subject=step.subject,
                                    preheader=step.preheader, mark_body=True,
                                    **_context(settings, sequence, step_index, step))
    start, end = html.find(wording.BODY_START), html.find(wording.BODY_END)
    body = wording.to_markdown(html[start + len(wording.BODY_START):end]) if 0 <= start < end else ""
    return Wording(sequence, step_index, 0, step.template, step.subject, step.preheader, body)


def current(session: Session, renderer: Renderer, settings: Settings, sequence: str, step_index: int) -> Wording:
    """The wording a step queued now would go out with."""
    number = wording.current_number(session, settings, sequence, step_index)
    found = wording.saved(session, sequence, step_index, number) if number else None
    return found or first_version(renderer, settings, sequence, step_index)
