"""What the edges (CLI, scheduler, web) build once and pass in: settings, database, transport, clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mailer import db
from mailer.config import Settings
from mailer.outbound.kinds import Kinds
from mailer.outbound.transport import Transport

if TYPE_CHECKING:
    from mailer.publishing.render import Renderer


def system_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class FixedClock:
    """A clock that always says `at` (an object, not a lambda, so a freshly started helper can get it)."""

    at: dt.datetime

    def __call__(self) -> dt.datetime:
        return self.at


def fixed_clock(at: dt.datetime) -> Callable[[], dt.datetime]:
    """A clock that always says `at`: `mailer tick --at` and tests run the whole day at one instant."""
    return FixedClock(at)


@dataclass
class Runtime:
    settings: Settings
    clock: Callable[[], dt.datetime] = system_clock
    engine_override: Engine | None = field(default=None, repr=False)
    transport_override: Transport | None = field(default=None, repr=False)

    @cached_property
    def engine(self) -> Engine:
        # A send holds one connection per SMTP connection (the consent re-check), one for results and one
        # for claims; the web app and the scheduler need a few more.
        return self.engine_override or db.make_engine(self.settings.database.url,
                                                      pool_size=self.settings.delivery.connections + 4)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return db.session_factory(self.engine)

    @cached_property
    def transport(self) -> Transport:
        if self.transport_override is not None:
            return self.transport_override
        from mailer.outbound.transport import make_transport

        return make_transport(self.settings)

    @cached_property
    def renderer(self) -> Renderer:
        """The templates, shared by everything this process renders (Jinja2 reloads a template edited on
        disk, and its environment is made only when something is rendered)."""
        from mailer.publishing.render import Renderer

        return Renderer(self.settings)

    @cached_property
    def kinds(self) -> Kinds:
        """The message kinds the send engine knows, wired here so the engine imports no wing above it."""
        from mailer.message_kinds import registry

        return registry(self.settings, self.renderer)

    def close(self) -> None:
        if "engine" in self.__dict__ and self.engine_override is None:
            self.engine.dispose()
