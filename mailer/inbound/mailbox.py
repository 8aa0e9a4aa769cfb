"""The mailboxes mail comes back to (bounces, replies): a maildir or an IMAP folder, each message handled once.

What has been handled is kept in the database, in the same transaction as what the messages changed:
for IMAP the folder's UIDVALIDITY and the highest UID handled, for a maildir the names of the messages
handled that are still in it. A crash between the commit and the marking cannot count a message twice,
and a person reading the mailbox (and so marking a message seen) before mailer gets to it hides
nothing. The marking itself (moved to a `processed` folder, or flagged seen) is for the people and mail
clients looking at the mailbox.
"""

from __future__ import annotations

import datetime as dt
import imaplib
import logging
import os
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol, Self, TypeVar

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from mailer.config import MailboxSettings
from mailer.models import HandledMessage, MailboxCursor

log = logging.getLogger("mailer.mailbox")

Mark = Literal["move", "seen", "none"]
R = TypeVar("R")

# Messages applied per database transaction.
BATCH_SIZE = 100
# A message larger than this is not a bounce or a reply worth reading (a bounce quoting a huge
# attachment): it is marked handled unread.
MAX_MESSAGE_BYTES = 10_000_000


class MailboxError(Exception):
    """The mailbox cannot be read (no such folder, login refused, untrusted certificate); one line."""


@dataclass(frozen=True)
class Incoming:
    """One message as it came: its key in the mailbox (maildir name or IMAP UID) and its bytes."""

    key: str
    raw: bytes


class Mailbox(Protocol):
    """Where messages arrive; `name` keys what was handled ("bounces", "replies")."""

    name: str
    where: str

    def pending(self, session: Session) -> list[str]: ...

    def read(self, key: str) -> bytes | None: ...

    def record(self, session: Session, keys: Sequence[str], now: dt.datetime) -> None: ...

    def mark(self, keys: Sequence[str]) -> None: ...

    def forget_gone(self, session: Session) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None: ...


class _Closing:
    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


# --- maildir -------------------------------------------------------------------------------------


class MaildirMailbox(_Closing):
    """The messages in a maildir's new/ and cur/ (not its subfolders).

    `mark="move"` moves each handled message into the maildir's `.processed` folder (seen there), so the
    inbox keeps meaning "not yet handled" for anyone reading it; `"seen"` moves it to cur/ with the S
    flag; `"none"` leaves it. Files are renamed, never rewritten: their bytes stay as they arrived.
    """

    PROCESSED = ".processed"

    def __init__(self, name: str, path: str | os.PathLike[str], mark: Mark = "move") -> None:
        self.name = name
        self.path = Path(path)
        self.where = f"maildir {self.path}"
        self.mark_mode = mark
        if not (self.path / "new").is_dir() or not (self.path / "cur").is_dir():
            raise MailboxError(f"{self.path}: not a maildir (it needs new/ and cur/ folders)")
        self._files: dict[str, Path] = {}

    def _listing(self) -> dict[str, Path]:
        files: dict[str, Path] = {}
        for sub in ("new", "cur"):
            try:
                names = os.listdir(self.path / sub)
            except FileNotFoundError:
                continue
            for file_name in names:
                if file_name.startswith("."):
                    continue
                files[file_name.split(":", 1)[0]] = self.path / sub / file_name
        return files

    def pending(self, session: Session) -> list[str]:
        # Listed once (sorted: maildir names begin with the arrival time); messages moved away meanwhile
        # by another reader are skipped when read.
        self._files = self._listing()
        handled = set(session.scalars(select(HandledMessage.key).where(HandledMessage.mailbox == self.name)))
        return sorted(key for key in self._files if key not in handled)

    def read(self, key: str) -> bytes | None:
        path = self._files.get(key)
        if path is None:
            return None
        try:
            if path.stat().st_size > MAX_MESSAGE_BYTES:
                log.warning("%s: message %s is larger than %d bytes; not read", self.where, key, MAX_MESSAGE_BYTES)
                return b""
            return path.read_bytes()
        except FileNotFoundError:
            # A mail client moved it from new/ to cur/ (or flagged it) meanwhile: look again.
            path = self._listing().get(key)
            if path is None:
                return None
            self._files[key] = path
            return path.read_bytes()

    def record(self, session: Session, keys: Sequence[str], now: dt.datetime) -> None:
        session.add_all(HandledMessage(mailbox=self.name, key=key, handled_at=now) for key in keys)

    def mark(self, keys: Sequence[str]) -> None:
        if self.mark_mode == "none":
            return
        if self.mark_mode == "move":
            target = self.path / self.PROCESSED
            for sub in ("tmp", "new", "cur"):
                (target / sub).mkdir(parents=True, exist_ok=True)
            (target / "maildirfolder").touch(exist_ok=True)
        else:
            target = self.path
        current = self._listing()
        for key in keys:
            path = current.get(key)
            if path is None:
                continue
            flags = set(path.name.split(":2,", 1)[1]) if ":2," in path.name else set()
            flags.add("S")
            try:
                os.rename(path, target / "cur" / f"{key}:2,{''.join(sorted(flags))}")
            except FileNotFoundError:
                continue  # moved meanwhile

    def forget_gone(self, session: Session) -> None:
        """Handled messages no longer in the maildir (moved, deleted) need no record any more."""
        present = set(self._listing())
        handled = set(session.scalars(select(HandledMessage.key).where(HandledMessage.mailbox == self.name)))
        gone = sorted(handled - present)
        for start in range(0, len(gone), 500):
            session.execute(delete(HandledMessage).where(HandledMessage.mailbox == self.name,
                                                         HandledMessage.key.in_(gone[start:start + 500])))


# --- IMAP ----------------------------------------------------------------------------------------


class ImapMailbox(_Closing):
    """An IMAP folder over TLS (certificate verified). Messages are fetched with BODY.PEEK, so reading
    marks nothing; `mark="seen"` sets \\Seen once handled, `"none"` leaves the flags alone.

    The first run (or one after the server renumbered the folder: a new UIDVALIDITY) takes the unseen
    messages; after that, every message with a UID above the last one handled, seen or not.
    """

    def __init__(self, name: str, host: str, port: int, user: str, password: str, folder: str = "INBOX", *,
                 mark: Mark = "seen", ssl_context: ssl.SSLContext | None = None, timeout: float = 60.0) -> None:
        self.name = name
        self.where = f"IMAP {host}:{port}"
        self.mark_mode = mark
        context = ssl_context or ssl.create_default_context()
        try:
            self._imap = imaplib.IMAP4_SSL(host, port, ssl_context=context, timeout=timeout)
        except ssl.SSLCertVerificationError as exc:
            raise MailboxError(f"{self.where}: certificate not trusted ({exc.verify_message})") from None
        except (OSError, imaplib.IMAP4.error) as exc:
            raise MailboxError(f"{self.where}: cannot connect: {one_line_error(exc)}") from None
        try:
            self._imap.login(user, password)
            kind, data = self._imap.select(quote(folder))
            if kind != "OK":
                raise MailboxError(f"{self.where}: cannot open folder {folder!r}: {imap_text(data)}")
            _kind, validity = self._imap.response("UIDVALIDITY")
            self.uidvalidity = _first_int(validity)
        except imaplib.IMAP4.error as exc:
            self._shutdown()
            raise MailboxError(f"{self.where}: {one_line_error(exc)}") from None
        except BaseException:
            self._shutdown()
            raise

    def _search(self, *criteria: str) -> list[int]:
        try:
            _kind, data = self._imap.uid("SEARCH", *criteria)
        except (imaplib.IMAP4.error, OSError) as exc:
            raise MailboxError(f"{self.where}: {one_line_error(exc)}") from None
        words = b" ".join(item for item in data if isinstance(item, bytes)).split()
        return sorted({int(word) for word in words if word.isdigit()})

    def pending(self, session: Session) -> list[str]:
        cursor = session.get(MailboxCursor, self.name)
        if cursor is not None and self.uidvalidity is not None and cursor.uidvalidity == self.uidvalidity:
            # "n:*" always includes the highest UID, even below n: hence the filter.
            uids = [uid for uid in self._search("UID", f"{cursor.last_uid + 1}:*") if uid > cursor.last_uid]
        else:
            uids = self._search("UNSEEN")
        return [str(uid) for uid in uids]

    def read(self, key: str) -> bytes | None:
        try:
            _kind, fetched = self._imap.uid("FETCH", key, "(BODY.PEEK[])")
        except (imaplib.IMAP4.error, OSError) as exc:
            raise MailboxError(f"{self.where}: {one_line_error(exc)}") from None
        return fetched_body(fetched)

    def record(self, session: Session, keys: Sequence[str], now: dt.datetime) -> None:
        if not keys or self.uidvalidity is None:
            return
        highest = max(int(key) for key in keys)
        cursor = session.get(MailboxCursor, self.name)
        if cursor is None:
            session.add(MailboxCursor(name=self.name, uidvalidity=self.uidvalidity, last_uid=highest, updated_at=now))
        else:
            if cursor.uidvalidity != self.uidvalidity:
                cursor.uidvalidity, cursor.last_uid = self.uidvalidity, 0
            cursor.last_uid = max(cursor.last_uid, highest)
            cursor.updated_at = now

    def mark(self, keys: Sequence[str]) -> None:
        if self.mark_mode == "none" or not keys:
            return
        try:
            for start in range(0, len(keys), 200):
                self._imap.uid("STORE", ",".join(keys[start:start + 200]), "+FLAGS.SILENT", r"(\Seen)")
        except (imaplib.IMAP4.error, OSError) as exc:
            raise MailboxError(f"{self.where}: {one_line_error(exc)}") from None

    def forget_gone(self, session: Session) -> None:
        pass  # the cursor is all there is

    def close(self) -> None:
        try:
            self._imap.close()
            self._imap.logout()
        except (imaplib.IMAP4.error, OSError):
            self._shutdown()

    def _shutdown(self) -> None:
        try:
            self._imap.shutdown()
        except OSError:
            pass


def _first_int(data: Sequence[object] | None) -> int | None:
    for item in data or []:
        text = item.decode("ascii", "replace") if isinstance(item, bytes) else str(item)
        if text.strip().isdigit():
            return int(text.strip())
    return None


def fetched_body(data: Sequence[object]) -> bytes | None:
    """The message bytes of a `UID FETCH ... (BODY.PEEK[])` answer, as imaplib returns it.

    imaplib gives a list mixing (b'1 (UID 7 BODY[] {1234}', b'<literal>') pairs with bare bytes such as
    b')' or unsolicited b'2 (FLAGS (\\Seen))' lines; the literal after the BODY[] item is the message.
    """
    for item in data:
        if not (isinstance(item, tuple) and len(item) >= 2):
            continue
        head, literal = item[0], item[1]
        if isinstance(head, bytes) and isinstance(literal, bytes) and (b"BODY[]" in head.upper()
                                                                        or b"RFC822 " in head.upper()):
            return literal
    return None


def quote(folder: str) -> str:
    """An IMAP quoted string: imaplib does not quote mailbox names itself (spaces would break SELECT)."""
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def imap_text(data: Sequence[object]) -> str:
    parts = [item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item) for item in data or []]
    return " ".join(" ".join(parts).split())[:200]


def one_line_error(exc: BaseException) -> str:
    text = str(exc)
    # imaplib puts the server's bytes repr in its errors: b'[AUTHENTICATIONFAILED] Invalid credentials'
    if text.startswith(("b'", 'b"')) and text.endswith(("'", '"')):
        text = text[2:-1]
    return " ".join(text.split())[:200] or type(exc).__name__


# --- the configured mailbox, drained ---------------------------------------------------------------


def open_mailbox(name: str, settings: MailboxSettings, password: str, *, password_env: str,
                 mark: Mark) -> Mailbox:
    """The mailbox `[name]` in config.toml describes, opened; a one-line error naming the key otherwise."""
    if settings.source == "maildir":
        if not settings.maildir:
            raise MailboxError(f'{name}.source is "maildir" but {name}.maildir is empty: set it to the folder '
                               "where the messages arrive")
        return MaildirMailbox(name, settings.maildir, mark)
    if settings.source == "imap":
        for key in ("imap_host", "imap_user"):
            if not getattr(settings, key):
                raise MailboxError(f'{name}.source is "imap" but {name}.{key} is empty')
        if not password:
            raise MailboxError(f'{name}.source is "imap" but {password_env} is not set')
        return ImapMailbox(name, settings.imap_host, settings.imap_port, settings.imap_user, password,
                           settings.imap_folder, mark="none" if mark == "none" else "seen")
    raise MailboxError(f'{name}.source is "none": set it to maildir or imap in config.toml')


def drain(sessions: sessionmaker[Session], mailbox: Mailbox, apply: Callable[[Session, list[Incoming]], R],
          now: dt.datetime, batch_size: int = BATCH_SIZE) -> list[R]:
    """Hand every message not handled yet to `apply`, a batch per transaction that also records the batch
    as handled; mark each batch in the mailbox once its transaction has committed."""
    with sessions() as session:
        keys = mailbox.pending(session)
    results: list[R] = []
    started = time.monotonic()
    for start in range(0, len(keys), batch_size):
        batch_keys = keys[start:start + batch_size]
        batch = [Incoming(key, raw) for key in batch_keys if (raw := mailbox.read(key)) is not None]
        with sessions.begin() as session:
            results.append(apply(session, batch))
            mailbox.record(session, [item.key for item in batch], now)
        mailbox.mark([item.key for item in batch])
    with sessions.begin() as session:
        mailbox.forget_gone(session)
    if keys:
        log.info("%s mailbox: %d messages handled in %.1f s", mailbox.name, len(keys), time.monotonic() - started)
    return results


