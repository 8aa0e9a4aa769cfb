"""A send helper started fresh (`python -m mailer.outbound.helper FD PARENT`): it reads its settings and
clock from standard input, sends its share and reports on the pipe FD, as a forked helper does."""

from __future__ import annotations

import pickle
import signal
import sys

from mailer.outbound import workers
from mailer.stopping import StopRequest, announce


def main(argv: list[str]) -> int:
    fd, parent = int(argv[1]), int(argv[2])
    stop = StopRequest()
    signal.signal(signal.SIGTERM, stop.handler(announce))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent relays it
    workers.stop_with(parent)
    spec = pickle.loads(sys.stdin.buffer.read())
    from mailer.logs import configure
    from mailer.outbound.delivery import Delivery
    from mailer.runtime import Runtime

    configure(spec.log_level if spec.log_level in ("debug", "info", "warning", "error") else "warning",
              spec.log_format)
    runtime = Runtime(spec.settings, clock=spec.clock)
    try:
        workers.report_on(fd, lambda progress: Delivery(spec.settings, runtime.engine, runtime.transport, runtime.clock,
                                                        runtime.kinds).run(stop=stop, progress=progress).as_dict())
    finally:
        runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
