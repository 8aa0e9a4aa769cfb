"""The retry policy on its own: every rule from a result to a row's next state, no server, no database."""

from __future__ import annotations

import datetime as dt

import pytest

from mailer.outbound.retry import Policy, backoff, next_state, suppresses
from mailer.outbound.store import Claimed
from mailer.outbound.transport import SendResult

T0 = dt.datetime(2027, 3, 14, 9, 0, tzinfo=dt.UTC)
POLICY = Policy(retry_initial=dt.timedelta(minutes=5), retry_max=dt.timedelta(hours=1),
                max_age=dt.timedelta(days=2), unknown_retry_delay=dt.timedelta(minutes=30), max_age_text="P2D")


def row(attempts: int = 0, was_unknown: bool = False, created_at: dt.datetime = T0) -> Claimed:
    return Claimed(id=7, kind="newsletter", campaign_id=3, enrollment_id=None, step=None, contact_id=11,
                   email="ana@example.org", name="Ana", link_key="k", attempts=attempts, was_unknown=was_unknown,
                   created_at=created_at)


def test_sent_counts_the_attempt_and_frees_the_row() -> None:
    after = next_state(row(attempts=1), SendResult("sent", 250, "ok"), T0, POLICY)
    assert after.state == "sent" and not after.suppress
    assert after.changes == {"state": "sent", "attempts": 2, "sent_at": T0, "smtp_code": 250, "last_error": None,
                             "lease_until": None, "claimed_by": None}


def test_skipped_is_no_attempt() -> None:
    after = next_state(row(attempts=1), SendResult("skipped", None, "contact erased"), T0, POLICY)
    assert after.state == "skipped" and "attempts" not in after.changes
    assert after.changes["last_error"] == "contact erased"


def test_a_refused_address_fails_and_is_suppressed() -> None:
    result = SendResult("permanent", 550, "RCPT TO: 550 5.1.1 no such user", "rcpt", address_rejected=True)
    after = next_state(row(), result, T0, POLICY)
    assert (after.state, after.suppress) == ("failed", True)
    assert after.changes["smtp_code"] == 550 and after.changes["attempts"] == 1


def test_a_permanent_refusal_of_the_message_fails_without_suppressing() -> None:
    result = SendResult("permanent", 554, "end of DATA: 554 5.7.1 spam", "data")
    after = next_state(row(), result, T0, POLICY)
    assert (after.state, after.suppress) == ("failed", False)


def test_suppression_is_decided_in_one_place() -> None:
    assert suppresses(SendResult("permanent", 550, "x", address_rejected=True))
    assert not suppresses(SendResult("permanent", 554, "x"))
    # A temporary refusal never suppresses, whatever the transport thought of the address.
    assert not suppresses(SendResult("temporary", 450, "x", address_rejected=True))


@pytest.mark.parametrize("attempts", [0, 1, 3, 9])
def test_a_temporary_failure_is_deferred_by_the_backoff(attempts: int) -> None:
    after = next_state(row(attempts=attempts), SendResult("temporary", 451, "greylisted"), T0, POLICY, jitter=1.0)
    assert after.state == "deferred" and not after.suppress
    assert after.changes["due_at"] == T0 + backoff(POLICY, attempts + 1)
    assert after.changes["attempts"] == attempts + 1 and after.changes["last_error"] == "greylisted"


def test_the_sender_refused_is_deferred_and_suppresses_nobody() -> None:
    result = SendResult("temporary", 535, "authentication failed", "connect", sender_refused=True)
    after = next_state(row(), result, T0, POLICY)
    assert (after.state, after.suppress) == ("deferred", False)


def test_temporary_failures_give_up_after_max_age() -> None:
    old = row(attempts=12, created_at=T0 - dt.timedelta(days=2))
    after = next_state(old, SendResult("temporary", 421, "busy"), T0, POLICY)
    assert after.state == "failed" and not after.suppress
    assert after.changes["last_error"] == "gave up after P2D: busy"
    younger = row(attempts=12, created_at=T0 - dt.timedelta(days=2) + dt.timedelta(seconds=1))
    assert next_state(younger, SendResult("temporary", 421, "busy"), T0, POLICY).state == "deferred"


def test_unknown_is_tried_once_more_then_failed() -> None:
    first = next_state(row(), SendResult("unknown", None, "connection lost"), T0, POLICY)
    assert first.state == "unknown" and first.changes["was_unknown"] is True
    assert first.changes["due_at"] == T0 + POLICY.unknown_retry_delay
    second = next_state(row(attempts=1, was_unknown=True), SendResult("unknown", None, "lost again"), T0, POLICY)
    assert second.state == "failed" and "twice" in second.changes["last_error"]


def test_backoff_doubles_from_the_first_delay_up_to_the_cap_with_the_jitter_given() -> None:
    delays = [backoff(POLICY, attempt) for attempt in range(1, 8)]
    assert delays[:5] == [dt.timedelta(minutes=m) for m in (5, 10, 20, 40, 60)]
    assert delays[-1] == POLICY.retry_max
    assert backoff(POLICY, 1, 1.2) == dt.timedelta(minutes=6)
    assert backoff(POLICY, 1000) == POLICY.retry_max  # no overflow however many attempts


def test_long_reasons_are_cut() -> None:
    after = next_state(row(), SendResult("permanent", 550, "x" * 5000), T0, POLICY)
    assert len(after.changes["last_error"]) == 2000
