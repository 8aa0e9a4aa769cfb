"""What happened: per-campaign figures, subscribers gained and lost per month, and their SVG chart."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from markupsafe import Markup, escape
from sqlalchemy import func, literal, or_, select
from sqlalchemy.orm import Session, aliased

from mailer.models import Campaign, ConsentEvent, OutboxMessage, Subscription, Suppression

TOPIC_PREFIX = "topic:"


# --- per campaign --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CampaignFigures:
    """One campaign's messages by state, and how many recipients unsubscribed after it went out."""

    queued: int = 0  # waiting to go, or being handed over right now
    sent: int = 0
    deferred: int = 0  # a temporary failure (or a lost reply): tried again later
    failed: int = 0
    skipped: int = 0  # not sent: unsubscribed or suppressed meanwhile, or the campaign was cancelled
    unsubscribed_after: int = 0

    @property
    def total(self) -> int:
        return self.queued + self.sent + self.deferred + self.failed + self.skipped


# The outbox's own states, folded into the five a person reads (outbox.OUTBOX_STATES has seven).
_SHOWN_STATE = {"queued": "queued", "sending": "queued", "deferred": "deferred", "unknown": "deferred",
                "sent": "sent", "failed": "failed", "skipped": "skipped"}


def campaign_figures(session: Session, campaign_ids: Sequence[int]) -> dict[int, CampaignFigures]:
    """Figures for these campaigns in two grouped queries (not two per campaign): {id: figures}."""
    ids = list(dict.fromkeys(campaign_ids))
    if not ids:
        return {}
    counts: dict[int, dict[str, int]] = {campaign_id: {} for campaign_id in ids}
    rows = session.execute(
        select(OutboxMessage.campaign_id, OutboxMessage.state, func.count())
        .where(OutboxMessage.campaign_id.in_(ids))
        .group_by(OutboxMessage.campaign_id, OutboxMessage.state)
    ).all()
    for campaign_id, state, count in rows:
        shown = _SHOWN_STATE.get(state, "queued")
        counts[campaign_id][shown] = counts[campaign_id].get(shown, 0) + int(count)
    unsubscribed = unsubscribed_after(session, ids)
    return {campaign_id: CampaignFigures(**counts[campaign_id], unsubscribed_after=unsubscribed.get(campaign_id, 0))
            for campaign_id in ids}


def unsubscribed_after(session: Session, campaign_ids: Sequence[int]) -> dict[int, int]:
    """Per campaign: recipients it was sent to who, after its first message went out, withdrew the
    campaign's topic on the ledger or were suppressed as unsubscribed. {id: count}, zeros left out.

    Only the campaign's own topic counts: unticking "events" after a newsletter is not leaving the
    newsletter. "Unsubscribe from all" withdraws every topic, so it always counts.
    """
    if not campaign_ids:
        return {}
    first_send = (
        select(OutboxMessage.campaign_id.label("campaign_id"), func.min(OutboxMessage.sent_at).label("at"))
        .where(OutboxMessage.campaign_id.in_(list(campaign_ids)), OutboxMessage.state == "sent")
        .group_by(OutboxMessage.campaign_id)
        .subquery()
    )
    withdrew = (
        select(ConsentEvent.id)
        .where(ConsentEvent.contact_id == OutboxMessage.contact_id, ConsentEvent.action == "withdrawn",
               ConsentEvent.purpose == literal(TOPIC_PREFIX) + Campaign.topic,
               ConsentEvent.created_at > first_send.c.at)
        .exists()
    )
    suppressed = (
        select(Suppression.id)
        .where(Suppression.contact_id == OutboxMessage.contact_id, Suppression.reason == "unsubscribed",
               Suppression.created_at > first_send.c.at)
        .exists()
    )
    rows = session.execute(
        select(OutboxMessage.campaign_id, func.count(func.distinct(OutboxMessage.contact_id)))
        .join(first_send, first_send.c.campaign_id == OutboxMessage.campaign_id)
        .join(Campaign, Campaign.id == OutboxMessage.campaign_id)
        .where(OutboxMessage.state == "sent", OutboxMessage.contact_id.is_not(None), or_(withdrew, suppressed))
        .group_by(OutboxMessage.campaign_id)
    ).all()
    return {campaign_id: int(count) for campaign_id, count in rows}


# --- subscribers gained and lost per month ---------------------------------------------------------


@dataclass(frozen=True)
class MonthFigures:
    """Subscribers (people, each counted once a month) gained and lost in one local calendar month."""

    month: dt.date  # its first day
    gained: int
    lost: int

    @property
    def label(self) -> str:
        return self.month.strftime("%B %Y")


def month_starts(zone: ZoneInfo, now: dt.datetime, months: int = 12) -> list[dt.date]:
    """The first days of the last `months` local calendar months, the current one last."""
    local = now.astimezone(zone)
    index = local.year * 12 + local.month - 1
    return [dt.date(i // 12, i % 12 + 1, 1) for i in range(index - months + 1, index + 1)]


def _gains(session: Session, since: dt.datetime) -> list[tuple[int, dt.datetime]]:
    """(contact, time) of each topic subscription that became active: a confirmation, or a grant that
    needed none (staff, import, the person's own preference page). A web sign-up's grant only asks for
    confirmation, so it counts when confirmed; until then its subscription is pending with that grant."""
    later = aliased(ConsentEvent)
    confirmed_later = (
        select(later.id)
        .where(later.contact_id == ConsentEvent.contact_id, later.purpose == ConsentEvent.purpose,
               later.action == "confirmed", later.id > ConsentEvent.id)
        .exists()
    )
    still_pending = (
        select(Subscription.contact_id)
        .where(Subscription.consent_event_id == ConsentEvent.id, Subscription.status == "pending")
        .exists()
    )
    rows = session.execute(
        select(ConsentEvent.contact_id, ConsentEvent.created_at)
        .where(ConsentEvent.purpose.startswith(TOPIC_PREFIX), ConsentEvent.created_at >= since)
        .where(or_(ConsentEvent.action == "confirmed",
                   (ConsentEvent.action == "granted") & ~confirmed_later & ~still_pending))
    ).all()
    return [(contact_id, at) for contact_id, at in rows]


def _losses(session: Session, since: dt.datetime) -> list[tuple[object, dt.datetime]]:
    """(who, time) of each topic withdrawal and each suppression of a subscriber. `who` is a contact id,
    or the suppression's own key when erasure removed the contact (that person is counted once)."""
    withdrawals = session.execute(
        select(ConsentEvent.contact_id, ConsentEvent.created_at)
        .where(ConsentEvent.purpose.startswith(TOPIC_PREFIX), ConsentEvent.action == "withdrawn",
               ConsentEvent.created_at >= since)
    ).all()
    # An inquiry contact who never subscribed to a topic is not a lost subscriber when suppressed.
    had_topic = select(Subscription.contact_id).where(Subscription.contact_id == Suppression.contact_id).exists()
    suppressions = session.execute(
        select(Suppression.id, Suppression.contact_id, Suppression.created_at)
        .where(Suppression.created_at >= since, or_(Suppression.contact_id.is_(None), had_topic))
    ).all()
    losses: list[tuple[object, dt.datetime]] = [(contact_id, at) for contact_id, at in withdrawals]
    losses += [(contact_id if contact_id is not None else ("erased", row_id), at)
               for row_id, contact_id, at in suppressions]
    return losses


def monthly_changes(session: Session, zone: ZoneInfo, now: dt.datetime, months: int = 12) -> list[MonthFigures]:
    """Subscribers gained and lost in each of the last `months` local months (the current one included).

    The rows are bucketed here, not in SQL: months begin at local midnight in the clinic's time zone,
    which SQLite cannot compute, and a clinic's year of consent changes is a few thousand rows.
    """
    starts = month_starts(zone, now, months)
    since = dt.datetime.combine(starts[0], dt.time(0), tzinfo=zone).astimezone(dt.UTC)
    gained: dict[dt.date, set[object]] = {start: set() for start in starts}
    lost: dict[dt.date, set[object]] = {start: set() for start in starts}
    for bucket, events in ((gained, _gains(session, since)), (lost, _losses(session, since))):
        for who, at in events:
            local = at.astimezone(zone)
            month = dt.date(local.year, local.month, 1)
            if month in bucket:  # a time after `now` (a clock ahead) falls outside the chart
                bucket[month].add(who)
    return [MonthFigures(start, len(gained[start]), len(lost[start])) for start in starts]


# --- the chart -------------------------------------------------------------------------------------

# Drawing units (the SVG scales to the page's width through its viewBox).
WIDTH, HEIGHT = 760, 320
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 56, 50
GAINED_FILL = "#2f6f5e"
LOST_STROKE = "#8a2a1e"
FONT = "Helvetica, Arial, sans-serif"  # fonts every computer has: nothing is downloaded


def _nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten at or above `value` (at least 4, so ticks are whole)."""
    if value <= 4:
        return 4
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power  # pragma: no cover - the loop always returns


def _text(x: float, y: float, content: str, *, size: int = 12, anchor: str = "middle", weight: str = "normal",
          fill: str = "#2b2b2b") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-family="{FONT}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}">{escape(content)}</text>')


def monthly_chart_svg(months: Sequence[MonthFigures], title: str) -> Markup:
    """A grouped bar chart as inline SVG: no script, no external font, readable without colour.

    Gained bars are solid, lost bars hatched and outlined; every bar carries its number as text, signed
    (+ gained, − lost), so the chart reads the same in greyscale, printed, or to a colour-blind eye.
    """
    plot_width = WIDTH - LEFT - RIGHT
    plot_height = HEIGHT - TOP - BOTTOM
    baseline = TOP + plot_height
    top_value = _nice_ceiling(max([m.gained for m in months] + [m.lost for m in months] + [0]))
    group = plot_width / max(len(months), 1)
    bar = min(18.0, group / 2 - 5)

    def y_of(value: int) -> float:
        return baseline - plot_height * value / top_value

    total_gained = sum(m.gained for m in months)
    total_lost = sum(m.lost for m in months)
    description = (f"{total_gained} subscribers gained and {total_lost} lost from {months[0].label} to "
                   f"{months[-1].label}." if months else "No months to show.")
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}. {escape(description)}" class="chart" focusable="false">',
        f"<title>{escape(title)}</title>",
        f"<desc>{escape(description)} The table below the chart has the same numbers.</desc>",
        "<defs>",
        '<pattern id="lost-hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)">',
        '<rect width="6" height="6" fill="#ffffff"/>',
        f'<line x1="0" y1="0" x2="0" y2="6" stroke="{LOST_STROKE}" stroke-width="2.5"/>',
        "</pattern>",
        "</defs>",
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
    ]
    # Legend: a swatch of each fill, with words, so the meaning never rests on colour.
    parts += [
        f'<rect x="{LEFT}" y="14" width="16" height="16" fill="{GAINED_FILL}"/>',
        _text(LEFT + 22, 27, "Gained (solid bar, +)", anchor="start", size=14),
        f'<rect x="{LEFT + 200}" y="14" width="16" height="16" fill="url(#lost-hatch)" stroke="{LOST_STROKE}" '
        'stroke-width="1.5"/>',
        _text(LEFT + 222, 27, "Lost (hatched bar, −)", anchor="start", size=14),
    ]
    # Whole, evenly spaced ticks: 20 and 200 split in four (steps of 5 and 50), 10, 50 and 100 in five.
    intervals = 4 if str(top_value)[0] in "24" else 5
    for tick in range(0, top_value + 1, top_value // intervals):
        y = y_of(tick)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#d9d3c7" '
                     f'stroke-width="{1.5 if tick == 0 else 1}"/>')
        parts.append(_text(LEFT - 6, y + 4, str(tick), anchor="end", size=12, fill="#555555"))
    for index, month in enumerate(months):
        centre = LEFT + group * index + group / 2
        for value, x, sign, kind in ((month.gained, centre - bar - 1, "+", "gained"),
                                     (month.lost, centre + 1, "−", "lost")):
            y = y_of(value)
            height = baseline - y
            fill = GAINED_FILL if kind == "gained" else "url(#lost-hatch)"
            stroke = "" if kind == "gained" else f' stroke="{LOST_STROKE}" stroke-width="1.5"'
            if height > 0:
                parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{height:.1f}" '
                             f'fill="{fill}"{stroke}><title>{escape(month.label)}: {value} {kind}</title></rect>')
            shown = f"{sign}{value}" if value else "0"
            parts.append(_text(x + bar / 2, y - 4, shown, size=12))
        parts.append(_text(centre, baseline + 18, month.month.strftime("%b"), size=13))
        if index == 0 or month.month.month == 1:
            parts.append(_text(centre, baseline + 35, str(month.month.year), size=12, fill="#555555"))
    parts.append("</svg>")
    return Markup("".join(parts))
