"""What counts as a person's name: the rules every path that stores a name or greets with one applies.

A name ends up in the greeting of every email ("Hi Jane,") and in the To: header, so a sign-up form is a
way to write into the clinic's emails. A name must look like a name: at most MAX_LENGTH characters of
letters, combining marks, digits, spaces and the few marks names use (apostrophes, hyphens, periods,
commas, parentheses, "&"); no URL or address, no other punctuation or symbols (":", "/", "<", "$" ...), no
invisible or direction-changing characters. Any Unicode whitespace becomes one plain space.
"""

from __future__ import annotations

import re
import unicodedata

MAX_LENGTH = 60
# Marks real names carry: O'Brien, O’Brien, Jean-Luc, Mary J. Blige, "Smith, Jane", "Sam (Samira)",
# "Anne & Bob". No colon, no slash, no angle brackets.
NAME_MARKS = frozenset("'’‘-‐.,()&")
_WHITESPACE = re.compile(r"\s+", re.UNICODE)
# Most names are plain ASCII words: checked by one regular expression (the send path greets every recipient).
_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9'.,-]*(?: [A-Za-z0-9'.,-]+)*")


class NotAName(ValueError):
    """A name that does not look like a name; the message says why in one line."""


def normalise(raw: str | None) -> str:
    """Unicode composed (NFC), every run of whitespace (no-break and ideographic spaces too) one space."""
    text = unicodedata.normalize("NFC", raw or "")
    return _WHITESPACE.sub(" ", text).strip()


def problem(name: str) -> str | None:
    """Why this (normalised) name is not accepted as a name, or None when it is."""
    if "@" in name or "://" in name or "www." in name.lower():
        return "looks like an address or a link, not a name"
    if len(name) > MAX_LENGTH:
        return f"longer than {MAX_LENGTH} characters"
    for char in name:
        if char == " " or char in NAME_MARKS:
            continue
        category = unicodedata.category(char)
        if category[0] in "LM" or category == "Nd":  # letters in any script, their accents, digits
            continue
        if category == "Cf":
            return "contains invisible formatting characters"
        return f"contains {char!r}, which names do not"
    if name and not any(unicodedata.category(char)[0] == "L" for char in name):
        return "has no letters"
    return None


def check(raw: str | None) -> str:
    """The name normalised, "" for none; NotAName when it is not a name."""
    name = normalise(raw)
    reason = problem(name)
    if reason is not None:
        raise NotAName(reason)
    return name


def greetable(raw: str | None) -> str:
    """The name when it passes the rules (stored before they existed, say), else "" (greet "there")."""
    if raw and len(raw) <= MAX_LENGTH and _PLAIN.fullmatch(raw) and "www." not in raw.lower():
        return raw
    name = normalise(raw)
    return name if name and problem(name) is None else ""


def first_name(raw: str | None) -> str:
    """The first word of a name that passes the rules, split on any whitespace; "" otherwise."""
    name = greetable(raw)
    return name.split()[0] if name else ""
