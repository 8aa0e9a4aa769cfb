"""What a refusal means for the person: the verdict rules, from status code, reply code and diagnostic text.

A pure function of what a report (or an SMTP reply at send time) says about one recipient. The codes
decide where they are specific; the words decide where the codes are generic (x.0.0, a bare 550) or
say something else than the words ("mailbox full" under 5.1.1 is a full mailbox, "blacklisted" under
5.1.1 is about our IP). The order of the rules follows the established open-source classifiers, which
were tuned on many thousands of real reports: the narrow, telling reasons are tried before the broad
ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from mailer.inbound import phrases as P
from mailer.inbound import remotes

Verdict = Literal["address_bad", "mailbox_unable", "not_about_recipient", "complaint", "none"]

# What each reason means for the person. Reasons are short tags shown to staff and kept as evidence.
ADDRESS_BAD = frozenset({"user_unknown", "no_such_domain", "moved"})
MAILBOX_UNABLE = frozenset({"mailbox_full", "mailbox_disabled", "over_limit", "too_many"})

# Enhanced status codes (RFC 3463) with a meaning of their own.
_STATUS_REASONS = {
    "2.1.5": "delivered",
    "4.1.6": "moved", "4.1.7": "sender_rejected", "4.1.8": "sender_rejected", "4.1.9": "server_error",
    "4.2.1": "mailbox_disabled", "4.2.2": "mailbox_full", "4.2.3": "over_limit", "4.2.4": "filtered",
    "4.3.1": "server_full", "4.3.2": "not_accepting", "4.3.3": "server_error", "4.3.5": "server_error",
    "4.4.1": "expired", "4.4.2": "routing", "4.4.4": "routing", "4.4.5": "server_full", "4.4.6": "routing",
    "4.4.7": "expired", "4.5.3": "server_error", "4.5.5": "server_error",
    "4.6.0": "content", "4.6.2": "content", "4.6.5": "content",
    "4.7.1": "blocked", "4.7.2": "blocked", "4.7.5": "authentication", "4.7.6": "authentication",
    "4.7.7": "authentication", "4.7.12": "authentication", "4.7.15": "authentication", "4.7.16": "too_large",
    "4.7.24": "authentication", "4.7.25": "blocked",
    "5.1.0": "user_unknown", "5.1.1": "user_unknown", "5.1.2": "no_such_domain", "5.1.3": "user_unknown",
    "5.1.4": "filtered", "5.1.6": "moved", "5.1.7": "sender_rejected", "5.1.8": "sender_rejected",
    "5.1.9": "server_error", "5.1.10": "not_accepting",
    "5.2.0": "filtered", "5.2.1": "mailbox_disabled", "5.2.2": "mailbox_full", "5.2.3": "over_limit", "5.2.4": "filtered",
    "5.3.0": "server_error", "5.3.1": "server_full", "5.3.2": "not_accepting", "5.3.3": "server_error",
    "5.3.4": "too_large", "5.3.5": "server_error",
    "5.4.0": "routing", "5.4.3": "server_error", "5.4.4": "no_such_domain",
    "5.5.3": "too_many", "5.5.4": "server_error", "5.5.5": "server_error", "5.5.6": "authentication",
    "5.6.0": "content", "5.6.1": "content", "5.6.2": "content", "5.6.3": "content", "5.6.5": "content",
    "5.6.6": "content", "5.6.7": "content", "5.6.8": "content", "5.6.9": "content",
    "5.7.13": "mailbox_disabled", "5.7.16": "too_large", "5.7.17": "moved", "5.7.18": "moved",
    "5.7.25": "blocked", "5.7.27": "not_accepting",
}
# Every other 5.7.x (and 5.5.6) is about authentication or authorisation of the sender.
for _detail in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 14, 15, 19, 20, 21, 22, 23, 24, 26):
    _STATUS_REASONS.setdefault(f"5.7.{_detail}", "authentication")

# Reasons a format may suggest that the text is still allowed to overrule.
_TENTATIVE = frozenset({"", "undetermined", "server_error", "authentication", "routing", "no_such_domain",
                        "user_unknown"})
_BEFORE_RECIPIENT = frozenset({"CONN", "EHLO", "HELO", "MAIL", "RCPT"})

_STATUS_IN_TEXT = (
    re.compile(r" ?\(#([45]\.\d\.\d+)\)?"),                 # (#5.1.1): qmail, Exchange
    re.compile(r"\b\d{3}[ -]#?([45]\.\d\.\d+)\b"),          # 550-5.1.1, 550 5.1.1
    re.compile(r"\b([45]\.\d\.\d+)\b"),
    re.compile(r"\b(2\.[0-7]\.[0-7])\b"),
)
_IPV4 = re.compile(r"\b(?:25[0-5]|2[0-4]\d|1?\d?\d)(?:\.(?:25[0-5]|2[0-4]\d|1?\d?\d)){3}\b")
_REPLY_IN_TEXT = re.compile(r"\b([45][0-5]\d)\b")
_SPECIFIC_STATUS = re.compile(r"^[45]\.[1-9]\.[1-9]$")


@dataclass(frozen=True)
class Refusal:
    """What a report or reply says about one recipient, before it is judged."""

    status: str = ""       # enhanced status code (Status field or the text's), e.g. "5.1.1"
    reply_code: str = ""   # SMTP reply code, e.g. "550"
    diagnostic: str = ""   # the server's words, on one line
    command: str = ""      # the SMTP command it answered: CONN, EHLO, MAIL, RCPT, DATA, or ""
    action: str = ""       # the report's Action: failed, delayed, delivered, relayed, expanded, or ""
    hint: str = ""         # a reason the report's format already tells (a table of that server's messages)
    unix: bool = False     # the diagnostic is a local program's (Diagnostic-Code: X-Unix), not a server's
    remote: str = ""       # the host name of the server that refused, when the report gives it
    domain: str = ""       # the recipient's domain
    # Only a specific code in the words counts (x.y.z without zeros): for notices that quote other servers'
    # replies in prose (Gmail's), where a generic code is the quoted server's and says nothing.
    specific_codes: bool = False


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str
    status: str
    reply_code: str


def status_in(text: str) -> str:
    """The enhanced status code a text carries ("550 5.1.1 ..." gives 5.1.1), or ""."""
    for pattern in _STATUS_IN_TEXT:
        found = pattern.search(text)
        if found is None:
            continue
        code = found.group(1)
        # Not an enhanced status code but part of an IP address ("5.1.1.20").
        if re.search(rf"\b(?:{re.escape(code)}\.\d{{1,3}}|\d{{1,3}}\.{re.escape(code)})\b", text):
            continue
        return code
    return ""


def reply_code_in(text: str) -> str:
    """The SMTP reply code a text carries ("host said: 550 ..." gives 550), or ""; IP addresses do not count."""
    if "x-unix;" in text.lower():
        return ""
    found = _REPLY_IN_TEXT.search(_IPV4.sub(" ", text))
    return found.group(1) if found else ""


def status_reason(status: str) -> str:
    return _STATUS_REASONS.get(status, "")


def judge(refusal: Refusal) -> Judgement:
    """The verdict for one recipient: address bad, mailbox unable for now, not about the recipient, or none."""
    text = refusal.diagnostic.lower()
    status, reply = refusal.status, refusal.reply_code or reply_code_in(refusal.diagnostic)
    in_text = status_in(refusal.diagnostic)
    if refusal.specific_codes and not _SPECIFIC_STATUS.match(in_text):
        in_text = ""
    # A specific code in the server's own words is better evidence than a relay's generic Status field.
    if _SPECIFIC_STATUS.match(in_text) or not status:
        status = in_text or status
    action = refusal.action.lower()
    if action in ("delivered", "relayed", "expanded") or status.startswith("2."):
        return Judgement("none", "delivered", status, reply)
    reason = _reason(refusal, text, status, reply)
    if not status and reply[:1] in ("4", "5"):
        status = f"{reply[0]}.0.0"
    return Judgement(_verdict(reason, status, reply, text, action), reason, status, reply)


def _verdict(reason: str, status: str, reply: str, text: str, action: str) -> Verdict:
    if reason == "auto_reply" or action == "delayed":
        # A relay that is still trying has not failed yet: its final report will tell.
        return "none"
    if reason in ADDRESS_BAD or (reason == "not_accepting" and _permanent(status, reply, text)):
        return "address_bad"
    if reason in MAILBOX_UNABLE:
        return "mailbox_unable"
    return "not_about_recipient"


def _permanent(status: str, reply: str, text: str) -> bool:
    code = status or reply or status_in(text) or reply_code_in(text)
    return not code.startswith("4")


def _reason(refusal: Refusal, text: str, status: str, reply: str) -> str:
    hint = refusal.hint
    if hint and hint not in _TENTATIVE:
        return hint
    if refusal.remote or refusal.domain:
        provider = remotes.reason(refusal.remote, refusal.domain, status, reply, refusal.diagnostic)
        if provider:
            return provider
    if not refusal.unix:
        for name, test in _ORDER:
            if test(refusal, hint, text, status, reply):
                return name
    found = _another(refusal, hint, text, status, reply)
    if found:
        return found
    if refusal.action.lower() == "delayed":
        return "expired"
    if P.VACATION.search(text):
        return "auto_reply"
    return hint or "undetermined"


# --- the ordered tests: each one is (status code, command, format hint, words) -----------------------


def _full(r: Refusal, hint: str, text: str, status: str, reply: str) -> bool:
    return bool(status) and (hint == "mailbox_full" or status_reason(status) == "mailbox_full"
                             or bool(P.MAILBOX_FULL.search(text)))


def _too_large(r: Refusal, hint: str, text: str, status: str, reply: str) -> bool:
    named = status_reason(status)
    if hint == "too_large" or named == "too_large":
        return True
    if named == "over_limit" or status == "5.2.3":
        return False
    return bool(P.TOO_LARGE.search(text))


def _over_limit(r: Refusal, hint: str, text: str, status: str, reply: str) -> bool:
    return bool(status) and (hint == "over_limit" or status_reason(status) == "over_limit"
                             or bool(P.OVER_LIMIT.search(text)))


def _suspended(r: Refusal, hint: str, text: str, status: str, reply: str) -> bool:
    return bool(status) and (hint == "mailbox_disabled" or bool(P.SUSPENDED.search(text)))


def _moved(r: Refusal, hint: str, text: str, status: str, reply: str) -> bool:
    return hint == "moved" or bool(P.HAS_MOVED.search(text))


def _relay(r: Refusal, hint: str, text: str, status: str, reply: str) -> bool:
    if hint in ("authentication", "server_error", "undetermined") or r.command in ("CONN", "EHLO", "HELO"):
        return False
    return bool(P.RELAY_DENIED.search(text))


# Words that overrule a "user unknown" status: the refusal is really about something else.
_NOT_REALLY_UNKNOWN = (P.RELAY_DENIED, P.BLOCKED, P.MAILBOX_FULL, P.HAS_MOVED, P.NOT_ACCEPTING)


def _unknown(r: Refusal, hint: str, text: str, status: str, reply: str) -> bool:
    if hint == "user_unknown":
        return True
    named = status_reason(status)
    if named == "mailbox_disabled":
        return False
    if named == "user_unknown":
        return not (any(p.search(text) for p in _NOT_REALLY_UNKNOWN) or _says_sender_rejected(text))
    # Without a code that says so, the words count only in answer to RCPT: after DATA the same words
    # are as often a content filter's.
    return r.command == "RCPT" and bool(P.USER_UNKNOWN.search(text))


def _filtered(r: Refusal, hint: str, text: str, status: str, reply: str) -> bool:
    if hint == "filtered":
        return True
    named = status_reason(status)
    if named == "mailbox_disabled":
        return False
    if named == "filtered":
        return bool(P.USER_UNKNOWN.search(text) or P.FILTERED.search(text))
    if r.command in _BEFORE_RECIPIENT:
        return False
    return bool(P.FILTERED.search(text) or P.USER_UNKNOWN.search(text))


def _says_sender_rejected(text: str) -> bool:
    return not any(phrase in text for phrase in P.SENDER_REJECTED_NOT) and bool(P.SENDER_REJECTED.search(text))


def _sender(r: Refusal, hint: str, text: str, status: str, reply: str) -> bool:
    if hint == "sender_rejected":
        return True
    named = status_reason(status) or "undetermined"
    if named == "sender_rejected":
        return True
    if r.command == "MAIL":
        return _says_sender_rejected(text)
    if r.command == "DATA":
        return named != "user_unknown" and _says_sender_rejected(text)
    return named in ("undetermined", "authentication", "server_error") and _says_sender_rejected(text)


def _no_domain(r: Refusal, hint: str, text: str, status: str, reply: str) -> bool:
    if hint == "no_such_domain":
        return True
    if status_reason(status) == "no_such_domain":
        return not P.ROUTING.search(text)
    return bool(P.HOST_UNKNOWN.search(text))


def _spam(r: Refusal, hint: str, text: str, status: str, reply: str) -> bool:
    if not status:
        return False
    if hint == "spam" or status_reason(status) == "spam":
        return True
    return r.command not in _BEFORE_RECIPIENT and bool(P.SPAM.search(text))


def _too_many(r: Refusal, hint: str, text: str, status: str, reply: str) -> bool:
    return hint == "too_many" or status_reason(status) == "too_many" or bool(P.TOO_MANY.search(text))


def _blocked(r: Refusal, hint: str, text: str, status: str, reply: str) -> bool:
    return hint == "blocked" or status_reason(status) == "blocked" or bool(P.BLOCKED.search(text))


_ORDER = (
    ("mailbox_full", _full), ("too_large", _too_large), ("over_limit", _over_limit),
    ("mailbox_disabled", _suspended), ("moved", _moved), ("relay_denied", _relay), ("user_unknown", _unknown),
    ("filtered", _filtered), ("sender_rejected", _sender), ("no_such_domain", _no_domain), ("spam", _spam),
    ("too_many", _too_many), ("blocked", _blocked),
)

# When none of the above holds: the code's own meaning, else the broader groups of words.
_BROAD = (
    ("mailbox_full", P.MAILBOX_FULL), ("spam", P.SPAM), ("policy", P.POLICY), ("virus", P.VIRUS),
    ("relay_denied", P.RELAY_DENIED), ("authentication", P.AUTHENTICATION), ("server_error", P.SERVER_ERROR),
    ("routing", P.ROUTING), ("mailbox_disabled", P.SUSPENDED), ("expired", P.EXPIRED), ("content", P.CONTENT),
    ("server_full", P.SERVER_FULL), ("not_accepting", P.NOT_ACCEPTING), ("mailer_error", P.MAILER_ERROR),
)
_RETRY = frozenset({"", "expired", "undetermined", "server_error", "authentication", "routing",
                    "no_such_domain", "user_unknown"})


def _another(r: Refusal, hint: str, text: str, status: str, reply: str) -> str:
    if hint:
        return hint
    named = status_reason(status)
    if named not in _RETRY and not r.unix:
        return named
    for name, pattern in _BROAD:
        if pattern.search(text):
            return name
    subject = status[:3]
    if subject in ("4.6", "5.6"):
        return "content"
    if subject in ("4.7", "5.7"):
        return "authentication"
    if r.unix:
        return "mailer_error"
    if re.match(r"^[45]0[0-7]$", reply):
        return "protocol"
    if r.action.lower() in ("delayed", "expired"):
        return "expired"
    if r.command in ("EHLO", "HELO"):
        return "blocked"
    return named if named not in ("", "undetermined") else ""


# --- the same rules at send time ------------------------------------------------------------------


def reply_verdict(code: int | None, text: str, command: str = "RCPT") -> Judgement:
    """An SMTP server's permanent or temporary refusal while we send, judged like a report of it.

    `text` is the reply as the server gave it ("5.1.1 <x@example.org>: Recipient address rejected: ...");
    a 4xx reply never condemns the address, whatever it says.
    """
    reply = str(code) if code is not None else ""
    judgement = judge(Refusal(reply_code=reply, diagnostic=f"{reply} {text}".strip(), command=command,
                              action="failed" if reply.startswith("5") else "delayed"))
    return judgement
