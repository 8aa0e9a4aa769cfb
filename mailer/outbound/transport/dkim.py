"""DKIM: signs finished messages with the clinic's key (rsa-sha256, relaxed/relaxed)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailer.config import Dkim

log = logging.getLogger("mailer.smtp")

# The headers a signature covers when the message has them (RFC 6376 §5.4.1's list, trimmed to ours).
DKIM_HEADERS = (
    "From",
    "Subject",
    "Date",
    "To",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
)


class DkimSigner:
    """Signs finished messages with one DKIM key (rsa-sha256, relaxed/relaxed)."""

    def __init__(self, selector: str, domain: str, private_key: bytes) -> None:
        import dkim.crypto  # dkimpy pulls in dnspython: only for installations that sign

        key = private_key.replace(b"\r\n", b"\n").strip() + b"\n"
        try:
            dkim.crypto.parse_pem_private_key(key)
        except Exception as exc:  # dkimpy raises several types for a bad key; one message is enough
            raise ValueError(
                f"the DKIM private key is not a PEM RSA key ({exc.__class__.__name__})"
            ) from None
        self.selector = selector
        self.domain = domain
        self._key = key

    @property
    def private_key(self) -> bytes:
        """The PEM key it signs with (`mailer doctor` compares its public half with the DNS record)."""
        return self._key

    def sign(self, data: bytes) -> bytes:
        """The message with a DKIM-Signature header prepended; ValueError if it cannot be signed."""
        import dkim

        present = {name.lower() for name in _header_names(data)}
        include = [name.encode() for name in DKIM_HEADERS if name.lower() in present]
        try:
            signature = dkim.sign(
                data,
                self.selector.encode("ascii"),
                self.domain.encode("ascii"),
                self._key,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=include,
            )
        except dkim.DKIMException as exc:
            raise ValueError(f"DKIM signing failed: {exc}") from None
        return signature + data


def _header_names(data: bytes) -> list[str]:
    """Names of the header fields in a message (continuation lines skipped)."""
    head = data.split(b"\r\n\r\n", 1)[0]
    names = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") or b":" not in line:
            continue
        names.append(line.split(b":", 1)[0].strip().decode("ascii", "replace"))
    return names


def load_dkim(dkim_config: Dkim, private_key_pem: str = "") -> DkimSigner | None:
    """The signer the config asks for, or None when selector, domain or key is missing."""
    key: bytes | None = None
    if private_key_pem:
        # Environment variables are often set with literal "\n" instead of newlines.
        text = private_key_pem if "\n" in private_key_pem else private_key_pem.replace("\\n", "\n")
        key = text.encode("ascii", "replace")
    elif dkim_config.private_key_path:
        try:
            key = Path(dkim_config.private_key_path).read_bytes()
        except OSError as exc:
            raise ValueError(
                f"delivery.dkim.private_key_path: cannot read {dkim_config.private_key_path}: {exc.strerror}"
            ) from None
    if not (dkim_config.selector and dkim_config.domain and key):
        if dkim_config.selector or dkim_config.domain or key:
            log.warning("DKIM is partly configured (selector, domain and key are all needed); not signing")
        return None
    try:
        return DkimSigner(dkim_config.selector, dkim_config.domain, key)
    except ValueError as exc:
        source = "MAILER_DKIM_PRIVATE_KEY" if private_key_pem else dkim_config.private_key_path
        raise ValueError(f"delivery.dkim: {source}: {exc}") from None
