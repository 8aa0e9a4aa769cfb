"""The public archive pages: GET /archive, /archive/<slug> and the Atom feed /archive.atom.

Public and the same for everyone: no cookie, no token, nothing personal (publishing.archive makes each
email neutral). A draft, a one-off not shown in the archive, or anything with archive.enabled = false
is a 404, whatever its id.
"""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

from flask import Blueprint, Response, abort, current_app, render_template, request, url_for
from flask.sansio.blueprints import BlueprintSetupState
from markupsafe import Markup

from mailer.config import Settings
from mailer.models import Campaign
from mailer.publishing import archive
from mailer.web import PAGE_CSS, current_runtime, security

blueprint = Blueprint("archive", __name__)

ARCHIVE_CSS = "pages/_archive.css"
ASSETS = "mailer.archive"
PER_PAGE = 50
FEED_ENTRIES = 20
ATOM = "http://www.w3.org/2005/Atom"
# The same page for everyone, changed only when a campaign goes out: shared caches may keep it a while.
CACHE = "public, max-age=300"


@blueprint.record_once
def _load_assets(state: BlueprintSetupState) -> None:
    settings: Settings = state.app.extensions["mailer"].settings
    page_css = (settings.templates_dir / PAGE_CSS).read_text(encoding="utf-8")
    archive_css = (settings.templates_dir / ARCHIVE_CSS).read_text(encoding="utf-8")
    base = security.content_security_policy(page_css)
    page_hash = security.style_hash(page_css)
    policy = base.replace(f"style-src {page_hash}", f"style-src {page_hash} {security.style_hash(archive_css)}")
    if policy == base:  # the default policy changed shape: fail at start-up, not with unstyled pages
        raise RuntimeError("the archive pages cannot extend the Content-Security-Policy's style-src")
    state.app.extensions[ASSETS] = (Markup(archive_css), policy)


@blueprint.before_request
def _enabled() -> None:
    if not current_runtime().settings.archive.enabled:
        abort(404)


@blueprint.after_request
def _archive_headers(response: Response) -> Response:
    # Set before the app's own hook, which only fills in headers that are still missing.
    response.headers.setdefault("Content-Security-Policy", current_app.extensions[ASSETS][1])
    if response.status_code == 200:
        response.headers.setdefault("Cache-Control", CACHE)
    if current_runtime().settings.archive.noindex:
        response.headers["X-Robots-Tag"] = "noindex"
    return response


def _date(settings: Settings, campaign: Campaign) -> str:
    moment = campaign.enqueued_at or campaign.created_at
    local = moment.astimezone(settings.zone)
    return f"{local.day} {local:%B %Y}"


def _summary(campaign: Campaign) -> str:
    if campaign.preheader:
        return campaign.preheader
    return campaign.posts[0].title if campaign.posts and len(campaign.posts) > 1 else ""


def _page(template: str, **context: object) -> str:
    settings = current_runtime().settings
    return render_template(template, archive_css=current_app.extensions[ASSETS][0],
                           noindex=settings.archive.noindex, **context)


@blueprint.get("/archive")
def index() -> str:
    """Every newsletter sent (and the one-offs staff chose), newest first; `?before=ID` pages back."""
    runtime = current_runtime()
    settings = runtime.settings
    before = request.args.get("before", type=int)
    before = before if before is not None and 0 < before < 2**63 else None
    with runtime.sessions() as session:
        rows = archive.listing(session, settings, limit=PER_PAGE + 1, before=before)
        older = rows[PER_PAGE - 1].id if len(rows) > PER_PAGE else None
        entries = [{"slug": archive.slug(row), "subject": row.subject, "date": _date(settings, row),
                    "summary": _summary(row)} for row in rows[:PER_PAGE]]
    return _page("pages/archive.html", entries=entries, older=older, before=before)


@blueprint.get("/archive/<slug>")
def campaign_page(slug: str) -> Response | str:
    """One email as it was sent, with every personal part neutral."""
    runtime = current_runtime()
    settings = runtime.settings
    with runtime.sessions() as session:
        campaign = archive.find(session, settings, slug)
        if campaign is None:
            abort(404)
        canonical = archive.slug(campaign)
        if slug != canonical:  # an old or shortened address: the one address of this email
            return Response(status=301, headers={"Location": url_for(".campaign_page", slug=canonical)})
        html_doc, _text = archive.neutral_email(settings, campaign)
        return _page("pages/archive_email.html", subject=campaign.subject, date=_date(settings, campaign),
                     body=Markup(archive.page_fragment(html_doc)), note_id=archive.PERSONAL_LINKS_NOTE)


@blueprint.get("/archive.atom")
def feed() -> Response:
    """An Atom feed (RFC 4287) of the newest archive entries, each with the email's content."""
    runtime = current_runtime()
    settings = runtime.settings
    base = settings.web.base_url
    with runtime.sessions() as session:
        rows = archive.listing(session, settings, limit=FEED_ENTRIES)
        ET.register_namespace("", ATOM)
        root = ET.Element(f"{{{ATOM}}}feed")
        ET.SubElement(root, f"{{{ATOM}}}title").text = f"{settings.clinic.name}: newsletter archive"
        ET.SubElement(root, f"{{{ATOM}}}id").text = f"{base}/archive"
        ET.SubElement(root, f"{{{ATOM}}}link", href=f"{base}/archive", rel="alternate", type="text/html")
        ET.SubElement(root, f"{{{ATOM}}}link", href=f"{base}/archive.atom", rel="self",
                      type="application/atom+xml")
        ET.SubElement(root, f"{{{ATOM}}}author").append(_text_element("name", settings.clinic.name))
        moments = [row.enqueued_at or row.created_at for row in rows]
        updated = max(moments) if moments else runtime.clock()
        ET.SubElement(root, f"{{{ATOM}}}updated").text = _stamp(updated)
        for row, moment in zip(rows, moments, strict=True):
            url = f"{base}/archive/{archive.slug(row)}"
            entry = ET.SubElement(root, f"{{{ATOM}}}entry")
            ET.SubElement(entry, f"{{{ATOM}}}title").text = row.subject
            ET.SubElement(entry, f"{{{ATOM}}}id").text = url
            ET.SubElement(entry, f"{{{ATOM}}}link", href=url, rel="alternate", type="text/html")
            ET.SubElement(entry, f"{{{ATOM}}}updated").text = _stamp(moment)
            ET.SubElement(entry, f"{{{ATOM}}}published").text = _stamp(moment)
            if _summary(row):
                ET.SubElement(entry, f"{{{ATOM}}}summary").text = _summary(row)
            html_doc, _text = archive.neutral_email(settings, row)
            ET.SubElement(entry, f"{{{ATOM}}}content", type="html").text = archive.page_fragment(html_doc)
    body = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return Response(body, mimetype="application/atom+xml")


def _text_element(name: str, text: str) -> ET.Element:
    element = ET.Element(f"{{{ATOM}}}{name}")
    element.text = text
    return element


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
