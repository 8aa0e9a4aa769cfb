""""Didn't contact us? Let us know": the link in the first follow-up that stops everything for an address.

The intake form is public, so anyone can type anyone's address into it. The first follow-up therefore
carries a signed link; its page asks for one click (a GET never changes anything: link scanners follow
every link), and the POST stops all email to the address at once and records why.
"""

from __future__ import annotations

import logging

from flask import Blueprint, abort, render_template, request
from sqlalchemy.orm import Session

from mailer import audience
from mailer.models import Contact
from mailer.web import current_runtime, security
from mailer.web.public import contact_for

log = logging.getLogger("mailer.web")

blueprint = Blueprint("not_me", __name__)


def _contact(session: Session, token: str) -> Contact:
    """The contact the link names, or the same 404 as every other bad link."""
    contact, _ = contact_for(session, current_runtime().settings, token, "not-me")
    return contact


@blueprint.get("/not-me/<token>")
def not_me_page(token: str) -> str:
    """A page with one button; nothing changes until it is pressed."""
    with current_runtime().sessions() as session:
        _contact(session, token)
    return render_template("pages/not_me.html", state="ask", token=token)


@blueprint.post("/not-me/<token>")
def not_me(token: str) -> str:
    """Stop every email to this address now; a repeat is harmless and says the same."""
    runtime = current_runtime()
    settings = runtime.settings
    if security.is_cross_site(request, settings.web.base_url):
        abort(403)
    with runtime.sessions.begin() as session:
        contact = _contact(session, token)
        changed = audience.not_me(session, settings.secret_key, contact, now=runtime.clock(),
                                  request=security.request_info())
        contact_id = contact.id
    if changed:
        log.info("contact %s said they never contacted the clinic: every email stopped", contact_id)
    return render_template("pages/not_me.html", state="done", token=token)
