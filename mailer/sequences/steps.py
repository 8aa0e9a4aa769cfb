"""A follow-up step's email, rendered once per step: its template's wording with config.toml's subject."""

from __future__ import annotations

from mailer import privacy
from mailer.config import DEFAULT_SEQUENCE, FollowupStep, Settings
from mailer.publishing.render import PreparedMessage, Renderer


def why_text(settings: Settings) -> str:
    return (f"You receive this email because you asked {settings.clinic.name} about its services "
            "and agreed to hear from us about it.")


def prepare_step(renderer: Renderer, settings: Settings, step_index: int,
                 sequence: str = DEFAULT_SEQUENCE) -> PreparedMessage:
    """A follow-up step's message, rendered once. No open or click tracking: plain links only. Every
    template gets `booking_url` (clinic.booking_url, "" when there is none)."""
    steps: list[FollowupStep] = settings.followups.steps_of(sequence)
    if not 0 <= step_index < len(steps):
        raise LookupError(f"follow-up step {step_index} is not in the configured sequence {sequence!r}")
    step = steps[step_index]
    privacy.screen(settings, f"follow-up step {step_index + 1} ({step.template})", step.subject, step.preheader,
                   automatic=False)
    # The first step says "Didn't contact us? Let us know": a form anyone can fill in with anyone's
    # address must give that address a way to stop it all with one click.
    return renderer.prepare(f"email/followup/{step.template}", subject=step.subject, preheader=step.preheader,
                            marketing=True, step=step, why=why_text(settings), sequence=sequence,
                            booking_url=settings.clinic.booking_url, not_me=step_index == 0)
