"""A request to stop, as a signal handler makes it: set once, read by the loops and threads of a command."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType


class StopRequest:
    """Set once, by a signal handler or a thread; read with `is_set()` like a threading.Event.

    Lock-free on purpose: a signal handler must not take a lock. The code the signal interrupted may hold
    it, and so may the handler itself when a repeated signal interrupts it halfway, and repeats do come:
    Linux sends a forked helper its parent-death signal again each time one of a killed parent's threads,
    having adopted the helper, dies in turn. threading.Event.set() takes its condition's lock, and a
    handler that called it deadlocked its process that way.
    """

    __slots__ = ("reason",)

    def __init__(self) -> None:
        self.reason: str | None = None

    def set(self, reason: str = "stop requested") -> None:
        if self.reason is None:
            self.reason = reason

    def is_set(self) -> bool:
        return self.reason is not None

    def handler(self, on_first: Callable[[str], None] | None = None) -> Callable[[int, FrameType | None], None]:
        """A signal handler: the first signal sets the request (its name is the reason), makes SIGTERM and
        SIGINT ignored wherever this handler was installed for them, and calls on_first(name), which must
        take no lock either."""

        def handle(signum: int, _frame: FrameType | None) -> None:
            if self.reason is not None:
                return
            # Set before any call: a repeat can interrupt the handler at a call, and must find it set.
            self.reason = "signal"
            self.reason = signal.Signals(signum).name
            # Repeats from here on are dropped by the kernel: even one that came while the interpreter
            # exits, when it restores the default handlers, would end the process as killed.
            for other in (signal.SIGTERM, signal.SIGINT):
                if signal.getsignal(other) is handle:
                    signal.signal(other, signal.SIG_IGN)
            if on_first is not None:
                on_first(self.reason)

        return handle


# What a stoppable loop accepts: a StopRequest, or the Event another component (the scheduler) shares.
Stop = StopRequest | threading.Event


def announce(name: str) -> None:
    """Say on stderr that a signal is being acted on. Safe in a signal handler: it takes no lock, so the
    line goes straight to the file descriptor (a buffered stream may be mid-write)."""
    with contextlib.suppress(OSError):
        os.write(2, f"mailer: {name}: finishing the messages in flight...\n".encode())
