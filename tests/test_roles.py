"""Staff roles on every staff page, sessions that end on the server, the access log and its export,
`mailer staff` commands; on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from mailer import staff
from mailer.cli import main
from mailer.models import AccessEntry, Inquiry, StaffUser
from mailer.runtime import Runtime
from tests.test_admin import (
    PASSWORD,
    add_inquiry,
    add_subscriber,
    csrf_of,
    database_snapshot,
    draft_newsletter,
    log_in,
    text_of,
)

ROLES = ("admin", "marketing", "frontdesk")
# What the clinic decided each role may use, written out here on its own (not read from the app), so a
# change to the rules shows up as a failing test. Endpoints not listed are for admins only; that is also
# what a page added later without a rule gets, and the test below tries every route in the URL map.
EXPECTED = {
    "admin.home": {"marketing", "frontdesk"},
    "admin.campaigns": {"marketing"},
    "admin.campaign": {"marketing"},
    "admin.campaign_preview": {"marketing"},
    "admin.campaign_edit": {"marketing"},
    "admin.campaign_test": {"marketing"},
    "admin.campaign_approve": {"marketing"},
    "admin.campaign_cancel": {"marketing"},
    "admin.compose": {"marketing"},
    "admin.campaign_schedule": {"marketing"},
    "admin.campaign_unschedule": {"marketing"},
    "admin.campaign_archive": {"marketing"},
    "admin.followups": {"marketing"},
    "admin.followup_step": {"marketing"},
    "admin.followup_step_save": {"marketing"},
    "admin.followup_step_preview": {"marketing"},
    "admin.subscriber_import": {"marketing"},
    "admin.subscriber_import_check": {"marketing"},
    "admin.subscriber_import_result": {"marketing"},
    "admin.subscriber_import_commit": {"marketing"},
    "admin.inquiries": {"frontdesk"},
    "admin.inquiry": {"frontdesk"},
    "admin.inquiry_close": {"frontdesk"},
    "admin.inquiry_resume": {"frontdesk"},
    "admin.inquiry_figures": {"marketing", "frontdesk"},
    "admin.subscribers": {"marketing", "frontdesk"},
    "admin.subscriber": {"marketing", "frontdesk"},
    "admin.subscriber_suppress": {"marketing", "frontdesk"},
}
LANDING = {"admin": "/admin/campaigns", "marketing": "/admin/campaigns", "frontdesk": "/admin/inquiries"}


@pytest.fixture(autouse=True)
def cheap_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staff, "HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


def address(role: str) -> str:
    return f"{role}@therapycentral.example"


@pytest.fixture
def accounts(runtime: Runtime) -> dict[str, int]:
    with runtime.sessions.begin() as session:
        return {role: staff.create(session, address(role), PASSWORD, runtime.clock(), role=role).id for role in ROLES}


def signed_in(app: Flask, role: str) -> FlaskClient:
    client = app.test_client()
    response = log_in(client, address(role))
    assert response.status_code == 303, text_of(response)
    assert response.headers["Location"] == LANDING[role]
    return client


def token(client: FlaskClient, role: str) -> str:
    return csrf_of(client.get(LANDING[role]))


@pytest.fixture
def world(runtime: Runtime) -> dict[str, int]:
    add_subscriber(runtime, "sub@example.com", "Sub Scriber")
    return {"campaign_id": draft_newsletter(runtime), "inquiry_id": add_inquiry(runtime),
            "contact_id": add_subscriber(runtime, "other@example.com")}


def staff_routes(app: Flask, ids: dict[str, int]) -> Iterator[tuple[str, str, str]]:
    """(endpoint, method, path) of every staff route in the app's URL map but the login and logout.
    An id argument this test does not know (a page added later) gets 1."""
    with app.test_request_context():
        for rule in app.url_map.iter_rules():
            if not rule.endpoint.startswith("admin.") or rule.endpoint in ("admin.login", "admin.logout"):
                continue
            path = rule.build({name: ids.get(name, 1) for name in rule.arguments}, append_unknown=False)[1]
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                yield rule.endpoint, method, path


def access_count(runtime: Runtime) -> int:
    with runtime.sessions() as session:
        return session.scalar(select(func.count()).select_from(AccessEntry))


@pytest.mark.parametrize("role", ROLES)
def test_every_staff_route_with_each_role(app: Flask, runtime: Runtime, accounts: dict[str, int],
                                          world: dict[str, int], role: str) -> None:
    client = signed_in(app, role)
    routes = list(staff_routes(app, world))
    assert len(routes) >= 17
    # Refusals change nothing; the allowed POSTs get a harmless form (a wrong confirmation address, no
    # reason), so one role's run does not change what the next request finds.
    form = {"reason": "", "confirm_email": "nobody@example.com", "subject": "", "body_markdown": "",
            "address": "not an address"}
    for endpoint, method, path in routes:
        allowed = role == "admin" or role in EXPECTED.get(endpoint, set())
        before = database_snapshot(runtime), access_count(runtime)
        data = {**form, "csrf_token": token(client, role)} if method == "POST" else None
        response = client.open(path, method=method, data=data)
        if allowed:
            assert response.status_code != 403, (role, method, path)
            assert response.status_code < 500, (role, method, path)
        else:
            assert response.status_code == 403, (role, method, path)
            assert f"not part of the {role} role" in text_of(response)
            assert (database_snapshot(runtime), access_count(runtime)) == before, (role, method, path)


def test_a_page_without_a_rule_is_for_admins_only(app: Flask, accounts: dict[str, int]) -> None:
    # As if another part of the staff pages had just been added and nobody had given it a role yet.
    app.add_url_rule("/admin/new-page", endpoint="admin.new_page", view_func=lambda: "the new page")
    assert signed_in(app, "admin").get("/admin/new-page").status_code == 200
    for role in ("marketing", "frontdesk"):
        assert signed_in(app, role).get("/admin/new-page").status_code == 403


def test_the_menu_shows_only_the_pages_of_the_role(app: Flask, accounts: dict[str, int]) -> None:
    marketing = text_of(signed_in(app, "marketing").get("/admin/campaigns"))
    assert 'href="/admin/compose"' in marketing and 'href="/admin/inquiries"' not in marketing
    frontdesk = text_of(signed_in(app, "frontdesk").get("/admin/inquiries"))
    assert 'href="/admin/inquiries"' in frontdesk and 'href="/admin/campaigns"' not in frontdesk
    assert signed_in(app, "frontdesk").get("/admin/").headers["Location"] == "/admin/inquiries"


# --- sessions end on the server (logout, a new password, disabling) ------------------------------------


def copy_of(app: Flask, client: FlaskClient) -> FlaskClient:
    """Another browser holding a copy of this client's session cookie (as a thief would)."""
    cookie = client.get_cookie("session")
    assert cookie is not None
    thief = app.test_client()
    thief.set_cookie("session", cookie.value, domain=cookie.domain)
    return thief


def test_a_copied_cookie_stops_working_after_logout(app: Flask, runtime: Runtime, accounts: dict[str, int],
                                                   world: dict[str, int]) -> None:
    client = signed_in(app, "frontdesk")
    thief = copy_of(app, client)
    path = f"/admin/inquiries/{world['inquiry_id']}"
    assert thief.get(path).status_code == 200  # the copy works while the session is open
    response = client.post("/admin/logout", data={"csrf_token": token(client, "frontdesk")})
    assert response.status_code == 303
    refused = thief.get(path)
    assert refused.status_code == 302 and refused.headers["Location"].startswith("/admin/login")
    other = signed_in(app, "frontdesk")  # a new login works as before
    assert other.get(path).status_code == 200


def test_a_new_password_and_disabling_end_every_session(app: Flask, config_path: Path, environ: dict[str, str],
                                                        runtime: Runtime, accounts: dict[str, int]) -> None:
    first, second = signed_in(app, "marketing"), signed_in(app, "marketing")
    with runtime.sessions.begin() as session:
        staff.set_password(session, address("marketing"), "another long passphrase")
    assert first.get("/admin/campaigns").status_code == 302
    assert second.get("/admin/campaigns").status_code == 302

    client = signed_in(app, "frontdesk")
    thief = copy_of(app, client)
    result = cli(config_path, environ, "staff", "disable", address("frontdesk").upper())
    assert result.exit_code == 0, result.output
    assert result.output == f"{address('frontdesk')} disabled; every open session of it has ended.\n"
    assert client.get("/admin/inquiries").status_code == 302 and thief.get("/admin/inquiries").status_code == 302
    assert log_in(app.test_client(), address("frontdesk")).status_code == 401  # and no new login
    assert cli(config_path, environ, "staff", "enable", address("frontdesk")).exit_code == 0
    assert log_in(app.test_client(), address("frontdesk")).status_code == 303


# --- the access log ---------------------------------------------------------------------------------------


def test_viewing_an_inquiry_message_is_logged_and_shown(app: Flask, runtime: Runtime, accounts: dict[str, int],
                                                        world: dict[str, int], clock) -> None:  # noqa: ANN001
    path = f"/admin/inquiries/{world['inquiry_id']}"
    signed_in(app, "frontdesk").get(path)
    clock.advance(minutes=5)
    page = text_of(signed_in(app, "admin").get(path))
    assert "Who has seen this message" in page
    assert page.index(address("admin")) < page.index(address("frontdesk"))  # newest first
    with runtime.sessions() as session:
        views = session.scalars(select(AccessEntry).where(AccessEntry.action == "message_viewed")
                                .order_by(AccessEntry.id)).all()
        inquiry = session.get(Inquiry, world["inquiry_id"])
        assert [(v.actor, v.inquiry_id, v.contact_id, v.staff_id) for v in views] == [
            (address("frontdesk"), inquiry.id, inquiry.contact_id, accounts["frontdesk"]),
            (address("admin"), inquiry.id, inquiry.contact_id, accounts["admin"])]


def test_suppression_erasure_approval_and_role_changes_are_logged_without_personal_data(
        app: Flask, config_path: Path, environ: dict[str, str], runtime: Runtime, accounts: dict[str, int],
        world: dict[str, int]) -> None:
    frontdesk = signed_in(app, "frontdesk")
    frontdesk.get(f"/admin/inquiries/{world['inquiry_id']}")
    frontdesk.post(f"/admin/subscribers/{world['contact_id']}/suppress",
                   data={"csrf_token": token(frontdesk, "frontdesk")})
    marketing = signed_in(app, "marketing")
    marketing.post(f"/admin/campaigns/{world['campaign_id']}/approve",
                   data={"csrf_token": token(marketing, "marketing"), "when": "now"})
    admin = signed_in(app, "admin")
    admin.post(f"/admin/subscribers/{world['contact_id']}/erase",
               data={"csrf_token": token(admin, "admin"), "confirm_email": "other@example.com"})
    assert cli(config_path, environ, "staff", "role", address("marketing"), "--role", "frontdesk").exit_code == 0
    with runtime.sessions() as session:
        entries = session.scalars(select(AccessEntry).order_by(AccessEntry.id)).all()
    actions = [(e.action, e.actor) for e in entries[len(ROLES):]]  # after the three accounts' creation
    assert actions[:4] == [("message_viewed", address("frontdesk")), ("suppressed", address("frontdesk")),
                           ("approved", address("marketing")), ("erased", address("admin"))]
    assert actions[4][0] == "role_changed" and actions[4][1].startswith("cli:")
    assert entries[-1].detail == "marketing -> frontdesk" and entries[-1].staff_id == accounts["marketing"]
    stored = json.dumps([[getattr(e, column) for column in ("actor", "action", "detail")] for e in entries])
    for personal in ("other@example.com", "ines@example.com", "depression", "Ines"):
        assert personal not in stored


def test_the_access_log_refuses_update_and_delete(runtime: Runtime, accounts: dict[str, int]) -> None:
    for statement in ("UPDATE access_log SET actor = 'someone else'", "DELETE FROM access_log"):
        with pytest.raises(DBAPIError, match="append-only"), runtime.engine.begin() as connection:
            connection.execute(text(statement))
    assert access_count(runtime) == len(ROLES)


def test_audit_export_prints_json_lines_since_a_date(config_path: Path, environ: dict[str, str], runtime: Runtime,
                                                     app: Flask, accounts: dict[str, int], world: dict[str, int],
                                                     clock) -> None:  # noqa: ANN001
    clock.advance(days=3)
    signed_in(app, "frontdesk").get(f"/admin/inquiries/{world['inquiry_id']}")
    later = (clock.now - dt.timedelta(days=1)).astimezone(runtime.settings.zone).date().isoformat()
    result = cli(config_path, environ, "audit", "export", "--since", later)
    assert result.exit_code == 0, result.output
    (line,) = result.output.splitlines()
    entry = json.loads(line)
    assert entry["action"] == "message_viewed" and entry["actor"] == address("frontdesk")
    assert entry["inquiry_id"] == world["inquiry_id"] and entry["at"] == clock.now.isoformat()
    everything = cli(config_path, environ, "audit", "export", "--since", "2020-01-01")
    assert [json.loads(line)["action"] for line in everything.output.splitlines()] == [
        "staff_added", "staff_added", "staff_added", "message_viewed"]
    bad = cli(config_path, environ, "audit", "export", "--since", "last week")
    assert bad.exit_code == 1 and bad.output.startswith("mailer: error: --since: not a date")


# --- mailer staff ------------------------------------------------------------------------------------------


def cli(config_path: Path, environ: dict[str, str], *args: str, password: str | None = None):  # noqa: ANN201
    env = {**environ, "MAILER_STAFF_PASSWORD": password}
    return CliRunner().invoke(main, ["--config", str(config_path), *args], env=env)


def test_staff_add_takes_a_role_and_list_shows_them(config_path: Path, environ: dict[str, str],
                                                    runtime: Runtime) -> None:
    # Without --role: the full login scripts made before roles existed made, said out loud.
    plain = cli(config_path, environ, "staff", "add", "ida@therapycentral.example", password="a long passphrase!")
    assert plain.exit_code == 0 and "with the role admin" in plain.output
    assert cli(config_path, environ, "staff", "add", "rosa@therapycentral.example", "--role", "boss",
               password="a long passphrase!").exit_code == 2
    for email, role in (("rosa@therapycentral.example", "frontdesk"), ("ada@therapycentral.example", "marketing")):
        assert cli(config_path, environ, "staff", "add", email, "--role", role,
                   password="a long passphrase!").exit_code == 0
    cli(config_path, environ, "staff", "disable", "ada@therapycentral.example")
    listed = cli(config_path, environ, "staff", "list").output.splitlines()
    assert listed[1].split() == ["ada@therapycentral.example", "marketing", "disabled", "never"]
    assert listed[2].split() == ["ida@therapycentral.example", "admin", "active", "never"]
    assert listed[3].split() == ["rosa@therapycentral.example", "frontdesk", "active", "never"]
    unknown = cli(config_path, environ, "staff", "disable", "nobody@therapycentral.example")
    assert unknown.exit_code == 1 and unknown.output == "mailer: error: no staff account for nobody@therapycentral.example\n"
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(StaffUser)) == 3
