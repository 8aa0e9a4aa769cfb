"""SMTP on the wire, below the session logic: envelope addresses, line endings and dot-stuffing, socket
timeouts, and the smtplib classes the SMTP transport talks through."""

from __future__ import annotations

import io
import re
import smtplib
import socket
import ssl
import struct
import sys

import idna


def _write(smtp: smtplib.SMTP, data: bytes) -> tuple[int, OSError | None]:
    """Send all of data; how many bytes left before a failure, and the failure."""
    if smtp.sock is None:
        return 0, smtplib.SMTPServerDisconnected("please run connect() first")
    view = memoryview(data)
    sent = 0
    try:
        while sent < len(view):
            sent += smtp.sock.send(view[sent:])
    except OSError as exc:
        return sent, exc
    return sent, None


def _describe(exc: BaseException, timeout: float) -> str:
    """What went wrong with the network, in words staff can act on."""
    # smtplib wraps socket errors in SMTPServerDisconnected; the interesting part is the original.
    cause = exc
    if isinstance(exc, smtplib.SMTPServerDisconnected) and exc.__context__ is not None:
        cause = exc.__context__
    if isinstance(cause, _TIMED_OUT):
        return f"no reply within {timeout:g} s"
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return f"TLS failed: {cause.reason or cause}"
    if isinstance(cause, smtplib.SMTPServerDisconnected):
        return "the relay closed the connection"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(cause) or cause.__class__.__name__


_MAILBOX_STATUS = re.compile(r"\b5\.1\.\d{1,3}\b")  # RFC 3463: a bad destination mailbox address
_UNUSABLE_IN_ADDRESS = re.compile(r"[<>\r\n\t ]")


def _smtp_address(address: str) -> tuple[str, bool]:
    """The address for MAIL FROM / RCPT TO with an IDNA domain, and whether it needs SMTPUTF8."""
    if not address:
        return "", False  # the null reverse-path "<>"
    if "@" not in address or _UNUSABLE_IN_ADDRESS.search(address):
        raise ValueError(f"not a usable envelope address: {address!r}")
    local, _, domain = address.rpartition("@")
    if not local or not domain:
        raise ValueError(f"not a usable envelope address: {address!r}")
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise ValueError(
                f"the domain of {address!r} is not a valid internationalised name: {exc}"
            ) from None
    # A non-ASCII local part cannot be rewritten: only SMTPUTF8 can carry it.
    return f"{local}@{domain}", not local.isascii()


def _normalise_line_endings(data: bytes) -> bytes:
    """CRLF everywhere: SMTP and DKIM both assume it, and a stray LF would change the signed body."""
    if data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r"):
        return data
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


def _dot_stuffed(data: bytes, then: bytes = b"") -> bytes:
    """The DATA payload: leading dots doubled, CRLF-terminated, then the final "." (and `then`, the
    next commands, joined in the same copy)."""
    # The same rule as smtplib's _quote_periods, on CRLF-normalised data; bytes.replace is ~30x
    # faster than a multiline regex on a 10-50 KB newsletter, and this runs for every recipient.
    payload = data.replace(b"\r\n.", b"\r\n..")  # (no copy when there is no such line)
    return b"".join((b"." if payload.startswith(b".") else b"", payload,
                     b".\r\n" if payload.endswith(b"\r\n") else b"\r\n.\r\n", then))


# What a socket raises when its time runs out: Python's own timeout, or the kernel's (SO_RCVTIMEO and
# SO_SNDTIMEO on a blocking socket, see _kernel_timeouts).
_TIMED_OUT = (TimeoutError, BlockingIOError)


def _kernel_timeouts(sock: socket.socket, timeout: float) -> None:
    """Let the kernel enforce the timeout of an open plain session (Linux).

    A socket with a Python-level timeout polls before every send and every receive: two system calls
    where one would do, and two releases of the GIL that the other sender threads contend for, for
    each message. A blocking socket with SO_RCVTIMEO / SO_SNDTIMEO waits as long and no longer.
    A TLS session keeps Python's timeout: the ssl module waits out the kernel's timeout on a blocking
    socket (it would wait for ever), and TLS costs far more than the poll anyway.
    """
    if not sys.platform.startswith("linux") or isinstance(sock, ssl.SSLSocket) or timeout < 0.001:
        return  # (a timeout of 0 would mean "wait for ever")
    seconds = int(timeout)
    limit = struct.pack("@ll", seconds, int((timeout - seconds) * 1_000_000))  # struct timeval
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
    except OSError:  # not settable here: Python's own timeout stays
        return
    sock.settimeout(None)


class _SocketReader(io.RawIOBase):
    """The raw stream under smtplib's reply reader: a timeout surfaces as TimeoutError whether it was
    Python's or the kernel's (which a blocking socket reports as EAGAIN, and socket.SocketIO as an
    empty read, that is, as a closed connection)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        try:
            return self._sock.recv_into(buffer)
        except BlockingIOError:  # the kernel's timeout ran out
            raise TimeoutError("timed out") from None


class _Replies:
    """Mixed into smtplib's classes: replies are read through a _SocketReader. smtplib reads them from
    `self.file`, which it makes from the socket when it finds None (a new connection, a new TLS layer):
    here it never finds None while there is a socket."""

    sock: socket.socket | None
    _reader: io.BufferedReader | None = None

    @property
    def file(self) -> io.BufferedReader | None:
        if self._reader is None and self.sock is not None:
            self._reader = io.BufferedReader(_SocketReader(self.sock))
        return self._reader

    @file.setter
    def file(self, value: io.BufferedReader | None) -> None:
        self._reader = value


class _SMTP(_Replies, smtplib.SMTP):
    """smtplib.SMTP that remembers the host it dialled, so STARTTLS checks the certificate against it."""

    def connect(
        self, host: str = "localhost", port: int = 0, source_address: tuple[str, int] | None = None
    ) -> tuple[int, bytes]:
        # smtplib records the host only when it is given to __init__ (which would also connect).
        self._host = host
        return super().connect(host, port, source_address)


class _SMTPOverTLS(_Replies, smtplib.SMTP_SSL):
    """smtplib.SMTP_SSL with the certificate checked against the dialled host, and no socket leaked."""

    def connect(
        self, host: str = "localhost", port: int = 0, source_address: tuple[str, int] | None = None
    ) -> tuple[int, bytes]:
        self._host = host
        return super().connect(host, port, source_address)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        raw = socket.create_connection((host, port), timeout, self.source_address)
        try:
            return self.context.wrap_socket(raw, server_hostname=host)
        except BaseException:
            raw.close()  # smtplib's own version leaves it to the garbage collector
            raise
