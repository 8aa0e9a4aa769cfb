"""The SMTP and file transports against a real aiosmtpd server: every outcome, and what the relay got."""

from __future__ import annotations

import base64
import email
import email.policy
import re
import select
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dkim
import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from mailer import config as config_module
from mailer.config import Dkim, parse_smtp_url
from mailer.outbound.transport import (
    DkimSigner,
    Envelope,
    FileTransport,
    SendResult,
    SMTPConnection,
    SMTPTransport,
    load_dkim,
    make_transport,
)
from tests.conftest import free_port
from tests.smtp_server import SMTPServer

SENDER = "news@therapycentral.example"


def message(
    to: str = "anna@example.org", subject: str = "Spring news", body: str = "Hello Anna,\r\n"
) -> bytes:
    """A complete marketing message, CRLF line endings, the headers the service really sends."""
    return (
        f"From: Therapy Central <{SENDER}>\r\n"
        f"To: {to}\r\n"
        f"Subject: {subject}\r\n"
        "Date: Tue, 03 Mar 2026 09:00:00 -0600\r\n"
        "Message-ID: <20260303.1234@therapycentral.example>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 7bit\r\n"
        "List-Unsubscribe: <https://mail.therapycentral.example/u/tok>, <mailto:unsub@therapycentral.example>\r\n"
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        "\r\n"
        f"{body}"
    ).encode()


def envelope(to: str = "anna@example.org", key: str = "1", data: bytes | None = None) -> Envelope:
    return Envelope(SENDER, to, message(to) if data is None else data, key)


def smtp_transport(
    server: SMTPServer,
    *,
    timeout: float = 5.0,
    scheme: str = "smtp",
    userinfo: str = "",
    query: str = "",
    **kwargs,
) -> SMTPTransport:
    url = f"{scheme}://{userinfo}127.0.0.1:{server.port}" + (f"?{query}" if query else "")
    return SMTPTransport(parse_smtp_url(url), timeout=timeout, local_hostname="mailer.test", **kwargs)


@pytest.fixture(autouse=True, params=["pipelining", "no-pipelining"])
def relay_pipelining(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Every transport test runs against a relay that offers PIPELINING (one round trip for the envelope)
    and one that does not (a command at a time)."""
    monkeypatch.setattr(SMTPServer, "pipelining", request.param == "pipelining")
    return request.param == "pipelining"


@pytest.fixture
def connect() -> Iterator[Callable[[SMTPTransport], SMTPConnection]]:
    """Open connections through this, so every test closes what it opened."""
    opened: list[SMTPConnection] = []

    def open_(transport: SMTPTransport) -> SMTPConnection:
        connection = transport.connect()
        opened.append(connection)
        return connection

    yield open_
    for connection in opened:
        connection.close()


def _openssl(*args: str) -> bytes:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    return subprocess.run(["openssl", *args], check=True, capture_output=True).stdout


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key: (cert.pem, key.pem)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
        "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert),
    )  # fmt: skip
    return cert, key


@pytest.fixture
def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


@pytest.fixture(scope="session")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """(private key PEM, the DNS TXT record publishing its public key)."""
    folder = tmp_path_factory.mktemp("dkim")
    key = folder / "dkim.pem"
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key))
    public = _openssl("pkey", "-in", str(key), "-pubout", "-outform", "DER")
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    return key.read_bytes(), record


def dns_for(
    record: bytes, name: bytes = b"mail2026._domainkey.therapycentral.example."
) -> Callable[..., bytes | None]:
    def lookup(qname: bytes, timeout: float = 5) -> bytes | None:
        return record if qname == name else None

    return lookup


def signed_headers(data: bytes) -> list[str]:
    header = email.message_from_bytes(data, policy=email.policy.compat32)["DKIM-Signature"]
    match = re.search(r"\bh=([^;]+)", "".join(header.split()))
    assert match, header
    return [name.lower() for name in match.group(1).split(":")]


# --- accepting and reusing -----------------------------------------------------------------------


def test_several_messages_go_through_one_connection(smtp_server: SMTPServer, connect) -> None:
    connection = connect(smtp_transport(smtp_server))
    results = [connection.send(envelope(f"person{n}@example.org", key=str(n))) for n in range(3)]

    assert [r.outcome for r in results] == ["sent"] * 3
    assert all(r.code == 250 for r in results)
    assert smtp_server.connections == 1
    assert [item.rcpt_tos for item in smtp_server.received] == [[f"person{n}@example.org"] for n in range(3)]
    assert all(item.mail_from == SENDER for item in smtp_server.received)
    assert smtp_server.messages_to("person1@example.org")[0]["Subject"] == "Spring news"


def test_nothing_is_opened_before_the_first_send(smtp_server: SMTPServer, connect) -> None:
    connect(smtp_transport(smtp_server))
    assert smtp_server.connections == 0


def test_leading_dots_survive_the_trip(smtp_server: SMTPServer, connect) -> None:
    body = ".starts with a dot\r\n..two dots\r\n.\r\nend\r\n"
    result = connect(smtp_transport(smtp_server)).send(envelope(data=message(body=body)))

    assert result.outcome == "sent"
    assert len(smtp_server.received) == 1
    assert smtp_server.received[0].data.endswith(body.encode())


def test_a_connection_the_relay_closed_while_idle_is_reopened_without_failing(make_server, connect) -> None:
    server = make_server(timeout=0.3)  # aiosmtpd closes a connection idle for this long
    connection = connect(smtp_transport(server))
    assert connection.send(envelope(key="1")).outcome == "sent"
    time.sleep(0.8)

    assert connection.send(envelope(key="2")).outcome == "sent"
    assert server.connections == 2
    assert len(server.received) == 2


# --- refusals ------------------------------------------------------------------------------------


def test_421_greeting_is_temporary_and_the_next_send_reconnects(smtp_server: SMTPServer, connect) -> None:
    smtp_server.faults.greeting = "421 4.3.2 too busy, come back later"
    connection = connect(smtp_transport(smtp_server))

    result = connection.send(envelope())
    assert (result.outcome, result.code, result.stage) == ("temporary", 421, "connect")
    assert "too busy" in result.detail
    assert smtp_server.received == [] and smtp_server.mail_commands == 0

    smtp_server.faults.greeting = None
    assert connection.send(envelope()).outcome == "sent"
    assert smtp_server.connections == 2
    assert len(smtp_server.received) == 1


def test_421_on_rcpt_closes_the_connection_and_the_next_send_opens_another(
    smtp_server: SMTPServer, connect
) -> None:
    smtp_server.faults.rcpt["*"] = "421 4.7.0 shutting down"
    connection = connect(smtp_transport(smtp_server))

    result = connection.send(envelope())
    assert (result.outcome, result.code, result.stage) == ("temporary", 421, "rcpt")

    smtp_server.faults.rcpt.clear()
    assert connection.send(envelope()).outcome == "sent"
    assert smtp_server.connections == 2
    assert smtp_server.rset_commands == 0  # not on a connection the relay was closing
    assert len(smtp_server.received) == 1


@pytest.mark.parametrize("reply", ["451 4.3.0 greylisted, try again", "452 4.2.2 mailbox full"])
def test_4xx_on_rcpt_is_temporary_and_the_connection_is_reset_and_reused(
    smtp_server: SMTPServer, connect, reply: str
) -> None:
    smtp_server.faults.rcpt["anna@example.org"] = reply
    connection = connect(smtp_transport(smtp_server))

    result = connection.send(envelope("anna@example.org"))
    assert result == SendResult("temporary", int(reply[:3]), f"RCPT TO: {reply}", "rcpt")
    assert smtp_server.received == []

    assert connection.send(envelope("ben@example.org")).outcome == "sent"
    assert smtp_server.rset_commands == 1
    assert smtp_server.connections == 1
    assert [item.rcpt_tos for item in smtp_server.received] == [["ben@example.org"]]


@pytest.mark.parametrize("reply", ["550 5.1.1 no such user here", "553 5.1.3 mailbox name not allowed"])
def test_5xx_on_rcpt_is_permanent_with_the_code_and_text(
    smtp_server: SMTPServer, connect, reply: str
) -> None:
    smtp_server.faults.rcpt["gone@example.org"] = reply
    connection = connect(smtp_transport(smtp_server))

    result = connection.send(envelope("gone@example.org"))
    assert result == SendResult("permanent", int(reply[:3]), f"RCPT TO: {reply}", "rcpt", address_rejected=True)
    assert smtp_server.received == [] and smtp_server.data_commands == 0

    assert connection.send(envelope("anna@example.org")).outcome == "sent"
    assert smtp_server.rset_commands == 1 and smtp_server.connections == 1


def test_554_after_data_is_permanent(smtp_server: SMTPServer, connect) -> None:
    smtp_server.faults.data = "554 5.7.1 message refused as spam"
    result = connect(smtp_transport(smtp_server)).send(envelope())

    assert result == SendResult("permanent", 554, "end of DATA: 554 5.7.1 message refused as spam", "data")
    assert smtp_server.data_commands == 1
    assert smtp_server.received == []


def test_451_after_data_is_temporary(smtp_server: SMTPServer, connect) -> None:
    smtp_server.faults.data = "451 4.3.0 local problem"
    result = connect(smtp_transport(smtp_server)).send(envelope())

    assert (result.outcome, result.code, result.stage) == ("temporary", 451, "data")
    assert smtp_server.received == []


def test_5xx_on_mail_from_is_temporary_because_the_sender_not_the_recipient_is_refused(
    smtp_server: SMTPServer, connect
) -> None:
    smtp_server.faults.mail = "553 5.7.1 sender not allowed to relay"
    result = connect(smtp_transport(smtp_server)).send(envelope())

    assert result == SendResult("temporary", 553, "MAIL FROM: 553 5.7.1 sender not allowed to relay", "mail",
                                sender_refused=True)
    assert smtp_server.received == []


# --- lost connections and stalls -----------------------------------------------------------------


def test_connection_refused_is_temporary() -> None:
    url = parse_smtp_url(f"smtp://127.0.0.1:{free_port()}")
    connection = SMTPTransport(url, timeout=2, local_hostname="mailer.test").connect()

    result = connection.send(envelope())
    assert (result.outcome, result.stage) == ("temporary", "connect")
    assert "refused" in result.detail.lower()
    connection.close()


def test_drop_in_the_middle_of_data_is_temporary_and_the_next_send_reconnects(
    smtp_server: SMTPServer, connect
) -> None:
    # Larger than the kernel's socket buffers, so the client is still writing when the relay resets.
    body = ("A" * 76 + "\r\n") * 220_000
    smtp_server.faults.drop_mid_data = True
    connection = connect(smtp_transport(smtp_server))

    result = connection.send(envelope(data=message(body=body)))
    assert (result.outcome, result.stage) == ("temporary", "data")
    assert result.detail.startswith("message data:")
    assert smtp_server.received == []

    smtp_server.faults.drop_mid_data = False
    assert connection.send(envelope()).outcome == "sent"
    assert smtp_server.connections == 2


def test_drop_after_the_final_dot_is_unknown(smtp_server: SMTPServer, connect) -> None:
    smtp_server.faults.drop_after_dot = True
    connection = connect(smtp_transport(smtp_server))

    result = connection.send(envelope())
    assert (result.outcome, result.code, result.stage) == ("unknown", None, "data")
    assert smtp_server.data_commands == 1  # the relay had the whole message
    assert smtp_server.received == []

    smtp_server.faults.drop_after_dot = False
    assert connection.send(envelope()).outcome == "sent"
    assert smtp_server.connections == 2


def test_no_reply_to_the_final_dot_within_the_timeout_is_unknown(smtp_server: SMTPServer, connect) -> None:
    smtp_server.faults.data_delay = 1.5
    connection = connect(smtp_transport(smtp_server, timeout=0.5))

    started = time.monotonic()
    result = connection.send(envelope())
    assert time.monotonic() - started < 1.4
    assert (result.outcome, result.stage) == ("unknown", "data")
    assert "no reply within 0.5 s" in result.detail
    assert smtp_server.data_commands == 1
    assert smtp_server.received == []  # aiosmtpd abandons the message when the client hangs up

    smtp_server.faults.data_delay = 0
    assert connection.send(envelope()).outcome == "sent"
    assert smtp_server.connections == 2


def test_a_stall_at_rcpt_is_temporary(smtp_server: SMTPServer, connect) -> None:
    smtp_server.faults.rcpt_delay = 1.5
    connection = connect(smtp_transport(smtp_server, timeout=0.5))

    result = connection.send(envelope())
    assert (result.outcome, result.stage) == ("temporary", "rcpt")
    assert result.detail == "RCPT TO: no reply within 0.5 s"
    assert smtp_server.data_commands == 0 and smtp_server.received == []


def test_close_never_raises() -> None:
    server = SMTPServer()
    server.start()
    try:
        transport = smtp_transport(server)
        transport.connect().close()  # never opened
        connection = transport.connect()
        assert connection.send(envelope()).outcome == "sent"
        assert len(server.received) == 1
    finally:
        server.stop()
    connection.close()  # the relay is gone: QUIT fails quietly
    connection.close()


# --- TLS -----------------------------------------------------------------------------------------


def test_starttls_asked_for_but_not_offered_is_temporary_and_nothing_goes_in_clear(
    smtp_server: SMTPServer, connect
) -> None:
    result = connect(smtp_transport(smtp_server, query="starttls=true")).send(envelope())

    assert (result.outcome, result.stage) == ("temporary", "connect")
    assert result.detail.startswith("STARTTLS refused")
    assert smtp_server.mail_commands == 0 and smtp_server.received == []


def test_starttls_refused_by_the_relay_is_temporary(make_server, server_tls, connect) -> None:
    server = make_server(tls_context=server_tls)
    server.faults.starttls = "454 4.7.0 TLS not available right now"
    result = connect(smtp_transport(server, query="starttls=true")).send(envelope())

    assert (result.outcome, result.code) == ("temporary", 454)
    assert "STARTTLS refused" in result.detail and "TLS not available right now" in result.detail
    assert server.mail_commands == 0 and server.received == []


def test_starttls_with_an_untrusted_certificate_is_temporary(make_server, server_tls, connect) -> None:
    server = make_server(tls_context=server_tls, require_starttls=True)
    result = connect(smtp_transport(server, query="starttls=true")).send(envelope())

    assert (result.outcome, result.stage) == ("temporary", "connect")
    assert "certificate" in result.detail
    assert server.mail_commands == 0 and server.received == []


def test_starttls_with_the_relays_certificate_as_cafile_is_sent(
    make_server, server_tls, certificate, connect
) -> None:
    server = make_server(tls_context=server_tls, require_starttls=True)
    connection = connect(smtp_transport(server, query=f"starttls=true&cafile={certificate[0]}"))

    assert connection.send(envelope(key="1")).outcome == "sent"
    assert connection.send(envelope(key="2")).outcome == "sent"
    assert [item.tls for item in server.received] == [True, True]
    assert server.connections == 1


def test_starttls_with_verify_false_accepts_a_self_signed_certificate(
    make_server, server_tls, connect
) -> None:
    server = make_server(tls_context=server_tls, require_starttls=True)
    result = connect(smtp_transport(server, query="starttls=true&verify=false")).send(envelope())

    assert result.outcome == "sent"
    assert len(server.received) == 1 and server.received[0].tls is True


def test_implicit_tls_is_sent_when_the_certificate_is_trusted(
    make_server, server_tls, certificate, connect
) -> None:
    server = make_server(ssl_context=server_tls)
    result = connect(smtp_transport(server, scheme="smtps", query=f"cafile={certificate[0]}")).send(
        envelope()
    )

    assert result.outcome == "sent"
    assert len(server.received) == 1 and server.received[0].tls is True


@pytest.mark.parametrize("scheme", ["smtps", "starttls"])
def test_timeouts_hold_on_tls_sessions_too(make_server, server_tls, certificate, connect, scheme: str) -> None:
    """A plain session leaves its timeout to the kernel (below); a TLS one keeps Python's, since the ssl
    module would wait out the kernel's for ever. Either way the wait ends and reads as "no reply"."""
    if scheme == "smtps":
        server = make_server(ssl_context=server_tls)
        transport = smtp_transport(server, scheme="smtps", query=f"cafile={certificate[0]}", timeout=0.5)
    else:
        server = make_server(tls_context=server_tls, require_starttls=True)
        transport = smtp_transport(server, query=f"starttls=true&cafile={certificate[0]}", timeout=0.5)
    connection = connect(transport)
    assert connection.send(envelope(key="1")).outcome == "sent"

    server.faults.data_delay = 1.5
    started = time.monotonic()
    result = connection.send(envelope(key="2"))
    assert time.monotonic() - started < 1.4
    assert (result.outcome, result.stage) == ("unknown", "data")
    assert "no reply within 0.5 s" in result.detail

    server.faults.data_delay = 0
    assert connection.send(envelope(key="3")).outcome == "sent"
    assert [item.tls for item in server.received] == [True, True]
    assert server.connections == 2
    assert connection._smtp.sock.gettimeout() == 0.5  # noqa: SLF001


def test_an_open_session_leaves_its_timeout_to_the_kernel(smtp_server: SMTPServer, connect) -> None:
    connection = connect(smtp_transport(smtp_server, timeout=2.5))
    assert connection.send(envelope()).outcome == "sent"
    sock = connection._smtp.sock  # noqa: SLF001
    assert sock.gettimeout() is None  # no poll(2) before each send and receive
    for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
        assert struct.unpack("@ll", sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("@ll"))) == (2, 500_000)


def test_implicit_tls_with_an_untrusted_certificate_is_temporary(make_server, server_tls, connect) -> None:
    server = make_server(ssl_context=server_tls)
    result = connect(smtp_transport(server, scheme="smtps")).send(envelope())

    assert (result.outcome, result.stage) == ("temporary", "connect")
    assert "certificate" in result.detail
    assert server.connections == 0 and server.received == []  # the handshake failed before any SMTP


def test_a_missing_cafile_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="cafile"):
        SMTPTransport(
            parse_smtp_url("smtp://relay.example:587?starttls=true&cafile=/nonexistent.pem"), timeout=5
        )


# --- AUTH ----------------------------------------------------------------------------------------


def _authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:  # noqa: ANN001
    good = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"clinic",
        b"s3cret:pw",
    )
    # handled=False: let aiosmtpd send the 535 itself (with the default True it sends nothing).
    return AuthResult(success=good, handled=False, auth_data="clinic" if good else None)


def test_auth_success(make_server, connect) -> None:
    server = make_server(authenticator=_authenticator, auth_require_tls=False)
    result = connect(smtp_transport(server, userinfo="clinic:s3cret%3Apw@")).send(envelope())

    assert result.outcome == "sent"
    assert [item.login for item in server.received] == ["clinic"]


def test_auth_failure_is_temporary_and_nothing_is_sent(make_server, connect) -> None:
    server = make_server(authenticator=_authenticator, auth_require_tls=False)
    result = connect(smtp_transport(server, userinfo="clinic:wrong@")).send(envelope())

    assert (result.outcome, result.code, result.stage) == ("temporary", 535, "connect")
    assert result.sender_refused and not result.address_rejected
    assert "authentication failed" in result.detail
    assert server.mail_commands == 0 and server.received == []


# --- international addresses --------------------------------------------------------------------


def test_a_non_ascii_recipient_is_sent_with_smtputf8_when_the_relay_offers_it(
    smtp_server: SMTPServer, connect
) -> None:
    result = connect(smtp_transport(smtp_server)).send(envelope("zoë@example.org"))

    assert result.outcome == "sent"
    assert [item.rcpt_tos for item in smtp_server.received] == [["zoë@example.org"]]
    assert "SMTPUTF8" in smtp_server.received[0].mail_options


def test_a_non_ascii_recipient_is_permanent_when_the_relay_lacks_smtputf8(make_server, connect) -> None:
    server = make_server(enable_SMTPUTF8=False)
    connection = connect(smtp_transport(server))

    result = connection.send(envelope("zoë@example.org"))
    assert result == SendResult(
        "permanent", None, "recipient needs SMTPUTF8, which the relay does not offer", "envelope"
    )
    assert server.mail_commands == 0 and server.received == []

    assert connection.send(envelope("zoe@example.org")).outcome == "sent"
    assert server.connections == 1


def test_a_non_ascii_domain_is_sent_in_idna_form(make_server, connect) -> None:
    server = make_server(enable_SMTPUTF8=False)
    result = connect(smtp_transport(server)).send(envelope("anna@bücher.example"))

    assert result.outcome == "sent"
    assert [item.rcpt_tos for item in server.received] == [["anna@xn--bcher-kva.example"]]
    assert "SMTPUTF8" not in server.received[0].mail_options


# --- DKIM ----------------------------------------------------------------------------------------


def test_dkim_signature_verifies_and_covers_the_unsubscribe_headers(dkim_key) -> None:
    private, record = dkim_key
    signer = DkimSigner("mail2026", "therapycentral.example", private)

    signed = signer.sign(message())
    assert signed.startswith(b"DKIM-Signature:")
    assert signed.endswith(message())
    assert dkim.verify(signed, dnsfunc=dns_for(record))
    headers = signed_headers(signed)
    assert {"from", "subject", "list-unsubscribe", "list-unsubscribe-post"} <= set(headers)
    assert "reply-to" not in headers  # the message has none: only present headers are listed
    assert "c=relaxed/relaxed" in "".join(signed.decode().split("\r\n\r\n")[0].split())


def test_a_changed_subject_breaks_the_signature(dkim_key) -> None:
    private, record = dkim_key
    signed = DkimSigner("mail2026", "therapycentral.example", private).sign(message())
    tampered = signed.replace(b"Subject: Spring news", b"Subject: Spring sale")
    assert not dkim.verify(tampered, dnsfunc=dns_for(record))


def test_load_dkim_reads_the_key_from_the_environment_or_the_file(tmp_path: Path, dkim_key) -> None:
    private, _ = dkim_key
    key_file = tmp_path / "dkim.pem"
    key_file.write_bytes(private)
    configured = Dkim(selector="mail2026", domain="therapycentral.example", private_key_path=str(key_file))

    assert isinstance(load_dkim(configured), DkimSigner)
    flattened = private.decode().replace("\n", "\\n")  # how a PEM often ends up in an env variable
    assert isinstance(load_dkim(Dkim(selector="s", domain="d.example"), flattened), DkimSigner)
    assert load_dkim(Dkim()) is None
    assert load_dkim(Dkim(selector="mail2026", domain="therapycentral.example")) is None


def test_load_dkim_with_an_unreadable_or_bad_key_raises_one_line(tmp_path: Path) -> None:
    missing = Dkim(selector="s", domain="d.example", private_key_path=str(tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match="private_key_path: cannot read") as raised:
        load_dkim(missing)
    assert "\n" not in str(raised.value)

    with pytest.raises(ValueError, match="not a PEM RSA key") as raised:
        load_dkim(
            Dkim(selector="s", domain="d.example"),
            "-----BEGIN PRIVATE KEY-----\nnonsense\n-----END PRIVATE KEY-----",
        )
    assert "\n" not in str(raised.value)


# --- files ---------------------------------------------------------------------------------------


def test_file_transport_writes_a_parseable_eml_named_after_the_key(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    connection = FileTransport(outbox).connect()

    result = connection.send(envelope(key="42"))
    assert result == SendResult("sent", None, str(outbox / "42.eml"))
    parsed = email.message_from_bytes((outbox / "42.eml").read_bytes(), policy=email.policy.default)
    assert parsed["Subject"] == "Spring news"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    assert connection.send(envelope(key="42")).outcome == "sent"  # the same message again replaces it
    assert sorted(path.name for path in outbox.iterdir()) == ["42.eml"]  # no temporary files left
    connection.close()


def test_file_transport_never_writes_outside_its_folder(tmp_path: Path) -> None:
    outbox = tmp_path / "a" / "outbox"
    connection = FileTransport(outbox).connect()

    for key in ("../../escaped", "/etc/passwd", "..", "x/../../y"):
        result = connection.send(envelope(key=key))
        assert result.outcome == "sent"
        written = Path(result.detail)
        assert written.parent == outbox and written.suffix == ".eml"
        assert not written.name.startswith(".")
    assert sorted(path.name for path in tmp_path.rglob("*") if path.is_file()) == sorted(
        path.name for path in outbox.iterdir()
    )
    assert len(list(outbox.iterdir())) == 4


def test_file_transport_names_a_keyless_message_after_its_message_id(tmp_path: Path) -> None:
    result = FileTransport(tmp_path).connect().send(envelope(key=""))
    assert Path(result.detail).name.startswith("20260303.1234_therapycentral.example-")


# --- wiring --------------------------------------------------------------------------------------


def test_make_transport_follows_the_config(config_path: Path, tmp_path: Path) -> None:
    environ = {"MAILER_SECRET_KEY": "test-secret-key-0123456789"}
    file_settings = config_module.load(config_path, environ)
    transport = make_transport(file_settings)
    assert isinstance(transport, FileTransport)
    assert transport.outbox_dir == tmp_path / "outbox"

    smtp_settings = config_module.load(
        config_path, {**environ, "MAILER_SMTP_URL": "smtp://relay.example:2525"}
    )
    transport = make_transport(smtp_settings)
    assert isinstance(transport, SMTPTransport)
    assert (transport.smtp.host, transport.smtp.port) == ("relay.example", 2525)
    assert transport.timeout == smtp_settings.delivery.timeout_seconds


# --- a stream of messages: one round trip each with PIPELINING ----------------------------------


def stream(connection: SMTPConnection, envelopes: list[Envelope]) -> list[SendResult]:
    """Send through SMTPConnection.stream; the results in the order the envelopes were given."""
    pending = iter(enumerate(envelopes))
    results: dict[int, SendResult] = {}
    connection.stream(lambda wait: next(pending, None), lambda token, result: results.__setitem__(token, result))
    assert sorted(results) == list(range(len(envelopes)))  # each reported exactly once
    return [results[n] for n in range(len(envelopes))]


def people(count: int) -> list[Envelope]:
    return [envelope(f"person{n}@example.org", key=str(n)) for n in range(count)]


def test_a_stream_sends_each_message_once_over_one_connection(smtp_server: SMTPServer, connect) -> None:
    results = stream(connect(smtp_transport(smtp_server)), people(5))
    assert [r.outcome for r in results] == ["sent"] * 5
    assert [item.rcpt_tos for item in smtp_server.received] == [[f"person{n}@example.org"] for n in range(5)]
    assert smtp_server.connections == 1 and smtp_server.rset_commands == 0


def test_a_drop_after_a_dot_mid_stream_is_unknown_and_the_next_message_goes_on_a_new_connection(
    smtp_server: SMTPServer, connect
) -> None:
    smtp_server.faults.drop_after_dot_at = 2
    results = stream(connect(smtp_transport(smtp_server)), people(4))
    assert [r.outcome for r in results] == ["sent", "unknown", "sent", "sent"]
    assert results[1].stage == "data"
    assert [item.rcpt_tos[0] for item in smtp_server.received] == [f"person{n}@example.org" for n in (0, 2, 3)]
    assert smtp_server.connections == 2


def test_421_after_a_dot_mid_stream_closes_and_the_next_message_is_not_lost(smtp_server: SMTPServer, connect) -> None:
    smtp_server.faults.data_script = lambda count: "421 4.3.2 shutting down" if count == 1 else None
    results = stream(connect(smtp_transport(smtp_server)), people(3))
    assert [(r.outcome, r.code) for r in results] == [("temporary", 421), ("sent", 250), ("sent", 250)]
    assert smtp_server.connections == 2


def test_a_refused_recipient_mid_stream_fails_alone(smtp_server: SMTPServer, connect) -> None:
    smtp_server.faults.rcpt["person1@example.org"] = "550 5.1.1 no such user"
    smtp_server.faults.data_script = lambda count: "554 5.7.1 looks like spam" if count == 3 else None
    results = stream(connect(smtp_transport(smtp_server)), people(5))
    assert [(r.outcome, r.stage) for r in results] == [
        ("sent", ""), ("permanent", "rcpt"), ("sent", ""), ("permanent", "data"), ("sent", "")
    ]
    assert [item.rcpt_tos[0] for item in smtp_server.received] == [f"person{n}@example.org" for n in (0, 2, 4)]
    assert smtp_server.connections == 1


def test_a_message_that_cannot_be_sent_mid_stream_does_not_disturb_the_others(smtp_server: SMTPServer, connect) -> None:
    envelopes = people(3)
    envelopes.insert(1, envelope("not an address", key="bad"))
    results = stream(connect(smtp_transport(smtp_server)), envelopes)
    assert [(r.outcome, r.stage) for r in results] == [("sent", ""), ("permanent", "envelope"), ("sent", ""), ("sent", "")]
    assert len(smtp_server.received) == 3


class _WaitingRelay:
    """A minimal relay that holds its reply to each final "." until the next command has arrived (or
    `patience` seconds passed), and records which it was: a client that pipelines the next envelope
    behind the message content gets every reply at once, one that waits for each reply never does."""

    def __init__(self, patience: float = 0.5) -> None:
        self.patience = patience
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.next_was_there: list[bool] = []
        self.messages = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        buffer = bytearray()

        def readline() -> bytes:
            while b"\r\n" not in buffer:
                chunk = conn.recv(65536)
                if not chunk:
                    return b""
                buffer.extend(chunk)
            line, _, rest = bytes(buffer).partition(b"\r\n")
            buffer[:] = rest
            return line + b"\r\n"

        with conn:
            conn.sendall(b"220 relay ready\r\n")
            while line := readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    conn.sendall(b"250-relay\r\n250 PIPELINING\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 go on\r\n")
                    while readline() not in (b".\r\n", b""):
                        pass
                    self.messages += 1
                    waiting = bool(buffer) or bool(select.select([conn], [], [], self.patience)[0])
                    self.next_was_there.append(waiting)
                    conn.sendall(b"250 queued\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")

    def close(self) -> None:
        self.server.close()
        self.thread.join(timeout=5)


def test_with_pipelining_the_next_envelope_leaves_with_the_message_content(connect) -> None:
    relay = _WaitingRelay()
    try:
        transport = SMTPTransport(parse_smtp_url(f"smtp://127.0.0.1:{relay.port}"), timeout=5, local_hostname="t")
        connection = connect(transport)
        results = stream(connection, people(4))
        connection.close()
    finally:
        relay.close()
    assert [r.outcome for r in results] == ["sent"] * 4
    # Every message but the last had the next envelope right behind it; the last waited for nothing.
    assert relay.next_was_there[:3] == [True, True, True]
    assert relay.messages == 4
