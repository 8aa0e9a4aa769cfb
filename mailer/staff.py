"""Staff accounts: roles, argon2 password hashes, login checks, the lockout, and ending every session."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailer import access_log, audience
from mailer.models import STAFF_ROLES, StaffUser

log = logging.getLogger("mailer.staff")

MIN_PASSWORD = 12
# argon2 costs grow with the input: a megabyte "password" must not become a way to burn CPU.
MAX_PASSWORD = 1024
# This many wrong passwords in a row lock the account for LOCK_FOR.
MAX_FAILURES = 5
LOCK_FOR = dt.timedelta(minutes=15)

# argon2id with the library's defaults (RFC 9106's low-memory profile). Tests swap in a cheaper one.
HASHER = PasswordHasher()


class StaffError(Exception):
    """A staff account cannot be created as asked; the message is one line."""


@functools.lru_cache(maxsize=4)
def _dummy_hash(hasher: PasswordHasher) -> str:
    """A hash of a random password, verified when the address is unknown so the answer takes as long."""
    return hasher.hash(secrets.token_urlsafe(24))


def check_password_rules(password: str) -> None:
    """StaffError when the password is too short or absurdly long."""
    if len(password) < MIN_PASSWORD:
        raise StaffError(f"the password must be at least {MIN_PASSWORD} characters long")
    if len(password) > MAX_PASSWORD:
        raise StaffError(f"the password must be at most {MAX_PASSWORD} characters long")


def check_role(role: str) -> str:
    """StaffError unless `role` is one of admin, marketing, frontdesk."""
    if role not in STAFF_ROLES:
        raise StaffError(f"unknown role {role!r} (roles: {', '.join(STAFF_ROLES)})")
    return role


def _address(email: str) -> str:
    try:
        return audience.normalize_email(email)
    except audience.AudienceError as exc:
        raise StaffError(str(exc)) from None


def _existing(session: Session, email: str) -> StaffUser:
    address = _address(email)
    user = find(session, address)
    if user is None:
        raise StaffError(f"no staff account for {address}")
    return user


def create(session: Session, email: str, password: str, now: dt.datetime, *, role: str = "admin",
           actor: str = access_log.SYSTEM) -> StaffUser:
    """A new staff account; StaffError for a bad address or role, a weak password or an existing account."""
    address = _address(email)
    check_role(role)
    check_password_rules(password)
    if find(session, address) is not None:
        raise StaffError(f"a staff account for {address} already exists")
    user = StaffUser(email=address, password_hash=HASHER.hash(password), created_at=now, last_login_at=None,
                     failed_logins=0, locked_until=None, role=role, session_version=0, disabled_at=None)
    try:
        with session.begin_nested():
            session.add(user)
            session.flush()
    except IntegrityError:  # created by someone else a moment ago
        raise StaffError(f"a staff account for {address} already exists") from None
    access_log.record(session, actor=actor, action=access_log.STAFF_ADDED, now=now, staff_id=user.id,
                      detail=f"role {role}")
    log.info("staff account %s created (%s)", user.id, role)
    return user


def end_sessions(user: StaffUser) -> None:
    """Every session of this account ends at its next request, on every computer."""
    user.session_version = (user.session_version or 0) + 1


def set_password(session: Session, email: str, password: str) -> StaffUser:
    """A new password for an existing account; it also lifts a lockout and ends the account's sessions."""
    user = _existing(session, email)
    check_password_rules(password)
    user.password_hash = HASHER.hash(password)
    user.failed_logins = 0
    user.locked_until = None
    end_sessions(user)
    log.info("staff account %s: password changed", user.id)
    return user


def set_role(session: Session, email: str, role: str, now: dt.datetime, *, actor: str) -> tuple[StaffUser, str]:
    """Give an account another role (its sessions end, so no page opened under the old role stays usable).
    Returns the account and its previous role."""
    user = _existing(session, email)
    check_role(role)
    before = user.role
    if before != role:
        user.role = role
        end_sessions(user)
        access_log.record(session, actor=actor, action=access_log.ROLE_CHANGED, now=now, staff_id=user.id,
                          detail=f"{before} -> {role}")
        log.info("staff account %s: role %s -> %s", user.id, before, role)
    return user, before


def disable(session: Session, email: str, now: dt.datetime, *, actor: str) -> tuple[StaffUser, bool]:
    """No more logins for this account, and every open session of it ends now. Returns (account, changed)."""
    user = _existing(session, email)
    changed = user.disabled_at is None
    if changed:
        user.disabled_at = now
        access_log.record(session, actor=actor, action=access_log.STAFF_DISABLED, now=now, staff_id=user.id)
        log.info("staff account %s disabled", user.id)
    end_sessions(user)  # also for an account disabled before: a repeat must never leave a session open
    return user, changed


def enable(session: Session, email: str, now: dt.datetime, *, actor: str) -> tuple[StaffUser, bool]:
    """Let a disabled account log in again (with its password as it was). Returns (account, changed)."""
    user = _existing(session, email)
    changed = user.disabled_at is not None
    if changed:
        user.disabled_at = None
        user.failed_logins = 0
        user.locked_until = None
        access_log.record(session, actor=actor, action=access_log.STAFF_ENABLED, now=now, staff_id=user.id)
        log.info("staff account %s enabled", user.id)
    return user, changed


def listing(session: Session) -> list[StaffUser]:
    """Every staff account, by address."""
    return list(session.scalars(select(StaffUser).order_by(StaffUser.email)))


def find(session: Session, email: str) -> StaffUser | None:
    """The account for this (normalized) address, if any. Case does not matter: people type their own
    address in whatever case, and a clinic never has two staff whose addresses differ only by case."""
    return session.scalar(select(StaffUser).where(func.lower(StaffUser.email) == email.lower()).limit(1))


def _verify(hash_: str, password: str) -> bool:
    try:
        return HASHER.verify(hash_, password)
    except (VerificationError, InvalidHashError):
        return False


def authenticate(session: Session, email: str, password: str, now: dt.datetime) -> StaffUser | None:
    """The account when the address and password match and it is not locked; otherwise None.

    Every path verifies one argon2 hash (a dummy one for an unknown address), so the time an answer
    takes does not tell whether an account exists. The caller shows the same message for every None.
    """
    try:
        user = find(session, audience.normalize_email(email))
    except audience.AudienceError:
        user = None
    password = password[:MAX_PASSWORD + 1]
    if user is None:
        _verify(_dummy_hash(HASHER), password)
        log.warning("failed staff login: unknown account")
        return None
    matches = _verify(user.password_hash, password)
    if user.disabled_at is not None:
        log.warning("refused staff login: account %s is disabled", user.id)
        return None
    if user.locked_until is not None and user.locked_until > now:
        # Not counted: attempts during a lock must not extend it (that would let anyone keep staff out).
        log.warning("refused staff login: account %s is locked", user.id)
        return None
    if not matches:
        user.failed_logins = (user.failed_logins or 0) + 1
        if user.failed_logins >= MAX_FAILURES:
            user.locked_until = now + LOCK_FOR
            user.failed_logins = 0
            log.warning("staff account %s locked for %d minutes after %d failed logins", user.id,
                        LOCK_FOR.seconds // 60, MAX_FAILURES)
        else:
            log.warning("failed staff login: account %s (%d in a row)", user.id, user.failed_logins)
        return None
    user.failed_logins = 0
    user.locked_until = None
    user.last_login_at = now
    if HASHER.check_needs_rehash(user.password_hash):
        user.password_hash = HASHER.hash(password)
    log.info("staff account %s logged in", user.id)
    return user
