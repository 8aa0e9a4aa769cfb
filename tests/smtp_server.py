"""A real SMTP server on loopback (aiosmtpd) that records what it receives and can be told to misbehave."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str] = field(default_factory=list)
    tls: bool = False  # the session was encrypted (implicit TLS or STARTTLS)
    login: str | None = None  # the AUTH user, when the client authenticated

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]


@dataclass
class Faults:
    """What the server should do instead of accepting. Each is consulted per command."""

    # address -> reply for RCPT TO (e.g. "550 5.1.1 no such user"); "*" applies to every address.
    rcpt: dict[str, str] = field(default_factory=dict)
    # reply for DATA after the message was received (e.g. "451 4.3.0 try later")
    data: str | None = None
    # addresses whose DATA gets a reply only after this many seconds
    data_delay: float = 0.0
    # close the connection after receiving the message, before replying (the "unknown" case)
    drop_after_dot: bool = False
    # the same for the n-th message only (counted from 1 since the last reset)
    drop_after_dot_at: int | None = None
    # a callable(received_count) -> reply or None, consulted on DATA for scripted sequences
    data_script: Callable[[int], str | None] | None = None
    # a greeting instead of "220 ..." (e.g. "421 4.3.2 busy"); the server then closes the connection
    greeting: str | None = None
    # reply for MAIL FROM (e.g. "553 5.7.1 sender not allowed")
    mail: str | None = None
    # RCPT TO gets its reply only after this many seconds
    rcpt_delay: float = 0.0
    # reply for STARTTLS instead of starting TLS (e.g. "454 4.7.0 TLS not available")
    starttls: str | None = None
    # answer DATA with 354, read one line of the message, then reset the connection
    drop_mid_data: bool = False


class _Handler:
    def __init__(self, server: SMTPServer) -> None:
        self.server = server

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses):  # noqa: ANN001, ANN201
        # Real relays (Postfix, Exchange) offer PIPELINING; aiosmtpd reads pipelined commands in order anyway.
        session.host_name = hostname
        if self.server.pipelining:
            responses = [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options
    ):  # noqa: ANN001
        with self.server.lock:
            self.server.mail_commands += 1
        if self.server.faults.mail:
            return self.server.faults.mail
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options
    ):  # noqa: ANN001
        faults = self.server.faults
        if faults.rcpt_delay:
            await asyncio.sleep(faults.rcpt_delay)
        reply = faults.rcpt.get(address) or faults.rcpt.get("*")
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.server.lock:
            self.server.rset_commands += 1
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        faults = self.server.faults
        with self.server.lock:
            self.server.data_commands += 1
            count = self.server.data_commands
        if faults.data_delay:
            await asyncio.sleep(faults.data_delay)
        if faults.drop_after_dot or faults.drop_after_dot_at == count:
            # The protocol object (not the session) owns the transport; close it before any reply.
            assert server.transport is not None
            server.transport.close()
            return "421 closing"
        if faults.data_script is not None:
            reply = faults.data_script(count)
            if reply:
                return reply
        if faults.data:
            return faults.data
        login = session.auth_data if session.authenticated else None
        # session.ssl is set only after STARTTLS; the transport knows about implicit TLS too.
        tls = server.transport is not None and server.transport.get_extra_info("ssl_object") is not None
        with self.server.lock:
            self.server.received.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    envelope.original_content or b"",
                    mail_options=list(envelope.mail_options),
                    tls=tls,
                    login=login if isinstance(login, str) else None,
                )
            )
        return "250 2.0.0 queued"


class _FaultySMTP(SMTP):
    """aiosmtpd's SMTP plus the faults a handler hook cannot express (greeting, STARTTLS, mid-DATA)."""

    def __init__(self, recorder: SMTPServer, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.recorder = recorder

    async def _handle_client(self) -> None:
        # Runs once per TCP connection (not again after STARTTLS), so it is where connections are counted.
        with self.recorder.lock:
            self.recorder.connections += 1
        greeting = self.recorder.faults.greeting
        if greeting:
            await self.push(greeting)
            assert self.transport is not None
            self.transport.close()
            return
        await super()._handle_client()

    async def smtp_STARTTLS(self, arg: str) -> None:
        reply = self.recorder.faults.starttls
        if reply:
            await self.push(reply)
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_DATA(self, arg: str) -> None:
        if self.recorder.faults.drop_mid_data and self.envelope is not None and self.envelope.rcpt_tos:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            await self._reader.readuntil(b"\r\n")
            # abort() with unread data queued makes the kernel send RST, so the client's writes fail.
            assert self.transport is not None
            self.transport.abort()
            return
        await super().smtp_DATA(arg)


class _Controller(Controller):
    def __init__(self, recorder: SMTPServer, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.recorder = recorder

    def factory(self) -> SMTP:
        return _FaultySMTP(self.recorder, self.handler, **self.SMTP_kwargs)


class SMTPServer:
    """aiosmtpd Controller on 127.0.0.1 and a free port; `received` lists accepted messages.

    `pipelining` (default True, as real relays do) offers PIPELINING in the EHLO reply.

    Keyword arguments go to aiosmtpd's Controller/SMTP: e.g. `tls_context=` (offer STARTTLS),
    `ssl_context=` (implicit TLS), `authenticator=`, `enable_SMTPUTF8=False`.
    """

    pipelining = True

    def __init__(self, **controller_kwargs) -> None:  # noqa: ANN003
        self.received: list[Received] = []
        self.faults = Faults()
        self.lock = threading.Lock()
        self.data_commands = 0
        self.mail_commands = 0
        self.rset_commands = 0
        self.connections = 0  # TCP connections accepted since start() or reset()
        self._controller_kwargs = controller_kwargs
        self.controller: Controller | None = None

    def start(self) -> None:
        with socket.socket() as sock:  # a free port; aiosmtpd's readiness probe needs a real one
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.controller = _Controller(
            self,
            _Handler(self),
            hostname="127.0.0.1",
            port=port,
            decode_data=False,
            **self._controller_kwargs,
        )
        self.controller.start()
        # The Controller's readiness probe read the greeting, so its connection is already counted.
        with self.lock:
            self.connections = 0

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()

    @property
    def port(self) -> int:
        assert self.controller is not None
        return self.controller.port

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def reset(self) -> None:
        with self.lock:
            self.received.clear()
            self.faults = Faults()
            self.data_commands = 0
            self.mail_commands = 0
            self.rset_commands = 0
            self.connections = 0

    def messages_to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [item.message for item in self.received if address in item.rcpt_tos]
