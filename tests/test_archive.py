"""The public archive on both databases: pages built from what was sent, with nothing personal in them
(checked against the bytes each recipient received from the real SMTP fixture), the View-in-browser
link, 404s for what is not public, the Atom feed through feedparser, and the config switches."""

from __future__ import annotations

import re

import feedparser
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine

from mailer import audience, config
from mailer.config import Settings
from mailer.jobs import deliver
from mailer.models import Campaign
from mailer.outbound.transport import SMTPTransport
from mailer.publishing import archive, campaigns, feeds
from mailer.runtime import Runtime
from mailer.web import create_app
from tests.smtp_server import SMTPServer
from tests.test_admin import cheap_hashing, flashed, post, staff_client, staff_id  # noqa: F401 (fixtures)
from tests.web_fixtures import SettableClock

BASE = "https://mail.therapycentral.example"
PEOPLE = {"ann.archer@example.com": "Ann Archer", "bo.baker@example.org": "Bo Baker",
          "cy.cooper@example.net": "Cy Cooper"}
PERSONAL_URL = re.compile(re.escape(BASE) + r"/(?:unsubscribe|preferences|confirm)/[A-Za-z0-9._-]+")
VIEW_LINK = re.compile(r'<a href="([^"]+)"[^>]*>View in your browser</a>')


@pytest.fixture
def runtime(settings: Settings, engine: Engine, clock: SettableClock, smtp_server: SMTPServer) -> Runtime:
    transport = SMTPTransport(config.parse_smtp_url(smtp_server.url), timeout=5, local_hostname="mailer.test")
    return Runtime(settings, clock=clock, engine_override=engine, transport_override=transport)


def subscribe_people(runtime: Runtime) -> None:
    with runtime.sessions.begin() as session:
        for address, name in PEOPLE.items():
            audience.staff_subscribe(session, runtime.settings.secret_key, runtime.settings.topics, email=address,
                                     name=name, topic_names=["newsletter"], source="paper form", now=runtime.clock())


def send_newsletter(runtime: Runtime) -> int:
    """Tonight's digest from the sample feed, approved automatically and delivered to the SMTP fixture."""
    feeds.ingest_with(runtime.sessions, runtime.settings.feed, runtime.clock())
    with runtime.sessions.begin() as session:
        outcome = campaigns.make_newsletter(session, runtime.settings, runtime.clock(), grace=__import__(
            "datetime").timedelta(days=2))
        assert outcome.campaign is not None and outcome.campaign.state == "approved"
        campaign_id = outcome.campaign.id
    deliver.run(runtime, runtime.clock())
    return campaign_id


def send_one_off(runtime: Runtime, subject: str, *, archived: bool) -> int:
    with runtime.sessions.begin() as session:
        row = campaigns.create_oneoff(session, runtime.settings, topic="newsletter", subject=subject,
                                      body_markdown="Our **open evening** is on Thursday.", now=runtime.clock())
        row.archived = archived
        campaigns.approve(session, row, by="staff", now=runtime.clock())
        campaign_id = row.id
    deliver.run(runtime, runtime.clock())
    return campaign_id


def neutralised(received: str, first_name: str, neutral_note: str) -> str:
    """What one recipient received, with their personal parts replaced by the archive's neutral ones."""
    text = received.replace("\r\n", "\n").replace(f"Hi {first_name},", "Hi there,")
    return PERSONAL_URL.sub(neutral_note, text)


def test_the_archive_page_is_the_email_as_sent_with_nothing_personal(runtime: Runtime, client: FlaskClient,
                                                                      smtp_server: SMTPServer) -> None:
    subscribe_people(runtime)
    campaign_id = send_newsletter(runtime)
    assert len(smtp_server.received) == len(PEOPLE)
    with runtime.sessions() as session:
        campaign = session.get(Campaign, campaign_id)
        slug = archive.slug(campaign)
        neutral_html, neutral_text = archive.neutral_email(runtime.settings, campaign)
        subject = campaign.subject
    note = f"{BASE}/archive/{slug}#your-links"

    links, personal_tokens = set(), []
    for received in smtp_server.received:
        message = received.message
        address = received.rcpt_tos[0]
        first = PEOPLE[address].split()[0]
        html = message.get_body(("html",)).get_content()
        text = message.get_body(("plain",)).get_content()
        personal = set(PERSONAL_URL.findall(html + text + str(message["List-Unsubscribe"])))
        assert len(personal) >= 2 and f"Hi {first}," in html and f"Hi {first}," in text
        personal_tokens += [url.rsplit("/", 1)[1] for url in personal]
        # The archive's email is exactly what this person got, minus them.
        assert neutralised(html, first, note) == neutral_html.replace("\r\n", "\n")
        assert neutralised(text, first, note) == neutral_text.replace("\r\n", "\n")
        found = VIEW_LINK.findall(html)
        assert len(found) == 1 and f"View in your browser: {found[0]}" in text
        links.add(found[0])
    # One link for everyone: it names the campaign, never a person.
    assert links == {f"{BASE}/archive/{slug}"}
    assert not any(token in next(iter(links)) for token in personal_tokens)

    response = client.get(f"/archive/{slug}")
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert f"<h1>{subject}</h1>" in page.replace("&#39;", "'").replace("&amp;", "&") or subject in page
    assert "Hi there," in page
    for address, name in PEOPLE.items():
        assert address not in page and address.split("@")[0] not in page
        for part in name.split():
            assert part not in page, part
    for token in personal_tokens:
        assert token not in page
    assert "/unsubscribe/" not in page and "/preferences/" not in page
    assert 'id="your-links"' in page and f'href="{note}"' in page
    # What a reader saw in the email, on a page of our own look: no styles, scripts or assets of its own.
    assert archive.page_fragment(neutralised(html, first, note)) in page
    assert "View in your browser" not in page and "<img" not in page and "<script" not in page
    assert "style=" not in page and "<link rel=\"stylesheet\"" not in page
    policy = response.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in policy and len(re.findall(r"'sha256-", policy)) == 2
    assert response.headers["Cache-Control"] == "public, max-age=300" and "Set-Cookie" not in response.headers
    assert "X-Robots-Tag" not in response.headers and '<meta name="robots"' not in page
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page

    # The link as it arrives opens the page; an old address of it leads there too.
    assert client.get(next(iter(links)).removeprefix(BASE)).status_code == 200
    moved = client.get(f"/archive/{campaign_id}-an-older-subject")
    assert moved.status_code == 301 and moved.headers["Location"].endswith(f"/archive/{slug}")


def test_the_list_and_the_atom_feed(runtime: Runtime, client: FlaskClient) -> None:
    subscribe_people(runtime)
    first = send_newsletter(runtime)
    shown = send_one_off(runtime, "Open evening on Thursday", archived=True)
    hidden = send_one_off(runtime, "Our phones are down today", archived=False)
    with runtime.sessions() as session:
        newsletter = session.get(Campaign, first)
        slugs = {campaign_id: archive.slug(session.get(Campaign, campaign_id)) for campaign_id in (first, shown, hidden)}
        newsletter_subject = newsletter.subject

    index = client.get("/archive").get_data(as_text=True)
    assert f"/archive/{slugs[first]}" in index and f"/archive/{slugs[shown]}" in index
    assert slugs[hidden] not in index and "phones are down" not in index
    assert index.index(slugs[shown]) < index.index(slugs[first]) or shown > first  # newest first

    response = client.get("/archive.atom")
    assert response.status_code == 200 and response.mimetype == "application/atom+xml"
    parsed = feedparser.parse(response.data)
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    assert parsed.feed.title == "Therapy Central: newsletter archive"
    assert [entry.link for entry in parsed.entries] == [f"{BASE}/archive/{slugs[shown]}",
                                                        f"{BASE}/archive/{slugs[first]}"]
    titles = {entry.link: entry.title for entry in parsed.entries}
    assert titles[f"{BASE}/archive/{slugs[first]}"] == newsletter_subject
    content = parsed.entries[0].content[0]
    assert content.type == "text/html" and "Hi there," in content.value and "open evening" in content.value
    assert "Ann" not in response.get_data(as_text=True) and "/unsubscribe/" not in response.get_data(as_text=True)


def test_drafts_and_unarchived_one_offs_are_not_found(runtime: Runtime, client: FlaskClient,
                                                      staff_client: FlaskClient) -> None:  # noqa: F811
    subscribe_people(runtime)
    hidden = send_one_off(runtime, "Our phones are down today", archived=False)
    with runtime.sessions.begin() as session:
        draft = campaigns.create_oneoff(session, runtime.settings, topic="newsletter", subject="Not yet",
                                        body_markdown="Draft", now=runtime.clock())
        draft.archived = True
        draft_id = draft.id
    for path in (f"/archive/{hidden}", f"/archive/{hidden}-our-phones-are-down-today", f"/archive/{draft_id}",
                 f"/archive/{draft_id}-not-yet", "/archive/999999", "/archive/abc", f"/archive/{'9' * 30}"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "phones" not in response.get_data(as_text=True)

    # Staff show the sent one-off in the archive: from then on it has a page.
    response = post(staff_client, f"/admin/campaigns/{hidden}/archive", {"show": "1"})
    assert "shown in the public archive" in flashed(staff_client, response)
    assert client.get(f"/archive/{hidden}-our-phones-are-down-today").status_code == 200
    post(staff_client, f"/admin/campaigns/{hidden}/archive", {"show": "0"})
    assert client.get(f"/archive/{hidden}-our-phones-are-down-today").status_code == 404


def test_a_one_off_carries_the_link_only_when_shown_in_the_archive(runtime: Runtime,
                                                                  smtp_server: SMTPServer) -> None:
    subscribe_people(runtime)
    send_one_off(runtime, "Shown", archived=True)
    shown = [m.message.get_body(("html",)).get_content() for m in smtp_server.received]
    smtp_server.received.clear()
    send_one_off(runtime, "Not shown", archived=False)
    hidden = [m.message.get_body(("html",)).get_content() for m in smtp_server.received]
    assert len(shown) == len(hidden) == len(PEOPLE)
    assert all(len(VIEW_LINK.findall(html)) == 1 for html in shown)
    assert not any("View in your browser" in html for html in hidden)


def test_config_turns_the_archive_off_or_out_of_search_engines(runtime: Runtime, settings: Settings) -> None:
    subscribe_people(runtime)
    campaign_id = send_newsletter(runtime)
    path = f"/archive/{campaign_id}"

    noindex = settings.model_copy(update={"archive": settings.archive.model_copy(update={"noindex": True})})
    client = create_app(Runtime(noindex, clock=runtime.clock, engine_override=runtime.engine)).test_client()
    response = client.get(path, follow_redirects=True)
    assert response.status_code == 200 and response.headers["X-Robots-Tag"] == "noindex"
    assert '<meta name="robots" content="noindex">' in response.get_data(as_text=True)
    assert client.get("/archive").headers["X-Robots-Tag"] == "noindex"

    off = settings.model_copy(update={"archive": settings.archive.model_copy(update={"enabled": False})})
    app: Flask = create_app(Runtime(off, clock=runtime.clock, engine_override=runtime.engine))
    client = app.test_client()
    for url in ("/archive", path, "/archive.atom"):
        assert client.get(url).status_code == 404, url


def test_archive_topics_must_be_known(config_path, environ) -> None:  # noqa: ANN001
    config_path.write_text(config_path.read_text().replace('topics = ["newsletter"]', 'topics = ["gardening"]'))
    with pytest.raises(config.ConfigError, match="archive.topics: 'gardening' is not one of the topics"):
        config.load(config_path, environ)
