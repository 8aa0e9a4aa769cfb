"""Doctor checks of the sending domain's DNS (dnspython): SPF, DKIM, DMARC, and MX of the Reply-To domain."""

from __future__ import annotations

import base64
import re

import dns.exception
import dns.resolver

from mailer.config import Settings
from mailer.doctor import Result, fail, ok, warn
from mailer.outbound.transport import load_dkim


class LookupTrouble(Exception):
    """DNS gave no answer at all (timeout, SERVFAIL): different from "there is no such record"."""


def make_resolver(server: tuple[str, int] | None, timeout: float) -> dns.resolver.Resolver:
    """The system's resolver, or one asking only `server` (HOST, PORT)."""
    if server is None:
        resolver = dns.resolver.Resolver()
    else:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [server[0]]
        resolver.port = server[1]
    resolver.lifetime = min(timeout, 5.0)
    resolver.timeout = min(timeout, 2.0)
    return resolver


def txt_records(resolver: dns.resolver.Resolver, name: str) -> list[str]:
    """The TXT strings at `name` (each record's pieces joined); [] when there are none."""
    try:
        answer = resolver.resolve(name, "TXT", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.YXDOMAIN) as exc:
        raise LookupTrouble(_trouble(resolver, f"{name} TXT", exc)) from None
    return [b"".join(record.strings).decode("utf-8", "replace") for record in answer]


def _trouble(resolver: dns.resolver.Resolver, question: str, exc: Exception) -> str:
    servers = ", ".join(f"{server}:{resolver.port}" for server in resolver.nameservers)
    why = "timed out" if isinstance(exc, dns.exception.Timeout) else "failed (SERVFAIL or refused)"
    return f"DNS ({servers}) {why} on {question}"


def check(settings: Settings, resolver: dns.resolver.Resolver) -> list[Result]:
    """SPF, DKIM and DMARC of the From domain, MX of the Reply-To domain; a DNS that does not answer is
    asked once, not four times over."""
    from_domain = settings.sender.from_email.rpartition("@")[2].lower()
    reply_domain = settings.sender.reply_to.rpartition("@")[2].lower()
    results: list[Result] = []
    trouble = ""
    for name, step in (("spf", lambda: spf(resolver, from_domain)), ("dkim", lambda: dkim(settings, resolver)),
                       ("dmarc", lambda: dmarc(resolver, from_domain)), ("mx", lambda: mx(resolver, reply_domain))):
        try:
            if trouble:
                raise LookupTrouble(trouble)
            results.append(step())
        except LookupTrouble as exc:
            trouble = str(exc)
            results.append(fail(name, trouble, "check the DNS server this machine uses (or --dns-server HOST:PORT)"))
    return results


def spf(resolver: dns.resolver.Resolver, domain: str) -> Result:
    records = [r for r in txt_records(resolver, domain) if re.match(r"v=spf1(\s|$)", r, re.I)]
    if not records:
        return fail("spf", f"no SPF record on {domain}",
                    f'add a TXT record on {domain} naming the relay, e.g. "v=spf1 include:<your relay\'s SPF> -all"')
    if len(records) > 1:
        return fail("spf", f"{len(records)} SPF records on {domain}: receivers treat that as an error",
                    "merge them into one TXT record")
    record = records[0]
    ending = next((term for term in record.lower().split()[1:] if term.lstrip("+-~?") == "all"), None)
    if ending in ("all", "+all"):
        return fail("spf", f'"{record}" ends with {ending}: it lets anyone send as {domain}',
                    'end the record with "-all" (or "~all")')
    if ending == "?all":
        return warn("spf", f'"{record}" ends with ?all (neutral): it vouches for nothing',
                    'end the record with "-all" (or "~all")')
    if ending is None and "redirect=" not in record.lower():
        return warn("spf", f'"{record}" has no "all" at the end', 'end the record with "-all" (or "~all")')
    return ok("spf", f'"{record}"')


def dkim(settings: Settings, resolver: dns.resolver.Resolver) -> Result:
    from cryptography.hazmat.primitives import serialization

    from_domain = settings.sender.from_email.rpartition("@")[2].lower()
    try:
        signer = load_dkim(settings.delivery.dkim, settings.dkim_private_key)
        if signer is not None:
            private = serialization.load_pem_private_key(signer.private_key, password=None)
    except (ValueError, TypeError) as exc:
        return fail("dkim", str(exc).splitlines()[0], "give a PEM RSA private key (openssl genrsa -out dkim.pem 2048)")
    if signer is None:
        return warn("dkim", "not configured: messages go out unsigned",
                    "Gmail and Yahoo require DKIM of bulk senders: set delivery.dkim.selector, delivery.dkim.domain "
                    "and the key (see README)")
    name = f"{signer.selector}._domainkey.{signer.domain}"
    publish = f'publish TXT {name} "{public_record(private.public_key())}"'
    records = [r for r in txt_records(resolver, name) if "p=" in r]
    if not records:
        return fail("dkim", f"no DKIM record at {name}", publish)
    key = re.sub(r"\s+", "", dict(_tags(records[0])).get("p", ""))
    if not key:
        return fail("dkim", f"the DKIM record at {name} is revoked (empty p=)", publish)
    try:
        published = serialization.load_der_public_key(base64.b64decode(key))
    except ValueError:
        return fail("dkim", f"the DKIM record at {name} holds no readable public key", publish)
    if published.public_numbers() != private.public_key().public_numbers():
        return fail("dkim", f"the DKIM record at {name} does not match the configured private key",
                    f"{publish} (or configure the key that record was made from)")
    aligned = from_domain == signer.domain or from_domain.endswith("." + signer.domain) \
        or signer.domain.endswith("." + from_domain)
    if not aligned:
        return warn("dkim", f"the record at {name} matches the key, but {signer.domain} is not the From domain "
                            f"{from_domain}: DMARC will not count this signature",
                    f"sign with a key under {from_domain} (delivery.dkim.domain)")
    return ok("dkim", f"the record at {name} matches the configured private key")


def _tags(record: str) -> list[tuple[str, str]]:
    pairs = []
    for part in record.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            pairs.append((key.strip().lower(), value.strip()))
    return pairs


def public_record(public_key: object) -> str:
    """The DKIM TXT record for a public key: DER SubjectPublicKeyInfo, base64 (RFC 6376 section 3.6.1)."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")


def dmarc(resolver: dns.resolver.Resolver, domain: str) -> Result:
    """The policy at _dmarc.<domain>, else at the organisational domain (its last two labels)."""
    names = [f"_dmarc.{domain}"]
    labels = domain.split(".")
    if len(labels) > 2:
        names.append("_dmarc." + ".".join(labels[-2:]))
    for name in names:
        records = [r for r in txt_records(resolver, name) if re.match(r"v=DMARC1\s*(;|$)", r, re.I)]
        if records:
            break
    else:
        return fail("dmarc", f"no DMARC record at _dmarc.{domain}",
                    f'add TXT _dmarc.{domain} "v=DMARC1; p=none; rua=mailto:dmarc@{domain}" and tighten p= to '
                    "quarantine once the reports look clean")
    policy = dict(_tags(records[0])).get("p", "").lower()
    if policy in ("quarantine", "reject"):
        return ok("dmarc", f"policy {policy} (at {name})")
    if policy == "none":
        return warn("dmarc", f"policy none (at {name}): reports only, nothing stops others sending as {domain}",
                    "move to p=quarantine once the reports show only the clinic's own mail")
    return fail("dmarc", f"the DMARC record at {name} has no valid policy (p=)", "set p=none, quarantine or reject")


def mx(resolver: dns.resolver.Resolver, domain: str) -> Result:
    """Replies go to sender.reply_to: its domain must take mail."""
    try:
        answer = resolver.resolve(domain, "MX", search=False)
    except dns.resolver.NXDOMAIN:
        return fail("mx", f"{domain} (the Reply-To domain) does not exist in DNS: replies would bounce",
                    "set sender.reply_to to a mailbox the clinic reads")
    except dns.resolver.NoAnswer:
        return warn("mx", f"{domain} (the Reply-To domain) has no MX record: senders fall back to its address record",
                    f"add an MX record for {domain}")
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise LookupTrouble(_trouble(resolver, f"{domain} MX", exc)) from None
    hosts = sorted((record.preference, record.exchange.to_text(omit_final_dot=True)) for record in answer)
    if all(host in ("", ".") for _, host in hosts):
        return fail("mx", f"{domain} (the Reply-To domain) says it takes no mail (null MX)",
                    "set sender.reply_to to a mailbox the clinic reads")
    return ok("mx", f"{domain} takes mail at {', '.join(host for _, host in hosts)}")
