"""The health-word guard: every email's subject and preheader is checked against privacy.sensitive_words.

Subjects and preheaders show in inbox lists, on shared screens and lock screens: a subject naming a
condition or treatment tells whoever glances at it something about the reader. What the service writes
by itself (the nightly digest's subject from the first post's title, its preheader from the summary)
switches to the neutral wording on a hit; what staff write or configure is kept as written, with a
warning (on the staff page, and in the log when it is made). Every kind of email calls `screen`.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass

from mailer.config import Settings

log = logging.getLogger("mailer.privacy")


@functools.lru_cache(maxsize=16)
def _pattern(words: tuple[str, ...]) -> re.Pattern[str] | None:
    if not words:
        return None
    # Whole words only ("trauma" but not "traumatology"'s neighbour "dramatic"), any case.
    return re.compile(r"\b(" + "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True)) + r")\b",
                      re.IGNORECASE)


def words_in(words: list[str] | tuple[str, ...], *texts: str) -> list[str]:
    """The sensitive words found in these texts (as configured, each once, in the order of the list)."""
    pattern = _pattern(tuple(words))
    if pattern is None:
        return []
    found = {match.lower() for text in texts if text for match in pattern.findall(text)}
    return [word for word in words if word.lower() in found]


def neutral(settings: Settings, count: int) -> tuple[str, str]:
    """The neutral subject and preheader of a digest of `count` articles."""
    values = {"clinic": settings.clinic.name, "count": count}
    return (settings.privacy.neutral_subject.format(**values), settings.privacy.neutral_preheader.format(**values))


@dataclass(frozen=True)
class Screened:
    """A subject and preheader after the guard: `words` found, `neutral` when they were replaced."""

    subject: str
    preheader: str
    words: tuple[str, ...]
    neutral: bool


def screen(settings: Settings, kind: str, subject: str, preheader: str, *, automatic: bool,
           count: int = 0) -> Screened:
    """Check one email's subject and preheader as it is made.

    `automatic`: the service wrote them (a digest from post titles): on a hit both become the neutral
    wording. Otherwise a person wrote or configured them: kept, and a warning is logged (callers with a
    page show it too). `kind` names the email in the log line ("digest", "one-off", "follow-up step 2").
    """
    found = tuple(words_in(settings.privacy.sensitive_words, subject, preheader))
    if not found:
        return Screened(subject, preheader, (), False)
    if automatic:
        subject, preheader = neutral(settings, count)
        log.info("%s: the subject or preheader made from the content named %s; the neutral ones are used",
                    kind, ", ".join(found))
        return Screened(subject, preheader, found, True)
    log.warning("%s: the subject or preheader names %s, which inbox lists show to anyone who glances at them",
                kind, ", ".join(found))
    return Screened(subject, preheader, found, False)
