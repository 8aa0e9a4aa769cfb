"""Fetching the blog feed: a conditional GET over HTTP(S) with a deadline, a size limit and no more than a
few redirects, or a file (with a content hash as its validator); every failure is one FeedError line."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit
from urllib.request import url2pathname

from mailer.text import one_line

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("mailer.feed")

MAX_REDIRECTS = 5
USER_AGENT = "mailer-feed/0.1 (clinic newsletter)"
ACCEPT = "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.1"


class FeedError(Exception):
    """The feed could not be fetched or read; the message is one line naming the feed."""


@dataclasses.dataclass(frozen=True)
class Fetched:
    """A fetch's outcome: body is None when the server answered 304 Not Modified."""

    body: bytes | None
    etag: str | None
    last_modified: str | None
    status: int


def fetch(
    url: str,
    *,
    timeout: float,
    max_bytes: int,
    etag: str | None,
    last_modified: str | None,
    client: httpx.Client | None = None,
) -> Fetched:
    """Fetch an http(s):// URL (conditional GET), a file:// URL or a path; raise FeedError on any failure."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        return _fetch_http(url, timeout, max_bytes, etag, last_modified, client)
    if scheme == "file":
        return _read_file(url, _file_url_path(url), max_bytes, etag)
    if scheme == "" or len(scheme) == 1:  # a plain path, or a Windows drive letter ("C:\\feed.xml")
        return _read_file(url, Path(url), max_bytes, etag)
    raise FeedError(
        f"feed {redact(url)}: unsupported URL scheme {scheme!r}; use http(s)://, file:// or a path"
    )


def _fetch_http(
    url: str,
    timeout: float,
    max_bytes: int,
    etag: str | None,
    last_modified: str | None,
    client: httpx.Client | None,
) -> Fetched:
    """GET with validators, following at most MAX_REDIRECTS redirects, streaming at most max_bytes."""
    import httpx  # only feeds on the web need it (a tenth of a second to import, asyncio included)

    shown = redact(url)
    headers = {"User-Agent": USER_AGENT, "Accept": ACCEPT}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    # httpx's timeout applies per connect/read; the deadline also bounds a server that trickles bytes.
    deadline = time.monotonic() + timeout
    own_client = client is None
    client = client or httpx.Client()
    try:
        request = client.build_request("GET", url, headers=headers, timeout=timeout)
        response = _send(client, request, shown, deadline, timeout)
        try:
            return _read_response(response, shown, max_bytes, deadline, timeout, etag, last_modified)
        finally:
            response.close()  # a refused body is left unread; closing drops the connection
    except httpx.TimeoutException:
        raise FeedError(f"feed {shown}: no answer within {timeout:g} s") from None
    except httpx.ConnectError as exc:
        raise FeedError(f"feed {shown}: cannot connect: {one_line(exc)}") from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise FeedError(f"feed {shown}: request failed: {one_line(exc)}") from None
    finally:
        if own_client:
            client.close()


def _send(
    client: httpx.Client, request: httpx.Request, shown: str, deadline: float, timeout: float
) -> httpx.Response:
    """Send, following redirects by hand so the limit holds whatever client the caller passes."""
    for _ in range(MAX_REDIRECTS + 1):
        _check_deadline(deadline, shown, timeout)
        response = client.send(request, stream=True, follow_redirects=False)
        if response.next_request is None:
            return response
        response.close()
        request = response.next_request
        if request.url.scheme not in ("http", "https"):
            raise FeedError(f"feed {shown}: refused a redirect to a {request.url.scheme}:// URL")
    raise FeedError(f"feed {shown}: more than {MAX_REDIRECTS} redirects")


def _read_response(
    response: httpx.Response,
    shown: str,
    max_bytes: int,
    deadline: float,
    timeout: float,
    etag: str | None,
    last_modified: str | None,
) -> Fetched:
    """Turn a response into Fetched: 304 keeps the validators, errors raise, bodies are size-checked."""
    status = response.status_code
    if status == 304:
        return Fetched(
            body=None,
            etag=response.headers.get("ETag") or etag,
            last_modified=response.headers.get("Last-Modified") or last_modified,
            status=status,
        )
    if status >= 400:
        raise FeedError(f"feed {shown}: HTTP {status} {response.reason_phrase}".rstrip())
    if not 200 <= status < 300:
        raise FeedError(f"feed {shown}: unexpected HTTP {status} {response.reason_phrase}".rstrip())
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(shown, max_bytes)
    chunks: list[bytes] = []
    size = 0
    # iter_bytes yields decompressed bytes, so the limit also holds against a gzip bomb.
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(shown, max_bytes)
        _check_deadline(deadline, shown, timeout)
        chunks.append(chunk)
    return Fetched(
        body=b"".join(chunks),
        etag=response.headers.get("ETag"),
        last_modified=response.headers.get("Last-Modified"),
        status=status,
    )


def _check_deadline(deadline: float, shown: str, timeout: float) -> None:
    """Raise FeedError once the whole fetch has taken longer than the timeout."""
    if time.monotonic() > deadline:
        raise FeedError(f"feed {shown}: no complete answer within {timeout:g} s")


def _file_url_path(url: str) -> Path:
    """The local path of a file:// URL; a file URL naming another host is refused."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise FeedError(f"feed {url}: file:// URLs must name a local file, not host {parts.netloc!r}")
    return Path(url2pathname(parts.path))


def _read_file(url: str, path: Path, max_bytes: int, etag: str | None = None) -> Fetched:
    """Read a local feed file, at most max_bytes of it. Like a conditional GET: a file whose content hash
    is `etag` (the last one stored) is "not modified", and is not parsed again."""
    try:
        with path.open("rb") as handle:
            body = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise FeedError(f"feed {url}: file not found") from None
    except OSError as exc:
        raise FeedError(f"feed {url}: cannot read the file: {exc.strerror or one_line(exc)}") from None
    if len(body) > max_bytes:
        raise _too_large(url, max_bytes)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    if digest == etag:
        return Fetched(body=None, etag=etag, last_modified=None, status=304)
    return Fetched(body=body, etag=digest, last_modified=None, status=200)


def _too_large(shown: str, max_bytes: int) -> FeedError:
    return FeedError(f"feed {shown}: larger than feed.max_bytes ({max_bytes} bytes); refused")


def redact(url: str) -> str:
    """The URL without a password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
