"""The incremental cursor's watermark: how it is compared, stored in XCom and bound back into SQL."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from airflow_provider_segment_profiles.exceptions import WatermarkError


def sort_key(value: Any) -> int | float | str:
    """
    A value SQLite orders the same way the warehouse orders ``value``.

    Numbers stay numbers (``Decimal`` becomes ``float``), datetimes become ISO-8601 in UTC (naive ones are
    kept naive, as all values of one column are), dates ISO-8601, strings themselves.

    :raises WatermarkError: for NULL or an unsupported type.
    """
    if value is None:
        raise WatermarkError("NULL cursor value")
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
        return value.isoformat(timespec="microseconds")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, str):
        return value
    raise WatermarkError(f"cursor values of type {type(value).__name__} cannot be ordered")


def to_xcom(value: Any) -> dict[str, str | int | float] | None:
    """The watermark as a JSON-safe, typed dict for XCom (``None`` stays ``None``)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return {"type": "int", "value": int(value)}
    if isinstance(value, int):
        return {"type": "int", "value": value}
    if isinstance(value, float):
        return {"type": "float", "value": value}
    if isinstance(value, Decimal):
        return {"type": "decimal", "value": str(value)}
    if isinstance(value, dt.datetime):
        return {"type": "datetime", "value": value.isoformat()}
    if isinstance(value, dt.date):
        return {"type": "date", "value": value.isoformat()}
    if isinstance(value, dt.time):
        return {"type": "time", "value": value.isoformat()}
    return {"type": "str", "value": str(value)}


def from_xcom(stored: dict[str, Any] | None) -> Any:
    """Rebuild the Python value to bind as the watermark parameter."""
    if not stored:
        return None
    kind, value = stored["type"], stored["value"]
    return {
        "int": int,
        "float": float,
        "decimal": Decimal,
        "datetime": dt.datetime.fromisoformat,
        "date": dt.date.fromisoformat,
        "time": dt.time.fromisoformat,
        "str": str,
    }[kind](value)
