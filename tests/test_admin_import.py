"""Importing subscribers on the staff pages, on both databases: the dry run, an import bound to it,
a list that changed in between, bad files, and a 100,000-row file with bad and suppressed rows whose
import fails half-way once (a real database error) and leaves nothing, then succeeds."""

from __future__ import annotations

import datetime as dt
import io
import random
import re

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, insert, select, text
from werkzeug.datastructures import FileStorage
from werkzeug.test import TestResponse, encode_multipart

from mailer import audience
from mailer.links import email_hash
from mailer.models import ConsentEvent, Contact, SubscriberImport, Subscription, Suppression
from mailer.runtime import Runtime
from tests.test_admin import cheap_hashing, csrf_of, staff_client, staff_id  # noqa: F401 (fixtures)
from tests.web_fixtures import SettableClock

HEADER = "email,name,topics,consent_source,consented_at\n"


def counts(runtime: Runtime) -> tuple[int, ...]:
    with runtime.sessions() as session:
        return tuple(session.scalar(select(func.count()).select_from(model))
                     for model in (Contact, ConsentEvent, Subscription, Suppression))


def upload(client: FlaskClient, content: bytes, filename: str = "list.csv") -> TestResponse:
    token = csrf_of(client.get("/admin/subscribers/import"))
    # Encoded here, in memory: the test client would spool a large body to a file it never closes.
    boundary, body = encode_multipart({"csrf_token": token, "file": FileStorage(io.BytesIO(content), filename)})
    return client.post("/admin/subscribers/import", data=body,
                       content_type=f"multipart/form-data; boundary={boundary}")


def checked_id(response: TestResponse) -> int:
    assert response.status_code == 303, response.get_data(as_text=True)
    return int(re.search(r"/admin/subscribers/import/(\d+)$", response.headers["Location"]).group(1))


def figure(page: str, name: str) -> int:
    return int(re.search(rf'<dd id="count-{name}">(\d+)</dd>', page).group(1))


def press_import(client: FlaskClient, import_id: int, sha256: str | None = None) -> str:
    shown_page = client.get(f"/admin/subscribers/import/{import_id}")
    page = shown_page.get_data(as_text=True)
    shown = sha256 if sha256 is not None else re.search(r'name="sha256" value="([0-9a-f]{64})"', page).group(1)
    response = client.post(f"/admin/subscribers/import/{import_id}", data={"csrf_token": csrf_of(shown_page),
                                                                           "sha256": shown})
    assert response.status_code == 303, response.get_data(as_text=True)
    return client.get(response.headers["Location"]).get_data(as_text=True)


def test_check_then_import_exactly_that(runtime: Runtime, staff_client: FlaskClient) -> None:  # noqa: F811
    settings = runtime.settings
    with runtime.sessions.begin() as session:
        audience.staff_subscribe(session, settings.secret_key, settings.topics, email="already@example.com",
                                 name="Al", topic_names=["newsletter"], source="fixture", now=runtime.clock())
        gone, _ = audience.staff_subscribe(session, settings.secret_key, settings.topics, email="gone@example.com",
                                           name="Go", topic_names=["newsletter"], source="fixture",
                                           now=runtime.clock())
        audience.unsubscribe_all(session, settings.secret_key, gone, source="one-click", now=runtime.clock())
    content = (HEADER + "new@example.com,New,newsletter,sign-up sheet,2026-02-01T10:00:00Z\r\n"
               "already@example.com,Al,newsletter,sign-up sheet,2026-02-01T10:00:00Z\r\n"
               "gone@example.com,Go,newsletter,sign-up sheet,2026-02-01T10:00:00Z\r\n"
               "nobody,No,newsletter,sign-up sheet,2026-02-01T10:00:00Z\r\n"
               "noconsent@example.com,No,newsletter,,\r\n").encode()
    before = counts(runtime)
    import_id = checked_id(upload(staff_client, b"\xef\xbb\xbf" + content))
    assert counts(runtime) == before  # the check imports no one
    page = staff_client.get(f"/admin/subscribers/import/{import_id}").get_data(as_text=True)
    assert "Check before importing" in page and "Nothing is imported yet" in page
    assert (figure(page, "imported"), figure(page, "unchanged"), figure(page, "skipped"),
            figure(page, "rejected")) == (1, 1, 1, 2)
    assert "gone@example.com is on the suppression list" in page
    assert "not a valid email address" in page and "no consent: consent_source and consented_at are required" in page
    assert "Import 1 person" in page

    wrong = press_import(staff_client, import_id, sha256="0" * 64)
    assert "Not imported: this is not the file that was checked" in wrong and counts(runtime) == before
    done = press_import(staff_client, import_id)
    assert "Imported: 1 people, 1 subscriptions. 1 skipped and 2 rejected rows were left out." in done
    assert "Imported</h1>" in done and figure(done, "imported") == 1
    after = counts(runtime)
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (1, 1, 1)
    with runtime.sessions() as session:
        stored = session.get(SubscriberImport, import_id)
        assert stored.state == "imported" and stored.content == "" and stored.outcome["imported_by"]
        gone_topics = {s.topic: s.status for s in audience.find_contact(session, "gone@example.com").subscriptions}
        assert gone_topics == {"newsletter": "unsubscribed"}
    again = press_import(staff_client, import_id, sha256=stored.sha256)  # the same form, sent twice
    assert "This file was already imported." in again and counts(runtime) == after


def test_a_list_that_changed_since_the_check_is_not_imported(runtime: Runtime,
                                                             staff_client: FlaskClient) -> None:  # noqa: F811
    settings = runtime.settings
    content = (HEADER + "ann@example.com,Ann,newsletter,sheet,2026-02-01T10:00:00Z\n"
               "ben@example.com,Ben,newsletter,sheet,2026-02-01T10:00:00Z\n").encode()
    import_id = checked_id(upload(staff_client, content))
    # Ben signs up on the website and then unsubscribes, after the check and before Import.
    with runtime.sessions.begin() as session:
        ben, _ = audience.get_or_create_contact(session, "ben@example.com", "Ben", runtime.clock())
        audience.unsubscribe_all(session, settings.secret_key, ben, source="one-click", now=runtime.clock())
    before = counts(runtime)
    page = press_import(staff_client, import_id)
    assert "Not imported: the list changed since the check" in page and counts(runtime) == before
    assert (figure(page, "imported"), figure(page, "skipped")) == (1, 1)  # the new check is shown
    page = press_import(staff_client, import_id)
    assert "Imported: 1 people" in page
    with runtime.sessions() as session:
        assert audience.find_contact(session, "ann@example.com").subscriptions[0].status == "active"
        assert audience.find_contact(session, "ben@example.com").subscriptions == []


@pytest.mark.parametrize(("content", "message"), [
    (b"email,name\nx@example.com,X\n", "This file cannot be imported: expected the columns email,name,topics,"),
    (HEADER.encode() + "é@example.com".encode("latin-1") + b",X,newsletter,s,2026-01-01T00:00:00Z\n",
     "This file is not UTF-8 text"),
])
def test_a_bad_file_is_refused_with_one_message(runtime: Runtime, staff_client: FlaskClient,  # noqa: F811
                                                content: bytes, message: str) -> None:
    response = upload(staff_client, content)
    assert response.status_code == 400 and message in response.get_data(as_text=True)
    token = csrf_of(staff_client.get("/admin/subscribers/import"))
    empty = staff_client.post("/admin/subscribers/import", data={"csrf_token": token},
                              content_type="multipart/form-data")
    assert empty.status_code == 400 and "Please choose a CSV file" in empty.get_data(as_text=True)
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(SubscriberImport)) == 0


def test_a_file_left_unimported_is_deleted_after_a_day(runtime: Runtime, clock: SettableClock,
                                                       staff_client: FlaskClient) -> None:  # noqa: F811
    first = checked_id(upload(staff_client, (HEADER + "a@example.com,A,newsletter,s,2026-01-01T00:00:00Z\n").encode()))
    kept = checked_id(upload(staff_client, (HEADER + "c@example.com,C,newsletter,s,2026-01-01T00:00:00Z\n").encode()))
    with runtime.sessions.begin() as session:  # checked a day and a minute ago (staff logins do not last that long)
        session.get(SubscriberImport, first).created_at = clock.now - dt.timedelta(days=1, minutes=1)
    checked_id(upload(staff_client, (HEADER + "b@example.com,B,newsletter,s,2026-01-01T00:00:00Z\n").encode()))
    with runtime.sessions() as session:
        assert session.get(SubscriberImport, first) is None and session.get(SubscriberImport, kept) is not None
    # Housekeeping deletes one nobody came back to, even if no one uploads another file.
    from mailer.jobs import housekeeping

    assert housekeeping.run(runtime, clock.now + dt.timedelta(days=1, minutes=1))["import_files_purged"] == 2
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(SubscriberImport)) == 0


# --- 100,000 rows ----------------------------------------------------------------------------------

ROWS = 100_000
HALF_WAY = f"person{ROWS // 2:06d}@example.com"


def big_file(rng: random.Random) -> tuple[bytes, set[int], set[int]]:
    """ROWS rows: 1% bad (no consent, or not an address), 1% suppressed; returns the file and their indexes."""
    bad = set(rng.sample(range(ROWS), ROWS // 100))
    suppressed = set(rng.sample(sorted(set(range(ROWS)) - bad), ROWS // 100))
    lines = [HEADER]
    for i in range(ROWS):
        email = f"person{i:06d}@example.com"
        if i in bad:
            lines.append(f"{email},Person {i},newsletter,,\n" if i % 2 else f"person{i}-at-example.com,P,"
                         "newsletter,sheet,2026-01-01T10:00:00Z\n")
        else:
            lines.append(f"{email},Person {i},newsletter;events,spring open evening sheet,2026-01-01T10:00:00Z\n")
    return "".join(lines).encode(), bad, suppressed


def _fail_half_way(runtime: Runtime) -> str:
    """A trigger that makes the database refuse one subscription half-way through the file."""
    with runtime.engine.begin() as connection:
        if runtime.engine.dialect.name == "sqlite":
            connection.execute(text(
                "CREATE TRIGGER half_way BEFORE INSERT ON subscriptions WHEN (SELECT email FROM contacts "
                f"WHERE id = NEW.contact_id) = '{HALF_WAY}' BEGIN SELECT RAISE(ABORT, 'forced'); END"))
            return "DROP TRIGGER half_way"
        connection.execute(text(
            "CREATE FUNCTION half_way() RETURNS trigger AS $$ BEGIN IF (SELECT email FROM contacts WHERE id = "
            f"NEW.contact_id) = '{HALF_WAY}' THEN RAISE EXCEPTION 'forced'; END IF; RETURN NEW; END $$ "
            "LANGUAGE plpgsql"))
        connection.execute(text("CREATE TRIGGER half_way BEFORE INSERT ON subscriptions FOR EACH ROW "
                                "EXECUTE FUNCTION half_way()"))
        return "DROP FUNCTION half_way() CASCADE"


@pytest.mark.slow
def test_a_100000_row_file_through_the_staff_page(runtime: Runtime, staff_client: FlaskClient) -> None:  # noqa: F811
    settings = runtime.settings
    content, bad, suppressed = big_file(random.Random(20))
    now = runtime.clock()
    with runtime.sessions.begin() as session:  # 1% of the file asked not to be emailed (only hashes are left)
        session.execute(insert(Suppression), [
            {"email_hash": email_hash(settings.secret_key, f"person{i:06d}@example.com"), "contact_id": None,
             "reason": "unsubscribed", "detail": "", "created_at": now} for i in sorted(suppressed)])
    before = counts(runtime)

    import_id = checked_id(upload(staff_client, content, "spring-open-evening.csv"))
    page = staff_client.get(f"/admin/subscribers/import/{import_id}").get_data(as_text=True)
    dry = {name: figure(page, name) for name in ("imported", "unchanged", "skipped", "rejected")}
    assert dry == {"imported": ROWS - len(bad) - len(suppressed), "unchanged": 0, "skipped": len(suppressed),
                   "rejected": len(bad)}
    assert counts(runtime) == before

    undo = _fail_half_way(runtime)
    try:
        failed = press_import(staff_client, import_id)
    finally:
        with runtime.engine.begin() as connection:
            connection.execute(text(undo))
    assert "The import failed and nothing was imported" in failed
    assert counts(runtime) == before  # contacts and ledger entries made before the failure are gone too

    done = press_import(staff_client, import_id)
    assert f"Imported: {dry['imported']} people, {2 * dry['imported']} subscriptions." in done
    after = counts(runtime)
    assert after[0] - before[0] == dry["imported"]
    assert after[1] - before[1] == after[2] - before[2] == 2 * dry["imported"]  # one ledger entry each
    assert after[3] == before[3]
    with runtime.sessions() as session:
        emails = set(session.scalars(select(Contact.email)))
        assert not any(f"person{i:06d}@example.com" in emails for i in suppressed)
        assert not any(f"person{i:06d}@example.com" in emails for i in bad)
        assert session.scalar(select(func.count()).select_from(Subscription)
                              .where(Subscription.status == "active")) == 2 * dry["imported"]
        stored = session.get(SubscriberImport, import_id)
        assert stored.outcome["imported"] == dry["imported"] and len(stored.outcome["skipped"]) == dry["skipped"]
