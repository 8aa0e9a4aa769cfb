"""config.toml plus MAILER_* environment variables -> one validated, immutable Settings object."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
import tomllib
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import isodate
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "MAILER_"


class ConfigError(Exception):
    """A configuration problem; its message is one line naming the key and the file."""


def _check_hhmm(value: str) -> str:
    if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
        raise ValueError(f"expected a local time as \"HH:MM\", got {value!r}")
    return value


def _check_duration(value: str) -> str:
    try:
        parsed = isodate.parse_duration(value)
    except (isodate.ISO8601Error, ValueError) as exc:
        raise ValueError(f"expected an ISO-8601 duration such as \"P3D\" or \"PT30M\", got {value!r}") from exc
    if not isinstance(parsed, dt.timedelta):
        raise ValueError(f"use days, hours and minutes (not months or years) in {value!r}")
    return value


HHMM = Annotated[str, AfterValidator(_check_hhmm)]


def _check_processes(value: object) -> object:
    if value == "auto" or (type(value) is int and 1 <= value <= 32):
        return value
    raise ValueError('expected "auto" or a whole number from 1 to 32')


Processes = Annotated[int | str, BeforeValidator(_check_processes)]
Duration = Annotated[str, AfterValidator(_check_duration)]


def duration(value: str) -> dt.timedelta:
    """An ISO-8601 duration string that passed validation, as a timedelta."""
    return isodate.parse_duration(value)


def hhmm(value: str) -> dt.time:
    hours, minutes = value.split(":")
    return dt.time(int(hours), int(minutes))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _check_web_address(value: str) -> str:
    """An absolute http(s) URL, or "" for none."""
    parts = urlsplit(value)
    if value and (parts.scheme not in ("http", "https") or not parts.netloc):
        raise ValueError(f"expected an absolute http(s) URL, got {value!r}")
    return value


WebAddress = Annotated[str, AfterValidator(_check_web_address)]


class Clinic(_Section):
    name: str = Field(min_length=1)
    postal_address: str = Field(min_length=1)
    timezone: str
    phone: str = ""
    website: str = ""
    # The clinic's online booking page: `booking_url` in every follow-up template ("" when there is none).
    booking_url: WebAddress = ""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class Sender(_Section):
    from_email: str
    from_name: str
    reply_to: str
    unsubscribe_mailbox: str = ""

    @field_validator("from_email", "reply_to")
    @classmethod
    def _address(cls, value: str) -> str:
        if not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+", value):
            raise ValueError(f"not an email address: {value!r}")
        return value

    @field_validator("unsubscribe_mailbox")
    @classmethod
    def _optional_address(cls, value: str) -> str:
        return cls._address(value) if value else value

    @field_validator("from_name")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if "\r" in value or "\n" in value:
            raise ValueError("must be one line")
        return value


class Database(_Section):
    url: str


class Feed(_Section):
    url: str
    poll_minutes: int = Field(ge=1)
    first_run_posts: int = Field(ge=0)
    timeout_seconds: float = Field(default=20.0, gt=0)
    max_bytes: int = Field(default=5_000_000, ge=1024)

    @field_validator("url")
    @classmethod
    def _feed_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme.lower()
        if scheme not in ("", "http", "https", "file") and not re.fullmatch(r"[a-z]", scheme):
            raise ValueError(f"expected http(s)://, file:// or a path, got {value!r}")
        return value


class Newsletter(_Section):
    send_time: HHMM
    approval: Literal["auto", "manual"]
    topic: str
    misfire_grace_minutes: int = Field(default=120, ge=1)
    subject: str = "{clinic}: {first_title}"
    intro: str = ""
    max_posts: int = Field(default=10, ge=1)
    # One welcome email when a sign-up is confirmed (templates/email/system/welcome).
    welcome: bool = True
    # Extra addresses the campaign page may send a test to, besides staff logins' own.
    test_addresses: list[str] = Field(default_factory=list, max_length=5)
    pending_days: int = Field(default=30, ge=1)
    four_eyes: bool = False

    @field_validator("test_addresses")
    @classmethod
    def _test_addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            if not re.fullmatch(r"[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+", address):
                raise ValueError(f"not an email address: {address!r}")
        if len({address.lower() for address in value}) != len(value):
            raise ValueError("an address is listed twice")
        return value


DEFAULT_SENSITIVE_WORDS = ("ketamine", "depression", "anxiety", "ptsd", "therapy session", "psychotherapy",
                           "diagnosis", "treatment", "medication", "trauma", "suicidal")


def _check_digest_wording(value: str) -> str:
    try:
        value.format(clinic="Clinic", count=2)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"only {{clinic}} and {{count}} can be filled in, got {value!r}") from exc
    return value


DigestWording = Annotated[str, AfterValidator(_check_digest_wording)]


class Privacy(_Section):
    """The guard on every subject and preheader (mailer.privacy)."""

    sensitive_words: list[str] = Field(default_factory=lambda: list(DEFAULT_SENSITIVE_WORDS))
    neutral_subject: DigestWording = "{clinic}: {count} new article(s) on our blog"
    neutral_preheader: DigestWording = "New on our blog: {count} article(s) to read when it suits you."


class FollowupStep(_Section):
    after: Duration
    template: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    subject: str = Field(min_length=1)
    preheader: str = ""


DEFAULT_SEQUENCE = "default"


def _steps_in_order(steps: list[FollowupStep]) -> None:
    afters = [duration(step.after) for step in steps]
    if afters != sorted(afters):
        raise ValueError("steps must be in the order of their 'after' delays")


class FollowupSequence(_Section):
    """One sequence: chosen for an inquiry whose source or service is in `match` (first match wins), or,
    named "default", for every inquiry no other sequence matches."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=64)
    match: list[str] = Field(default_factory=list)
    steps: list[FollowupStep] = Field(min_length=1)

    @model_validator(mode="after")
    def _order(self) -> FollowupSequence:
        _steps_in_order(self.steps)
        return self

    def matches(self, source: str, service: str) -> bool:
        wanted = {value.strip().lower() for value in self.match}
        return bool(wanted & {source.strip().lower(), service.strip().lower()} - {""})


class Followups(_Section):
    send_window: list[HHMM] = Field(min_length=2, max_length=2)
    send_on_weekends: bool = False
    min_gap: Duration = "PT20H"
    consent_valid_days: int = Field(default=180, ge=1)
    retention_days: int = Field(default=365, ge=1)
    duplicate_window: Duration = "PT24H"
    restart_after: Duration = "P90D"
    consent_wording: str = ""
    # Deprecated: read into privacy.sensitive_words (see load()).
    sensitive_words: list[str] | None = None
    # The default sequence's steps, as before several sequences existed.
    steps: list[FollowupStep] = Field(default_factory=list)
    sequences: list[FollowupSequence] = Field(default_factory=list)

    @model_validator(mode="after")
    def _window_order(self) -> Followups:
        if hhmm(self.send_window[0]) >= hhmm(self.send_window[1]):
            raise ValueError("send_window must open before it closes, e.g. [\"09:00\", \"18:00\"]")
        _steps_in_order(self.steps)
        names = [sequence.name for sequence in self.sequences]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"sequences: the name {repeated[0]!r} is used twice")
        if self.steps and DEFAULT_SEQUENCE in names:
            raise ValueError("steps and a sequence named \"default\" are both set: keep one of them")
        return self

    @property
    def all_sequences(self) -> list[FollowupSequence]:
        """Every sequence; [[followups.steps]] alone is the one named "default". (Not cached: model_copy,
        which tests and the demo use to vary settings, would copy a cached value along.)"""
        if not self.steps:
            return list(self.sequences)
        # Already validated as followups.steps: built without validating again (this runs per enrollment).
        default = FollowupSequence.model_construct(name=DEFAULT_SEQUENCE, match=[], steps=self.steps)
        return [*self.sequences, default]

    def sequence(self, name: str) -> FollowupSequence | None:
        return next((sequence for sequence in self.all_sequences if sequence.name == name), None)

    def steps_of(self, name: str) -> list[FollowupStep]:
        """The steps of the sequence `name` ([] when it is no longer configured)."""
        found = self.sequence(name)
        return found.steps if found else []

    def choose(self, source: str, service: str = "") -> FollowupSequence | None:
        """The sequence for an inquiry: the first whose `match` names its source or service, else "default"."""
        sequences = self.all_sequences
        for sequence in sequences:
            if sequence.match and sequence.matches(source, service):
                return sequence
        return next((sequence for sequence in sequences if sequence.name == DEFAULT_SEQUENCE), None)


class Dkim(_Section):
    selector: str = ""
    domain: str = ""
    private_key_path: str = ""


class Delivery(_Section):
    # A transport's registered name (outbound.transport.names(): "smtp", "file", and any registered).
    transport: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,39}$")
    outbox_dir: str
    connections: int = Field(ge=1, le=64)
    processes: Processes = "auto"
    max_per_second: float = Field(ge=0)
    smtp_url: str = Field(default="", repr=False)  # it may hold the relay's password
    timeout_seconds: float = Field(default=30.0, gt=0)
    batch_size: int = Field(default=200, ge=1, le=5000)
    lease: Duration = "PT5M"
    retry_initial: Duration = "PT5M"
    retry_max: Duration = "PT1H"
    max_age: Duration = "P2D"
    unknown_retry_delay: Duration = "PT30M"
    dkim: Dkim = Dkim()



class Web(_Section):
    base_url: str
    host: str = "127.0.0.1"
    port: int = Field(default=8025, ge=1, le=65535)
    session_idle_minutes: int = Field(default=30, ge=1)
    max_body_bytes: int = Field(default=65_536, ge=1024)
    subscribe_per_client_per_hour: int = Field(default=10, ge=1)
    metrics: bool = False
    # Largest CSV file the staff pages' subscriber import accepts, in bytes.
    max_import_bytes: int = Field(default=30_000_000, ge=1024)
    intake_per_client_per_hour: int = Field(default=30, ge=1)
    trusted_proxies: list[str] = Field(default_factory=list)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise ValueError(f"not an IP address or CIDR: {item!r}") from None
        return value

    @field_validator("base_url")
    @classmethod
    def _absolute(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"expected an absolute http(s) URL, got {value!r}")
        return value.rstrip("/")


class MailboxSettings(_Section):
    """Where mail comes back to: a maildir folder or an IMAP folder (the password from the environment)."""

    source: Literal["none", "maildir", "imap"] = "none"
    maildir: str = ""
    imap_host: str = ""
    imap_port: int = Field(default=993, ge=1, le=65535)
    imap_user: str = ""
    imap_folder: str = "INBOX"


class Bounces(MailboxSettings):
    # Soft bounces (a mailbox full or unable to take mail) are counted once per clinic-local day within the
    # window; the address is suppressed when `soft_bounce_limit` such days fall in it.
    soft_bounce_limit: int = Field(default=5, ge=1)
    soft_bounce_window: Duration = "P30D"

    @field_validator("soft_bounce_window")
    @classmethod
    def _positive_window(cls, value: str) -> str:
        if duration(value) <= dt.timedelta(0):
            raise ValueError(f"expected a duration longer than zero, got {value!r}")
        return value


class Replies(MailboxSettings):
    # What a handled reply becomes in the mailbox: "seen" (maildir cur/ with the S flag, IMAP \Seen)
    # or "none" (left as it is, for a mailbox people also read; mailer remembers what it handled).
    mark: Literal["seen", "none"] = "seen"


class Archive(_Section):
    """The public archive of sent newsletters (GET /archive)."""

    enabled: bool = True
    # Topics whose campaigns are shown; None: the newsletter topic only.
    topics: list[str] | None = None
    # Ask search engines not to index the archive (X-Robots-Tag and a meta tag).
    noindex: bool = False


NOTIFY_EVENTS = ("inquiry", "reply", "booked", "draft")


class Notify(_Section):
    """Front-desk notifications: short emails to staff when something needs a person."""

    staff: list[str] = Field(default_factory=list)
    events: list[Literal["inquiry", "reply", "booked", "draft"]] = Field(default_factory=lambda: list(NOTIFY_EVENTS))
    # Events within this many minutes of the first are gathered into one email.
    gather_minutes: int = Field(default=5, ge=0, le=120)

    @field_validator("staff")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            Sender._address(address)
        return value


# An SNS topic's ARN: arn:aws:sns:REGION:ACCOUNT:NAME (also the China and GovCloud partitions).
_TOPIC_ARN = re.compile(r"arn:aws(?:-cn|-us-gov)?:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(?:\.fifo)?")


class RelayWebhooks(_Section):
    """The relays' bounce and complaint webhooks (their secrets come from the environment)."""

    # The Amazon SNS topics whose notifications POST /api/relay/ses accepts; empty: the route is off.
    ses_topic_arns: list[str] = Field(default_factory=list)

    @field_validator("ses_topic_arns")
    @classmethod
    def _arns(cls, value: list[str]) -> list[str]:
        for arn in value:
            if not _TOPIC_ARN.fullmatch(arn):
                raise ValueError(f"not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME): {arn!r}")
        return value


class Paths(_Section):
    # Empty: the templates bundled with mailer. A folder: the clinic's own copy (`mailer templates export`),
    # in front of the bundled ones, so a template missing from it still comes from mailer.
    templates: str = ""
    var: str = "var"


class Settings(_Section):
    """Everything the program knows about its configuration; paths are absolute."""

    clinic: Clinic
    sender: Sender
    database: Database
    feed: Feed
    newsletter: Newsletter
    topics: dict[str, str] = Field(min_length=1)
    followups: Followups
    delivery: Delivery
    web: Web
    bounces: Bounces = Bounces()
    replies: Replies = Replies()
    archive: Archive = Archive()
    notify: Notify = Notify()
    privacy: Privacy = Privacy()
    relay_webhooks: RelayWebhooks = RelayWebhooks()
    paths: Paths = Paths()
    # Secrets: from the environment only (see load()).
    secret_key: str = Field(default="", repr=False)
    intake_token: str = Field(default="", repr=False)
    dkim_private_key: str = Field(default="", repr=False)
    imap_password: str = Field(default="", repr=False)
    replies_imap_password: str = Field(default="", repr=False)
    mailgun_signing_key: str = Field(default="", repr=False)
    sendgrid_public_key: str = Field(default="", repr=False)
    postmark_webhook_user: str = Field(default="", repr=False)
    postmark_webhook_password: str = Field(default="", repr=False)
    # True when MAILER_SECRET_KEY was not set and the key kept under var/ is used (development only).
    development_secret: bool = False
    source: str = ""

    @field_validator("topics")
    @classmethod
    def _topic_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
                raise ValueError(f"topic names are lower-case words, got {name!r}")
        return value

    @model_validator(mode="after")
    def _newsletter_topic_known(self) -> Settings:
        if self.newsletter.topic not in self.topics:
            raise ValueError(f"newsletter.topic {self.newsletter.topic!r} is not one of the topics")
        unknown = [topic for topic in self.archive.topics or () if topic not in self.topics]
        if unknown:
            raise ValueError(f"archive.topics: {unknown[0]!r} is not one of the topics")
        return self

    @property
    def archive_topics(self) -> list[str]:
        """The topics the public archive shows (archive.topics, else the newsletter's)."""
        return list(self.archive.topics) if self.archive.topics is not None else [self.newsletter.topic]

    @property
    def zone(self) -> ZoneInfo:
        return self.clinic.zone

    @property
    def templates_dir(self) -> Path:
        """The clinic's templates folder, or mailer's own when paths.templates is empty."""
        from mailer import bundled

        return Path(self.paths.templates) if self.paths.templates else bundled.templates_dir()

    @property
    def template_search_path(self) -> list[Path]:
        """Where templates are looked up, in order: the clinic's folder, then mailer's own."""
        from mailer import bundled

        folders = [self.templates_dir, bundled.templates_dir()]
        return folders[:1] if folders[0].resolve() == folders[1].resolve() else folders

    def template_file(self, name: str) -> Path:
        """The first file called `name` (e.g. "pages/_style.css") along the template search path."""
        for folder in self.template_search_path:
            if (folder / name).is_file():
                return folder / name
        return self.templates_dir / name  # reading it fails with a message naming the clinic's folder

    @property
    def var_dir(self) -> Path:
        return Path(self.paths.var)


# Environment variable -> (section, key) it overrides; secrets have no section.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "DATABASE_URL": ("database", "url"),
    "SMTP_URL": ("delivery", "smtp_url"),
    "FEED_URL": ("feed", "url"),
    "BASE_URL": ("web", "base_url"),
}
ENV_SECRETS = {"SECRET_KEY": "secret_key", "INTAKE_TOKEN": "intake_token", "DKIM_PRIVATE_KEY": "dkim_private_key",
               "IMAP_PASSWORD": "imap_password", "REPLIES_IMAP_PASSWORD": "replies_imap_password",
               "MAILGUN_SIGNING_KEY": "mailgun_signing_key", "SENDGRID_PUBLIC_KEY": "sendgrid_public_key",
               "POSTMARK_WEBHOOK_USER": "postmark_webhook_user",
               "POSTMARK_WEBHOOK_PASSWORD": "postmark_webhook_password"}


def default_config_path(environ: dict[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get("MAILER_CONFIG") or "config.toml")


def _describe(error: dict[str, Any]) -> str:
    loc = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "missing":
        return f"{loc}: missing"
    if kind == "extra_forbidden":
        return f"{loc}: unknown key"
    message = error["msg"].removeprefix("Value error, ")
    return f"{loc}: {message}" if loc else message


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Relative paths in the config are relative to the config file's folder, not the working directory."""

    def absolute(value: str) -> str:
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else (base / path).resolve())

    paths = raw.setdefault("paths", {})
    if isinstance(paths, dict):
        for key in ("templates", "var"):
            value = paths.get(key, Paths.model_fields[key].default)
            if isinstance(value, str) and value:  # an empty templates folder means mailer's own
                paths[key] = absolute(value)
    delivery = raw.get("delivery")
    if isinstance(delivery, dict) and isinstance(delivery.get("outbox_dir"), str):
        delivery["outbox_dir"] = absolute(delivery["outbox_dir"])
    if isinstance(delivery, dict) and isinstance(delivery.get("dkim"), dict):
        key_path = delivery["dkim"].get("private_key_path")
        if isinstance(key_path, str) and key_path:
            delivery["dkim"]["private_key_path"] = absolute(key_path)
    feed = raw.get("feed")
    if isinstance(feed, dict) and isinstance(feed.get("url"), str):
        url = feed["url"]
        scheme = urlsplit(url).scheme.lower()
        if scheme in ("", *"abcdefghijklmnopqrstuvwxyz") and url:  # a plain path (or a Windows drive)
            feed["url"] = absolute(url)
    database = raw.get("database")
    if isinstance(database, dict) and isinstance(database.get("url"), str):
        url = database["url"]
        # sqlite:///relative/path -> relative to the config file; sqlite:////abs stays.
        match = re.fullmatch(r"sqlite(\+\w+)?:///(?!/)(.+)", url)
        if match and match.group(2) != ":memory:":
            database["url"] = f"sqlite{match.group(1) or ''}:///{absolute(unquote(match.group(2)))}"
    for section in ("bounces", "replies"):
        mailbox = raw.get(section)
        if isinstance(mailbox, dict) and isinstance(mailbox.get("maildir"), str) and mailbox["maildir"]:
            mailbox["maildir"] = absolute(mailbox["maildir"])


def load(path: Path | str | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Read, override and validate; raise ConfigError with one line naming the key and the file."""
    environ = dict(os.environ if environ is None else environ)
    path = Path(path) if path is not None else default_config_path(environ)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (use --config or MAILER_CONFIG)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None

    for name, (section, key) in ENV_OVERRIDES.items():
        value = environ.get(ENV_PREFIX + name)
        if value:
            target = raw.setdefault(section, {})
            if isinstance(target, dict):
                target[key] = value
    if environ.get(ENV_PREFIX + "SMTP_URL"):
        raw.setdefault("delivery", {})["transport"] = "smtp"
    for name, key in ENV_SECRETS.items():
        if key in raw:
            raise ConfigError(f"{path}: {key}: secrets are not read from the config file; set {ENV_PREFIX}{name}")
        value = environ.get(ENV_PREFIX + name)
        if value:
            raw[key] = value

    _resolve_paths(raw, path.resolve().parent)
    raw["source"] = str(path)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"{path}: {_describe(first)}") from None

    from mailer.outbound import transport  # the registry only: no transport module is imported here

    if settings.delivery.transport not in transport.names():
        raise ConfigError(f"{path}: delivery.transport: no transport named {settings.delivery.transport!r} "
                          f"(known: {', '.join(transport.names())})")
    if settings.delivery.transport == "smtp":
        try:
            parse_smtp_url(settings.delivery.smtp_url)
        except ValueError as exc:
            raise ConfigError(f"{path}: delivery.smtp_url (or {ENV_PREFIX}SMTP_URL): {exc}") from None
    local_web = urlsplit(settings.web.base_url).hostname in ("127.0.0.1", "localhost", "::1")
    if settings.delivery.transport == "smtp" and not settings.web.base_url.startswith("https://") and not local_web:
        warnings.warn(
            f"{path}: web.base_url (or {ENV_PREFIX}BASE_URL) is not https: mailbox providers expect https "
            "one-click unsubscribe links (RFC 8058)",
            ConfigWarning,
            stacklevel=2,
        )
    if settings.followups.sensitive_words is not None:
        privacy_raw = raw.get("privacy") if isinstance(raw.get("privacy"), dict) else {}
        if "sensitive_words" in privacy_raw:
            raise ConfigError(f"{path}: followups.sensitive_words: moved to privacy.sensitive_words, which is "
                              "also set; remove the old key")
        # The old key keeps working for one upgrade, so a service does not stop over its config at restart.
        warnings.warn(f"{path}: followups.sensitive_words is deprecated; rename it to privacy.sensitive_words "
                      "(it now guards every email's subject and preheader)", ConfigWarning, stacklevel=2)
        settings = settings.model_copy(update={
            "privacy": settings.privacy.model_copy(update={"sensitive_words": settings.followups.sensitive_words}),
            "followups": settings.followups.model_copy(update={"sensitive_words": None}),
        })
    for sequence in settings.followups.all_sequences:
        where = "steps" if sequence.name == DEFAULT_SEQUENCE and settings.followups.steps else \
            f"sequences[{sequence.name}].steps"
        for step in sequence.steps:
            shown = f"{step.subject} {step.preheader}"
            words = [w for w in settings.privacy.sensitive_words if re.search(rf"\b{re.escape(w)}\b", shown, re.I)]
            if words:
                warnings.warn(
                    f"{path}: followups.{where}[{step.template}] subject or preheader names {', '.join(words)}: "
                    "they are visible in inbox lists; keep conditions and treatments out of them",
                    ConfigWarning,
                    stacklevel=2,
                )
    if not settings.secret_key:
        settings = settings.model_copy(update={"secret_key": development_secret(settings.var_dir),
                                               "development_secret": True})
    return settings


class ConfigWarning(UserWarning):
    """A configuration that works but that staff should look at."""


def development_secret(var_dir: Path) -> str:
    """Without MAILER_SECRET_KEY, keep a random key under var/ so links survive restarts in development."""
    key_file = var_dir / "secret.key"
    try:
        return key_file.read_text().strip()
    except FileNotFoundError:
        from mailer import files

        files.private_dir(var_dir)
        key = secrets.token_urlsafe(48)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
        return key
    except FileExistsError:  # another process created it a moment ago
        return key_file.read_text().strip()


class SmtpUrl(BaseModel):
    model_config = ConfigDict(frozen=True)

    host: str
    port: int
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    implicit_tls: bool = False
    starttls: bool = False
    verify: bool = True
    cafile: str | None = None
    helo: str | None = None


def parse_smtp_url(url: str) -> SmtpUrl:
    """smtp://[user:pass@]host:port[?starttls=true] or smtps://...; ?verify=false only for test relays."""
    if not url:
        raise ValueError("delivery.transport is \"smtp\" but no SMTP URL is set")
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps"):
        raise ValueError(f"expected smtp:// or smtps://, got {parts.scheme or 'nothing'}://")
    if not parts.hostname:
        raise ValueError("the SMTP URL has no host")
    try:
        port = parts.port or (465 if parts.scheme == "smtps" else 587)
    except ValueError:
        raise ValueError("the SMTP URL has a bad port") from None
    options: dict[str, str] = {}
    for pair in filter(None, parts.query.split("&")):
        key, _, value = pair.partition("=")
        options[key] = unquote(value)
    unknown = set(options) - {"starttls", "verify", "cafile", "helo"}
    if unknown:
        raise ValueError(f"unknown SMTP URL option {sorted(unknown)[0]!r}")

    def flag(name: str) -> bool:
        value = options.get(name, "").lower()
        if value not in ("", "true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{name} must be true or false")
        return value in ("true", "1", "yes")

    return SmtpUrl(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        implicit_tls=parts.scheme == "smtps",
        starttls=flag("starttls"),
        verify=options.get("verify", "").lower() not in ("false", "0", "no"),
        cafile=options.get("cafile") or None,
        helo=options.get("helo") or None,
    )
