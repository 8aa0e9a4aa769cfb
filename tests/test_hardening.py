"""What an adversarial review found at the edges: forwarded headers from proxies (trusted or not), bodies
refused at the socket, inputs that used to give a 500, and a development secret with a real relay."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import select

from mailer import staff
from mailer.cli import main
from mailer.config import Settings
from mailer.models import ConsentEvent
from mailer.runtime import Runtime
from mailer.web import create_app
from tests.smtp_server import SMTPServer
from tests.test_admin import PASSWORD, STAFF_EMAIL, log_in
from tests.test_scheduler import start_server  # noqa: F401  (a fixture)

INTAKE_HEADERS = {"Authorization": "Bearer test-intake-token"}


def with_web(settings: Settings, **changes: object) -> Settings:
    return settings.model_copy(update={"web": settings.web.model_copy(update=changes)})


# --- finding 3: X-Forwarded-For is believed from trusted proxies only --------------------------------------


def sign_up(client: FlaskClient, email: str, forwarded_for: str, peer: str) -> int:
    return client.post("/subscribe", data={"email": email}, headers={"X-Forwarded-For": forwarded_for},
                       environ_base={"REMOTE_ADDR": peer}).status_code


def ledger_ips(runtime: Runtime) -> list[str | None]:
    with runtime.sessions() as session:
        return list(session.scalars(select(ConsentEvent.ip).order_by(ConsentEvent.id)))


def test_forwarded_for_from_a_trusted_proxy_is_the_client(runtime: Runtime, settings: Settings) -> None:
    proxied = Runtime(with_web(settings, trusted_proxies=["127.0.0.1", "10.1.0.0/16"]), clock=runtime.clock,
                      engine_override=runtime.engine)
    client = create_app(proxied).test_client()
    limit = settings.web.subscribe_per_client_per_hour
    # Eleven visitors behind the proxy: none is limited by the others (all arrive from 127.0.0.1).
    for number in range(limit + 1):
        assert sign_up(client, f"person{number}@example.com", f"198.51.100.{number + 1}", "127.0.0.1") == 200
    # Through two proxies of ours (an inner one in 10.1/16): the client is the first hop not ours; what the
    # client itself wrote further left is ignored.
    assert sign_up(client, "chain@example.com", "6.6.6.6, 192.0.2.44, 10.1.2.3", "127.0.0.1") == 200
    ips = ledger_ips(proxied)
    assert ips[:limit + 1] == [f"198.51.100.{number + 1}" for number in range(limit + 1)]
    assert ips[-1] == "192.0.2.44"
    # One visitor sending too many is still limited.
    statuses = [sign_up(client, f"again{number}@example.com", "203.0.113.5", "127.0.0.1") for number in range(limit + 1)]
    assert statuses[-1] == 429 and statuses[:-1] == [200] * limit


def test_forwarded_for_from_any_other_peer_is_ignored(runtime: Runtime, settings: Settings) -> None:
    proxied = Runtime(with_web(settings, trusted_proxies=["127.0.0.1"]), clock=runtime.clock,
                      engine_override=runtime.engine)
    client = create_app(proxied).test_client()
    limit = settings.web.subscribe_per_client_per_hour
    # A client that is not our proxy cannot escape its limit by inventing a new address every time.
    statuses = [sign_up(client, f"person{number}@example.com", f"198.51.100.{number + 1}", "203.0.113.9")
                for number in range(limit + 1)]
    assert statuses[-1] == 429
    assert set(ledger_ips(proxied)) == {"203.0.113.9"}


def test_without_trusted_proxies_forwarded_headers_count_for_nothing(client: FlaskClient, runtime: Runtime) -> None:
    assert sign_up(client, "person@example.com", "198.51.100.7", "127.0.0.1") == 200
    assert ledger_ips(runtime) == ["127.0.0.1"]


def test_forwarded_proto_from_a_trusted_proxy_makes_same_origin_forms_work(runtime: Runtime, settings: Settings,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staff, "HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    with runtime.sessions.begin() as session:
        staff.create(session, STAFF_EMAIL, PASSWORD, runtime.clock())
    # The public address is https; the proxy speaks plain http to us and says so in X-Forwarded-Proto.
    base = with_web(settings, base_url="https://mail.therapycentral.example", trusted_proxies=["127.0.0.1"])
    client = create_app(Runtime(base, clock=runtime.clock, engine_override=runtime.engine)).test_client()
    headers = {"X-Forwarded-Proto": "https", "Host": "mail.therapycentral.example",
               "Origin": "https://mail.therapycentral.example"}
    page = client.get("/admin/login", headers=headers)
    token = page.get_data(as_text=True).split('name="csrf_token" value="')[1].split('"')[0]
    response = client.post("/admin/login", headers=headers,
                           data={"email": STAFF_EMAIL, "password": PASSWORD, "csrf_token": token, "next": ""})
    assert response.status_code == 303


def test_a_bad_trusted_proxy_is_a_config_error(config_path: Path, environ: dict[str, str]) -> None:
    from mailer import config

    config_path.write_text(config_path.read_text().replace("trusted_proxies = []", 'trusted_proxies = ["nginx"]'))
    with pytest.raises(config.ConfigError, match=r"web.trusted_proxies: not an IP address or CIDR: 'nginx'"):
        config.load(config_path, environ)


# --- finding 7: the body limit holds at the socket ---------------------------------------------------------


@pytest.mark.slow
def test_mailer_serve_refuses_a_huge_body_before_reading_it(start_server, settings: Settings) -> None:  # noqa: F811
    server = start_server()
    server.wait_healthy()
    declared = 200 * 1024 * 1024  # far over web.max_body_bytes, far under waitress's own 1 GiB default
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall((f"POST /api/inquiries HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                            f"Authorization: Bearer test-intake-token\r\nContent-Length: {declared}\r\n\r\n").encode()
                           + b"{" * 4096)
        started = time.monotonic()
        connection.settimeout(5)
        try:
            answer = connection.recv(4096)
        except TimeoutError:
            answer = b""
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.monotonic() - started < 5  # answered at once, not after 200 MB
    assert server.wait_healthy()["database"] is True


# --- finding 9: two inputs that gave 500 ----------------------------------------------------------------------


def test_deeply_nested_json_is_a_clean_400(client: FlaskClient) -> None:
    body = "[" * 100_000 + "]" * 100_000
    response = client.post("/api/inquiries", data=body[:60_000], headers=INTAKE_HEADERS,
                           content_type="application/json")
    assert response.status_code == 400
    assert response.json == {"error": "the body is nested too deeply", "field": None}


def test_a_header_in_the_login_redirect_is_a_clean_400(runtime: Runtime, client: FlaskClient,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staff, "HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    with runtime.sessions.begin() as session:
        staff.create(session, STAFF_EMAIL, PASSWORD, runtime.clock())
    assert log_in(client).status_code == 303
    response = client.get("/admin/login?next=/admin/%0D%0ASet-Cookie:x")  # while logged in
    assert response.status_code == 400
    assert "Set-Cookie" not in response.get_data(as_text=True) and "x" not in response.headers.getlist("Set-Cookie")
    assert client.get("/admin/login?next=/admin/%0ASet-Cookie:x").status_code == 400
    assert client.get("/admin/campaigns").status_code == 200  # nothing else changed


# --- finding 13: no development secret with a real relay ---------------------------------------------------


def without_secret(environ: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in environ.items() if key != "MAILER_SECRET_KEY"}


@pytest.mark.parametrize("command", [["send"], ["serve", "--port", "1"]])
def test_smtp_without_a_secret_key_refuses_to_start(config_path: Path, environ: dict[str, str],
                                                    smtp_server: SMTPServer, command: list[str]) -> None:
    env = {**without_secret(environ), "MAILER_SMTP_URL": smtp_server.url}
    result = CliRunner().invoke(main, ["--config", str(config_path), *command], env=env)
    assert result.exit_code == 1
    assert result.output.startswith("mailer: error: MAILER_SECRET_KEY is not set: with SMTP delivery")
    assert result.output.count("\n") == 1


def test_allow_dev_secret_lets_a_send_start_and_files_need_no_secret(config_path: Path, environ: dict[str, str],
                                                                     smtp_server: SMTPServer) -> None:
    env = {**without_secret(environ), "MAILER_SMTP_URL": smtp_server.url}
    allowed = CliRunner().invoke(main, ["--config", str(config_path), "send", "--allow-dev-secret"], env=env)
    assert allowed.exit_code == 0, allowed.output
    files = CliRunner().invoke(main, ["--config", str(config_path), "send"], env=without_secret(environ))
    assert files.exit_code == 0, files.output  # the file transport (development) is not held back


# --- finding 8: the feed's tracking-image filter ----------------------------------------------------------


def feed_with(item_link: str, image: str, channel_link: str = "https://therapycentral.example/") -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>Blog</title>'
            f"<link>{channel_link}</link><description>d</description>"
            f"<item><title>Post</title><link>{item_link}</link><guid>g1</guid>"
            f'<description><![CDATA[<p>Hello</p><img src="{image}" alt="a" width="600" height="300">]]></description>'
            "</item></channel></rss>").encode()


def images_of(body: bytes, website: str = "") -> list[str]:
    from mailer.publishing import feeds

    (post,) = feeds.parse(body, "https://therapycentral.example/feed.xml", website)
    return re.findall(r'<img[^>]*src="([^"]+)"', post.content_html)


def test_an_entry_linking_to_the_tracker_does_not_make_the_tracker_own() -> None:
    body = feed_with("https://tracker.example/click?post=1", "https://tracker.example/open.gif?u=42")
    assert images_of(body) == []


def test_a_site_on_www_com_does_not_own_every_com_host() -> None:
    body = feed_with("https://www.com/post", "https://tracker.com/open.gif", channel_link="https://www.com/")
    assert images_of(body) == []
    assert images_of(feed_with("https://www.com/post", "https://img.www.com/a.jpg", channel_link="https://www.com/")) \
        == ["https://img.www.com/a.jpg"]


@pytest.mark.parametrize(("image", "kept"), [
    ("https://therapycentral.example/img/a.jpg", True),
    ("https://cdn.therapycentral.example/a.jpg", True),  # same registrable domain
    ("https://therapycentral.example.evil.com/a.jpg", False),
    ("https://evil-therapycentral.example/a.jpg", False),
    ("https://photos.clinic-media.example/a.jpg", True),  # clinic.website's site
])
def test_own_images_by_registrable_domain(image: str, kept: bool) -> None:
    body = feed_with("https://therapycentral.example/blog/post", image)
    assert images_of(body, website="https://www.clinic-media.example/") == ([image] if kept else [])


def test_staff_one_offs_follow_the_same_image_rules(settings: Settings) -> None:
    from mailer.models import Campaign
    from mailer.publishing.render import Renderer

    body = ("Hello\n\n![pixel](https://tracker.example/o.gif)\n\n![team](https://therapycentral.example/team.jpg)"
            "\n\n<img src=\"https://therapycentral.example/p.gif\" width=\"1\" height=\"1\">")
    campaign = Campaign(kind="oneoff", topic="newsletter", subject="Open evening", preheader="", intro="",
                        body_markdown=body)
    html, _text = Renderer(settings).campaign_documents(campaign)
    assert "https://therapycentral.example/team.jpg" in html
    assert "tracker.example" not in html and "p.gif" not in html
