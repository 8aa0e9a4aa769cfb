"""The mailbox reader: every message handled once, recorded with its effect, whoever reads the mailbox too."""

from __future__ import annotations

import mailbox as stdlib_mailbox
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailer.inbound.mailbox import ImapMailbox, Incoming, MaildirMailbox, drain, fetched_body
from mailer.models import HandledMessage
from tests.conftest import utc
from tests.imap_server import ImapServer, make_certificate, running

T0 = utc(2026, 12, 1, 12, 0)
Sessions = sessionmaker[Session]


def message(n: int) -> bytes:
    return f"From: someone{n}@mail.example\r\nSubject: note {n}\r\nMessage-ID: <n{n}@mail.example>\r\n\r\nHi.\r\n".encode()


class Recorder:
    """An `apply` that remembers what it was given, and can be told to fail."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.fail = False

    def __call__(self, session: Session, batch: list[Incoming]) -> int:
        if self.fail:
            raise RuntimeError("the database went away")
        self.seen.extend(item.raw for item in batch)
        return len(batch)


@pytest.fixture
def maildir(tmp_path: Path) -> Path:
    folder = tmp_path / "Maildir"
    stdlib_mailbox.Maildir(folder, create=True)
    return folder


def add(folder: Path, raw: bytes, *, seen: bool = False) -> str:
    key = stdlib_mailbox.Maildir(folder, create=False).add(raw)
    if seen:  # a person read it with a mail client first: moved to cur/ and flagged, bytes untouched
        (folder / "new" / key).rename(folder / "cur" / f"{key}:2,S")
    return key


def test_a_maildir_message_is_handled_once_even_if_marking_never_happened(sessions: Sessions, maildir: Path) -> None:
    add(maildir, message(1))
    add(maildir, message(2), seen=True)
    apply = Recorder()
    with MaildirMailbox("replies", maildir, mark="none") as box:  # as if the process died before marking
        assert drain(sessions, box, apply, T0) == [2]
    assert sorted(apply.seen) == sorted([message(1), message(2)])
    with MaildirMailbox("replies", maildir, mark="none") as box:
        assert drain(sessions, box, apply, T0) == []
    assert len(apply.seen) == 2


def test_a_failed_batch_is_handled_again_next_time(sessions: Sessions, maildir: Path) -> None:
    add(maildir, message(1))
    apply = Recorder()
    apply.fail = True
    with MaildirMailbox("bounces", maildir) as box, pytest.raises(RuntimeError):
        drain(sessions, box, apply, T0)
    assert len(stdlib_mailbox.Maildir(maildir, create=False)) == 1  # not marked: nothing was recorded
    apply.fail = False
    with MaildirMailbox("bounces", maildir) as box:
        assert drain(sessions, box, apply, T0) == [1]
    assert apply.seen == [message(1)]


def test_seen_marking_keeps_bytes_and_moved_messages_are_forgotten(sessions: Sessions, maildir: Path) -> None:
    add(maildir, message(1))
    with MaildirMailbox("replies", maildir, mark="seen") as box:
        drain(sessions, box, Recorder(), T0)
    box = stdlib_mailbox.Maildir(maildir, create=False)
    [key] = box.keys()
    assert box.get_message(key).get_subdir() == "cur" and "S" in box.get_message(key).get_flags()
    assert box.get_bytes(key) == message(1)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(HandledMessage)) == 1
    box.remove(key)  # staff deleted it
    with MaildirMailbox("replies", maildir, mark="seen") as reader:
        drain(sessions, reader, Recorder(), T0)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(HandledMessage)) == 0


def test_move_marking_files_handled_messages_under_processed(sessions: Sessions, maildir: Path) -> None:
    add(maildir, message(1))
    with MaildirMailbox("bounces", maildir, mark="move") as box:
        drain(sessions, box, Recorder(), T0)
    box = stdlib_mailbox.Maildir(maildir, create=False)
    assert len(box) == 0
    processed = box.get_folder("processed")
    assert [processed.get_bytes(k) for k in processed.keys()] == [message(1)]


# --- IMAP ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certificate(tmp_path_factory.mktemp("imap-tls"))


@pytest.fixture
def imap_server(certificate: Path) -> Iterator[ImapServer]:
    with running(certificate, "replies@therapycentral.example", "pw") as server:
        yield server


def imap(server: ImapServer, certificate: Path, mark: str = "seen") -> ImapMailbox:
    return ImapMailbox("replies", "127.0.0.1", server.port, "replies@therapycentral.example", "pw", mark=mark,
                       ssl_context=ssl.create_default_context(cafile=certificate))


def test_imap_reads_unseen_first_then_everything_past_the_last_uid(sessions: Sessions, imap_server: ImapServer,
                                                                   certificate: Path) -> None:
    imap_server.add(message(1), "\\Seen")  # dealt with before mailer was set up: left alone
    imap_server.add(message(2))
    apply = Recorder()
    with imap(imap_server, certificate) as box:
        assert drain(sessions, box, apply, T0) == [1]
    assert apply.seen == [message(2)]
    assert all("\\Seen" in m.flags for m in imap_server.messages)

    imap_server.add(message(3), "\\Seen")  # a person read it before mailer's next run: still handled
    imap_server.add(message(4))
    with imap(imap_server, certificate) as box:
        assert drain(sessions, box, apply, T0) == [2]
    assert apply.seen == [message(2), message(3), message(4)]
    with imap(imap_server, certificate) as box:
        assert drain(sessions, box, apply, T0) == []


def test_imap_without_marking_leaves_flags_and_still_reads_once(sessions: Sessions, imap_server: ImapServer,
                                                                certificate: Path) -> None:
    imap_server.add(message(1))
    apply = Recorder()
    for _ in range(2):
        with imap(imap_server, certificate, mark="none") as box:
            drain(sessions, box, apply, T0)
    assert apply.seen == [message(1)] and imap_server.messages[0].flags == set()
    assert "UID STORE" not in imap_server.commands


def test_a_renumbered_imap_folder_falls_back_to_unseen(sessions: Sessions, imap_server: ImapServer,
                                                       certificate: Path) -> None:
    imap_server.add(message(1))
    apply = Recorder()
    with imap(imap_server, certificate) as box:
        drain(sessions, box, apply, T0)
    imap_server.renumber()
    imap_server.add(message(2))
    with imap(imap_server, certificate) as box:
        drain(sessions, box, apply, T0)
    assert apply.seen == [message(1), message(2)]


def test_fetched_body_reads_imaplibs_answer_shapes() -> None:
    assert fetched_body([(b"1 (UID 7 BODY[] {5}", b"Hello"), b")"]) == b"Hello"
    unsolicited_first = [b"3 (FLAGS (\\Seen))", (b"1 (UID 7 BODY[] {2}", b"Hi"), b" FLAGS (\\Recent))"]
    assert fetched_body(unsolicited_first) == b"Hi"
    assert fetched_body([None]) is None
    assert fetched_body([b"1 (UID 7 FLAGS ())"]) is None
