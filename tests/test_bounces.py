"""Bounce processing: reports of the project's own samples classified exactly, written-out reports for the
rules' edges, then applied to both databases, from a maildir through `mailer bounces process`, and from an
IMAP folder over TLS on loopback. (The large corpus is tests/test_bounce_corpus.py; the rules one by one
are tests/test_bounce_classify.py.)"""

from __future__ import annotations

import datetime as dt
import mailbox
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailer import audience
from mailer.cli import main
from mailer.config import Settings
from mailer.inbound import bounces
from mailer.inbound.bounces import Verdict, verdicts
from mailer.inbound.mailbox import ImapMailbox, MailboxError
from mailer.inbound.reading import is_auto_reply, parse
from mailer.models import ConsentEvent, Contact, Enrollment, OutboxMessage, Subscription, Suppression
from mailer.outbound.messages import make_message_id
from mailer.sequences import inquiries
from tests.conftest import utc
from tests.imap_server import ImapServer, make_certificate, running

SAMPLES = Path(__file__).parent / "data" / "bounces" / "messages"
T0 = utc(2026, 11, 24, 12, 0)
Sessions = sessionmaker[Session]
AUTO_REPLIES = ["autoreply-out-of-office.eml", "autoreply-exchange-automatic-reply.eml",
                "autoreply-vacation-no-headers.eml"]
NOTHING = {"messages": 0, "hard": 0, "soft": 0, "complaints": 0, "ignored": 0, "unknown_recipient": 0,
           "suppressed": 0, "not_about_recipient": 0}


def corpus(name: str, replace: dict[str, str] | None = None) -> bytes:
    """One of the project's own samples (tests/data/bounces/messages/mailer-*), with strings replaced (to point
    it at a test's own rows)."""
    raw = (SAMPLES / f"mailer-{name}").read_bytes()
    for old, new in (replace or {}).items():
        assert old.encode() in raw, old
        raw = raw.replace(old.encode(), new.encode())
    return raw


def first(raw: bytes) -> Verdict | None:
    found = verdicts(parse(raw))
    return found[0] if found else None


def classified(name: str) -> Verdict | None:
    return first(corpus(name))


# --- classification: the project's own samples -----------------------------------------------------


@pytest.mark.parametrize(("name", "verdict", "reason", "recipient", "status", "message_id", "diagnostic"), [
    ("postfix-user-unknown.eml", "address_bad", "user_unknown", "nobody@example.com", "5.1.1",
     "<17.0123456789abcdef@therapycentral.example>",
     "550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown in virtual mailbox table"),
    ("exchange-online-recipient-not-found.eml", "address_bad", "user_unknown", "a.nobody@contoso.example",
     "5.1.10", "<18.fedcba9876543210@therapycentral.example>",
     "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"),
    ("exchange-2010-recipnotfound.eml", "address_bad", "user_unknown", "pat@fabrikam.example", "5.1.1",
     "<19.00112233445566ff@therapycentral.example>", "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found"),
    ("gmail-account-does-not-exist.eml", "address_bad", "user_unknown", "no.such.person@gmail.example", "5.1.1",
     "<20.a1b2c3d4e5f60718@therapycentral.example>",
     "550-5.1.1 The email account that you tried to reach does not exist. Please try 550-5.1.1"),
    # Action "failed" on a full mailbox: the relay gave up, the mailbox was full that day.
    ("postfix-mailbox-full-failed.eml", "mailbox_unable", "mailbox_full", "full.box@example.org", "4.2.2",
     "<21.0f1e2d3c4b5a6978@therapycentral.example>", "452 4.2.2 <full.box@example.org>: Mailbox full"),
    # 5.2.2 is "a persistent transient failure" by RFC 3463's own words: the mailbox, not the address.
    ("gmail-over-quota.eml", "mailbox_unable", "mailbox_full", "full.box@gmail.example", "5.2.2", None,
     "552-5.2.2 The recipient's inbox is out of storage space."),
    ("arf-abuse-complaint.eml", "complaint", "complaint", "sam.complains@mail.example", "",
     "<22.89abcdef01234567@therapycentral.example>", "feedback-type abuse from ExampleMail-Feedback/2.0"),
    # Plain-text notices: the recipient's own lines are its diagnostic (the "$550" price in Exim's copy of
    # our message is below the quoted-copy line and is not read).
    ("exim-plain-bounce.eml", "address_bad", "user_unknown", "gone.away@example.net", "5.1.1",
     "<24.7766554433221100@therapycentral.example>",
     "gone.away@example.net host mx2.example.net [192.0.2.90] SMTP error from remote mail server after RCPT"),
    ("qmail-plain-bounce.eml", "address_bad", "user_unknown", "left.company@example.org", "5.1.1",
     "<25.1234567890abcdef@therapycentral.example>",
     "<left.company@example.org>: Sorry, no mailbox here by that name. (#5.1.1)"),
])
def test_samples_are_classified_exactly(name: str, verdict: str, reason: str, recipient: str, status: str,
                                        message_id: str | None, diagnostic: str) -> None:
    found = classified(name)
    assert found is not None
    assert (found.verdict, found.reason, found.recipient, found.status, found.message_id) == (
        verdict, reason, recipient, status, message_id)
    assert found.diagnostic.startswith(diagnostic), found.diagnostic
    assert "\n" not in found.diagnostic and "  " not in found.diagnostic  # folded lines made one


def test_a_delayed_report_is_not_a_bounce_the_final_report_will_come() -> None:
    assert classified("postfix-mailbox-full-delayed.eml") is None


@pytest.mark.parametrize("name", AUTO_REPLIES)
def test_auto_replies_are_never_bounces(name: str) -> None:
    message = parse(corpus(name))
    assert is_auto_reply(message)
    assert verdicts(message) == []


def test_mail_server_reports_are_not_auto_replies_though_marked_auto_submitted() -> None:
    # Postfix, Exim and Gmail mark their bounces "Auto-Submitted: auto-replied" (RFC 3834).
    for name in ("postfix-user-unknown.eml", "exim-plain-bounce.eml", "gmail-account-does-not-exist.eml"):
        assert "Auto-Submitted: auto-replied" in corpus(name).decode()
        assert not is_auto_reply(parse(corpus(name)))


# --- classification: reports written here ----------------------------------------------------------


def dsn(*groups: str, original: str = "", sender: str = "MAILER-DAEMON@relay.example",
        content_type: str = "message/delivery-status", text: str = "Delivery report.\n",
        subject: str = "Undelivered Mail") -> bytes:
    """A multipart/report DSN with the given recipient groups (and returned headers, if any)."""
    parts = [
        f"Content-Type: text/plain\n\n{text}",
        f"Content-Type: {content_type}\n\nReporting-MTA: dns; relay.example\n\n" + "\n".join(groups),
    ]
    if original:
        parts.append(f"Content-Type: text/rfc822-headers\n\n{original}")
    body = "".join(f"--B\n{part}\n" for part in parts) + "--B--\n"
    return (f"From: {sender}\nTo: bounces@therapycentral.example\nSubject: {subject}\nMIME-Version: 1.0\n"
            "Content-Type: multipart/report; report-type=delivery-status; boundary=B\n\n" + body).encode()


def group(recipient: str, action: str, status: str, diagnostic: str = "") -> str:
    lines = [f"Final-Recipient: rfc822; {recipient}", f"Action: {action}", f"Status: {status}"]
    if diagnostic:
        lines.append(f"Diagnostic-Code: smtp; {diagnostic}")
    return "\n".join(lines) + "\n"


def test_policy_refusals_are_about_the_sender_not_the_recipient() -> None:
    report = dsn(group("riley@example.com", "failed", "5.7.26",
                       "550 5.7.26 Unauthenticated email is not accepted due to domain's DMARC policy"))
    found = first(report)
    assert found is not None and (found.verdict, found.reason, found.status) == (
        "not_about_recipient", "policy", "5.7.26")


def test_a_generic_status_takes_the_diagnostics_code() -> None:
    found = first(dsn(group("riley@example.com", "failed", "5.0.0", "552 5.2.2 Mailbox full")))
    assert found is not None and (found.verdict, found.status) == ("mailbox_unable", "5.2.2")
    # Words alone, under a generic code, condemn the address only in answer to RCPT TO: after DATA the same
    # words are as often a filter's (the established classifiers read them so too).
    found = first(dsn(group("riley@example.com", "failed", "5.0.0", "550 No such user here")))
    assert found is not None and (found.verdict, found.reason, found.status) == (
        "not_about_recipient", "filtered", "5.0.0")
    # Postfix says which command the words answered; in its own notices that is believed.
    answered = group("riley@example.com", "failed", "5.0.0", "550 No such user here (in reply to RCPT TO command)")
    found = first(dsn(answered, subject="Undelivered Mail Returned to Sender"))
    assert found is not None and (found.verdict, found.reason) == ("address_bad", "user_unknown")
    # Quoted in another server's report, the same words are a relayed quotation, not that server's command.
    found = first(dsn(answered))
    assert found is not None and (found.verdict, found.reason) == ("not_about_recipient", "filtered")


def test_every_failed_recipient_of_a_report_is_given_and_only_those() -> None:
    report = dsn(
        group("one@example.com", "failed", "5.1.1"),
        group("two@example.com", "delivered", "2.0.0"),
        group("three@example.com", "failed", "4.4.7", "Delivery expired"),
        group("four@example.com", "relayed", "2.0.0"),
    )
    assert [(v.verdict, v.recipient) for v in verdicts(parse(report))] == [
        ("address_bad", "one@example.com"), ("not_about_recipient", "three@example.com")]


def test_original_recipient_wins_and_final_recipient_is_kept_as_another_address() -> None:
    # 5.2.1 "mailbox disabled, not accepting messages": the mailbox, for now; the address stays.
    report = dsn("Original-Recipient: rfc822;info@patient.example\n" + group("pat.inbox@internal.example",
                                                                               "failed", "5.2.1"),
                 original="To: info@patient.example\nMessage-ID: <7.aa@therapycentral.example>\n")
    found = first(report)
    assert found is not None
    assert (found.verdict, found.recipient, found.status, found.message_id, found.others) == (
        "mailbox_unable", "info@patient.example", "5.2.1", "<7.aa@therapycentral.example>",
        ("pat.inbox@internal.example",))


def test_utf8_delivery_status_of_rfc_6533() -> None:
    report = dsn(group("jörg@bücher.example", "failed", "5.1.1").replace("rfc822", "utf-8"),
                 content_type="message/global-delivery-status")
    found = first(report)
    assert found is not None and (found.verdict, found.recipient) == ("address_bad", "jörg@bücher.example")


def arf(feedback_type: str, rcpt_to: str = "", to: str = "sam@mail.example") -> bytes:
    rcpt = f"Original-Rcpt-To: {rcpt_to}\n" if rcpt_to else ""
    return (
        "From: feedback@arf.mail.example\nSubject: Complaint\nMIME-Version: 1.0\n"
        "Content-Type: multipart/report; report-type=feedback-report; boundary=F\n\n"
        "--F\nContent-Type: text/plain\n\nA complaint.\n"
        f"--F\nContent-Type: message/feedback-report\n\nFeedback-Type: {feedback_type}\nVersion: 1\n{rcpt}\n"
        f"--F\nContent-Type: message/rfc822\n\nFrom: news@therapycentral.example\nTo: {to}\n"
        "Message-ID: <9.0123456789abcdef@therapycentral.example>\n\nHello.\n--F--\n"
    ).encode()


def test_feedback_reports_other_than_complaints_are_nothing() -> None:
    assert first(arf("not-spam")) is None
    assert first(arf("auth-failure")) is None
    for kind in ("abuse", "fraud", "opt-out"):
        found = first(arf(kind))
        assert found is not None and (found.verdict, found.recipient) == ("complaint", "sam@mail.example")


def test_a_redacted_complaint_keeps_only_the_message_id() -> None:
    found = first(arf("abuse", to="redacted"))
    assert found == Verdict("complaint", None, "complaint", "", "", "feedback-type abuse",
                            "<9.0123456789abcdef@therapycentral.example>")


@pytest.mark.parametrize("subject", [
    "Abwesenheitsnotiz: Open evening", "Automatische Antwort: Open evening", "Out of Office AutoReply: hi",
    "Réponse automatique : Open evening", "Auto-Reply: Open evening", "On vacation",
])
def test_auto_reply_subjects(subject: str) -> None:
    raw = f"From: someone@example.com\nSubject: {subject}\nContent-Type: text/plain\n\nBack soon.\n"
    assert is_auto_reply(parse(raw.encode()))
    assert first(raw.encode()) is None


def test_an_auto_reply_from_a_mail_server_address_is_still_no_bounce() -> None:
    raw = (b"From: postmaster@example.com\nSubject: Automatic reply: your message\nX-Autoreply: yes\n\n"
           b"I am away. Error codes like 550 5.1.1 mean nothing here.\n")
    assert first(raw) is None


def test_a_person_quoting_an_smtp_error_is_not_a_bounce() -> None:
    raw = (b"From: Riley <riley@example.com>\nSubject: Re: Open evening\n\n"
           b"My colleague got 550 5.1.1 User unknown when she wrote to you, can you check?\n")
    assert first(raw) is None


def test_a_plain_delay_warning_quoting_a_price_is_not_a_bounce() -> None:
    raw = (b"From: Mail Delivery System <Mailer-Daemon@mx.example.net>\nSubject: Warning: message delayed\n\n"
           b"This message was created automatically by mail delivery software.\n"
           b"A message that you sent has not yet been delivered: 451 4.7.1 greylisted\n\n"
           b"------ This is a copy of the message, including all the headers. ------\n\n"
           b"Subject: Open evening\n\nA first consultation is $550 - or 550 - with insurance.\n")
    assert first(raw) is None


def test_a_mail_server_notice_without_a_failure_is_not_a_bounce() -> None:
    raw = b"From: MAILER-DAEMON@relay.example\nSubject: Postmaster notify\n\nSomething happened.\n"
    assert first(raw) is None


def test_non_report_multiparts_and_garbage_are_nothing() -> None:
    assert first(b"\x00\xff garbage \r\n\r\n\x80") is None
    assert first(b"Content-Type: multipart/report; report-type=disposition-notification; boundary=Q\n\n"
                 b"--Q\nContent-Type: message/disposition-notification\n\nDisposition: manual-action/"
                 b"MDN-sent-manually; displayed\n--Q--\n") is None


# --- applying bounces to the database (SQLite and PostgreSQL) ----------------------------------------


def subscribe(sessions: Sessions, settings: Settings, *addresses: str) -> None:
    with sessions.begin() as session:
        for address in addresses:
            audience.staff_subscribe(session, settings.secret_key, settings.topics, email=address, name="",
                                     topic_names=["newsletter"], source="test-fixture", now=T0)


def inquire(sessions: Sessions, settings: Settings, address: str) -> None:
    """A consented inquiry: a follow-up enrollment starts, active."""
    at = T0 - dt.timedelta(hours=2)
    with sessions.begin() as session:
        outcome = inquiries.record_inquiry(
            session, settings, email=address, name="Pat", consent=True, source="website-contact-form",
            consent_text="Yes, send me follow-up emails about my inquiry.", received_at=at, now=at)
        assert outcome.enrolled


def sent_row(sessions: Sessions, settings: Settings, address: str) -> tuple[int, str]:
    """An outbox row already handed to the relay, as delivery leaves it: (id, its Message-ID)."""
    with sessions.begin() as session:
        contact = audience.find_contact(session, address)
        assert contact is not None
        row = OutboxMessage(dedupe_key=f"test:{contact.id}", kind="oneoff", contact_id=contact.id, state="sent",
                            attempts=1, created_at=T0, due_at=T0, sent_at=T0)
        session.add(row)
        session.flush()
        row.message_id = make_message_id(settings.secret_key, row.id, "therapycentral.example")
        return row.id, row.message_id


def run(sessions: Sessions, settings: Settings, *raws: bytes, now: dt.datetime = T0) -> bounces.BounceReport:
    with sessions.begin() as session:
        return bounces.process(session, settings, [(f"m{n}", raw) for n, raw in enumerate(raws)], now)


@dataclass
class State:
    suppressions: dict[str, tuple[str, str]]
    enrollments: list[tuple[str, str | None]]
    soft_bounces: dict[str, int]
    ledger: int
    withdrawals: int
    subscriptions: list[str] = field(default_factory=list)


def state(sessions: Sessions) -> State:
    with sessions() as session:
        emails = dict(session.execute(select(Contact.id, Contact.email)).all())
        return State(
            suppressions={emails[c]: (r, d) for c, r, d in session.execute(
                select(Suppression.contact_id, Suppression.reason, Suppression.detail)).all()},
            enrollments=list(session.execute(select(Enrollment.status, Enrollment.stop_reason)).all()),
            soft_bounces=dict(session.execute(select(Contact.email, Contact.soft_bounces)).all()),
            ledger=session.scalar(select(func.count()).select_from(ConsentEvent)) or 0,
            withdrawals=session.scalar(select(func.count()).where(ConsentEvent.action == "withdrawn")) or 0,
            subscriptions=sorted(session.scalars(select(Subscription.status))),
        )


def test_a_hard_bounce_suppresses_and_stops_follow_ups(settings: Settings, sessions: Sessions) -> None:
    inquire(sessions, settings, "nobody@example.com")
    before = state(sessions)
    assert before.enrollments == [("active", None)]

    report = run(sessions, settings, corpus("postfix-user-unknown.eml"))
    assert report.counts() == {**NOTHING, "messages": 1, "hard": 1, "suppressed": 1}
    after = state(sessions)
    reason, detail = after.suppressions["nobody@example.com"]
    assert reason == "hard_bounce"
    # Stored without the address's local part (the server echoed it; the row outlives an erasure).
    assert detail == ("5.1.1 550 5.1.1 <*@example.com>: Recipient address rejected: User unknown in virtual "
                      "mailbox table")
    assert after.enrollments == [("stopped", "suppressed")]
    # A bounce is not the person withdrawing consent: the ledger is untouched.
    assert (after.ledger, after.withdrawals) == (before.ledger, 0)

    # The same report again (a crash before it was marked processed) changes nothing more.
    assert run(sessions, settings, corpus("postfix-user-unknown.eml")).suppressed == 0
    assert state(sessions) == after


def test_a_bounce_of_our_message_marks_its_outbox_row_and_keeps_it_sent(settings: Settings,
                                                                          sessions: Sessions) -> None:
    subscribe(sessions, settings, "a.nobody@contoso.example")
    row_id, message_id = sent_row(sessions, settings, "a.nobody@contoso.example")
    raw = corpus("exchange-online-recipient-not-found.eml",
                 {"<18.fedcba9876543210@therapycentral.example>": message_id})
    assert run(sessions, settings, raw).hard == 1
    with sessions() as session:
        row = session.get(OutboxMessage, row_id)
        assert row is not None and row.state == "sent" and row.sent_at == T0
        assert row.last_error == ("hard bounce after sending: 5.1.10 550 5.1.10 RESOLVER.ADR.RecipientNotFound; "
                                  "Recipient not found by SMTP address lookup")
    assert state(sessions).suppressions["a.nobody@contoso.example"][0] == "hard_bounce"


def test_the_returned_message_id_finds_the_contact_when_the_address_does_not(settings: Settings,
                                                                           sessions: Sessions) -> None:
    subscribe(sessions, settings, "sam@mail.example", "bystander@mail.example")
    _row_id, message_id = sent_row(sessions, settings, "sam@mail.example")
    # A complaint whose provider redacted the recipient: only our Message-ID says who it was.
    raw = arf("abuse", to="redacted").replace(b"<9.0123456789abcdef@therapycentral.example>", message_id.encode())
    report = run(sessions, settings, raw)
    assert (report.complaints, report.unknown_recipient, report.suppressed) == (1, 0, 1)
    assert state(sessions).suppressions == {"sam@mail.example": ("complaint", "feedback-type abuse")}

    # A Message-ID that looks like ours but whose tag does not match the row is not trusted.
    forged = arf("abuse", to="redacted").replace(b"<9.0123456789abcdef@", f"<{_row_id}.ffffffffffffffff@".encode())
    assert run(sessions, settings, forged).unknown_recipient == 1


def test_a_complaint_suppresses(settings: Settings, sessions: Sessions) -> None:
    subscribe(sessions, settings, "sam.complains@mail.example")
    report = run(sessions, settings, corpus("arf-abuse-complaint.eml"))
    assert (report.complaints, report.suppressed) == (1, 1)
    assert state(sessions).suppressions["sam.complains@mail.example"] == (
        "complaint", "feedback-type abuse from ExampleMail-Feedback/2.0")


def dated(raw: bytes, when: dt.datetime) -> bytes:
    """A report with its Date header set to `when` (the day a soft bounce counts for)."""
    return re.sub(rb"(?m)^Date: .*$", f"Date: {when.strftime('%a, %d %b %Y %H:%M:%S +0000')}".encode(), raw, count=1)


def test_soft_bounces_count_once_a_day_and_suppress_at_the_limit(settings: Settings, sessions: Sessions) -> None:
    limited = settings.bounces.model_copy(update={"soft_bounce_limit": 3})
    settings = settings.model_copy(update={"bounces": limited})
    subscribe(sessions, settings, "full.box@example.org")
    inquire(sessions, settings, "full.box@example.org")
    failed, delayed = corpus("postfix-mailbox-full-failed.eml"), corpus("postfix-mailbox-full-delayed.eml")

    # Three reports of one day (the relay tried three times) are one day; "delayed" counts for nothing.
    day1 = T0 - dt.timedelta(days=2)
    report = run(sessions, settings, dated(failed, day1), dated(delayed, day1),
                 dated(failed, day1 + dt.timedelta(hours=3)), dated(failed, day1 + dt.timedelta(hours=5)))
    assert (report.soft, report.ignored, report.suppressed) == (3, 1, 0)
    current = state(sessions)
    assert current.soft_bounces == {"full.box@example.org": 1}
    assert current.suppressions == {} and current.enrollments == [("active", None)]

    report = run(sessions, settings, dated(failed, T0 - dt.timedelta(days=1)))
    assert (report.soft, report.suppressed) == (1, 0)
    assert state(sessions).soft_bounces == {"full.box@example.org": 2}

    report = run(sessions, settings, dated(failed, T0), now=T0 + dt.timedelta(hours=1))
    assert (report.soft, report.suppressed) == (1, 1)
    current = state(sessions)
    assert current.soft_bounces == {"full.box@example.org": 3}
    reason, detail = current.suppressions["full.box@example.org"]
    assert reason == "soft_bounces"
    assert detail == "soft bounces on 3 days within P30D; last: 4.2.2 452 4.2.2 <*@example.org>: Mailbox full"
    assert current.enrollments == [("stopped", "suppressed")]


def test_soft_bounces_outside_the_window_do_not_count(settings: Settings, sessions: Sessions) -> None:
    limited = settings.bounces.model_copy(update={"soft_bounce_limit": 2, "soft_bounce_window": "P7D"})
    settings = settings.model_copy(update={"bounces": limited})
    subscribe(sessions, settings, "full.box@example.org")
    failed = corpus("postfix-mailbox-full-failed.eml")
    report = run(sessions, settings, dated(failed, T0 - dt.timedelta(days=20)), dated(failed, T0 - dt.timedelta(days=9)),
                 dated(failed, T0 - dt.timedelta(days=1)))
    assert (report.soft, report.suppressed) == (3, 0)
    assert state(sessions).soft_bounces == {"full.box@example.org": 1}
    # A report dated in the future counts for the day it arrived, not for a day to come.
    assert run(sessions, settings, dated(failed, T0 + dt.timedelta(days=3))).suppressed == 1


def test_auto_replies_change_nothing(settings: Settings, sessions: Sessions) -> None:
    subscribe(sessions, settings, "jordan.lee@example.com")
    inquire(sessions, settings, "jordan.lee@example.com")
    before = state(sessions)
    report = run(sessions, settings, *(corpus(name) for name in AUTO_REPLIES))
    assert report.counts() == {**NOTHING, "messages": 3, "ignored": 3}
    after = state(sessions)
    assert after == before
    assert after.suppressions == {} and after.withdrawals == 0
    assert after.enrollments == [("active", None)] and after.subscriptions == ["active"]


def test_unknown_recipients_are_counted_and_ignored(settings: Settings, sessions: Sessions) -> None:
    report = run(sessions, settings, corpus("gmail-account-does-not-exist.eml"), b"not a message at all")
    assert (report.messages, report.unknown_recipient, report.ignored, report.hard) == (2, 1, 1, 0)
    assert state(sessions).suppressions == {}


def test_the_address_matches_whatever_case_the_report_gives_it(settings: Settings, sessions: Sessions) -> None:
    subscribe(sessions, settings, "Pat@fabrikam.example")
    assert run(sessions, settings, corpus("exchange-2010-recipnotfound.eml")).hard == 1
    assert state(sessions).suppressions["pat@fabrikam.example"][0] == "hard_bounce"  # stored lower-cased


def test_logs_name_no_address_above_debug(settings: Settings, sessions: Sessions,
                                          caplog: pytest.LogCaptureFixture) -> None:
    subscribe(sessions, settings, "nobody@example.com")
    with caplog.at_level("INFO", logger="mailer"):
        run(sessions, settings, corpus("postfix-user-unknown.eml"), corpus("gmail-account-does-not-exist.eml"))
    assert caplog.records
    assert not [r for r in caplog.records if "@" in r.getMessage()]


# --- the maildir through the command line -----------------------------------------------------------


def bounce_config(config_path: Path, **keys: object) -> Path:
    """The test config with its [bounces] section set to these keys."""
    text = config_path.read_text()
    section = "[bounces]\n" + "".join(
        f"{key} = {value}\n" if isinstance(value, int) else f'{key} = "{value}"\n' for key, value in keys.items())
    text, replaced = re.subn(r"(?ms)^\[bounces\]\n.*?(?=^\[)", section + "\n", text)
    assert replaced == 1
    config_path.write_text(text)
    return config_path


def invoke(config_path: Path, environ: dict[str, str], *args: str):  # noqa: ANN201
    return CliRunner().invoke(main, ["--config", str(config_path), *args], env=environ, catch_exceptions=False)


def test_maildir_end_to_end_processes_nothing_twice(settings: Settings, sessions: Sessions, config_path: Path,
                                                    environ: dict[str, str], tmp_path: Path) -> None:
    subscribe(sessions, settings, "nobody@example.com", "full.box@example.org", "jordan.lee@example.com")
    inquire(sessions, settings, "nobody@example.com")
    folder = tmp_path / "bounces-maildir"
    inbox = mailbox.Maildir(folder, create=True)
    # The command runs on the real clock: the full mailbox's report is dated just now, so it falls in the window.
    recent = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    for raw in (corpus("postfix-user-unknown.eml"), dated(corpus("postfix-mailbox-full-failed.eml"), recent),
                corpus("autoreply-out-of-office.eml"), corpus("gmail-account-does-not-exist.eml")):
        inbox.add(raw)
    # One already read by a person with a mail client (in cur/, seen): still not processed, so read.
    read_key = inbox.add(corpus("arf-abuse-complaint.eml"))
    message = inbox.get_message(read_key)
    message.set_subdir("cur")
    message.add_flag("S")
    inbox[read_key] = message
    bounce_config(config_path, source="maildir", maildir=folder)

    result = invoke(config_path, environ, "bounces", "process")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == ("messages 5, hard 1, soft 1, complaints 0, ignored 1, unknown_recipient 2, "
                                     "suppressed 1, not_about_recipient 0")
    current = state(sessions)
    assert current.suppressions["nobody@example.com"][0] == "hard_bounce"
    assert current.soft_bounces["full.box@example.org"] == 1
    assert current.enrollments == [("stopped", "suppressed")]

    inbox = mailbox.Maildir(folder, create=False)
    assert len(inbox) == 0
    processed = inbox.get_folder("processed")
    assert (folder / ".processed").is_dir() and len(processed) == 5
    assert all(m.get_subdir() == "cur" and "S" in m.get_flags() for m in processed)
    archived = sorted(processed.get_bytes(key) for key in processed.keys())
    assert corpus("postfix-user-unknown.eml") in archived  # kept byte for byte for staff to look at

    again = invoke(config_path, environ, "bounces", "process")
    assert again.exit_code == 0 and again.output.startswith("messages 0,")
    assert state(sessions) == current

    # A report of another day counts a second day.
    inbox.add(dated(corpus("postfix-mailbox-full-failed.eml"), recent - dt.timedelta(days=1)))
    third = invoke(config_path, environ, "bounces", "process")
    assert third.output.startswith("messages 1, hard 0, soft 1,")
    assert state(sessions).soft_bounces["full.box@example.org"] == 2


@pytest.fixture
def plain_environ() -> dict[str, str | None]:
    """Enough environment for commands that stop before touching the database (run once, not per backend)."""
    return {"MAILER_SECRET_KEY": "test-secret-key-0123456789", "MAILER_IMAP_PASSWORD": None}


def test_without_a_source_the_command_says_what_to_set(config_path: Path,
                                                       plain_environ: dict[str, str | None]) -> None:
    result = CliRunner().invoke(main, ["--config", str(config_path), "bounces", "process"], env=plain_environ)
    assert result.exit_code == 1
    assert result.output == 'mailer: error: bounces.source is "none": set it to maildir or imap in config.toml\n'


def test_a_missing_maildir_is_a_one_line_error(config_path: Path, plain_environ: dict[str, str | None],
                                               tmp_path: Path) -> None:
    bounce_config(config_path, source="maildir", maildir=tmp_path / "nowhere")
    result = CliRunner().invoke(main, ["--config", str(config_path), "bounces", "process"], env=plain_environ)
    assert result.exit_code == 1
    where = tmp_path / "nowhere"
    assert result.output == f"mailer: error: {where}: not a maildir (it needs new/ and cur/ folders)\n"


def test_imap_without_a_password_is_a_one_line_error(config_path: Path,
                                                     plain_environ: dict[str, str | None]) -> None:
    bounce_config(config_path, source="imap", imap_host="127.0.0.1", imap_user="bounces")
    result = CliRunner().invoke(main, ["--config", str(config_path), "bounces", "process"], env=plain_environ)
    assert result.exit_code == 1
    assert result.output == 'mailer: error: bounces.source is "imap" but MAILER_IMAP_PASSWORD is not set\n'


# --- IMAP: a small IMAP4rev1 server over TLS on loopback -----------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certificate(tmp_path_factory.mktemp("imap-tls"))


@pytest.fixture
def imap_server(certificate: Path) -> Iterator[ImapServer]:
    with running(certificate, "bounces@therapycentral.example", "s3cret pass") as server:
        yield server


def test_imap_end_to_end_marks_processed_messages_seen(settings: Settings, sessions: Sessions, config_path: Path,
                                                        environ: dict[str, str], imap_server: ImapServer,
                                                        certificate: Path) -> None:
    subscribe(sessions, settings, "nobody@example.com", "jordan.lee@example.com")
    imap_server.add(corpus("postfix-user-unknown.eml"))
    imap_server.add(corpus("exim-plain-bounce.eml"), "\\Seen")  # seen: someone dealt with it already
    imap_server.add(corpus("autoreply-vacation-no-headers.eml"))
    bounce_config(config_path, source="imap", imap_host="127.0.0.1", imap_port=imap_server.port,
                  imap_user="bounces@therapycentral.example", imap_folder="INBOX")
    # The certificate is verified: here it is trusted the way an administrator would trust a private CA.
    env = {**environ, "MAILER_IMAP_PASSWORD": "s3cret pass", "SSL_CERT_FILE": str(certificate)}

    result = invoke(config_path, env, "bounces", "process")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("messages 2, hard 1, soft 0, complaints 0, ignored 1,")
    assert [sorted(m.flags) for m in imap_server.messages] == [["\\Seen"]] * 3
    assert "UID FETCH" in imap_server.commands and "UID STORE" in imap_server.commands
    assert state(sessions).suppressions["nobody@example.com"][0] == "hard_bounce"

    again = invoke(config_path, env, "bounces", "process")
    assert again.output.startswith("messages 0,")


def test_imap_refuses_an_untrusted_certificate(imap_server: ImapServer) -> None:
    with pytest.raises(MailboxError, match=r"^IMAP 127\.0\.0\.1:\d+: certificate not trusted"):
        ImapMailbox("bounces", "127.0.0.1", imap_server.port, "bounces@therapycentral.example", "s3cret pass")


def test_imap_login_and_folder_errors_are_one_line(imap_server: ImapServer, certificate: Path) -> None:
    trusted = ssl.create_default_context(cafile=certificate)
    with pytest.raises(MailboxError, match=r": \[AUTHENTICATIONFAILED\] Invalid credentials$"):
        ImapMailbox("bounces", "127.0.0.1", imap_server.port, "bounces@therapycentral.example", "wrong",
                    ssl_context=trusted)
    with pytest.raises(MailboxError, match=r"cannot open folder 'Bounces'"):
        ImapMailbox("bounces", "127.0.0.1", imap_server.port, "bounces@therapycentral.example", "s3cret pass",
                    "Bounces", ssl_context=trusted)


def test_the_scheduled_job_reads_the_mailbox_or_skips_without_one(settings: Settings, sessions: Sessions,
                                                                   config_path: Path, environ: dict[str, str],
                                                                   tmp_path: Path) -> None:
    from mailer import config as config_module
    from mailer import jobs
    from mailer.models import JobRun
    from mailer.runtime import Runtime

    runtime = Runtime(settings)
    try:
        assert jobs.run_job(runtime, "process_bounces", T0) == {}
        with runtime.sessions() as session:
            assert session.scalar(select(JobRun.outcome).where(JobRun.job_id == "process_bounces")) == "skipped"
    finally:
        runtime.close()
    subscribe(sessions, settings, "nobody@example.com")
    folder = tmp_path / "job-maildir"
    mailbox.Maildir(folder, create=True).add(corpus("postfix-user-unknown.eml"))
    runtime = Runtime(config_module.load(bounce_config(config_path, source="maildir", maildir=folder), environ))
    try:
        counts = jobs.run_job(runtime, "process_bounces", T0)
        assert counts["hard"] == 1 and counts["suppressed"] == 1
        assert jobs.run_job(runtime, "process_bounces", T0)["messages"] == 0  # nothing twice
    finally:
        runtime.close()
    assert state(sessions).suppressions["nobody@example.com"][0] == "hard_bounce"
