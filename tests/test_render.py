"""Render once, personalise cheaply: the assembled bytes mean what the `email` package would make."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
from email.headerregistry import Address
from email.message import EmailMessage
from types import SimpleNamespace

import pytest

from mailer import config
from mailer.publishing import render
from tests.conftest import ROOT

NOW = dt.datetime(2026, 11, 23, 0, 0, tzinfo=dt.UTC)


@pytest.fixture
def plain_settings(tmp_path) -> config.Settings:  # noqa: ANN001
    return config.load(ROOT / "config.toml", {"MAILER_SECRET_KEY": "k" * 20,
                                               "MAILER_BASE_URL": "https://mail.therapycentral.example"})


def campaign(subject: str = "Therapy Central: Ketamines for Anxiety and Depression") -> SimpleNamespace:
    post = SimpleNamespace(
        title="Ketamines for Anxiety & Depression: How do they Work?",
        link="https://therapycentral.example/ketamines/",
        summary="How it works, in plain words.",
        content_html='<p>First paragraph with <a href="https://therapycentral.example/a">a link</a>.</p>'
                     "<p>Ünïcode and a very long line " + "word " * 40 + "</p>",
        published_at=dt.datetime(2023, 9, 1, 15, tzinfo=dt.UTC),
    )
    return SimpleNamespace(kind="newsletter", subject=subject, preheader="", intro="Hello from the clinic.",
                           body_markdown="", posts=[post], id=1, topic="newsletter", archived=False)


def reference(settings: config.Settings, prepared: render.PreparedMessage, recipient: render.Recipient,
              date: dt.datetime) -> EmailMessage:
    """What the email package builds for the same recipient: the slow path we replaced."""
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = f"{settings.sender.from_name} <{settings.sender.from_email}>"
    message["Reply-To"] = settings.sender.reply_to
    message["To"] = Address(display_name=recipient.name, addr_spec=recipient.email)
    message["Subject"] = prepared.subject
    message["Date"] = email.utils.format_datetime(date)
    message["Message-ID"] = recipient.message_id
    message["List-Unsubscribe"] = f"<{recipient.values['unsubscribe_url']}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(prepared.text.fill(recipient.values))
    message.add_alternative(prepared.html.fill(recipient.values), subtype="html")
    return message


@pytest.mark.parametrize("name", ["Riley Chen", "Zoë Ångström-Łukasz", "O'Brien, \"Pat\"", ""])
def test_assembled_message_matches_the_email_package(plain_settings: config.Settings, name: str) -> None:
    renderer = render.Renderer(plain_settings)
    prepared = renderer.prepare_campaign(campaign())
    values = {"first_name": render.first_name(name) or "there",
              "unsubscribe_url": "https://mail.therapycentral.example/unsubscribe/12.abc",
              "preferences_url": "https://mail.therapycentral.example/preferences/12.def"}
    recipient = render.Recipient("riley.chen@example.com", name, values, "<12.x@therapycentral.example>")
    ours = email.message_from_bytes(prepared.build(recipient, NOW), policy=email.policy.default)
    theirs = email.message_from_bytes(reference(plain_settings, prepared, recipient, NOW).as_bytes(),
                                      policy=email.policy.default)

    for header in ("From", "Reply-To", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe",
                   "List-Unsubscribe-Post", "MIME-Version"):
        assert str(ours[header]) == str(theirs[header]), header
    assert ours["To"].addresses[0].display_name == name
    assert ours.get_content_type() == theirs.get_content_type() == "multipart/alternative"
    our_parts = [(p.get_content_type(), p.get_content_charset(), p.get_content()) for p in ours.iter_parts()]
    their_parts = [(p.get_content_type(), p.get_content_charset(), p.get_content()) for p in theirs.iter_parts()]
    assert [p[:2] for p in our_parts] == [("text/plain", "utf-8"), ("text/html", "utf-8")]
    assert [p[:2] for p in our_parts] == [p[:2] for p in their_parts]
    for (_, _, ours_text), (_, _, theirs_text) in zip(our_parts, their_parts, strict=True):
        assert ours_text.replace("\r\n", "\n") == theirs_text.replace("\r\n", "\n")


def test_raw_bytes_respect_line_limits_and_crlf(plain_settings: config.Settings) -> None:
    prepared = render.Renderer(plain_settings).prepare_campaign(campaign())
    raw = prepared.build(render.Recipient("a@example.com", "Ä" * 60, render.sample_values("https://x.example"),
                                          "<1.a@therapycentral.example>"), NOW)
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert max(len(line) for line in body.split(b"\r\n")) <= 78
    assert raw.isascii()


def test_personal_values_are_escaped_and_cannot_inject_headers(plain_settings: config.Settings) -> None:
    prepared = render.Renderer(plain_settings).prepare_campaign(campaign(subject="Hello\r\nBcc: evil@example.net"))
    hostile = 'Eve\r\nBcc: victim@example.net <script>alert(1)</script>'
    values = {**render.sample_values("https://x.example"), "first_name": hostile}
    raw = prepared.build(render.Recipient("eve@example.com", hostile, values, "<2.a@therapycentral.example>"), NOW)
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["Bcc"] is None
    assert "\n" not in str(message["Subject"]) and "Bcc" in str(message["Subject"])  # kept as text, on one line
    html_part = message.get_body(("html",)).get_content()
    assert "<script>" not in html_part and "&lt;script&gt;" in html_part


def test_inlined_styles_absolute_links_no_script(plain_settings: config.Settings) -> None:
    prepared = render.Renderer(plain_settings).prepare_campaign(campaign())
    html_doc = prepared.html.fill(render.sample_values("https://mail.therapycentral.example"))
    assert 'style="' in html_doc and "<script" not in html_doc
    assert "Ketamines for Anxiety &amp; Depression" in html_doc
    assert "1200 Summit Ave" in html_doc  # the postal address in the footer
    hrefs = re.findall(r'href="([^"]+)"', html_doc)
    assert hrefs and all(h.startswith(("https://", "http://", "mailto:")) for h in hrefs)
    text_doc = prepared.text.fill(render.sample_values("https://mail.therapycentral.example"))
    assert "Unsubscribe with one click: https://mail.therapycentral.example/unsubscribe/preview" in text_doc


def test_a_template_typo_fails_loudly(plain_settings: config.Settings, tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "email").mkdir()
    (tmp_path / "email" / "broken.html").write_text("<p>{{ recipient.frist_name }}</p>")
    (tmp_path / "email" / "broken.txt").write_text("x")
    settings = plain_settings.model_copy(update={"paths": plain_settings.paths.model_copy(update={"templates": str(tmp_path)})})
    with pytest.raises(render.RenderError, match="frist_name"):
        render.Renderer(settings).prepare("email/broken", subject="s", preheader="")


@pytest.mark.parametrize("subject", ["Therapy Central: Ketamines for Anxiety and Depression: How do they Work?",
                                     "Zoë's long subject line that needs encoding and folding across lines, twice over"])
def test_long_subjects_fold_and_read_back_unchanged(plain_settings: config.Settings, subject: str) -> None:
    prepared = render.Renderer(plain_settings).prepare_campaign(campaign(subject=subject))
    raw = prepared.build(render.Recipient("a@example.com", "", render.sample_values("https://x.example"),
                                          "<3.a@therapycentral.example>"), NOW)
    assert max(len(line) for line in raw.split(b"\r\n\r\n")[0].split(b"\r\n")) <= 78
    assert email.message_from_bytes(raw, policy=email.policy.default)["Subject"] == subject


@pytest.mark.parametrize("first", ["Riley", "Zoë", "a" * 120, "=?utf-8?q?x?=", " trailing "])
def test_parts_encode_static_lines_once_with_the_same_bytes(plain_settings: config.Settings, first: str) -> None:
    prepared = render.Renderer(plain_settings).prepare_campaign(campaign())
    values = {**render.sample_values("https://mail.therapycentral.example"), "first_name": first}
    for part in (prepared.text, prepared.html):
        assert part.encoded(values) == render._qp(part.fill(values))
        assert sum(isinstance(chunk, bytes) for chunk in part.chunks) >= 2  # static runs really are reused
