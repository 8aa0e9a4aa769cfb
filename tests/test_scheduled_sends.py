"""Scheduled sends and one-offs from the shell: `mailer campaigns new`, `approve --at`, `unschedule`, on
both databases, through `mailer tick --at` to the real SMTP fixture, DST nights included."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import select

from mailer import db
from mailer.cli import main
from mailer.config import Settings
from mailer.models import Campaign
from mailer.publishing import campaigns, previews, schedules
from mailer.runtime import Runtime
from tests.smtp_server import SMTPServer
from tests.test_admin import cheap_hashing, flashed, post, staff_client, staff_id  # noqa: F401 (fixtures)

SUBSCRIBERS = ("ann@example.com", "ben@example.com")
BODY = """Our **open evening** is on Thursday.

- Talks from our clinicians
- Time for questions

<script>alert(1)</script>[Read more](https://therapycentral.example/open-evening)
"""
CHICAGO_AUTUMN = "2027-11-07T01:30"  # happens twice in America/Chicago: 06:30Z (CDT) and 07:30Z (CST)


@pytest.fixture
def cli(config_path: Path, environ: dict[str, str], smtp_server: SMTPServer):  # noqa: ANN201
    runner = CliRunner()
    env = {**environ, "MAILER_SMTP_URL": smtp_server.url}

    def invoke(*args: str, ok: bool = True):  # noqa: ANN202
        result = runner.invoke(main, ["--config", str(config_path), *args], env=env, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    invoke("init")
    for address in SUBSCRIBERS:
        invoke("subscribers", "add", address, "--source", "paper form at reception")
    return invoke


def one_off(cli, tmp_path: Path, subject: str = "Open evening on Thursday") -> int:  # noqa: ANN001
    body = tmp_path / "body.md"
    body.write_text(BODY, encoding="utf-8")
    result = cli("campaigns", "new", "--topic", "newsletter", "--subject", subject, "--body", str(body),
                 "--preheader", "Talks and questions")
    assert re.fullmatch(r"\d+\n", result.output), result.output
    return int(result.output)


def stored(settings: Settings, campaign_id: int) -> Campaign:
    engine = db.make_engine(settings.database.url)
    try:
        with db.session_factory(engine)() as session:
            return session.get(Campaign, campaign_id)
    finally:
        engine.dispose()


def test_a_one_off_scheduled_for_the_repeated_hour_goes_out_once_at_the_first(
        cli, tmp_path: Path, settings: Settings, smtp_server: SMTPServer) -> None:  # noqa: ANN001
    campaign_id = one_off(cli, tmp_path)
    cli("tick", "--at", "2027-11-06T12:00")  # the day before: approving needs "now" before the send time
    result = cli("campaigns", "approve", str(campaign_id), "--at", CHICAGO_AUTUMN)
    assert result.output.strip() == f"Campaign {campaign_id} scheduled for 2027-11-07 01:30 CDT."
    row = stored(settings, campaign_id)
    assert row.state == "approved" and row.send_after == dt.datetime(2027, 11, 7, 6, 30, tzinfo=dt.UTC)
    listing = cli("campaigns", "list").output
    assert "(scheduled for 2027-11-07 01:30 CDT)" in listing

    cli("tick", "--at", "2027-11-07T06:29:59Z")  # a second before: nothing
    assert smtp_server.received == []
    assert stored(settings, campaign_id).state == "approved"
    cli("tick", "--at", "2027-11-07T06:30Z")  # the first 01:30
    assert sorted(r for m in smtp_server.received for r in m.rcpt_tos) == sorted(SUBSCRIBERS)
    assert all(m.message["Subject"] == "Open evening on Thursday" for m in smtp_server.received)
    cli("tick", "--at", "2027-11-07T07:30Z")  # the second 01:30, an hour later: nothing again
    cli("tick", "--at", "2027-11-07T07:31Z")
    assert len(smtp_server.received) == len(SUBSCRIBERS)
    assert stored(settings, campaign_id).state == "sent"


def test_unscheduling_before_the_time_sends_nothing(cli, tmp_path: Path, settings: Settings,
                                                     smtp_server: SMTPServer) -> None:  # noqa: ANN001
    campaign_id = one_off(cli, tmp_path)
    cli("tick", "--at", "2027-11-06T12:00")
    cli("campaigns", "approve", str(campaign_id), "--at", CHICAGO_AUTUMN)
    assert cli("campaigns", "unschedule", str(campaign_id)).output.strip() == \
        f"Campaign {campaign_id} unscheduled; it is a draft again."
    cli("tick", "--at", "2027-11-07T06:30Z")
    cli("tick", "--at", "2027-11-08T12:00Z")
    assert smtp_server.received == []
    row = stored(settings, campaign_id)
    assert row.state == "draft" and row.send_after is None and row.approved_by is None
    again = cli("campaigns", "unschedule", str(campaign_id), ok=False)
    assert again.exit_code == 1 and again.output.count("\n") == 1
    assert "only a scheduled campaign can be unscheduled" in again.output


def test_a_time_the_clocks_skip_or_a_past_time_is_refused(cli, tmp_path: Path, settings: Settings) -> None:  # noqa: ANN001
    campaign_id = one_off(cli, tmp_path)
    cli("tick", "--at", "2027-03-13T12:00")
    gap = cli("campaigns", "approve", str(campaign_id), "--at", "2027-03-14T02:30", ok=False)
    assert gap.exit_code == 1 and gap.output.count("\n") == 1
    assert gap.output.startswith("mailer: error: 2027-03-14 02:30 does not exist in America/Chicago")
    past = cli("campaigns", "approve", str(campaign_id), "--at", "2020-01-01T09:00", ok=False)
    assert past.exit_code == 1 and "is in the past" in past.output
    bad = cli("campaigns", "approve", str(campaign_id), "--at", "next tuesday", ok=False)
    assert bad.exit_code == 1 and "not a date and time" in bad.output
    assert stored(settings, campaign_id).state == "draft"
    # Just after the gap is fine, and an explicit offset is taken as it is.
    cli("campaigns", "approve", str(campaign_id), "--at", "2027-03-14T03:00")
    assert stored(settings, campaign_id).send_after == dt.datetime(2027, 3, 14, 8, 0, tzinfo=dt.UTC)
    cli("campaigns", "approve", str(campaign_id), "--at", "2027-03-14T10:15:00+00:00")
    assert stored(settings, campaign_id).send_after == dt.datetime(2027, 3, 14, 10, 15, tzinfo=dt.UTC)


@pytest.mark.parametrize(("local", "utc_hour"), [("2027-11-07T00:59", 5), ("2027-11-07T01:00", 6),
                                                  ("2027-11-07T01:59", 6), ("2027-11-07T02:00", 8),
                                                  ("2027-03-14T01:59", 7), ("2027-03-14T03:00", 8)])
def test_local_send_times_around_the_changes(local: str, utc_hour: int) -> None:
    from zoneinfo import ZoneInfo

    assert schedules.parse_send_time(local, ZoneInfo("America/Chicago")).hour == utc_hour


def test_campaigns_new_makes_the_same_draft_as_the_compose_page(cli, tmp_path: Path, runtime: Runtime,
                                                                staff_client: FlaskClient) -> None:  # noqa: ANN001, F811
    from_shell = one_off(cli, tmp_path)
    response = post(staff_client, "/admin/compose", {"topic": "newsletter", "subject": "Open evening on Thursday",
                                                     "preheader": "Talks and questions",
                                                     "body_markdown": BODY.replace("\n", "\r\n")})
    assert "Draft saved" in flashed(staff_client, response)
    with runtime.sessions() as session:
        shell, page = session.scalars(select(Campaign).order_by(Campaign.id)).all()
        assert shell.id == from_shell
        fields = ("kind", "topic", "subject", "preheader", "intro", "body_markdown", "state")
        assert [getattr(shell, f) for f in fields] == [getattr(page, f) for f in fields]
        _, shell_html, shell_text = previews.render_parts(runtime.settings, shell)
        _, page_html, page_text = previews.render_parts(runtime.settings, page)
    assert shell_html == page_html and shell_text == page_text
    assert "<strong>open evening</strong>" in shell_html and "<li>Talks from our clinicians</li>" in shell_html
    assert "<script" not in shell_html  # the same sanitising on both paths


def test_campaigns_new_refuses_bad_input_with_one_line(cli, tmp_path: Path, settings: Settings) -> None:  # noqa: ANN001
    body = tmp_path / "empty.md"
    body.write_text("  \n")
    empty = cli("campaigns", "new", "--topic", "newsletter", "--subject", "Hello", "--body", str(body), ok=False)
    assert empty.exit_code == 1 and empty.output == "mailer: error: the body is empty\n"
    body.write_text("Hello")
    topic = cli("campaigns", "new", "--topic", "gardening", "--subject", "Hello", "--body", str(body), ok=False)
    assert topic.exit_code == 1 and "unknown topic 'gardening'" in topic.output
    missing = cli("campaigns", "new", "--topic", "newsletter", "--subject", "Hello", "--body",
                  str(tmp_path / "nope.md"), ok=False)
    assert missing.exit_code == 2 and "Traceback" not in missing.output
    assert cli("campaigns", "list").output.strip() == "No campaigns yet."


def test_a_scheduled_campaign_can_be_edited_until_it_is_enqueued(runtime: Runtime) -> None:
    settings = runtime.settings
    now = dt.datetime(2027, 11, 6, 18, 0, tzinfo=dt.UTC)
    with runtime.sessions.begin() as session:
        row = campaigns.create_oneoff(session, settings, topic="newsletter", subject="Before", body_markdown="Hi",
                                      now=now)
        campaigns.schedule(session, row, by="staff", now=now, at=now + dt.timedelta(hours=12))
        campaigns.edit(row, subject="After")
        assert campaigns.is_scheduled(row) and row.subject == "After"
        campaign_id = row.id
    from mailer.jobs import deliver

    deliver.run(runtime, now + dt.timedelta(hours=12))
    with runtime.sessions.begin() as session:
        row = session.get(Campaign, campaign_id)
        assert row.state == "sent"  # nobody subscribed: enqueued for no one, finished at once
        with pytest.raises(campaigns.CampaignError, match="only drafts and scheduled campaigns"):
            campaigns.edit(row, subject="Too late")


def test_staff_schedule_change_and_unschedule_on_the_campaign_page(runtime: Runtime,
                                                                   staff_client: FlaskClient) -> None:  # noqa: F811
    with runtime.sessions.begin() as session:
        campaign_id = campaigns.create_oneoff(session, runtime.settings, topic="newsletter", subject="Open evening",
                                              body_markdown="Come along.", now=runtime.clock()).id
    page = staff_client.get(f"/admin/campaigns/{campaign_id}").get_data(as_text=True)
    assert 'type="datetime-local" id="send-at" name="send_at"' in page
    assert "(clinic time, America/Chicago)" in page

    gap = post(staff_client, f"/admin/campaigns/{campaign_id}/schedule", {"send_at": "2027-03-14T02:30"})
    assert "Not scheduled: 2027-03-14 02:30 does not exist in America/Chicago" in flashed(staff_client, gap)
    assert stored(runtime.settings, campaign_id).state == "draft"

    done = post(staff_client, f"/admin/campaigns/{campaign_id}/schedule", {"send_at": CHICAGO_AUTUMN})
    assert "Scheduled. It goes out at Sun 7 Nov 2027, 01:30 CDT." in flashed(staff_client, done)
    row = stored(runtime.settings, campaign_id)
    assert row.state == "approved" and row.send_after == dt.datetime(2027, 11, 7, 6, 30, tzinfo=dt.UTC)
    listing = staff_client.get("/admin/campaigns").get_data(as_text=True)
    assert "scheduled</span><br><span class=\"note\">for Sun 7 Nov 2027, 01:30 CDT" in listing
    page = staff_client.get(f"/admin/campaigns/{campaign_id}").get_data(as_text=True)
    assert 'value="2027-11-07T01:30"' in page and "Unschedule" in page and "Save changes" in page

    moved = post(staff_client, f"/admin/campaigns/{campaign_id}/schedule", {"send_at": "2027-11-07T09:00"})
    assert "Sun 7 Nov 2027, 09:00 CST" in flashed(staff_client, moved)
    edited = post(staff_client, f"/admin/campaigns/{campaign_id}/edit", {"subject": "Open evening, 6 pm",
                                                                         "preheader": "", "intro": "",
                                                                         "body_markdown": "Come along."})
    assert "Saved." in flashed(staff_client, edited)
    undone = post(staff_client, f"/admin/campaigns/{campaign_id}/unschedule")
    assert "Unscheduled. It is a draft again" in flashed(staff_client, undone)
    row = stored(runtime.settings, campaign_id)
    assert (row.state, row.send_after, row.subject) == ("draft", None, "Open evening, 6 pm")
