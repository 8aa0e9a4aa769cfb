"""What some large providers mean by their own reply codes and words, known by their servers' names.

Orange and La Poste, Tencent QQ, Cox, Spectrum, GoDaddy, Mimecast, i.ua and Microsoft's Exchange Online
document codes of their own ("OFR_416", "AUP#CXBL", "IB104") or word ordinary refusals in their own
way; for them the published meaning beats the general rules. A provider is recognised by the remote
server's host name, or by the recipient's domain where the provider hosts it.
"""

from __future__ import annotations

import re

_ORANGE = re.compile(r"(?:^|\.)(?:laposte\.net|orange\.fr|wanadoo\.fr)$")
_ORANGE_CODES = {
    "101": "blocked", "102": "blocked", "103": "blocked", "104": "too_many", "305": "authentication",
    "401": "blocked", "402": "authentication", "403": "sender_rejected", "405": "sender_rejected",
    "415": "sender_rejected", "416": "user_unknown", "417": "mailbox_full", "418": "user_unknown",
    "420": "mailbox_disabled", "421": "sender_rejected", "426": "mailbox_disabled", "505": "server_error",
    "506": "spam", "510": "blocked", "514": "too_large", "517": "policy", "630": "policy", "999": "blocked",
}
_COX_CODES = {"CXBL": "blocked", "CXTHRT": "authentication", "CXMJ": "authentication", "CXDNS": "blocked",
              "CXSNDR": "sender_rejected", "CXSMTP": "sender_rejected", "CXCNCT": "too_many", "CXMXRT": "too_many",
              "CDRBL": "blocked"}
_GODADDY_CODES = {"IB103": "blocked", "IB104": "blocked", "IB105": "blocked", "IB106": "blocked",
                  "IB007": "too_many", "IB101": "expired", "IB108": "blocked", "IB110": "blocked", "IB111": "blocked",
                  "IB112": "blocked", "IB113": "blocked", "IB212": "spam", "IB401": "authentication",
                  "IB501": "sender_rejected", "IB502": "sender_rejected", "IB504": "too_many",
                  "IB506": "sender_rejected", "IB508": "sender_rejected", "IB510": "too_many", "IB607": "too_many",
                  "IB705": "virus"}
_IUA_CODES = {"1": "relay_denied", "2": "user_unknown", "3": "mailbox_disabled", "4": "mailbox_full",
              "5": "too_many", "6": "relay_denied", "7": "blocked", "8": "sender_rejected", "9": "blocked",
              "10": "filtered"}
# (words, reason), tried in order.
_QQ = (("mailbox not found", "user_unknown"), ("mailbox unavailable or access denied", "too_many"),
       ("mail is rejected by recipients", "filtered"), ("dmarc check failed", "blocked"),
       ("spf check failed", "blocked"), ("suspected spam ip", "blocked"), ("message too large", "too_large"),
       ("mail content denied", "spam"), ("spam is embedded in the email", "spam"), ("suspected spam", "spam"),
       ("frequency limited", "too_many"), ("connection denied", "too_many"), ("bad address syntax", "protocol"))
_COX = (("recipient rejected", "user_unknown"), ("rejected - no rdns", "blocked"), ("too many invalid recipients", "blocked"),
        ("sender rejected", "sender_rejected"), ("too many sessions from", "too_many"),
        ("message threshold exceeded", "too_many"))
_GODADDY = (("account does not exist", "user_unknown"), ("550 recipient not found.", "user_unknown"),
            ("account disabled", "mailbox_disabled"), ("account storage limit", "mailbox_full"),
            ("554 rbl reject.", "blocked"), ("delivery timeout", "expired"))
_MIMECAST = (("501", "invalid address", "user_unknown"), ("503", "user unknown", "user_unknown"),
             ("550", "invalid recipient", "user_unknown"), ("554", "maximum email size exceeded", "too_large"),
             ("550", "local ct ip reputation", "blocked"), ("550", "sender invalid - envelope rejected", "blocked"),
             ("550", "anti-spoofing policy", "policy"), ("550", "envelope blocked", "sender_rejected"),
             ("550", "envelope rejected", "sender_rejected"), ("553", "this route requires", "authentication"))
# Exchange Online: (status, words, reason).
_EXCHANGE_ONLINE = (
    ("5.4.1", "recipient address rejected: access denied", "user_unknown"),
    ("5.1.10", "recipient not found", "user_unknown"),
    ("5.1.1", "user unknown", "user_unknown"),
    ("5.7.504", "recipient address rejected: access denied", "mailbox_disabled"),
    ("5.7.505", "access denied, banned recipient", "mailbox_disabled"),
    ("5.2.1", "mailbox cannot be accessed", "mailbox_disabled"),
    ("5.2.1", "content filter agent quarantined this message", "spam"),
    ("5.4.310", "does not exist", "relay_denied"),
    ("5.7.1", "unable to relay", "relay_denied"),
    ("5.7.1", "delivery not authorized", "sender_rejected"),
    ("5.7.", "access denied, banned sending ip", "blocked"),
    ("5.7.", "access denied, spam abuse detected", "sender_rejected"),
    ("5.7.", "access denied, tenant has exceeded threshold", "too_many"),
)


# Office 365's own reports: what each of its status codes means (Microsoft documents them).
_OFFICE365 = (
    (r"4\.4\.7", "expired"), (r"4\.4\.312", "routing"), (r"4\.4\.316", "expired"), (r"4\.7\.26", "authentication"),
    (r"4\.7\.[56]\d\d", "blocked"), (r"4\.7\.8[5-9]\d", "blocked"), (r"5\.0\.350", "content"),
    (r"5\.1\.10", "user_unknown"), (r"5\.4\.1", "relay_denied"), (r"5\.4\.6", "routing"), (r"5\.4\.312", "routing"),
    (r"5\.4\.316", "expired"), (r"5\.6\.11", "content"), (r"5\.7\.1", "sender_rejected"),
    (r"5\.7\.1[23]", "sender_rejected"), (r"5\.7\.124", "sender_rejected"), (r"5\.7\.13[3-6]", "sender_rejected"),
    (r"5\.7\.23", "blocked"), (r"5\.7\.25", "routing"), (r"5\.7\.50[1-3]", "spam"), (r"5\.7\.50[45]", "filtered"),
    (r"5\.7\.50[67]", "blocked"), (r"5\.7\.508", "too_many"), (r"5\.7\.509", "authentication"),
    (r"5\.7\.510", "not_accepting"), (r"5\.7\.511", "sender_rejected"), (r"5\.7\.512", "authentication"),
    (r"5\.7\.57", "authentication"),
)


def office365_reason(status: str) -> str:
    """What an Office 365 report's status code means, or "" for codes it does not document."""
    return next((reason_ for code, reason_ in _OFFICE365 if re.fullmatch(code, status)), "")


def reason(host: str, domain: str, status: str, reply: str, text: str) -> str:
    """A provider's own meaning of this refusal, or "" when the refusal is not one of theirs."""
    host, domain, lowered = host.lower().rstrip("."), domain.lower(), text.lower()
    if _ORANGE.search(host) or _ORANGE.search(domain):
        found = re.search(r"\b(?:lpn|lpnaaa|ofr|ouk)(?:_(\d{3})|\d{3}[-_](\d{3}))\b", lowered)
        if found:
            return _ORANGE_CODES.get(found.group(1) or found.group(2), "undetermined")
        return ""
    if re.search(r"(?:^|\.)mx\d+\.qq\.com$", host):
        return _first(_QQ, lowered)
    if "cox.net" in host or domain == "cox.net":
        code = re.search(r"aup#([0-9a-z]+)", lowered)
        if code and code.group(1).upper() in _COX_CODES:
            return _COX_CODES[code.group(1).upper()]
        if code and code.group(1).upper().startswith(("IPBL", "CDRBL")):
            return "blocked"
        if code and code.group(1).upper().startswith("URLBL"):
            return "spam"
        return _first(_COX, lowered)
    if re.search(r"^(?:smtp|mailstore1)\.secureserver\.net$", host):
        code = re.search(r"\s(ib\d{3})\b", lowered)
        return _GODADDY_CODES.get(code.group(1).upper(), "") if code else _first(_GODADDY, lowered)
    if host.endswith(".mimecast.com"):
        return next((r for code, words, r in _MIMECAST if reply == code and words in lowered), "")
    if host.endswith(".email.ua"):
        code = re.search(r"\.i\.ua/err/(\d+)", lowered)
        return _IUA_CODES.get(code.group(1), "") if code else ""
    if re.search(r"\.(?:prod|protection)\.outlook\.com$", host):
        return next((r for code, words, r in _EXCHANGE_ONLINE if status.startswith(code) and words in lowered), "")
    return ""


def _first(table: tuple[tuple[str, str], ...], lowered: str) -> str:
    return next((reason_ for words, reason_ in table if words in lowered), "")


_HOST_IN_TEXT = (
    re.compile(r"\bhost ([a-z0-9][a-z0-9.-]+\.[a-z]{2,})\.? ?\[[0-9a-f.:]+\]", re.I),
    re.compile(r"\bby ([a-z0-9][a-z0-9.-]+\.[a-z]{2,})\. \[[0-9.]+\]", re.I),
    re.compile(r"\b(?:remote[- ]mta|remote system|generating server):\s*(?:dns;\s*)?([a-z0-9][a-z0-9.-]+\.[a-z]{2,})",
               re.I),
)


def host_in(text: str) -> str:
    """The remote server a diagnostic names ("host mx.example.org[192.0.2.1] said: …"), or ""."""
    for pattern in _HOST_IN_TEXT:
        found = pattern.search(text)
        if found:
            return found.group(1).lower()
    return ""
