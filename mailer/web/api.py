"""The machine-facing endpoints: the website's intake API and /healthz."""

from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from mailer.audience import AudienceError
from mailer.models import JobRun
from mailer.web import current_runtime, intake_guards, security

log = logging.getLogger("mailer.web")

blueprint = Blueprint("api", __name__)


# --- the intake API ----------------------------------------------------------------------------------

# The JSON fields: name -> required. Values are checked here for their JSON type only; their content
# (address, lengths, control characters) is checked by inquiries.record_inquiry, which names the field.
INTAKE_STRINGS = {"email": True, "name": False, "consent_text": False, "source": False, "message": False,
                  "service": False}
INTAKE_FIELDS = frozenset(INTAKE_STRINGS) | {"consent"}


class _IntakeProblem(Exception):
    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


def _json_error(code: int, message: str, field: str | None = None) -> tuple[Response, int]:
    return jsonify({"error": message, "field": field}), code


def _bearer_refused(expected: str) -> tuple[Response, int] | None:
    """The 401 to answer unless the Authorization header carries the configured intake token (compared
    in constant time); None when it does."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if expected and scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), expected.encode()):
        return None
    response, code = _json_error(401, "a valid bearer token is required")
    response.headers["WWW-Authenticate"] = 'Bearer realm="mailer"'
    return response, code


def _intake_fields(payload: Any) -> dict[str, Any]:
    """The fields of an intake request with the right JSON types, or _IntakeProblem naming the field."""
    if not isinstance(payload, dict):
        raise _IntakeProblem(None, "the body must be a JSON object")
    fields: dict[str, Any] = {}
    for field, required in INTAKE_STRINGS.items():
        value = payload.get(field)
        if value is None and not required:
            value = ""  # an optional field may be left out or sent as null
        if value is None:
            raise _IntakeProblem(field, f"{field}: required")
        if not isinstance(value, str):
            raise _IntakeProblem(field, f"{field}: must be a string")
        fields[field] = value
    consent = payload.get("consent")
    # A real JSON boolean only: "yes", 1 or "false" are ambiguous, and consent is never guessed.
    if not isinstance(consent, bool):
        raise _IntakeProblem("consent", "consent: must be true or false (a JSON boolean)")
    fields["consent"] = consent
    return fields


def _problem_field(message: str) -> str | None:
    """The field an error message starts with ("email: ..."), if it is one of ours."""
    head = message.partition(":")[0].strip()
    return head if head in INTAKE_FIELDS else None


@blueprint.post("/api/inquiries")
def intake() -> tuple[Response, int]:
    """The website's contact form: JSON behind a bearer token; 201 with the inquiry id."""
    runtime = current_runtime()
    settings = runtime.settings
    now = runtime.clock()
    refused = _bearer_refused(settings.intake_token)
    if refused is not None:
        return refused
    try:
        key = intake_guards.idempotency_key(request)
    except intake_guards.BadKey as exc:
        return _json_error(400, str(exc))
    hashed = intake_guards.key_hash(settings.secret_key, key) if key else None
    if hashed is not None:
        with runtime.sessions() as session:
            first = intake_guards.replay(session, hashed, now)
        if first is not None:
            return jsonify(first[0]), first[1]
    with runtime.sessions.begin() as session:
        limited = intake_guards.over_client_limit(session, settings, request.remote_addr, now)
    if limited:
        log.warning("intake refused: a client went over %d requests an hour", settings.web.intake_per_client_per_hour)
        return _json_error(429, "too many requests from this client; try again later")
    raw = request.get_data(cache=False)  # over web.max_body_bytes: 413, answered in JSON by error_response
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _json_error(400, "the body is not valid JSON")
    except RecursionError:  # "[[[[...]]]]" thousands deep: the parser gives up before the body limit does
        return _json_error(400, "the body is nested too deeply")
    try:
        fields = _intake_fields(payload)
    except _IntakeProblem as problem:
        return _json_error(400, str(problem), problem.field)

    from mailer.outbound import notices
    from mailer.sequences import inquiries

    try:
        with runtime.sessions.begin() as session:
            outcome = inquiries.record_inquiry(
                session, settings, email=fields["email"], name=fields["name"], consent=fields["consent"],
                consent_text=fields["consent_text"], source=fields["source"], received_at=now, now=now,
                message=fields["message"], request=security.request_info(), service=fields["service"],
            )
            if not outcome.duplicate:
                notices.record(session, settings, "inquiry", now, inquiry_id=outcome.inquiry_id)
            answer = {"inquiry_id": outcome.inquiry_id}
            if hashed is not None:
                intake_guards.remember(session, hashed, answer, 201, now)
    except (inquiries.InquiryError, AudienceError) as exc:
        return _json_error(400, str(exc), _problem_field(str(exc)))
    except intake_guards.KeyTaken:  # the same key a moment ago: this request's inquiry was rolled back
        with runtime.sessions() as session:
            first = intake_guards.replay(session, hashed or "", now)
        if first is None:  # cannot happen (the winner committed), but never answer without a body
            return _json_error(409, "a request with this Idempotency-Key is in progress; try again")
        return jsonify(first[0]), first[1]
    # Ids only: the address and the visitor's message never go into a log line.
    log.info("inquiry %s received through the intake API", outcome.inquiry_id)
    return jsonify(answer), 201


# --- bookings ----------------------------------------------------------------------------------------

# Every accepted booking is answered no sooner than this after it arrived. Marking a contact booked
# writes to the database (about 20 ms on SQLite, mostly the commit) while an unknown address only reads
# (about 6 ms): without a floor the answer's timing would tell who is a contact.
BOOKING_ANSWER_SECONDS = 0.2


@blueprint.post("/api/bookings")
def bookings() -> tuple[Response, int]:
    """The clinic's scheduling system reports a booking: that person's follow-ups stop. 202 for every
    well-formed request, whoever it names (the answer must not tell who is a contact)."""
    from mailer.inbound import bookings as booking_reports

    started = time.monotonic()
    runtime = current_runtime()
    settings = runtime.settings
    now = runtime.clock()
    refused = _bearer_refused(settings.intake_token)
    if refused is not None:
        return refused
    try:
        payload = json.loads(request.get_data(cache=False))
    except (ValueError, UnicodeDecodeError):
        return _json_error(400, "the body is not valid JSON")
    try:
        booking = booking_reports.read(payload, now)
    except booking_reports.BookingError as problem:
        return _json_error(400, str(problem), problem.field)
    with runtime.sessions.begin() as session:
        booking_reports.record(session, settings, booking, now)
    time.sleep(max(0.0, BOOKING_ANSWER_SECONDS - (time.monotonic() - started)))
    return jsonify({"status": "accepted"}), 202


# --- health ------------------------------------------------------------------------------------------


@blueprint.get("/healthz")
def healthz() -> tuple[Response, int]:
    """Database reachable (200) or not (503), whether this process leads the scheduler, and each job's last run."""
    runtime = current_runtime()
    leader_check = current_app.extensions.get("mailer.leader")
    try:
        leader = bool(leader_check()) if leader_check is not None else None
    except Exception:  # a failing leader check must not turn the health answer into a 500
        log.warning("leader check failed", exc_info=True)
        leader = None
    try:
        # An AUTOCOMMIT connection: on SQLite a health check must not queue behind a writer's lock.
        with runtime.engine.connect() as connection:
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            newest = select(func.max(JobRun.id)).group_by(JobRun.job_id)
            rows = connection.execute(
                select(JobRun.job_id, JobRun.started_at, JobRun.outcome, JobRun.counts)
                .where(JobRun.id.in_(newest)).order_by(JobRun.job_id)
            ).all()
    except (SQLAlchemyError, OSError) as exc:
        log.error("health check: the database does not answer (%s)", type(exc).__name__)
        return jsonify({"status": "error", "database": False, "leader": leader, "jobs": {}}), 503
    jobs = {job_id: {"last_run": started_at.isoformat(), "outcome": outcome, "counts": counts or {}}
            for job_id, started_at, outcome, counts in rows}
    return jsonify({"status": "ok", "database": True, "leader": leader, "jobs": jobs}), 200
