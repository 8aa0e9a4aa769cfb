"""Subscriber CSV import: the whole file checked in one pass (the dry run), then imported in one
transaction with set-based inserts, so a failure half-way leaves nothing behind.

The rules are those of a staff sign-up (audience.staff_subscribe), applied to every row at once: a row
without consent evidence or with bad data is rejected; a suppressed address, or a topic the person
unsubscribed from, is skipped and never resubscribed; a row whose topics are all active already is
"already subscribed". Every subscription added gets its own consent ledger entry, dated when the
person consented.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from mailer import audience
from mailer.audience import AudienceError
from mailer.links import email_hash
from mailer.models import ConsentEvent, Contact, Subscription, Suppression
from mailer.spreadsheets import Sheet, SheetError
from mailer.text import one_line

COLUMNS = audience.SUBSCRIBER_COLUMNS
LOOKUP_CHUNK = 500  # addresses per lookup query (well inside every database's parameter limit)
INSERT_BATCH = 2000  # rows per executemany; the driver pages them into multi-row statements
FUTURE_SLACK = dt.timedelta(minutes=5)

_C = Contact.__table__
_E = ConsentEvent.__table__
_S = Subscription.__table__


@dataclass(frozen=True)
class Addition:
    """One row's work: subscriptions to add for one address (a new contact or an existing one)."""

    line: int
    email: str
    name: str
    topics: tuple[str, ...]
    source: str
    consented_at: dt.datetime


@dataclass
class ImportPlan:
    """What importing a file would do, found without changing anything."""

    rows: int = 0
    additions: list[Addition] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)  # suppressed or unsubscribed: never resubscribed
    rejected: list[tuple[int, str]] = field(default_factory=list)  # no consent evidence or bad data
    # What the database holds about the file's addresses, found in the same pass.
    existing: dict[str, int] = field(default_factory=dict)  # address -> contact id
    nameless: set[int] = field(default_factory=set)  # existing contacts without a name
    pending: set[tuple[int, str]] = field(default_factory=set)  # (contact id, topic) waiting for confirmation

    @property
    def imported(self) -> int:
        return len(self.additions)

    @property
    def subscriptions(self) -> int:
        return sum(len(addition.topics) for addition in self.additions)

    def summary(self) -> dict[str, Any]:
        """The dry run's outcome as plain values: what staff saw and what the import must match."""
        return {"rows": self.rows, "imported": self.imported, "subscriptions": self.subscriptions,
                "unchanged": self.unchanged, "skipped": [list(item) for item in self.skipped],
                "rejected": [list(item) for item in self.rejected]}


def _rows(stream: Iterable[str], topics: dict[str, str], now: dt.datetime,
          plan: ImportPlan) -> Iterator[Addition]:
    """The file's rows that pass every check needing no database, each with all its topics; the others go
    to plan.rejected."""
    try:
        sheet = Sheet(stream)
    except SheetError:
        sheet = None
    if sheet is None or sheet.names != list(COLUMNS):
        found = ",".join(sheet.names if sheet else [])
        raise AudienceError(f"expected the columns {','.join(COLUMNS)}, found {found or 'nothing'}")
    unreadable: list[tuple[int, str]] = []  # records the sheet refused (the wrong number of fields)
    for line, row in sheet.records(unreadable):
        plan.rows += 1
        try:
            source = row["consent_source"].strip()
            when = row["consented_at"].strip()
            if not source or not when:
                raise AudienceError("no consent: consent_source and consented_at are required")
            consented_at = audience.parse_time(when, "consented_at")
            if consented_at > now + FUTURE_SLACK:
                raise AudienceError("consented_at is in the future")
            wanted = tuple(dict.fromkeys(t.strip() for t in (row["topics"] or "").split(";") if t.strip()))
            if not wanted:
                raise AudienceError("topics: at least one topic is required")
            for topic in wanted:
                audience.check_topic(topics, topic)
            email = audience.normalize_email(row["email"] or "")
            name = audience.clean_name(row["name"])
        except AudienceError as exc:
            plan.rejected.append((line, str(exc)))
            continue
        yield Addition(line, email, name, wanted, source, consented_at)
    plan.rows += len(unreadable)
    plan.rejected = sorted(plan.rejected + unreadable, key=lambda item: item[0])


def _chunks(values: Sequence[Any], size: int = LOOKUP_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def check(session: Session, secret: str, topics: dict[str, str], stream: Iterable[str],
          now: dt.datetime) -> ImportPlan:
    """The dry run: read the whole file once, look its addresses up in bulk, sort every row. Changes nothing.

    Raises AudienceError when the file as a whole is unusable (wrong columns)."""
    plan = ImportPlan()
    rows = list(_rows(stream, topics, now, plan))
    addresses = list(dict.fromkeys(row.email for row in rows))

    names: dict[int, str] = {}
    for chunk in _chunks(addresses):
        for contact_id, email, name in session.execute(select(_C.c.id, _C.c.email, _C.c.name)
                                                       .where(_C.c.email.in_(chunk))):
            plan.existing[email] = contact_id
            names[contact_id] = name
    plan.nameless = {contact_id for contact_id, name in names.items() if not name}
    hashes = {email_hash(secret, email): email for email in addresses}
    suppressed: set[str] = set()
    for chunk in _chunks(list(hashes)):
        suppressed.update(hashes[h] for h in session.scalars(select(Suppression.email_hash)
                                                            .where(Suppression.email_hash.in_(chunk))))
    by_id = {contact_id: email for email, contact_id in plan.existing.items()}
    statuses: dict[tuple[int, str], str] = {}
    for chunk in _chunks(list(by_id)):
        suppressed.update(by_id[i] for i in session.scalars(select(Suppression.contact_id)
                                                            .where(Suppression.contact_id.in_(chunk))))
        for contact_id, topic, status in session.execute(select(_S.c.contact_id, _S.c.topic, _S.c.status)
                                                         .where(_S.c.contact_id.in_(chunk))):
            statuses[(contact_id, topic)] = status
    plan.pending = {key for key, status in statuses.items() if status == "pending"}

    added: dict[str, set[str]] = {}  # topics earlier rows of this file add, per address
    for row in rows:
        if row.email in suppressed:
            plan.skipped.append((row.line, f"{row.email} is on the suppression list and cannot be subscribed "
                                           "by staff"))
            continue
        contact_id = plan.existing.get(row.email)
        earlier = added.setdefault(row.email, set())
        new_topics = []
        refused = None
        for topic in row.topics:
            status = statuses.get((contact_id, topic)) if contact_id is not None else None
            if status == "unsubscribed":
                refused = topic
                break
            if status != "active" and topic not in earlier:
                new_topics.append(topic)
        if refused is not None:
            plan.skipped.append((row.line, f"{row.email} unsubscribed from {refused!r} and cannot be "
                                           "resubscribed by staff"))
            continue
        if not new_topics:
            plan.unchanged += 1
            continue
        earlier.update(new_topics)
        plan.additions.append(replace(row, topics=tuple(new_topics)))
    return plan


def commit(session: Session, plan: ImportPlan, now: dt.datetime,
           progress: Callable[[int], None] | None = None) -> None:
    """Import what `check` found, in the caller's transaction: contacts, ledger entries, subscriptions,
    each in a few multi-row statements. `progress` hears how many of the plan's rows are done."""
    write = _PgWriter(session) if session.get_bind().dialect.name == "postgresql" else _Writer(session)
    contact_ids = dict(plan.existing)
    new_contacts: dict[str, str] = {}
    for addition in plan.additions:
        if addition.email not in contact_ids and addition.email not in new_contacts:
            new_contacts[addition.email] = addition.name
    rows = [(email, name, secrets.token_urlsafe(24)) for email, name in new_contacts.items()]
    for batch in _chunks(rows, INSERT_BATCH):
        contact_ids.update(write.contacts(batch, now))

    # A name in the file fills an existing contact's empty one (never overwrites), as a staff add does.
    names: dict[int, str] = {}
    for addition in plan.additions:
        contact_id = contact_ids[addition.email]
        if addition.name and contact_id in plan.nameless and contact_id not in names:
            names[contact_id] = addition.name
    if names:
        session.execute(update(_C).where(_C.c.id == bindparam("contact_id")).values(name=bindparam("new_name")),
                        [{"contact_id": i, "new_name": name} for i, name in names.items()])

    for batch in _chunks(plan.additions, INSERT_BATCH):
        grants = [(contact_ids[a.email], audience.topic_purpose(topic), one_line(a.source)[:200] or "unknown",
                   f"imported: {a.source}", a.consented_at) for a in batch for topic in a.topics]
        events = write.events(grants)  # (contact id, purpose) -> ledger entry id
        fresh, confirmed = [], []
        for a in batch:
            contact_id = contact_ids[a.email]
            for topic in a.topics:
                row = (contact_id, topic, events[(contact_id, audience.topic_purpose(topic))])
                (confirmed if (contact_id, topic) in plan.pending else fresh).append(row)
        if fresh:
            write.subscriptions(fresh, now)
        if confirmed:
            session.execute(
                update(_S).where(_S.c.contact_id == bindparam("b_contact"), _S.c.topic == bindparam("b_topic"))
                .values(status="active", updated_at=bindparam("b_at"), consent_event_id=bindparam("b_event")),
                [{"b_contact": c, "b_topic": t, "b_at": now, "b_event": e} for c, t, e in confirmed],
            )
        if progress is not None:
            progress(len(batch))
    session.flush()


Grant = tuple[int, str, str, str, dt.datetime]  # contact id, purpose, source, wording, consented at


class _Writer:
    """Multi-row INSERTs through SQLAlchemy (SQLite: RETURNING on multi-row VALUES, in order)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def contacts(self, rows: Sequence[tuple[str, str, str]], now: dt.datetime) -> Iterable[tuple[str, int]]:
        inserted = self.session.execute(
            insert(_C).returning(_C.c.id, _C.c.email, sort_by_parameter_order=True),
            [{"email": email, "name": name, "created_at": now, "link_key": key, "followups_consent": False,
              "soft_bounces": 0} for email, name, key in rows])
        return [(email, contact_id) for contact_id, email in inserted]

    def events(self, grants: Sequence[Grant]) -> dict[tuple[int, str], int]:
        ids = self.session.execute(
            insert(_E).returning(_E.c.id, sort_by_parameter_order=True),
            [{"contact_id": c, "purpose": p, "action": "granted", "source": s, "wording": w, "ip": None,
              "user_agent": None, "created_at": at} for c, p, s, w, at in grants]).scalars().all()
        return {(c, p): event_id for (c, p, *_), event_id in zip(grants, ids, strict=True)}

    def subscriptions(self, rows: Sequence[tuple[int, str, int]], now: dt.datetime) -> None:
        self.session.execute(insert(_S), [{"contact_id": c, "topic": t, "status": "active", "updated_at": now,
                                           "consent_event_id": e} for c, t, e in rows])


class _PgWriter(_Writer):
    """PostgreSQL: each batch is one INSERT ... SELECT FROM unnest(arrays). The driver sends a few arrays
    instead of a statement with thousands of placeholders, which it would have to parse every time."""

    def _rows(self, sql: str, **arrays: object) -> list[tuple[Any, ...]]:
        return list(self.session.connection().exec_driver_sql(sql, arrays))

    def contacts(self, rows: Sequence[tuple[str, str, str]], now: dt.datetime) -> Iterable[tuple[str, int]]:
        emails, names, keys = (list(column) for column in zip(*rows, strict=True))
        return [(email, contact_id) for contact_id, email in self._rows(
            "INSERT INTO contacts (email, name, created_at, link_key, followups_consent, soft_bounces) "
            "SELECT e, n, %(now)s, k, false, 0 FROM unnest(%(emails)s::text[], %(names)s::text[], %(keys)s::text[]) "
            "AS v(e, n, k) RETURNING id, email", now=now, emails=emails, names=names, keys=keys)]

    def events(self, grants: Sequence[Grant]) -> dict[tuple[int, str], int]:
        ids, purposes, sources, wordings, times = (list(column) for column in zip(*grants, strict=True))
        return {(contact_id, purpose): event_id for event_id, contact_id, purpose in self._rows(
            "INSERT INTO consent_events (contact_id, purpose, action, source, wording, created_at) "
            "SELECT c, p, 'granted', s, w, t FROM unnest(%(ids)s::bigint[], %(purposes)s::text[], "
            "%(sources)s::text[], %(wordings)s::text[], %(times)s::timestamptz[]) AS v(c, p, s, w, t) "
            "RETURNING id, contact_id, purpose", ids=ids, purposes=purposes, sources=sources, wordings=wordings,
            times=times)}

    def subscriptions(self, rows: Sequence[tuple[int, str, int]], now: dt.datetime) -> None:
        ids, topics, events = (list(column) for column in zip(*rows, strict=True))
        self.session.connection().exec_driver_sql(
            "INSERT INTO subscriptions (contact_id, topic, status, updated_at, consent_event_id) "
            "SELECT c, t, 'active', %(now)s, e FROM unnest(%(ids)s::bigint[], %(topics)s::text[], "
            "%(events)s::bigint[]) AS v(c, t, e)", {"now": now, "ids": ids, "topics": topics, "events": events})


def import_file(session: Session, secret: str, topics: dict[str, str], stream: TextIO | Iterable[str],
                now: dt.datetime, progress: Callable[[int], None] | None = None,
                on_checked: Callable[[ImportPlan], None] | None = None) -> ImportPlan:
    """Check and import in one go (the command line): one transaction, the caller's."""
    plan = check(session, secret, topics, stream, now)
    if on_checked is not None:
        on_checked(plan)
    commit(session, plan, now, progress)
    return plan
