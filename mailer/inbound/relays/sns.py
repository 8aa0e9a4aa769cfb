"""Amazon SNS messages: their signatures checked with the signing certificate, fetched only from Amazon.

SignatureVersion 1 is SHA1withRSA and 2 is SHA256withRSA, over the message's canonical string. The
certificate comes from `https://sns.<region>.amazonaws.com/….pem` (or `.amazonaws.com.cn`) and nowhere
else; so does a subscription confirmation. Tests give `Sns` their own URL rule to serve both from loopback.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mailer.inbound.relays.events import Refused, fresh, iso_time

log = logging.getLogger("mailer.relays")

_AMAZON_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?")
_NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_CONFIRMATION_FIELDS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
# SNS retries by the topic's delivery policy and a confirmation stays valid for three days; a replayed
# notification is harmless anyway (applied once by its MessageId).
MAX_AGE = dt.timedelta(days=4)
LARGEST_CERTIFICATE = 64 * 1024
FETCH_SECONDS = 5.0


def amazon_url(url: str, *, certificate: bool) -> bool:
    """An https URL on an SNS endpoint of a region: a certificate's path ending in .pem, or the
    ConfirmSubscription action; nothing else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme != "https" or parts.username or parts.password or port not in (None, 443):
        return False
    if not _AMAZON_HOST.fullmatch(parts.hostname or ""):
        return False
    if certificate:
        return parts.path.endswith(".pem")
    return parts.path in ("", "/") and parse_qs(parts.query).get("Action") == ["ConfirmSubscription"]


class Sns:
    """Where signing certificates and subscription confirmations are fetched: by URL rule `allowed`
    (Amazon's endpoints in production), over urllib, with a short timeout. Certificates are kept in memory."""

    def __init__(self, allowed: Callable[..., bool] = amazon_url, timeout: float = FETCH_SECONDS) -> None:
        self.allowed = allowed
        self.timeout = timeout
        self._certificates: dict[str, x509.Certificate] = {}
        self._lock = threading.Lock()

    def certificate(self, url: str) -> x509.Certificate:
        if not self.allowed(url, certificate=True):
            raise Refused(403, "the signing certificate is not on an Amazon SNS endpoint")
        with self._lock:
            cached = self._certificates.get(url)
        if cached is not None:
            return cached
        try:
            loaded = x509.load_pem_x509_certificate(self._get(url, LARGEST_CERTIFICATE))
        except ValueError:
            raise Refused(403, "the signing certificate could not be read") from None
        with self._lock:
            if len(self._certificates) > 32:  # Amazon rotates its certificate now and then
                self._certificates.clear()
            self._certificates[url] = loaded
        return loaded

    def confirm(self, url: str) -> None:
        """Visit a SubscriptionConfirmation's SubscribeURL (a GET on Amazon's endpoint)."""
        if not self.allowed(url, certificate=False):
            raise Refused(403, "the SubscribeURL is not an Amazon SNS endpoint")
        self._get(url, LARGEST_CERTIFICATE)

    def _get(self, url: str, limit: int) -> bytes:
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:  # noqa: S310 (checked above)
                return response.read(limit)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.warning("Amazon SNS: fetching from %s failed (%s)", urlsplit(url).hostname, type(exc).__name__)
            raise Refused(502, "Amazon SNS could not be reached; try again") from None


def canonical(message: Mapping[str, Any]) -> bytes:
    """The string SNS signs: "name\\nvalue\\n" for each signed field present, in this order."""
    kind = message.get("Type")
    names = _NOTIFICATION_FIELDS if kind == "Notification" else _CONFIRMATION_FIELDS
    lines = []
    for name in names:
        value = message.get(name)
        if value is None:
            if name == "Subject":  # the one optional signed field
                continue
            raise Refused(403, f"the SNS message has no {name}")
        lines.append(f"{name}\n{value}\n")
    return "".join(lines).encode()


def verify(message: Mapping[str, Any], sns: Sns, now: dt.datetime) -> None:
    """The message's signature verifies with its signing certificate, which is valid now; the message is recent."""
    algorithm = _HASHES.get(str(message.get("SignatureVersion") or ""))
    if algorithm is None:
        raise Refused(403, "unknown SNS SignatureVersion")
    try:
        signature = base64.b64decode(str(message.get("Signature") or ""), validate=True)
    except binascii.Error:
        raise Refused(403, "the SNS signature is not base64") from None
    signed = canonical(message)
    certificate = sns.certificate(str(message.get("SigningCertURL") or ""))
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise Refused(403, "the SNS signing certificate is not valid now")
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise Refused(403, "the SNS signing certificate holds no RSA key")
    try:
        key.verify(signature, signed, padding.PKCS1v15(), algorithm())
    except InvalidSignature:
        raise Refused(403, "the SNS signature does not verify") from None
    if not fresh(iso_time(message.get("Timestamp")), now, MAX_AGE):
        raise Refused(403, "the SNS message is too old (or from the future)")
