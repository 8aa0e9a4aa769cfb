"""The send engine's seams: a transport found by name, a message kind registered at the edge, DKIM signed
once by the engine, and the campaign circuit breaker against a relay that refuses us."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import logging
import threading
from pathlib import Path

import dkim
from aiosmtpd.smtp import AuthResult, LoginPassword
from click.testing import CliRunner
from sqlalchemy import select

from mailer import config
from mailer.cli import main
from mailer.message_kinds import registry
from mailer.models import Campaign, OutboxMessage, Suppression
from mailer.outbound import outbox, transport
from mailer.outbound.delivery import HALT_AFTER_REFUSALS, Delivery
from mailer.outbound.kinds import MessageKind
from mailer.outbound.transport import Envelope, SendResult, SMTPTransport
from mailer.publishing import campaigns
from mailer.publishing.render import Renderer
from mailer.runtime import Runtime, fixed_clock
from tests.builders import T0, add_subscribers, deliver, smtp, start_campaign
from tests.test_transport import dkim_key, dns_for  # noqa: F401  (fixtures)

# --- a transport registered by name ---------------------------------------------------------------


class PigeonTransport:
    """A transport that is not SMTP: it keeps what it is given and refuses one address by its own rule."""

    def __init__(self) -> None:
        self.delivered: list[Envelope] = []
        self.lock = threading.Lock()

    def connect(self) -> PigeonTransport:
        return self

    def send(self, envelope: Envelope) -> SendResult:
        if envelope.rcpt.startswith("nobody@"):
            return SendResult("permanent", None, "no pigeon knows that loft", address_rejected=True)
        with self.lock:
            self.delivered.append(envelope)
        return SendResult("sent", None, "landed")

    def stream(self, take, done) -> None:  # noqa: ANN001
        while (item := take(True)) is not None:
            done(item[0], self.send(item[1]))

    def close(self) -> None:
        pass


def test_a_transport_registered_by_name_is_chosen_by_the_config(config_path: Path, environ, sessions) -> None:  # noqa: ANN001
    import jobs.deliver

    pigeons = PigeonTransport()
    transport.register("pigeon", lambda settings: pigeons)
    config_path.write_text(config_path.read_text().replace('transport = "file"', 'transport = "pigeon"'))
    settings = config.load(config_path, environ)
    add_subscribers(sessions, settings, ["ana@example.org", "nobody@example.org"])
    start_campaign(sessions, settings)
    runtime = Runtime(settings, clock=fixed_clock(T0))
    try:
        assert runtime.transport is pigeons
        counts = jobs.deliver.run(runtime, T0)
    finally:
        runtime.close()
    assert (counts["sent"], counts["failed"]) == (1, 1)
    assert [envelope.rcpt for envelope in pigeons.delivered] == ["ana@example.org"]
    with sessions() as session:  # the transport's own "address rejected" suppresses, as an SMTP 550 would
        assert list(session.scalars(select(Suppression.reason))) == ["hard_bounce"]


def test_an_unknown_transport_name_is_a_config_error_naming_the_key(config_path: Path, environ) -> None:  # noqa: ANN001
    config_path.write_text(config_path.read_text().replace('transport = "file"', 'transport = "carrier"'))
    try:
        config.load(config_path, environ)
    except config.ConfigError as exc:
        assert "delivery.transport: no transport named 'carrier'" in str(exc) and "smtp" in str(exc)
    else:
        raise AssertionError("loaded a config with an unknown transport")


# --- a message kind registered at the edge --------------------------------------------------------


def test_a_new_kind_is_one_registration(settings, sessions, engine, smtp_server) -> None:  # noqa: ANN001
    add_subscribers(sessions, settings, ["frontdesk@example.org"])
    with sessions() as session:
        contact_id = session.scalar(select(OutboxMessage.id).limit(1))  # none yet
        assert contact_id is None
        from mailer import audience

        contact = audience.find_contact(session, "frontdesk@example.org")
    with sessions.begin() as session:
        outbox.enqueue_one(session, dedupe_key="greeting:1", kind="greeting", contact_id=contact.id,
                           consent_event_id=None, now=T0)
    renderer = Renderer(settings)
    kinds = registry(settings, renderer)
    kinds["greeting"] = MessageKind(
        "confirm", lambda row: None,
        lambda session, row: renderer.prepare("email/system/confirm", subject="A new inquiry came in",
                                              preheader="", marketing=False),
        lambda row: ("Front desk", {"first_name": "Team", "confirm_url": "https://x.example/c"}))
    report = Delivery(settings, engine, smtp(smtp_server), fixed_clock(T0), kinds).run()
    assert report.sent == 1
    received = email.message_from_bytes(smtp_server.received[0].data, policy=email.policy.default)
    assert received["Subject"] == "A new inquiry came in" and received["To"] == "Front desk <frontdesk@example.org>"
    # Without the registration, the same row is skipped with the reason, never sent blank.
    with sessions.begin() as session:
        outbox.enqueue_one(session, dedupe_key="greeting:2", kind="greeting", contact_id=contact.id,
                           consent_event_id=None, now=T0)
    assert deliver(settings, engine, smtp_server, T0).skipped == 1
    with sessions() as session:
        assert "unknown message kind 'greeting'" in session.scalar(
            select(OutboxMessage.last_error).where(OutboxMessage.dedupe_key == "greeting:2"))


# --- DKIM, once, by the engine --------------------------------------------------------------------


def test_the_engine_signs_what_it_sends(settings, sessions, engine, smtp_server, dkim_key) -> None:  # noqa: ANN001, F811
    private, record = dkim_key
    settings = settings.model_copy(update={
        "dkim_private_key": private.decode(),
        "delivery": settings.delivery.model_copy(update={"dkim": config.Dkim(selector="mail2026",
                                                                             domain="therapycentral.example")})})
    add_subscribers(sessions, settings, ["signed@example.org"])
    start_campaign(sessions, settings)
    assert deliver(settings, engine, smtp_server, T0).sent == 1
    received = smtp_server.received[0].data
    assert received.startswith(b"DKIM-Signature:") and received.count(b"DKIM-Signature:") == 1
    assert dkim.verify(received, dnsfunc=dns_for(record))


# --- the circuit breaker --------------------------------------------------------------------------


def _halted(sessions, campaign_id: int) -> Campaign:  # noqa: ANN001
    with sessions() as session:
        return session.get(Campaign, campaign_id)


def test_a_relay_refusing_the_sender_halts_the_campaign_and_keeps_its_messages(
        settings, sessions, engine, smtp_server, caplog, config_path, environ) -> None:  # noqa: ANN001
    addresses = [f"p{n:02d}@example.com" for n in range(40)]
    add_subscribers(sessions, settings, addresses)
    campaign_id = start_campaign(sessions, settings)
    smtp_server.faults.mail = "553 5.7.1 sender not allowed"
    with caplog.at_level(logging.ERROR, logger="mailer.delivery"):
        report = deliver(settings, engine, smtp_server, T0)
    campaign = _halted(sessions, campaign_id)
    assert campaign.state == "halted" and "553 5.7.1 sender not allowed" in campaign.halted_reason
    assert any(r.levelno == logging.ERROR and f"campaign {campaign_id} halted" in r.getMessage() for r in caplog.records)
    # A few were tried (each connection's message in flight when it tripped), none failed, none skipped.
    assert HALT_AFTER_REFUSALS <= report.deferred < 20 and report.failed == report.skipped == report.sent == 0
    with sessions() as session:
        counts = outbox.counts(session, campaign_id)
        assert counts["queued"] + counts["deferred"] == 40 and counts["sending"] == 0
        assert list(session.scalars(select(Suppression))) == []
    assert deliver(settings, engine, smtp_server, T0 + dt.timedelta(hours=3)).handled == 0  # held
    # Staff see it...
    result = CliRunner().invoke(main, ["--config", str(config_path), "status"], env=environ)
    assert result.exit_code == 0 and f"Campaign {campaign_id} is halted" in result.output
    # ...fix the relay, and resume it: every message goes, once.
    smtp_server.faults.mail = None
    resumed_at = T0 + dt.timedelta(hours=4)
    with sessions.begin() as session:
        assert campaigns.resume(session, session.get(Campaign, campaign_id), resumed_at) == 40
    assert deliver(settings, engine, smtp_server, resumed_at).sent == 40
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == addresses


def _authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:  # noqa: ANN001
    return AuthResult(success=isinstance(auth_data, LoginPassword) and auth_data.password == b"right",
                      handled=False)


def test_a_relay_refusing_our_login_halts_the_campaign(settings, sessions, engine, make_server) -> None:  # noqa: ANN001
    server = make_server(authenticator=_authenticator, auth_require_tls=False)
    add_subscribers(sessions, settings, [f"q{n:02d}@example.com" for n in range(30)])
    campaign_id = start_campaign(sessions, settings)
    wrong = SMTPTransport(config.parse_smtp_url(server.url.replace("smtp://", "smtp://clinic:wrong@")), timeout=2.0)
    report = Delivery(settings, engine, wrong, fixed_clock(T0), registry(settings)).run()
    assert _halted(sessions, campaign_id).state == "halted"
    assert report.sent == report.failed == 0 and server.received == []
    with sessions() as session:
        assert outbox.counts(session, campaign_id)["failed"] == 0


def test_refusals_of_single_recipients_never_halt(settings, sessions, engine, smtp_server) -> None:  # noqa: ANN001
    add_subscribers(sessions, settings, [f"r{n:02d}@example.com" for n in range(12)])
    campaign_id = start_campaign(sessions, settings)
    smtp_server.faults.rcpt["*"] = "550 5.1.1 no such user"
    assert deliver(settings, engine, smtp_server, T0).failed == 12
    assert _halted(sessions, campaign_id).state == "sending"


def test_a_staff_test_send_is_signed_too(settings, sessions, engine, smtp_server, dkim_key) -> None:  # noqa: ANN001, F811
    from mailer.publishing import previews

    private, record = dkim_key
    settings = settings.model_copy(update={
        "dkim_private_key": private.decode(),
        "delivery": settings.delivery.model_copy(update={"dkim": config.Dkim(selector="mail2026",
                                                                             domain="therapycentral.example")})})
    campaign_id = start_campaign(sessions, settings)
    runtime = Runtime(settings, clock=fixed_clock(T0), engine_override=engine, transport_override=smtp(smtp_server))
    with sessions() as session:
        assert previews.send_test(runtime, session.get(Campaign, campaign_id), "staff@example.org").outcome == "sent"
    assert dkim.verify(smtp_server.received[0].data, dnsfunc=dns_for(record))
