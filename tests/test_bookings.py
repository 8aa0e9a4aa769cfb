"""POST /api/bookings: the scheduling system's booking stops the person's follow-ups, and the answer never
tells who is a contact. Both databases, through the real app."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, inspect, select, text

from mailer import config
from mailer.config import Settings
from mailer.models import Enrollment, Inquiry, OutboxMessage, StaffNotice
from mailer.runtime import Runtime
from mailer.sequences import followups, inquiries, pausing
from mailer.web import api
from tests.test_replies import write_section
from tests.web_fixtures import SettableClock

AUTH = {"Authorization": "Bearer test-intake-token"}
PERSON = "jordan.lee@example.com"
FRONT_DESK = "frontdesk@therapycentral.example"


@pytest.fixture
def settings(config_path: Path, environ: dict[str, str]) -> Settings:
    """The test config with the front desk told of bookings (replaces conftest's settings)."""
    write_section(config_path, "notify", {"staff": [FRONT_DESK], "events": ["booked"], "gather_minutes": 5})
    return config.load(config_path, environ)


@pytest.fixture
def inquired(runtime: Runtime, clock: SettableClock) -> int:
    """Jordan inquired an hour ago and agreed to follow-ups; the first one is queued. The inquiry's id."""
    received = clock.now - dt.timedelta(hours=1)
    with runtime.sessions.begin() as session:
        outcome = inquiries.record_inquiry(session, runtime.settings, email=PERSON, name="Jordan Lee", consent=True,
                                           consent_text="Yes, email me.", source="website", received_at=received,
                                           now=received)
        followups.advance(session, runtime.settings, clock.now)
    return outcome.inquiry_id


def dump(engine: Engine) -> str:
    with engine.connect() as connection:
        return "\n".join(repr(connection.execute(text(f'SELECT * FROM "{table}"')).all())
                         for table in sorted(inspect(engine).get_table_names()))


def book(client: FlaskClient, body: object, headers: dict[str, str] | None = None):  # noqa: ANN201
    return client.post("/api/bookings", json=body, headers=AUTH if headers is None else headers)


def test_a_booking_stops_the_sequence_exactly_as_mark_booked(client: FlaskClient, runtime: Runtime, engine: Engine,
                                                              clock: SettableClock, inquired: int) -> None:
    booked_at = clock.now - dt.timedelta(minutes=10)
    answer = book(client, {"email": "Jordan.Lee@Example.com", "booked_at": booked_at.isoformat(),
                           "source": "Cliniko", "appointment_type": "first visit"})
    assert (answer.status_code, answer.get_json()) == (202, {"status": "accepted"})
    with runtime.sessions() as session:
        inquiry = session.get(Inquiry, inquired)
        enrollment = session.scalars(select(Enrollment)).one()
        queued = session.execute(select(OutboxMessage.kind, OutboxMessage.state).order_by(OutboxMessage.id)).all()
        notices = session.scalars(select(StaffNotice)).all()
    assert (inquiry.status, inquiry.closed_at, inquiry.booked_at, inquiry.booked_via) == (
        "booked", clock.now, booked_at, "Cliniko")
    assert (enrollment.status, enrollment.stop_reason, enrollment.stopped_at) == ("stopped", "booked", clock.now)
    # The queued follow-up is skipped by delivery's re-check (the enrollment is no longer active); the
    # front desk's notice waits a few minutes for other events to join it.
    assert queued == [("followup", "queued"), ("notice", "queued")]
    assert [(n.recipient, [e["event"] for e in n.events]) for n in notices] == [(FRONT_DESK, ["booked"])]

    # A repeat (webhooks retry) changes nothing and tells nobody twice.
    before = dump(engine)
    clock.advance(minutes=1)
    again = book(client, {"email": PERSON, "source": "Cliniko"})
    assert (again.status_code, again.data) == (202, answer.data)
    assert dump(engine) == before


def test_an_unknown_address_gets_the_same_answer_and_changes_nothing(client: FlaskClient, engine: Engine,
                                                                     inquired: int) -> None:
    started = time.monotonic()
    known = book(client, {"email": PERSON, "source": "Cliniko"})
    known_took = time.monotonic() - started
    before = dump(engine)
    started = time.monotonic()
    unknown = book(client, {"email": "sam.stranger@example.org", "source": "Cliniko"})
    unknown_took = time.monotonic() - started
    assert dump(engine) == before
    # The known address's database writes would otherwise make its answer measurably slower.
    assert min(known_took, unknown_took) >= api.BOOKING_ANSWER_SECONDS
    assert (unknown.status_code, unknown.data) == (known.status_code, known.data)
    assert sorted(unknown.headers.keys()) == sorted(known.headers.keys())
    assert unknown.headers["Content-Length"] == known.headers["Content-Length"]


def test_a_booking_stops_a_sequence_paused_by_a_reply(client: FlaskClient, runtime: Runtime, clock: SettableClock,
                                                      inquired: int) -> None:
    with runtime.sessions.begin() as session:
        assert pausing.pause(session, session.scalars(select(Enrollment)).one(), clock.now)
    assert book(client, {"email": PERSON, "source": "Cliniko"}).status_code == 202
    with runtime.sessions() as session:
        enrollment = session.scalars(select(Enrollment)).one()
    assert (enrollment.status, enrollment.stop_reason) == ("stopped", "booked")


@pytest.mark.parametrize(("body", "field", "error"), [
    ({"source": "Cliniko"}, "email", "email: required (a string)"),
    ({"email": 7, "source": "Cliniko"}, "email", "email: required (a string)"),
    ({"email": "not an address", "source": "Cliniko"}, "email", "email: not a valid email address"),
    ({"email": PERSON}, "source", "source: required (a string naming the scheduling system)"),
    ({"email": PERSON, "source": "x" * 201}, "source", "source: longer than 200 characters"),
    ({"email": PERSON, "source": "Cliniko\nX-Injected: 1"}, "source", "source: contains control characters"),
    ({"email": PERSON, "source": "Cliniko", "booked_at": "yesterday"}, "booked_at",
     "booked_at: not an ISO-8601 date and time, e.g. 2026-11-20T17:04:00-06:00"),
    ({"email": PERSON, "source": "Cliniko", "booked_at": "2026-03-02T09:00"}, "booked_at",
     "booked_at: needs a UTC offset, e.g. 2026-11-20T17:04:00-06:00"),
    ({"email": PERSON, "source": "Cliniko", "booked_at": "2026-03-09T09:00:00Z"}, "booked_at",
     "booked_at: is in the future (it is when the booking was made)"),
    ({"email": PERSON, "source": "Cliniko", "booked_at": 1772442000}, "booked_at",
     "booked_at: must be an ISO-8601 date and time (a string)"),
    (["not", "an", "object"], None, "the body must be a JSON object"),
])
def test_a_bad_field_is_named_and_changes_nothing(client: FlaskClient, engine: Engine, inquired: int,
                                                  body: object, field: str | None, error: str) -> None:
    before = dump(engine)
    answer = book(client, body)
    assert (answer.status_code, answer.get_json()) == (400, {"error": error, "field": field})
    assert dump(engine) == before


def test_a_body_that_is_not_json(client: FlaskClient) -> None:
    answer = client.post("/api/bookings", data=b"email=jordan", headers={**AUTH, "Content-Type": "text/plain"})
    assert (answer.status_code, answer.get_json()["error"]) == (400, "the body is not valid JSON")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dGVzdA=="},
                                     {"Authorization": "test-intake-token"}])
def test_without_the_token_nothing_happens(client: FlaskClient, engine: Engine, inquired: int,
                                           headers: dict[str, str]) -> None:
    before = dump(engine)
    answer = book(client, {"email": PERSON, "source": "Cliniko"}, headers=headers)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="mailer"'
    assert dump(engine) == before
