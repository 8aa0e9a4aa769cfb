"""At newsletter.send_time (clinic.timezone): unsent posts become tonight's digest, once per local date."""

from __future__ import annotations

import datetime as dt
import logging

from mailer.outbound import notices
from mailer.publishing import campaigns
from mailer.runtime import Runtime

log = logging.getLogger("mailer.newsletter")



def run(runtime: Runtime, now: dt.datetime) -> dict[str, object]:
    with runtime.sessions.begin() as session:
        outcome = campaigns.make_newsletter(session, runtime.settings, now)
        campaign_id = outcome.campaign.id if outcome.campaign else None
        state = outcome.campaign.state if outcome.campaign else None
        if outcome.reason == "created" and state == "draft":  # newsletter.approval = "manual": staff decide
            notices.record(session, runtime.settings, "draft", now, campaign_id=campaign_id)
    if outcome.reason == "missed":
        log.warning("nightly newsletter missed its send time by more than %d minutes; skipped, posts wait for "
                    "the next night or a staff decision", runtime.settings.newsletter.misfire_grace_minutes)
        return {"result": "missed", "_skipped": True}
    return {"result": outcome.reason, "campaign": campaign_id or 0, "state": state or "-"}
