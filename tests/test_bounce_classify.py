"""The verdict rules one by one: status code, reply code, SMTP command and words together, for reports
written here in the shapes real servers use, each of the six ways the old reading went wrong, and the
same rules for SMTP replies while sending."""

from __future__ import annotations

import pytest

from mailer.inbound.bounces import Verdict, verdicts
from mailer.inbound.classify import Refusal, judge, reply_verdict
from mailer.inbound.reading import parse


def read(raw: str) -> list[Verdict]:
    return verdicts(parse(raw.encode()))


def dsn(*groups: str, subject: str = "Delivery Status Notification (Failure)", text: str = "Delivery report.") -> str:
    body = (f"--B\nContent-Type: text/plain\n\n{text}\n--B\nContent-Type: message/delivery-status\n\n"
            "Reporting-MTA: dns; mx.relay.example\n\n" + "\n".join(groups) + "\n--B--\n")
    return ("From: MAILER-DAEMON@relay.example\nTo: bounces@therapycentral.example\n"
            f"Subject: {subject}\nMIME-Version: 1.0\n"
            "Content-Type: multipart/report; report-type=delivery-status; boundary=B\n\n" + body)


def group(recipient: str, status: str, diagnostic: str = "", action: str = "failed", remote: str = "") -> str:
    lines = [f"Final-Recipient: rfc822; {recipient}", f"Action: {action}", f"Status: {status}"]
    if remote:
        lines.append(f"Remote-MTA: dns; {remote}")
    if diagnostic:
        lines.append(f"Diagnostic-Code: smtp; {diagnostic}")
    return "\n".join(lines) + "\n"


def one(raw: str) -> tuple[str, str, str | None]:
    found = read(raw)
    assert len(found) == 1, found
    return found[0].verdict, found[0].reason, found[0].recipient


# --- codes and words together ----------------------------------------------------------------------


@pytest.mark.parametrize(("status", "diagnostic", "verdict", "reason"), [
    ("5.1.1", "550 5.1.1 <riley@example.com>: Recipient address rejected: User unknown", "address_bad",
     "user_unknown"),
    ("5.1.2", "550 5.1.2 Host unknown (Name server: example.invalid: host not found)", "address_bad",
     "no_such_domain"),
    ("5.1.6", "550 5.1.6 recipient no longer on server", "address_bad", "moved"),
    ("5.1.10", "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
     "address_bad", "user_unknown"),
    ("5.0.0", "550 5.0.0 Address rejected: has been replaced by riley@new.example", "address_bad", "moved"),
    # The words win over a code that says something else.
    ("5.1.1", "550 5.1.1 <riley@example.com>... Mailbox Full", "mailbox_unable", "mailbox_full"),
    ("5.1.1", "550 5.1.1 <riley@example.com>: Recipient address rejected: IP address 192.0.2.1 blacklisted",
     "not_about_recipient", "blocked"),
    ("5.1.1", "550 5.1.1 <riley@example.com>... Relay access denied", "not_about_recipient", "relay_denied"),
    ("5.1.1", "552 5.1.1 Message size exceeds fixed limit", "not_about_recipient", "too_large"),
    ("5.1.1", "550 5.1.1 <riley@example.com>: Account has been suspended", "mailbox_unable", "mailbox_disabled"),
    # Generic codes: the words decide.
    ("5.0.0", "552 5.2.2 Mailbox full", "mailbox_unable", "mailbox_full"),
    ("5.0.0", "550 Mailbox quota exceeded", "mailbox_unable", "mailbox_full"),
    ("5.0.0", "550 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
     "not_about_recipient", "blocked"),
    ("5.0.0", "554 Transaction failed: Blacklisted", "not_about_recipient", "blocked"),
    ("5.0.0", "550 rejected", "not_about_recipient", "undetermined"),
    # Mailbox disabled or suspended: the mailbox, for now; the address stays (and counts as a soft bounce).
    ("5.2.1", "550 5.2.1 The email account that you tried to reach is disabled.", "mailbox_unable",
     "mailbox_disabled"),
    ("5.2.2", "552-5.2.2 The email account that you tried to reach is over quota.", "mailbox_unable",
     "mailbox_full"),
    # About us: our sender, IP, authentication, content.
    ("5.7.1", "554 5.7.1 <riley@example.com>: Relay access denied", "not_about_recipient", "relay_denied"),
    ("5.1.8", "553 5.1.8 <news@therapycentral.example>: Sender address rejected: Domain not found",
     "not_about_recipient", "sender_rejected"),
    ("5.7.26", "550 5.7.26 This message does not have authentication information or fails to pass "
     "authentication checks (SPF or DKIM).", "not_about_recipient", "authentication"),
    ("5.7.1", "554 5.7.1 Message rejected as spam by Content Filtering.", "not_about_recipient", "spam"),
    ("5.3.4", "552 5.3.4 Message size exceeds fixed limit", "not_about_recipient", "too_large"),
    ("5.4.14", "554 5.4.14 Hop count exceeded - possible mail loop", "not_about_recipient", "routing"),
    ("4.4.7", "Delivery expired (message too old)", "not_about_recipient", "expired"),
])
def test_codes_and_words(status: str, diagnostic: str, verdict: str, reason: str) -> None:
    assert one(dsn(group("riley@example.com", status, diagnostic))) == (verdict, reason, "riley@example.com")


def test_words_without_a_code_condemn_the_address_only_in_answer_to_rcpt() -> None:
    words = "550 Unknown user riley@example.com"
    assert judge(Refusal(diagnostic=words, command="RCPT")).verdict == "address_bad"
    # After DATA, or without saying, the same words are as often a filter's: not trusted.
    assert judge(Refusal(diagnostic=words, command="DATA")).verdict == "not_about_recipient"
    assert judge(Refusal(diagnostic=words)).verdict == "not_about_recipient"


def test_a_relay_still_trying_is_no_verdict_yet() -> None:
    delayed = group("riley@example.com", "4.2.2", "452 4.2.2 Mailbox full", action="delayed")
    assert read(dsn(delayed)) == []
    assert judge(Refusal(status="5.1.1", diagnostic="550 5.1.1 User unknown", action="delayed")).verdict == "none"


def test_providers_own_codes() -> None:
    # Orange's codes (by the recipient's domain), QQ's words (by its servers' names).
    assert one(dsn(group("riley@orange.fr", "5.1.1", "550 5.1.1 Adresse d au moins un destinataire invalide. "
                                                      "Invalid recipient. OFR_416 [416]")))[:2] == (
        "address_bad", "user_unknown")
    assert one(dsn(group("riley@orange.fr", "5.0.0", "550 5.5.0 Le compte du destinataire est bloque. The "
                                                      "recipient account isblocked. LPN007_420")))[:2] == (
        "mailbox_unable", "mailbox_disabled")
    assert one(dsn(group("riley@qq.com", "5.0.0", "550 Mailbox not found. http://service.mail.qq.com/",
                         remote="mx3.qq.com")))[:2] == ("address_bad", "user_unknown")
    assert one(dsn(group("riley@qq.com", "5.0.0", "550 Ip frequency limited", remote="mx3.qq.com")))[:2] == (
        "mailbox_unable", "too_many")


# --- the six causes ----------------------------------------------------------------------------------


NOTICE = "From: Mail Delivery System <MAILER-DAEMON@mx.relay.example>\nSubject: {subject}\nTo: bounces@therapycentral.example\n\n{body}"


def test_cause_1_recipients_of_plain_notices_in_every_common_shape() -> None:
    qmail = NOTICE.format(subject="failure notice", body=(
        "Hi. This is the qmail-send program at mx.relay.example.\n"
        "I'm afraid I wasn't able to deliver your message to the following addresses.\n\n"
        "<riley@example.com>:\n192.0.2.9 does not like recipient.\n"
        "Remote host said: 550 5.1.1 <riley@example.com>... User Unknown\nGiving up on 192.0.2.9.\n\n"
        "--- Below this line is a copy of the message.\n\nTo: sam@example.org\n"))
    assert one(qmail) == ("address_bad", "user_unknown", "riley@example.com")
    exchange = NOTICE.format(subject="Undeliverable: Open evening", body=(
        "Delivery has failed to these recipients or groups:\n\npat@fabrikam.example\n"
        "The e-mail address you entered couldn't be found.\n\nDiagnostic information for administrators:\n\n"
        "Generating server: mx.fabrikam.example\n\npat@fabrikam.example\n"
        "#550 5.1.1 RESOLVER.ADR.RecipNotFound; not found ##\n"))
    assert one(exchange) == ("address_bad", "user_unknown", "pat@fabrikam.example")
    labelled = NOTICE.format(subject="Undeliverable Mail", body="Invalid final delivery userid: sam@example.org\n")
    assert one(labelled) == ("address_bad", "user_unknown", "sam@example.org")
    bulleted = NOTICE.format(subject="Delivery status notification", body=(
        "Delivery to the following recipients failed permanently:\n\n   * jo@example.net\n\n"
        "Technical details:\nSMTP:RCPT host 192.0.2.8: 553 5.3.0 <jo@example.net>... No such user here\n"))
    assert one(bulleted) == ("address_bad", "user_unknown", "jo@example.net")


def test_cause_1_html_only_notices() -> None:
    html = ("From: postmaster@outlook.example\nTo: bounces@therapycentral.example\nSubject: Undeliverable: Hi\n"
            "MIME-Version: 1.0\nContent-Type: text/html; charset=utf-8\n\n"
            "<html><body><p>Your message to <b>kim@contoso.example</b> couldn't be delivered.</p>"
            "<p>Diagnostic information for administrators:</p><p>Generating server: mx.contoso.example</p>"
            "<p>kim@contoso.example<br>Remote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; "
            "Recipient not found by SMTP address lookup'</p></body></html>\n")
    assert one(html) == ("address_bad", "user_unknown", "kim@contoso.example")


def test_cause_1_amazon_ses_notifications_sent_by_email() -> None:
    bounce = ('From: no-reply@sns.amazonaws.com\nSubject: AWS Notification Message\nContent-Type: text/plain\n\n'
              '{"notificationType":"Bounce","bounce":{"bounceType":"Permanent","bounceSubType":"General",'
              '"bouncedRecipients":[{"emailAddress":"riley@example.com","action":"failed","status":"5.1.1",'
              '"diagnosticCode":"smtp; 550 5.1.1 user unknown"}]},"mail":{"messageId":"0100017abc",'
              '"headers":[{"name":"Message-ID","value":"<5.abc@therapycentral.example>"}]}}\n')
    found = read(bounce)
    assert [(v.verdict, v.recipient, v.message_id) for v in found] == [
        ("address_bad", "riley@example.com", "<5.abc@therapycentral.example>")]
    wrapped = ('From: no-reply@sns.amazonaws.com\nSubject: AWS Notification Message\nContent-Type: text/plain\n\n'
               '{"Type":"Notification","Message":"{\\"notificationType\\":\\"Complaint\\",\\"complaint\\":'
               '{\\"complaintFeedbackType\\":\\"abuse\\",\\"complainedRecipients\\":[{\\"emailAddress\\":'
               '\\"sam@example.org\\"}]},\\"mail\\":{}}"}\n')
    assert one(wrapped) == ("complaint", "complaint", "sam@example.org")


def test_cause_1_the_returned_message_when_that_is_all_there_is() -> None:
    raw = ("From: MAILER-DAEMON@mx.relay.example\nTo: bounces@therapycentral.example\nSubject: Returned mail\n"
           "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=R\n\n--R\nContent-Type: text/plain\n\n"
           "This is a permanent error; I've given up. 550 5.1.1 mailbox unavailable\n"
           "--R\nContent-Type: message/rfc822\n\nFrom: news@therapycentral.example\nTo: dana@example.org\n"
           "Message-ID: <8.abc@therapycentral.example>\n\nHello\n--R--\n")
    found = read(raw)
    assert [(v.verdict, v.recipient, v.message_id) for v in found] == [
        ("address_bad", "dana@example.org", "<8.abc@therapycentral.example>")]


def test_cause_2_senders_not_named_mailer_daemon_codes_with_a_colon_and_notices_without_codes() -> None:
    filter_notice = ("From: \"InterScan MSS\" <imss@gateway.example>\nTo: bounces@therapycentral.example\n"
                     "Subject: Mail could not be delivered\n\n"
                     "Sent <<< RCPT TO:<riley@example.com>\nReceived >>> 550 5.1.1 unknown user.\n\n"
                     "Unable to deliver message to <riley@example.com>.\n")
    assert one(filter_notice) == ("address_bad", "user_unknown", "riley@example.com")
    colon = NOTICE.format(subject="Returned mail", body=(
        "The following recipient failed permanently:\n\n<riley@example.com>:\n550: 5.1.1 User unknown\n"))
    assert one(colon)[:2] == ("address_bad", "user_unknown")
    exchange_2003 = NOTICE.format(subject="Undeliverable: Open evening", body=(
        "Your message\n\n  To:      riley@example.com\n  Subject: Open evening\n\n"
        "did not reach the following recipient(s):\n\nriley@example.com on Thu, 11 Jul 2002 16:54:54 -0300\n"
        "    The recipient name is not recognized\n"
        "    MSEXCH:IMS:Example:CENTRAL:MX01 0 (000C05A6) Unknown Recipient\n"))
    assert one(exchange_2003) == ("address_bad", "user_unknown", "riley@example.com")


def test_cause_3_refusals_about_the_sender_ip_content_or_routing_never_condemn_the_recipient() -> None:
    for words in ("550 5.1.7 <news@therapycentral.example>: Sender address rejected: bad address syntax",
                  "550 5.1.8 Sender address rejected: Domain not found",
                  "550 5.7.1 Client host rejected: cannot find your hostname, [192.0.2.1]",
                  "554 5.7.1 IP frequency limited",
                  "550 Access denied (in reply to MAIL FROM command)",
                  "554 5.7.1 Message rejected because of unacceptable content",
                  "554 5.4.6 Routing loop detected",
                  "550 Requested action not taken"):
        verdict, reason, _ = one(dsn(group("riley@example.com", "5.0.0", words)))
        assert verdict != "address_bad", (words, reason)
    # A bare 550 and nothing else is no reason to stop mailing a person.
    assert one(dsn(group("riley@example.com", "5.0.0", "550")))[0] == "not_about_recipient"


def test_cause_4_the_words_win_over_the_status_field() -> None:
    assert one(dsn(group("riley@example.com", "5.1.1", "550 5.1.1 <riley@example.com>... Mailbox Full")))[:2] == (
        "mailbox_unable", "mailbox_full")
    assert one(dsn(group("riley@example.com", "5.1.1", "550 5.1.1 IP address blacklisted")))[:2] == (
        "not_about_recipient", "blocked")


def test_cause_5_each_recipient_of_a_plain_notice_gets_its_own_reason() -> None:
    raw = NOTICE.format(subject="Undelivered Mail Returned to Sender", body=(
        "This is the mail system at host mx.relay.example.\n\n                   The mail system\n\n"
        "<full@example.org>: host mx.example.org[192.0.2.1] said: 552 5.2.2 Mailbox full\n"
        "    (in reply to RCPT TO command)\n\n"
        "<gone@example.org>: host mx.example.org[192.0.2.1] said: 550 5.1.1 <gone@example.org>: User unknown\n"
        "    (in reply to RCPT TO command)\n\n"
        "<blocked@example.net>: host mx.example.net[192.0.2.2] said: 554 5.7.1 Service unavailable; Client host\n"
        "    [192.0.2.9] blocked using zen.spamhaus.org (in reply to RCPT TO command)\n"))
    found = {v.recipient: (v.verdict, v.reason) for v in read(raw)}
    assert found == {"full@example.org": ("mailbox_unable", "mailbox_full"),
                     "gone@example.org": ("address_bad", "user_unknown"),
                     "blocked@example.net": ("not_about_recipient", "blocked")}


def test_cause_6_complaints_in_every_known_format() -> None:
    arf = ("From: feedback@arf.example\nSubject: FW: Open evening\nMIME-Version: 1.0\n"
           "Content-Type: multipart/report; report-type=feedback-report; boundary=F\n\n"
           "--F\nContent-Type: text/plain\n\nA complaint.\n"
           "--F\nContent-Type: message/feedback-report\n\nFeedback-Type: opt-out\nVersion: 1\n"
           "Original-Rcpt-To: <sam@icloud.example>\n\n"
           "--F\nContent-Type: text/rfc822-headers\n\nTo: sam@icloud.example\n\n--F--\n")
    assert one(arf) == ("complaint", "complaint", "sam@icloud.example")
    jmrp = ("From: staff@hotmail.com\nTo: fbl@therapycentral.example\nSubject: complaint about message from 192.0.2.1\n"
            "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=J\n\n--J\nContent-Type: message/rfc822\n\n"
            "X-HmXmrOriginalRecipient: kim@hotmail.example\nFrom: news@therapycentral.example\n"
            "To: kim@hotmail.example\nMessage-ID: <3.abc@therapycentral.example>\n\nHello\n--J--\n")
    found = read(jmrp)
    assert [(v.verdict, v.recipient, v.message_id) for v in found] == [
        ("complaint", "kim@hotmail.example", "<3.abc@therapycentral.example>")]


def test_automatic_replies_are_nothing_even_with_codes_in_them() -> None:
    raw = ("From: riley@example.com\nTo: news@therapycentral.example\nSubject: Automatic reply: Open evening\n"
           "Auto-Submitted: auto-replied\n\nI am out of the office until Monday. 550 5.1.1 means nothing here.\n")
    assert read(raw) == []
    vacation = ("From: riley@example.com\nSubject: Re: Open evening\nX-Apple-Action: vacation\n\n"
                "I am away on vacation.\n")
    assert read(vacation) == []


# --- the same rules while sending --------------------------------------------------------------------


@pytest.mark.parametrize(("code", "text", "command", "verdict"), [
    (550, "5.1.1 <riley@example.com>: Recipient address rejected: User unknown", "RCPT", "address_bad"),
    (553, "5.1.3 bad address syntax", "RCPT", "address_bad"),
    (550, "Requested action not taken: mailbox unavailable", "RCPT", "address_bad"),
    (552, "5.2.2 Mailbox full", "RCPT", "mailbox_unable"),
    # The relay refusing our sender or our IP, at RCPT: real people must not be suppressed for it.
    (554, "5.7.1 <riley@example.com>: Relay access denied", "RCPT", "not_about_recipient"),
    (550, "5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org", "RCPT",
     "not_about_recipient"),
    (553, "5.7.1 <news@therapycentral.example>: Sender address rejected: not owned by user", "RCPT",
     "not_about_recipient"),
    (550, "rejected", "RCPT", "not_about_recipient"),
    # After DATA: only a code that says the mailbox is bad condemns it.
    (554, "5.7.1 message refused as spam", "DATA", "not_about_recipient"),
    (550, "5.1.1 user unknown", "DATA", "address_bad"),
    # A temporary refusal never condemns the address.
    (450, "4.1.1 user unknown (try again)", "RCPT", "none"),
])
def test_smtp_replies_while_sending(code: int, text: str, command: str, verdict: str) -> None:
    assert reply_verdict(code, text, command).verdict == verdict
