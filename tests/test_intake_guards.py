"""The intake webhook cannot start follow-ups to any address at will (limits per address and per client,
Idempotency-Key, "Didn't contact us?" in the first follow-up, no restart soon after a completed sequence);
unconfirmed sign-ups are purged by housekeeping, which `mailer tick` runs when it is due."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from mailer import audience
from mailer.cli import main
from mailer.config import Settings
from mailer.models import ConsentEvent, Contact, Enrollment, Inquiry, IntakeKey, OutboxMessage, Subscription
from mailer.runtime import Runtime
from mailer.web import create_app
from tests.test_followups import local, smtp_runtime  # noqa: F401  (a fixture)
from tests.web_fixtures import SettableClock

AUTH = {"Authorization": "Bearer test-intake-token"}


def body(email: str = "jordan.lee@example.com", consent: bool = True) -> dict[str, object]:
    return {"email": email, "name": "Jordan Lee", "consent": consent, "consent_text": "Yes, email me.",
            "source": "website", "message": "Do you have evening appointments?"}


def count(runtime: Runtime, model, *where) -> int:  # noqa: ANN001
    with runtime.sessions() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where))


# --- per address, per client, Idempotency-Key ---------------------------------------------------------


def test_one_new_enrollment_per_address_per_duplicate_window(client: FlaskClient, runtime: Runtime,
                                                             clock: SettableClock) -> None:
    for _ in range(3):
        assert client.post("/api/inquiries", json=body(), headers=AUTH).status_code == 201
        clock.advance(hours=2)
    assert count(runtime, Inquiry) == 3 and count(runtime, Enrollment) == 1  # stored for staff, one sequence


def test_each_client_address_gets_so_many_intakes_an_hour(runtime: Runtime, settings: Settings,
                                                           clock: SettableClock) -> None:
    limited = settings.model_copy(update={"web": settings.web.model_copy(update={"intake_per_client_per_hour": 3})})
    client = create_app(Runtime(limited, clock=clock, engine_override=runtime.engine)).test_client()
    statuses = [client.post("/api/inquiries", json=body(f"person{n}@example.com"), headers=AUTH,
                            environ_base={"REMOTE_ADDR": "198.51.100.7"}).status_code for n in range(4)]
    assert statuses == [201, 201, 201, 429]
    assert count(runtime, Inquiry) == 3 and count(runtime, Contact) == 3  # the refused one created nothing
    other = client.post("/api/inquiries", json=body("other@example.com"), headers=AUTH,
                        environ_base={"REMOTE_ADDR": "198.51.100.8"})
    assert other.status_code == 201
    clock.advance(hours=1, minutes=1)
    assert client.post("/api/inquiries", json=body("later@example.com"), headers=AUTH,
                       environ_base={"REMOTE_ADDR": "198.51.100.7"}).status_code == 201


def test_the_same_idempotency_key_returns_the_first_answer_and_creates_nothing(
        client: FlaskClient, runtime: Runtime, clock: SettableClock) -> None:
    headers = {**AUTH, "Idempotency-Key": "form-7f3c2a"}
    first = client.post("/api/inquiries", json=body(), headers=headers)
    assert first.status_code == 201
    clock.advance(hours=23)
    again = client.post("/api/inquiries", json=body("someone.else@example.com"), headers=headers)
    assert (again.status_code, again.json) == (201, first.json)
    assert count(runtime, Inquiry) == 1 and count(runtime, Contact) == 1
    with runtime.sessions() as session:
        assert "form-7f3c2a" not in session.scalar(select(IntakeKey.key_hash))  # kept as a keyed hash
    clock.advance(hours=2)  # 25 hours after the first: the key is new again
    later = client.post("/api/inquiries", json=body("someone.else@example.com"), headers=headers)
    assert later.status_code == 201 and later.json != first.json
    assert count(runtime, Inquiry) == 2


@pytest.mark.parametrize("key", ["", "   ", "ключ", "x" * 256])
def test_a_bad_idempotency_key_is_400(client: FlaskClient, runtime: Runtime, key: str) -> None:
    response = client.post("/api/inquiries", json=body(), headers={**AUTH, "Idempotency-Key": key})
    assert response.status_code == 400 and response.json["error"].startswith("Idempotency-Key:")
    assert count(runtime, Inquiry) == 0


# --- "Didn't contact us? Let us know" ---------------------------------------------------------------------


def test_the_first_follow_up_carries_a_link_that_stops_everything(smtp_runtime, client: FlaskClient,  # noqa: F811
                                                                  runtime: Runtime, smtp_server,  # noqa: ANN001
                                                                  clock: SettableClock) -> None:
    settings, tick = smtp_runtime
    clock.now = local("2026-11-23T10:00")
    assert client.post("/api/inquiries", json=body(), headers=AUTH).status_code == 201
    tick(local("2026-11-23T10:15"))
    (first,) = smtp_server.received
    text = first.message.get_body(("plain",)).get_content()
    html = first.message.get_body(("html",)).get_content()
    assert "Didn't contact us? Let us know" in text and "Didn't contact us?" in html
    link = re.search(r"(https://mail\.therapycentral\.example/not-me/\S+)", text).group(1)
    path = link.removeprefix("https://mail.therapycentral.example")
    assert path in html

    page = client.get(path)  # a link scanner's GET changes nothing
    assert page.status_code == 200 and "It was not me: stop all emails" in page.get_data(as_text=True)
    assert count(runtime, Enrollment, Enrollment.status == "active") == 1
    done = client.post(path)
    assert done.status_code == 200 and "Thank you for letting us know" in done.get_data(as_text=True)
    with runtime.sessions() as session:
        enrollment = session.scalar(select(Enrollment))
        assert (enrollment.status, enrollment.stop_reason) == ("stopped", "not_me")
        withdrawal = session.scalar(select(ConsentEvent).where(ConsentEvent.action == "withdrawn"))
        assert (withdrawal.purpose, withdrawal.source) == ("followups", "not-me-link")
        contact = session.scalar(select(Contact))
        assert audience.suppression_for(session, settings.secret_key, contact) is not None
    assert client.post(path).status_code == 200  # a repeat is harmless
    for day in range(1, 12):
        tick(local("2026-11-23T12:00") + dt.timedelta(days=day))
    assert len(smtp_server.received) == 1
    assert client.get(path.replace("not-me", "unsubscribe")).status_code == 404  # each purpose its own token


def test_a_tampered_not_me_link_is_404(client: FlaskClient) -> None:
    assert client.get("/not-me/1.AAAAAAAAAAAAAAAAAAAAAA").status_code == 404
    assert client.post("/not-me/garbage").status_code == 404


def test_only_the_first_step_says_it(settings: Settings) -> None:
    from mailer.publishing.render import Renderer, sample_values
    from mailer.sequences import followups

    renderer = Renderer(settings)
    texts = [followups.prepare_step(renderer, settings, step).text.fill(sample_values(settings.web.base_url))
             for step in range(len(settings.followups.steps))]
    assert ["Didn't contact us?" in text for text in texts] == [True, False, False]


# --- a completed sequence does not restart within followups.restart_after ---------------------------------


def test_a_completed_sequence_does_not_restart_from_a_new_form_post_too_soon(client: FlaskClient,
                                                                             runtime: Runtime,
                                                                             clock: SettableClock) -> None:
    assert client.post("/api/inquiries", json=body(), headers=AUTH).status_code == 201
    with runtime.sessions.begin() as session:  # the three steps went out; the last one a week later
        session.execute(update(Enrollment).values(status="completed", next_step=3, next_due_at=None,
                                                  last_sent_at=clock.now + dt.timedelta(days=7)))
    clock.advance(days=37)  # 30 days after the last step
    assert client.post("/api/inquiries", json=body(), headers=AUTH).status_code == 201
    assert count(runtime, Enrollment) == 1 and count(runtime, Inquiry) == 2
    clock.advance(days=61)  # 91 days after the last step
    assert client.post("/api/inquiries", json=body(), headers=AUTH).status_code == 201
    assert count(runtime, Enrollment, Enrollment.status == "active") == 1 and count(runtime, Enrollment) == 2


# --- finding 10: unconfirmed sign-ups are purged; `mailer tick` runs housekeeping when due ----------------


def tick_at(config_path: Path, environ: dict[str, str], at: str) -> str:
    result = CliRunner().invoke(main, ["--config", str(config_path), "tick", "--at", at], env=environ)
    assert result.exit_code == 0, result.output
    return result.output


def test_unconfirmed_sign_ups_are_purged_after_pending_days(client: FlaskClient, runtime: Runtime,
                                                            config_path: Path, environ: dict[str, str]) -> None:
    signed_up = dt.datetime(2026, 11, 2, 15, 0, tzinfo=dt.UTC)
    runtime.clock.now = signed_up  # type: ignore[attr-defined]
    client.post("/subscribe", data={"email": "pending@example.com", "name": "Pat Pending"},
                headers={"User-Agent": "Firefox"})
    client.post("/subscribe", data={"email": "asked@example.com"})
    with runtime.sessions.begin() as session:
        audience.staff_subscribe(session, runtime.settings.secret_key, runtime.settings.topics,
                                 email="active@example.com", name="", topic_names=["newsletter"],
                                 source="front desk", now=signed_up)
        from mailer.sequences import inquiries

        inquiries.record_inquiry(session, runtime.settings, email="asked@example.com", name="", consent=False,
                                 consent_text="", source="phone", received_at=signed_up, now=signed_up)
    assert count(runtime, OutboxMessage, OutboxMessage.kind == "confirm") == 2

    output = tick_at(config_path, environ, "2026-12-01T04:00")  # 29 days on: kept
    assert "housekeeping: " in output and "unconfirmed_purged 0" in output
    assert "housekeeping" not in tick_at(config_path, environ, "2026-12-01T12:00")  # once a day
    output = tick_at(config_path, environ, "2026-12-03T03:45")  # 31 days on
    assert "unconfirmed_purged 1" in output
    with runtime.sessions() as session:
        emails = set(session.scalars(select(Contact.email)))
        assert emails == {"active@example.com", "asked@example.com"}  # an inquiry keeps a person on file
        ledger = session.scalars(select(ConsentEvent.user_agent)).all()
        assert "Firefox" not in ledger
        assert session.scalar(select(func.count()).select_from(Subscription)) == 2
        assert session.scalar(select(func.count()).select_from(OutboxMessage)
                              .where(OutboxMessage.kind == "confirm")) == 1  # asked@'s, still on file
