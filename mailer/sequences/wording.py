"""Follow-up wording: the versions staff save of each step's subject, preheader and Markdown body.

Version 0 of a step is what config.toml and the step's template say (mailer.sequences.steps reads it);
every save on the staff pages stores the next version, and rows are never changed. A step queued for
someone records the version that was current then (OutboxMessage.step_version), so a later save changes
the emails of the people whose step is queued after it, never one already on its way.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailer import access_log, privacy
from mailer.config import FollowupStep, Settings
from mailer.models import StepVersion
from mailer.publishing.render import one_line

log = logging.getLogger("mailer.wording")

MAX_LINE = 300  # a subject or preheader, as the columns hold them
MAX_BODY = 20_000
# Around a template's `body` block when it is rendered to become version 0 (email/followup/_step.html).
BODY_START, BODY_END = "<!--mailer:body-->", "<!--/mailer:body-->"


class WordingError(Exception):
    """Wording that cannot be saved (a health word in the subject, no body, an unknown step); one line."""


@dataclass(frozen=True)
class Wording:
    """One version of a step's wording. `step` is 0-based; version 0 has no author or time."""

    sequence: str
    step: int
    version: int
    template: str
    subject: str
    preheader: str
    body_markdown: str
    created_by: str = ""
    created_at: dt.datetime | None = None

    @classmethod
    def of(cls, row: StepVersion) -> Wording:
        return cls(row.sequence, row.step, row.version, row.template, row.subject, row.preheader, row.body_markdown,
                   row.created_by, row.created_at)

    def changes_from(self, earlier: Wording) -> list[str]:
        """What this version changed: "subject", "preheader", "body" (in that order)."""
        pairs = (("subject", self.subject, earlier.subject), ("preheader", self.preheader, earlier.preheader),
                 ("body", self.body_markdown.strip(), earlier.body_markdown.strip()))
        return [name for name, now, before in pairs if now != before]


def configured_step(settings: Settings, sequence: str, step: int) -> FollowupStep:
    """The step as config.toml has it; WordingError when the sequence or the step is not there."""
    steps = settings.followups.steps_of(sequence)
    if not 0 <= step < len(steps):
        raise WordingError(f"the follow-up sequence {sequence!r} has no step {step + 1}")
    return steps[step]


def current_number(session: Session, settings: Settings, sequence: str, step: int) -> int:
    """The version of a step that goes out when it is queued now: the newest saved for the step's
    template in config.toml, else 0 (the template itself)."""
    steps = settings.followups.steps_of(sequence)
    if not 0 <= step < len(steps):
        return 0
    number = session.scalar(
        select(func.max(StepVersion.version)).where(
            StepVersion.sequence == sequence, StepVersion.step == step, StepVersion.template == steps[step].template)
    )
    return int(number or 0)


def saved(session: Session, sequence: str, step: int, version: int) -> Wording | None:
    """A saved version (1 and up), or None."""
    row = session.scalar(select(StepVersion).where(
        StepVersion.sequence == sequence, StepVersion.step == step, StepVersion.version == version))
    return Wording.of(row) if row is not None else None


def history(session: Session, sequence: str, step: int) -> list[Wording]:
    """Every saved version of a step, newest first."""
    rows = session.scalars(select(StepVersion).where(StepVersion.sequence == sequence, StepVersion.step == step)
                           .order_by(StepVersion.version.desc()))
    return [Wording.of(row) for row in rows]


def last_saves(session: Session) -> dict[tuple[str, int], Wording]:
    """The newest saved version of every step that has one, by (sequence, step)."""
    newest = (select(StepVersion.sequence, StepVersion.step, func.max(StepVersion.version).label("version"))
              .group_by(StepVersion.sequence, StepVersion.step).subquery())
    rows = session.scalars(select(StepVersion).join(newest, (StepVersion.sequence == newest.c.sequence)
                                                    & (StepVersion.step == newest.c.step)
                                                    & (StepVersion.version == newest.c.version)))
    return {(row.sequence, row.step): Wording.of(row) for row in rows}


def _quoted(words: list[str]) -> str:
    return ", ".join(f"“{word}”" for word in words)


def check(settings: Settings, *, subject: str, preheader: str, body_markdown: str) -> tuple[str, str, str]:
    """The subject, preheader and body as they would be saved, or WordingError saying what to change.

    Unlike a campaign's (kept, with a warning), a follow-up's subject or preheader that names a condition
    or treatment (privacy.sensitive_words) is refused: it goes out by itself, to people who only asked a
    question, for months after it was written.
    """
    subject, preheader, body = one_line(subject), one_line(preheader), body_markdown.replace("\r\n", "\n").strip()
    if not subject:
        raise WordingError("a subject is required")
    for name, value in (("subject", subject), ("preheader", preheader)):
        if len(value) > MAX_LINE:
            raise WordingError(f"the {name} is longer than {MAX_LINE} characters")
    for name, value in (("subject", subject), ("preheader", preheader)):
        words = privacy.words_in(settings.privacy.sensitive_words, value)
        if words:
            raise WordingError(
                f"the {name} names {_quoted(words)}. Inbox lists show the subject and preheader to anyone who "
                "glances at the screen, so a follow-up's may not name a condition or treatment "
                "(privacy.sensitive_words). Please choose a neutral wording")
    if not body:
        raise WordingError("the body is empty")
    if len(body) > MAX_BODY:
        raise WordingError(f"the body is longer than {MAX_BODY:,} characters")
    return subject, preheader, body


def body_words(settings: Settings, body_markdown: str) -> list[str]:
    """The sensitive words a body names (allowed there; the staff page points them out)."""
    return privacy.words_in(settings.privacy.sensitive_words, body_markdown)


def save(session: Session, settings: Settings, *, current: Wording, subject: str, preheader: str,
         body_markdown: str, by: str, now: dt.datetime) -> Wording | None:
    """Store the next version of `current`'s step, with who saved it, and note it in the access log.

    None when nothing differs from `current` (no empty versions in the history). WordingError, with
    nothing stored, for wording `check` refuses or when another save of the step came first.
    """
    subject, preheader, body = check(settings, subject=subject, preheader=preheader, body_markdown=body_markdown)
    template = configured_step(settings, current.sequence, current.step).template
    if (subject, preheader, body) == (current.subject, current.preheader, current.body_markdown.strip()):
        return None
    last = session.scalar(select(func.max(StepVersion.version)).where(
        StepVersion.sequence == current.sequence, StepVersion.step == current.step)) or 0
    row = StepVersion(sequence=current.sequence, step=current.step, version=last + 1, template=template,
                      subject=subject, preheader=preheader, body_markdown=body, created_by=by, created_at=now)
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:  # two saves of one step at once: the unique key lets one through
        raise WordingError("someone else saved this step a moment ago; please reload the page and try again") from None
    access_log.record(session, actor=by, action=access_log.WORDING_SAVED, now=now,
                      detail=f"follow-up sequence {current.sequence}, step {current.step + 1}, version {row.version}")
    log.info("follow-up sequence %s step %d: version %d saved", current.sequence, current.step + 1, row.version)
    return Wording.of(row)


def to_markdown(fragment: str) -> str:
    """A template's rendered wording (HTML) as the Markdown staff edit: paragraphs, headings, lists,
    links and emphasis; a button becomes its link."""
    from markdownify import markdownify  # only the staff pages need it

    text = markdownify(fragment, heading_style="ATX", bullets="-", strip=["table", "tbody", "thead", "tr", "td", "th"])
    lines = [line.rstrip() if not line.endswith("  ") else line for line in text.strip().split("\n")]
    return "\n".join(lines).strip() + "\n"
