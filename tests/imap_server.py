"""A small IMAP4rev1 server over TLS on loopback, for the bounce and replies mailboxes.

Just enough of RFC 3501 for mailer's reader: LOGIN, SELECT (with UIDVALIDITY), UID SEARCH (UNSEEN,
and UID n:*), UID FETCH BODY.PEEK[], UID STORE +FLAGS. Messages, their flags and the commands received
are kept for tests to look at.
"""

from __future__ import annotations

import re
import shutil
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass
class Stored:
    uid: int
    body: bytes
    flags: set[str] = field(default_factory=set)


class ImapServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, tls: ssl.SSLContext, user: str, password: str, folder: str = "INBOX") -> None:
        super().__init__(("127.0.0.1", 0), ImapSession)
        self.tls, self.user, self.password, self.folder = tls, user, password, folder
        self.messages: list[Stored] = []
        self.commands: list[str] = []
        self.uidvalidity = 1
        self.next_uid = 1

    @property
    def port(self) -> int:
        return self.server_address[1]

    def add(self, body: bytes, *flags: str) -> Stored:
        stored = Stored(self.next_uid, body, set(flags))
        self.next_uid += 1
        self.messages.append(stored)
        return stored

    def renumber(self) -> None:
        """What a server does when it rebuilds a folder: new UIDs under a new UIDVALIDITY."""
        self.uidvalidity += 1
        for number, message in enumerate(self.messages, start=1):
            message.uid = number
        self.next_uid = len(self.messages) + 1


class ImapSession(socketserver.StreamRequestHandler):
    server: ImapServer

    def setup(self) -> None:
        try:
            self.request = self.server.tls.wrap_socket(self.request, server_side=True)
        except (ssl.SSLError, OSError):
            self.request = None
            return
        super().setup()

    def finish(self) -> None:
        # The TLS socket replaced the one socketserver closes: close it here.
        if self.request is not None:
            super().finish()
            self.request.close()

    def handle(self) -> None:
        if self.request is None:
            return
        self.send(b"* OK [CAPABILITY IMAP4rev1] test server ready")
        authenticated = False
        for line in self.rfile:
            tag, _, rest = line.decode().rstrip("\r\n").partition(" ")
            words = [quoted if quoted else bare for quoted, bare in re.findall(r'"((?:[^"\\]|\\.)*)"|(\S+)', rest)]
            command = [w.upper() for w in words[:2]]
            self.server.commands.append(" ".join(command))
            if command[:1] == ["CAPABILITY"]:
                self.send(b"* CAPABILITY IMAP4rev1")
            elif command[:1] == ["LOGIN"]:
                if words[1:3] != [self.server.user, self.server.password]:
                    self.send(f"{tag} NO [AUTHENTICATIONFAILED] Invalid credentials".encode())
                    continue
                authenticated = True
            elif command[:1] == ["SELECT"] and authenticated:
                if words[1] != self.server.folder:
                    self.send(f"{tag} NO [NONEXISTENT] Unknown folder".encode())
                    continue
                self.send(f"* {len(self.server.messages)} EXISTS".encode())
                self.send(f"* OK [UIDVALIDITY {self.server.uidvalidity}] UIDs valid".encode())
            elif command == ["UID", "SEARCH"]:
                criteria = [w.upper() for w in words[2:]]
                if criteria[:1] == ["UID"]:
                    found = self.stored(words[3])
                else:
                    found = [m for m in self.server.messages if "\\Seen" not in m.flags]
                self.send(" ".join(["* SEARCH", *(str(m.uid) for m in found)]).encode())
            elif command == ["UID", "FETCH"]:
                for m in self.stored(words[2]):
                    self.send(f"* {m.uid} FETCH (UID {m.uid} BODY[] {{{len(m.body)}}}".encode())
                    self.wfile.write(m.body)
                    self.send(b")")
            elif command == ["UID", "STORE"]:
                for m in self.stored(words[2]):
                    m.flags.add("\\Seen")
            elif command[:1] == ["LOGOUT"]:
                self.send(b"* BYE logging out")
                self.send(f"{tag} OK LOGOUT completed".encode())
                return
            elif command[:1] != ["CLOSE"]:
                self.send(f"{tag} BAD unexpected command".encode())
                continue
            self.send(f"{tag} OK done".encode())

    def stored(self, uid_set: str) -> list[Stored]:
        """The messages of a UID set such as "3,5" or "4:*" ("*" is the highest UID, as in RFC 3501)."""
        highest = max((m.uid for m in self.server.messages), default=0)
        wanted: set[int] = set()
        for item in uid_set.split(","):
            low, _, high = item.partition(":")
            first = highest if low == "*" else int(low)
            last = first if not high else (highest if high == "*" else int(high))
            wanted.update(range(min(first, last), max(first, last) + 1))
        return [m for m in self.server.messages if m.uid in wanted]

    def send(self, line: bytes) -> None:
        self.wfile.write(line + b"\r\n")


def make_certificate(folder: Path) -> Path:
    """A self-signed certificate for 127.0.0.1 (its key beside it as key.pem)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    return folder / "cert.pem"


@contextmanager
def running(certificate: Path, user: str, password: str) -> Iterator[ImapServer]:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(certificate, certificate.parent / "key.pem")
    server = ImapServer(tls, user, password)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
