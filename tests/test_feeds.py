"""The blog feed: fetching over real HTTP and from files, hostile XML, parsing, sanitising, ingesting."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailer import config
from mailer.models import FeedState, Post
from mailer.publishing.feeds import IngestResult, ingest, parse, sanitise_html
from mailer.publishing.fetching import FeedError, fetch
from tests.conftest import SAMPLE, utc

Sessions = sessionmaker[Session]
NOW = utc(2024, 1, 15, 12, 0)
LATER = utc(2024, 1, 15, 12, 30)
BASE = "https://therapycentral.example/feed/"
DATA = Path(__file__).parent / "data" / "feeds"
RSS = (SAMPLE / "blog-feed.xml").read_bytes()
RSS_FIRST_POST_ONLY = (SAMPLE / "blog-feed-first-post-only.xml").read_bytes()
GUID_NEWEST = "https://therapycentral.example/?p=1502"
GUID_MIDDLE = "https://therapycentral.example/?p=1467"
GUID_OLDEST = "https://therapycentral.example/?p=1412"
ETAG = '"v1"'
LAST_MODIFIED = "Tue, 07 Nov 2023 16:00:00 GMT"


def make_feed(
    url: str, *, first_run_posts: int = 1, timeout: float = 5.0, max_bytes: int = 5_000_000
) -> config.Feed:
    return config.Feed(
        url=url,
        poll_minutes=30,
        first_run_posts=first_run_posts,
        timeout_seconds=timeout,
        max_bytes=max_bytes,
    )


def rss(*items: str, channel_link: str = "https://therapycentral.example/", doctype: str = "") -> bytes:
    """A small RSS 2.0 document around the given <item> elements."""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n{doctype}'
        '<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/"><channel>'
        f"<title>Therapy Central Blog</title><link>{channel_link}</link><description>d</description>"
        f"{''.join(items)}</channel></rss>"
    ).encode()


def item(
    *,
    guid: str | None = None,
    link: str | None = None,
    title: str = "A post",
    date: str | None = None,
    content: str | None = None,
) -> str:
    parts = [f"<title>{title}</title>"]
    if guid is not None:
        parts.append(f'<guid isPermaLink="false">{guid}</guid>')
    if link is not None:
        parts.append(f"<link>{link}</link>")
    if date is not None:
        parts.append(f"<pubDate>{date}</pubDate>")
    if content is not None:
        parts.append(f"<content:encoded><![CDATA[{content}]]></content:encoded>")
    return f"<item>{''.join(parts)}</item>"


# --- a real HTTP server on loopback ----------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    server: FeedServer

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers))
        route = self.server.routes.get(self.path)
        if route is None:
            self.reply(404, b"not found")
        else:
            route(self)

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class FeedServer(ThreadingHTTPServer):
    """Answers each path with the route a test put in .routes; records every request's path and headers."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes: dict[str, Callable[[Handler], None]] = {}
        self.requests: list[tuple[str, Message]] = []
        self.release = threading.Event()  # set at teardown: slow handlers stop waiting

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_port}{path}"

    def serve(self, path: str, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> str:
        self.routes[path] = lambda handler: handler.reply(status, body, headers)
        return self.url(path)

    def handle_error(self, request: object, client_address: object) -> None:
        # The client hanging up on purpose (size limit, timeout) is expected; anything else is a bug.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture
def server() -> Iterator[FeedServer]:
    feed_server = FeedServer()
    thread = threading.Thread(target=feed_server.serve_forever, daemon=True)
    thread.start()
    try:
        yield feed_server
    finally:
        feed_server.release.set()
        feed_server.shutdown()
        feed_server.server_close()
        thread.join(timeout=5)


def conditional_route(body: bytes) -> Callable[[Handler], None]:
    """200 with validators, or 304 when the request carries the current ETag."""

    def route(handler: Handler) -> None:
        if handler.headers.get("If-None-Match") == ETAG:
            handler.reply(304, headers={"ETag": ETAG})
        else:
            handler.reply(
                200,
                body,
                {"ETag": ETAG, "Last-Modified": LAST_MODIFIED, "Content-Type": "application/rss+xml"},
            )

    return route


# --- fetch: HTTP ---------------------------------------------------------------------------------


def test_conditional_get_sends_validators_and_gets_304(server: FeedServer) -> None:
    server.routes["/feed"] = conditional_route(RSS)
    first = fetch(server.url("/feed"), timeout=5, max_bytes=1_000_000, etag=None, last_modified=None)
    assert (first.status, first.body, first.etag, first.last_modified) == (200, RSS, ETAG, LAST_MODIFIED)
    assert server.requests[0][1].get("If-None-Match") is None

    second = fetch(
        server.url("/feed"),
        timeout=5,
        max_bytes=1_000_000,
        etag=first.etag,
        last_modified=first.last_modified,
    )
    assert (second.status, second.body, second.etag, second.last_modified) == (304, None, ETAG, LAST_MODIFIED)
    headers = server.requests[1][1]
    assert headers.get("If-None-Match") == ETAG
    assert headers.get("If-Modified-Since") == LAST_MODIFIED


def test_redirects_are_followed(server: FeedServer) -> None:
    server.serve("/feed", 200, RSS)
    for hop in range(1, 6):  # five redirects: the most allowed
        target = "/feed" if hop == 5 else f"/r{hop + 1}"
        server.serve(f"/r{hop}", 301 if hop == 1 else 302, headers={"Location": target})
    fetched = fetch(server.url("/r1"), timeout=5, max_bytes=1_000_000, etag=None, last_modified=None)
    assert fetched.body == RSS
    assert [path for path, _ in server.requests] == ["/r1", "/r2", "/r3", "/r4", "/r5", "/feed"]


def test_redirect_loop_stops_after_five(server: FeedServer) -> None:
    url = server.serve("/loop", 302, headers={"Location": "/loop"})
    with pytest.raises(FeedError, match=r"more than 5 redirects$"):
        fetch(url, timeout=5, max_bytes=1_000_000, etag=None, last_modified=None)
    assert len(server.requests) == 6  # the request and five redirects


def test_redirect_to_a_local_file_is_refused(server: FeedServer) -> None:
    url = server.serve("/feed", 302, headers={"Location": (SAMPLE / "blog-feed.xml").as_uri()})
    with pytest.raises(FeedError) as caught:
        fetch(url, timeout=5, max_bytes=1_000_000, etag=None, last_modified=None)
    assert str(caught.value) == f"feed {url}: refused a redirect to a file:// URL"


@pytest.mark.parametrize(("status", "reason"), [(404, "Not Found"), (500, "Internal Server Error")])
def test_http_errors_name_the_status(server: FeedServer, status: int, reason: str) -> None:
    url = server.serve("/feed", status, b"oops")
    with pytest.raises(FeedError) as caught:
        fetch(url, timeout=5, max_bytes=1_000_000, etag=None, last_modified=None)
    assert str(caught.value) == f"feed {url}: HTTP {status} {reason}"


def test_huge_body_is_cut_off_at_max_bytes(server: FeedServer) -> None:
    def endless(handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/rss+xml")
        handler.end_headers()  # no Content-Length: the body runs until the connection closes
        chunk = b"<!-- padding -->" * 4096
        for _ in range(1000):  # 64 MB, unless the client hangs up first
            if server.release.is_set():
                return
            handler.wfile.write(chunk)

    server.routes["/feed"] = endless
    started = time.monotonic()
    with pytest.raises(FeedError) as caught:
        fetch(server.url("/feed"), timeout=10, max_bytes=200_000, etag=None, last_modified=None)
    assert (
        str(caught.value) == f"feed {server.url('/feed')}: larger than feed.max_bytes (200000 bytes); refused"
    )
    assert time.monotonic() - started < 5


def test_declared_content_length_over_the_limit_is_refused_at_once(server: FeedServer) -> None:
    def liar(handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(10**9))
        handler.end_headers()

    server.routes["/feed"] = liar
    with pytest.raises(FeedError, match=r"larger than feed.max_bytes \(2048 bytes\); refused$"):
        fetch(server.url("/feed"), timeout=5, max_bytes=2048, etag=None, last_modified=None)


def test_slow_server_times_out(server: FeedServer) -> None:
    def slow(handler: Handler) -> None:
        server.release.wait(10)  # far past the client's timeout; released at teardown

    server.routes["/feed"] = slow
    started = time.monotonic()
    with pytest.raises(FeedError) as caught:
        fetch(server.url("/feed"), timeout=0.3, max_bytes=1_000_000, etag=None, last_modified=None)
    assert str(caught.value) == f"feed {server.url('/feed')}: no answer within 0.3 s"
    assert time.monotonic() - started < 3


def test_trickling_server_hits_the_overall_deadline(server: FeedServer) -> None:
    def trickle(handler: Handler) -> None:
        handler.send_response(200)
        handler.end_headers()
        for _ in range(60):  # a byte every 50 ms never trips a read timeout; 3 s in all
            if server.release.wait(0.05):
                return
            handler.wfile.write(b" ")
            handler.wfile.flush()

    server.routes["/feed"] = trickle
    started = time.monotonic()
    with pytest.raises(FeedError, match=r"no complete answer within 0.5 s$"):
        fetch(server.url("/feed"), timeout=0.5, max_bytes=1_000_000, etag=None, last_modified=None)
    assert time.monotonic() - started < 2


def test_connection_refused_is_a_feed_error() -> None:
    with pytest.raises(FeedError, match=r"^feed http://127\.0\.0\.1:9/feed: cannot connect: "):
        fetch("http://127.0.0.1:9/feed", timeout=2, max_bytes=1_000_000, etag=None, last_modified=None)


def test_password_in_the_url_is_not_shown(server: FeedServer) -> None:
    url = server.serve("/feed", 500).replace("http://", "http://clinic:s3cret@")
    with pytest.raises(FeedError) as caught:
        fetch(url, timeout=5, max_bytes=1_000_000, etag=None, last_modified=None)
    assert "s3cret" not in str(caught.value)
    assert str(caught.value).startswith("feed http://clinic:***@127.0.0.1:")


# --- fetch: files and schemes -------------------------------------------------------------------------


def test_file_url_and_plain_path_are_read() -> None:
    path = SAMPLE / "blog-feed.xml"
    digest = "sha256:" + hashlib.sha256(RSS).hexdigest()
    for url in (path.as_uri(), str(path)):
        fetched = fetch(url, timeout=5, max_bytes=1_000_000, etag=None, last_modified=None)
        assert (fetched.status, fetched.body, fetched.etag, fetched.last_modified) == (200, RSS, digest, None)


def test_an_unchanged_feed_file_is_not_modified_like_a_conditional_get(tmp_path: Path) -> None:
    path = tmp_path / "feed.xml"
    path.write_bytes(RSS)
    first = fetch(str(path), timeout=5, max_bytes=1_000_000, etag=None, last_modified=None)
    again = fetch(str(path), timeout=5, max_bytes=1_000_000, etag=first.etag, last_modified=None)
    assert (again.status, again.body, again.etag) == (304, None, first.etag)
    path.write_bytes(RSS.replace(b"<channel>", b"<channel><!-- edited -->", 1))
    changed = fetch(str(path), timeout=5, max_bytes=1_000_000, etag=first.etag, last_modified=None)
    assert changed.status == 200 and changed.body is not None and changed.etag != first.etag


def test_missing_file_is_a_feed_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.xml"
    for url in (missing.as_uri(), str(missing)):
        with pytest.raises(FeedError) as caught:
            fetch(url, timeout=5, max_bytes=1_000_000, etag=None, last_modified=None)
        assert str(caught.value) == f"feed {url}: file not found"


def test_file_over_max_bytes_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.xml"
    path.write_bytes(b" " * 5000)
    assert fetch(str(path), timeout=5, max_bytes=5000, etag=None, last_modified=None).body == b" " * 5000
    with pytest.raises(FeedError, match=r"larger than feed.max_bytes \(4999 bytes\); refused$"):
        fetch(str(path), timeout=5, max_bytes=4999, etag=None, last_modified=None)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "ftp://therapycentral.example/feed",
            "unsupported URL scheme 'ftp'; use http(s)://, file:// or a path",
        ),
        ("file://otherhost/feed.xml", "file:// URLs must name a local file, not host 'otherhost'"),
    ],
)
def test_other_schemes_are_refused(url: str, message: str) -> None:
    with pytest.raises(FeedError) as caught:
        fetch(url, timeout=5, max_bytes=1_000_000, etag=None, last_modified=None)
    assert str(caught.value) == f"feed {url}: {message}"


# --- parse -----------------------------------------------------------------------------------------


def test_parse_rss_sample() -> None:
    posts = parse(RSS, BASE)
    assert [post.guid for post in posts] == [GUID_NEWEST, GUID_MIDDLE, GUID_OLDEST]
    newest, middle, oldest = posts
    assert newest.link == "https://therapycentral.example/five-grounding-techniques/"
    assert newest.title == "Five Grounding Techniques for Anxious Moments"
    assert newest.author == "Therapy Central"
    assert newest.published_at == utc(2023, 11, 7, 16, 0)
    assert newest.summary.startswith("Simple, research-backed exercises you can use anywhere")
    assert (
        "<li><strong>Paced breathing:</strong> breathe in for four counts and out for six.</li>"
        in newest.content_html
    )
    assert "say what you feel out loud, e.g. “this is anxiety”." in newest.content_html  # entities decoded
    # The sample's relative link, made absolute against the post's link.
    assert (
        '<a href="https://therapycentral.example/contact/" rel="noopener noreferrer">Contact us</a>'
        in middle.content_html
    )
    assert (
        '<img src="https://therapycentral.example/wp-content/uploads/2023/10/room.jpg"' in middle.content_html
    )
    assert oldest.title == "Ketamines for Anxiety and Depression: How do they Work?"
    assert oldest.published_at == utc(2023, 8, 14, 15, 0)
    assert "<p>Ketamine's transformation from an anesthetic agent" in oldest.content_html
    assert "<h2>5. Holistic Approach to Healing</h2>" in oldest.content_html


def test_parse_atom() -> None:
    first, second = parse((DATA / "atom.xml").read_bytes(), "https://therapycentral.example/feed/atom/")
    assert first.guid == "tag:therapycentral.example,2023:post-1600"
    assert first.link == "https://therapycentral.example/sleep-and-mood/"
    assert first.title == "Sleep & Mood: What Helps"  # type="html" title as plain text
    assert first.summary == "Sleep and mood are linked <both ways>."  # type="text" kept as it is
    assert first.author == "Dr. Example Clinician"
    assert first.published_at == utc(2023, 11, 20, 15, 30)  # -06:00 converted to UTC
    assert first.content_html == (
        '<p>Good sleep steadies mood. See our <a href="https://therapycentral.example/sleep-tips/" '
        'rel="noopener noreferrer">sleep tips</a>.</p>\n'
        # No height (it keeps its proportions when shrunk), and no wider than the email's text column.
        '<p><img src="https://therapycentral.example/sleep-and-mood/images/bed.jpg" alt="A bed" width="536"></p>'
    )
    assert second.link == "https://therapycentral.example/xhtml-post/"  # relative, against the channel link
    assert second.published_at == utc(2023, 11, 22, 8, 0)  # <updated> when there is no <published>
    assert second.content_html == "<p>XHTML <strong>content</strong>.</p>"


def test_guid_falls_back_to_link_and_entries_without_either_are_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = rss(
        item(link="https://therapycentral.example/no-guid/", title="No guid"),
        item(title="Nothing to key on"),
        item(guid="1502", link="/relative/", title="Relative link"),
    )
    with caplog.at_level(logging.WARNING, logger="mailer.feed"):
        posts = parse(body, BASE)
    assert [(post.guid, post.link) for post in posts] == [
        ("https://therapycentral.example/no-guid/", "https://therapycentral.example/no-guid/"),
        ("1502", "https://therapycentral.example/relative/"),  # a guid is kept as it is, never resolved
    ]
    assert [record.getMessage() for record in caplog.records] == [
        f"feed {BASE}: entry 2 has neither an id (guid) nor a link; skipped"
    ]


def test_feed_without_entries_is_fine() -> None:
    assert parse(rss(), BASE) == []


def test_xxe_is_refused_and_the_file_never_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("XXE-CANARY-7f3a")
    body = rss(
        item(guid="xxe", title="&xxe;"),
        doctype=f'<!DOCTYPE rss [<!ENTITY xxe SYSTEM "{secret.as_uri()}">]>\n',
    )
    with caplog.at_level(logging.DEBUG), pytest.raises(FeedError) as caught:
        parse(body, BASE)
    assert str(caught.value) == (
        f"feed {BASE}: refused: the feed declares entities (DTD), which could be an XXE or entity-expansion attack"
    )
    assert "XXE-CANARY" not in caplog.text


def test_external_entity_is_never_fetched(server: FeedServer) -> None:
    dtd = server.serve("/evil.dtd", 200, b'<!ENTITY leak "boom">')
    with pytest.raises(FeedError, match="declares entities"):
        parse(rss(doctype=f'<!DOCTYPE rss [<!ENTITY % remote SYSTEM "{dtd}"> %remote;]>\n'), BASE)
    # A bare external DOCTYPE is allowed (old RSS 0.91 feeds have one) but never loaded.
    assert parse(rss(doctype=f'<!DOCTYPE rss SYSTEM "{dtd}">\n'), BASE) == []
    assert server.requests == []


def test_billion_laughs_is_refused() -> None:
    entities = ['<!ENTITY lol "lol">'] + [
        f'<!ENTITY lol{n} "{f"&lol{n - 1};" * 10 if n > 1 else "&lol;" * 10}">' for n in range(1, 10)
    ]
    body = rss(item(guid="b", title="&lol9;"), doctype=f"<!DOCTYPE rss [{''.join(entities)}]>\n")
    started = time.monotonic()
    with pytest.raises(FeedError, match=r"refused: the feed declares entities \(DTD\)"):
        parse(body, BASE)
    assert time.monotonic() - started < 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not XML: the body is empty"),
        (b"  \r\n\t ", "not XML: the body is empty"),
        (b"\x00\xff\xfe\x13garbage", "not XML: not well-formed (invalid token): line 1, "),
        (b"Service temporarily unavailable", "not XML: syntax error: line 1, "),
        (
            b"<!DOCTYPE html>\n<html><head><meta charset='utf-8'>\n<title>Blog</title></head>\n"
            b"<body><p>Welcome<br></body></html>",
            "not XML: mismatched tag: line 3, ",
        ),
        (
            b'<html xmlns="http://www.w3.org/1999/xhtml"><head><title>Blog</title></head><body/></html>',
            "not an RSS or Atom feed (the document is <html>)",
        ),
        (b'<?xml version="1.0" encoding="x-made-up"?><rss/>', "not XML: unknown encoding: x-made-up"),
    ],
    ids=["empty", "whitespace", "binary", "text", "html", "xhtml", "bad-encoding"],
)
def test_not_a_feed_is_a_one_line_error(body: bytes, message: str) -> None:
    with pytest.raises(FeedError) as caught:
        parse(body, BASE)
    # Where expat stops (line, column) is expat's business; what it found and that it is one line is ours.
    assert str(caught.value).startswith(f"feed {BASE}: {message}")
    assert "\n" not in str(caught.value)


# --- sanitising ------------------------------------------------------------------------------------

POST_LINK = "https://therapycentral.example/blog/post/"
OWN_HOSTS = {"therapycentral.example"}


SANITISE_CASES = [
    pytest.param("<p>Hi <script>alert(1)</script>there</p>", "<p>Hi there</p>", id="script"),
    pytest.param('<iframe src="https://evil.example/"></iframe><p>x</p>', "<p>x</p>", id="iframe"),
    pytest.param('<p onclick="steal()" style="color:red" class="x">x</p>', "<p>x</p>", id="event-handler"),
    # A link whose unsafe href is removed is unwrapped: its text must not look like a link.
    pytest.param('<a href="javascript:alert(1)">x</a>', "x", id="javascript-href"),
    pytest.param('<a href="java&#x09;script:alert(1)">x</a>', "x", id="javascript-href-with-tab"),
    pytest.param(
        '<p>Call <a href="javascript:x()"><strong>now</strong></a> or <a href="/book/">book</a>.</p>',
        '<p>Call <strong>now</strong> or <a href="https://therapycentral.example/book/" rel="noopener noreferrer">'
        "book</a>.</p>",
        id="unsafe-link-unwrapped-beside-a-safe-one",
    ),
    pytest.param('<img src="data:image/png;base64,AAAA" alt="d">', "", id="data-img"),
    pytest.param('<img src="https://therapycentral.example/pixel.gif" width="1" height="1">', "", id="pixel"),
    pytest.param(
        '<a href="/x"><img src="/stats.gif" width="0" height="2px" alt=""></a>',
        '<a href="https://therapycentral.example/x" rel="noopener noreferrer"></a>',
        id="pixel-in-link",
    ),
    pytest.param('<img src="https://stats.tracker.example/open.gif?u=1" alt="">', "", id="third-party-img"),
    pytest.param(
        '<img src="//tracker.example/o.gif" width="600" height="400">',
        "",
        id="protocol-relative-third-party-img",
    ),
    pytest.param(
        '<a href="/contact/" title="Contact">Contact</a>',
        '<a href="https://therapycentral.example/contact/" title="Contact" rel="noopener noreferrer">Contact</a>',
        id="relative-href",
    ),
    pytest.param(
        '<img src="img/room.jpg" alt="Room" width="600" height="400">',
        '<img src="https://therapycentral.example/blog/post/img/room.jpg" alt="Room" width="536">',
        id="relative-src",
    ),
    pytest.param(
        '<img src="https://cdn.therapycentral.example/a.jpg" alt="CDN">',
        '<img src="https://cdn.therapycentral.example/a.jpg" alt="CDN">',
        id="own-subdomain-img",
    ),
    pytest.param(
        '<img src="/rule.gif" width="1" height="300" alt="">',
        '<img src="https://therapycentral.example/rule.gif" width="1" alt="">',
        id="thin-rule-kept",
    ),
    pytest.param(
        '<img src="/room.jpg" width="300">',
        '<img src="https://therapycentral.example/room.jpg" width="300" alt="Image from the article">',
        id="missing-alt-filled-in",
    ),
    pytest.param(
        '<figure><img src="/room.jpg" alt="Room"><figcaption>Our room</figcaption></figure>',
        '<img src="https://therapycentral.example/room.jpg" alt="Room">Our room',
        id="figure-unwrapped",
    ),
    pytest.param(
        '<a href="https://other.example/" target="_blank" rel="opener">x</a>',
        '<a href="https://other.example/" rel="noopener noreferrer">x</a>',
        id="rel-replaced",
    ),
    pytest.param(
        '<a href="mailto:hello@therapycentral.example">mail</a> <a href="tel:+18175836118">call</a>',
        '<a href="mailto:hello@therapycentral.example" rel="noopener noreferrer">mail</a> '
        '<a href="tel:+18175836118" rel="noopener noreferrer">call</a>',
        id="mailto-tel",
    ),
    pytest.param(
        "<style>p{}</style><form action='/x'><input name='q'><p>Text</p></form>",
        "<p>Text</p>",
        id="style-form",
    ),
    pytest.param(
        "<h1>Big</h1><h2>Sub</h2><div><span>plain</span></div>", "Big<h2>Sub</h2>plain", id="unlisted-tags"
    ),
    pytest.param(
        "<p>Fish &amp; chips &lt;3 <em>today</em> — café</p>",
        "<p>Fish &amp; chips &lt;3 <em>today</em> — café</p>",
        id="text-and-entities",
    ),
    pytest.param(
        "<table><tr><td colspan='2' onclick='x'>a</td></tr></table>",
        '<table><tbody><tr><td colspan="2">a</td></tr></tbody></table>',
        id="table",
    ),
]


@pytest.mark.parametrize(("dirty", "clean"), SANITISE_CASES)
def test_sanitise(dirty: str, clean: str) -> None:
    assert sanitise_html(dirty, POST_LINK, OWN_HOSTS) == clean


def test_relative_urls_without_an_http_base_are_dropped() -> None:
    assert (
        sanitise_html('<a href="/x">x</a><img src="/a.jpg">', "", set())
        == "x"
    )


def test_parse_sanitises_content_against_the_post_link() -> None:
    content = (
        '<p onclick="x()">Read <a href="../other/">this</a>.</p><script>alert(1)</script>'
        '<img src="pics/a.jpg" alt="A" width="300" height="200">'
        '<img src="https://pixel.wp.example/g.gif?blog=1" width="1" height="1">'
    )
    body = rss(item(guid="g", link="https://therapycentral.example/2023/post/", content=content))
    (post,) = parse(body, BASE)
    assert post.content_html == (
        '<p>Read <a href="https://therapycentral.example/2023/other/" rel="noopener noreferrer">this</a>.</p>'
        '<img src="https://therapycentral.example/2023/post/pics/a.jpg" alt="A" width="300">'
    )


# --- ingest (SQLite and PostgreSQL) --------------------------------------------------------------------


def ingest_once(sessions: Sessions, feed: config.Feed, now: dt.datetime = NOW, **kwargs: Any) -> IngestResult:
    with sessions.begin() as session:
        return ingest(session, feed, now, **kwargs)


def stored(sessions: Sessions) -> dict[str, bool]:
    """guid -> archived, for every stored post."""
    with sessions() as session:
        return {post.guid: post.archived for post in session.scalars(select(Post))}


def test_first_ingest_sends_only_the_newest(sessions: Sessions, caplog: pytest.LogCaptureFixture) -> None:
    url = str(SAMPLE / "blog-feed.xml")
    with caplog.at_level(logging.INFO, logger="mailer.feed"):
        result = ingest_once(sessions, make_feed(url, first_run_posts=1))
    assert result == IngestResult(new=1, archived=2, not_modified=False, total_in_feed=3)
    assert stored(sessions) == {GUID_NEWEST: False, GUID_MIDDLE: True, GUID_OLDEST: True}
    with sessions() as session:
        newest = session.scalars(select(Post).where(Post.guid == GUID_NEWEST)).one()
        assert (newest.fetched_at, newest.published_at, newest.campaign_id) == (
            NOW,
            utc(2023, 11, 7, 16),
            None,
        )
        assert newest.title == "Five Grounding Techniques for Anxious Moments"
        # Oldest first, so ids follow publication order.
        assert list(session.scalars(select(Post.guid).order_by(Post.id))) == [
            GUID_OLDEST,
            GUID_MIDDLE,
            GUID_NEWEST,
        ]
        state = session.get(FeedState, url)
        assert (state.etag, state.last_modified, state.last_fetched_at, state.last_status) == (
            "sha256:" + hashlib.sha256(RSS).hexdigest(),  # the file's content: the next ingest skips it unchanged
            None,
            NOW,
            "200 ok",
        )
    assert [record.getMessage() for record in caplog.records] == [
        f"feed {url}: fetched (200); 3 in feed, 1 new, 2 archived (first run)"
    ]


@pytest.mark.parametrize(
    ("first_run_posts", "sent"),
    [(0, set()), (2, {GUID_NEWEST, GUID_MIDDLE}), (10, {GUID_NEWEST, GUID_MIDDLE, GUID_OLDEST})],
)
def test_first_run_posts_setting(sessions: Sessions, first_run_posts: int, sent: set[str]) -> None:
    result = ingest_once(sessions, make_feed(str(SAMPLE / "blog-feed.xml"), first_run_posts=first_run_posts))
    assert (result.new, result.archived) == (len(sent), 3 - len(sent))
    assert {guid for guid, archived in stored(sessions).items() if not archived} == sent


def test_later_ingests_add_only_new_posts(sessions: Sessions, tmp_path: Path) -> None:
    path = tmp_path / "feed.xml"
    feed = make_feed(str(path), first_run_posts=1)
    path.write_bytes(RSS_FIRST_POST_ONLY)
    assert ingest_once(sessions, feed) == IngestResult(new=1, archived=0, not_modified=False, total_in_feed=1)

    path.write_bytes(RSS)  # two posts published since
    assert ingest_once(sessions, feed, LATER) == IngestResult(
        new=2, archived=0, not_modified=False, total_in_feed=3
    )
    assert stored(sessions) == {GUID_NEWEST: False, GUID_MIDDLE: False, GUID_OLDEST: False}

    # The same file again: not modified (its content hash is the stored validator), nothing parsed.
    assert ingest_once(sessions, feed, LATER) == IngestResult(
        new=0, archived=0, not_modified=True, total_in_feed=0
    )
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Post)) == 3
        fetched = {guid: at for guid, at in session.execute(select(Post.guid, Post.fetched_at))}
    assert fetched == {GUID_OLDEST: NOW, GUID_MIDDLE: LATER, GUID_NEWEST: LATER}


def test_undated_posts_count_as_oldest_and_repeated_guids_are_stored_once(
    sessions: Sessions, tmp_path: Path
) -> None:
    path = tmp_path / "feed.xml"
    path.write_bytes(
        rss(
            item(guid="undated", link="https://therapycentral.example/u/", title="Undated"),
            item(
                guid="dated",
                link="https://therapycentral.example/d/",
                title="Dated",
                date="Mon, 01 Jan 2024 09:00:00 +0000",
            ),
            item(guid="dated", link="https://therapycentral.example/d/", title="Dated again"),
        )
    )
    result = ingest_once(sessions, make_feed(str(path), first_run_posts=1))
    assert result == IngestResult(new=1, archived=1, not_modified=False, total_in_feed=3)
    assert stored(sessions) == {"dated": False, "undated": True}
    with sessions() as session:
        assert session.scalars(select(Post.title).where(Post.guid == "dated")).one() == "Dated"


@pytest.mark.parametrize(
    "broken",
    [
        b"<html><body>Maintenance<br></body></html>",
        b"",
        rss(item(guid="new-1", title="&e;"), doctype='<!DOCTYPE rss [<!ENTITY e "expanded">]>\n'),
        RSS[: len(RSS) // 2],  # cut off half way
    ],
    ids=["html", "empty", "entities", "truncated"],
)
def test_failed_ingest_stores_nothing_and_keeps_earlier_posts(
    sessions: Sessions, tmp_path: Path, broken: bytes
) -> None:
    path = tmp_path / "feed.xml"
    feed = make_feed(str(path))
    path.write_bytes(RSS_FIRST_POST_ONLY)
    ingest_once(sessions, feed)

    path.write_bytes(broken)
    with sessions() as session:
        with pytest.raises(FeedError, match=rf"^feed {path}: "):
            ingest(session, feed, LATER)
        assert not session.new and not session.dirty  # raised before writing anything
        session.rollback()
    assert stored(sessions) == {GUID_OLDEST: False}
    with sessions() as session:
        assert session.get(FeedState, str(path)).last_fetched_at == NOW


def test_xxe_feed_stores_nothing_and_leaks_nothing(
    sessions: Sessions, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("XXE-CANARY-91bc")
    path = tmp_path / "feed.xml"
    path.write_bytes(
        rss(
            item(guid="&xxe;", title="&xxe;"),
            doctype=f'<!DOCTYPE rss [<!ENTITY xxe SYSTEM "{secret.as_uri()}">]>\n',
        )
    )
    with caplog.at_level(logging.DEBUG), pytest.raises(FeedError, match="could be an XXE"):
        ingest_once(sessions, make_feed(str(path)))
    assert stored(sessions) == {}
    assert "XXE-CANARY" not in caplog.text


def test_ingest_over_http_uses_conditional_get(sessions: Sessions, server: FeedServer) -> None:
    server.routes["/feed"] = conditional_route(RSS)
    feed = make_feed(server.url("/feed"), first_run_posts=1)
    assert ingest_once(sessions, feed) == IngestResult(new=1, archived=2, not_modified=False, total_in_feed=3)
    with sessions() as session:
        state = session.get(FeedState, feed.url)
        assert (state.etag, state.last_modified, state.last_status) == (ETAG, LAST_MODIFIED, "200 ok")

    assert ingest_once(sessions, feed, LATER) == IngestResult(
        new=0, archived=0, not_modified=True, total_in_feed=0
    )
    headers = server.requests[1][1]
    assert (headers.get("If-None-Match"), headers.get("If-Modified-Since")) == (ETAG, LAST_MODIFIED)
    with sessions() as session:
        state = session.get(FeedState, feed.url)
        assert (state.etag, state.last_fetched_at, state.last_status) == (ETAG, LATER, "304 not modified")
    assert len(stored(sessions)) == 3


def test_validators_of_an_unreadable_body_are_not_kept(sessions: Sessions, server: FeedServer) -> None:
    url = server.serve("/feed", 200, b"<html>oops</p>", {"ETag": '"broken"'})
    feed = make_feed(url)
    with pytest.raises(FeedError, match="not XML"):
        ingest_once(sessions, feed)

    server.serve("/feed", 200, RSS, {"ETag": ETAG})
    assert ingest_once(sessions, feed, LATER).new == 1
    assert server.requests[1][1].get("If-None-Match") is None  # else a 304 would hide the feed for good


def test_oversized_validators_are_not_kept(sessions: Sessions, server: FeedServer) -> None:
    url = server.serve("/feed", 200, RSS, {"ETag": '"' + "x" * 600 + '"', "Last-Modified": LAST_MODIFIED})
    assert ingest_once(sessions, make_feed(url)).new == 1  # PostgreSQL would refuse a 602-character etag
    with sessions() as session:
        state = session.get(FeedState, url)
        assert (state.etag, state.last_modified) == (None, LAST_MODIFIED)


def test_ingest_with_fetches_outside_the_write_transaction(sessions, tmp_path) -> None:  # noqa: ANN001
    """While a slow blog is being fetched, the database stays writable (an unsubscribe must not wait)."""
    from mailer import config as config_module
    from mailer.models import Contact
    from mailer.publishing import feeds as feeds_module

    body = RSS
    fetching = threading.Event()
    release = threading.Event()

    class Slow(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            fetching.set()
            release.wait(5)
            self.send_response(200)
            self.send_header("Content-Type", "application/rss+xml")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    feed = config_module.Feed(url=f"http://127.0.0.1:{server.server_address[1]}/feed", poll_minutes=30,
                              first_run_posts=1, timeout_seconds=10, max_bytes=1_000_000)
    now = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)
    results = []
    worker = threading.Thread(target=lambda: results.append(feeds_module.ingest_with(sessions, feed, now)))
    worker.start()
    try:
        assert fetching.wait(5)
        started = time.monotonic()
        with sessions.begin() as session:  # would wait for the fetch if it held SQLite's write lock
            session.add(Contact(email="w@example.com", name="", created_at=now, link_key="k",
                                followups_consent=False, soft_bounces=0))
        assert time.monotonic() - started < 2
    finally:
        release.set()
        worker.join(10)
        server.shutdown()
        server.server_close()
    assert results and results[0].new == 1
