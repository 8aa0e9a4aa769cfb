"""`mailer serve`: the web app under waitress and the scheduler in one process, until SIGTERM or SIGINT."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import threading
import time
from typing import Any

import click
import waitress
from click.core import ParameterSource
from waitress import wasyncore
from waitress.trigger import trigger

from mailer import db, schema
from mailer.cli.context import (
    ALLOW_DEV_SECRET,
    Context,
    UserError,
    friendly,
    pass_ctx,
    refuse_development_secret,
    setup_logging,
)
from mailer.leader import DEFAULT_LEASE, LeaderLock, make_holder
from mailer.runtime import Runtime
from mailer.stopping import StopRequest

log = logging.getLogger("mailer.serve")

# How long the leader's lock outlives it (SQLite) and how often it is renewed (a third of it).
LEASE_ENV = "MAILER_LEADER_LEASE_SECONDS"
# After SIGTERM the process ends within 30 s: running jobs get 25 s, the rest releases the lock and the port.
JOBS_STOP_TIMEOUT = 25.0
WEB_THREADS = 4


def lease_from_environment() -> dt.timedelta:
    """The leader lease: $MAILER_LEADER_LEASE_SECONDS, else 30 s."""
    value = os.environ.get(LEASE_ENV, "").strip()
    if not value:
        return DEFAULT_LEASE
    try:
        seconds = float(value)
    except ValueError:
        raise UserError(f"{LEASE_ENV}: expected a number of seconds, got {value!r}") from None
    if not 1 <= seconds <= 3600:
        raise UserError(f"{LEASE_ENV}: expected between 1 and 3600 seconds, got {value}")
    return dt.timedelta(seconds=seconds)


def _service_logging(click_ctx: click.Context) -> None:
    """A service says what it does: info level unless --log-level was given (in the chosen format)."""
    parent = click_ctx.parent
    if parent is None:
        return
    if parent.get_parameter_source("log_level") in (ParameterSource.DEFAULT, None):
        setup_logging("info", parent.params.get("log_format") or "text")
    # The schema check's "Context impl SQLiteImpl" lines say nothing to whoever reads a service's log.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # APScheduler's warnings are about runs skipped while the previous run still goes on, which max_instances=1
    # makes routine; missed runs are logged by mailer.scheduler instead.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)


def _check_schema(runtime: Runtime) -> None:
    """Refuse to start on a database `mailer init` has not created or upgraded: every job would fail."""
    current, head = schema.current_revision(runtime.engine), schema.head_revision()
    if current is None:
        raise UserError("the database has no schema yet; run `mailer init` first")
    if current != head:
        raise UserError(f"the database schema is at {current}, this version needs {head}; run `mailer init`")


def make_web_server(app: Any, settings: Any, host: str, port: int, socket_map: dict) -> Any:
    """waitress over the app. The body limit holds at the socket: waitress would otherwise buffer up to
    1 GiB of a request before the app's own web.max_body_bytes check ever ran."""
    return waitress.create_server(app, map=socket_map, host=host, port=port, threads=WEB_THREADS, ident="mailer",
                                  max_request_body_size=settings.web.max_body_bytes)


@click.command()
@click.option("--host", default=None, help="Address to listen on (default: web.host in the config).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default: web.port in the config).")
@ALLOW_DEV_SECRET
@pass_ctx
@friendly
def serve(ctx: Context, host: str | None, port: int | None, allow_dev_secret: bool) -> None:
    """Web app and scheduler in one process; SIGTERM finishes the messages in flight and exits."""
    from mailer.scheduler import SchedulerService
    from mailer.web import create_app

    refuse_development_secret(ctx.settings, allow_dev_secret)  # before anything starts
    stop_request = StopRequest()  # set by the signal handler, read by the loop below
    if threading.current_thread() is threading.main_thread():
        handler = stop_request.handler()
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
    _service_logging(click.get_current_context())
    settings = ctx.settings
    host = host or settings.web.host
    port = port or settings.web.port
    lease = lease_from_environment()
    # Room for the web threads, the delivery senders (one connection each) and the other jobs at once.
    engine = db.make_engine(settings.database.url, pool_size=WEB_THREADS + settings.delivery.connections + 4)
    runtime = Runtime(settings, engine_override=engine)
    try:
        _check_schema(runtime)
        lock = LeaderLock(engine, make_holder(), runtime.clock, lease)
        try:
            app = create_app(runtime, leader=lambda: lock.is_leader)
        except OSError as exc:  # e.g. the configured templates folder lacks a page
            raise UserError(f"web app: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None
        socket_map: dict = {}
        try:
            server = make_web_server(app, settings, host, port, socket_map)
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        # Our own wake-up pipe in the server's loop: how another thread closes it (see _close_server).
        wake = trigger(socket_map)
        service = SchedulerService(runtime, lock)
        leading = service.start()
        web = threading.Thread(target=server.run, name="web", daemon=True)
        web.start()
        log.info("serving on http://%s:%d as %s (pid %d)", host, port, "leader" if leading else "standby",
                 os.getpid(), extra={"host": host, "port": port, "role": "leader" if leading else "standby",
                                     "holder": lock.holder})
        while stop_request.reason is None and web.is_alive():
            time.sleep(0.2)
        reason = stop_request.reason or "the web server stopped unexpectedly"
        log.info("stopping (%s): no new job runs; messages in flight finish", reason, extra={"reason": reason})
        finished = service.shutdown(JOBS_STOP_TIMEOUT)
        _close_server(server, web, wake, socket_map)
    finally:
        engine.dispose()
    if not finished:
        # A job that outlived the stop timeout would keep the interpreter from exiting (the executor's
        # threads are joined at exit); its claimed messages return to the queue when their lease ends.
        log.error("stopped with jobs still running; exiting anyway")
        logging.shutdown()
        os._exit(1)
    log.info("stopped", extra={"reason": reason})
    if stop_request.reason is None:
        raise UserError(reason)


def _close_server(server: Any, web: threading.Thread, wake: trigger, socket_map: dict) -> None:
    """Close waitress from another thread: its loop runs while its socket map has entries, so empty the
    map from inside the loop (a trigger callback), then stop its worker threads."""
    try:
        wake.pull_trigger(lambda: wasyncore.close_all(socket_map))
    except OSError:  # the loop is gone already
        pass
    web.join(timeout=3)
    server.task_dispatcher.shutdown(timeout=2)
