"""Reading a report: which recipients it is about and what was said about each, in every common format.

RFC 3464 delivery status notifications (and their RFC 6533 UTF-8 form), RFC 5965 feedback reports,
Hotmail's complaint format, Amazon SES notifications sent by email, and the plain-text (or HTML-only)
notices of the major mail servers and providers: Postfix, Exim, Sendmail, qmail, Courier, Exchange and
Office 365, Domino, GroupWise, Gmail, Yahoo, AOL, Outlook.com, mail.ru, Yandex and others. Nothing is
judged here (see classify); each recipient gets the words that were written about it.
"""

from __future__ import annotations

import email.utils
import json
import logging
import re
from dataclasses import dataclass, field, replace
from email.message import Message
from email.parser import HeaderParser
from typing import Literal

from mailer.inbound import families, notices, remotes
from mailer.inbound.classify import Refusal, status_in
from mailer.inbound.reading import POLICY, first_subpart, header, is_auto_reply, own_parts, part_text

log = logging.getLogger("mailer.bounces")

Kind = Literal["bounce", "complaint", "auto_reply", "none"]

_MSGID = re.compile(r"<[^<>\s@]+@[^<>\s]+>")
_XTEXT_UTF8 = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
_XTEXT_PLUS = re.compile(r"\+([0-9A-Fa-f]{2})")
# Parts that carry the returned message, or its headers, as a parsed message.
_RETURNED_MESSAGE_TYPES = frozenset({"message/rfc822", "message/global", "message/rfc822-headers",
                                     "message/global-headers"})
_DELIVERY_STATUS_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status",
                                    "message/x-delivery-status"})
# Feedback types that are the recipient objecting to our mail. "opt-out" (and "opt-out-list") is how
# some providers (iCloud among them) report a person's "this is junk" or "unsubscribe"; not-spam, virus,
# auth-failure (DMARC reports) and other are not about the person's wishes.
# PowerMTA's own bounce categories (X-PowerMTA-BounceCategory in each recipient's group).
_POWERMTA = {"bad-domain": "no_such_domain", "bad-mailbox": "user_unknown", "inactive-mailbox": "mailbox_disabled",
             "message-expired": "expired", "no-answer-from-host": "routing", "policy-related": "policy",
             "quota-issues": "mailbox_full", "routing-errors": "server_error", "spam-related": "spam"}
COMPLAINT_TYPES = frozenset({"abuse", "fraud", "opt-out", "opt-out-list", "complaint"})


@dataclass(frozen=True)
class Finding:
    """One recipient of a report, and what the report says about it."""

    recipient: str | None
    refusal: Refusal = field(default_factory=Refusal)
    # Other addresses the report gives for the same person (Original-Recipient and Final-Recipient both,
    # the returned message's To): tried in turn when `recipient` matches no contact.
    others: tuple[str, ...] = ()
    message_id: str | None = None  # the Message-ID of the message it is about, ours if we sent it


@dataclass(frozen=True)
class Report:
    kind: Kind
    findings: tuple[Finding, ...] = ()
    complaint_type: str = ""


NOTHING = Report("none")


def read(message: Message) -> Report:
    """What a message in the bounce mailbox is: a bounce, a complaint, an automatic reply, or nothing."""
    parts = list(own_parts(message))
    types = [part.get_content_type() for part in parts]
    for part, content_type in zip(parts, types, strict=True):
        if content_type == "message/feedback-report":
            return _feedback_report(message, part)
    if _is_hotmail_complaint(message):
        return _hotmail_complaint(message)
    relay = _relay_notification(message)
    if relay is not None:
        return relay
    statuses = [part for part, content_type in zip(parts, types, strict=True) if content_type in _DELIVERY_STATUS_TYPES]
    if statuses:
        findings = [f for part in statuses for f in _delivery_status(message, part)]
        if findings or _all_groups_fine(statuses):
            return Report("bounce", _office365(message, findings)) if findings else NOTHING
    if _report_type(message) == "feedback-report":
        return _feedback_report(message, None)
    wrapped = _wrapped_report(message)
    if wrapped is not None:
        return read(wrapped)
    if notices.is_notice(message):
        return Report("bounce", _office365(message, notices.findings(message, returned_headers(message))))
    if is_auto_reply(message) or notices.is_auto_reply(message):
        return Report("auto_reply")
    return NOTHING


_OFFICE365_HEADERS = ("X-MS-Exchange-Message-Is-Ndr", "X-Microsoft-Antispam-PRVS", "X-Exchange-Antispam-Report-Test",
                      "X-Exchange-Antispam-Report-CFA-Test", "X-MS-Exchange-CrossTenant-OriginalArrivalTime",
                      "X-MS-Exchange-CrossTenant-FromEntityHeader",
                      "X-MS-Exchange-Transport-CrossTenantHeadersStamped")


def _office365(message: Message, findings: list[Finding]) -> tuple[Finding, ...]:
    """Office 365's reports say what they mean by their status codes: that meaning, for its reports."""
    signs = sum(1 for name in _OFFICE365_HEADERS if header(message, name))
    signs += "undeliverable:" in header(message, "Subject").lower()
    signs += bool(re.search(r"\.(?:outbound\.protection|prod)\.outlook\.com\b",
                            " ".join(message.get_all("Received") or []) + header(message, "Message-ID")))
    if signs < 2:
        return tuple(findings)
    marked = []
    for finding in findings:
        refusal = finding.refusal
        status = refusal.status
        if not status or status.endswith(".0.0"):
            status = status_in(refusal.diagnostic) or status
        meaning = remotes.office365_reason(status)
        if meaning and not refusal.hint:
            refusal = replace(refusal, hint=meaning, status=status)
        marked.append(replace(finding, refusal=refusal))
    return tuple(marked)


def _wrapped_report(message: Message) -> Message | None:
    """A report that a gateway (adding a disclaimer, say) attached to a message of its own, whole."""
    for part in own_parts(message):
        if part.get_content_type() in ("message/rfc822", "message/global"):
            inner = first_subpart(part)
            if inner is not None and any(p.get_content_type() in _DELIVERY_STATUS_TYPES
                                         or p.get_content_type() == "message/feedback-report" for p in own_parts(inner)):
                return inner
    return None


def _report_type(message: Message) -> str:
    if message.get_content_type() != "multipart/report":
        return ""
    return (message.get_param("report-type", "", header="content-type") or "").strip().lower()


# --- RFC 3464 -------------------------------------------------------------------------------------


def _delivery_status(message: Message, part: Message) -> list[Finding]:
    original = returned_headers(message)
    message_id = message_id_of(original)
    groups = _status_groups(part)
    texts = notices.recipient_texts(message)
    kind = families.family(message, notices.full_text(message))
    findings = []
    # With one recipient, the notice's words are all about it (its line may not name it the usual way).
    single = sum(1 for g in groups if header(g, "Final-Recipient") or header(g, "Original-Recipient")) == 1
    for group in groups:
        final = typed_address(header(group, "Final-Recipient"))
        original_recipient = typed_address(header(group, "Original-Recipient"))
        if final is None and original_recipient is None:
            continue  # the per-message group, or a recipient group without an address we could use
        # Original-Recipient is the address we sent to; Final-Recipient may be an alias it expanded to.
        recipient = original_recipient or final
        action = (header(group, "Action").split() or [""])[0].lower().rstrip(";")
        code_field = header(group, "Diagnostic-Code")
        diagnostic_type, diagnostic = _diagnostic(code_field)
        status_field = header(group, "Status").strip()
        status = re.match(r"\d\.\d{1,3}\.\d{1,3}", status_field)
        extra = texts.get((recipient or "").lower()) or texts.get((original_recipient or "").lower()) or ""
        if not diagnostic or not _says_something(diagnostic):
            # The notice's own words, when the status part left the diagnostic out (Postfix, Courier).
            diagnostic = " ".join(filter(None, (diagnostic, extra)))
            if not diagnostic and status is None and len(groups) <= 2:
                diagnostic = notices.notice_text(message)[:600]
        elif status_field and status is None:
            diagnostic = f"{diagnostic} {status_field}"  # "Status: 553 Exceeded maximum inbound message size"
        command = families.command_in(diagnostic, kind) or families.command_in(extra, kind)
        if not command and single:
            command = families.command_in(notices.notice_text(message), kind)
        hint = (_POWERMTA.get(header(group, "X-PowerMTA-BounceCategory").strip().lower(), "")
                or families.hint_in(diagnostic, kind) or families.hint_in(extra, kind))
        remote = typed_host(header(group, "Remote-MTA")) or remotes.host_in(diagnostic) or remotes.host_in(extra)
        refusal = Refusal(status=status.group(0) if status else "", diagnostic=notices.one_line(diagnostic),
                          command=command, action=action, hint=hint, unix=diagnostic_type == "x-unix", remote=remote,
                          domain=(recipient or "").rpartition("@")[2])
        others = tuple(dict.fromkeys(a for a in (original_recipient, final) if a and a != recipient))
        findings.append(Finding(recipient, refusal, others, message_id))
    return findings


def _says_something(diagnostic: str) -> bool:
    """More than a bare code: words a reason could be read from."""
    return len(re.sub(r"[\d.\s#-]", "", diagnostic)) > 3


def _all_groups_fine(parts: list[Message]) -> bool:
    """Every recipient delivered, relayed or expanded: a success report, not a bounce."""
    actions = [header(group, "Action").strip().lower() for part in parts for group in _status_groups(part)]
    return any(actions) and all(a.split()[0] in ("delivered", "relayed", "expanded") for a in actions if a)


def _diagnostic(field_value: str) -> tuple[str, str]:
    """The type and text of a Diagnostic-Code ("smtp; 550 5.1.1 ..."), the text on one line."""
    kind, sep, text = field_value.partition(";")
    if not sep or " " in kind.strip():
        return "", notices.one_line(field_value)
    return kind.strip().lower(), notices.one_line(text)


def typed_host(field_value: str) -> str:
    """The host name of a "dns; mx.example.org" MTA field, or ""."""
    kind, sep, name = field_value.partition(";")
    if not sep or kind.strip().lower() != "dns":
        return ""
    name = name.strip().split()[0] if name.strip() else ""
    return name.strip("[]").rstrip(".").lower() if re.search(r"[a-z]", name, re.I) else ""


def typed_address(field_value: str) -> str | None:
    """The address of an "rfc822; someone@example.org" (or RFC 6533 "utf-8; ...") recipient field."""
    address_type, sep, address = field_value.partition(";")
    if not sep:
        address, address_type = address_type, "rfc822"  # some servers leave the type out
    if address_type.strip().lower() not in ("rfc822", "utf-8", "x-unknown", "unknown"):
        return None
    address = _XTEXT_UTF8.sub(lambda m: chr(int(m.group(1), 16)), address)
    address = _XTEXT_PLUS.sub(lambda m: chr(int(m.group(1), 16)), address).strip()
    found = notices.ADDRESS.search(address)
    return found.group(0) if found else None


def _status_groups(part: Message) -> list[Message]:
    """The field groups of a delivery-status part: per message first, then one per recipient."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and all(isinstance(p, Message) for p in payload):
        groups = list(payload)
        if part.get_content_type() == "message/delivery-status":
            return groups
        first, rest = groups[0], ""
    else:
        first = None
        raw = part.get_payload(decode=True)
        rest = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else (payload if isinstance(payload, str) else "")
    if first is not None:
        # The parser splits only message/delivery-status into groups. The UTF-8 form (RFC 6533) comes as
        # its first group with the others as that group's text; parse those groups the same way, as bytes
        # (the text form would have had its UTF-8 replaced as undecodable ASCII).
        raw = first.get_payload(decode=True)
        rest = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
    parser = HeaderParser(policy=POLICY)
    chunks = re.split(r"\n[ \t]*\n", rest.replace("\r\n", "\n"))
    parsed = [parser.parsestr(chunk.strip("\n") + "\n") for chunk in chunks if chunk.strip()]
    return ([first] if first is not None else []) + parsed


# --- complaints -----------------------------------------------------------------------------------


def _feedback_report(message: Message, part: Message | None) -> Report:
    if part is not None:
        report = first_subpart(part) or HeaderParser(policy=POLICY).parsestr(part_text(part))
    else:
        text = "\n".join(part_text(p) for p in own_parts(message) if not p.is_multipart())
        start = text.lower().find("feedback-type:")
        report = HeaderParser(policy=POLICY).parsestr(text[start:] if start >= 0 else "")
    feedback_type = header(report, "Feedback-Type").strip().lower()
    if feedback_type not in COMPLAINT_TYPES:
        log.debug("feedback report of type %r: not a complaint", feedback_type)
        return NOTHING
    original = returned_headers(message)
    returned_to = single_address(original, "To")
    # Many providers redact the recipient; then only the returned Message-ID ties it to us.
    rcpt = [a for a in (single_address(report, "Original-Rcpt-To"), single_address(report, "Removal-Recipient")) if a]
    recipient = rcpt[0] if rcpt else returned_to
    user_agent = notices.one_line(header(report, "User-Agent"))
    diagnostic = f"feedback-type {feedback_type}" + (f" from {user_agent}" if user_agent else "")
    others = (returned_to,) if returned_to and returned_to != recipient else ()
    finding = Finding(recipient, Refusal(diagnostic=diagnostic, hint="complaint"), others, message_id_of(original))
    return Report("complaint", (finding,), feedback_type)


def _is_hotmail_complaint(message: Message) -> bool:
    """Hotmail/Outlook.com's junk-mail reports (JMRP): the reported message attached (or, in the older form,
    sent back itself) with an X-HmXmrOriginalRecipient header that Hotmail adds only to these reports."""
    if header(message, "X-HmXmrOriginalRecipient"):
        return True
    original = returned_headers(message)
    if original is not None and header(original, "X-HmXmrOriginalRecipient"):
        return True
    _name, sender = email.utils.parseaddr(header(message, "From"))
    if sender.lower() not in ("staff@hotmail.com", "complaints@email-abuse.amazonses.com"):
        return False
    return "complaint about message from" in header(message, "Subject").lower()


def _hotmail_complaint(message: Message) -> Report:
    original = message if header(message, "X-HmXmrOriginalRecipient") else returned_headers(message)
    recipient = None
    if original is not None:
        recipient = single_address(original, "X-HmXmrOriginalRecipient") or single_address(original, "To")
    finding = Finding(recipient, Refusal(diagnostic="feedback-type abuse from Microsoft JMRP", hint="complaint"),
                      (), message_id_of(original))
    return Report("complaint", (finding,), "abuse")


# --- notifications of sending services (Amazon SES) sent by email --------------------------------------


def _relay_notification(message: Message) -> Report | None:
    """An Amazon SES bounce or complaint notification (JSON, possibly in an SNS envelope) sent as email."""
    if message.is_multipart():
        return None
    text = part_text(message).strip()
    if not text.startswith("{"):
        return None
    try:
        payload = json.loads(re.sub(r"!\n ?", "", text) if "notificationType" not in text[:2000] else text)
    except ValueError:
        try:
            payload = json.loads(re.sub(r"!\r?\n ?", "", text))
        except ValueError:
            return None
    if isinstance(payload, dict) and isinstance(payload.get("Message"), str):
        try:
            payload = json.loads(payload["Message"])
        except ValueError:
            return None
    if not isinstance(payload, dict):
        return None
    return ses_notification(payload)


def ses_notification(payload: dict[str, object]) -> Report | None:
    """Findings of an Amazon SES notification (notificationType Bounce or Complaint), else None."""
    kind = str(payload.get("notificationType") or payload.get("eventType") or "")
    mail = payload.get("mail") if isinstance(payload.get("mail"), dict) else {}
    message_id = None
    for item in mail.get("headers") or [] if isinstance(mail, dict) else []:
        if isinstance(item, dict) and str(item.get("name", "")).lower() == "message-id":
            found = _MSGID.search(str(item.get("value", "")))
            message_id = found.group(0) if found else None
    if kind == "Bounce" and isinstance(payload.get("bounce"), dict):
        bounce = payload["bounce"]
        permanent = bounce.get("bounceType") == "Permanent"
        subtype = str(bounce.get("bounceSubType") or "")
        findings = []
        for item in bounce.get("bouncedRecipients") or []:
            if not isinstance(item, dict) or "@" not in str(item.get("emailAddress", "")):
                continue
            kind_, diagnostic = _diagnostic(str(item.get("diagnosticCode") or ""))
            hint = {"MailboxFull": "mailbox_full", "MessageTooLarge": "too_large"}.get(subtype, "")
            status = str(item.get("status") or "")
            action = str(item.get("action") or ("failed" if permanent else "delayed"))
            refusal = Refusal(status=status if re.fullmatch(r"\d\.\d{1,3}\.\d{1,3}", status) else "",
                              diagnostic=diagnostic or f"{bounce.get('bounceType')} {subtype}".strip(),
                              command=families.command_in(diagnostic), action=action, hint=hint,
                              unix=kind_ == "x-unix")
            findings.append(Finding(str(item["emailAddress"]), refusal, (), message_id))
        return Report("bounce", tuple(findings))
    if kind == "Complaint" and isinstance(payload.get("complaint"), dict):
        complaint = payload["complaint"]
        feedback_type = str(complaint.get("complaintFeedbackType") or "abuse").lower()
        if feedback_type not in COMPLAINT_TYPES:
            return NOTHING
        findings = tuple(
            Finding(str(item["emailAddress"]), Refusal(diagnostic=f"feedback-type {feedback_type} from Amazon SES",
                                                       hint="complaint"), (), message_id)
            for item in complaint.get("complainedRecipients") or []
            if isinstance(item, dict) and "@" in str(item.get("emailAddress", "")))
        return Report("complaint", findings, feedback_type)
    if kind in ("Delivery", "Send", "Open", "Click"):
        return NOTHING
    return None


# --- the returned message ----------------------------------------------------------------------------


def returned_headers(message: Message) -> Message | None:
    """The headers of the returned message (message/rfc822 or text/rfc822-headers), if the report has them."""
    for part in own_parts(message):
        content_type = part.get_content_type()
        if content_type in _RETURNED_MESSAGE_TYPES:
            inner = first_subpart(part)
            if inner is None:
                return HeaderParser(policy=POLICY).parsestr(part_text(part))
            return inner
        if content_type == "text/rfc822-headers":
            return HeaderParser(policy=POLICY).parsestr(part_text(part).lstrip())
    return None


def message_id_of(headers: Message | None) -> str | None:
    found = _MSGID.search(header(headers, "Message-ID")) if headers is not None else None
    return found.group(0) if found else None


def single_address(headers: Message | None, name: str) -> str | None:
    """The address in a header that names exactly one (ours do), else None: several would be a guess."""
    if headers is None:
        return None
    found = [address for _name, address in email.utils.getaddresses([header(headers, name)]) if "@" in address]
    return found[0] if len(found) == 1 else None
