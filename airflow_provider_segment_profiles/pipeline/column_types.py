"""
The result type of each column the checksums cover, kept in the committed state, so that a run whose model
changed a column's type (``id`` from integer to text) says why every record is sent again: the checksums
of both engines cover the values with their types, so every record counts as updated and its messages get
new message ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: The key of the types in the committed state's ``extra``.
STATE_KEY = "column_types"
#: Marks a type read from a value (the driver gives none): compared for the unique identifier only, whose
#: values are never NULL, since another column's first value may be of another type in a typeless database.
_PYTHON = "py:"


def result_types(
    description: Sequence[Sequence[Any]] | None, first_row: Sequence[Any] | None
) -> dict[str, str]:
    """
    ``column -> type`` of a result: the driver's type code from the cursor's description (psycopg: the
    type's OID), else, where the driver gives none (sqlite3), the Python type of the first row's value;
    columns with neither are left out.

    :param description: the cursor's ``description`` (DB-API: ``(name, type_code, ...)`` per column).
    :param first_row: the first row read, or ``None``.
    """
    types: dict[str, str] = {}
    for index, column in enumerate(description or ()):
        code = column[1] if len(column) > 1 else None
        if code is not None:
            types[str(column[0])] = str(code)
        elif first_row is not None and index < len(first_row) and first_row[index] is not None:
            types[str(column[0])] = _PYTHON + type(first_row[index]).__name__
    return types


def changed_types(
    previous: Mapping[str, str] | None, now: Mapping[str, str], used: Sequence[str], primary_key: str
) -> list[str]:
    """``"column (was → now)"`` for the unique identifier and each used column whose type differs from the
    committed one."""
    if not previous:
        return []
    return [
        f"{column} ({previous[column].removeprefix(_PYTHON)} → {now[column].removeprefix(_PYTHON)})"
        for column in dict.fromkeys([primary_key, *used])
        if column in previous
        and column in now
        and previous[column] != now[column]
        and (column == primary_key or not now[column].startswith(_PYTHON))
    ]


def log_changed_types(log: Any, changes: Sequence[str], primary_key: str) -> None:
    """Say why every record is sent again after a type change (both engines)."""
    if not changes:
        return
    key = any(change.startswith(f"{primary_key} (") for change in changes)
    log.warning(
        "The result type of %s changed since the last commit: the checksums cover values with their types, "
        "so every record counts as updated and is sent again under new message ids%s",
        ", ".join(changes),
        (
            f"; the unique identifier {primary_key!r} renders the same text, so no record counts as deleted"
            if key
            else ""
        ),
    )


__all__ = ["STATE_KEY", "changed_types", "log_changed_types", "result_types"]
