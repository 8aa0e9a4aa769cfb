"""SMTP: TLS, auth, reused and pipelined connections to one relay; every failure classified."""

from __future__ import annotations

import dataclasses
import logging
import smtplib
import socket
import ssl
from typing import Literal

from mailer.config import Settings, SmtpUrl, parse_smtp_url
from mailer.logs import redact_addresses
from mailer.outbound.transport import Done, Envelope, Outcome, SendResult, Take
from mailer.outbound.transport.wire import (
    _MAILBOX_STATUS,
    _SMTP,
    _describe,
    _dot_stuffed,
    _kernel_timeouts,
    _normalise_line_endings,
    _smtp_address,
    _SMTPOverTLS,
    _write,
)
from mailer.text import one_line as _text

log = logging.getLogger("mailer.smtp")


@dataclasses.dataclass(slots=True)
class _Tx:
    """One message on its way: the envelope checked, the bytes final (CRLF line endings, DKIM-signed)."""

    mail_from: str
    rcpt: str
    data: bytes
    sender_utf8: bool
    utf8: bool
    command: bytes = b""  # MAIL, RCPT and DATA, when they go pipelined after the previous message


class _Failed(Exception):
    """Carries the SendResult of a step that cannot go on; caught in SMTPConnection.send."""

    def __init__(self, result: SendResult) -> None:
        super().__init__(result.detail)
        self.result = result


class SMTPTransport:
    """Hands messages to one relay; each connect() gives a lazily opened, reusable connection."""

    def __init__(
        self,
        smtp: SmtpUrl,
        *,
        timeout: float,
        local_hostname: str | None = None,
    ) -> None:
        self.smtp = smtp
        self.timeout = timeout
        # getfqdn() may do a slow DNS lookup; smtplib would repeat it for every connection.
        self.local_hostname = local_hostname or smtp.helo or socket.getfqdn()
        self.tls_context: ssl.SSLContext | None = None
        if smtp.implicit_tls or smtp.starttls:
            self.tls_context = self._make_tls_context()
        elif smtp.username and smtp.host not in ("localhost", "127.0.0.1", "::1"):
            log.warning("SMTP password for %s is sent without TLS; use smtps:// or ?starttls=true", smtp.host)

    def _make_tls_context(self) -> ssl.SSLContext:
        """Verifying by default (system CAs or `cafile`); a missing cafile is a config error."""
        try:
            context = ssl.create_default_context(cafile=self.smtp.cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"SMTP URL cafile {self.smtp.cafile}: cannot load: {_describe(exc, 0)}"
            ) from None
        if not self.smtp.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def connect(self) -> SMTPConnection:
        """A connection for the calling thread; nothing is opened until its first send."""
        return SMTPConnection(self)


class SMTPConnection:
    """One SMTP session, opened on first send, reused, reopened after the relay dropped it."""

    def __init__(self, transport: SMTPTransport) -> None:
        self._transport = transport
        self._smtp: smtplib.SMTP | None = None
        self._needs_rset = False  # the last transaction failed part-way on a live connection
        self._dot_sent = False  # the current message's final "." has left; a loss now is "unknown"
        self._sender: tuple[str, tuple[str, bool]] | None = None  # the last MAIL FROM address, checked

    # -- public -----------------------------------------------------------------------------------

    def send(self, envelope: Envelope) -> SendResult:
        """Deliver one message; the result says sent, temporary, permanent or unknown."""
        results: list[SendResult] = []
        items = iter([(None, envelope)])
        self.stream(lambda wait: next(items, None), lambda token, result: results.append(result))
        return results[0]

    def stream(self, take: Take, done: Done) -> None:
        """Send every message take() hands out, reporting each one's result to done(), until take(True)
        returns None.

        take(wait) gives (token, envelope); with wait=False it returns None at once when nothing is ready.
        On a relay that offers PIPELINING, one message's content and the next message's MAIL, RCPT and
        DATA leave in one write (RFC 2920 §3.1 lets message content open a command group), so each message
        costs one round trip instead of two. The next message is taken only when the current one's content
        is due, so whatever take() checks (consent) is checked right before its envelope is sent.
        """
        current = take(True)
        while current is not None:
            inflight = [current]  # taken, not reported yet; inflight[0]'s content goes next
            self._dot_sent = False
            try:
                tx = self._transaction(current[1])
                result = tx if isinstance(tx, SendResult) else self._start(tx)
                while result is None:  # tx's envelope was accepted (354): its content is due
                    following = self._overlap(take, done)
                    nxt = None
                    if following is not None:
                        inflight.append(following[0])
                        nxt = following[1]
                    result, after = self._finish(tx, nxt)
                    self._report(done, inflight.pop(0), result)
                    if nxt is None:
                        result = None
                        break
                    tx = nxt
                    self._dot_sent = False
                    # "retry": the connection was lost before the relay accepted anything of nxt's
                    result = self._start(tx) if after == "retry" else after
                if result is not None:
                    self._report(done, inflight.pop(0), result)
            except _Failed as failed:  # raised only while one message is in flight
                self._report(done, inflight.pop(0), failed.result)
            except Exception as exc:  # a bug or a surprise from a library: still never raise to the loop
                # The exception's text may quote the recipient: its type and where it happened only.
                log.error("unexpected %s sending %s", type(exc).__name__, inflight[0][1].key or "a message",
                          exc_info=log.isEnabledFor(logging.DEBUG))
                self._drop()
                for index, item in enumerate(inflight):
                    dot = index == 0 and self._dot_sent
                    outcome: Outcome = "unknown" if dot else "temporary"
                    self._report(done, item, SendResult(outcome, None, f"unexpected error: {exc!r}", "data" if dot else ""))
            current = take(True)

    def close(self) -> None:
        """QUIT if the connection is up; never raises."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except Exception:  # the relay may be gone already; closing must not fail
            pass
        finally:
            smtp.close()

    # -- one message ------------------------------------------------------------------------------

    @staticmethod
    def _report(done: Done, item: tuple[object, Envelope], result: SendResult) -> None:
        token, envelope = item
        if result.outcome == "sent":
            log.debug("sent %s: %s", envelope.key, redact_addresses(result.detail))
        else:
            log.info("%s %s at %s: %s", result.outcome, envelope.key, result.stage or "-",
                     redact_addresses(result.detail))
        done(token, result)

    def _transaction(self, envelope: Envelope) -> _Tx | SendResult:
        """The envelope checked and the bytes made final (CRLF); or why it cannot be sent."""
        try:
            if self._sender is None or self._sender[0] != envelope.mail_from:  # the same for a whole send
                self._sender = (envelope.mail_from, _smtp_address(envelope.mail_from))
            mail_from, sender_utf8 = self._sender[1]
        except ValueError as exc:
            # The sender comes from the config: retry (and let staff fix it) rather than blame the recipient.
            return SendResult("temporary", None, f"sender: {exc}", "envelope")
        try:
            rcpt, rcpt_utf8 = _smtp_address(envelope.rcpt)
        except ValueError as exc:
            return SendResult("permanent", None, str(exc), "envelope")
        data = envelope.data if envelope.crlf else _normalise_line_endings(envelope.data)
        return _Tx(mail_from, rcpt, data, sender_utf8, rcpt_utf8 or sender_utf8)

    def _mail_command(self, smtp: smtplib.SMTP, tx: _Tx) -> str | SendResult:
        """MAIL FROM's argument with the ESMTP options the relay offers and tx needs; or why not."""
        if tx.utf8 and not smtp.has_extn("smtputf8"):
            if tx.sender_utf8:
                return SendResult("temporary", None, "sender needs SMTPUTF8, which the relay does not offer", "envelope")
            return SendResult("permanent", None, "recipient needs SMTPUTF8, which the relay does not offer", "envelope")
        smtp.command_encoding = "utf-8" if tx.utf8 else "ascii"
        options = "".join(f" {option}" for option in self._mail_options(smtp, tx.data, utf8=tx.utf8))
        return f"FROM:<{tx.mail_from}>{options}"

    @staticmethod
    def _pipelined_envelope(tx: _Tx, mail: str) -> bytes:
        # RFC 2920: MAIL, RCPT and DATA in one write, their three replies read in order.
        return f"MAIL {mail}\r\nRCPT TO:<{tx.rcpt}>\r\nDATA\r\n".encode("utf-8" if tx.utf8 else "ascii")

    def _start(self, tx: _Tx) -> SendResult | None:
        """Open the transaction: None once DATA got its 354, else the result (the message is done)."""
        # Relays close idle connections, often silently. If a reused connection fails at RSET or MAIL
        # FROM, nothing of this message was accepted yet, so it is safe to try once on a new one.
        for attempt in (1, 2):
            smtp, fresh = self._begin()
            mail = self._mail_command(smtp, tx)
            if isinstance(mail, SendResult):
                return mail
            pipelining = smtp.has_extn("pipelining")
            try:
                if pipelining:
                    smtp.send(self._pipelined_envelope(tx, mail))
                else:
                    smtp.putcmd("mail", mail)
                code, reply = smtp.getreply()
            except OSError as exc:
                self._drop()
                if not fresh and attempt == 1:
                    continue
                detail = f"MAIL FROM: {_describe(exc, self._transport.timeout)}"
                return SendResult("temporary", None, detail, "mail")
            if code == 421 and not fresh and attempt == 1:
                self._drop()
                continue
            break
        self._needs_rset = True  # from here on, a failure leaves a transaction open on the relay
        if pipelining:
            return self._envelope_replies(smtp, code, reply)
        if not 200 <= code < 300:
            return self._mail_refused(code, reply)
        self._command(smtp, "rcpt", f"TO:<{tx.rcpt}>", "RCPT TO", ok=(250, 251))
        self._command(smtp, "data", "", "DATA", ok=(354,))
        return None

    def _overlap(self, take: Take, done: Done) -> tuple[tuple[object, Envelope], _Tx] | None:
        """The next message to send with the current one's content, if the relay pipelines and one is ready."""
        smtp = self._smtp
        if smtp is None or not smtp.has_extn("pipelining"):
            return None
        while (item := take(False)) is not None:
            tx = self._transaction(item[1])
            if not isinstance(tx, SendResult):
                mail = self._mail_command(smtp, tx)
                if not isinstance(mail, SendResult):
                    tx.command = self._pipelined_envelope(tx, mail)
                    return item, tx
                tx = mail
            self._report(done, item, tx)  # refused before anything was sent; try the next one
        return None

    def _mail_refused(self, code: int, reply: bytes) -> SendResult:
        if code == 421:
            self._drop()
        # 5xx here is about our sender or the relay's policy, not the recipient: never "permanent" (the
        # message could go once staff fix the sender); a 5xx refuses us, which the engine's breaker counts.
        return SendResult("temporary", code if code > 0 else None, f"MAIL FROM: {code} {_text(reply)}", "mail",
                          sender_refused=500 <= code < 600)

    def _envelope_replies(self, smtp: smtplib.SMTP, code: int, reply: bytes) -> SendResult | None:
        """Given the reply to a pipelined MAIL, read the RCPT and DATA replies: None if all agreed (the
        content is due), else the result."""
        replies = [(code, reply)]
        try:
            for _ in range(2):
                replies.append(smtp.getreply())
        except OSError as exc:
            self._drop()
            stage, label = ("rcpt", "RCPT TO") if len(replies) == 1 else ("data", "DATA")
            return SendResult("temporary", None, f"{label}: {_describe(exc, self._transport.timeout)}", stage)
        (mail_code, mail_reply), (rcpt_code, rcpt_reply), (data_code, data_reply) = replies
        if 200 <= mail_code < 300 and rcpt_code in (250, 251) and data_code == 354:
            return None
        if not 200 <= mail_code < 300:
            failure = self._mail_refused(mail_code, mail_reply)
        elif rcpt_code not in (250, 251):
            failure = self._refused(rcpt_code, rcpt_reply, "RCPT TO", "rcpt")
        else:
            failure = self._refused(data_code, data_reply, "DATA", "data")
        if data_code == 354 and self._smtp is not None:
            # A relay that opened DATA although the envelope failed: end it empty so the session stays usable.
            try:
                smtp.send(b".\r\n")
                smtp.getreply()
            except OSError:
                self._drop()
        return failure

    def _finish(self, tx: _Tx, nxt: _Tx | None) -> tuple[SendResult, SendResult | Literal["retry"] | None]:
        """Send tx's content and its final dot (and nxt's pipelined envelope in the same write), read tx's
        verdict, then nxt's envelope replies. The dot is the point of no return: a loss after it is
        "unknown". nxt comes back as None (its content is due), its result, or "retry" (the connection
        was lost before the relay accepted anything of it)."""
        smtp = self._smtp
        assert smtp is not None
        timeout = self._transport.timeout
        then = nxt.command if nxt is not None else b""
        wire = _dot_stuffed(tx.data, then)
        sent, error = _write(smtp, wire)
        through_dot = len(wire) - len(then)  # the bytes up to and with the final "."
        retry: Literal["retry"] | None = "retry" if nxt is not None else None
        if error is not None:
            self._drop()
            if sent < through_dot:  # the final "." never left complete: the relay cannot have accepted it
                return SendResult("temporary", None, f"message data: {_describe(error, timeout)}", "data"), retry
            self._dot_sent = True
            return SendResult("unknown", None, f"after the message was sent: {_describe(error, timeout)}", "data"), retry
        self._dot_sent = True
        try:
            code, reply = smtp.getreply()
        except OSError as exc:
            # The whole message went out; the relay may have queued it before the connection died.
            self._drop()
            return SendResult("unknown", None, f"after the message was sent: {_describe(exc, timeout)}", "data"), retry
        result = SendResult("sent", code, _text(reply)) if 200 <= code < 300 else self._refused(
            code, reply, "end of DATA", "data")
        if self._smtp is None:  # 421: the relay is closing the session
            return result, retry
        self._needs_rset = nxt is not None  # tx's transaction is over; nxt's is open
        if nxt is None:
            return result, None
        try:
            code, reply = smtp.getreply()
        except OSError:
            self._drop()
            return result, "retry"
        if code == 421:
            self._drop()
            return result, "retry"
        return result, self._envelope_replies(smtp, code, reply)

    def _begin(self) -> tuple[smtplib.SMTP, bool]:
        """A connection ready for MAIL FROM, and whether it was opened just now."""
        if self._smtp is not None and self._needs_rset:
            try:
                code, _ = self._smtp.rset()
            except OSError:
                code = -1
            if code != 250:
                self._drop()  # a relay that will not reset is not trusted with the next message
        self._needs_rset = False
        if self._smtp is not None:
            return self._smtp, False
        self._smtp = self._open()
        return self._smtp, True

    def _command(self, smtp: smtplib.SMTP, verb: str, args: str, label: str, ok: tuple[int, ...]) -> None:
        """Send one command; raise _Failed unless its reply code is in `ok`."""
        stage = "rcpt" if verb == "rcpt" else "data"
        try:
            smtp.putcmd(verb, args)
            code, reply = smtp.getreply()
        except OSError as exc:
            self._drop()
            raise _Failed(
                SendResult("temporary", None, f"{label}: {_describe(exc, self._transport.timeout)}", stage)
            ) from None
        if code in ok:
            return
        raise _Failed(self._refused(code, reply, label, stage))

    def _refused(self, code: int, reply: bytes, label: str, stage: str) -> SendResult:
        """Classify a non-success reply: 5xx permanent, anything else temporary; 421 closes."""
        detail = f"{label}: {code} {_text(reply)}"
        if code == 421:
            self._drop()  # the relay is closing this session; the next send opens a new one
        if 500 <= code < 600:
            # 5xx to RCPT refuses the address. 5xx after DATA is usually about the content (spam, size,
            # policy): only its enhanced status 5.1.x says the mailbox is bad.
            rejected = stage == "rcpt" or (stage == "data" and bool(_MAILBOX_STATUS.search(detail)))
            return SendResult("permanent", code, detail, stage, address_rejected=rejected)
        return SendResult("temporary", code if code > 0 else None, detail, stage)

    def _mail_options(self, smtp: smtplib.SMTP, data: bytes, *, utf8: bool) -> list[str]:
        """ESMTP parameters for MAIL FROM that the relay offers and the message needs."""
        options = []
        if smtp.has_extn("size"):
            options.append(f"SIZE={len(data)}")  # lets the relay refuse an oversize message before DATA
        if not data.isascii() and smtp.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        if utf8:
            options.append("SMTPUTF8")
        return options

    # -- the session ------------------------------------------------------------------------------

    def _open(self) -> smtplib.SMTP:
        """Connect, greet, secure and log in; raise _Failed("temporary") if any of it fails."""
        transport = self._transport
        url = transport.smtp
        where = f"{url.host}:{url.port}"
        smtp: smtplib.SMTP
        if url.implicit_tls:
            smtp = _SMTPOverTLS(
                local_hostname=transport.local_hostname,
                timeout=transport.timeout,
                context=transport.tls_context,
            )
        else:
            smtp = _SMTP(local_hostname=transport.local_hostname, timeout=transport.timeout)
        try:
            code, reply = smtp.connect(url.host, url.port)
            if code != 220:
                raise _Failed(
                    SendResult("temporary", code, f"{where} greeted with {code} {_text(reply)}", "connect")
                )
            self._hello(smtp, where)
            if url.starttls and not url.implicit_tls:
                self._starttls(smtp, where)
            if url.username:
                self._login(smtp, where)
        except _Failed:
            smtp.close()
            raise
        except OSError as exc:  # socket, TLS and smtplib errors alike
            smtp.close()
            detail = f"{where}: {_describe(exc, transport.timeout)}"
            if isinstance(exc, ssl.SSLCertVerificationError):
                detail += " (nothing sent)"
            log.warning("cannot open SMTP connection: %s", redact_addresses(detail))
            raise _Failed(SendResult("temporary", None, detail, "connect")) from None
        if smtp.sock is not None:
            _kernel_timeouts(smtp.sock, transport.timeout)
        log.info("SMTP connection to %s open (%s)", where, "TLS" if self._encrypted(smtp) else "plain")
        return smtp

    def _hello(self, smtp: smtplib.SMTP, where: str) -> None:
        """EHLO, or HELO for an old relay."""
        code, reply = smtp.ehlo()
        if not 200 <= code < 300:
            code, reply = smtp.helo()
        if not 200 <= code < 300:
            raise _Failed(
                SendResult("temporary", code, f"{where} refused EHLO: {code} {_text(reply)}", "connect")
            )

    def _starttls(self, smtp: smtplib.SMTP, where: str) -> None:
        """Upgrade to TLS or give up: never fall back to sending in clear text."""
        if not smtp.has_extn("starttls"):
            detail = f"STARTTLS refused: {where} does not offer it (nothing sent in clear text)"
            log.warning(redact_addresses(detail))
            raise _Failed(SendResult("temporary", None, detail, "connect"))
        try:
            smtp.starttls(context=self._transport.tls_context)
        except smtplib.SMTPResponseException as exc:  # any reply but 220
            code = exc.smtp_code
            detail = (
                f"STARTTLS refused by {where}: {code} {_text(exc.smtp_error)} (nothing sent in clear text)"
            )
            log.warning(redact_addresses(detail))
            raise _Failed(SendResult("temporary", code, detail, "connect")) from None
        self._hello(smtp, where)  # RFC 3207: forget what was said before TLS and ask again

    def _login(self, smtp: smtplib.SMTP, where: str) -> None:
        """AUTH; a refusal is a config problem, so it is temporary and never blames a recipient."""
        url = self._transport.smtp
        assert url.username is not None
        if not smtp.has_extn("auth"):
            detail = f"{where} does not offer AUTH, but the SMTP URL has a username"
            raise _Failed(SendResult("temporary", None, detail, "connect"))
        try:
            smtp.login(url.username, url.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            detail = f"authentication failed for {url.username} at {where}: {exc.smtp_code} {_text(exc.smtp_error)}"
            log.warning(redact_addresses(detail))
            raise _Failed(SendResult("temporary", exc.smtp_code, detail, "connect",
                                     sender_refused=500 <= exc.smtp_code < 600)) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise _Failed(SendResult("temporary", None, f"{where}: AUTH: {exc}", "connect")) from None
        except smtplib.SMTPException as exc:
            if isinstance(exc, smtplib.SMTPServerDisconnected):
                raise
            raise _Failed(SendResult("temporary", None, f"{where}: AUTH failed: {exc}", "connect")) from None

    @staticmethod
    def _encrypted(smtp: smtplib.SMTP) -> bool:
        return isinstance(smtp.sock, ssl.SSLSocket)

    def _drop(self) -> None:
        """Forget the connection without QUIT (it is broken or closing); the next send reconnects."""
        smtp, self._smtp = self._smtp, None
        self._needs_rset = False
        if smtp is not None:
            smtp.close()


def from_settings(settings: Settings) -> SMTPTransport:
    """The relay in `delivery.smtp_url` (MAILER_SMTP_URL)."""
    delivery = settings.delivery
    return SMTPTransport(parse_smtp_url(delivery.smtp_url), timeout=delivery.timeout_seconds)
