"""Access and erasure from the shell, and what no staff action can undo: an opt-out or an erasure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from mailer import audience, config, db
from mailer.cli import main
from mailer.models import ConsentEvent, Contact, OutboxMessage, Suppression
from tests.smtp_server import SMTPServer


@pytest.fixture
def cli(config_path: Path, environ: dict[str, str], smtp_server: SMTPServer):  # noqa: ANN201
    env = {**environ, "MAILER_SMTP_URL": smtp_server.url}

    def invoke(*args: str, ok: bool = True):  # noqa: ANN202
        result = CliRunner().invoke(main, ["--config", str(config_path), *args], env=env, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    invoke.settings = config.load(config_path, env)
    return invoke


def count(settings: config.Settings, model, *where) -> int:  # noqa: ANN001
    engine = db.make_engine(settings.database.url)
    try:
        with db.session_factory(engine)() as session:
            return session.scalar(select(func.count()).select_from(model).where(*where))
    finally:
        engine.dispose()


def test_export_shows_profile_subscriptions_ledger_and_messages(cli) -> None:  # noqa: ANN001
    cli("subscribers", "add", "riley.chen@example.com", "--name", "Riley Chen", "--topic", "newsletter",
        "--topic", "events", "--source", "event-signup-sheet")
    cli("tick", "--at", "2026-11-23T18:00")
    data = json.loads(cli("contacts", "export", "Riley.Chen@EXAMPLE.com").output)
    assert data["profile"]["email"] == "riley.chen@example.com"
    assert {s["topic"]: s["status"] for s in data["subscriptions"]} == {"newsletter": "active", "events": "active"}
    assert [(e["purpose"], e["action"], e["source"]) for e in data["consent_ledger"]] == [
        ("topic:newsletter", "granted", "event-signup-sheet"), ("topic:events", "granted", "event-signup-sheet")]
    (message,) = data["messages"]
    assert message["kind"] == "newsletter" and message["state"] == "sent"
    assert message["consent_event_id"] == data["consent_ledger"][0]["id"]  # why they got it
    assert data["suppression"] is None


def test_erasure_keeps_only_a_keyed_hash_and_blocks_every_staff_path_back(cli, tmp_path: Path) -> None:  # noqa: ANN001
    settings = cli.settings
    cli("subscribers", "add", "riley.chen@example.com", "--name", "Riley Chen", "--source", "front-desk")
    cli("tick", "--at", "2026-11-23T18:00")
    result = cli("contacts", "erase", "riley.chen@example.com", "--yes")
    assert "keyed hash" in result.output
    assert count(settings, Contact) == 0 and count(settings, ConsentEvent) == 0
    assert count(settings, Suppression, Suppression.reason == "erased", Suppression.contact_id.is_(None)) == 1
    # The campaign's figures keep the message, without the person.
    assert count(settings, OutboxMessage, OutboxMessage.contact_id.is_(None), OutboxMessage.state == "sent") == 1
    engine = db.make_engine(settings.database.url)
    try:
        with db.session_factory(engine)() as session:
            (stored,) = session.scalars(select(Suppression.email_hash)).all()
            assert "riley" not in stored and len(stored) == 64
    finally:
        engine.dispose()

    assert "no contact with address" in cli("contacts", "export", "riley.chen@example.com", ok=False).output
    refused = cli("subscribers", "add", "riley.chen@example.com", "--source", "front-desk", ok=False)
    assert refused.exit_code == 1 and "suppression list" in refused.output
    csv_file = tmp_path / "again.csv"
    csv_file.write_text("email,name,topics,consent_source,consented_at\n"
                        "RILEY.chen@Example.com,Riley,newsletter,old-list,2026-10-01T12:00:00Z\n")
    # A suppressed address is a skipped row, reported; not an error of the import (exit status 0).
    result = cli("subscribers", "import", str(csv_file))
    assert "0 imported" in result.output and "1 skipped" in result.output
    assert "line 2: skipped: riley.chen@example.com is on the suppression list" in result.output
    assert count(settings, Contact) == 0


def test_an_unsubscribed_address_is_never_resubscribed_by_import(cli, tmp_path: Path) -> None:  # noqa: ANN001
    settings = cli.settings
    cli("subscribers", "add", "morgan.patel@example.org", "--source", "front-desk")
    engine = db.make_engine(settings.database.url)
    try:
        with db.session_factory(engine).begin() as session:
            contact = audience.find_contact(session, "morgan.patel@example.org")
            audience.unsubscribe_all(session, settings.secret_key, contact, source="one-click",
                                     now=contact.created_at)
    finally:
        engine.dispose()
    csv_file = tmp_path / "subs.csv"
    csv_file.write_text("email,name,topics,consent_source,consented_at\n"
                        "morgan.patel@example.org,Morgan,newsletter;events,event-signup-sheet,2026-10-14T18:30:00Z\n")
    result = cli("subscribers", "import", str(csv_file))
    assert "0 imported" in result.output and "line 2: skipped:" in result.output and "suppression list" in result.output
    cli("tick", "--at", "2026-11-23T18:00")
    data = json.loads(cli("contacts", "export", "morgan.patel@example.org").output)
    assert data["messages"] == [] and data["suppression"]["reason"] == "unsubscribed"
