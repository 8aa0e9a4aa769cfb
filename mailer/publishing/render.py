"""Jinja2 + premailer once per campaign or template; per recipient only the personal parts are filled in.

Rendering is split in two on purpose (premailer costs ~9 ms a message, MIME serialisation ~3 ms):
`prepare_*` renders the templates with placeholders where the personal values go, inlines the CSS and
builds the static headers and MIME frame once; `PreparedMessage.build` then fills the placeholders and
joins ready-made bytes for each recipient. tests/test_render.py checks the result against what the
`email` package makes for the same recipient.
"""

from __future__ import annotations

import html
import logging
import re
import secrets
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.header import Header
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import nh3

from mailer.config import Settings
from mailer.outbound.messages import (  # noqa: F401  (the message shape publishing builds)
    _MARK,
    _MARK_RE,
    PERSONAL_FIELDS,
    Part,
    PreparedMessage,
    Recipient,
    _qp,
    format_address,
)
from mailer.text import one_line

if TYPE_CHECKING:
    from jinja2 import Environment

log = logging.getLogger("mailer.render")


class RenderError(Exception):
    """A template could not be rendered (a typo in a template fails here, never sends a blank)."""


def make_environment(templates_dir: Path | list[Path]) -> Environment:
    """Jinja2 over one templates folder, or several looked up in order (the clinic's, then mailer's own)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    folders = templates_dir if isinstance(templates_dir, list) else [templates_dir]
    return Environment(
        loader=FileSystemLoader([str(folder) for folder in folders]),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def html_to_text(fragment: str, width: int = 76) -> str:
    """A readable plain-text version of sanitised post HTML: paragraphs, list items and links kept."""
    text = re.sub(r"(?is)<a\s[^>]*href=\"([^\"]+)\"[^>]*>(.*?)</a>", r"\2 (\1)", fragment)
    text = re.sub(r"(?i)<li[^>]*>", "\n- ", text)
    text = re.sub(r"(?i)<br\s*/?>", "\n", text)
    text = re.sub(r"(?i)</li>", "\n", text)
    text = re.sub(r"(?i)</(p|h[1-6]|ul|ol|blockquote|tr|figure|pre)>", "\n\n", text)
    text = html.unescape(nh3.clean(text, tags=set()))  # nh3 escapes the text it keeps; undo that once
    paragraphs = [re.sub(r"[ \t]+", " ", block).strip() for block in re.split(r"\n\s*\n", text)]
    wrapped = []
    for block in filter(None, paragraphs):
        lines = [textwrap.fill(line.strip(), width, break_long_words=False, break_on_hyphens=False)
                 for line in block.split("\n") if line.strip()]
        wrapped.append("\n".join(lines))
    return "\n\n".join(wrapped)


def inline_css(document: str) -> str:
    """premailer: <style> rules into style="" attributes (kept @media rules stay in a <style>)."""
    import premailer  # a tenth of a second to import; a send of a frozen campaign never needs it

    return premailer.Premailer(
        document,
        remove_classes=False,
        strip_important=False,
        disable_validation=True,
        cssutils_logging_level=logging.CRITICAL,
        allow_network=False,
    ).transform(pretty_print=False)


def _fold_header(name: str, value: str) -> bytes:
    """One header folded at spaces to 78 columns; RFC 2047 encoded words when it is not ASCII.

    (The email package's SMTP policy moves a long value whole onto a continuation line, which its own
    parser then reads back with a leading space; Header folds between words instead.)
    """
    charset = "us-ascii" if value.isascii() else "utf-8"
    folded = Header(value, charset, header_name=name, maxlinelen=78).encode(linesep="\r\n")
    return f"{name}: {folded}\r\n".encode("ascii")


@dataclass(frozen=True)
class PostView:
    title: str
    link: str
    summary: str
    content_html: str
    content_text: str
    published: str


class Renderer:
    """The Jinja2 environment over templates/ and the clinic-wide template context."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def env(self) -> Environment:
        """Made on first use: a send of campaigns rendered at dispatch never needs Jinja2 (30 ms to import)."""
        return make_environment(self.settings.template_search_path)

    def _context(self, **extra: object) -> dict[str, object]:
        recipient = {name: _MARK.format(name) for name in PERSONAL_FIELDS}
        return {
            "clinic": self.settings.clinic,
            "sender": self.settings.sender,
            "topics": self.settings.topics,
            "base_url": self.settings.web.base_url,
            "recipient": recipient,
            **extra,
        }

    def _render(self, name: str, context: Mapping[str, object]) -> str:
        try:
            return self.env.get_template(name).render(context)
        except Exception as exc:  # jinja raises many kinds; all mean "this template is broken"
            raise RenderError(f"template {name}: {exc}") from exc

    def prepare(
        self,
        template: str,
        *,
        subject: str,
        preheader: str,
        marketing: bool = True,
        **context: object,
    ) -> PreparedMessage:
        """Render `<template>.html` and `.txt` once, inline the CSS once, build the static headers."""
        html_doc, text_doc = self.render_documents(template, subject=subject, preheader=preheader,
                                                   marketing=marketing, **context)
        return self.assemble(subject, html_doc, text_doc, marketing=marketing)

    def render_template(self, name: str, **context: object) -> str:
        """One template file rendered as it is (no CSS inlining), placeholders where personal values go."""
        return self._render(name, self._context(**context))

    def render_documents(self, template: str, *, subject: str, preheader: str, marketing: bool = True,
                         **context: object) -> tuple[str, str]:
        """The HTML (CSS inlined) and plain-text bodies, placeholders where the personal values go."""
        ctx = self._context(subject=one_line(subject), preheader=one_line(preheader), marketing=marketing, **context)
        html_doc = inline_css(self._render(f"{template}.html", ctx))
        if not html_doc.lstrip().lower().startswith("<!doctype"):
            html_doc = "<!DOCTYPE html>\n" + html_doc
        text_doc = self._render(f"{template}.txt", ctx).strip("\n") + "\n"
        html_doc = html_doc.rstrip("\n") + "\n"
        return html_doc, text_doc

    def assemble(self, subject: str, html_doc: str, text_doc: str, *, marketing: bool = True) -> PreparedMessage:
        """A PreparedMessage from rendered bodies: the static headers and the MIME frame around them."""
        subject = one_line(subject)
        sender = self.settings.sender
        boundary = "=_mailer_" + secrets.token_hex(16)
        static = b"".join(
            [
                _fold_header("From", format_address(sender.from_name, sender.from_email)),
                _fold_header("Reply-To", sender.reply_to),
                _fold_header("Subject", subject),
                b"MIME-Version: 1.0\r\n",
                b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" if marketing else b"",
                f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n'.encode(),
            ]
        )
        mailbox = sender.unsubscribe_mailbox
        return PreparedMessage(
            subject=subject,
            static_headers=static,
            text=_part(text_doc, escape=False),
            html=_part(html_doc, escape=True),
            boundary=boundary,
            list_unsubscribe_mailto=f"mailto:{mailbox}?subject=unsubscribe" if (marketing and mailbox) else None,
            marketing=marketing,
        )

    def post_views(self, posts: Iterable[object]) -> list[PostView]:
        zone = self.settings.zone
        views = []
        for post in posts:
            published = post.published_at.astimezone(zone).strftime("%B %-d, %Y") if post.published_at else ""
            views.append(
                PostView(
                    title=post.title,
                    link=post.link,
                    summary=post.summary,
                    content_html=post.content_html,
                    content_text=html_to_text(post.content_html or post.summary),
                    published=published,
                )
            )
        return views

    def prepare_campaign(self, campaign: object, *, subject_prefix: str = "") -> PreparedMessage:
        """A newsletter digest (its posts) or a one-off (staff Markdown), through the same templates."""
        html_doc, text_doc = self.campaign_documents(campaign, subject_prefix=subject_prefix)
        return self.assemble(subject_prefix + campaign.subject, html_doc, text_doc)

    def prepare_frozen(self, campaign: object) -> PreparedMessage:
        """The campaign as frozen when its send began (campaigns.dispatch); rendered now if it was not."""
        if campaign.frozen_html is None or campaign.frozen_text is None:
            return self.prepare_campaign(campaign)
        return self.assemble(campaign.subject, campaign.frozen_html, campaign.frozen_text)

    def staff_html(self, body_markdown: str) -> str:
        """Markdown that staff wrote (a one-off, a follow-up step's wording) as sanitised email HTML."""
        import markdown  # only staff-written wording needs it

        from mailer.publishing import images

        body_html = nh3.clean(markdown.markdown(body_markdown, extensions=["sane_lists"]))
        # The feed's image rules: the clinic's own images only, no pixels (staff wording is no back door).
        return images.tidy_for_email(body_html, images.own_sites(self.settings.clinic.website,
                                                                 self.settings.web.base_url))

    def campaign_documents(self, campaign: object, *, subject_prefix: str = "") -> tuple[str, str]:
        """The campaign's rendered HTML and text bodies (see render_documents)."""
        body_html = ""
        views: list[PostView] = []
        if campaign.kind == "newsletter":
            views = self.post_views(campaign.posts)
        else:
            body_html = self.staff_html(campaign.body_markdown or "")
        preheader = campaign.preheader or (views[0].summary if views else "")
        from mailer.publishing import archive  # archive builds on this module

        return self.render_documents(
            "email/newsletter/digest",
            subject=subject_prefix + campaign.subject,
            preheader=preheader[:150],
            posts=views,
            intro=campaign.intro,
            body_html=body_html,
            body_text=html_to_text(body_html) if body_html else "",
            # "View in your browser": the same for every recipient, so it is rendered once with the rest.
            archive_url=archive.page_url(self.settings, campaign),
        )


def _part(rendered: str, *, escape: bool) -> Part:
    try:
        return Part.of(rendered, escape=escape)
    except ValueError as exc:  # a placeholder no recipient has: the template is broken
        raise RenderError(str(exc)) from None


def sample_values(base_url: str) -> dict[str, str]:
    """Personal values for previews and staff tests: links that lead nowhere personal."""
    return {
        "first_name": "Sam",
        "preferences_url": f"{base_url}/preferences/preview",
        "unsubscribe_url": f"{base_url}/unsubscribe/preview",
        "confirm_url": f"{base_url}/confirm/preview",
        "not_me_url": f"{base_url}/not-me/preview",
    }


def first_name(name: str) -> str:
    """The greeting's name: the first word of a name that passes mailer.names' rules, else ""."""
    from mailer.names import first_name as checked_first_name

    return checked_first_name(name)
