"""Plain-text (and HTML-only) notices of mail servers: is this one, which recipients it names, and their words.

Servers that send no delivery-status part still follow a few shapes: a recipient on a line of its own
or at the start of one (qmail, Postfix, Exim, Yahoo, Zoho, Exchange), a phrase that introduces it
("Recipient address:", "could not be delivered to:", "RCPT TO:<…>"), and the server's reply below it.
Each recipient gets the words between its line and the next recipient's; the words before the first
recipient (the notice's greeting) are used only when a recipient has none of its own.
"""

from __future__ import annotations

import email.utils
import html
import re
from dataclasses import replace
from email.message import Message
from html.parser import HTMLParser
from typing import TYPE_CHECKING

from mailer.inbound import phrases as P
from mailer.inbound import remotes
from mailer.inbound.classify import Refusal
from mailer.inbound.families import command_in, ezweb_reason, family, gmail_state, hint_in
from mailer.inbound.reading import DAEMON_NAMES, header, own_parts, part_text
from mailer.text import one_line

if TYPE_CHECKING:
    from mailer.inbound.reports import Finding

_LOCAL = r"[\w.!#$%&'*+/=?^`{|}~-]+"
_DOMAIN = r"(?:\[[\d.]+\]|[\w-]+(?:\.[\w-]+)*\.[^\W\d_][\w-]*)"
ADDRESS = re.compile(rf"(?<![\w.+-]){_LOCAL}@{_DOMAIN}(?![\w-])")
_ANGLE = rf"[<\"'(\[]?(?:smtp:)?({_LOCAL}@{_DOMAIN})[>\"')\]]?"

# Where a notice starts quoting the returned message: words below it are ours, not the server's.
_COPY_STARTS = re.compile(
    r"^[ \t]*(?:-{2,}.*?(?:copy of the (?:original )?message|below this line|original message|message follows"
    r"|returned message|undelivered message|message header follows|message headers? follow|rfc822)"
    r"|original message headers:|en-t.tes de message d'origine|intestazioni originali del messaggio"
    r"|content-type: (?:message/rfc822|text/rfc822-headers)|--- below this line is a copy of the message"
    r"|\*\*\* ?(?:original message|message header) ?.*\*\*\*|the original message was:?$"
    r"|unsent message below|your message reads \(in part\):|here is a copy of the first part of the message"
    r"|original message follows|below is a copy of the original message"
    r"|\[?message header\]?:?$|-+ ?(?:original|returned) (?:message|mail) ?-*)",
    re.I | re.M,
)
# Phrases that introduce a failed recipient somewhere in a line.
_INTRODUCED = re.compile(
    r"(?:original-recipient|final-recipient|failed recipient|recipient address|intended recipient|unknown user"
    r"|undeliverable[ \t]+(?:address|to)|undeliverable|delivery failed|(?:could not|couldn't|cannot) be delivered to|(?:wasn't|was not|not) delivered to|did not reach the following"
    r" recipient|your message to|addressed to|the following message to|you sent mail to|failed to deliver to"
    r"|mailbox is full|error-for|rcpt to|smtp=|local mailbox|recipient|address|destinatario|empfänger|destinataire"
    r"|following (?:address|recipient)(?:\(?e?s\)?)?)[ \t]*:?[ \t]*(?:rfc822;[ \t]*|smtp;[ \t]*)?" + _ANGLE,
    re.I,
)
_LINE_START = re.compile(rf"^[ \t]*(?:(?:[*•]|-{{1,2}})[ \t]+)?{_ANGLE}(?=$|[\s:.,;>\]\"'(]|\.\.\.)", re.I)
# "Some label: someone@example.org" with the address ending the line ("Invalid final delivery userid: …").
_LABELLED = re.compile(rf"^[ \t]*[\w][\w .'/()-]{{0,50}}:[ \t]*{_ANGLE}[ \t.]*$", re.I)

# How mail servers' notices are recognised without a delivery-status part.
_NOTICE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (?:status notification|failure|failed|problem|report|notification)"
    r"|mail delivery failed|failure notice|returned mail|returned to sender|non[- ]?delivery|nondeliverable"
    r"|could not send message|message not delivered|mail system error|delivery has failed|unzustellbar"
    r"|non remis|non recapitabile|no se puede entregar|mail failure|delivery notification|rejected:|bounce"
    r"|failed delivery|message delivery|undeliverable mail|error sending message|delayed mail|warning: "
    r"|notice: mail delivery status|message you sent|nicht zustellbar|n[ãa]o entregue|niedostarczon"
    r"|could not be delivered|not delivered|unable to deliver|failed mail|mail error",
    re.I,
)
_NOTICE_BODY = re.compile(
    r"this is the (?:mail system at host|postfix program|qmail-send program|mail delivery agent)"
    r"|hi\. this is the qmail|created automatically by mail delivery software|delivery has failed to these recipients"
    r"|your message did not reach some or all of the intended recipients|could not be delivered to"
    r"|the following address(?:es)? (?:had|failed)|following recipient\(?s?\)? (?:failed|could not)"
    r"|delivery to the following recipients? (?:failed|has been delayed)|did not reach the following recipient"
    r"|transcript of session follows|diagnostic information for administrators|undeliverable message"
    r"|was not delivered to|unable to deliver (?:your )?message|message could not be delivered"
    r"|permanent(?:ly)? (?:error|fatal|failure|failed)|your message (?:wasn't|was not|couldn't be|could not be)"
    r" delivered|delivery status notification|message you sent|not be delivered",
    re.I,
)
_DELAY = re.compile(
    r"warning: message .*delayed|message (?:still )?undelivered after|has not yet been delivered"
    r"|delivery to the following recipients? has been delayed|will (?:continue to )?(?:retry|try)"
    r"|delivery attempts will continue|this is a warning message only|delayed mail|delivery (?:status )?delay"
    r"|no action is required on your part|you do not need to resend your message|will be retried",
    re.I,
)
_FAILURE_WORDS = re.compile(
    r"\b[45]\d\d\b|\b[45]\.\d{1,3}\.\d{1,3}\b|permanent|could not be delivered|couldn't be delivered|undeliverable"
    r"|failed|not (?:be )?delivered|rejected|unknown|does not exist|not found|no such|invalid|refused|quota|full"
    r"|not recognized|disabled|suspended",
    re.I,
)
_AUTO_REPLY_SUBJECT = re.compile(r"^(?:auto:|auto response:|automatic reply:|out of (?:the )?office:)", re.I)


def is_notice(message: Message) -> bool:
    """A mail server's notice about a delivery: signed like one, titled like one, or worded like one."""
    if is_auto_reply(message):
        return False
    _name, sender = email.utils.parseaddr(header(message, "From"))
    local = sender.partition("@")[0].lower()
    signed = local in DAEMON_NAMES or local in ("mailer_daemon", "mail-delivery-system", "mailerdaemon",
                                                "bounce", "bounces", "nobody", "root", "daemon")
    named = re.search(r"mail delivery (?:system|subsystem)|mailer[- ]daemon|postmaster|mail administrator"
                      r"|system administrator|mail system", header(message, "From"), re.I) is not None
    titled = _NOTICE_SUBJECT.search(header(message, "Subject")) is not None
    null_sender = header(message, "Return-Path").strip() in ("<>", "")  and header(message, "Return-Path") != ""
    text = notice_text(message)
    worded = _NOTICE_BODY.search(text[:6000]) is not None
    if not (signed or named or titled or worded or null_sender):
        return False
    if not (signed or named or worded) and not (titled and _FAILURE_WORDS.search(text[:6000])):
        return False
    if _FAILURE_WORDS.search(text[:8000]) or _any_reason(text[:8000]) or _DELAY.search(text[:8000]):
        return True
    # A mail server's notice in words we do not read, naming the recipients it failed.
    return (signed or named) and bool(_named_lines(text[:8000], _excluded(message, None)))


def is_auto_reply(message: Message) -> bool:
    """Signs of an automatic answer that mail servers' own notices never carry (RFC 3834 and vendors')."""
    if header(message, "X-Apple-Action").strip().lower() == "vacation":
        return True
    if re.search(r"\b(?:oof|autoreply)\b", header(message, "X-Auto-Response-Suppress"), re.I) and \
            _AUTO_REPLY_SUBJECT.search(header(message, "Subject").strip()):
        return True
    if _AUTO_REPLY_SUBJECT.search(header(message, "Subject").strip()):
        return True
    return bool(P.VACATION.search(notice_text(message)[:3000].lower()))


def _any_reason(text: str) -> bool:
    lowered = one_line(text).lower()
    return any(p.search(lowered) for p in (P.USER_UNKNOWN, P.HOST_UNKNOWN, P.MAILBOX_FULL, P.SUSPENDED))


# --- the notice's text ------------------------------------------------------------------------------


class _TextOfHtml(HTMLParser):
    """The visible text of an HTML notice, a line per block (Exchange and Office 365 send only HTML)."""

    BLOCKS = frozenset({"br", "p", "div", "tr", "li", "table", "h1", "h2", "h3", "h4", "pre", "blockquote", "td"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("style", "script", "head", "title"):
            self.skip += 1
        elif tag in self.BLOCKS:
            self.chunks.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "head", "title"):
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCKS:
            self.chunks.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.chunks.append(data)


def html_text(markup: str) -> str:
    parser = _TextOfHtml()
    try:
        parser.feed(markup)
        parser.close()
    except (AssertionError, ValueError):
        return html.unescape(re.sub(r"<[^>]+>", " ", markup))
    lines = ("".join(parser.chunks).replace("\xa0", " ")).split("\n")
    return "\n".join(line.rstrip() for line in lines)


def full_text(message: Message) -> str:
    """The notice's text parts (HTML turned to text when a part has no plain text), not the returned message's."""
    plain, markup = [], []
    for part in own_parts(message):
        if part.is_multipart():
            continue
        content_type = part.get_content_type()
        if content_type == "text/plain":
            plain.append(part_text(part))
        elif content_type == "text/html":
            markup.append(html_text(part_text(part)))
    if not plain and not markup and not message.is_multipart() and message.get_content_maintype() != "text":
        plain.append(part_text(message))
    text = "\n".join(plain) if any(p.strip() for p in plain) else "\n".join(markup)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if re.match(r"^\s*(?:fwd?|tr|wg):", header(message, "Subject"), re.I):
        text = re.sub(r"^>+ ?", "", text, flags=re.M)  # a notice forwarded to the bounce mailbox
    return text


def notice_text(message: Message) -> str:
    """The server's own words: the text parts up to where the returned message is quoted."""
    text = full_text(message)
    quoted = _COPY_STARTS.search(text)
    return text[: quoted.start()] if quoted else text


# --- recipients and their words ----------------------------------------------------------------------


def _excluded(message: Message, original: Message | None) -> set[str]:
    """Addresses that are not a failed recipient: the notice's sender and addressee, our own From."""
    found: set[str] = set()
    for headers, names in ((message, ("From", "To", "Return-Path", "Sender", "Reply-To", "Delivered-To")),
                           (original, ("From", "Sender", "Return-Path", "Reply-To"))):
        if headers is None:
            continue
        for name in names:
            found.update(a.lower() for _n, a in email.utils.getaddresses([header(headers, name)]) if "@" in a)
    return found


_SUMMARY_TO = re.compile(rf"^[ \t]*to:[ \t]*{_ANGLE}[ \t]*$", re.I)


def _anchors(text: str, excluded: set[str]) -> list[tuple[int, str]]:
    """(line index, address) of every line that names a failed recipient.

    A "To:" line (the summary of the returned message some notices give) counts only when nothing else does.
    """
    anchors = _named_lines(text, excluded)
    if anchors:
        return anchors
    summary = [(index, found.group(1)) for index, line in enumerate(text.split("\n"))
               if (found := _SUMMARY_TO.match(line)) and found.group(1).lower() not in excluded]
    return summary[:1]


def _named_lines(text: str, excluded: set[str]) -> list[tuple[int, str]]:
    anchors = []
    for index, line in enumerate(text.split("\n")):
        stripped = line.strip()
        if not stripped or ":" in stripped[:25] and re.match(
                r"^(?:from|to|cc|bcc|reply-to|return-path|sender|x-[\w-]+|message-id|received|reporting-mta|date|subject"
                r"|original[- ]sender|sender-mta|remote-mta|envelope-from|mail from|originator|author"
                r"|remote-mta|x-postfix-sender|original-mail-from|arrival-date)\s*:", stripped, re.I):
            continue
        # "550-someone@example.org is not…" continues a server's multi-line reply; it names no new recipient.
        reply_line = re.match(r"^\s*[245]\d\d[- ]", line) is not None
        found = (None if reply_line else _LINE_START.match(line)) or _INTRODUCED.search(line) or (
            None if reply_line else _LABELLED.match(line))
        if found is None:
            continue
        address = found.group(1).strip(".")
        local = address.partition("@")[0].lower()
        if address.lower() in excluded or local in DAEMON_NAMES or local in ("mailer_daemon", "abuse"):
            continue
        anchors.append((index, address))
    return anchors


def recipient_blocks(text: str, excluded: set[str]) -> tuple[dict[str, tuple[str, str]], dict[str, str], str]:
    """Each named recipient's words ({lower-cased address: (the telling part, all of it)}), the addresses as
    written, and the greeting."""
    lines = text.split("\n")
    anchors = _anchors(text, excluded)
    chunks: dict[str, list[str]] = {}
    spelled: dict[str, str] = {}
    # Consecutive lines naming the same recipient ("  x@y", then "SMTP error … RCPT TO:<x@y>") are one chunk.
    runs = [(index, address) for position, (index, address) in enumerate(anchors)
            if position == 0 or address.lower() != anchors[position - 1][1].lower()
            or index - anchors[position - 1][0] > 2]
    for position, (index, address) in enumerate(runs):
        end = runs[position + 1][0] if position + 1 < len(runs) else len(lines)
        key = address.lower()
        spelled.setdefault(key, address)
        chunks.setdefault(key, []).append("\n".join(lines[index:end]))
    greeting = "\n".join(lines[: anchors[0][0]]) if anchors else text
    # A recipient named twice (a summary, then the details for administrators): the server's reply is in
    # the chunks that carry a code or a telling phrase; the others are the notice's own words.
    words = {}
    for key, parts in chunks.items():
        telling = parts
        if len(parts) > 1:
            telling = [part for part in parts if _has_code(part)] or [part for part in parts if _has_reason(part)]
        words[key] = ("\n".join(telling or parts), "\n".join(parts))
    return words, spelled, greeting


def recipient_texts(message: Message) -> dict[str, str]:
    """Each recipient's words in the notice's text part, for a delivery-status report that left them out."""
    text = notice_text(message)
    blocks, _spelled, _greeting = recipient_blocks(text, set())
    return {key: one_line(block)[:1000] for key, (_telling, block) in blocks.items()}


def findings(message: Message, original: Message | None) -> list[Finding]:
    from mailer.inbound.reports import (  # imported here: reports imports this module
        Finding,
        message_id_of,
        single_address,
    )

    text = notice_text(message)
    excluded = _excluded(message, original)
    blocks, spelled, greeting = recipient_blocks(text, excluded)
    kind = family(message, text)
    failed = [a for _n, a in email.utils.getaddresses([header(message, "X-Failed-Recipients")]) if "@" in a]
    delayed = bool(_DELAY.search(header(message, "Subject")) or _DELAY.search(text[:4000]))
    message_id = message_id_of(original) or _quoted_message_id(full_text(message)[len(text):])
    returned_to = single_address(original, "To")
    recipients = list(dict.fromkeys(failed)) or [spelled[key] for key in blocks]
    if not recipients and returned_to:
        recipients = [returned_to]
    if not recipients:
        recipients = [None]  # only the returned Message-ID can tell who it was
    result = []
    for recipient in recipients:
        block, context = blocks.get((recipient or "").lower(), ("", ""))
        if len(recipients) == 1 and not _has_reason(context):
            block = context = "\n".join(filter(None, (greeting, context))) if context else text
        words = one_line(block)[:1500]
        others = (returned_to,) if returned_to and len(recipients) == 1 and returned_to != recipient else ()
        refusal = refusal_of(words, "delayed" if delayed else "failed", one_line(context),
                             (recipient or "").rpartition("@")[2], kind)
        if kind == "ezweb":  # EZweb states its reason once, above the recipients
            hint = refusal.hint or hint_in(one_line(greeting), kind)
            refusal = replace(refusal, hint=ezweb_reason(message, hint, refusal.command, recipient))
        result.append(Finding(recipient, refusal, others, message_id))
    return result


def _has_code(block: str) -> bool:
    return bool(re.search(r"\b[45]\d\d\b|\b[45]\.\d\.\d{1,3}\b", block))


def _has_reason(block: str) -> bool:
    return _has_code(block) or _any_reason(block) or bool(hint_in(block))


def refusal_of(words: str, action: str, context: str = "", domain: str = "", kind: str = "") -> Refusal:
    """A refusal from a recipient's words; the SMTP command may be told anywhere in its context."""
    command = command_in(words, kind) or command_in(context, kind)
    hint = hint_in(words, kind)
    state = gmail_state(words)
    if state is not None:
        command, hint = state
    # Gmail's old notices quote the other server's reply in prose; only a specific code in it counts.
    quoted = "google tried to deliver your message" in context.lower() and not state
    return Refusal(diagnostic=words, command=command, action=action, hint=hint,
                   remote=remotes.host_in(context or words), domain=domain, specific_codes=quoted)


def _quoted_message_id(text: str) -> str | None:
    """The Message-ID line of a returned message quoted as text below a plain-text notice."""
    found = re.search(r"^Message-ID:[ \t]*(<[^<>\s@]+@[^<>\s]+>)", text, re.I | re.M)
    return found.group(1) if found else None
