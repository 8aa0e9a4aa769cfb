"""Test sends from the campaign page to staff and to newsletter.test_addresses (at most five, checked
when the config is read), through the real SMTP fixture, on both databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.testing import FlaskClient

from mailer import config
from mailer.config import Settings
from mailer.runtime import Runtime
from mailer.web import create_app
from tests.smtp_server import SMTPServer
from tests.test_admin import STAFF_EMAIL, cheap_hashing, draft_newsletter, flashed, log_in, post, staff_id  # noqa: F401
from tests.web_fixtures import SettableClock

EXTRA = ["phone@example.net", "Webmail.Check@example.org"]


@pytest.fixture
def client_with_extras(config_path: Path, environ: dict[str, str], runtime: Runtime, clock: SettableClock,
                       smtp_server: SMTPServer, staff_id: int) -> tuple[FlaskClient, Runtime]:  # noqa: F811
    config_path.write_text(config_path.read_text().replace("test_addresses = []",
                                                           f"test_addresses = {EXTRA!r}".replace("'", '"')))
    settings = config.load(config_path, {**environ, "MAILER_SMTP_URL": smtp_server.url})
    assert settings.newsletter.test_addresses == EXTRA
    smtp_runtime = Runtime(settings, clock=clock, engine_override=runtime.engine)
    client = create_app(smtp_runtime).test_client()
    log_in(client)
    return client, smtp_runtime


def test_a_test_to_a_staff_address_and_the_extra_addresses(client_with_extras, smtp_server: SMTPServer) -> None:  # noqa: ANN001
    client, runtime = client_with_extras
    campaign_id = draft_newsletter(runtime)
    page = client.get(f"/admin/campaigns/{campaign_id}").get_data(as_text=True)
    assert '<legend>Also send it to</legend>' in page
    assert 'name="extra" value="phone@example.net"' in page and 'value="Webmail.Check@example.org"' in page

    response = post(client, f"/admin/campaigns/{campaign_id}/test",
                    {"address": STAFF_EMAIL, "extra": EXTRA})  # type: ignore[dict-item]
    assert (f"Test sent to {STAFF_EMAIL}, phone@example.net and Webmail.Check@example.org."
            in flashed(client, response))
    assert sorted(m.rcpt_tos[0] for m in smtp_server.received) == sorted([STAFF_EMAIL, *EXTRA])
    assert all(m.message["Subject"].startswith("[TEST] ") for m in smtp_server.received)

    smtp_server.received.clear()
    only_extra = post(client, f"/admin/campaigns/{campaign_id}/test", {"address": "", "extra": "phone@example.net"})
    assert "Test sent to phone@example.net." in flashed(client, only_extra)
    typed = post(client, f"/admin/campaigns/{campaign_id}/test", {"address": "webmail.check@example.org"})
    assert "Test sent to webmail.check@example.org." in flashed(client, typed)
    assert [m.rcpt_tos for m in smtp_server.received] == [["phone@example.net"], ["webmail.check@example.org"]]


def test_other_addresses_get_no_test(client_with_extras, smtp_server: SMTPServer) -> None:  # noqa: ANN001
    client, runtime = client_with_extras
    campaign_id = draft_newsletter(runtime)
    ticked = post(client, f"/admin/campaigns/{campaign_id}/test", {"address": STAFF_EMAIL,
                                                                    "extra": "stranger@example.com"})
    assert "not one of the test addresses" in flashed(client, ticked)
    typed = post(client, f"/admin/campaigns/{campaign_id}/test", {"address": "stranger@example.com"})
    assert "is not a staff login or one of the test addresses" in flashed(client, typed)
    assert smtp_server.received == []


@pytest.mark.parametrize(("value", "error"), [
    ('["a@example.com", "b@example.com", "c@example.com", "d@example.com", "e@example.com", "f@example.com"]',
     "newsletter.test_addresses: List should have at most 5 items"),
    ('["not an address"]', "newsletter.test_addresses: not an email address: 'not an address'"),
    ('["a@example.com", "A@example.com"]', "newsletter.test_addresses: an address is listed twice"),
])
def test_test_addresses_are_checked_when_the_config_is_read(config_path: Path, environ: dict[str, str],
                                                            value: str, error: str) -> None:
    config_path.write_text(config_path.read_text().replace("test_addresses = []", f"test_addresses = {value}"))
    with pytest.raises(config.ConfigError, match=error):
        config.load(config_path, environ)


def test_the_default_config_has_no_extra_addresses(settings: Settings) -> None:
    assert settings.newsletter.test_addresses == [] and settings.newsletter.welcome is True
