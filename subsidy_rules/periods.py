"""Asia/Bangkok time: the local day and month that caps, hours and deadlines are counted in.

Thailand has kept UTC+07:00 without daylight saving since 1920, so a fixed offset is the
Asia/Bangkok zone for every date a program can have, with no tz database to install or
keep up to date (a test checks it against ``zoneinfo`` where one is present).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

BANGKOK = timezone(timedelta(hours=7), "Asia/Bangkok")


def bangkok(now: datetime) -> datetime:
    """``now`` (aware) as Bangkok wall-clock time."""
    assert now.tzinfo is not None and now.utcoffset() is not None, "now must be aware"
    return now.astimezone(BANGKOK)


def second_of_day(local: datetime) -> int:
    return local.hour * 3600 + local.minute * 60 + local.second


def usage_periods(now: datetime) -> tuple[date, date]:
    """(day_key, month_key) of ``now``: the Bangkok date, and the 1st of its month.

    A daily counter belongs to the day_key, a monthly one to the month_key; both roll over
    at midnight Bangkok time. They are dates so they map to a PostgreSQL ``date`` column.
    """
    day = bangkok(now).date()
    return day, day.replace(day=1)


def start_of_day(day: date) -> datetime:
    """Midnight Bangkok at the start of ``day``, as an aware datetime."""
    return datetime.combine(day, time(0), tzinfo=BANGKOK)
