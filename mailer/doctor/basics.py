"""Doctor checks of the ground everything stands on: the config, the secrets, the database, the feed."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from mailer import config, db, schema
from mailer.config import Settings
from mailer.doctor import Result, fail, ok, warn

SECRET_ADVICE = ("set MAILER_SECRET_KEY to a long random string (python3 -c 'import secrets; "
                 "print(secrets.token_urlsafe(48))') and keep it")
# Values that only ever come from examples (the README's env file says CHANGE-ME).
PLACEHOLDERS = frozenset({"change-me", "changeme", "secret", "password", "test", "development"})
SHORTEST_SECRET = 32


def configuration(path: Path, environ: Mapping[str, str]) -> tuple[list[Result], Settings | None]:
    """The config file and the environment, validated; its warnings become "!" lines."""
    environ = dict(environ)
    # Without MAILER_SECRET_KEY, loading would create the development key under var/: the doctor
    # writes nothing, and secret_key() reports the missing variable instead.
    environ.setdefault("MAILER_SECRET_KEY", "unset-" + "x" * SHORTEST_SECRET)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", config.ConfigWarning)
        try:
            settings = config.load(path, environ)
        except config.ConfigError as exc:
            return [fail("config", str(exc), "fix that key; config.toml explains every key "
                                             "(`mailer init` in an empty folder writes a fresh copy)")], None
    results = [ok("config", f"{path} is valid")]
    for warning in caught:
        if issubclass(warning.category, config.ConfigWarning):
            text = str(warning.message)
            message, _, advice = text.partition(": ")[2].rpartition(": ")
            results.append(warn("config", message or text, advice or "see config.toml"))
    return results, settings


def secret_key(settings: Settings, environ: Mapping[str, str]) -> Result:
    value = environ.get("MAILER_SECRET_KEY", "")
    if not value:
        return fail("secret_key", "MAILER_SECRET_KEY is not set: links would be signed with the development "
                                  "key kept in var/secret.key", SECRET_ADVICE)
    development = settings.var_dir / "secret.key"
    try:
        is_development = value.strip() == development.read_text().strip()
    except OSError:
        is_development = False
    if is_development:
        return fail("secret_key", f"MAILER_SECRET_KEY is the development key from {development}", SECRET_ADVICE)
    if value.strip().lower() in PLACEHOLDERS:
        return fail("secret_key", "MAILER_SECRET_KEY is a placeholder from an example", SECRET_ADVICE)
    if len(value) < SHORTEST_SECRET:
        return warn("secret_key", f"MAILER_SECRET_KEY is short ({len(value)} characters)",
                    f"use at least {SHORTEST_SECRET} random characters; changing it later breaks the links "
                    "in emails already sent")
    return ok("secret_key", "MAILER_SECRET_KEY is set (not the development key)")


def intake_token(settings: Settings) -> Result:
    if not settings.intake_token:
        return warn("intake_token", "MAILER_INTAKE_TOKEN is not set: the website's contact form cannot post "
                                    "inquiries to /api/inquiries", "set it and give the same token to the website")
    return ok("intake_token", "MAILER_INTAKE_TOKEN is set")


def database(settings: Settings) -> list[Result]:
    """Reachable, and at the schema this version needs; a missing SQLite file is not created."""
    url = make_url(settings.database.url)
    shown = url.render_as_string(hide_password=True)
    init_advice = "run `mailer init` (it creates or upgrades the schema; safe to run again)"
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        if not Path(url.database).is_file():
            return [fail("database", f"{url.database} does not exist", init_advice)]
    engine = db.make_engine(settings.database.url, pool_size=1)
    try:
        current = schema.current_revision(engine)
    except (SQLAlchemyError, OSError) as exc:
        cause = getattr(exc, "orig", None) or exc
        first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        return [fail("database", f"{shown} does not answer: {first_line}",
                     "check MAILER_DATABASE_URL (or database.url) and that the database server runs")]
    finally:
        engine.dispose()
    head = schema.head_revision()
    if current is None:
        state = fail("schema", "the database has no schema yet", init_advice)
    elif current != head:
        state = fail("schema", f"schema {current}, this version of mailer needs {head}", init_advice)
    else:
        state = ok("schema", f"current ({head})")
    return [ok("database", f"{shown} answers"), state]


def feed(settings: Settings, timeout: float) -> Result:
    from mailer.publishing import feeds

    url = settings.feed.url
    try:
        fetched = feeds.fetch(url, timeout=min(timeout, settings.feed.timeout_seconds),
                              max_bytes=settings.feed.max_bytes, etag=None, last_modified=None)
        posts = feeds.parse(fetched.body or b"", url)
    except feeds.FeedError as exc:
        return fail("feed", str(exc), "set feed.url (or MAILER_FEED_URL) to the clinic blog's RSS or Atom feed")
    if not posts:
        return warn("feed", f"{url} has no posts", "check that feed.url is the blog's feed, not its home page")
    return ok("feed", f"{url} reads: {len(posts)} posts")
