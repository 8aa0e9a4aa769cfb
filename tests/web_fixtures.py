"""Web fixtures shared by every web test: a settable clock, the runtime, the Flask app and client, and the
app served on loopback for a real browser. tests/conftest.py loads this module with `pytest_plugins`."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine
from werkzeug.serving import WSGIRequestHandler, make_server

from mailer.config import Settings
from mailer.runtime import Runtime
from mailer.web import create_app

# A Monday afternoon in the clinic's winter time; tests move the clock with `clock.advance(...)`.
WEB_START = dt.datetime(2026, 3, 2, 15, 0, tzinfo=dt.UTC)


@dataclass
class SettableClock:
    """The runtime's clock in web tests: fixed until a test moves it."""

    now: dt.datetime

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> dt.datetime:
        self.now += dt.timedelta(**delta)
        return self.now


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(WEB_START)


@pytest.fixture
def runtime(settings: Settings, engine: Engine, clock: SettableClock) -> Runtime:
    """A Runtime over the test's database (both backends) and the settable clock."""
    return Runtime(settings, clock=clock, engine_override=engine)


@pytest.fixture
def app(runtime: Runtime) -> Flask:
    """The real app (TESTING off, so error pages are what a visitor would see)."""
    return create_app(runtime, leader=lambda: True)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@dataclass(frozen=True)
class LiveServer:
    """The app served over HTTP on 127.0.0.1; `url` has no trailing slash."""

    url: str
    app: Flask


class _QuietRequestHandler(WSGIRequestHandler):
    """No access log: request lines carry link tokens, and `mailer serve` (waitress) logs none either."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@pytest.fixture
def live_server(app: Flask) -> Iterator[LiveServer]:
    """The app on a free loopback port, served from a thread (werkzeug), stopped after the test."""
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    try:
        yield LiveServer(f"http://127.0.0.1:{server.port}", app)
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
