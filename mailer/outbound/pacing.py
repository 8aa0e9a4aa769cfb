"""How fast one send goes: a rate limit shared by its connections, each connection's measured pace and
how many messages it takes at once, and the permits that keep it from running ahead of the database."""

from __future__ import annotations

import queue
import threading
import time

GROUP_SPAN = 0.02  # seconds of one connection's sending that one group consent check may cover


class RateLimiter:
    """At most `rate` sends per second across the threads of this process (0: no limit)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next_at = time.monotonic()
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            at = max(self.next_at, now)
            self.next_at = at + self.interval
        if at > now:
            time.sleep(at - now)


def group_size(largest: int, waiting: int, connections: int, seconds_per_message: float) -> int:
    """How many queued messages a connection takes (and checks consent for) at once: no more than its
    share of what is waiting, and about GROUP_SPAN of its sending: up to `largest` for a fast relay, one
    at a time for a slow one, so that every connection keeps busy."""
    return max(1, min(largest, 1 + waiting // connections, int(GROUP_SPAN / seconds_per_message)))


class Pace:
    """Seconds per message on one connection, smoothed; slow (one message a second) until measured."""

    def __init__(self) -> None:
        self.seconds = 1.0
        self._last: float | None = None

    def tick(self) -> None:
        now = time.monotonic()
        if self._last is not None:
            self.seconds = 0.8 * self.seconds + 0.2 * (now - self._last)
        self._last = now


class Permits:
    """A counting semaphore on queue.SimpleQueue, whose put and get are single C calls (it is taken and
    given back for every message; threading.Semaphore's Python-level Condition costs more)."""

    __slots__ = ("_tokens",)

    def __init__(self, count: int) -> None:
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(count):
            self._tokens.put(None)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        try:
            self._tokens.get(blocking, timeout)
        except queue.Empty:
            return False
        return True

    def release(self) -> None:
        self._tokens.put(None)
