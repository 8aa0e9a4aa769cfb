"""config.toml + MAILER_* environment: valid settings, or one line naming the key and the file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mailer import config
from tests.conftest import ROOT

BASE = (ROOT / "config.toml").read_text()
ENV = {"MAILER_SECRET_KEY": "s" * 32}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_the_shipped_config_is_valid_and_paths_are_relative_to_it(tmp_path: Path) -> None:
    settings = config.load(ROOT / "config.toml", ENV)
    assert settings.clinic.timezone == "America/Chicago"
    assert settings.delivery.transport == "file"
    assert settings.database.url == f"sqlite:///{ROOT / 'var' / 'mailer.db'}"
    assert settings.feed.url == str(ROOT / "mailer" / "sample" / "blog-feed.xml")
    assert [step.template for step in settings.followups.steps] == ["thank-you", "first-visit", "invitation"]


def test_every_key_in_the_shipped_config_is_commented() -> None:
    lines = BASE.splitlines()
    for number, line in enumerate(lines):
        if re.match(r"^[a-z_]+ = ", line):
            before = lines[number - 1].strip()
            # A comment, a key of the same commented group, or an array-of-tables entry explained above it.
            assert before.startswith(("#", "[[")) or re.match(r"^[a-z_]+ = ", before), f"line {number + 1}: {line}"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    settings = config.load(ROOT / "config.toml", {
        **ENV,
        "MAILER_DATABASE_URL": "postgresql+psycopg://mailer@db.internal/mailer",
        "MAILER_SMTP_URL": "smtp://user:p%40ss@relay.internal:587?starttls=true",
        "MAILER_FEED_URL": "https://therapycentral.example/feed/",
        "MAILER_BASE_URL": "https://mail.therapycentral.example/",
        "MAILER_INTAKE_TOKEN": "tok",
    })
    assert settings.database.url == "postgresql+psycopg://mailer@db.internal/mailer"
    assert settings.delivery.transport == "smtp"
    smtp = config.parse_smtp_url(settings.delivery.smtp_url)
    assert (smtp.host, smtp.port, smtp.username, smtp.password, smtp.starttls) == ("relay.internal", 587, "user", "p@ss", True)
    assert settings.feed.url == "https://therapycentral.example/feed/"
    assert settings.web.base_url == "https://mail.therapycentral.example"
    assert settings.intake_token == "tok"
    shown = repr(settings)  # what a log line or a traceback could show
    assert "p@ss" not in shown and "p%40ss" not in shown and "relay.internal" not in shown


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("name = \"Therapy Central\"\n", "\n"), "clinic.name: missing"),
        (("poll_minutes = 30", 'poll_minutes = "30"'), "feed.poll_minutes: Input should be a valid integer"),
        (("poll_minutes = 30", "poll_minutes = 30\npoll_minuts = 5"), "feed.poll_minuts: unknown key"),
        (('approval = "auto"', 'approval = "sometimes"'), "newsletter.approval: Input should be 'auto' or 'manual'"),
        (('send_time = "18:00"', 'send_time = "6pm"'), 'newsletter.send_time: expected a local time as "HH:MM"'),
        (('timezone = "America/Chicago"', 'timezone = "Mars/Olympus"'), "clinic.timezone: unknown IANA time zone"),
        (('after = "P3D"', 'after = "three days"'), "followups.steps.1.after: expected an ISO-8601 duration"),
        (('base_url = "http://127.0.0.1:8025"', 'base_url = "mail.example"'), "web.base_url: expected an absolute"),
        (('topic = "newsletter"', 'topic = "gardening"'), "newsletter.topic 'gardening' is not one of the topics"),
        (('from_email = "news@therapycentral.example"', 'from_email = "news"'), "sender.from_email: not an email address"),
        (("[clinic]", "secret_key = \"x\"\n[clinic]"), "secret_key: secrets are not read from the config file"),
        (('transport = "file"', 'transport = "smtp"'), "delivery.smtp_url (or MAILER_SMTP_URL)"),
        (("[feed]", "[feed\n"), "not valid TOML"),
        (('processes = "auto"', 'processes = "many"'), "delivery.processes: "),
        (('processes = "auto"', "processes = 0"), "delivery.processes: "),
    ],
)
def test_bad_config_names_the_key_and_the_file(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    old, new = change
    assert old in BASE
    path = write(tmp_path, BASE.replace(old, new, 1))
    with pytest.raises(config.ConfigError) as caught:
        config.load(path, ENV)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_a_bad_smtp_url_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match=r"MAILER_SMTP_URL\): expected smtp:// or smtps://"):
        config.load(ROOT / "config.toml", {**ENV, "MAILER_SMTP_URL": "http://relay"})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="config file not found"):
        config.load(tmp_path / "nope.toml", ENV)


def test_a_sensitive_follow_up_subject_warns(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace('subject = "We are here when you are ready"',
                                        'subject = "Ready for ketamine treatment?"'))
    with pytest.warns(config.ConfigWarning, match="ketamine, treatment"):
        config.load(path, ENV)


def test_without_a_secret_key_a_development_key_is_kept_under_var(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    first = config.load(path, {}).secret_key
    assert first and config.load(path, {}).secret_key == first
    assert (tmp_path / "var" / "secret.key").stat().st_mode & 0o077 == 0


def test_a_public_http_base_url_with_smtp_warns(tmp_path: Path) -> None:
    env = {**ENV, "MAILER_SMTP_URL": "smtp://relay.internal:587?starttls=true"}
    with pytest.warns(config.ConfigWarning, match="is not https"):
        config.load(ROOT / "config.toml", {**env, "MAILER_BASE_URL": "http://mail.therapycentral.example"})
    config.load(ROOT / "config.toml", {**env, "MAILER_BASE_URL": "https://mail.therapycentral.example"})
