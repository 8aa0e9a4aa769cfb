"""Which images an email may carry: the clinic's own (by registrable domain), and never a tracking pixel.

An image from another host tells that host who opened the email and when. "Own" is decided from the
feed's site link and clinic.website only (never from a post's own link, which a feed may point anywhere),
and hosts are compared by registrable domain through the Public Suffix List: cdn.clinic.example belongs
to clinic.example, while a site at www.com does not make every *.com host its own.
"""

from __future__ import annotations

import functools
import html
import ipaddress
from collections.abc import Iterable, Mapping
from html.parser import HTMLParser
from urllib.parse import urlsplit

# The text column of the email layout (600px less its padding): Outlook for Windows ignores max-width,
# so a wider image would push the column open there.
MAX_IMAGE_WIDTH = 536
# Alt text for an image that has none: screen readers and clients that block images show it.
IMAGE_ALT = "Image from the article"


@functools.lru_cache(maxsize=1)
def _suffixes():  # noqa: ANN202
    from publicsuffixlist import PublicSuffixList  # the list it ships; never fetched at run time

    return PublicSuffixList()


def site_of(host: str) -> str:
    """The registrable domain of a host ("cdn.clinic.example" -> "clinic.example"); an IP address or a
    host with no registrable part (localhost, a bare suffix) stands for itself alone."""
    host = host.lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    return _suffixes().privatesuffix(host) or host


def own_sites(*urls_or_hosts: str) -> frozenset[str]:
    """The registrable domains of these site URLs or host names (empty ones are skipped)."""
    sites = set()
    for value in urls_or_hosts:
        host = urlsplit(value).hostname if "//" in value else value
        if host:
            sites.add(site_of(host))
    return frozenset(sites)


def is_wanted(attrs: Mapping[str, str | None], sites: frozenset[str]) -> bool:
    """An image with an http(s) src on one of the own sites that is not a pixel (width and height <= 2)."""
    src = attrs.get("src") or ""
    parts = urlsplit(src)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return False
    if site_of(parts.hostname) not in sites:
        return False
    width, height = _pixels(attrs.get("width")), _pixels(attrs.get("height"))
    return not (width is not None and height is not None and width <= 2 and height <= 2)


def _pixels(value: str | None) -> int | None:
    """The number at the start of a width/height attribute ("1", "1px"), or None."""
    digits = ""
    for char in (value or "").strip():
        if not char.isdigit():
            break
        digits += char
    return int(digits) if digits else None


class _EmailTidy(HTMLParser):
    """Re-emits sanitised (well-formed) HTML verbatim, except what would misbehave in an email: images
    that are not wanted are left out; a kept image gets alt text, loses its height (so it keeps its
    proportions when a narrow screen shrinks it) and is at most MAX_IMAGE_WIDTH wide; a link whose href was
    removed (an unsafe scheme) is unwrapped, so its text no longer looks like a link that goes nowhere."""

    def __init__(self, sites: frozenset[str]) -> None:
        super().__init__(convert_charrefs=False)  # keep entities as they are: output == input elsewhere
        self.sites = sites
        self.parts: list[str] = []
        self._links: list[bool] = []  # per open <a>: was its tag kept?

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            if is_wanted(dict(attrs), self.sites):
                self.parts.append(_email_image(attrs))
            return
        if tag == "a":
            self._links.append(any(name == "href" and value for name, value in attrs))
            if not self._links[-1]:
                return
        self.parts.append(self.get_starttag_text() or "")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":  # <a/> has no text to keep
            return
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._links and not self._links.pop():
            return
        self.parts.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)

    def handle_entityref(self, name: str) -> None:
        self.parts.append(f"&{name};")

    def handle_charref(self, name: str) -> None:
        self.parts.append(f"&#{name};")


def _email_image(attrs: list[tuple[str, str | None]]) -> str:
    """An <img> tag rebuilt for email (see _EmailTidy); nh3 checks it again afterwards."""
    kept = {name: value or "" for name, value in attrs if name != "height"}
    kept.setdefault("alt", IMAGE_ALT)
    if not kept["alt"].strip() and "title" in kept:
        kept["alt"] = kept["title"]
    width = _pixels(kept.get("width"))
    if width is not None and width > MAX_IMAGE_WIDTH:
        kept["width"] = str(MAX_IMAGE_WIDTH)
    return "<img " + " ".join(f'{name}="{html.escape(value, quote=True)}"' for name, value in kept.items()) + ">"


def tidy_for_email(fragment: str, sites: Iterable[str]) -> str:
    """The fragment (already sanitised by nh3) made fit for an email: only wanted images (own sites, no
    pixels), each with alt text and a width the column holds; links without a href unwrapped."""
    tidy = _EmailTidy(frozenset(sites))
    tidy.feed(fragment)
    tidy.close()
    return "".join(tidy.parts)
