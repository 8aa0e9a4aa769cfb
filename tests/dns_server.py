"""A DNS server on loopback (dnslib) answering TXT and MX questions from a dict a test may change."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

from dnslib import MX, QTYPE, RCODE, RR, TXT
from dnslib.server import BaseResolver, DNSLogger, DNSServer


def _chunks(text: str) -> list[bytes]:
    """A TXT value as the <=255-byte strings DNS carries (a DKIM key is longer than one)."""
    data = text.encode()
    return [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]


@dataclass
class Records:
    """name -> TXT strings, and name -> MX (preference, host); names without the final dot."""

    txt: dict[str, list[str]] = field(default_factory=dict)
    mx: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    def names(self) -> set[str]:
        return {name.lower() for name in (*self.txt, *self.mx)}


class _Resolver(BaseResolver):
    def __init__(self, records: Records) -> None:
        self.records = records

    def resolve(self, request, handler):  # noqa: ANN001, ANN201
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        kind = QTYPE[request.q.qtype]
        txt = {key.lower(): value for key, value in self.records.txt.items()}
        mx = {key.lower(): value for key, value in self.records.mx.items()}
        if name not in self.records.names():
            reply.header.rcode = RCODE.NXDOMAIN
        elif kind == "TXT":
            for value in txt.get(name, []):
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(_chunks(value)), ttl=60))
        elif kind == "MX":
            for preference, host in mx.get(name, []):
                reply.add_answer(RR(request.q.qname, QTYPE.MX, rdata=MX(host, preference), ttl=60))
        return reply


class LoopbackDNS:
    """UDP and TCP on one free port of 127.0.0.1; `records` may change while it runs."""

    def __init__(self, records: Records | None = None) -> None:
        self.records = records or Records()
        self.port = _free_udp_and_tcp_port()
        quiet = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
        resolver = _Resolver(self.records)
        self._servers = [DNSServer(resolver, address="127.0.0.1", port=self.port, tcp=tcp, logger=quiet)
                         for tcp in (False, True)]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        for server in self._servers:  # a short poll interval: stop() returns at once
            threading.Thread(target=server.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        for server in self._servers:
            server.server.shutdown()
            server.server.server_close()


def _free_udp_and_tcp_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port for both UDP and TCP")
