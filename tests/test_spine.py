"""The whole path: the clinic's feed through `mailer tick --at` to a real SMTP server, on both databases."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from mailer import config, db
from mailer.cli import main
from mailer.models import Campaign, OutboxMessage, Post
from mailer.publishing import campaigns
from tests.conftest import SAMPLE
from tests.smtp_server import SMTPServer

SUBSCRIBERS = ["riley.chen@example.com", "morgan.patel@example.org", "casey.nguyen@example.net"]


@pytest.fixture
def mailer_env(environ: dict[str, str], smtp_server: SMTPServer) -> dict[str, str]:
    return {**environ, "MAILER_SMTP_URL": smtp_server.url}


@pytest.fixture
def cli(config_path: Path, mailer_env: dict[str, str]):  # noqa: ANN201
    runner = CliRunner()

    def invoke(*args: str, ok: bool = True, env: dict[str, str] | None = None):  # noqa: ANN202
        result = runner.invoke(main, ["--config", str(config_path), *args], env=env or mailer_env,
                               catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    invoke("init")
    return invoke


def newsletters(settings: config.Settings) -> list[Campaign]:
    engine = db.make_engine(settings.database.url)
    try:
        with db.session_factory(engine)() as session:
            return list(session.scalars(select(Campaign).order_by(Campaign.id)))
    finally:
        engine.dispose()


def test_feed_to_inbox_end_to_end(cli, smtp_server: SMTPServer, config_path: Path, mailer_env) -> None:  # noqa: ANN001
    result = cli("subscribers", "import", str(SAMPLE / "subscribers.csv"))
    assert "3 imported" in result.output

    result = cli("tick", "--at", "2026-11-23T18:00")
    assert "ingest_feed: new 1, archived 2" in result.output
    assert "sent 3" in result.output

    received = {address: smtp_server.messages_to(address) for address in SUBSCRIBERS}
    assert all(len(messages) == 1 for messages in received.values()), received
    message = received["riley.chen@example.com"][0]
    # Headers every marketing email carries.
    assert message["From"] == "Therapy Central <news@therapycentral.example>"
    assert message["Reply-To"] == "hello@therapycentral.example"
    assert message["To"] == "Riley Chen <riley.chen@example.com>"
    assert message["Date"] and re.fullmatch(r"<\d+\.[0-9a-f]{16}@therapycentral\.example>", message["Message-ID"])
    assert message["MIME-Version"] == "1.0"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe = re.fullmatch(r"<(https://mail\.therapycentral\.example/unsubscribe/[^>]+)>", message["List-Unsubscribe"])
    assert unsubscribe, message["List-Unsubscribe"]
    # The first post's summary names anxiety: the digest goes out under the neutral subject (privacy.py).
    assert message["Subject"] == "Therapy Central: 1 new article(s) on our blog"
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    # The newest post only (first_run_posts = 1); the archive is never mailed.
    assert "Five Grounding Techniques" in html and "Five Grounding Techniques" in text
    assert "What to Expect at Your First" not in html
    assert "Hi Riley," in text
    assert 'style="' in html and "<style" in html.lower()  # inlined, @media kept in a style block
    assert "<script" not in html.lower()
    assert "1200 Summit Ave, Suite 400, Fort Worth, TX 76102" in html and "1200 Summit Ave" in text
    hrefs = re.findall(r'href="([^"]+)"', html)
    assert hrefs and all(h.startswith("https://") for h in hrefs), hrefs
    assert unsubscribe.group(1) in html and "/preferences/" in html
    # Every address got its own links.
    other = received["casey.nguyen@example.net"][0]
    assert other["List-Unsubscribe"] != message["List-Unsubscribe"]

    # Running again at the same moment, or later the same night, sends nothing twice.
    cli("tick", "--at", "2026-11-23T18:00")
    cli("tick", "--at", "2026-11-23T19:30")
    result = cli("send")
    assert "sent 0" in result.output
    assert len(smtp_server.received) == 3
    # The next night, with no new posts, no campaign at all.
    result = cli("tick", "--at", "2026-11-24T18:05")
    assert "no-posts" in result.output
    settings = config.load(config_path, mailer_env)
    assert [c.state for c in newsletters(settings)] == ["sent"]
    result = cli("status")
    assert "sent 3" in result.output


def test_new_posts_since_the_last_ingest_make_the_next_digest(cli, smtp_server: SMTPServer, config_path: Path,
                                                             mailer_env) -> None:  # noqa: ANN001
    cli("subscribers", "add", "riley.chen@example.com", "--name", "Riley Chen", "--source", "front-desk-form")
    env = {**mailer_env, "MAILER_FEED_URL": str(SAMPLE / "blog-feed-first-post-only.xml")}
    result = cli("ingest", env=env)
    assert "1 new post" in result.output
    cli("tick", "--at", "2026-11-23T18:00", env=env)
    first = smtp_server.messages_to("riley.chen@example.com")
    # The title names conditions: it is in the email, but the subject is the neutral one.
    assert len(first) == 1 and first[0]["Subject"] == "Therapy Central: 1 new article(s) on our blog"
    assert "Ketamines for Anxiety and Depression" in first[0].get_body(("html",)).get_content()

    result = cli("ingest")  # the full feed: two newer posts
    assert "2 new posts" in result.output
    assert "0 new posts" in cli("ingest").output
    cli("tick", "--at", "2026-11-24T18:00")
    second = smtp_server.messages_to("riley.chen@example.com")
    assert len(second) == 2
    html = second[1].get_body(("html",)).get_content()
    assert "Five Grounding Techniques" in html and "What to Expect at Your First" in html
    assert "How do they Work" not in html


def test_manual_approval_waits_for_staff(cli, smtp_server: SMTPServer, config_path: Path, mailer_env) -> None:  # noqa: ANN001
    config_path.write_text(config_path.read_text().replace('approval = "auto"', 'approval = "manual"'))
    cli("subscribers", "add", "riley.chen@example.com", "--source", "front-desk-form")
    cli("tick", "--at", "2026-11-23T18:00")
    assert smtp_server.received == []
    settings = config.load(config_path, mailer_env)
    (campaign,) = newsletters(settings)
    assert campaign.state == "draft"
    listing = cli("campaigns", "list").output
    assert f"{campaign.id}  newsletter draft" in listing
    preview = cli("campaigns", "preview", str(campaign.id)).output.strip()
    assert Path(preview).read_text().count("Five Grounding Techniques") >= 1
    cli("campaigns", "test", str(campaign.id), "--to", "staff@therapycentral.example")
    (test_copy,) = smtp_server.messages_to("staff@therapycentral.example")
    assert test_copy["Subject"].startswith("[TEST] ")
    cli("campaigns", "approve", str(campaign.id))
    cli("send")
    assert len(smtp_server.messages_to("riley.chen@example.com")) == 1
    shown = cli("campaigns", "show", str(campaign.id)).output
    assert "sent 1" in shown


def test_cli_errors_are_one_line(cli, config_path: Path, mailer_env) -> None:  # noqa: ANN001
    result = cli("campaigns", "approve", "999", ok=False)
    assert result.exit_code == 1
    assert result.output.strip() == "mailer: error: no campaign with id 999"
    result = cli("subscribers", "add", "not-an-address", "--source", "x", ok=False)
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "not a valid email address" in result.output
    result = cli("tick", "--at", "yesterday", ok=False)
    assert "--at: not an ISO-8601 time" in result.output
    bad = config_path.with_name("bad.toml")
    bad.write_text(config_path.read_text().replace("poll_minutes = 30", 'poll_minutes = "often"'))
    result = CliRunner().invoke(main, ["--config", str(bad), "status"], env=mailer_env)
    assert result.exit_code == 1
    assert result.output.strip() == f"mailer: error: {bad}: feed.poll_minutes: Input should be a valid integer"


def test_subscriber_import_rejects_rows_without_consent(cli, tmp_path: Path) -> None:  # noqa: ANN001
    csv_file = tmp_path / "subs.csv"
    csv_file.write_text(
        "email,name,topics,consent_source,consented_at\n"
        "ok@example.com,Ok Person,newsletter,event-signup-sheet,2026-10-01T12:00:00Z\n"
        "noconsent@example.com,No Consent,newsletter,,\n"
        "bad-address,Bad,newsletter,web,2026-10-01T12:00:00Z\n"
        "topic@example.com,Topic,gardening,web,2026-10-01T12:00:00Z\n"
    )
    result = cli("subscribers", "import", str(csv_file), ok=False)
    assert result.exit_code == 2
    assert "1 imported, 0 already subscribed, 0 skipped (suppressed or unsubscribed), 3 rejected." in result.output
    assert "line 3: rejected: no consent" in result.output
    assert "line 4: rejected: not a valid email address" in result.output
    assert "line 5: rejected: unknown topic 'gardening'" in result.output


@pytest.mark.parametrize(
    ("send_time", "night", "probes"),
    [
        # Spring forward: 02:00-03:00 does not exist on 2026-03-08 in America/Chicago.
        ("02:30", dt.date(2026, 3, 8), ["2026-03-08T07:00Z", "2026-03-08T08:29Z", "2026-03-08T08:30Z",
                                        "2026-03-08T09:00Z", "2026-03-08T10:00Z"]),
        # Fall back: 01:00-02:00 happens twice on 2026-11-01.
        ("01:30", dt.date(2026, 11, 1), ["2026-11-01T06:00Z", "2026-11-01T06:30Z", "2026-11-01T07:00Z",
                                         "2026-11-01T07:30Z", "2026-11-01T08:00Z"]),
        ("02:30", dt.date(2027, 3, 14), ["2027-03-14T08:00Z", "2027-03-14T08:30Z", "2027-03-14T09:30Z"]),
        ("01:30", dt.date(2027, 11, 7), ["2027-11-07T06:30Z", "2027-11-07T07:30Z", "2027-11-07T08:30Z"]),
    ],
)
def test_dst_nights_make_one_newsletter(settings: config.Settings, sessions, send_time: str, night: dt.date,
                                        probes: list[str]) -> None:  # noqa: ANN001
    settings = settings.model_copy(update={"newsletter": settings.newsletter.model_copy(update={"send_time": send_time})})
    with sessions.begin() as session:
        session.add(Post(guid="g1", link="https://therapycentral.example/p1", title="A post", summary="s",
                         content_html="<p>x</p>", author="", published_at=None,
                         fetched_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), archived=False))
    created = []
    for probe in probes:
        now = dt.datetime.fromisoformat(probe.replace("Z", "+00:00"))
        with sessions.begin() as session:
            outcome = campaigns.make_newsletter(session, settings, now)
            if outcome.reason == "created":
                created.append((probe, outcome.campaign.newsletter_date))
    assert len(created) == 1, created
    assert created[0][1] == night
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Campaign)) == 1


def test_a_missed_send_time_is_skipped_not_sent_by_surprise(settings: config.Settings, sessions) -> None:  # noqa: ANN001
    with sessions.begin() as session:
        session.add(Post(guid="g1", link="https://therapycentral.example/p1", title="A post", summary="s",
                         content_html="", author="", published_at=None,
                         fetched_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), archived=False))
    late = dt.datetime(2026, 11, 23, 18, 0, tzinfo=settings.zone) + dt.timedelta(hours=3)
    with sessions.begin() as session:
        assert campaigns.make_newsletter(session, settings, late.astimezone(dt.UTC)).reason == "missed"
    on_time = dt.datetime(2026, 11, 24, 18, 30, tzinfo=settings.zone).astimezone(dt.UTC)
    with sessions.begin() as session:
        outcome = campaigns.make_newsletter(session, settings, on_time)
        assert outcome.reason == "created" and outcome.campaign.newsletter_date == dt.date(2026, 11, 24)


def test_outbox_rows_record_the_consent_they_rely_on(cli, config_path: Path, mailer_env) -> None:  # noqa: ANN001
    cli("subscribers", "add", "riley.chen@example.com", "--source", "front-desk-form")
    cli("tick", "--at", "2026-11-23T18:00")
    settings = config.load(config_path, mailer_env)
    engine = db.make_engine(settings.database.url)
    try:
        with db.session_factory(engine)() as session:
            (row,) = session.scalars(select(OutboxMessage)).all()
            assert row.state == "sent" and row.consent_event_id is not None
            assert row.dedupe_key == f"c:{row.campaign_id}:{row.contact_id}"
    finally:
        engine.dispose()


def test_send_dry_run_sends_and_changes_nothing(cli, smtp_server: SMTPServer, config_path: Path, mailer_env) -> None:  # noqa: ANN001
    config_path.write_text(config_path.read_text().replace('approval = "auto"', 'approval = "manual"'))
    cli("subscribers", "import", str(SAMPLE / "subscribers.csv"))
    cli("tick", "--at", "2026-11-23T18:00")
    (campaign,) = newsletters(config.load(config_path, mailer_env))
    cli("campaigns", "approve", str(campaign.id))
    result = cli("send", "--dry-run")
    assert f"would enqueue and send 3 message(s) of approved campaign {campaign.id}" in result.output
    assert "3 message(s) due; nothing sent (dry run)." in result.output
    assert smtp_server.received == []
    assert newsletters(config.load(config_path, mailer_env))[0].state == "approved"
    assert "sent 3" in cli("send").output
