"""One send, from one process or several: what `mailer send`, `mailer tick` and the scheduler all run.

The runner chooses how many processes a send uses (delivery.processes), shares the connections and the
rate limit out among them, starts the helpers (forked from a single-threaded command, started fresh
from a process that runs other threads), relays a stop request to them, adds up their progress and
counts, and runs its own share in this process meanwhile.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mailer.outbound import outbox, workers
from mailer.outbound.delivery import Delivery, Progress
from mailer.runtime import Runtime
from mailer.stopping import Stop, StopRequest, announce

log = logging.getLogger("mailer.delivery")

COUNTS = ("sent", "deferred", "failed", "skipped", "unknown")


@dataclass(frozen=True)
class HelperSpec:
    """What a freshly started helper needs (pickled to it): the shared-out settings and the clock."""

    settings: object
    clock: Callable[[], dt.datetime]
    log_level: str = "warning"
    log_format: str = "text"


def _helper_spec(runtime: Runtime, settings: object) -> HelperSpec:
    """The settings and clock for a fresh helper, and this process's logging, so it logs alike."""
    root = logging.getLogger()
    handlers = [handler for handler in root.handlers if getattr(handler, "_mailer", False)]
    json_format = any(type(handler.formatter).__name__ == "JsonFormatter" for handler in handlers)
    return HelperSpec(settings, runtime.clock, logging.getLevelName(root.level).lower(),
                      "json" if json_format else "text")


def processes_for(runtime: Runtime, now: dt.datetime, due: int | None = None) -> int:
    """How many processes a send now uses: delivery.processes, or for "auto" by the number due."""
    delivery = runtime.settings.delivery
    if delivery.processes != "auto":
        return int(delivery.processes)
    if due is None:
        with runtime.sessions() as session:
            due = outbox.due_count(session, now, at_most=workers.AUTO_MINIMUM)
    return workers.count("auto", delivery.connections, due)


def can_fork() -> bool:
    """Forking is safe only while this process runs no other thread (their locks would be copied held)."""
    return workers.available() and threading.active_count() == 1


def send(
    runtime: Runtime,
    now: dt.datetime,
    *,
    stop: Stop | None = None,
    progress: Progress | None = None,
    processes: int | None = None,
) -> dict[str, int]:
    """Hand every due message to the transport, from `processes` processes (default: as configured);
    the counts of every process added up. A stop request (or SIGTERM, when this is the main thread and
    no `stop` is given) finishes the messages in flight and gives the rest back."""
    processes = processes or processes_for(runtime, now)
    spawned = processes > 1 and not can_fork()
    if spawned and runtime.transport_override is not None:
        processes = 1  # a helper started fresh can only build the configured transport
    with _stopping(stop) as stop:
        if processes == 1:
            return _delivery(runtime, runtime.settings).run(stop=stop, progress=progress).as_dict()
        settings = workers.share_out(runtime.settings, processes)
        runtime.kinds  # noqa: B018  (made before a fork, so every helper shares it)
        helpers: list[workers.Worker] = []
        try:
            if spawned:
                for _ in range(processes - 1):
                    helpers.append(workers.spawn(_helper_spec(runtime, settings), on_progress=progress))
            else:
                runtime.engine.dispose()  # no pooled connection may cross the fork

                def work(report: Progress) -> dict[str, int]:
                    child_stop = StopRequest()  # SIGTERM (the parent relays its stop) ends it cleanly
                    signal.signal(signal.SIGTERM, child_stop.handler(announce))
                    return _delivery(runtime, settings).run(stop=child_stop, progress=report).as_dict()

                for _ in range(processes - 1):  # a helper signals no sibling
                    helpers.append(workers.fork(work, on_progress=progress, in_child=helpers.clear))
            relay = threading.Thread(target=_relay, args=(stop, helpers), name="stop-relay", daemon=True)
            relay.start()
            counts = _delivery(runtime, settings).run(stop=stop, progress=progress).as_dict()
        finally:
            results = workers.wait_all(helpers)
    for result in results:
        for key in COUNTS:
            counts[key] = counts.get(key, 0) + int(result.get(key, 0))
    return counts


def _delivery(runtime: Runtime, settings: object) -> Delivery:
    return Delivery(settings, runtime.engine, runtime.transport, runtime.clock, runtime.kinds)  # type: ignore[arg-type]


def _relay(stop: Stop, helpers: list[workers.Worker]) -> None:
    """Pass a stop request on to the helpers (as SIGTERM) while they run."""
    while any(helper.returncode is None for helper in helpers):
        if stop.is_set():
            for helper in helpers:
                helper.send_signal(signal.SIGTERM)
            return
        threading.Event().wait(0.05)


@contextmanager
def _stopping(stop: Stop | None) -> Iterator[Stop]:
    """The stop request to use: the caller's, or one set by SIGTERM and SIGINT for the time of the send
    (only the main thread can install signal handlers)."""
    if stop is not None or threading.current_thread() is not threading.main_thread():
        yield stop or StopRequest()
        return
    request = StopRequest()
    handler = request.handler(announce)
    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield request
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
