"""Send times staff give in clinic time, as UTC instants: a repeated hour means its first occurrence,
a time the clocks skip is refused."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from mailer.publishing.campaigns import CampaignError


class ScheduleError(CampaignError):
    """A send time that cannot be used (not a time, skipped by the clocks, in the past); one line."""


def local_instant(local: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    """A wall-clock time in the clinic's zone as a UTC instant.

    On the autumn night a wall time happens twice (01:30 in Chicago on 2027-11-07): the first one, so a
    send is never later than staff expect. On the spring night the clocks skip an hour: a time inside it
    does not exist, and guessing which neighbouring time was meant could send an hour early or late, so
    it is refused and staff choose.
    """
    naive = local.replace(tzinfo=None)
    first = naive.replace(tzinfo=zone, fold=0)
    instant = first.astimezone(dt.UTC)
    if instant.astimezone(zone).replace(tzinfo=None) != naive:
        raise ScheduleError(
            f"{naive:%Y-%m-%d %H:%M} does not exist in {zone.key}: the clocks go forward an hour that night. "
            "Please choose a time before or after the change"
        )
    return instant


def parse_send_time(value: str, zone: ZoneInfo) -> dt.datetime:
    """ISO-8601 ("2027-11-07T01:30", or with an offset); without an offset it is clinic time."""
    text = (value or "").strip()
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ScheduleError(f"not a date and time: {text[:40]!r} (e.g. 2027-11-07T09:30)") from None
    if parsed.tzinfo is None:
        return local_instant(parsed, zone)
    return parsed.astimezone(dt.UTC)


def future_send_time(value: str, zone: ZoneInfo, now: dt.datetime) -> dt.datetime:
    """A send time that is still ahead (a time in the past would go out at once, by surprise)."""
    instant = parse_send_time(value, zone)
    if instant <= now:
        shown = instant.astimezone(zone)
        raise ScheduleError(f"{shown:%Y-%m-%d %H:%M %Z} is in the past; choose a later time, or send it now")
    return instant
