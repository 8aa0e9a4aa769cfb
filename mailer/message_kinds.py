"""The kinds of message the clinic sends, registered with the send engine (outbound.kinds): how each is
prepared from its campaign, sequence step or template, what is personal to each recipient, and what a
permanent refusal of one does (the bounce rules of inbound.evidence).

Wired at the edge (Runtime): the engine imports neither publishing nor sequences nor inbound. A new kind
is one more entry in `registry`.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from mailer import privacy
from mailer.config import Settings
from mailer.links import Links
from mailer.models import Campaign
from mailer.names import greetable
from mailer.outbound import notices
from mailer.outbound.kinds import Kinds, MessageKind
from mailer.outbound.messages import PreparedMessage
from mailer.outbound.store import Claimed, Refusal
from mailer.publishing.render import Renderer


def registry(settings: Settings, renderer: Renderer | None = None) -> Kinds:
    """Outbox kind -> how its messages are made, and the rule for refusals."""
    renderer = renderer or Renderer(settings)
    links = Links(settings.web.base_url, settings.secret_key)

    def personal(row: Claimed) -> tuple[str, dict[str, str]]:
        assert row.contact_id is not None and row.link_key is not None
        # Only a name that passes the rules greets the person or goes in To: (older rows may hold others).
        name = greetable(row.name)
        return name, {
            "first_name": name.split()[0] if name else "there",
            "unsubscribe_url": links.unsubscribe(row.contact_id, row.link_key),
            "preferences_url": links.preferences(row.contact_id, row.link_key),
        }

    def with_confirm_link(row: Claimed) -> tuple[str, dict[str, str]]:
        name, values = personal(row)
        assert row.contact_id is not None and row.link_key is not None
        values["confirm_url"] = links.confirm(row.contact_id, row.link_key, row.created_at)
        return name, values

    def followup_values(row: Claimed) -> tuple[str, dict[str, str]]:
        name, values = personal(row)
        if not row.step:  # the first follow-up: "Didn't contact us?" stops everything for the address
            assert row.contact_id is not None and row.link_key is not None
            values["not_me_url"] = links.not_me(row.contact_id, row.link_key)
        return name, values

    def campaign(session: Session, row: Claimed) -> PreparedMessage:
        found = session.get(Campaign, row.campaign_id)
        if found is None:
            raise LookupError(f"campaign {row.campaign_id} is gone")
        return renderer.prepare_frozen(found)  # as frozen when its send began

    def followup(session: Session, row: Claimed) -> PreparedMessage:
        from mailer.sequences import steps, wording

        if row.sequence is None:
            raise LookupError(f"the enrollment of follow-up message {row.id} is gone")
        version = None
        if row.step_version:  # the wording saved when the step was queued (0 or none: the template)
            version = wording.saved(session, row.sequence, row.step or 0, row.step_version)
            if version is None:
                raise LookupError(f"version {row.step_version} of follow-up step {(row.step or 0) + 1} is gone")
        return steps.prepare_step(renderer, settings, row.step or 0, row.sequence, version)

    def confirm(_session: Session, _row: Claimed) -> PreparedMessage:
        subject = f"Please confirm your subscription to {settings.clinic.name}"
        preheader = "One click to confirm, and you are on the list."
        privacy.screen(settings, "confirmation", subject, preheader, automatic=False)
        return renderer.prepare("email/system/confirm", subject=subject, preheader=preheader, marketing=False)

    def welcome(_session: Session, _row: Claimed) -> PreparedMessage:
        subject = f"Welcome to {settings.clinic.name}"
        preheader = "You are on the list. Here is what to expect."
        privacy.screen(settings, "welcome", subject, preheader, automatic=False)
        archive_url = f"{settings.web.base_url}/archive" if settings.archive.enabled else None
        return renderer.prepare("email/system/welcome", subject=subject, preheader=preheader,
                                archive_url=archive_url)

    # A staff notice is written when it is sent, for the staff address it is for (learnt then).
    notice_to: dict[int, tuple[str, dict[str, int | str]]] = {}

    def notice(session: Session, row: Claimed) -> PreparedMessage:
        made = notices.prepare(session, settings, renderer, row.id)
        notice_to[row.id] = (made.recipient, {"email_hash": made.recipient_hash})
        return made.message

    def no_one(_row: Claimed) -> tuple[str, dict[str, str]]:
        return "", {}

    newsletter = MessageKind("campaign", lambda row: row.campaign_id, campaign, personal)
    return Kinds({
        "newsletter": newsletter,
        "oneoff": newsletter,
        # Rendered once per sequence, step and version of its wording.
        "followup": MessageKind("followup", lambda row: (row.sequence, row.step, row.step_version or 0), followup,
                                followup_values),
        "confirm": MessageKind("confirm", lambda row: None, confirm, with_confirm_link),
        "welcome": MessageKind("welcome", lambda row: None, welcome, personal),
        notices.KIND: MessageKind("notice", lambda row: row.id, notice, no_one,
                                  addressed=lambda row: notice_to.get(row.id)),
    }, refusals=refusal_rule(settings))


def refusal_rule(settings: Settings):  # noqa: ANN201  (outbound.store.RefusalRule)
    """A permanent SMTP refusal while sending is judged like a bounce report of it (inbound.evidence):
    only a refusal of the address suppresses; one of our sender, IP or message is kept as evidence. A
    transport that gives no SMTP reply (an API relay) is taken at its word on the address."""

    def apply(session: Session, refusal: Refusal, now: dt.datetime) -> None:
        from mailer.inbound import evidence  # rare path: keeps the send start short
        from mailer.models import Contact

        if refusal.code is not None:
            evidence.apply_refusal(session, settings, contact_id=refusal.contact_id, outbox_id=refusal.outbox_id,
                                   campaign_id=refusal.campaign_id, code=refusal.code, text=refusal.detail,
                                   stage=refusal.stage, now=now)
        elif refusal.address_rejected:
            contact = session.get(Contact, refusal.contact_id) if refusal.contact_id is not None else None
            verdict = evidence.Verdict("address_bad", None, "address_rejected", diagnostic=refusal.detail)
            evidence.record(session, settings, verdict, evidence.Evidence("transport", str(refusal.outbox_id), now),
                            now, contact, refusal.outbox_id, refusal.campaign_id)

    return apply
