"""Staff pages for importing subscribers: upload a CSV, see the dry run, then import exactly that.

The uploaded file is kept in the database (subscriber_imports) between the dry run and the import, with
its SHA-256 and the dry run's outcome. "Import" runs on that stored file only if its hash is the one
the page showed, checks it again in the import's own transaction, and imports only if the outcome is
still the one staff saw (someone may have unsubscribed meanwhile); otherwise nothing changes and the
page shows the new dry run. Once imported, the stored file is emptied.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import logging

from flask import Response, g, request
from sqlalchemy import delete
from sqlalchemy.exc import SQLAlchemyError

from mailer import imports
from mailer.audience import AudienceError
from mailer.models import SubscriberImport
from mailer.web import current_runtime
from mailer.web.admin.base import blueprint, done, get_or_404, page

log = logging.getLogger("mailer.web.admin")

# A checked file not imported within this time is deleted (it holds people's addresses).
KEEP_UNIMPORTED = dt.timedelta(days=1)
ROWS_SHOWN = 1000  # rejected or skipped lines listed on the page (all are counted)


def _import_page(status: int = 200, *, problem: str | None = None) -> Response:
    return page("admin/import.html", status, section="admin.subscribers", problem=problem,
                columns=",".join(imports.COLUMNS), limit_mb=current_runtime().settings.web.max_import_bytes // 1_000_000)


@blueprint.before_app_request
def _large_upload() -> None:
    """This form alone takes large files; set before the login and CSRF checks read the form."""
    if request.endpoint == "admin.subscriber_import_check":
        request.max_content_length = current_runtime().settings.web.max_import_bytes


@blueprint.get("/subscribers/import")
def subscriber_import() -> Response:
    """The upload form."""
    return _import_page()


@blueprint.post("/subscribers/import")
def subscriber_import_check() -> Response:
    """The dry run: read and check the file, keep it, show what importing it would do. Changes no subscriber."""
    runtime = current_runtime()
    settings = runtime.settings
    now = runtime.clock()
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        return _import_page(400, problem="Please choose a CSV file to check.")
    try:
        data = upload.read()
    finally:
        upload.close()  # a large upload is spooled to a temporary file
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return _import_page(400, problem="This file is not UTF-8 text. Please save it as “CSV UTF-8” and try again.")
    try:
        with runtime.sessions() as db:
            plan = imports.check(db, settings.secret_key, settings.topics, io.StringIO(content, newline=""), now)
    except AudienceError as exc:
        return _import_page(400, problem=f"This file cannot be imported: {exc}.")
    with runtime.sessions.begin() as db:
        db.execute(delete(SubscriberImport).where(SubscriberImport.state == "checked",
                                                  SubscriberImport.created_at < now - KEEP_UNIMPORTED))
        row = SubscriberImport(staff_email=g.staff.email, filename=(upload.filename or "")[:255],
                               sha256=hashlib.sha256(data).hexdigest(), content=content, outcome=plan.summary(),
                               state="checked", created_at=now)
        db.add(row)
        db.flush()
        import_id = row.id
    log.info("subscriber file %s checked by staff account %s: %d rows", import_id, g.staff.id, plan.rows)
    return done(".subscriber_import_result", "Checked. Nothing is imported yet: look at the result below, then "
                "press Import.", import_id=import_id)


@blueprint.get("/subscribers/import/<int:import_id>")
def subscriber_import_result(import_id: int) -> Response:
    """The dry run's outcome (or the import's), with the Import button."""
    with current_runtime().sessions() as db:
        row = get_or_404(db, SubscriberImport, import_id, "subscriber file")
        return page("admin/import_result.html", section="admin.subscribers", upload=row, outcome=row.outcome,
                    rows_shown=ROWS_SHOWN)


@blueprint.post("/subscribers/import/<int:import_id>")
def subscriber_import_commit(import_id: int) -> Response:
    """Import exactly what the dry run showed, in one transaction, or nothing."""
    runtime = current_runtime()
    settings = runtime.settings
    now = runtime.clock()
    shown = request.form.get("sha256") or ""
    changed = None
    try:
        with runtime.sessions.begin() as db:
            row = get_or_404(db, SubscriberImport, import_id, "subscriber file")
            db.refresh(row, with_for_update=True)  # one Import at a time for one file
            if row.state != "checked":
                return done(".subscriber_import_result", "This file was already imported.", "problem",
                            import_id=import_id)
            actual = hashlib.sha256(row.content.encode("utf-8")).hexdigest()
            if not hmac.compare_digest(shown, row.sha256) or (actual != row.sha256
                                                              and not _same_bytes(row.content, row.sha256)):
                return done(".subscriber_import_result", "Not imported: this is not the file that was checked. "
                            "Please upload it again.", "problem", import_id=import_id)
            plan = imports.check(db, settings.secret_key, settings.topics, io.StringIO(row.content, newline=""), now)
            if plan.summary() != row.outcome:
                row.outcome = plan.summary()
                changed = plan
            else:
                imports.commit(db, plan, now)
                row.state = "imported"
                row.imported_at = now
                row.content = ""  # the people are in their own tables now; the file is no longer needed
                row.outcome = {**plan.summary(), "imported_by": g.staff.email}
    except SQLAlchemyError as exc:
        log.error("subscriber file %s: import failed, nothing imported (%s)", import_id, type(exc).__name__)
        return done(".subscriber_import_result", "The import failed and nothing was imported (the database "
                    "refused it). Please try again; if it fails again, tell your IT person.", "problem",
                    import_id=import_id)
    if changed is not None:
        return done(".subscriber_import_result", "Not imported: the list changed since the check (someone "
                    "subscribed or unsubscribed meanwhile). Below is the new result; check it and press Import "
                    "again.", "problem", import_id=import_id)
    log.info("subscriber file %s imported by staff account %s: %d imported", import_id, g.staff.id, plan.imported)
    return done(".subscriber_import_result", f"Imported: {plan.imported} people, {plan.subscriptions} "
                f"subscriptions. {len(plan.skipped)} skipped and {len(plan.rejected)} rejected rows were left out.",
                import_id=import_id)


def _same_bytes(content: str, sha256: str) -> bool:
    """The stored text hashes as the uploaded bytes did (a file that began with a byte-order mark)."""
    return hashlib.sha256(("\ufeff" + content).encode("utf-8")).hexdigest() == sha256
