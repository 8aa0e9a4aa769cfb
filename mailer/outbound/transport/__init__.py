"""What every transport shares: the Transport and Connection protocols, the Envelope and the SendResult.

A Transport makes Connections; the delivery loop opens one Connection per worker thread and sends many
messages through it. A Connection never raises for a delivery problem: it returns a SendResult whose
outcome says what the outbox should do with the message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from mailer.config import Settings

Outcome = Literal["sent", "temporary", "permanent", "unknown", "skipped"]  # "skipped": never handed over (delivery)


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    mail_from: str
    rcpt: str
    data: bytes  # the complete message, CRLF line endings
    key: str = ""  # a name for the message (the outbox id): the file transport names its file after it
    # The data is known to end every line with CRLF (the renderer builds it so, and its tests check it):
    # the transport need not scan 10-50 KB per recipient to make sure.
    crlf: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class SendResult:
    outcome: Outcome
    code: int | None = None
    detail: str = ""
    # Where it happened: "connect" (TCP, TLS, EHLO, AUTH), "envelope" (checked here, nothing sent),
    # "mail", "rcpt", "data" (DATA command, message, final reply) or "" (sent / file transport).
    # Only a "permanent" at "rcpt" (or "data") says something about the recipient's address.
    stage: str = ""


# stream(): take(wait) gives the next (token, envelope) or None; done(token, result) reports one.
Take = Callable[[bool], "tuple[object, Envelope] | None"]
Done = Callable[[object, SendResult], None]


class Connection(Protocol):
    def send(self, envelope: Envelope) -> SendResult: ...

    def stream(self, take: Take, done: Done) -> None: ...

    def close(self) -> None: ...


class Transport(Protocol):
    def connect(self) -> Connection: ...


def make_transport(settings: Settings) -> Transport:
    """The transport the config asks for, with DKIM when a key is configured."""
    from pathlib import Path

    from mailer.config import parse_smtp_url

    delivery = settings.delivery
    signer = load_dkim(delivery.dkim, settings.dkim_private_key)
    if delivery.transport == "smtp":
        return SMTPTransport(parse_smtp_url(delivery.smtp_url), timeout=delivery.timeout_seconds, dkim=signer)
    return FileTransport(Path(delivery.outbox_dir), dkim=signer)


from mailer.outbound.transport.dkim import DkimSigner, load_dkim  # noqa: E402
from mailer.outbound.transport.file import FileConnection, FileTransport  # noqa: E402
from mailer.outbound.transport.smtp import SMTPConnection, SMTPTransport  # noqa: E402

__all__ = ["Connection", "DkimSigner", "Done", "Envelope", "FileConnection", "FileTransport", "Outcome",
           "SMTPConnection", "SMTPTransport", "SendResult", "Take", "Transport", "load_dkim", "make_transport"]
