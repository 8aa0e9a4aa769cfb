"""The welcome email after a confirmed sign-up, on both databases, through the real SMTP fixture."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from flask.testing import FlaskClient
from sqlalchemy import select

from mailer import audience
from mailer.config import Settings, parse_smtp_url
from mailer.models import ConsentEvent, Contact, OutboxMessage
from mailer.outbound.delivery import Delivery
from mailer.outbound.transport import SMTPTransport
from mailer.runtime import Runtime
from mailer.web import create_app
from tests.smtp_server import SMTPServer

BASE = "https://mail.therapycentral.example"


def deliver(runtime: Runtime, server: SMTPServer) -> None:
    transport = SMTPTransport(parse_smtp_url(server.url), timeout=5.0, local_hostname="mailer.test")
    Delivery(runtime.settings, runtime.engine, transport, runtime.clock, runtime.kinds).run()


def sign_up_and_confirm(client: FlaskClient, runtime: Runtime, server: SMTPServer, email: str) -> str:
    """Sign up through the form and press the confirm button behind the link the email carries."""
    client.post("/subscribe", data={"email": email, "name": "Rea Der"})
    deliver(runtime, server)
    (confirmation,) = server.messages_to(email)
    url = re.search(r"https://\S+/confirm/\S+", confirmation.get_body(("plain",)).get_content()).group(0)
    assert client.post(urlsplit(url).path).status_code == 200
    return url


def test_a_confirmed_sign_up_gets_one_welcome_email(client: FlaskClient, runtime: Runtime,
                                                     smtp_server: SMTPServer) -> None:
    url = sign_up_and_confirm(client, runtime, smtp_server, "reader@example.com")
    client.post(urlsplit(url).path)  # confirming again changes nothing and sends nothing more
    deliver(runtime, smtp_server)
    messages = smtp_server.messages_to("reader@example.com")
    assert len(messages) == 2
    welcome = messages[1]
    assert welcome["Subject"] == "Welcome to Therapy Central"
    assert welcome["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    html = welcome.get_body(("html",)).get_content()
    text = welcome.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert "Hi Rea," in html and "Hi Rea," in text
    assert f'href="{BASE}/archive"' in html and f"{BASE}/archive\n" in text
    preferences = re.search(re.escape(BASE) + r"/preferences/[A-Za-z0-9._-]+", html).group(0)
    assert preferences in text
    page = client.get(urlsplit(preferences).path)
    assert page.status_code == 200 and "Your email preferences" in page.get_data(as_text=True)
    assert client.get("/archive").status_code == 200
    with runtime.sessions() as session:
        contact = session.scalar(select(Contact).where(Contact.email == "reader@example.com"))
        row = session.scalar(select(OutboxMessage).where(OutboxMessage.kind == "welcome"))
        confirmed = session.scalar(select(ConsentEvent).where(ConsentEvent.contact_id == contact.id,
                                                              ConsentEvent.action == "confirmed"))
        assert row.state == "sent" and row.contact_id == contact.id and row.consent_event_id == confirmed.id


def test_no_welcome_when_turned_off(settings: Settings, runtime: Runtime, smtp_server: SMTPServer) -> None:
    off = settings.model_copy(update={"newsletter": settings.newsletter.model_copy(update={"welcome": False})})
    quiet = Runtime(off, clock=runtime.clock, engine_override=runtime.engine)
    client = create_app(quiet).test_client()
    sign_up_and_confirm(client, quiet, smtp_server, "reader@example.com")
    deliver(quiet, smtp_server)
    assert [m["Subject"] for m in smtp_server.messages_to("reader@example.com")] == [
        "Please confirm your subscription to Therapy Central"]
    with quiet.sessions() as session:
        assert session.scalar(select(OutboxMessage).where(OutboxMessage.kind == "welcome")) is None


def test_a_welcome_is_not_sent_after_an_unsubscribe(client: FlaskClient, runtime: Runtime,
                                                     smtp_server: SMTPServer) -> None:
    sign_up_and_confirm(client, runtime, smtp_server, "reader@example.com")
    with runtime.sessions.begin() as session:
        contact = audience.find_contact(session, "reader@example.com")
        audience.unsubscribe_all(session, runtime.settings.secret_key, contact, source="one-click",
                                 now=runtime.clock())
    deliver(runtime, smtp_server)
    assert len(smtp_server.messages_to("reader@example.com")) == 1  # only the confirmation
    with runtime.sessions() as session:
        assert session.scalar(select(OutboxMessage.state).where(OutboxMessage.kind == "welcome")) == "skipped"
