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

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

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
    # a callable(received_count) -> reply or None, consulted on DATA for scripted sequences
    data_script: Callable[[int], str | None] | None = None


class _Handler:
    def __init__(self, server: SMTPServer) -> None:
        self.server = server

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options):  # noqa: ANN001
        faults = self.server.faults
        reply = faults.rcpt.get(address) or faults.rcpt.get("*")
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        faults = self.server.faults
        with self.server.lock:
            self.server.data_commands += 1
            count = self.server.data_commands
        if faults.data_delay:
            await asyncio.sleep(faults.data_delay)
        if faults.drop_after_dot:
            session.transport.close()
            return "421 closing"
        if faults.data_script is not None:
            reply = faults.data_script(count)
            if reply:
                return reply
        if faults.data:
            return faults.data
        with self.server.lock:
            self.server.received.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content or b"")
            )
        return "250 2.0.0 queued"


class SMTPServer:
    """aiosmtpd Controller on 127.0.0.1 and a free port; `received` lists accepted messages."""

    def __init__(self, **controller_kwargs) -> None:  # noqa: ANN003
        self.received: list[Received] = []
        self.faults = Faults()
        self.lock = threading.Lock()
        self.data_commands = 0
        self._controller_kwargs = controller_kwargs
        self.controller: Controller | None = None

    def start(self) -> None:
        with socket.socket() as sock:  # a free port; aiosmtpd's readiness probe needs a real one
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.controller = Controller(
            _Handler(self), hostname="127.0.0.1", port=port, decode_data=False, **self._controller_kwargs
        )
        self.controller.start()

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

    def messages_to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [item.message for item in self.received if address in item.rcpt_tos]
