"""Doctor checks of the public address in every email: HTTPS, mailer behind it, one-click unsubscribe reachable."""

from __future__ import annotations

import ssl

import httpx

from mailer.config import Settings
from mailer.doctor import Result, fail, ok

# A token no contact can have: the one-click route answers it with 404 and changes nothing.
BAD_TOKEN = "0.doctor-check"
PROXY_ADVICE = "the reverse proxy must pass requests to `mailer serve` unchanged (no redirect, no login)"


def check(settings: Settings, timeout: float) -> list[Result]:
    base = settings.web.base_url
    # The system's CA store (also SSL_CERT_FILE), as a mailbox provider's would be; redirects are findings.
    with httpx.Client(verify=ssl.create_default_context(), timeout=timeout, follow_redirects=False) as client:
        return [address(client, base), one_click(client, base)]


def _trouble(exc: httpx.HTTPError) -> str:
    cause = exc.__cause__ or exc.__context__
    while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"its certificate is not trusted: {cause.verify_message}"
    return str(exc) or type(exc).__name__


def address(client: httpx.Client, base: str) -> Result:
    """web.base_url is https and mailer answers there (GET /healthz)."""
    https_advice = ("put `mailer serve` behind the clinic's TLS reverse proxy and set MAILER_BASE_URL=https://…: "
                    "mailbox providers expect https unsubscribe links")
    try:
        response = client.get(f"{base}/healthz")
    except httpx.HTTPError as exc:
        return fail("base_url", f"{base} cannot be reached: {_trouble(exc)}",
                    "check MAILER_BASE_URL, the DNS name and the reverse proxy; links in emails lead there")
    if not base.startswith("https://"):
        return fail("base_url", f"{base} answers, but not over HTTPS", https_advice)
    if response.status_code != 200 or "database" not in response.text:
        return fail("base_url", f"{base}/healthz answered {response.status_code}, not mailer's health page",
                    PROXY_ADVICE)
    return ok("base_url", f"{base} answers over HTTPS (GET /healthz: 200)")


def one_click(client: httpx.Client, base: str) -> Result:
    """An RFC 8058 one-click POST with a bad token must reach mailer and get its 404."""
    url = f"{base}/unsubscribe/{BAD_TOKEN}"
    try:
        response = client.post(url, data={"List-Unsubscribe": "One-Click"})
    except httpx.HTTPError as exc:
        return fail("one_click", f"POST {url} failed: {_trouble(exc)}", PROXY_ADVICE)
    code = response.status_code
    if code == 404:
        return ok("one_click", "POST /unsubscribe/… with a bad token: 404 (the one-click route is reachable)")
    if 300 <= code < 400:
        return fail("one_click", f"POST /unsubscribe/… was redirected ({code} to "
                                 f"{response.headers.get('location', '?')}): mailbox providers do not follow "
                                 "redirects on one-click unsubscribes (RFC 8058)", PROXY_ADVICE)
    return fail("one_click", f"POST /unsubscribe/… with a bad token answered {code}, expected 404", PROXY_ADVICE)
