"""What a message's result makes of its outbox row: the next state and whether to suppress the address.

A pure function of (claimed row, result, now, policy): no database, no clock, no randomness of its own
(the backoff's jitter is passed in), so every rule is tested on its own.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mailer.config import duration

if TYPE_CHECKING:
    from mailer.config import Settings
    from mailer.outbound.store import Claimed
    from mailer.outbound.transport import SendResult

ERROR_LENGTH = 2000  # characters of a reason kept on the row


@dataclass(frozen=True, slots=True)
class Policy:
    """The retry settings (`delivery.retry_initial`, `retry_max`, `max_age`, `unknown_retry_delay`)."""

    retry_initial: dt.timedelta
    retry_max: dt.timedelta
    max_age: dt.timedelta
    unknown_retry_delay: dt.timedelta
    max_age_text: str = ""  # as the config says it, for the reason given up with

    @classmethod
    def of(cls, settings: Settings) -> Policy:
        delivery = settings.delivery
        return cls(duration(delivery.retry_initial), duration(delivery.retry_max), duration(delivery.max_age),
                   duration(delivery.unknown_retry_delay), delivery.max_age)


@dataclass(frozen=True, slots=True)
class Next:
    """A row's next state: `changes` are the columns to write besides its id; `suppress` says the address
    was refused for good and goes on the suppression list (a hard bounce)."""

    state: str  # sent, deferred, unknown, failed or skipped
    changes: dict[str, Any]
    suppress: bool = False


def backoff(policy: Policy, attempts: int, jitter: float = 1.0) -> dt.timedelta:
    """retry_initial, doubled per attempt, capped at retry_max; times `jitter` (the caller draws it from
    0.8 to 1.2, so retries of one campaign spread out instead of coming back together)."""
    delay = min(policy.retry_max, policy.retry_initial * (2 ** min(max(0, attempts - 1), 20)))
    return delay * jitter


def suppresses(result: SendResult) -> bool:
    """Whether a result puts the recipient's address on the suppression list: a permanent refusal of
    the address itself, as the transport saw it. The one place that decides it."""
    return result.outcome == "permanent" and result.address_rejected


def next_state(row: Claimed, result: SendResult, now: dt.datetime, policy: Policy, jitter: float = 1.0) -> Next:
    """The row's next state after `result`, which arrived at `now`."""
    released = {"lease_until": None, "claimed_by": None}
    attempts = row.attempts + 1
    detail = result.detail
    if result.outcome == "sent":
        return Next("sent", {**released, "state": "sent", "attempts": attempts, "sent_at": now,
                             "smtp_code": result.code, "last_error": None})
    if result.outcome == "skipped":  # never handed over: no attempt
        return Next("skipped", {**released, "state": "skipped", "last_error": detail[:ERROR_LENGTH]})
    failed = {**released, "state": "failed", "attempts": attempts, "smtp_code": result.code}
    if result.outcome == "permanent":
        return Next("failed", {**failed, "last_error": detail[:ERROR_LENGTH]}, suppress=suppresses(result))
    if result.outcome == "unknown":
        # It may have arrived: one more try after a pause, never a third (that could be a third copy).
        if row.was_unknown:
            reason = f"no reply after the message was sent, twice: {detail}"
            return Next("failed", {**failed, "last_error": reason[:ERROR_LENGTH]})
        reason = f"no reply after the message was sent: {detail}"
        return Next("unknown", {**released, "state": "unknown", "was_unknown": True, "attempts": attempts,
                                "due_at": now + policy.unknown_retry_delay, "last_error": reason[:ERROR_LENGTH]})
    if now - row.created_at >= policy.max_age:  # temporary, for too long: given up, nobody suppressed
        reason = f"gave up after {policy.max_age_text or policy.max_age}: {detail}"
        return Next("failed", {**failed, "last_error": reason[:ERROR_LENGTH]})
    return Next("deferred", {**released, "state": "deferred", "attempts": attempts, "smtp_code": result.code,
                             "due_at": now + backoff(policy, attempts, jitter), "last_error": detail[:ERROR_LENGTH]})
