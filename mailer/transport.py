"""SMTP (TLS, auth, reused connections, DKIM) and the file transport; every failure classified.

A Transport makes Connections; the delivery loop opens one Connection per worker thread and sends many
messages through it. A Connection never raises for a delivery problem: it returns a SendResult whose
outcome says what the outbox should do with the message.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Protocol

Outcome = Literal["sent", "temporary", "permanent", "unknown"]


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    mail_from: str
    rcpt: str
    data: bytes  # the complete message, CRLF line endings
    key: str = ""  # a name for the message (the outbox id): the file transport names its file after it


@dataclasses.dataclass(frozen=True, slots=True)
class SendResult:
    outcome: Outcome
    code: int | None = None
    detail: str = ""


class Connection(Protocol):
    def send(self, envelope: Envelope) -> SendResult: ...

    def close(self) -> None: ...


class Transport(Protocol):
    def connect(self) -> Connection: ...
