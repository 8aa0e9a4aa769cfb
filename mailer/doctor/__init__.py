"""`mailer doctor`: the whole setup checked, one result per check, each saying what to do about it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

Status = Literal["ok", "warn", "fail"]
SYMBOLS: dict[str, str] = {"ok": "✓", "warn": "!", "fail": "✗"}


@dataclass(frozen=True)
class Result:
    """One check's outcome: `check` is a stable name for scripts, `advice` what to do when not ok."""

    check: str
    status: Status
    message: str
    advice: str = ""

    def line(self) -> str:
        return f"{SYMBOLS[self.status]} {self.check}: {self.message}" + (f" — {self.advice}" if self.advice else "")

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def ok(check: str, message: str) -> Result:
    return Result(check, "ok", message)


def warn(check: str, message: str, advice: str) -> Result:
    return Result(check, "warn", message, advice)


def fail(check: str, message: str, advice: str) -> Result:
    return Result(check, "fail", message, advice)


@dataclass(frozen=True)
class Options:
    """What `mailer doctor` was asked: the config, the environment, where DNS questions go, a test address."""

    config_path: Path
    environ: Mapping[str, str]
    dns_server: tuple[str, int] | None = None
    send_test: str | None = None
    timeout: float = 10.0


def examine(options: Options, now: dt.datetime) -> list[Result]:
    """Every check, in the order a setup is built: config, database, relay, DNS, public address, mailboxes,
    relay webhooks."""
    from mailer.doctor import basics, domain, mailboxes, public, relay, sending, webhooks

    results, settings = basics.configuration(options.config_path, options.environ)
    if settings is None:
        return results  # nothing else can be read without a valid config
    results.append(basics.secret_key(settings, options.environ))
    results.append(basics.intake_token(settings))
    results.extend(basics.database(settings))
    results.append(basics.feed(settings, options.timeout))
    results.extend(relay.check(settings, now, options.timeout))
    results.extend(domain.check(settings, domain.make_resolver(options.dns_server, options.timeout)))
    results.extend(public.check(settings, options.timeout))
    results.extend(mailboxes.check(settings))
    results.extend(webhooks.check(settings))
    if options.send_test:
        results.append(sending.send_test(settings, options.send_test, now))
    return results


def failed(results: list[Result]) -> bool:
    return any(result.status == "fail" for result in results)
