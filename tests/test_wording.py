"""Follow-up wording on the staff pages: versions per step recorded when a step is queued (what the SMTP
server receives proves it), the health-word refusal on save, the preview, the history, roles; on SQLite
and PostgreSQL."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import re
from zoneinfo import ZoneInfo

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, func, select

from mailer import access_log, config, jobs, staff
from mailer.config import Settings
from mailer.models import AccessEntry, OutboxMessage, StepVersion
from mailer.outbound.transport import SMTPTransport
from mailer.publishing import render
from mailer.publishing.render import Renderer, sample_values
from mailer.runtime import Runtime
from mailer.sequences import inquiries, steps, wording
from mailer.sequences.wording import Wording, WordingError
from tests.smtp_server import Received, SMTPServer
from tests.test_admin import PASSWORD, cheap_hashing, csrf_of, flashed, log_in, text_of  # noqa: F401
from tests.web_fixtures import SettableClock

CHICAGO = ZoneInfo("America/Chicago")
MARKETING = "marta@therapycentral.example"
COLLEAGUE = "nils@therapycentral.example"
FRONT_DESK = "fred@therapycentral.example"
STEP_2 = "/admin/followups/default/2"
# What the template of step 2 (first-visit) says, and what staff write instead, version by version.
TEMPLATE_TEXT = "People often tell us that knowing what to expect"
NEW_TEXT = {1: "Our new front door is on Summit Avenue, next to the bakery.",
            2: "Parking is free in the garage behind the building."}
NEW_SUBJECT = {1: "Finding your way to us", 2: "Parking when you visit"}


def local(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=CHICAGO).astimezone(dt.UTC)


@pytest.fixture
def runtime(settings: Settings, engine: Engine, clock: SettableClock, smtp_server: SMTPServer) -> Runtime:
    """The app's runtime, delivering to the real SMTP server on loopback (replaces web_fixtures' one)."""
    transport = SMTPTransport(config.parse_smtp_url(smtp_server.url), timeout=5, local_hostname="mailer.test")
    return Runtime(settings, clock=clock, engine_override=engine, transport_override=transport)


@pytest.fixture
def accounts(runtime: Runtime) -> None:
    with runtime.sessions.begin() as session:
        staff.create(session, MARKETING, PASSWORD, runtime.clock(), role="marketing")
        staff.create(session, COLLEAGUE, PASSWORD, runtime.clock(), role="marketing")
        staff.create(session, FRONT_DESK, PASSWORD, runtime.clock(), role="frontdesk")


def signed_in(app: Flask, email: str) -> FlaskClient:
    client = app.test_client()
    assert log_in(client, email).status_code == 303
    return client


def save(client: FlaskClient, subject: str, body: str, preheader: str = "", path: str = STEP_2) -> object:
    token = csrf_of(client.get(path))
    return client.post(path, data={"csrf_token": token, "subject": subject, "preheader": preheader,
                                   "body_markdown": body})


def inquire(runtime: Runtime, address: str, name: str, at: dt.datetime) -> None:
    with runtime.sessions.begin() as session:
        outcome = inquiries.record_inquiry(session, runtime.settings, email=address, name=name, consent=True,
                                           consent_text="Yes, you may email me about my inquiry.",
                                           source="website-contact-form", received_at=at, now=at)
        assert outcome.enrolled


def run(runtime: Runtime, clock: SettableClock, job: str, at: str) -> dict[str, object]:
    clock.now = local(at)
    return jobs.run_job(runtime, job, clock.now)


def texts(item: Received) -> tuple[str, str, str]:
    """Subject, plain text and HTML of a message, parsed from the bytes the SMTP server received."""
    message = item.message
    return (str(message["Subject"]), message.get_body(("plain",)).get_content(),
            message.get_body(("html",)).get_content())


def step_rows(runtime: Runtime, step: int) -> dict[int, int | None]:
    with runtime.sessions() as session:
        rows = session.execute(select(OutboxMessage.contact_id, OutboxMessage.step_version)
                               .where(OutboxMessage.kind == "followup", OutboxMessage.step == step)).all()
    return dict(rows)


# --- the versions a queued step keeps -----------------------------------------------------------------


def test_editing_step_2_after_it_was_queued_does_not_change_that_email(
        app: Flask, runtime: Runtime, clock: SettableClock, smtp_server: SMTPServer, accounts: None) -> None:
    """Ann's step 2 is queued, then staff save version 1; Ben's is queued, then version 2; then Cleo's.
    One delivery run sends all three: each gets the wording that was current when theirs was queued."""
    people = {"ann@example.com": "Ann Archer", "ben@example.com": "Ben Baker", "cleo@example.com": "Cleo Cole"}
    for minutes, (address, name) in zip((0, 5, 10), people.items(), strict=True):
        inquire(runtime, address, name, local("2026-11-30T10:00") + dt.timedelta(minutes=minutes))
    run(runtime, clock, "advance_followups", "2026-11-30T12:00")
    assert run(runtime, clock, "deliver", "2026-11-30T12:00")["sent"] == 3  # everyone's step 1

    # Thursday: step 2 falls due for Ann at 10:00, Ben at 10:05, Cleo at 10:10.
    assert run(runtime, clock, "advance_followups", "2026-12-03T10:01")["enqueued"] == 1
    clock.now = local("2026-12-03T10:02")
    client = signed_in(app, MARKETING)
    assert save(client, NEW_SUBJECT[1], NEW_TEXT[1]).status_code == 303
    assert run(runtime, clock, "advance_followups", "2026-12-03T10:06")["enqueued"] == 1
    clock.now = local("2026-12-03T10:07")
    assert save(client, NEW_SUBJECT[2], NEW_TEXT[2]).status_code == 303
    assert run(runtime, clock, "advance_followups", "2026-12-03T10:11")["enqueued"] == 1
    assert sorted(step_rows(runtime, 1).values()) == [0, 1, 2]
    before = len(smtp_server.received)
    assert run(runtime, clock, "deliver", "2026-12-03T10:12")["sent"] == 3

    received = {item.rcpt_tos[0]: texts(item) for item in smtp_server.received[before:]}
    assert set(received) == set(people)
    subject, plain, html = received["ann@example.com"]  # queued before any save: the template's wording
    assert subject == runtime.settings.followups.steps[1].subject
    assert TEMPLATE_TEXT in plain and TEMPLATE_TEXT in html
    assert all(text not in plain + html for text in NEW_TEXT.values())
    for address, version in (("ben@example.com", 1), ("cleo@example.com", 2)):
        subject, plain, html = received[address]
        assert subject == NEW_SUBJECT[version], address
        assert NEW_TEXT[version] in plain and NEW_TEXT[version] in html, address
        assert TEMPLATE_TEXT not in plain + html and NEW_TEXT[3 - version] not in plain + html, address
        # Saved wording keeps the frame: greeting, footer, unsubscribe, the step's own links.
        first = people[address].split()[0]
        assert f"Hi {first}," in plain and f"Hi {first}," in html
        assert runtime.settings.clinic.postal_address in plain
        assert item_unsubscribes(smtp_server, address)
        assert "Didn't contact us?" not in plain  # that link is the first step's only

    # The people after them get the newest wording; the emails already sent stay as they were.
    inquire(runtime, "dan@example.com", "Dan Dunn", local("2026-12-07T10:00"))
    for moment in ("2026-12-07T10:20", "2026-12-10T10:01"):
        run(runtime, clock, "advance_followups", moment)
        run(runtime, clock, "deliver", moment)
    last = smtp_server.received[-1]
    assert last.rcpt_tos == ["dan@example.com"] and texts(last)[0] == NEW_SUBJECT[2]


def test_a_saved_version_is_rendered_once_per_delivery_run(
        runtime: Runtime, clock: SettableClock, smtp_server: SMTPServer, accounts: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """premailer runs once for everyone's step 1 and once for version 1 of step 2, not once per person."""
    settings = runtime.settings
    people = [f"person{n}@example.com" for n in range(4)]
    for address in people:
        inquire(runtime, address, "Pat Doe", local("2026-11-30T10:00"))
    with runtime.sessions.begin() as session:
        first = steps.current(session, Renderer(settings), settings, "default", 1)
        wording.save(session, settings, current=first, subject=NEW_SUBJECT[1], preheader="", by=MARKETING,
                     body_markdown=NEW_TEXT[1], now=local("2026-11-30T09:00"))
    inlined: list[str] = []
    real_inline_css = render.inline_css
    monkeypatch.setattr(render, "inline_css", lambda document: inlined.append(document) or real_inline_css(document))
    for moment in ("2026-11-30T10:20", "2026-12-03T10:01"):
        run(runtime, clock, "advance_followups", moment)
        assert run(runtime, clock, "deliver", moment)["sent"] == len(people)
    assert len(inlined) == 2 and NEW_TEXT[1] in inlined[1]
    assert {texts(item)[0] for item in smtp_server.received[len(people):]} == {NEW_SUBJECT[1]}


def item_unsubscribes(smtp_server: SMTPServer, address: str) -> bool:
    item = next(item for item in reversed(smtp_server.received) if item.rcpt_tos == [address])
    return (item.message["List-Unsubscribe"].startswith("<https://mail.therapycentral.example/")
            and item.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click")


def test_a_step_given_another_template_in_the_config_starts_from_that_template(
        runtime: Runtime, accounts: None) -> None:
    settings = runtime.settings
    with runtime.sessions.begin() as session:
        first = steps.current(session, Renderer(settings), settings, "default", 1)
        assert first.version == 0 and TEMPLATE_TEXT in first.body_markdown
        wording.save(session, settings, current=first, subject="Finding us", preheader="", body_markdown="New text.",
                     by=MARKETING, now=runtime.clock())
        assert wording.current_number(session, settings, "default", 1) == 1
    changed = settings.model_copy(update={"followups": settings.followups.model_copy(update={"steps": [
        settings.followups.steps[0], settings.followups.steps[1].model_copy(update={"template": "invitation"}),
        settings.followups.steps[2]]})})
    with runtime.sessions() as session:
        assert wording.current_number(session, changed, "default", 1) == 0
        now_first = steps.current(session, Renderer(changed), changed, "default", 1)
    assert "here whenever you are ready" in now_first.body_markdown  # the invitation template's wording


# --- the health-word guard ------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value", "word"), [("subject", "Your Ketamine questions answered", "ketamine"),
                                                      ("preheader", "About depression and you", "depression")])
def test_a_subject_or_preheader_naming_a_treatment_is_refused_and_nothing_is_saved(
        app: Flask, runtime: Runtime, accounts: None, field: str, value: str, word: str) -> None:
    client = signed_in(app, MARKETING)
    form = {"subject": "Finding your way to us", "preheader": "", "body": NEW_TEXT[1], field: value}
    response = save(client, form["subject"], form["body"], form["preheader"])
    page = text_of(response)
    assert response.status_code == 400
    assert f"Not saved: the {field} names “{word}”" in page and "condition or treatment" in page
    assert NEW_TEXT[1] in page and value in page  # what they typed is still there to correct
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(StepVersion)) == 0
        assert session.scalar(select(func.count()).select_from(AccessEntry)
                              .where(AccessEntry.action == access_log.WORDING_SAVED)) == 0
    with runtime.sessions() as session, pytest.raises(WordingError, match=f"names “{word}”"):
        current = steps.current(session, Renderer(runtime.settings), runtime.settings, "default", 1)
        wording.save(session, runtime.settings, current=current, subject=form["subject"],
                     preheader=form["preheader"], body_markdown=form["body"], by=MARKETING, now=runtime.clock())


def test_the_body_may_name_one_with_a_warning(app: Flask, runtime: Runtime, accounts: None) -> None:
    client = signed_in(app, MARKETING)
    page = flashed(client, save(client, "What to expect", "Our ketamine sessions take about two hours."))
    assert "Saved as version 1." in page and "the body names ketamine" in page


def test_empty_or_unchanged_wording_saves_no_version(app: Flask, runtime: Runtime, accounts: None) -> None:
    client = signed_in(app, MARKETING)
    response = save(client, "   ", NEW_TEXT[1])
    assert response.status_code == 400 and "Not saved: a subject is required." in text_of(response)
    response = save(client, "Finding your way", " \n ")
    assert response.status_code == 400 and "Not saved: the body is empty." in text_of(response)
    editor = text_of(client.get(STEP_2))
    first = runtime.settings.followups.steps[1]
    body = re.search(r'<textarea id="body_markdown"[^>]*>(.*?)</textarea>', editor, re.S)[1]
    assert TEMPLATE_TEXT in body and "### Before you come" in body  # version 0, from the template, as Markdown
    page = flashed(client, save(client, first.subject, html.unescape(body), first.preheader))
    assert "Nothing was changed, so no new version was saved." in page
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(StepVersion)) == 0


# --- the history ----------------------------------------------------------------------------------------


def test_the_history_shows_who_changed_what_and_when(app: Flask, runtime: Runtime, clock: SettableClock,
                                                      accounts: None) -> None:
    def at(moment: str, who: str) -> FlaskClient:
        clock.now = local(moment)
        return signed_in(app, who)

    marta = at("2026-12-01T09:30", MARKETING)
    assert "Saved as version 1." in flashed(marta, save(marta, NEW_SUBJECT[1], NEW_TEXT[1]))
    nils = at("2026-12-02T14:05", COLLEAGUE)
    assert "Saved as version 2." in flashed(nils, save(nils, NEW_SUBJECT[1], NEW_TEXT[2]))
    marta = at("2026-12-02T16:45", MARKETING)
    assert "Saved as version 3." in flashed(marta, save(marta, NEW_SUBJECT[2], NEW_TEXT[2], "Free, behind us"))

    page = text_of(marta.get(STEP_2))
    rows = [re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", row)).strip()
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", page.split('id="history"')[1], re.S)[1:]]
    assert rows[0].startswith("3 in use Wed 2 Dec 2026, 16:45 CST marta@therapycentral.example subject, preheader")
    assert rows[1].startswith("2 Wed 2 Dec 2026, 14:05 CST nils@therapycentral.example body")
    assert rows[2].startswith("1 Tue 1 Dec 2026, 09:30 CST marta@therapycentral.example subject, preheader, body")
    assert rows[3].startswith("0 – the template “first-visit”; subject and preheader from the configuration")
    assert len(rows) == 4
    assert "Now at version 3, saved Wed 2 Dec 2026, 16:45 CST by marta@therapycentral.example" in page
    listing = text_of(marta.get("/admin/followups"))
    assert NEW_SUBJECT[2] in listing and "Wed 2 Dec 2026, 16:45 CST by marta@therapycentral.example" in listing
    with runtime.sessions() as session:
        entries = session.scalars(select(AccessEntry).where(AccessEntry.action == access_log.WORDING_SAVED)
                                  .order_by(AccessEntry.id)).all()
    assert [(e.actor, e.action, e.detail) for e in entries] == [
        (who, access_log.WORDING_SAVED, f"follow-up sequence default, step 2, version {n}")
        for n, who in ((1, MARKETING), (2, COLLEAGUE), (3, MARKETING))]
    assert [e.at for e in entries] == [local("2026-12-01T09:30"), local("2026-12-02T14:05"),
                                       local("2026-12-02T16:45")]


# --- the preview ----------------------------------------------------------------------------------------


def test_the_preview_shows_the_real_email_of_a_version_or_of_unsaved_wording(
        app: Flask, runtime: Runtime, accounts: None) -> None:
    client = signed_in(app, MARKETING)
    shown = client.get(f"{STEP_2}/preview")
    assert shown.status_code == 200 and TEMPLATE_TEXT in text_of(shown) and "Hi Sam," in text_of(shown)
    assert shown.headers["Content-Security-Policy"].startswith("sandbox; default-src 'none'")
    assert shown.headers["X-Frame-Options"] == "SAMEORIGIN"
    token = csrf_of(client.get(STEP_2))
    body = ("Come and see us.\n\n[Book a time online](https://therapycentral.example/book)\n\n"
            "<script>alert(1)</script> ![pixel](https://tracker.example/p.gif) "
            "![door](https://therapycentral.example/door.jpg)")
    draft = client.post(f"{STEP_2}/preview", data={"csrf_token": token, "subject": "Finding us", "preheader": "",
                                                   "body_markdown": body})
    document = text_of(draft)
    assert draft.status_code == 200 and "Come and see us." in document and "Finding us</h1>" in document
    assert "<script" not in document and "alert(1)" not in document and "tracker.example" not in document
    assert "https://therapycentral.example/door.jpg" in document  # the clinic's own image stays
    assert 'class="button-link' in document and "https://therapycentral.example/book" in document  # a button
    assert TEMPLATE_TEXT not in document
    refused = client.post(f"{STEP_2}/preview", data={"csrf_token": token, "subject": "Ketamine and you",
                                                     "preheader": "", "body_markdown": "Text."})
    assert refused.status_code == 400 and "cannot be saved: the subject names “ketamine”" in text_of(refused)
    with runtime.sessions() as session:  # a preview saves nothing
        assert session.scalar(select(func.count()).select_from(StepVersion)) == 0
    save(client, "Finding us", "Version one.")
    save(client, "Finding us", "Version two.")
    assert "Version one." in text_of(client.get(f"{STEP_2}/preview?version=1"))
    assert "Version two." in text_of(client.get(f"{STEP_2}/preview"))
    assert TEMPLATE_TEXT in text_of(client.get(f"{STEP_2}/preview?version=0"))
    assert client.get(f"{STEP_2}/preview?version=7").status_code == 404
    assert client.get("/admin/followups/default/4").status_code == 404
    assert client.get("/admin/followups/nosuch/1").status_code == 404


def test_only_the_editor_page_may_run_its_one_script(app: Flask, runtime: Runtime, accounts: None) -> None:
    client = signed_in(app, MARKETING)
    editor = client.get(STEP_2)
    policy = editor.headers["Content-Security-Policy"]
    script = re.search(r"<script>(.*?)</script>", text_of(editor), re.S)[1]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in policy and "frame-ancestors 'none'" in policy
    for other in ("/admin/followups", "/admin/campaigns"):
        assert "script-src" not in client.get(other).headers["Content-Security-Policy"]


def test_every_step_of_every_sequence_starts_from_its_template(runtime: Runtime) -> None:
    settings = runtime.settings
    renderer = Renderer(settings)
    values = sample_values(settings.web.base_url)
    for sequence in settings.followups.all_sequences:
        for index, step in enumerate(sequence.steps):
            first = steps.first_version(renderer, settings, sequence.name, index)
            assert (first.version, first.subject, first.preheader) == (0, step.subject, step.preheader)
            assert first.body_markdown.strip() and "Warm regards," in first.body_markdown
            assert "Hi " not in first.body_markdown  # the greeting belongs to the frame
            # Saved unchanged as version 1, it reads as the template does (buttons and links included).
            again = Wording(sequence.name, index, 1, step.template, step.subject, step.preheader,
                            first.body_markdown)
            shipped = steps.prepare_step(renderer, settings, index, sequence.name).html.fill(values)
            saved = steps.prepare_step(renderer, settings, index, sequence.name, again).html.fill(values)
            assert words(saved) == words(shipped), step.template
            assert links(saved) == links(shipped), step.template


def words(document: str) -> list[str]:
    return re.findall(r"[\w'’]+", html.unescape(re.sub(r"<[^>]+>", " ", document)).lower())


def links(document: str) -> list[str]:
    return re.findall(r'href="([^"]+)"', document)


# --- roles ----------------------------------------------------------------------------------------------


def test_marketing_edits_wording_and_the_front_desk_may_not(app: Flask, runtime: Runtime, accounts: None) -> None:
    marketing, front_desk = signed_in(app, MARKETING), signed_in(app, FRONT_DESK)
    assert marketing.get("/admin/followups").status_code == 200
    assert 'href="/admin/followups"' in text_of(marketing.get("/admin/campaigns"))  # in the navigation
    assert 'href="/admin/followups"' not in text_of(front_desk.get("/admin/inquiries"))
    token = csrf_of(front_desk.get("/admin/inquiries"))
    form = {"csrf_token": token, "subject": "Hello", "preheader": "", "body_markdown": "Text."}
    for method, path in (("GET", "/admin/followups"), ("GET", STEP_2), ("POST", STEP_2), ("GET", f"{STEP_2}/preview"),
                         ("POST", f"{STEP_2}/preview")):
        response = front_desk.open(path, method=method, data=form if method == "POST" else None)
        assert response.status_code == 403, (method, path)
        assert "not part of the frontdesk role" in text_of(response)
    assert "Saved as version 1." in flashed(marketing, save(marketing, "Hello", "Text."))
    with runtime.sessions() as session:
        assert session.scalars(select(StepVersion.created_by)).all() == [MARKETING]
