"""Helper processes of one send: they report progress as they go and hand back their counts.

Forked from a single-threaded command (`mailer send`, `mailer tick`), a helper shares its imports,
config and transport, which spares it the interpreter start and the imports (about half a second); the
caller disposes of its database pool first, so no connection is shared across the fork. A process
running other threads (`mailer serve`: the web server, the scheduler) is never forked, since a lock
another thread holds would be copied held: its helpers are started fresh (`spawn`).
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mailer.config import Settings

Progress = Callable[[int], None]


def available() -> bool:
    """Whether helpers can be forked here (Linux; elsewhere forking a threaded runtime is unsafe)."""
    return hasattr(os, "fork") and sys.platform.startswith("linux")


PR_SET_PDEATHSIG = 1  # prctl(2)
AUTO_MINIMUM = 1_000  # messages below which "auto" sends from one process: forking would not pay


def count(configured: int | str, connections: int, due: int) -> int:
    """How many processes a send of `due` messages uses: the configured number, or for "auto" one per
    core (up to one per connection) when helpers can be forked and there is enough to send."""
    if configured != "auto":
        return int(configured)
    if not available() or due < AUTO_MINIMUM:
        return 1
    return max(1, min(os.cpu_count() or 1, connections))


def share_out(settings: Settings, processes: int) -> Settings:
    """The settings for each of `processes` processes of one send: the connections and the rate limit
    are shared out, so the relay sees what the config says whatever the number of processes."""
    delivery = settings.delivery
    return settings.model_copy(update={"delivery": delivery.model_copy(update={
        "connections": max(1, delivery.connections // processes),
        "max_per_second": delivery.max_per_second / processes,
    })})


class Worker:
    """A forked helper: progress lines ("+N") and finally one JSON line of counts come up its pipe."""

    def __init__(self, pid: int, output: int, on_progress: Progress | None,
                 wait_status: Callable[[], int] | None = None) -> None:
        self.pid = pid
        self._wait_status = wait_status or (lambda: os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        self.returncode: int | None = None
        self.result: dict[str, int] | None = None
        self._on_progress = on_progress
        self._reader = threading.Thread(target=self._read, args=(output,), name=f"helper-{pid}", daemon=True)
        self._reader.start()

    def _read(self, output: int) -> None:
        with os.fdopen(output, "rb") as pipe:
            for line in pipe:
                if line.startswith(b"+"):
                    if self._on_progress is not None:
                        self._on_progress(int(line[1:]))
                elif line.strip():
                    self.result = json.loads(line)

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def wait(self) -> dict[str, int]:
        """Wait for the helper to end; its counts (RuntimeError if it failed)."""
        self.returncode = self._wait_status()
        self._reader.join()
        if self.returncode != 0 or self.result is None:
            raise RuntimeError(f"a send helper process exited with {self.returncode}")
        return self.result


def wait_all(workers: list[Worker]) -> list[dict[str, int]]:
    """Wait for every helper (even after one failed); their counts, or the first failure raised."""
    results: list[dict[str, int]] = []
    failures: list[RuntimeError] = []
    for worker in workers:
        try:
            results.append(worker.wait())
        except RuntimeError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]
    return results


def stop_with(parent: int) -> None:
    """Ask Linux for SIGTERM when the parent dies, so a killed send stops its helpers the clean way (what
    they have in flight finishes and is recorded, the rest is given back) instead of leaving them running."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # no prctl here: the helper finishes its work on its own
        return
    if os.getppid() != parent:  # the parent died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def fork(
    work: Callable[[Progress], dict[str, int]],
    *,
    on_progress: Progress | None = None,
    in_child: Callable[[], None] = lambda: None,
) -> Worker:
    """Run work(progress) in a child process; progress(n) and the result reach the parent through a pipe."""
    read_end, write_end = os.pipe()
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(write_end)
        return Worker(pid, read_end, on_progress)
    code = 1
    try:  # the child: never returns into the parent's code
        os.close(read_end)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent relays it
        stop_with(parent)
        in_child()
        report_on(write_end, work)
        code = 0
    except BaseException:  # the parent reports the exit code; the reason goes to stderr
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def spawn(spec: Any, *, on_progress: Progress | None = None) -> Worker:
    """Start a fresh interpreter running `python -m mailer.outbound.helper`, which reads `spec` (pickled)
    from its standard input and reports on a pipe like a forked helper."""
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-m", "mailer.outbound.helper", str(write_end), str(os.getpid())],
        stdin=subprocess.PIPE, pass_fds=(write_end,), close_fds=True,
    )
    os.close(write_end)
    assert process.stdin is not None
    try:
        process.stdin.write(pickle.dumps(spec))
    finally:
        process.stdin.close()
    return Worker(process.pid, read_end, on_progress, wait_status=process.wait)


def report_on(fd: int, work: Callable[[Progress], dict[str, int]]) -> None:
    """Run work(progress) in a helper, telling progress and the counts on the pipe `fd`."""
    with os.fdopen(fd, "wb", buffering=0) as pipe:

        def tell(line: bytes) -> None:
            try:
                pipe.write(line)
            except OSError:  # the parent is gone: the work still ends cleanly, its results recorded
                pass

        result = work(lambda count: tell(b"+%d\n" % count))
        tell((json.dumps(result) + "\n").encode())
