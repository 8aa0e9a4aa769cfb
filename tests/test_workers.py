"""Forked helper processes: how many a send uses, their progress and counts, their failures."""

from __future__ import annotations

import os

import pytest

from mailer.outbound import workers


def test_auto_uses_a_process_per_core_up_to_the_connections_for_a_large_send() -> None:
    cores = os.cpu_count() or 1
    expected = min(cores, 4) if workers.available() else 1
    assert workers.count("auto", 4, 50_000) == expected
    assert workers.count("auto", 1, 50_000) == 1  # never more processes than connections
    assert workers.count("auto", 4, workers.AUTO_MINIMUM - 1) == 1  # a small send is not worth a fork
    assert workers.count(3, 4, 10) == 3  # a number is taken as it is


@pytest.mark.skipif(not workers.available(), reason="helpers are forked on Linux only")
def test_a_helper_reports_progress_and_hands_back_its_counts() -> None:
    seen: list[int] = []

    def work(progress) -> dict[str, int]:  # noqa: ANN001
        for step in (3, 4, 5):
            progress(step)
        return {"sent": 12, "failed": 0}

    helper = workers.fork(work, on_progress=seen.append)
    assert workers.wait_all([helper]) == [{"sent": 12, "failed": 0}]
    assert seen == [3, 4, 5] and helper.returncode == 0


@pytest.mark.skipif(not workers.available(), reason="helpers are forked on Linux only")
def test_a_failed_helper_fails_the_send_after_the_others_are_waited_for() -> None:
    def broken(progress) -> dict[str, int]:  # noqa: ANN001
        raise OSError("the database went away")

    def fine(progress) -> dict[str, int]:  # noqa: ANN001
        return {"sent": 1}

    failing, working = workers.fork(broken), workers.fork(fine)
    with pytest.raises(RuntimeError, match="exited with 1"):
        workers.wait_all([failing, working])
    assert working.returncode == 0 and working.result == {"sent": 1}


def test_the_connections_and_the_rate_limit_are_shared_out(settings) -> None:  # noqa: ANN001
    settings = settings.model_copy(update={"delivery": settings.delivery.model_copy(
        update={"connections": 4, "max_per_second": 10.0})})
    each = workers.share_out(settings, 2).delivery
    assert (each.connections, each.max_per_second) == (2, 5.0)
    assert workers.share_out(settings, 8).delivery.connections == 1  # never none
    assert settings.delivery.connections == 4  # the original is left as it was


@pytest.mark.skipif(not workers.available(), reason="helpers are forked on Linux only")
def test_the_processes_of_a_send_take_turns_at_sqlite_s_write_lock(tmp_path) -> None:  # noqa: ANN001
    """db.WriteTurn: a process waits while another holds the turn, and goes on the moment it is free."""
    import time

    from mailer import db

    database = str(tmp_path / "mailer.db")
    ready_read, ready_write = os.pipe()

    def holder(channel: workers.Channel) -> dict[str, int]:
        with db.WriteTurn(database):  # its own, opened after the fork, as a helper's Delivery does
            os.write(ready_write, b"x")
            time.sleep(0.4)
        return {"held": 1}

    helper = workers.fork(holder)
    assert os.read(ready_read, 1) == b"x"
    started = time.monotonic()
    with db.WriteTurn(database):
        waited = time.monotonic() - started
    assert workers.wait_all([helper]) == [{"held": 1}]
    assert 0.25 < waited < 2.0
    turn = db.WriteTurn(database)
    started = time.monotonic()
    with turn:  # free now: no wait
        pass
    assert time.monotonic() - started < 0.1
