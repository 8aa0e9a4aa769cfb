"""Web safeguards: signed form tokens (CSRF), the same-origin check, per-client rate limits, headers.

Subscriber pages have no login and no cookie, so a CSRF token cannot be tied to a session. Instead a
form token is an HMAC, under the secret key, of the page's scope (the link token in the URL) and the
time the form was shown: only a page we rendered for that link can produce it, and it expires.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from enum import Enum
from urllib.parse import urlsplit

from flask import Request, request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailer.audience import RequestInfo
from mailer.models import RateEvent

FORM_TOKEN_MAX_AGE = dt.timedelta(hours=24)
# A form shown by another of our processes whose clock runs a little ahead is still accepted.
FORM_TOKEN_CLOCK_SKEW = dt.timedelta(minutes=5)


class FormTokenProblem(Enum):
    """Why a form token was refused (the page words each one for the person)."""

    MISSING = "missing"
    INVALID = "invalid"
    EXPIRED = "expired"


def _mac(secret: str, *parts: str) -> str:
    digest = hmac.new(secret.encode(), "\x1f".join(parts).encode(), hashlib.sha256).digest()[:18]
    return base64.urlsafe_b64encode(digest).decode()


def form_token(secret: str, scope: str, now: dt.datetime) -> str:
    """A token for one form on one page (`scope`), shown at `now`."""
    stamp = str(int(now.timestamp()))
    return f"{stamp}.{_mac(secret, 'form', scope, stamp)}"


def check_form_token(
    secret: str, scope: str, token: str | None, now: dt.datetime, max_age: dt.timedelta = FORM_TOKEN_MAX_AGE
) -> FormTokenProblem | None:
    """None when the token was made by us for this scope and is fresh; otherwise what is wrong with it."""
    if not token:
        return FormTokenProblem.MISSING
    stamp, _, mac = token.partition(".")
    if not stamp.isdigit() or len(stamp) > 12:
        return FormTokenProblem.INVALID
    # Checked before the age, so a forged token is "invalid", never "expired".
    if not hmac.compare_digest(mac.encode(), _mac(secret, "form", scope, stamp).encode()):
        return FormTokenProblem.INVALID
    age = now - dt.datetime.fromtimestamp(int(stamp), dt.UTC)
    if age > max_age or age < -FORM_TOKEN_CLOCK_SKEW:
        return FormTokenProblem.EXPIRED
    return None


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def is_cross_site(request: Request, base_url: str) -> bool:
    """True when the browser says the request was sent by a page of another origin.

    Browsers send `Sec-Fetch-Site` on every request; older ones send `Origin` on POSTs. Because our
    pages use `Referrer-Policy: no-referrer`, a browser sends `Origin: null` even for our own forms, so
    "null" (and a missing header, e.g. curl) proves nothing either way: the signed form token decides.
    """
    fetch_site = request.headers.get("Sec-Fetch-Site", "").lower()
    if fetch_site and fetch_site not in ("same-origin", "none"):
        return True
    allowed = {_origin(base_url), _origin(request.host_url)}
    origin = request.headers.get("Origin", "").strip()
    if origin and origin != "null":
        return origin.lower() not in allowed
    referer = request.headers.get("Referer", "").strip()
    if referer:
        return _origin(referer) not in allowed
    return False


def client_key(secret: str, purpose: str, ip: str | None) -> str:
    """The rate-limit key for one client: a keyed hash, so the table never holds IP addresses."""
    digest = hmac.new(secret.encode(), f"rate\x1f{ip or 'unknown'}".encode(), hashlib.sha256).hexdigest()[:40]
    return f"{purpose}:{digest}"


def over_limit(session: Session, key: str, limit: int, window: dt.timedelta, now: dt.datetime) -> bool:
    """Count this request for `key`; True when more than `limit` requests fell in the last `window`.

    Refused requests count too, so a client that keeps hammering stays limited. The rows live in the
    database so every process behind a load balancer shares one limit; housekeeping purges old ones.
    """
    session.add(RateEvent(key=key, at=now))
    session.flush()
    recent = session.scalar(
        select(func.count()).select_from(RateEvent).where(RateEvent.key == key, RateEvent.at > now - window)
    )
    return int(recent or 0) > limit


def style_hash(css: str) -> str:
    """The CSP source expression that allows exactly this inline <style> block and nothing else."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(css.encode()).digest()).decode() + "'"


def content_security_policy(css: str) -> str:
    """The default policy: our own origin only, one known inline stylesheet, no framing, no plugins."""
    return "; ".join([
        "default-src 'self'",
        f"style-src {style_hash(css)}",
        "img-src 'self' data:",
        "form-action 'self'",
        "base-uri 'none'",
        "object-src 'none'",
        "frame-ancestors 'none'",
    ])


def request_info() -> RequestInfo:
    """The IP address and user agent recorded with a consent change made through this request."""
    return RequestInfo(ip=request.remote_addr, user_agent=request.headers.get("User-Agent") or None)
