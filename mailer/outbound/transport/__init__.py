"""What every transport shares: the Transport and Connection protocols, the Envelope, the SendResult,
and the registry that finds a transport by the name `delivery.transport` gives.

A Transport makes Connections; the delivery engine opens one Connection per sender thread and sends
many messages through it. A Connection never raises for a delivery problem: it returns a SendResult
that says, in the transport's own terms, whether the message went, whether trying again could help, and
whether it was the recipient's address or the sender that was refused. DKIM is not a transport's
business: the engine signs each message once, before any transport sees it.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from mailer.config import Settings

Outcome = Literal["sent", "temporary", "permanent", "unknown", "skipped"]  # "skipped": never handed over (delivery)


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    mail_from: str
    rcpt: str
    data: bytes  # the complete message, CRLF line endings
    key: str = ""  # a name for the message (the outbox id): the file transport names its file after it
    # The data is known to end every line with CRLF (the message builder makes it so, and its tests check
    # it): the transport need not scan 10-50 KB per recipient to make sure.
    crlf: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class SendResult:
    """What happened to one message. `outcome`: sent; temporary (trying again later may work); permanent
    (it never will); unknown (the message left but its answer never came). The two flags say who was
    refused, so the engine never has to read a transport's codes: `address_rejected`, the recipient's
    address itself (a hard bounce); `sender_refused`, us (authentication or the sender address), which no
    message can get past until staff fix the configuration."""

    outcome: Outcome
    code: int | None = None
    detail: str = ""
    # Where it happened, in the transport's terms: for SMTP "connect" (TCP, TLS, EHLO, AUTH), "envelope"
    # (checked here, nothing sent), "mail", "rcpt", "data" (DATA command, message, final reply), or "".
    stage: str = ""
    address_rejected: bool = False
    sender_refused: bool = False


# stream(): take(wait) gives the next (token, envelope) or None; done(token, result) reports one.
Take = Callable[[bool], "tuple[object, Envelope] | None"]
Done = Callable[[object, SendResult], None]


class Connection(Protocol):
    def send(self, envelope: Envelope) -> SendResult: ...

    def stream(self, take: Take, done: Done) -> None: ...

    def close(self) -> None: ...


class Transport(Protocol):
    def connect(self) -> Connection: ...


# --- the registry ---------------------------------------------------------------------------------

TransportFactory = Callable[["Settings"], Transport]

# name -> a factory, or "module:function" for the built-in ones (imported only when chosen).
_REGISTRY: dict[str, TransportFactory | str] = {
    "smtp": "mailer.outbound.transport.smtp:from_settings",
    "file": "mailer.outbound.transport.file:from_settings",
}


def register(name: str, factory: TransportFactory) -> None:
    """Make `delivery.transport = "<name>"` build its transport with factory(settings)."""
    _REGISTRY[name] = factory


def names() -> list[str]:
    """The transport names `delivery.transport` accepts."""
    return sorted(_REGISTRY)


def make_transport(settings: Settings) -> Transport:
    """The transport the config names."""
    name = settings.delivery.transport
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ValueError(f"delivery.transport: no transport named {name!r} (known: {', '.join(names())})")
    if isinstance(factory, str):
        module, _, function = factory.partition(":")
        factory = getattr(importlib.import_module(module), function)
    return factory(settings)


_LAZY = {"DkimSigner": "dkim", "load_dkim": "dkim", "FileConnection": "file", "FileTransport": "file",
         "SMTPConnection": "smtp", "SMTPTransport": "smtp"}


def __getattr__(name: str) -> Any:
    """The built-in transports by their class names, imported on first use (a send loads only its own)."""
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
