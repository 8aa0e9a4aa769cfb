"""Emails that render in every inbox: the newsletter, every follow-up and the confirmation, as sent, checked
for Outlook's wrappers and for features mailbox providers do not support, then shown in Chromium at
375 and 800 pixels wide, light and dark (screenshots in test-artifacts/emails/)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from types import SimpleNamespace

import lxml.html
import pytest

from mailer import config
from mailer.publishing import feeds, render
from mailer.sequences import steps
from tests.conftest import ROOT, SAMPLE
from tests.email_features import NOT_IN_HTML, UNSUPPORTED, inventory, unsupported_in
from tests.test_browser_preferences import CHROMIUM, CHROMIUM_ARGS, require_chromium

SCREENSHOTS = ROOT / "test-artifacts" / "emails"
BASE_URL = "https://mail.therapycentral.example"

# Used on purpose, and why each is harmless where it is not supported:
ALLOWED = {
    # Dark mode where supported (Apple Mail, Outlook): the meta tags and :root's color-scheme let those
    # clients use the prefers-color-scheme block; clients without them ignore all three and show the
    # light design, which is complete on its own (its colours are inlined).
    "html-meta-color-scheme": "dark mode for the clients that support it",
    "css-color-scheme": "dark mode for the clients that support it",
    "css-at-media-prefers-color-scheme": "dark mode for the clients that support it",
    # Every HTML document has these. Yahoo's apps replace <body> with a div and ignore the doctype: the
    # canvas table carries the background and the column its width, so nothing depends on either.
    "html-body": "structural: the canvas table carries the background",
    "html-doctype": "structural: the layout is tables, the same in quirks and standards mode",
}
ENHANCEMENTS = {"html-meta-color-scheme", "css-color-scheme", "css-at-media-prefers-color-scheme"}


@pytest.fixture(scope="module")
def settings() -> config.Settings:
    return config.load(ROOT / "config.toml", {"MAILER_SECRET_KEY": "k" * 40, "MAILER_BASE_URL": BASE_URL})


def _newsletter(renderer: render.Renderer) -> str:
    """The digest of the sample blog's posts, the first in full (with its image), as sent."""
    posts = feeds.parse((SAMPLE / "blog-feed.xml").read_bytes(), "https://therapycentral.example/")
    rows = [SimpleNamespace(title=p.title, link=p.link, summary=p.summary, content_html=p.content_html,
                            published_at=p.published_at or dt.datetime(2026, 11, 23, tzinfo=dt.UTC)) for p in posts]
    rows.sort(key=lambda row: "<img" not in row.content_html)  # the post with an image goes first, in full
    campaign = SimpleNamespace(id=7, kind="newsletter", topic="newsletter", archived=False,
                               subject=f"Therapy Central: {rows[0].title}", preheader="",
                               intro="Here is what is new on our blog.", body_markdown="", posts=rows)
    return renderer.prepare_campaign(campaign).html.fill(render.sample_values(BASE_URL))


@pytest.fixture(scope="module")
def emails(settings: config.Settings) -> dict[str, str]:
    """name -> the HTML part as a recipient gets it."""
    renderer = render.Renderer(settings)
    values = render.sample_values(BASE_URL)
    made = {"newsletter": _newsletter(renderer)}
    for index, step in enumerate(settings.followups.steps):  # as delivery renders them (booking_url and all)
        made[f"followup-{step.template}"] = steps.prepare_step(renderer, settings, index).html.fill(values)
    made["confirm"] = renderer.prepare("email/system/confirm", subject="Please confirm your subscription",
                                       preheader="One click and you are subscribed.", marketing=False).html.fill(values)
    return made


def test_every_email_is_checked(emails: dict[str, str], settings: config.Settings) -> None:
    assert len(emails) == 2 + len(settings.followups.steps) >= 3
    assert "<img" in emails["newsletter"]  # the sample post's image: the alt-text check has something to see


def test_outlook_for_windows_gets_its_600px_table_and_settings(emails: dict[str, str]) -> None:
    for name, document in emails.items():
        assert 'xmlns:v="urn:schemas-microsoft-com:vml"' in document, name
        assert re.search(r"<!--\[if mso\]>\s*<noscript><xml><o:OfficeDocumentSettings><o:PixelsPerInch>96<", document), name
        # The fixed 600px column for Outlook, opened before and closed after the fluid column.
        opened = document.index('<!--[if mso]><table role="presentation" width="600" align="center"')
        column = document.index('class="column"')
        closed = document.index("<!--[if mso]></td></tr></table><![endif]-->")
        assert opened < column < closed, name
        tree = lxml.html.document_fromstring(document)
        (table,) = tree.find_class("column")
        assert table.tag == "table" and table.get("width") == "100%" and "max-width:600px" in table.get("style").replace(" ", "")
        assert table.get("bgcolor") == "#ffffff"
        (canvas,) = tree.find_class("canvas")
        assert canvas.tag == "table" and canvas.get("bgcolor") == "#f4f1ec"  # not the <body>'s background


def test_buttons_are_bulletproof(emails: dict[str, str]) -> None:
    """The link sits in a table cell that has its own background: Outlook paints the cell, the others the link."""
    buttons = 0
    for name, document in emails.items():
        tree = lxml.html.document_fromstring(document)
        for link in tree.find_class("button-link"):
            buttons += 1
            cell = link.getparent()
            assert cell.tag == "td" and cell.get("bgcolor") == "#2f6f5e", name
            style = link.get("style").replace(" ", "")
            assert "display:inline-block" in style and "padding:12px22px" in style and "mso-padding-alt:0" in style
            assert link.get("href", "").startswith("https://"), name
            assert link.text_content().strip()
        assert "<!--[if mso]><i style=\"mso-font-width: 150%; mso-text-raise: 27pt;\" hidden>" in document or \
            not tree.find_class("button-link"), name
    assert buttons >= 4  # the newsletter's posts, the booking invitation and the confirmation


def test_the_preheader_is_hidden_everywhere_outlook_included(emails: dict[str, str]) -> None:
    for name, document in emails.items():
        match = re.search(r'<!--\[if !mso\]><!-->\s*<div class="preheader" style="([^"]+)">(.*?)</div>\s*<!--<!\[endif\]-->',
                          document, re.S)
        assert match, name
        style = match.group(1).replace(" ", "")
        for rule in ("display:none", "max-height:0", "overflow:hidden", "opacity:0", "mso-hide:all"):
            assert rule in style, (name, rule)
        assert match.group(2).strip()[:3] not in ("", "&#8"), name  # the preheader text comes first


def test_no_feature_the_big_mailbox_providers_do_not_support(emails: dict[str, str]) -> None:
    assert len(UNSUPPORTED) + len(NOT_IN_HTML) == 189  # caniemail 2.0.2: "n" somewhere in the nine clients
    for name, document in emails.items():
        assert unsupported_in(document, allowed=set(ALLOWED)) == {}, name
        # The enhancements are only in the head, never in the inlined styles every client applies.
        body = document[document.index("<body"):]
        assert unsupported_in(body, allowed=set(ALLOWED) - ENHANCEMENTS) == {}, name


def test_the_checker_finds_what_it_looks_for() -> None:
    """The inventory is not blind: a document full of unsupported features is caught feature by feature."""
    document = """<!DOCTYPE html><html><head><style>
        @font-face { font-family: X; src: url(x.woff); }
        .a:hover { color: red; } .a.b { color: blue; } p:first-child { margin: 0; }
        @media (prefers-reduced-motion: reduce) { .a { transition: none; } }
        </style></head><body>
        <div style="position: absolute; height: 10rem; box-shadow: 0 0 1px #000; background: linear-gradient(red, blue)">
        <video></video><a href="#top" target="_blank" aria-label="x">x</a><img src="data:image/png;base64,AAAA" alt="">
        <section>x</section><form><input type="text"></form></div>
        <!--[if mso]><v:roundrect hidden style="position: absolute"></v:roundrect><![endif]--></body></html>"""
    found = unsupported_in(document)
    assert set(found) >= {"css-at-font-face", "css-pseudo-class-hover", "css-selector-chaining",
                          "css-pseudo-class-first-child", "css-at-media-prefers-reduced-motion", "css-position",
                          "css-height", "css-unit-rem", "css-box-shadow", "css-linear-gradient", "html-video",
                          "html-anchor-links", "html-target", "html-aria-label", "image-base64", "html-semantics",
                          "html-form", "html-input-text", "html-body", "html-doctype", "css-transition"}
    assert "html-hidden" not in found  # what only Outlook for Windows reads is not counted
    assert "element:v:roundrect" not in inventory(document)


def test_every_image_has_alt_text_and_every_link_an_absolute_href(emails: dict[str, str]) -> None:
    for name, document in emails.items():
        tree = lxml.html.document_fromstring(document)
        for image in tree.iter("img"):
            assert image.get("alt") is not None and image.get("alt").strip(), (name, image.get("src"))
            assert image.get("height") is None  # a narrow screen shrinks it without squashing it
        for link in tree.iter("a"):
            assert link.get("href", "").startswith(("https://", "http://", "mailto:", "tel:")), (name, link.text_content())


def _relative_luminance(rgb: tuple[int, int, int]) -> float:
    def channel(value: int) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(v) for v in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(foreground: tuple[int, int, int], background: tuple[int, int, int]) -> float:
    light, dark = sorted((_relative_luminance(foreground), _relative_luminance(background)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


# For every element with text of its own: its colour, and the background it is painted on.
TEXT_COLOURS_JS = """() => {
  const rgb = (value) => (value.match(/[\\d.]+/g) || []).map(Number);
  const results = [];
  for (const element of document.body.querySelectorAll('*')) {
    const own = [...element.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (!own || !element.getClientRects().length) continue;
    let node = element, background = null;
    while (node && node.nodeType === 1) {
      const value = rgb(getComputedStyle(node).backgroundColor);
      if (value.length === 3 || (value.length === 4 && value[3] > 0)) { background = value.slice(0, 3); break; }
      node = node.parentElement;
    }
    results.push({text: element.textContent.trim().slice(0, 40), color: rgb(getComputedStyle(element).color).slice(0, 3),
                  background: background || [255, 255, 255]});
  }
  return results;
}"""


@pytest.mark.browser
def test_screenshots_at_375_and_800_pixels_light_and_dark(emails: dict[str, str], settings: config.Settings) -> None:
    require_chromium()
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    last_step = settings.followups.steps[-1].template
    shown = {"newsletter": emails["newsletter"], "followup": emails[f"followup-{last_step}"],
             "confirm": emails["confirm"]}
    taken: list[Path] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for scheme in ("light", "dark"):
                for width in (375, 800):
                    page = browser.new_page(viewport={"width": width, "height": 900}, color_scheme=scheme)
                    # An email's HTML reaches nothing: no request may leave the page.
                    page.route("**/*", lambda route: route.abort())
                    for name, document in shown.items():
                        page.set_content(document, wait_until="load")
                        column = page.locator(".column").bounding_box()
                        scroll_width = page.evaluate("document.documentElement.scrollWidth")
                        assert scroll_width <= width, (name, width, "sideways scrolling")
                        assert column is not None
                        assert column["width"] == (600 if width == 800 else width), (name, width, column)
                        background = page.evaluate("getComputedStyle(document.querySelector('.column')).backgroundColor")
                        assert background == ("rgb(255, 255, 255)" if scheme == "light" else "rgb(30, 36, 34)"), name
                        for item in page.evaluate(TEXT_COLOURS_JS):
                            fg, bg = tuple(item["color"]), tuple(item["background"])
                            assert contrast(fg, bg) >= 4.5, (name, scheme, item)
                            if scheme == "light":  # a client that inverts the colours (Gmail's app, Outlook's dark mode)
                                inverted = contrast(tuple(255 - v for v in fg), tuple(255 - v for v in bg))
                                assert inverted >= 4.5, (name, "inverted", item)
                        path = SCREENSHOTS / f"{name}-{width}-{scheme}.png"
                        page.screenshot(path=str(path), full_page=True)
                        taken.append(path)
                    page.close()
        finally:
            browser.close()
    assert len(taken) == 12 and all(path.stat().st_size > 5000 for path in taken)
