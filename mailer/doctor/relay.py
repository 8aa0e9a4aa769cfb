"""Doctor checks of the SMTP relay: connection, TLS and its certificate, AUTH, the sender; nothing is sent."""

from __future__ import annotations

import datetime as dt
import smtplib
import socket
import ssl

from mailer.config import Settings, SmtpUrl, parse_smtp_url
from mailer.doctor import Result, fail, ok, warn
from mailer.text import one_line as _text

# A certificate closer than this to its end gets a "!" line: renewals that failed need time to fix.
CERTIFICATE_WARNING_DAYS = 21
LOOPBACK = ("127.0.0.1", "::1", "localhost")
EXPIRED = 10  # OpenSSL's X509_V_ERR_CERT_HAS_EXPIRED
URL_ADVICE = "check the host and port in MAILER_SMTP_URL, and that this machine may reach the relay (firewall)"


class _SMTP(smtplib.SMTP):
    """smtplib.SMTP that checks the STARTTLS certificate against the host it dialled (smtplib records the
    host only when it is given to __init__, which would also connect)."""

    def connect(self, host: str = "localhost", port: int = 0,
                source_address: tuple[str, int] | None = None) -> tuple[int, bytes]:
        self._host = host
        return super().connect(host, port, source_address)


class _SMTPOverTLS(smtplib.SMTP_SSL):
    """The same for smtps://."""

    def connect(self, host: str = "localhost", port: int = 0,
                source_address: tuple[str, int] | None = None) -> tuple[int, bytes]:
        self._host = host
        return super().connect(host, port, source_address)


class _Stop(Exception):
    """A step failed; its Result says why, and the steps after it cannot run."""

    def __init__(self, result: Result) -> None:
        super().__init__(result.message)
        self.result = result


def check(settings: Settings, now: dt.datetime, timeout: float) -> list[Result]:
    """Connect, secure, log in and offer the sender as delivery would, then RSET and QUIT."""
    delivery = settings.delivery
    if delivery.transport != "smtp":
        return [warn("smtp", f'delivery.transport is "file": emails are written to {delivery.outbox_dir}, not sent',
                     "set MAILER_SMTP_URL to the clinic's relay, e.g. smtp://USER:PASSWORD@relay:587?starttls=true")]
    url = parse_smtp_url(delivery.smtp_url)
    results: list[Result] = []
    smtp: smtplib.SMTP | None = None
    try:
        context = _tls_context(url)
        smtp = connect(url, context, now, timeout, results)
        secure(smtp, url, context, now, timeout, results)
        if url.username:
            results.append(login(smtp, url))
        results.append(sender(smtp, settings.sender.from_email, url))
    except _Stop as stop:
        results.append(stop.result)
    finally:
        if smtp is not None:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()
    return results


def _where(url: SmtpUrl) -> str:
    return f"{url.host}:{url.port}"


def _tls_context(url: SmtpUrl) -> ssl.SSLContext | None:
    if not (url.implicit_tls or url.starttls):
        return None
    try:
        context = ssl.create_default_context(cafile=url.cafile)
    except (OSError, ssl.SSLError) as exc:
        raise _Stop(fail("smtp_tls", f"cafile {url.cafile} cannot be loaded: {exc}",
                         "point ?cafile= in MAILER_SMTP_URL at the relay's CA certificate (PEM)")) from None
    if not url.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _tls_failure(url: SmtpUrl, exc: ssl.SSLError, now: dt.datetime, timeout: float) -> _Stop:
    if isinstance(exc, ssl.SSLCertVerificationError):
        problem = exc.verify_message
        if exc.verify_code == EXPIRED:
            ended = _certificate_end(url, timeout)
            if ended is not None:
                problem += f" (on {ended:%Y-%m-%d}, {(now - ended).days} days ago)"
        return _Stop(fail("smtp_tls", f"the certificate of {_where(url)} is not trusted: {problem}",
                          "renew the relay's certificate (or, for a relay with a private CA, add "
                          "?cafile=/path/to/ca.pem to MAILER_SMTP_URL); nothing is sent until it is trusted"))
    return _Stop(fail("smtp_tls", f"TLS with {_where(url)} failed: {exc.reason or exc}",
                      "check the port: smtps:// is usually 465, smtp://…?starttls=true 587"))


def _certificate_end(url: SmtpUrl, timeout: float) -> dt.datetime | None:
    """When the relay's certificate ends, read over a second, unverified connection (it sends nothing)."""
    from cryptography import x509

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        if url.implicit_tls:
            with socket.create_connection((url.host, url.port), timeout=timeout) as raw, \
                    context.wrap_socket(raw, server_hostname=url.host) as sock:
                der = sock.getpeercert(binary_form=True)
        else:
            with _SMTP(local_hostname=url.helo, timeout=timeout) as smtp:
                smtp.connect(url.host, url.port)
                smtp.starttls(context=context)
                assert isinstance(smtp.sock, ssl.SSLSocket)
                der = smtp.sock.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).not_valid_after_utc if der else None
    except (OSError, smtplib.SMTPException, ValueError):
        return None


def connect(url: SmtpUrl, context: ssl.SSLContext | None, now: dt.datetime, timeout: float,
            results: list[Result]) -> smtplib.SMTP:
    """The TCP connection (and, for smtps://, the TLS handshake) and the relay's greeting."""
    where = _where(url)
    smtp: smtplib.SMTP
    if url.implicit_tls:
        smtp = _SMTPOverTLS(local_hostname=url.helo, timeout=timeout, context=context)
    else:
        smtp = _SMTP(local_hostname=url.helo, timeout=timeout)
    try:
        code, greeting = smtp.connect(url.host, url.port)
    except ssl.SSLError as exc:  # the connection was made; the handshake failed
        smtp.close()
        results.append(ok("smtp_connect", f"{where} accepts connections"))
        raise _tls_failure(url, exc, now, timeout) from None
    except (smtplib.SMTPException, OSError) as exc:
        smtp.close()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise _Stop(fail("smtp_connect", f"cannot connect to {where}: {reason}", URL_ADVICE)) from None
    try:
        if code != 220:
            raise _Stop(fail("smtp_connect", f"{where} greeted with {code} {_text(greeting)}",
                             "the relay refuses this machine for now; ask its operator"))
        code, reply = smtp.ehlo()
        if not 200 <= code < 300:
            raise _Stop(fail("smtp_connect", f"{where} refused EHLO: {code} {_text(reply)}",
                             "set ?helo=NAME in MAILER_SMTP_URL to a name the relay accepts"))
    except (smtplib.SMTPException, OSError) as exc:
        smtp.close()
        raise _Stop(fail("smtp_connect", f"{where} dropped the connection: {exc}", URL_ADVICE)) from None
    except _Stop:
        smtp.close()
        raise
    results.append(ok("smtp_connect", f"{where} answered: 220 {_text(greeting)[:80]}"))
    return smtp


def secure(smtp: smtplib.SMTP, url: SmtpUrl, context: ssl.SSLContext | None, now: dt.datetime, timeout: float,
           results: list[Result]) -> None:
    """STARTTLS or implicit TLS as configured, then the certificate's remaining days."""
    where = _where(url)
    if url.starttls and not url.implicit_tls:
        if not smtp.has_extn("starttls"):
            raise _Stop(fail("smtp_tls", f"{where} does not offer STARTTLS, which the SMTP URL asks for",
                             "use the relay's submission port (587) or smtps:// on 465"))
        try:
            smtp.starttls(context=context)
            smtp.ehlo()
        except ssl.SSLError as exc:
            raise _tls_failure(url, exc, now, timeout) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise _Stop(fail("smtp_tls", f"STARTTLS with {where} failed: {exc}",
                             "ask the relay's operator; mailer never falls back to clear text")) from None
    sock = smtp.sock
    if not isinstance(sock, ssl.SSLSocket):
        if smtp.has_extn("starttls"):
            results.append(warn("smtp_tls", f"not used, though {where} offers STARTTLS: messages and the password "
                                            "travel in clear text", "add ?starttls=true to MAILER_SMTP_URL"))
        elif url.host in LOOPBACK:
            results.append(ok("smtp_tls", f"none, and none needed: {where} is on this machine"))
        else:
            results.append(Result("smtp_tls", "fail" if url.username else "warn",
                                  f"{where} offers no TLS: messages travel in clear text",
                                  "use a relay that offers TLS (smtps:// or ?starttls=true)"))
        return
    how = "implicit TLS (smtps)" if url.implicit_tls else "STARTTLS"
    results.append(ok("smtp_tls", f"{how}, {sock.version()}, certificate trusted"))
    results.append(certificate(sock, url, now))


def certificate(sock: ssl.SSLSocket, url: SmtpUrl, now: dt.datetime) -> Result:
    if not url.verify:
        return warn("smtp_certificate", "not checked: the SMTP URL says ?verify=false",
                    "remove ?verify=false (or give the relay's CA with ?cafile=)")
    peer = sock.getpeercert() or {}
    not_after = peer.get("notAfter")
    if not isinstance(not_after, str):
        return warn("smtp_certificate", "the relay's certificate has no end date", "ask the relay's operator")
    expires = dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), dt.UTC)
    days = (expires - now).days
    shown = f"valid for {days} more days (until {expires:%Y-%m-%d})"
    if days < CERTIFICATE_WARNING_DAYS:
        return warn("smtp_certificate", shown, "make sure the relay's certificate is renewed before then")
    return ok("smtp_certificate", shown)


def login(smtp: smtplib.SMTP, url: SmtpUrl) -> Result:
    assert url.username is not None
    where = _where(url)
    if not smtp.has_extn("auth"):
        raise _Stop(fail("smtp_auth", f"{where} does not offer AUTH, but the SMTP URL has a username",
                         "remove user:password from MAILER_SMTP_URL, or use the relay's submission port"))
    try:
        smtp.login(url.username, url.password or "")
    except smtplib.SMTPAuthenticationError as exc:
        raise _Stop(fail("smtp_auth", f"{where} refused the username or password for {url.username}: "
                                      f"{exc.smtp_code} {_text(exc.smtp_error)}",
                         "check the user and password in MAILER_SMTP_URL (URL-encode ':', '@' and '/' in them)")) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise _Stop(fail("smtp_auth", f"AUTH with {where} failed: {exc}", "ask the relay's operator")) from None
    return ok("smtp_auth", f"accepted for {url.username}")


def sender(smtp: smtplib.SMTP, from_email: str, url: SmtpUrl) -> Result:
    """MAIL FROM with the clinic's sender, then RSET: the relay says yes or no, and nothing is sent."""
    try:
        code, reply = smtp.mail(from_email)
        smtp.rset()
    except (smtplib.SMTPException, OSError) as exc:
        return fail("smtp_sender", f"MAIL FROM:<{from_email}> failed: {exc}", "ask the relay's operator")
    if code == 250:
        return ok("smtp_sender", f"{_where(url)} accepts {from_email} as the sender (then RSET: nothing sent)")
    advice = ("the relay wants AUTH: put USER:PASSWORD@ in MAILER_SMTP_URL" if code == 530 else
              "allow this sender at the relay (or set sender.from_email to an address it allows)")
    return fail("smtp_sender", f"{_where(url)} refused MAIL FROM:<{from_email}>: {code} {_text(reply)}", advice)
