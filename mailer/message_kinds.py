"""The kinds of message the clinic sends, registered with the send engine (outbound.kinds): how each is
prepared from its campaign, sequence step or template, and what is personal to each recipient.

Wired at the edge (Runtime): the engine imports neither publishing nor sequences. A new kind is one
more entry in `registry`.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.links import Links
from mailer.models import Campaign
from mailer.outbound.kinds import Kinds, MessageKind
from mailer.outbound.messages import PreparedMessage
from mailer.outbound.store import Claimed
from mailer.publishing.render import Renderer, first_name


def registry(settings: Settings, renderer: Renderer | None = None) -> Kinds:
    """Outbox kind -> how its messages are made."""
    renderer = renderer or Renderer(settings)
    links = Links(settings.web.base_url, settings.secret_key)

    def personal(row: Claimed) -> tuple[str, dict[str, str]]:
        assert row.contact_id is not None and row.link_key is not None
        return row.name or "", {
            "first_name": first_name(row.name or "") or "there",
            "unsubscribe_url": links.unsubscribe(row.contact_id, row.link_key),
            "preferences_url": links.preferences(row.contact_id, row.link_key),
        }

    def with_confirm_link(row: Claimed) -> tuple[str, dict[str, str]]:
        name, values = personal(row)
        assert row.contact_id is not None and row.link_key is not None
        values["confirm_url"] = links.confirm(row.contact_id, row.link_key, row.created_at)
        return name, values

    def campaign(session: Session, row: Claimed) -> PreparedMessage:
        found = session.get(Campaign, row.campaign_id)
        if found is None:
            raise LookupError(f"campaign {row.campaign_id} is gone")
        return renderer.prepare_frozen(found)  # as frozen when its send began

    def followup(_session: Session, row: Claimed) -> PreparedMessage:
        from mailer.sequences import followups

        return followups.prepare_step(renderer, settings, row.step or 0)

    def confirm(_session: Session, _row: Claimed) -> PreparedMessage:
        return renderer.prepare("email/system/confirm",
                                subject=f"Please confirm your subscription to {settings.clinic.name}",
                                preheader="One click to confirm, and you are on the list.", marketing=False)

    newsletter = MessageKind("campaign", lambda row: row.campaign_id, campaign, personal)
    return {
        "newsletter": newsletter,
        "oneoff": newsletter,
        "followup": MessageKind("followup", lambda row: row.step, followup, personal),
        "confirm": MessageKind("confirm", lambda row: None, confirm, with_confirm_link),
    }
