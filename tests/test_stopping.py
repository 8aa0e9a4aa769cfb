"""StopRequest: what a signal handler may touch (no lock), set once, repeats dropped."""

from __future__ import annotations

import signal
import threading

import pytest

from mailer.stopping import StopRequest


@pytest.fixture
def restored_handlers():
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_the_first_signal_sets_the_request_once_and_repeats_are_dropped(restored_handlers) -> None:  # noqa: ANN001
    request = StopRequest()
    announced: list[str] = []
    handler = request.handler(announced.append)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    assert not request.is_set()
    signal.raise_signal(signal.SIGTERM)
    assert request.is_set() and request.reason == "SIGTERM"
    # From now on the kernel drops them: no handler runs, and none can be left to a default that kills.
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    signal.raise_signal(signal.SIGINT)
    signal.raise_signal(signal.SIGTERM)
    handler(signal.SIGINT, None)  # a repeat already on its way when the handlers were swapped
    assert announced == ["SIGTERM"] and request.reason == "SIGTERM"


def test_a_handler_leaves_alone_the_signals_it_was_not_installed_for(restored_handlers) -> None:  # noqa: ANN001
    request = StopRequest()
    signal.signal(signal.SIGTERM, request.handler())
    ctrl_c = signal.getsignal(signal.SIGINT)  # someone else's
    signal.raise_signal(signal.SIGTERM)
    assert request.reason == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is ctrl_c


def test_a_thread_can_set_it_and_the_first_reason_stays() -> None:
    request = StopRequest()
    thread = threading.Thread(target=request.set, args=("the database went away",))
    thread.start()
    thread.join()
    request.set("later")
    assert request.is_set() and request.reason == "the database went away"
