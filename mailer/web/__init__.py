"""The Flask app factory: subscriber pages, the intake API, the relay webhooks and /healthz (admin pages register here too)."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable

from flask import Flask, Response, current_app, jsonify, render_template, request
from jinja2 import FileSystemLoader, StrictUndefined
from markupsafe import Markup
from werkzeug.exceptions import HTTPException, InternalServerError

from mailer.runtime import Runtime
from mailer.web import proxies, security

log = logging.getLogger("mailer.web")

# Where error pages and JSON errors part ways: everything under it answers in JSON.
API_PREFIX = "/api/"
# The one stylesheet of the subscriber pages, inlined in every page and allowed by its hash in the CSP.
PAGE_CSS = "pages/_style.css"

ERROR_TITLES = {
    400: "Something in the request was not right",
    401: "Not authorised",
    403: "Not allowed",
    404: "Page not found",
    405: "Not allowed",
    410: "This link has expired",
    413: "Too much data",
    429: "Too many requests",
    500: "Something went wrong",
}


class MailerFlask(Flask):
    """Flask, minus its own logging of unhandled exceptions (ours leaves out the exception's message)."""

    def log_exception(self, exc_info: object) -> None:  # type: ignore[override]
        """Logged by the 500 handler instead, without the message, which can carry personal data."""


def current_runtime() -> Runtime:
    """The Runtime of the app handling the current request."""
    return current_app.extensions["mailer"]


def create_app(runtime: Runtime, *, leader: Callable[[], bool] | None = None) -> Flask:
    """A Flask app over this runtime; `leader` says whether this process runs the scheduled jobs."""
    settings = runtime.settings
    # The clinic's templates (paths.templates) first, then mailer's own for any the clinic has no copy of.
    app = MailerFlask(__name__, template_folder=None, static_folder=None)
    app.jinja_loader = FileSystemLoader([str(folder) for folder in settings.template_search_path])
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=settings.web.max_body_bytes,
        # Subscriber pages set no cookie at all; these hold for the staff session the admin pages use.
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.web.base_url.startswith("https://"),
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # Every template autoescapes (not only *.html), and a typo in a template fails instead of printing "".
    app.jinja_options = {**app.jinja_options, "autoescape": True, "undefined": StrictUndefined}
    app.extensions["mailer"] = runtime
    app.extensions["mailer.leader"] = leader
    # Every address and scheme below (rate limits, the consent ledger, same-origin checks) is the client's.
    app.wsgi_app = proxies.TrustedProxies(app.wsgi_app,  # type: ignore[method-assign]
                                          proxies.parse_networks(settings.web.trusted_proxies))

    css = settings.template_file(PAGE_CSS).read_text(encoding="utf-8")
    csp = security.content_security_policy(css)

    @app.context_processor
    def _page_globals() -> dict[str, object]:
        return {"clinic": settings.clinic, "page_css": Markup(css)}

    @app.after_request
    def _security_headers(response: Response) -> Response:
        headers = response.headers
        # A view that must differ (e.g. an admin preview shown in a frame) sets its own policy first.
        headers.setdefault("Content-Security-Policy", csp)
        if "frame-ancestors 'none'" in headers["Content-Security-Policy"]:
            headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("X-Content-Type-Options", "nosniff")
        # Tokens live in our URLs: never send them to another site in a Referer header.
        headers.setdefault("Referrer-Policy", "no-referrer")
        # Pages behind personal links must not stay in a shared computer's or a proxy's cache.
        headers.setdefault("Cache-Control", "no-store")
        headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        return response

    _register_error_handlers(app)

    from mailer.web import api, archive, not_me, public, relays

    app.register_blueprint(public.blueprint)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(archive.blueprint)
    app.register_blueprint(not_me.blueprint)
    # The relays' bounce and complaint webhooks; each is a 404 until its secret is set.
    app.register_blueprint(relays.blueprint)
    if settings.web.metrics:  # off by default: without it, /metrics is a 404 like any unknown page
        from mailer.web import metrics

        app.register_blueprint(metrics.blueprint)
    # Staff pages, under /admin, with their own login and session-bound CSRF.
    from mailer.web import admin
    app.register_blueprint(admin.blueprint, url_prefix="/admin")
    return app


def error_response(code: int, title: str | None = None, message: str | None = None) -> Response:
    """An error answer: a page from templates/pages/error.html, or JSON under /api/."""
    if request.path.startswith(API_PREFIX):
        response = jsonify({"error": message or ERROR_TITLES.get(code, "error"), "field": None})
    else:
        response = current_app.make_response(render_template(
            "pages/error.html", code=code, title=title or ERROR_TITLES.get(code, "Something went wrong"),
            message=message,
        ))
    response.status_code = code
    return response


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        if isinstance(error, InternalServerError):
            return _server_error(error)
        response = error_response(error.code or 500)
        # 405 must say which methods are allowed; 401 says how to authenticate.
        for name, value in error.get_headers():
            if name in ("Allow", "WWW-Authenticate"):
                response.headers[name] = value
        return response

    @app.errorhandler(InternalServerError)
    def _server_error(error: InternalServerError) -> Response:
        original = getattr(error, "original_exception", None) or error
        # The traceback goes to the log, never to the page. The exception's message is left out: a
        # database error's text can carry the parameters of the statement (addresses, names).
        rule = request.url_rule.rule if request.url_rule else "(no route)"
        log.error("unhandled %s in %s %s\n%s", type(original).__name__, request.method, rule,
                  "".join(traceback.format_tb(original.__traceback__)).rstrip())
        try:
            return error_response(500)
        except Exception:  # the error page itself failed (e.g. a broken template): plain text, still no traceback
            return Response("Something went wrong. Please try again later.", status=500, mimetype="text/plain")
