"""The public archive: which campaigns it shows, their addresses, and each one's email made neutral.

A campaign's page is built from the bodies it was sent with (Campaign.frozen_html), with every
personal placeholder filled with a neutral value ("Hi there,", links to the page's own note instead of
a person's preference and unsubscribe links), so it matches what each recipient received, minus them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

import nh3
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.models import Campaign
from mailer.publishing.render import Part

# The states of a campaign whose email has gone (or is going) out to subscribers.
OUT = ("sending", "sent")
NEUTRAL_NAME = "there"
PERSONAL_LINKS_NOTE = "your-links"  # the id of the page's note that stands in for the personal links
VIEW_ONLINE = "view-online"  # class of the email's own "View in your browser" line (left out on the page)
_SLUG_ID = re.compile(r"^([0-9]{1,18})(?:-[a-z0-9-]*)?$")
# What the page keeps of the email's HTML: text structure and links; no images (nothing is loaded from
# elsewhere), no style attributes (the page's stylesheet is the only one its policy allows).
PAGE_TAGS = set(nh3.ALLOWED_TAGS) - {"img", "map", "area"}


def slugify(text: str, limit: int = 60) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:limit].rstrip("-")


def slug(campaign: Campaign) -> str:
    """The campaign's address in the archive: its id (what finds it) and its subject (what people read)."""
    words = slugify(campaign.subject)
    return f"{campaign.id}-{words}" if words else str(campaign.id)


def shows_kind(settings: Settings, campaign: Campaign) -> bool:
    """Whether the archive shows this campaign once it is out: every newsletter, the one-offs staff chose."""
    return (settings.archive.enabled and campaign.topic in settings.archive_topics
            and (campaign.kind == "newsletter" or (campaign.kind == "oneoff" and campaign.archived)))


def is_public(settings: Settings, campaign: Campaign) -> bool:
    return shows_kind(settings, campaign) and campaign.state in OUT and campaign.frozen_html is not None


def page_url(settings: Settings, campaign: Campaign) -> str | None:
    """The "View in your browser" address for the campaign's emails; None when the archive will not show it.

    The same for every recipient (it names the campaign, never a person), so it is rendered into the
    campaign's bodies once, like any other text."""
    if not shows_kind(settings, campaign):
        return None
    return f"{settings.web.base_url}/archive/{slug(campaign)}"


def listing(session: Session, settings: Settings, *, limit: int = 50, before: int | None = None) -> list[Campaign]:
    """What the archive lists, newest first (by when the send began)."""
    if not settings.archive.enabled:
        return []
    query = (
        select(Campaign)
        .where(Campaign.state.in_(OUT), Campaign.frozen_html.is_not(None),
               Campaign.topic.in_(settings.archive_topics),
               (Campaign.kind == "newsletter") | ((Campaign.kind == "oneoff") & Campaign.archived.is_(True)))
        .order_by(Campaign.enqueued_at.desc().nulls_last(), Campaign.id.desc())
        .limit(limit)
    )
    if before is not None:
        query = query.where(Campaign.id < before)
    return list(session.scalars(query))


def find(session: Session, settings: Settings, value: str) -> Campaign | None:
    """The public campaign an archive address names (by its id; the words after it may be outdated)."""
    match = _SLUG_ID.match(value or "")
    if not match:
        return None
    campaign = session.get(Campaign, int(match.group(1)))
    return campaign if campaign is not None and is_public(settings, campaign) else None


def neutral_values(settings: Settings, campaign: Campaign) -> dict[str, str]:
    """What stands in for a recipient's personal values on the public page."""
    note = f"{settings.web.base_url}/archive/{slug(campaign)}#{PERSONAL_LINKS_NOTE}"
    return {"first_name": NEUTRAL_NAME, "preferences_url": note, "unsubscribe_url": note, "confirm_url": note}


def neutral_email(settings: Settings, campaign: Campaign) -> tuple[str, str]:
    """The campaign's HTML and text bodies as sent, the personal parts neutral (same filling as a send)."""
    values: Mapping[str, str] = neutral_values(settings, campaign)
    html_doc = Part.of(campaign.frozen_html or "", escape=True).fill(values)
    text_doc = Part.of(campaign.frozen_text or "", escape=False).fill(values)
    return html_doc, text_doc


def page_fragment(html_doc: str) -> str:
    """The email's body for a web page: what a reader sees in the email, as safe HTML without styles.

    Elements the email hides (its preheader) and its own "View in your browser" line are left out."""
    import lxml.html  # premailer's parser, already installed

    root = lxml.html.document_fromstring(html_doc)
    for element in list(root.iter()):
        if not isinstance(element.tag, str) or element.getparent() is None:
            continue
        style = re.sub(r"\s+", "", (element.get("style") or "").lower())
        classes = (element.get("class") or "").split()
        if "display:none" in style or VIEW_ONLINE in classes or element.tag in ("style", "script", "title"):
            element.drop_tree()
    body = root.find("body")
    container = body if body is not None else root
    inner = (container.text or "") + "".join(lxml.html.tostring(child, encoding="unicode") for child in container)
    return nh3.clean(inner, tags=PAGE_TAGS, attributes={"*": {"class"}, "a": {"href"}},
                     url_schemes={"http", "https", "mailto"}, link_rel="noopener noreferrer")
