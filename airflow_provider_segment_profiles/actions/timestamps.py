"""
Dates, times and timestamps as Segment wants them: ISO-8601 text with an explicit UTC offset.

Segment's common spec asks for ISO-8601 timestamps in UTC, and Engage does not save a timestamp trait
that has no time zone (segment-docs ``src/connections/spec/common.md``, "Timestamps"). So every
``datetime`` becomes UTC text ending in ``Z``; a naive ``datetime`` is taken to be UTC already.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from airflow_provider_segment_profiles.actions.errors import FieldRejected
from airflow_provider_segment_profiles.common.unreadable import UnreadableValue

#: Epoch numbers at or above this magnitude are milliseconds, below it seconds. 1e11 seconds is the year
#: 5138, while 1e11 milliseconds is 1973-03-03, so only millisecond values before March 1973 are misread.
EPOCH_MILLISECONDS_THRESHOLD = 100_000_000_000

_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NUMERIC_TEXT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_PRE_1970_WARNING = "is before 1970-01-01; Segment documents that such events may not be ingested"


_TWO_DIGITS = tuple(f"{number:02d}" for number in range(100))
_MILLISECONDS_Z = tuple(f".{number:03d}Z" for number in range(1000))
#: "YYYY-MM-DDT" per calendar day seen; bounded because a sync touches few distinct days, and cleared
#: when full so that a pathological spread of dates cannot grow it without limit.
_DAY_PREFIXES: dict[tuple[int, int, int], str] = {}
_DAY_PREFIXES_LIMIT = 4096


def format_datetime(value: datetime) -> str:
    """
    Render a ``datetime`` as UTC ISO-8601 text ending in ``Z``, like JavaScript's ``toISOString``.

    Milliseconds are always written (``2023-09-26T09:46:28.290Z``); microseconds only when the value
    has them, so no precision is lost.

    :param value: naive (taken as UTC) or aware datetime.
    :return: e.g. ``"2023-09-26T09:46:28.290Z"`` or ``"2023-09-26T09:46:28.290123Z"``.
    """
    zone = value.tzinfo
    if zone is not None and zone is not UTC:
        offset = value.utcoffset()  # None: a tzinfo that declines to give an offset, i.e. naive
        if offset:
            try:
                value = value.astimezone(UTC)
            except OverflowError:
                # Within a day of datetime.min/max the UTC instant is not representable; keep the offset.
                return value.isoformat(
                    timespec="microseconds" if value.microsecond % 1000 else "milliseconds"
                )
    microsecond = value.microsecond
    if microsecond % 1000:
        return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    # Built from lookup tables: datetime.isoformat formats through a printf-style path that costs
    # several times more, and this runs for every timestamp of every record.
    day = (value.year, value.month, value.day)
    prefix = _DAY_PREFIXES.get(day)
    if prefix is None:
        if len(_DAY_PREFIXES) >= _DAY_PREFIXES_LIMIT:
            _DAY_PREFIXES.clear()
        prefix = _DAY_PREFIXES[day] = f"{value.year:04d}-{value.month:02d}-{value.day:02d}T"
    two = _TWO_DIGITS
    clock = f"{two[value.hour]}:{two[value.minute]}:{two[value.second]}"
    return f"{prefix}{clock}{_MILLISECONDS_Z[microsecond // 1000]}"


def format_date(value: date) -> str:
    """
    Render a calendar ``date`` as midnight UTC, e.g. ``"1990-05-17T00:00:00.000Z"``.

    A bare ``YYYY-MM-DD`` is not timezone-qualified, and Engage only treats timezone-qualified text as a
    timestamp, so dates are sent as the timestamp of their first instant in UTC.
    """
    return f"{value.isoformat()}T00:00:00.000Z"


def format_time(value: time) -> str:
    """
    Render a time of day as ISO-8601 text with an offset: naive times are UTC (``"09:30:00Z"``), aware
    ones keep their own offset (``"09:30:00+02:00"``) because a time without a date cannot be moved.
    """
    offset = value.utcoffset()
    if offset is None or not offset:
        return value.replace(tzinfo=None).isoformat() + "Z"
    return value.isoformat()


def _from_epoch(number: float | int, original: object) -> datetime:
    try:
        if abs(number) >= EPOCH_MILLISECONDS_THRESHOLD:
            return _UNIX_EPOCH + timedelta(milliseconds=number)
        return _UNIX_EPOCH + timedelta(seconds=number)
    except (OverflowError, ValueError):
        raise FieldRejected(
            "timestamp",
            f"epoch number {original!r} is out of range: as "
            f"{'milliseconds' if abs(number) >= EPOCH_MILLISECONDS_THRESHOLD else 'seconds'} since 1970 it is "
            "not a date between the years 1 and 9999",
        ) from None


def normalize_timestamp(value: object, warnings: list[str], field: str = "timestamp") -> object:
    """
    Turn a warehouse value into the ``timestamp`` sent to Segment.

    Accepted: ``datetime`` (naive = UTC), ``date`` (midnight UTC), ISO-8601 text (``datetime.fromisoformat``
    syntax; naive = UTC), and Unix epoch numbers or numeric text — seconds, or milliseconds when the
    magnitude is at least :data:`EPOCH_MILLISECONDS_THRESHOLD`. Segment's own ``date-like`` check also
    reads numeric text as Unix seconds (actions-core ``packages/core/src/schema-validation.ts``).

    :param value: the field's value after the warehouse-to-JSON policy has *not* been applied.
    :param warnings: per-record warnings; a timestamp before 1970-01-01 adds one, because Segment
        documents that such events may not be ingested (segment-docs ``engage/product-limits.md``).
    :param field: the field path used in warnings and rejections.
    :return: ``None`` for null or empty text (the caller drops the field); the UTC text; or, for a
        value that is neither text nor a number (a boolean, an object), the value unchanged so that the
        action's JSON Schema rejects it with Segment's wording.
    :raises FieldRejected: text or numbers that are not a timestamp, out-of-range values, a bare time,
        a value the driver could not hold (an ``UnreadableValue``: PostgreSQL ``infinity``, a BC date).
    """
    if type(value) is datetime:
        parsed = value
    elif value is None or (isinstance(value, str) and not value):
        return None
    elif isinstance(value, str):
        parsed = _parse_timestamp_text(value.strip(), value, field)
    elif isinstance(value, bool):
        return value
    elif isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        if value.year < 1970:
            warnings.append(f"{field}: {value.isoformat()} {_PRE_1970_WARNING}")
        return format_date(value)
    elif isinstance(value, int | float | Decimal):
        number = float(value) if isinstance(value, Decimal) else value
        if isinstance(number, float) and not number - number == 0.0:
            raise FieldRejected(field, f"{value!r} is not a timestamp")
        parsed = _from_epoch(number, value)
    elif isinstance(value, time):
        raise FieldRejected(field, f"a time of day without a date ({value.isoformat()}) is not a timestamp")
    elif isinstance(value, dict | list | tuple):
        return value
    elif isinstance(value, UnreadableValue):
        raise FieldRejected(field, f"{value.describe()}; it cannot be sent as a timestamp")
    else:
        raise FieldRejected(field, f"a {type(value).__name__} value cannot be read as a timestamp")
    text = format_datetime(parsed)
    if text < "1970":  # ISO text always starts with a four-digit year, so text order is time order
        warnings.append(f"{field}: {text} {_PRE_1970_WARNING}")
    return text


def _parse_timestamp_text(text: str, original: str, field: str) -> datetime:
    if _NUMERIC_TEXT.fullmatch(text):
        number = float(text)
        if not number - number == 0.0:
            raise FieldRejected(field, f"{original!r} is not a timestamp")
        return _from_epoch(number, original)
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    try:
        # RFC 3339 (section 5.6) allows a lower-case "t" and "z"; fromisoformat reads only "Z".
        return datetime.fromisoformat(text.upper())
    except ValueError:
        raise FieldRejected(
            field,
            f"cannot parse {original!r} as a timestamp: expected ISO-8601 text such as "
            "'2023-09-26T09:46:28.290Z' or a Unix epoch number",
        ) from None
