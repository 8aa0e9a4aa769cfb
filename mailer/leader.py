"""The leader lock: of several `mailer serve` processes on one database, one runs the scheduled jobs.

PostgreSQL: a session-level advisory lock held on a dedicated connection. The server frees it the
moment that connection ends (process killed, host gone, network cut: TCP keepalives end the session),
so a standby takes over at its next attempt.

SQLite (one host, one file): a row in `leases` with the holder's id and an expiry that the leader
renews every lease/3. A standby takes over when the row has expired; a clean stop deletes it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable

from sqlalchemy import Connection, Engine, create_engine, delete, select, text, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from mailer.models import Lease
from mailer.runtime import system_clock

log = logging.getLogger("mailer.leader")

# The advisory lock key: "mailer" and a 1, one constant per database (advisory locks are per database,
# so two installations on one PostgreSQL server do not block each other).
ADVISORY_KEY = 0x6D61696C6572_0001
LEASE_NAME = "scheduler"
DEFAULT_LEASE = dt.timedelta(seconds=30)

Clock = Callable[[], dt.datetime]


def make_holder() -> str:
    """This process's id in the lock: host:pid:random (the random part tells a restarted pid apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class LeaderLock:
    """Try, hold, renew and release the scheduler's leadership; call try_acquire() every heartbeat."""

    def __init__(self, engine: Engine, holder: str, clock: Clock = system_clock,
                 lease: dt.timedelta = DEFAULT_LEASE) -> None:
        if lease <= dt.timedelta(0):
            raise ValueError("the leader lease must be positive")
        self.engine = engine
        self.holder = holder
        self.clock = clock
        self.lease = lease
        self.postgres = engine.dialect.name == "postgresql"
        # Database work (which may wait for a busy SQLite file or a slow network) is serialised by _io;
        # the state below changes under _state only briefly, so is_leader (asked by /healthz and before
        # every job) never waits for a heartbeat in progress.
        self._io = threading.Lock()
        self._state = threading.Lock()
        self._held = False
        # Leadership counts only until this instant unless renewed or re-confirmed: a leader that can no
        # longer reach the database stops running jobs before a standby can take over.
        self._valid_until: dt.datetime | None = None
        self._other_expires_at: dt.datetime | None = None  # SQLite: when the other holder's lease ends
        self._connection: Connection | None = None  # PostgreSQL: the session that holds the lock
        self._lock_engine: Engine | None = None

    @property
    def heartbeat(self) -> dt.timedelta:
        return self.lease / 3

    @property
    def is_leader(self) -> bool:
        """True while this process holds the lock and has confirmed it within the lease."""
        with self._state:
            return self._held and self._valid_until is not None and self.clock() < self._valid_until

    def next_attempt_in(self) -> float:
        """Seconds until the next try_acquire(): a heartbeat, or (SQLite standby) right when the
        other holder's lease runs out, so a dead leader is replaced within the lease time."""
        interval = self.heartbeat.total_seconds()
        with self._state:
            if self._held or self._other_expires_at is None:
                return interval
            until = (self._other_expires_at - self.clock()).total_seconds() + 0.05
        return min(interval, max(0.05, until))

    def try_acquire(self) -> bool:
        """Acquire, renew or re-confirm leadership; False when another process holds it or the database
        does not answer. Safe to call from any thread, as often as you like."""
        with self._io:
            was = self._held
            held = self._try_postgres() if self.postgres else self._try_lease()
        if held and not was:
            log.info("leader lock acquired: this process runs the scheduled jobs", extra={"holder": self.holder})
        elif was and not held:
            log.warning("leader lock lost: this process stops running scheduled jobs", extra={"holder": self.holder})
        return held

    def _settle(self, held: bool, valid_until: dt.datetime | None, other_expires_at: dt.datetime | None = None) -> bool:
        with self._state:
            self._held, self._valid_until, self._other_expires_at = held, valid_until, other_expires_at
        return held

    def release(self) -> None:
        """Give leadership up at once (a clean stop), so a standby need not wait for the lease to end."""
        with self._io:
            was = self._held
            self._settle(False, None)
            if self.postgres:
                self._drop_connection(unlock=True)
                if self._lock_engine is not None:
                    self._lock_engine.dispose()
                    self._lock_engine = None
            elif was:
                try:
                    with self.engine.begin() as connection:
                        connection.execute(delete(Lease).where(Lease.name == LEASE_NAME, Lease.holder == self.holder))
                except SQLAlchemyError as exc:  # the lease then simply runs out
                    log.warning("could not release the leader lease (%s); it expires by itself", type(exc).__name__)
        if was:
            log.info("leader lock released", extra={"holder": self.holder})

    # --- SQLite: a lease row ------------------------------------------------------------------------

    def _try_lease(self) -> bool:
        now = self.clock()
        until = now + self.lease
        try:
            # One transaction (BEGIN IMMEDIATE on SQLite), and each statement re-checks its condition,
            # so of two standbys racing for an expired lease exactly one wins.
            with self.engine.begin() as connection:
                mine = Lease.name == LEASE_NAME
                acquired = bool(connection.execute(
                    update(Lease).where(mine, Lease.holder == self.holder).values(expires_at=until)
                ).rowcount)
                if not acquired:
                    acquired = bool(connection.execute(
                        update(Lease).where(mine, Lease.expires_at < now)
                        .values(holder=self.holder, expires_at=until, acquired_at=now)
                    ).rowcount)
                if not acquired:
                    acquired = bool(connection.execute(
                        sqlite_insert(Lease)
                        .values(name=LEASE_NAME, holder=self.holder, expires_at=until, acquired_at=now)
                        .on_conflict_do_nothing(index_elements=["name"])
                    ).rowcount)
                other = None if acquired else connection.execute(
                    select(Lease.expires_at).where(mine)).scalar_one_or_none()
        except SQLAlchemyError as exc:
            # Busy or unreachable: keep what we had; is_leader ends by itself when the lease runs out.
            log.warning("leader lease not renewed (%s)", type(exc).__name__)
            return self._held
        return self._settle(acquired, until if acquired else None, other)

    # --- PostgreSQL: a session advisory lock -------------------------------------------------------

    def _engine_for_lock(self) -> Engine:
        """An engine without a pool: closing the lock's connection really ends the session (and the lock)."""
        if self._lock_engine is None:
            seconds = max(1, int(self.lease.total_seconds()))
            idle, interval = max(1, seconds // 3), max(1, seconds // 6)
            keepalive = f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval} -c tcp_keepalives_count=3"
            self._lock_engine = create_engine(
                self.engine.url,
                poolclass=NullPool,
                isolation_level="AUTOCOMMIT",
                connect_args={
                    "application_name": f"mailer-leader:{self.holder}"[:63],
                    "connect_timeout": max(2, seconds // 3),
                    # Client side: a query on a dead network fails within about the lease, not TCP's 15 minutes.
                    "keepalives": 1, "keepalives_idle": idle, "keepalives_interval": interval,
                    "keepalives_count": 3, "tcp_user_timeout": seconds * 1000,
                    # Server side: the server ends a vanished host's session, freeing the lock, as fast.
                    "options": keepalive,
                },
            )
        return self._lock_engine

    def _try_postgres(self) -> bool:
        if self._connection is not None:
            try:
                # The lock lives as long as this session; a round trip proves the session is alive.
                self._connection.exec_driver_sql("SELECT 1")
                return self._settle(True, self.clock() + self.lease)
            except SQLAlchemyError as exc:
                log.warning("leader lock connection lost (%s)", type(exc).__name__)
                self._drop_connection(unlock=False)
                self._settle(False, None)
        connection = None
        try:
            connection = self._engine_for_lock().connect()
            got = bool(connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_KEY}).scalar())
        except SQLAlchemyError as exc:
            log.warning("leader lock: the database does not answer (%s)", type(exc).__name__)
            got = False
        if not got:
            _close_quietly(connection)
            return self._settle(False, None)
        self._connection = connection
        return self._settle(True, self.clock() + self.lease)

    def _drop_connection(self, *, unlock: bool) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and unlock:
            try:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_KEY})
            except SQLAlchemyError:
                pass  # closing the session below frees the lock anyway
        _close_quietly(connection)


def _close_quietly(connection: Connection | None) -> None:
    """Close a connection that may already be broken (its session then ended with it)."""
    if connection is None:
        return
    try:
        connection.close()
    except SQLAlchemyError:
        pass
