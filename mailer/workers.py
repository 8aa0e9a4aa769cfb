"""Helper processes forked from a running command: they share its imports, config and transport, and
hand back one line of JSON.

Forking (instead of starting `python -m mailer` again) spares each helper the interpreter start and the
imports, about half a second. The caller disposes of its database pool first, so no connection is
shared across the fork.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from collections.abc import Callable


class Worker:
    """A forked helper, with the parts of subprocess.Popen the send command uses."""

    def __init__(self, pid: int, output: int) -> None:
        self.pid = pid
        self._output = output
        self.returncode: int | None = None

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def communicate(self) -> tuple[bytes, None]:
        """Wait for the helper; its output and no stderr (it writes to ours)."""
        chunks = []
        while chunk := os.read(self._output, 65536):
            chunks.append(chunk)
        os.close(self._output)
        _, status = os.waitpid(self.pid, 0)
        self.returncode = os.waitstatus_to_exitcode(status)
        return b"".join(chunks), None


def fork(work: Callable[[], dict[str, int]], *, in_child: Callable[[], None] = lambda: None) -> Worker:
    """Run work() in a child process; its result comes back as the child's output, one JSON line."""
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(write_end)
        return Worker(pid, read_end)
    code = 1
    try:  # the child: never returns into the parent's code
        os.close(read_end)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent relays it
        in_child()
        os.write(write_end, (json.dumps(work()) + "\n").encode())
        code = 0
    except BaseException:  # the parent reports the exit code; the reason goes to stderr
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
