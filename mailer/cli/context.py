"""What every `mailer` command shares: the lazily built context, one-line errors, time parsing."""

from __future__ import annotations

import datetime as dt
import functools
import getpass
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import OperationalError, ProgrammingError

from mailer import audience, config
from mailer.publishing import campaigns
from mailer.runtime import Runtime, fixed_clock, system_clock


class UserError(click.ClickException):
    """A mistake the user can fix: printed as one line, exit 1, no traceback."""

    def show(self, file: Any = None) -> None:
        click.echo(f"mailer: error: {self.format_message()}", err=True, file=file)


def _expected_errors() -> tuple[type[BaseException], ...]:
    from mailer.publishing.fetching import FeedError
    from mailer.publishing.render import RenderError
    from mailer.sequences.inquiries import InquiryError

    return (config.ConfigError, audience.AudienceError, campaigns.CampaignError, FeedError, InquiryError,
            RenderError, ValueError)


def friendly(function: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the errors a user can cause into one-line messages instead of tracebacks."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except click.ClickException:
            raise
        except (OperationalError, ProgrammingError) as exc:
            message = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc).splitlines()[0]
            hint = " (run `mailer init` first)" if "no such table" in message or "does not exist" in message else ""
            raise UserError(f"database: {message}{hint}") from None
        except _expected_errors() as exc:
            raise UserError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None

    return wrapper


class Context:
    """Built lazily so `--help` works without a config file."""

    def __init__(self, config_path: Path, at: dt.datetime | None = None, *, config_chosen: bool = True) -> None:
        self.config_path = config_path
        # False when the path is only the default ./config.toml (no --config, no MAILER_CONFIG).
        self.config_chosen = config_chosen
        self.at = at
        self._runtime: Runtime | None = None

    @property
    def settings(self) -> config.Settings:
        return self.runtime.settings

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            settings = config.load(self.config_path)
            self._runtime = Runtime(settings, clock=fixed_clock(self.at) if self.at else system_clock)
        return self._runtime

    def now(self) -> dt.datetime:
        return self.runtime.clock()

    def close(self) -> None:
        if self._runtime is not None:
            self._runtime.close()


pass_ctx = click.make_pass_decorator(Context)


ALLOW_DEV_SECRET = click.option(
    "--allow-dev-secret", is_flag=True,
    help="Start with SMTP delivery even though MAILER_SECRET_KEY is not set (a test relay, never production).")


def refuse_development_secret(settings: config.Settings, allowed: bool) -> None:
    """Real emails must not carry links signed with the throwaway key under var/: refuse to start."""
    if settings.development_secret and settings.delivery.transport == "smtp" and not allowed:
        raise UserError("MAILER_SECRET_KEY is not set: with SMTP delivery, links in real emails would be signed "
                        "with the development key in var/secret.key; set MAILER_SECRET_KEY (or pass "
                        "--allow-dev-secret for a test relay)")


def cli_actor() -> str:
    """Who acts from the shell, for the access log: the operating-system user, marked as such."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = "unknown"
    return f"cli:{user}"


def parse_instant(value: str, zone: Any) -> dt.datetime:
    """ISO-8601; without an offset the time is taken in the clinic's time zone."""
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise UserError(f"--at: not an ISO-8601 time: {value!r} (e.g. 2026-11-27T18:00 or 2026-11-28T00:00Z)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.astimezone(dt.UTC)


def setup_logging(level: str, log_format: str = "text") -> None:
    from mailer.logs import configure

    configure(level, log_format)


class LazyGroup(click.Group):
    """A group whose heavier commands (web server, scheduler, password hashing, mailbox reading) are
    imported only when they run, so `mailer send` does not pay for waitress or APScheduler."""

    def __init__(self, *args: Any, lazy_subcommands: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = lazy_subcommands or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy_subcommands])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_subcommands:
            module_name, _, attribute = self.lazy_subcommands[cmd_name].partition(":")
            module = __import__(module_name, fromlist=[attribute])
            return getattr(module, attribute)
        return super().get_command(ctx, cmd_name)
