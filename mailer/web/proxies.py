"""Trusted reverse proxies: X-Forwarded-For and X-Forwarded-Proto are believed only from their addresses.

Behind nginx or Caddy every request arrives from the proxy, so the client's address (for rate limits
and the consent ledger) and the original scheme are in the forwarded headers. Anyone can send those
headers, though: they count only when the peer itself is one of `web.trusted_proxies`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or CIDRs ("127.0.0.1", "10.0.0.0/8", "::1") as networks; ValueError names a bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or CIDR: {value!r}") from None
    return tuple(networks)


def _address(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address((value or "").strip().strip("[]"))
    except ValueError:
        return None
    # An IPv4 client seen through an IPv6 socket (::ffff:1.2.3.4) is that IPv4 client.
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def forwarded_client(peer: str | None, forwarded_for: str, networks: tuple[Network, ...]) -> str | None:
    """The client's address from X-Forwarded-For as our trusted proxies saw it, or None to keep the peer.

    Read from the right: each trusted proxy appends the address it received from, so the first hop from
    the right that is not one of ours is the client. What lies to the left of it was written by the
    client itself and proves nothing.
    """
    if not networks or not _trusted(_address(peer), networks):
        return None
    client = None
    for hop in reversed(forwarded_for.split(",")):
        address = _address(hop)
        if address is None:
            break  # garbage: keep the last hop a trusted proxy vouched for
        client = str(address)
        if not _trusted(address, networks):
            break
    return client


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address | None, networks: tuple[Network, ...]) -> bool:
    return address is not None and any(address in network for network in networks)


class TrustedProxies:
    """WSGI middleware: from a trusted peer, REMOTE_ADDR and the URL scheme come from the forwarded headers."""

    def __init__(self, app: Callable[..., Any], networks: tuple[Network, ...]) -> None:
        self.app = app
        self.networks = networks

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        peer = environ.get("REMOTE_ADDR")
        environ["mailer.peer"] = peer
        if self.networks and _trusted(_address(peer), self.networks):
            client = forwarded_client(peer, environ.get("HTTP_X_FORWARDED_FOR", ""), self.networks)
            if client:
                environ["REMOTE_ADDR"] = client
            scheme = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[0].strip().lower()
            if scheme in ("http", "https"):
                environ["wsgi.url_scheme"] = scheme
        return self.app(environ, start_response)
