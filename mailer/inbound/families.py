"""Which kind of mail server wrote a report, and what its own words and codes say: the SMTP command a
refusal answered, and reasons particular servers state in terms of their own (Exchange's RESOLVER codes,
qmail's and Exim's messages, Gmail's states, Facebook's and PowerMTA's codes)."""

from __future__ import annotations

import re
from email.message import Message

from mailer.inbound.reading import header

_EXIM_SUBJECT = re.compile(r"mail delivery failed(?:: returning message to sender)?|warning: message [^ ]+ delayed"
                           r"|delivery status notification|mail failure|message frozen"
                           r"|error\(s\) in forwarding or filtering", re.I)
# Phrases that mean a reason only in one family's reports (elsewhere the general rules decide).
_FAMILY_HINTS = {
    # Exim (and mail.ru, MXLogic, which are Exim): its router's and transports' own messages.
    "exim": (
        (re.compile(r"user not found", re.I), "user_unknown"),
        (re.compile(r"delivery to (?:file|pipe) forbidden|local delivery failed|lmtp error after ", re.I),
         "server_error"),
        (re.compile(r"angle-brackets nested too deep|expected word or \"<\"|domain missing in source-routed address"
                    r"|malformed address:", re.I), "protocol"),
        (re.compile(r'too many "received" headers', re.I), "content"),
    ),
    "outlook": (
        (re.compile(r"requested action not taken: mailbox unavailable", re.I), "user_unknown"),
    ),
    # Google Workspace relaying for its customers (Gmail's notice, X-Gm-Message-State).
    "gsuite": (
        (re.compile(r"because the address couldn't be found", re.I), "user_unknown"),
        (re.compile(r"null mx", re.I), "not_accepting"),
        (re.compile(r" had no relevant answers\.| responded with code nxdomain", re.I), "routing"),
    ),
    # au (KDDI)'s EZweb mobile mail.
    "ezweb": (
        (re.compile(r"the user\(s\) account is temporarily over quota", re.I), "mailbox_full"),
        (re.compile(r"the user\(s\) account is (?:disabled|temporarily limited)\.", re.I), "mailbox_disabled"),
        (re.compile(r"your message was not delivered within ", re.I), "expired"),
        (re.compile(r"each of the following recipients was rejected by a remote mail server", re.I), "undetermined"),
    ),
    "aol": (
        (re.compile(r"type=mx: malformed or unexpected name server reply", re.I), "not_accepting"),
    ),
}

# How servers name the SMTP command a refusal answered. Postfix's "(in reply to RCPT TO command)" is read
# only in Postfix's own notices (see family): elsewhere it is a relayed quotation, and the
# established classifiers do not take it for the command there either.
_POSTFIX_COMMANDS = (
    (re.compile(r"in reply to end of data", re.I), "DATA"),
    (re.compile(r"in reply to (rcpt|mail|data|helo|ehlo)", re.I), None),
)
_COMMANDS = (
    (re.compile(r"after end of (?:data|message)", re.I), "DATA"),
    (re.compile(r"(?:error|failed|problem)[^.\n]{0,40}? after (rcpt|mail|data|helo|ehlo)\b", re.I), None),
    (re.compile(r"(?:>>>|sent <<<) ?(rcpt|mail|data|helo|ehlo)\b", re.I), None),
    (re.compile(r"rcpt to generated following response", re.I), "RCPT"),
    (re.compile(r"data command generated response", re.I), "DATA"),
    (re.compile(r"server response to mail from", re.I), "MAIL"),
    (re.compile(r"unexpected response to ehlo/helo", re.I), "HELO"),
    (re.compile(r"smtp connection failed,|unexpected connection response from server", re.I), "CONN"),
    (re.compile(r"does not like recipient|\[rcpt_to\]", re.I), "RCPT"),
    (re.compile(r"failed on data command|failed after i sent the message|\[data\]|for text command", re.I), "DATA"),
    (re.compile(r"but sender was rejected|\[mail_from\]", re.I), "MAIL"),
    (re.compile(r"but my name was rejected|refused to talk to me", re.I), "HELO"),
    (re.compile(r"but greeting failed|after initial connection", re.I), "CONN"),
    (re.compile(r"smtp error .* (rcpt|mail|data) command|following (rcpt|mail|data|helo|ehlo) command", re.I), None),
    (re.compile(r"\bsmtp:(rcpt|mail|data)\b", re.I), None),
    (re.compile(r"-+ ?smtp command\s+(rcpt|mail|data|helo|ehlo)\b", re.I), None),
    (re.compile(r"\bin (rcpt|mail) (?:to|from)\b|\bend of (data)\b", re.I), None),
    (re.compile(r" (rcpt|mail|data) +command\b", re.I), None),
)
# Reasons particular servers state in their own words or codes, whatever status code they put on them.
_HINTS = (
    # Local delivery agents' words (mail.local, maildrop, vdeliver, vpopmail, Dovecot's LDA).
    (re.compile(r"mail\.local: .*(?:unknown user:|user unknown|invalid mailbox path|user missing home directory)"
                r"|maildrop: .*(?:invalid user specified\.|cannot find system user)|mailbox doesn't exist: "
                r"|vdeliver: .*(?:invalid or unknown base user or domain|invalid or unknown virtual user"
                r"|user name does not refer to a virtual user)", re.I), "user_unknown"),
    (re.compile(r"vdelivermail: .*(?:account is locked email bounced|user does not exist, but will deliver to)",
                re.I), "filtered"),
    (re.compile(r"resolver\.adr\.(?:ex)?recip(?:ient)?notfound|\(000c05a6\)|recipnotfound", re.I), "user_unknown"),
    (re.compile(r"smtpsend\.dns\.nonexistentdomain|dns error: domain name not found"
                r"|dns error: dns server returned answer with no data"
                r"|all host address lookups failed permanently|all relevant mx records point to non-existent hosts"
                r"|unrouteable address|sorry, i couldn't find any host |no such domain\.|illegal host/domain name found"
                r"|as the remote domain doesnt exist"
                r"|the mail could not be delivered to the recipient because the domain is not reachable", re.I),
     "no_such_domain"),
    (re.compile(r"resolver\.adr\.reciplimit|\(00010256\)", re.I), "too_many"),
    (re.compile(r"resolver\.rst\.authrequired|\(000b0981\)", re.I), "authentication"),
    (re.compile(r"resolver\.rst\.recipsizelimit|mail size limit exceeded", re.I), "too_large"),
    (re.compile(r"queue\.expired|retry timeout exceeded|this message has been in the queue too long"
                r"|retry time not reached for any host after a long failure period"
                r"|all hosts have been failing for a long time", re.I), "expired"),
    (re.compile(r"no mailbox here by that name|does not like recipient\.(?!.*remote host said)|not listed in (?:domino directory|public"
                r" name & address book)|non répertorié dans l'annuaire domino|domino ディレクトリには見つかりません"
                r"|^(?:unknown user: [\w.+-]+@|invalid final delivery userid)|is unavailable: user not found", re.I), "user_unknown"),
    (re.compile(r"mailbox is full|error: quota exceed|disk quota exceeded|as their mailbox is full", re.I),
     "mailbox_full"),
    (re.compile(r"an mx or srv record indicated no smtp service|no host found for existing smtp connection", re.I),
     "not_accepting"),
    (re.compile(r"but sender was rejected", re.I), "sender_rejected"),
    (re.compile(r"but my name was rejected", re.I), "blocked"),
    (re.compile(r"mailaddress is administrative?le?y disabled", re.I), "mailbox_disabled"),
)
# Facebook's published response codes ("550 5.1.1 RCP-P1").
_FACEBOOK = {"RCP-P1": "user_unknown", "INT-P1": "user_unknown", "INT-P3": "user_unknown", "INT-P4": "user_unknown",
             "RCP-P2": "filtered", "RCP-P3": "filtered", "POL-P1": "blocked", "POL-P2": "blocked",
             "MSG-P1": "too_large", "INT-P2": "too_large", "MSG-P2": "content", "MSG-P3": "content",
             "POL-P6": "content", "POL-P7": "content", "POL-P3": "not_accepting", "POL-P4": "not_accepting",
             "POL-T1": "not_accepting", "POL-T2": "not_accepting", "POL-T3": "not_accepting",
             "DNS-P1": "sender_rejected", "DNS-P2": "sender_rejected", "DNS-T1": "sender_rejected",
             "DNS-P3": "sender_rejected", "DNS-T2": "sender_rejected", "CON-T1": "server_error",
             "RCP-T1": "server_error", "CON-T2": "too_many", "CON-T3": "too_many", "POL-P5": "virus",
             "RCP-T4": "mailbox_disabled", "MSG-T1": "undetermined", "CON-T4": "undetermined"}
_GMAIL_STATES = {"13": ("EHLO", "blocked"), "14": ("RCPT", "user_unknown"), "15": ("DATA", "filtered"),
                 "17": ("DATA", "filtered"), "18": ("DATA", "filtered")}

def family(message: Message, text: str) -> str:
    """Which kind of server wrote a report, where its words mean more than the general rules know:
    "postfix", "exim", "outlook", "aol", "gsuite", "ezweb" or ""."""
    subject, sender = header(message, "Subject").strip(), header(message, "From")
    if subject == "Undelivered Mail Returned to Sender" or "this is the mail system at host yandex" in text[:2000].lower():
        return "postfix"
    exim = sum((sender.startswith("Mail Delivery System"),
                bool(re.match(r"<\w{7}-\w{6}-\w{2}@", header(message, "Message-ID").strip())),
                bool(_EXIM_SUBJECT.search(subject))))
    if exim >= 2 or (exim and "mail.ru" in sender.lower()) or header(message, "X-MXL-Hash") or header(
            message, "X-MX-Bounce"):
        return "exim"
    outlook = sum((bool(header(message, "X-Message-Delivery")), bool(header(message, "X-Message-Info")),
                   "delivery status notification" in subject.lower(),
                   ".hotmail.com" in " ".join(message.get_all("Received") or [])))
    if outlook >= 2:
        return "outlook"
    if header(message, "X-AOL-IP"):
        return "aol"
    received = " ".join(message.get_all("Received") or [])
    ezweb = sum((bool(re.search(r"postmaster@(?:ezweb\.ne\.jp|au\.com)", sender, re.I)),
                 subject == "Mail System Error - Returned Mail",
                 "ezweb.ne.jp (EZweb Mail) with" in received or ".au.com (" in received))
    if ezweb >= 2:
        return "ezweb"
    if ("<mailer-daemon@googlemail.com>" in sender.lower() and "delivery status notification" in subject.lower()
            and header(message, "X-Gm-Message-State")):
        return "gsuite"
    return ""


def command_in(text: str, kind: str = "") -> str:
    """The SMTP command a server's words answer (RCPT, MAIL, DATA, HELO, CONN), or ""; Postfix's "in reply
    to" only in a report of the "postfix" family."""
    for pattern, command in (*_POSTFIX_COMMANDS, *_COMMANDS) if kind == "postfix" else _COMMANDS:
        found = pattern.search(text)
        if found is None:
            continue
        if command is None:
            # The last ">>> COMMAND" of a transcript is the one refused.
            if pattern.pattern.startswith("(?:>>>"):
                found = list(pattern.finditer(text))[-1]
            command = next(group for group in found.groups() if group).upper()
        return "HELO" if command == "EHLO" else command
    return ""


def hint_in(text: str, kind: str = "") -> str:
    """A reason the words state in a particular server's own terms (see _HINTS), or ""; `kind` is the
    report's family (see family), whose own phrases count too."""
    code = re.search(r"\b((?:RCP|INT|POL|MSG|DNS|CON)-[PT]\d)\b", text)
    if code and code.group(1) in _FACEBOOK:
        return _FACEBOOK[code.group(1)]
    for pattern, reason in _FAMILY_HINTS.get(kind, ()):
        if pattern.search(text):
            return reason
    for pattern, reason in _HINTS:
        if pattern.search(text):
            return reason
    return ""


def gmail_state(words: str) -> tuple[str, str] | None:
    """Gmail's old notices end the quoted reply with "(state N)": the command and reason that state means."""
    state = re.search(r"\(state (\d+)\)\.", words)
    return _GMAIL_STATES.get(state.group(1)) if state else None


def ezweb_reason(message: Message, hint: str, command: str, recipient: str | None) -> str:
    """EZweb's notices: a refusal at RCPT, or any refusal of an address outside EZweb with no other reason
    given, is an unknown user (EZweb says no more); its own spam filter marks its refusals X-SPASIGN: NG."""
    if header(message, "X-SPASIGN").strip() == "NG":
        return "filtered"
    if command == "RCPT":
        return "user_unknown"
    if hint:
        return hint
    domain = (recipient or "").rpartition("@")[2].lower()
    return "" if domain in ("ezweb.ne.jp", "au.com") or domain.endswith((".ezweb.ne.jp", ".au.com")) else "user_unknown"
