"""Several follow-up sequences: chosen by the inquiry's source or service, one at a time per person, each
with its own templates all the way to a real SMTP server; the single [[followups.steps]] still works."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, select

from mailer import config, db, jobs
from mailer.config import ConfigError, Settings
from mailer.models import Contact, Enrollment
from mailer.outbound.transport import make_transport
from mailer.publishing.render import Recipient, Renderer, sample_values
from mailer.runtime import Runtime, fixed_clock
from mailer.sequences import followups
from tests.smtp_server import SMTPServer
from tests.web_fixtures import SettableClock

ZONE = ZoneInfo("America/Chicago")
AUTH = {"Authorization": "Bearer test-intake-token"}

SEQUENCES = '''
[[followups.sequences]]
name = "evening"
match = ["evening-form", "Evening-Sessions"]

[[followups.sequences.steps]]
after = "PT15M"
template = "invitation"
subject = "Evening appointments: we are here when you are ready"

[[followups.sequences]]
name = "default"

[[followups.sequences.steps]]
after = "PT15M"
template = "thank-you"
subject = "Thank you for getting in touch with Therapy Central"

[[followups.sequences.steps]]
after = "P3D"
template = "first-visit"
subject = "What a first visit with us looks like"

'''


def local(wall: str) -> dt.datetime:
    return dt.datetime.fromisoformat(wall).replace(tzinfo=ZONE).astimezone(dt.UTC)


def with_sequences(config_path: Path, sequences: str = SEQUENCES) -> Path:
    """The test config with its [[followups.steps]] replaced by these [[followups.sequences]]."""
    content = re.sub(r"(?ms)^\[\[followups\.steps\]\]\n.*?(?=^\[)", "", config_path.read_text())
    config_path.write_text(content.replace("[delivery]\n", sequences + "[delivery]\n", 1))
    return config_path


@pytest.fixture
def settings(config_path: Path, environ: dict[str, str], smtp_server: SMTPServer) -> Settings:
    """Two sequences, delivered by SMTP (replaces conftest's settings)."""
    return config.load(with_sequences(config_path), {**environ, "MAILER_SMTP_URL": smtp_server.url})


# --- configuration -------------------------------------------------------------------------------


def test_the_single_list_of_steps_still_loads_as_the_default_sequence(config_path: Path) -> None:
    settings = config.load(config_path, {"MAILER_SECRET_KEY": "k" * 20})
    (default,) = settings.followups.all_sequences
    assert default.name == "default" and default.steps == settings.followups.steps and len(default.steps) == 3
    assert settings.followups.choose("anything", "at all") == default


def test_sequences_are_chosen_by_source_or_service_first_match_first(settings: Settings) -> None:
    followups_ = settings.followups
    assert [s.name for s in followups_.all_sequences] == ["evening", "default"]
    assert followups_.choose("evening-form").name == "evening"
    assert followups_.choose("website", "evening-sessions").name == "evening"  # case does not matter
    assert followups_.choose("website", "").name == "default"
    assert followups_.choose("", "").name == "default"


@pytest.mark.parametrize(("extra", "error"), [
    ("[[followups.steps]]\nafter = \"PT1H\"\ntemplate = \"thank-you\"\nsubject = \"Hi\"\n\n",
     'followups: steps and a sequence named "default" are both set: keep one of them'),
    (SEQUENCES.split("[[followups.sequences]]\nname = \"default\"")[0],
     "followups: sequences: the name 'evening' is used twice"),
    ("[[followups.sequences]]\nname = \"Evening Clinic\"\n[[followups.sequences.steps]]\nafter = \"PT1H\"\n"
     "template = \"thank-you\"\nsubject = \"Hi\"\n\n",
     "followups.sequences.2.name: String should match pattern '^[a-z0-9][a-z0-9_-]*$'"),
    ("[[followups.sequences]]\nname = \"late\"\n\n", "followups.sequences.2.steps: missing"),
    ("[[followups.sequences]]\nname = \"late\"\n[[followups.sequences.steps]]\nafter = \"P3D\"\n"
     "template = \"thank-you\"\nsubject = \"A\"\n[[followups.sequences.steps]]\nafter = \"P1D\"\n"
     "template = \"thank-you\"\nsubject = \"B\"\n\n",
     "followups.sequences.2: steps must be in the order of their 'after' delays"),
])
def test_bad_sequences_are_one_line_errors_naming_the_key(config_path: Path, extra: str, error: str) -> None:
    with_sequences(config_path, SEQUENCES + extra)
    with pytest.raises(ConfigError) as raised:
        config.load(config_path, {"MAILER_SECRET_KEY": "k" * 20})
    assert str(raised.value) == f"{config_path}: {error}"


def test_clinic_booking_url_must_be_a_web_address(config_path: Path) -> None:
    config_path.write_text(config_path.read_text().replace('booking_url = "https://therapycentral.example/book"',
                                                           'booking_url = "therapycentral.example/book"'))
    with pytest.raises(ConfigError, match=r"clinic\.booking_url: expected an absolute http\(s\) URL"):
        config.load(config_path, {"MAILER_SECRET_KEY": "k" * 20})


# --- enrolment and delivery -----------------------------------------------------------------------


def inquire(client: FlaskClient, email: str, source: str, service: str = "") -> None:
    answer = client.post("/api/inquiries", headers=AUTH, json={
        "email": email, "name": email.split("@")[0].title(), "consent": True, "consent_text": "Yes, email me.",
        "source": source, "service": service})
    assert answer.status_code == 201, answer.get_json()


def sequence_of(engine: Engine) -> dict[str, tuple[str, str]]:
    with db.session_factory(engine)() as session:
        return {email: (sequence, status) for email, sequence, status in session.execute(
            select(Contact.email, Enrollment.sequence, Enrollment.status).join(Enrollment,
                                                                                Enrollment.contact_id == Contact.id))}


def tick(settings: Settings, engine: Engine, now: dt.datetime) -> None:
    runtime = Runtime(settings, clock=fixed_clock(now), engine_override=engine,
                      transport_override=make_transport(settings))
    jobs.run_job(runtime, "advance_followups", now)
    jobs.run_job(runtime, "deliver", now)


def test_each_person_gets_their_sequence_and_its_own_templates(client: FlaskClient, settings: Settings,
                                                               engine: Engine, clock: SettableClock,
                                                               smtp_server: SMTPServer) -> None:
    inquire(client, "eve@example.com", "evening-form")
    inquire(client, "sam@example.com", "website", service="Evening-Sessions")
    inquire(client, "dee@example.com", "website")
    assert sequence_of(engine) == {"eve@example.com": ("evening", "active"), "sam@example.com": ("evening", "active"),
                                   "dee@example.com": ("default", "active")}
    # One delivery run sends step 1 of both sequences: each keeps its own template and subject.
    tick(settings, engine, clock.now + dt.timedelta(minutes=20))
    subjects = {item.rcpt_tos[0]: item.message["Subject"] for item in smtp_server.received}
    assert subjects == {"eve@example.com": "Evening appointments: we are here when you are ready",
                        "sam@example.com": "Evening appointments: we are here when you are ready",
                        "dee@example.com": "Thank you for getting in touch with Therapy Central"}
    evening = smtp_server.messages_to("eve@example.com")[0].get_body(("plain",)).get_content()
    assert "Book a time online: https://therapycentral.example/book" in evening  # clinic.booking_url
    # The one-step sequence ends; the other goes on.
    for days in (1, 4):
        tick(settings, engine, clock.now + dt.timedelta(days=days))
    assert sequence_of(engine)["eve@example.com"] == ("evening", "completed")
    assert len(smtp_server.messages_to("dee@example.com")) == 2


def test_a_person_in_a_running_sequence_is_not_sent_a_second_one(client: FlaskClient, settings: Settings,
                                                                 engine: Engine, clock: SettableClock) -> None:
    inquire(client, "dee@example.com", "website")
    clock.advance(days=2)  # past the duplicate window: a real second inquiry, about another service
    inquire(client, "dee@example.com", "evening-form")
    assert sequence_of(engine) == {"dee@example.com": ("default", "active")}


def test_a_sequence_removed_from_the_settings_stops_its_enrollments(client: FlaskClient, settings: Settings,
                                                                    engine: Engine, clock: SettableClock,
                                                                    smtp_server: SMTPServer) -> None:
    inquire(client, "eve@example.com", "evening-form")
    without = settings.model_copy(update={"followups": settings.followups.model_copy(
        update={"sequences": [s for s in settings.followups.sequences if s.name != "evening"]})})
    tick(without, engine, clock.now + dt.timedelta(minutes=20))
    assert smtp_server.received == []
    with Runtime(settings, engine_override=engine).sessions() as session:
        enrollment = session.scalars(select(Enrollment)).one()
    assert (enrollment.status, enrollment.stop_reason) == ("stopped", "sequence_removed")


def test_booking_url_in_every_followup_template_and_the_website_without_it(settings: Settings) -> None:
    renderer = Renderer(settings)
    values = sample_values(settings.web.base_url)
    for sequence in settings.followups.all_sequences:
        for index, step in enumerate(sequence.steps):
            prepared = followups.prepare_step(renderer, settings, index, sequence.name)
            data = prepared.build(Recipient("sam@example.com", "Sam", values, "<1.a@x>"), dt.datetime.now(dt.UTC))
            if step.template in ("invitation", "first-visit"):
                # Decoded: quoted-printable may fold a long line in the middle of the link.
                html = email.message_from_bytes(data, policy=email.policy.default).get_body(("html",)).get_content()
                assert 'href="https://therapycentral.example/book"' in html, step.template
    none = settings.model_copy(update={"clinic": settings.clinic.model_copy(update={"booking_url": ""})})
    prepared = followups.prepare_step(Renderer(none), none, 0, "evening")
    text = prepared.text.fill(values)
    assert "Book a time online: https://therapycentral.example/\n" in text and "/book" not in text
