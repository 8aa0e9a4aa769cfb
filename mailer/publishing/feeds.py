"""The blog feed: refuse hostile XML, parse RSS/Atom, sanitise, store new posts (fetching it over HTTP or
from a file: mailer.publishing.fetching)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import html
import io
import logging
from collections.abc import Iterable, Mapping
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import defusedxml
import defusedxml.ElementTree
import feedparser
import nh3
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailer import config
from mailer.models import FeedState, Post
from mailer.publishing import images
from mailer.publishing.fetching import FeedError, Fetched, fetch, redact
from mailer.text import one_line

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("mailer.feed")

# Column sizes in models.Post: longer titles/authors are cut, longer guids/links skip the entry.
TITLE_MAX, AUTHOR_MAX, URL_MAX = 500, 200, 2000
# Column sizes in models.FeedState: a longer validator is not kept (the next fetch is a full one).
ETAG_MAX, LAST_MODIFIED_MAX = 500, 200

# What a newsletter post may contain. Everything else is stripped (its text kept), except the
# CLEAN_CONTENT_TAGS, which go away with their content. (No figure/figcaption: Yahoo Mail does not
# know HTML5's semantic elements; their content stays.)
ALLOWED_TAGS = frozenset(
    "p br h2 h3 h4 ul ol li strong em b i a blockquote img hr code pre".split()
    + "table thead tbody tfoot tr th td caption".split()
)
ALLOWED_ATTRIBUTES: Mapping[str, frozenset[str]] = {
    "a": frozenset({"href", "title"}),
    "img": frozenset({"src", "alt", "width", "height"}),
    "td": frozenset({"colspan", "rowspan"}),
    "th": frozenset({"colspan", "rowspan", "scope"}),
}
CLEAN_CONTENT_TAGS = frozenset({"script", "style", "iframe", "object", "embed", "template"})
URL_SCHEMES = frozenset({"http", "https", "mailto", "tel"})
URL_ATTRIBUTES = frozenset({"href", "src"})
LINK_REL = "noopener noreferrer"

# Tags after which plain text needs a space, so "<p>a</p><p>b</p>" reads "a b", not "ab".
BLOCK_TAGS = frozenset(
    "p br div li ul ol h1 h2 h3 h4 h5 h6 tr td th table blockquote hr pre figure figcaption".split()
    + "section article header footer".split()
)
# feedparser's "bozo" warnings that do not make a feed unreadable.
BENIGN_BOZO = (feedparser.CharacterEncodingOverride, feedparser.NonXMLContentType)
OLDEST = dt.datetime.min.replace(tzinfo=dt.UTC)


@dataclasses.dataclass(frozen=True)
class ParsedPost:
    """One feed entry, with plain-text title/summary/author and sanitised content_html."""

    guid: str
    link: str
    title: str
    summary: str
    content_html: str
    author: str
    published_at: dt.datetime | None


@dataclasses.dataclass(frozen=True)
class IngestResult:
    """new: posts stored to go out; archived: posts stored as already published (first run only)."""

    new: int
    archived: int
    not_modified: bool
    total_in_feed: int



# --- parsing -------------------------------------------------------------------------------------


def parse(body: bytes, base_url: str, website: str = "") -> list[ParsedPost]:
    """Refuse hostile or broken XML, then read RSS or Atom into posts; base_url resolves relative links.
    Images are kept from the feed's site and `website` (clinic.website) only (publishing.images)."""
    shown = redact(base_url)
    root_tag = _check_xml(body, shown)
    # A BytesIO, never the bytes themselves: feedparser treats a str/bytes argument as a possible
    # file name or URL and would open it.
    document = feedparser.parse(
        io.BytesIO(body),
        sanitize_html=False,  # nh3 does it below, with our allowlist
        resolve_relative_uris=False,  # resolved against each post's link below
        # No content-location: feedparser would resolve guids against it too, and a guid like "1502"
        # must not change (and the posts go out again) when the feed moves to another URL.
    )
    problem = document.get("bozo_exception")
    if document.get("bozo") and not isinstance(problem, BENIGN_BOZO):
        raise FeedError(f"feed {shown}: malformed feed: {one_line(problem)}")
    if not document.get("version"):
        raise FeedError(f"feed {shown}: not an RSS or Atom feed (the document is <{root_tag}>)")
    channel_link = _absolute_url(document.feed.get("link", ""), base_url if _is_http(base_url) else "")
    sites = images.own_sites(channel_link, website)
    posts = []
    for number, entry in enumerate(document.entries, start=1):
        post = _to_post(entry, number, channel_link or (base_url if _is_http(base_url) else ""), shown, sites)
        if post is not None:
            posts.append(post)
    return posts


def _check_xml(body: bytes, shown: str) -> str:
    """Refuse non-XML, entity declarations and external references (defusedxml); return the root's tag."""
    if not body.strip():
        raise FeedError(f"feed {shown}: not XML: the body is empty")
    try:
        # A plain <!DOCTYPE> (old RSS 0.91 feeds have one) is allowed; declaring entities is not,
        # which covers XXE and billion laughs alike.
        root = defusedxml.ElementTree.fromstring(
            body, forbid_dtd=False, forbid_entities=True, forbid_external=True
        )
    except defusedxml.EntitiesForbidden:
        raise FeedError(
            f"feed {shown}: refused: the feed declares entities (DTD), "
            "which could be an XXE or entity-expansion attack"
        ) from None
    except defusedxml.DefusedXmlException:
        raise FeedError(f"feed {shown}: refused: the feed references external resources (XXE)") from None
    except (defusedxml.ElementTree.ParseError, LookupError, ValueError) as exc:
        # LookupError: an unknown encoding in the XML declaration.
        raise FeedError(f"feed {shown}: not XML: {one_line(exc)}") from None
    return root.tag.rpartition("}")[2]


def _to_post(entry: Any, number: int, base: str, shown: str, sites: frozenset[str]) -> ParsedPost | None:
    """One feedparser entry as a ParsedPost, or None (logged) when it cannot be stored."""
    link = _absolute_url(entry.get("link", ""), base)
    guid = (entry.get("id") or "").strip() or link
    if not guid:
        log.warning("feed %s: entry %d has neither an id (guid) nor a link; skipped", shown, number)
        return None
    if len(guid) > URL_MAX or len(link) > URL_MAX:
        log.warning("feed %s: entry %d has an id or link over %d characters; skipped", shown, number, URL_MAX)
        return None
    author_detail = entry.get("author_detail") or {}
    return ParsedPost(
        guid=guid,
        link=link,
        title=_plain_field(entry, "title")[:TITLE_MAX],
        summary=_plain_field(entry, "summary"),
        content_html=sanitise_html(_content_html(entry), link or base, sites),
        author=_plain_text(author_detail.get("name") or entry.get("author") or "")[:AUTHOR_MAX],
        published_at=_published_at(entry),
    )


def _plain_field(entry: Any, key: str) -> str:
    """A title or summary as plain text, whether the feed marked it up or not."""
    value = entry.get(key) or ""
    if (entry.get(f"{key}_detail") or {}).get("type") == "text/plain":
        return one_line(value)
    return _plain_text(value)


def _content_html(entry: Any) -> str:
    """content:encoded or Atom <content> if present, else the summary; plain text is escaped."""
    details = [*(entry.get("content") or []), entry.get("summary_detail") or {}]
    for detail in details:
        value = detail.get("value") or ""
        if value.strip():
            return html.escape(value) if detail.get("type") == "text/plain" else value
    return ""


def _published_at(entry: Any) -> dt.datetime | None:
    """The entry's date as an aware UTC datetime (feedparser already converted it to UTC)."""
    parsed = entry.get("published_parsed") or entry.get("updated_parsed")
    if parsed is None:
        return None
    try:
        return dt.datetime(*parsed[:6], tzinfo=dt.UTC)
    except ValueError:
        return None


def _absolute_url(url: str, base: str) -> str:
    """url made absolute against base; "" unless the result is an http(s) URL."""
    if not url.strip():
        return ""  # urljoin(base, "") would be base itself: an entry without a link is not the feed
    try:
        absolute = urljoin(base, url.strip()) if base else url.strip()
        return absolute if _is_http(absolute) and urlsplit(absolute).hostname else ""
    except ValueError:  # e.g. a malformed IPv6 host
        return ""


def _is_http(url: str) -> bool:
    return urlsplit(url).scheme.lower() in ("http", "https")


class _TextExtractor(HTMLParser):
    """Collects the text of an HTML fragment, a space at block boundaries, no script/style content."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in CLEAN_CONTENT_TAGS:
            self._skipping += 1
        elif tag in BLOCK_TAGS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in CLEAN_CONTENT_TAGS:
            self._skipping = max(0, self._skipping - 1)
        elif tag in BLOCK_TAGS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def _plain_text(fragment: str) -> str:
    """An HTML fragment as one line of plain text (unescaped; escape it where it is shown)."""
    extractor = _TextExtractor()
    extractor.feed(fragment)
    extractor.close()
    return one_line("".join(extractor.parts))


# --- sanitising ----------------------------------------------------------------------------------


def sanitise_html(fragment: str, base_url: str, own_sites: Iterable[str]) -> str:
    """Post HTML made safe for email: allowlisted, URLs absolute, tracking and foreign images removed.

    Images are kept only when their host's registrable domain is one of `own_sites` (hosts or site URLs,
    see publishing.images) and they are not pixels (width and height both <= 2): a third-party image in
    an email tells its host who opened the newsletter and when.
    """
    resolved = _clean(fragment, attribute_filter=functools.partial(_resolve_url, base_url))
    filtered = images.tidy_for_email(resolved, images.own_sites(*own_sites))
    # nh3 runs last, so nothing our own passes did can let markup through; it also re-checks the
    # schemes of the URLs made absolute (nh3 checks schemes before calling attribute_filter).
    return _clean(filtered)


def _clean(fragment: str, attribute_filter: Any = None) -> str:
    return nh3.clean(
        fragment,
        tags=set(ALLOWED_TAGS),
        clean_content_tags=set(CLEAN_CONTENT_TAGS),
        attributes={tag: set(names) for tag, names in ALLOWED_ATTRIBUTES.items()},
        attribute_filter=attribute_filter,
        url_schemes=set(URL_SCHEMES),
        link_rel=LINK_REL,
        strip_comments=True,
    )


def _resolve_url(base_url: str, tag: str, attribute: str, value: str) -> str | None:
    """nh3 attribute_filter: make href/src absolute against the post's link; drop what cannot be."""
    if attribute not in URL_ATTRIBUTES:
        return value
    try:
        absolute = urljoin(base_url, value.strip()) if base_url else value.strip()
        scheme = urlsplit(absolute).scheme.lower()
    except ValueError:
        return None
    # A relative URL without a base (or anything else odd) would be a broken link in an email.
    return absolute if scheme in URL_SCHEMES else None




# --- ingesting -----------------------------------------------------------------------------------


def ingest(
    session: Session, feed: config.Feed, now: dt.datetime, *, client: httpx.Client | None = None, website: str = ""
) -> IngestResult:
    """Fetch and parse the feed, then add the posts not stored yet; the caller commits.

    On the very first ingest (no posts at all) only the feed.first_run_posts newest posts are
    stored to go out; the rest are stored archived. On a FeedError nothing has been added.
    """
    if now.tzinfo is None:
        raise ValueError("ingest needs an aware datetime for now")
    # FOR UPDATE (ignored on SQLite, whose transactions take the write lock anyway): a second ingest
    # of the same feed on PostgreSQL waits here instead of racing on the same guids.
    state = session.get(FeedState, feed.url, with_for_update=True)
    fetched = _fetch_for(feed, state, client)
    return store(session, feed, fetched, now, state, website=website)


def ingest_with(
    sessions: sessionmaker[Session], feed: config.Feed, now: dt.datetime, *, client: httpx.Client | None = None,
    website: str = "",
) -> IngestResult:
    """`ingest` for the scheduler and the CLI: the network fetch happens outside any transaction, so a
    slow blog never holds SQLite's write lock (an unsubscribe arriving meanwhile must not wait)."""
    if now.tzinfo is None:
        raise ValueError("ingest needs an aware datetime for now")
    with sessions() as session:
        state = session.get(FeedState, feed.url)
        if state is not None:
            session.expunge(state)
    fetched = _fetch_for(feed, state, client)
    with sessions.begin() as session:
        return store(session, feed, fetched, now, session.get(FeedState, feed.url, with_for_update=True),
                     website=website)


def _fetch_for(feed: config.Feed, state: FeedState | None, client: httpx.Client | None) -> Fetched:
    return fetch(
        feed.url,
        timeout=feed.timeout_seconds,
        max_bytes=feed.max_bytes,
        etag=state.etag if state else None,
        last_modified=state.last_modified if state else None,
        client=client,
    )


def store(session: Session, feed: config.Feed, fetched: Fetched, now: dt.datetime, state: FeedState | None, *,
          website: str = "") -> IngestResult:
    """Parse a fetched body and add the posts not stored yet (nothing is written if parsing fails)."""
    parsed = [] if fetched.body is None else parse(fetched.body, feed.url, website)
    # Nothing is written before this point: a FeedError above leaves the session untouched, and the
    # validators of a body we could not read are never kept (a 304 would hide it from us for good).
    unseen = _unseen(session, parsed)
    first_run = session.scalar(select(Post.id).limit(1)) is None
    send, archive = _split_first_run(unseen, feed.first_run_posts) if first_run else (unseen, [])
    session.add_all(_new_rows(send, archive, now))
    _record_fetch(session, state or FeedState(url=feed.url), fetched, now)
    session.flush()
    result = IngestResult(
        new=len(send), archived=len(archive), not_modified=fetched.body is None, total_in_feed=len(parsed)
    )
    log.info(
        "feed %s: %s; %d in feed, %d new, %d archived%s",
        redact(feed.url),
        "not modified" if result.not_modified else f"fetched ({fetched.status})",
        result.total_in_feed,
        result.new,
        result.archived,
        " (first run)" if first_run and unseen else "",
    )
    return result


def _unseen(session: Session, parsed: list[ParsedPost]) -> list[ParsedPost]:
    """The posts whose guid is not stored yet, each guid once (a feed may repeat an entry)."""
    by_guid: dict[str, ParsedPost] = {}
    for post in parsed:
        by_guid.setdefault(post.guid, post)
    if not by_guid:
        return []
    known = set(session.scalars(select(Post.guid).where(Post.guid.in_(list(by_guid)))))
    return [post for guid, post in by_guid.items() if guid not in known]


def _split_first_run(posts: list[ParsedPost], keep: int) -> tuple[list[ParsedPost], list[ParsedPost]]:
    """(the keep newest posts, the rest); posts without a date count as the oldest."""
    newest_first = sorted(posts, key=lambda post: post.published_at or OLDEST, reverse=True)
    return newest_first[:keep], newest_first[keep:]


def _new_rows(send: list[ParsedPost], archive: list[ParsedPost], now: dt.datetime) -> list[Post]:
    """Post rows, oldest first so that ids follow publication order."""
    rows = [_row(post, archived=False, now=now) for post in send]
    rows += [_row(post, archived=True, now=now) for post in archive]
    return sorted(rows, key=lambda row: row.published_at or OLDEST)


def _row(post: ParsedPost, *, archived: bool, now: dt.datetime) -> Post:
    return Post(
        guid=post.guid,
        link=post.link,
        title=post.title,
        summary=post.summary,
        content_html=post.content_html,
        author=post.author,
        published_at=post.published_at,
        fetched_at=now,
        archived=archived,
    )


def _record_fetch(session: Session, state: FeedState, fetched: Fetched, now: dt.datetime) -> None:
    """Keep the validators for the next conditional GET, and when and how the fetch went."""
    # An oversized header from the server must not make every ingest fail on the column size.
    state.etag = fetched.etag if fetched.etag and len(fetched.etag) <= ETAG_MAX else None
    state.last_modified = (
        fetched.last_modified
        if fetched.last_modified and len(fetched.last_modified) <= LAST_MODIFIED_MAX
        else None
    )
    state.last_fetched_at = now
    state.last_status = "304 not modified" if fetched.body is None else f"{fetched.status} ok"
    session.add(state)
