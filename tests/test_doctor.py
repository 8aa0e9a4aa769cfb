"""`mailer doctor` against a whole setup on loopback (a DNS server, a relay with STARTTLS and AUTH, the app
over HTTPS, maildirs), and against a broken variant of each part: the right ✓ ! ✗ lines and exit codes."""

from __future__ import annotations

import datetime as dt
import json
import mailbox
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dkim
import dns.resolver
import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from werkzeug import serving

from mailer.cli import main
from mailer.doctor.domain import public_record
from tests import relay_payloads
from tests.certificates import make_certificate, server_context
from tests.dns_server import LoopbackDNS, Records
from tests.smtp_server import SMTPServer
from tests.web_fixtures import _QuietRequestHandler

DOMAIN = "therapycentral.example"
SELECTOR = "mail2026"
DKIM_NAME = f"{SELECTOR}._domainkey.{DOMAIN}"
USER, PASSWORD = "clinic", "relay-password"
NOW = dt.datetime.now(dt.UTC)  # certificates are checked against the real clock, as the command does
EVERY_CHECK = ["config", "secret_key", "intake_token", "database", "schema", "feed", "smtp_connect", "smtp_tls",
               "smtp_certificate", "smtp_auth", "smtp_sender", "spf", "dkim", "dmarc", "mx", "base_url",
               "one_click", "bounces_mailbox", "replies_mailbox"]


# --- the parts of a setup ------------------------------------------------------------------------


def _rsa_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _record_for(pem: bytes) -> str:
    return public_record(serialization.load_pem_private_key(pem, None).public_key())


@pytest.fixture(scope="module")
def dkim_keys() -> tuple[bytes, bytes]:
    """(the clinic's DKIM key, another key that is not the clinic's)."""
    return _rsa_pem(), _rsa_pem()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("certificates")
    day = dt.timedelta(days=1)
    return {
        "good": make_certificate(folder, "good", valid_from=NOW - day, valid_until=NOW + 90 * day),
        "expired": make_certificate(folder, "expired", valid_from=NOW - 60 * day, valid_until=NOW - 3 * day),
    }


@pytest.fixture
def dns_server(dkim_keys: tuple[bytes, bytes]) -> Iterator[LoopbackDNS]:
    """The clinic's domain as it should be; tests break a record by changing `records`."""
    records = Records(
        txt={
            DOMAIN: ["v=spf1 ip4:127.0.0.1 include:_spf.relay.example -all", "site-verification=abc123"],
            DKIM_NAME: [_record_for(dkim_keys[0])],
            f"_dmarc.{DOMAIN}": [f"v=DMARC1; p=quarantine; rua=mailto:dmarc@{DOMAIN}"],
        },
        mx={DOMAIN: [(10, f"mx1.{DOMAIN}"), (20, f"mx2.{DOMAIN}")]},
    )
    server = LoopbackDNS(records)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:  # noqa: ANN001
    good = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(), PASSWORD.encode())
    return AuthResult(success=good, handled=False, auth_data=USER if good else None)


@pytest.fixture
def start_relay(make_server: Callable[..., SMTPServer]) -> Callable[[tuple[Path, Path]], SMTPServer]:
    """Start a relay that insists on STARTTLS and AUTH, with the given certificate."""

    def start(certificate: tuple[Path, Path]) -> SMTPServer:
        return make_server(tls_context=server_context(certificate), require_starttls=True,
                           authenticator=_authenticator, auth_require_tls=True)

    return start


@pytest.fixture
def serve_https(certificates: dict[str, tuple[Path, Path]]) -> Iterator[Callable[..., str]]:
    """Serve a WSGI app on loopback (over TLS unless told otherwise); gives its base URL."""
    servers = []

    def serve(app: Flask, *, tls: bool = True) -> str:
        server = serving.make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietRequestHandler,
                             ssl_context=server_context(certificates["good"]) if tls else None)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"{'https' if tls else 'http'}://127.0.0.1:{server.port}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@dataclass
class Setup:
    """A clinic's installation wired to the loopback parts; `run` is `mailer doctor` against it."""

    config_path: Path
    environ: dict[str, str]
    dns: LoopbackDNS
    relay: SMTPServer

    def run(self, *args: str) -> tuple[int, dict[str, tuple[str, str]], str]:
        """Exit code, {check: (symbol, the rest of its line)}, and the whole output (stdout: the relay's
        own log lines go to stderr)."""
        result = CliRunner(env=self.environ).invoke(
            main, ["--config", str(self.config_path), "doctor", "--dns-server", self.dns.address, *args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        lines: dict[str, tuple[str, str]] = {}
        for line in result.stdout.splitlines():
            symbol, _, rest = line.partition(" ")
            if symbol in ("✓", "!", "✗"):
                check, _, text = rest.partition(": ")
                lines[check] = (symbol, text)
        return result.exit_code, lines, result.stdout


@pytest.fixture
def setup(tmp_path: Path, config_path: Path, database_url: str, dns_server: LoopbackDNS,
          start_relay: Callable[[tuple[Path, Path]], SMTPServer], serve_https: Callable[..., str], app: Flask,
          certificates: dict[str, tuple[Path, Path]], dkim_keys: tuple[bytes, bytes]) -> Setup:
    maildirs = {name: tmp_path / name for name in ("bounces", "replies")}
    for folder in maildirs.values():
        mailbox.Maildir(folder, create=True)
    text = config_path.read_text()
    assert text.count('selector = ""\ndomain = ""') == 1
    text = text.replace('selector = ""\ndomain = ""', f'selector = "{SELECTOR}"\ndomain = "{DOMAIN}"')
    for name, folder in maildirs.items():
        start = text.index(f"[{name}]")
        text = text[:start] + text[start:].replace('source = "none"\nmaildir = ""',
                                                   f'source = "maildir"\nmaildir = "{folder}"', 1)
    config_path.write_text(text)
    relay = start_relay(certificates["good"])
    environ = {
        "MAILER_DATABASE_URL": database_url,
        "MAILER_SECRET_KEY": secrets.token_urlsafe(48),
        "MAILER_INTAKE_TOKEN": secrets.token_urlsafe(24),
        "MAILER_BASE_URL": serve_https(app),
        "MAILER_SMTP_URL": f"smtp://{USER}:{PASSWORD}@127.0.0.1:{relay.port}?starttls=true&cafile={certificates['good'][0]}",
        "MAILER_DKIM_PRIVATE_KEY": dkim_keys[0].decode(),
        # The system's CA store, as far as the app's address is concerned: the loopback certificate.
        "SSL_CERT_FILE": str(certificates["good"][0]),
    }
    return Setup(config_path, environ, dns_server, relay)


def only_failures(lines: dict[str, tuple[str, str]]) -> dict[str, str]:
    return {check: text for check, (symbol, text) in lines.items() if symbol != "✓"}


# --- the good setup ---------------------------------------------------------------------------


def test_a_good_setup_passes_every_check_and_sends_nothing(setup: Setup) -> None:
    code, lines, output = setup.run()

    assert code == 0, output
    assert list(lines) == EVERY_CHECK
    assert only_failures(lines) == {}
    assert output.rstrip().endswith("All good.")
    assert lines["smtp_tls"][1].startswith("STARTTLS, TLSv1.")
    assert lines["smtp_certificate"][1].startswith(("valid for 89 more days", "valid for 88 more days"))
    assert lines["smtp_auth"][1] == f"accepted for {USER}"
    assert lines["spf"][1] == '"v=spf1 ip4:127.0.0.1 include:_spf.relay.example -all"'
    assert lines["dkim"][1] == f"the record at {DKIM_NAME} matches the configured private key"
    assert lines["dmarc"][1] == f"policy quarantine (at _dmarc.{DOMAIN})"
    assert lines["mx"][1] == f"{DOMAIN} takes mail at mx1.{DOMAIN}, mx2.{DOMAIN}"
    assert lines["one_click"][1].startswith("POST /unsubscribe/… with a bad token: 404")
    # MAIL FROM then RSET: the relay was asked about the sender, and nothing was sent.
    assert setup.relay.mail_commands == 1 and setup.relay.rset_commands >= 1
    assert setup.relay.data_commands == 0 and setup.relay.received == []


def test_json_output_for_scripts(setup: Setup) -> None:
    result = CliRunner(env=setup.environ).invoke(
        main, ["--config", str(setup.config_path), "doctor", "--json", "--dns-server", setup.dns.address])
    document = json.loads(result.stdout)
    assert result.exit_code == 0 and document["ok"] is True
    assert [check["check"] for check in document["checks"]] == EVERY_CHECK
    assert {check["status"] for check in document["checks"]} == {"ok"}

    del setup.dns.records.txt[f"_dmarc.{DOMAIN}"]
    result = CliRunner(env=setup.environ).invoke(
        main, ["--config", str(setup.config_path), "doctor", "--json", "--dns-server", setup.dns.address])
    document = json.loads(result.stdout)
    assert result.exit_code == 1 and document["ok"] is False
    (dmarc,) = [check for check in document["checks"] if check["status"] != "ok"]
    assert dmarc["check"] == "dmarc" and dmarc["status"] == "fail" and "v=DMARC1" in dmarc["advice"]


def test_send_test_goes_through_the_relay_signed_with_the_published_key(setup: Setup) -> None:
    code, lines, output = setup.run("--send-test", "Front.Desk@therapycentral.example")

    assert code == 0, output
    assert lines["send_test"][0] == "✓" and "sent to front.desk@therapycentral.example" in lines["send_test"][1]
    (received,) = setup.relay.received
    assert received.rcpt_tos == ["front.desk@therapycentral.example"] and received.login == USER and received.tls
    message = received.message
    assert message["Subject"] == "Test email from Therapy Central's mailer"
    assert "This is a test email" in message.get_body(("plain",)).get_content()
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = ["127.0.0.1"], setup.dns.port

    def lookup(name: bytes, timeout: int = 5) -> bytes:  # dkimpy asks our loopback DNS for the key
        answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(b"".join(record.strings) for record in answer)

    assert dkim.verify(received.data, dnsfunc=lookup)


# --- a broken part each -------------------------------------------------------------------------


def test_missing_spf(setup: Setup) -> None:
    setup.dns.records.txt[DOMAIN] = ["site-verification=abc123"]
    code, lines, _ = setup.run()
    assert code == 1
    assert only_failures(lines) == {"spf": f"no SPF record on {DOMAIN} — add a TXT record on {DOMAIN} naming the "
                                           "relay, e.g. \"v=spf1 include:<your relay's SPF> -all\""}


@pytest.mark.parametrize(("ending", "symbol", "code"), [("+all", "✗", 1), ("all", "✗", 1), ("?all", "!", 0)])
def test_an_spf_record_that_lets_anyone_send(setup: Setup, ending: str, symbol: str, code: int) -> None:
    setup.dns.records.txt[DOMAIN] = [f"v=spf1 ip4:127.0.0.1 {ending}"]
    exit_code, lines, _ = setup.run()
    assert exit_code == code
    assert set(only_failures(lines)) == {"spf"} and lines["spf"][0] == symbol


def test_a_dkim_record_of_another_key(setup: Setup, dkim_keys: tuple[bytes, bytes]) -> None:
    setup.dns.records.txt[DKIM_NAME] = [_record_for(dkim_keys[1])]
    code, lines, _ = setup.run()
    assert code == 1
    assert set(only_failures(lines)) == {"dkim"}
    text = lines["dkim"][1]
    assert text.startswith(f"the DKIM record at {DKIM_NAME} does not match the configured private key — ")
    assert f'publish TXT {DKIM_NAME} "{_record_for(dkim_keys[0])}"' in text  # the record to publish instead


def test_no_dkim_record(setup: Setup) -> None:
    del setup.dns.records.txt[DKIM_NAME]
    code, lines, _ = setup.run()
    assert code == 1 and lines["dkim"][0] == "✗" and lines["dkim"][1].startswith(f"no DKIM record at {DKIM_NAME}")


def test_no_dmarc(setup: Setup) -> None:
    del setup.dns.records.txt[f"_dmarc.{DOMAIN}"]
    code, lines, _ = setup.run()
    assert code == 1
    assert set(only_failures(lines)) == {"dmarc"}
    assert lines["dmarc"] == ("✗", f'no DMARC record at _dmarc.{DOMAIN} — add TXT _dmarc.{DOMAIN} "v=DMARC1; '
                                   f'p=none; rua=mailto:dmarc@{DOMAIN}" and tighten p= to quarantine once the '
                                   "reports look clean")


def test_a_dmarc_policy_of_none_is_a_note_not_a_failure(setup: Setup) -> None:
    setup.dns.records.txt[f"_dmarc.{DOMAIN}"] = ["v=DMARC1; p=none"]
    code, lines, output = setup.run()
    assert code == 0
    assert set(only_failures(lines)) == {"dmarc"} and lines["dmarc"][0] == "!"
    assert output.rstrip().endswith("0 to fix, 1 to look at.")


def test_no_mx_for_the_reply_to_domain(setup: Setup) -> None:
    del setup.dns.records.mx[DOMAIN]
    setup.dns.records.txt[DOMAIN] = []  # the name stays, without MX: senders would fall back to its A record
    code, lines, _ = setup.run()
    assert lines["mx"][0] == "!" and "has no MX record" in lines["mx"][1]


def test_an_expired_relay_certificate(setup: Setup, start_relay: Callable[[tuple[Path, Path]], SMTPServer],
                                      certificates: dict[str, tuple[Path, Path]]) -> None:
    relay = start_relay(certificates["expired"])
    setup.environ["MAILER_SMTP_URL"] = (f"smtp://{USER}:{PASSWORD}@127.0.0.1:{relay.port}?starttls=true"
                                        f"&cafile={certificates['expired'][0]}")
    code, lines, _ = setup.run()
    assert code == 1
    failures = only_failures(lines)
    assert set(failures) == {"smtp_tls"}  # and nothing after it was tried
    ended = (NOW - dt.timedelta(days=3)).strftime("%Y-%m-%d")
    assert failures["smtp_tls"].startswith(f"the certificate of 127.0.0.1:{relay.port} is not trusted: certificate "
                                           f"has expired (on {ended}, 3 days ago) — renew the relay's certificate")
    assert "smtp_auth" not in lines and "smtp_sender" not in lines
    assert relay.mail_commands == 0


def test_a_wrong_relay_password(setup: Setup) -> None:
    setup.environ["MAILER_SMTP_URL"] = setup.environ["MAILER_SMTP_URL"].replace(PASSWORD, "not-the-password")
    code, lines, _ = setup.run()
    assert code == 1
    failures = only_failures(lines)
    assert set(failures) == {"smtp_auth"}
    assert failures["smtp_auth"].startswith(f"127.0.0.1:{setup.relay.port} refused the username or password for "
                                            f"{USER}: 535")
    assert lines["smtp_tls"][0] == "✓" and "smtp_sender" not in lines
    assert setup.relay.mail_commands == 0


def test_a_proxy_that_redirects_the_one_click_post(setup: Setup, serve_https: Callable[..., str]) -> None:
    proxy = Flask("proxy")

    @proxy.get("/healthz")
    def health() -> dict[str, object]:
        return {"status": "ok", "database": True}

    @proxy.route("/<path:anything>", methods=["GET", "POST"])
    def login(anything: str):  # noqa: ANN202
        return "", 302, {"Location": "https://sso.therapycentral.example/login"}

    setup.environ["MAILER_BASE_URL"] = serve_https(proxy)
    code, lines, _ = setup.run()
    assert code == 1
    assert set(only_failures(lines)) == {"one_click"}
    assert lines["one_click"][1].startswith("POST /unsubscribe/… was redirected (302 to "
                                            "https://sso.therapycentral.example/login)")


def test_the_app_served_without_https(setup: Setup, serve_https: Callable[..., str], app: Flask) -> None:
    setup.environ["MAILER_BASE_URL"] = serve_https(app, tls=False)
    code, lines, _ = setup.run()
    assert code == 1
    assert set(only_failures(lines)) == {"base_url"}
    assert lines["base_url"][1].startswith(f"{setup.environ['MAILER_BASE_URL']} answers, but not over HTTPS")
    assert lines["one_click"][0] == "✓"


def test_a_bounce_mailbox_that_is_not_a_maildir(setup: Setup, tmp_path: Path) -> None:
    text = setup.config_path.read_text().replace(f'maildir = "{tmp_path / "bounces"}"',
                                                  f'maildir = "{tmp_path / "nowhere"}"')
    setup.config_path.write_text(text)
    code, lines, _ = setup.run()
    assert code == 1
    assert only_failures(lines) == {"bounces_mailbox": f"{tmp_path / 'nowhere'}: not a maildir (it needs new/ and cur/ "
                                                       "folders) — check [bounces] in config.toml (and "
                                                       "MAILER_IMAP_PASSWORD for IMAP)"}


def test_the_development_secret_key(setup: Setup, tmp_path: Path) -> None:
    from mailer import config

    setup.environ["MAILER_SECRET_KEY"] = config.development_secret(tmp_path / "var")
    code, lines, _ = setup.run()
    assert code == 1
    assert set(only_failures(lines)) == {"secret_key"}
    assert lines["secret_key"][1].startswith("MAILER_SECRET_KEY is the development key from ")


def test_a_database_not_created_yet_is_not_created_by_the_doctor(setup: Setup, tmp_path: Path) -> None:
    missing = tmp_path / "new" / "mailer.db"
    setup.environ["MAILER_DATABASE_URL"] = f"sqlite:///{missing}"
    code, lines, _ = setup.run()
    assert code == 1
    assert lines["database"] == ("✗", f"{missing} does not exist — run `mailer init` (it creates or upgrades the "
                                      "schema; safe to run again)")
    assert "schema" not in lines and not missing.exists()


def test_a_dns_server_that_does_not_answer(setup: Setup) -> None:
    setup.dns.stop()
    code, lines, _ = setup.run()
    assert code == 1
    assert {check for check, (symbol, _) in lines.items() if symbol == "✗"} == {"spf", "dkim", "dmarc", "mx"}
    assert lines["spf"][1].startswith(f"DNS (127.0.0.1:{setup.dns.port}) timed out on {DOMAIN} TXT")


def test_a_broken_config_is_the_only_line(setup: Setup) -> None:
    setup.config_path.write_text(setup.config_path.read_text().replace("poll_minutes = 30", 'poll_minutes = "often"'))
    code, lines, _ = setup.run()
    assert code == 1
    assert list(lines) == ["config"]
    assert lines["config"][1].startswith(f"{setup.config_path}: feed.poll_minutes: Input should be a valid integer")


@pytest.mark.parametrize("value", ["127.0.0.1:notaport", "127.0.0.1:70000", ":53"])
def test_a_bad_dns_server_option_is_a_one_line_error(setup: Setup, value: str) -> None:
    result = CliRunner(env=setup.environ).invoke(main, ["--config", str(setup.config_path), "doctor",
                                                        "--dns-server", value])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"mailer: error: --dns-server: expected HOST or HOST:PORT, got {value!r}\n"


def test_relay_webhook_secrets_that_are_half_set_or_do_not_parse(setup: Setup) -> None:
    setup.environ.update({"MAILER_SENDGRID_PUBLIC_KEY": "bm90IGEga2V5", "MAILER_POSTMARK_WEBHOOK_USER": "postmark",
                          "MAILER_MAILGUN_SIGNING_KEY": secrets.token_hex(24)})
    code, lines, _ = setup.run()
    assert code == 1
    assert only_failures(lines) == {
        "relay_webhook_postmark": "MAILER_POSTMARK_WEBHOOK_PASSWORD is not set: the Postmark webhook is off — set "
                                  "both, and the same user and password in the webhook's basic auth at Postmark",
        "relay_webhook_sendgrid": "MAILER_SENDGRID_PUBLIC_KEY is not a base64 DER public key: SendGrid's events are "
                                  "refused (503) and wait at SendGrid — copy the verification key from SendGrid's Mail "
                                  "Settings › Signed Event Webhook Requests (base64, one line)"}
    assert lines["relay_webhook_mailgun"][0] == "✓"

    _private, public = relay_payloads.sendgrid_keys()
    setup.environ.update({"MAILER_SENDGRID_PUBLIC_KEY": public, "MAILER_POSTMARK_WEBHOOK_PASSWORD": secrets.token_urlsafe(24)})
    code, lines, _ = setup.run()
    assert code == 0 and only_failures(lines) == {}
    assert list(lines)[-3:] == ["relay_webhook_postmark", "relay_webhook_mailgun", "relay_webhook_sendgrid"]
    assert lines["relay_webhook_sendgrid"][1].endswith("/api/relay/sendgrid, verification key parses (ECDSA P-256)")
