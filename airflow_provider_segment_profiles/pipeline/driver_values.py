"""
Warehouse values the Python driver cannot hold, read as a marker instead of failing the fetch.

PostgreSQL keeps dates and times Python's ``datetime`` cannot: ``infinity`` and ``-infinity``, dates before
the year 1 (BC) or after 9999, ``24:00:00`` (the end of a day), intervals beyond ``timedelta``'s
999,999,999 days; and JSON nested deeper than Python's parser goes (its recursion limit). psycopg 3 raises
``DataError`` at fetch time for the dates and times, both drivers raise ``RecursionError`` for the JSON,
so one such value in one row fails the whole sync; psycopg 2 raises ``ValueError`` for years outside
1..9999 and silently turns ``infinity`` into ``date.max`` and ``24:00:00`` into midnight.
:func:`install_safe_loaders` wraps the loaders of those types on one connection so that such a value
becomes an :class:`UnreadableValue` (the warehouse's own text and the reason) and every other value the
usual Python object. The value policy then decides per record: the text with a warning in text and object
fields, a rejection naming the field in ``timestamp`` and for JSON (``actions/json_values.py``,
``actions/timestamps.py``; the table is in ``docs/mappings.md``).

Which types, per driver (Airflow's Postgres hook uses psycopg 3 when it is installed with SQLAlchemy 2,
else psycopg 2; ``airflow.providers.postgres.hooks.postgres.USE_PSYCOPG3``):

========================  ==========================================================================
driver                    what is installed on the connection
========================  ==========================================================================
psycopg 3                 text-format loaders of ``date``, ``timestamp``, ``timestamptz``, ``time``,
                          ``timetz``, ``interval``, ``json`` and ``jsonb``; arrays, ranges and
                          multiranges look their element loader up on the connection, so they get the
                          safe one too. ``interval`` uses psycopg's pure-Python loader: the C one of
                          ``psycopg-binary`` 3.3 wraps around past 2**31 days instead of raising
                          (``interval '178000000 years'`` is read as 545,490,560 days).
psycopg 2                 typecasters of the same eight types and of their arrays; psycopg 2's range
                          casters convert their bounds through the connection's typecasters. An interval
                          psycopg 2 cannot parse (over 2**31 hours) that ``timedelta`` holds is parsed
                          here (:func:`parse_postgres_interval`).
sqlite3                   nothing: SQLite's INTEGER (64 bits), REAL and BLOB always fit Python,
                          undecodable TEXT is handled by the reader's ``text_factory``, and converters
                          only run when a hook connects with ``detect_types``, which Airflow's SQLite
                          hook does not (such a hook's converters are its own, and are left alone).
anything else             nothing.
========================  ==========================================================================

Only text format is covered: the model reader never asks for binary results.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from airflow_provider_segment_profiles.common.unreadable import UnreadableValue

#: The types handled, with their OID and their array's OID (fixed in PostgreSQL's catalog, ``pg_type.dat``).
_POSTGRES_OIDS = {
    "date": (1082, 1182),
    "timestamp": (1114, 1115),
    "timestamptz": (1184, 1185),
    "time": (1083, 1183),
    "timetz": (1266, 1270),
    "interval": (1186, 1187),
    "json": (114, 199),
    "jsonb": (3802, 3807),
}
_PYTHON_TYPES = {"date": "date", "time": "time", "timetz": "time", "interval": "timedelta"}
#: A year of five or more digits: not after "." (fractional seconds) nor inside a longer number.
_BIG_YEAR = re.compile(r"(?<![.\d])\d{5,}(?!\d)")


def unreadable(type_key: str, text: str, error: BaseException | None = None) -> UnreadableValue:
    """
    The marker of a value of one of the PostgreSQL types handled here, with the reason worded from its text.

    :param type_key: ``date``, ``timestamp``, ``timestamptz``, ``time``, ``timetz``, ``interval``, ``json``
        or ``jsonb``.
    :param text: the value's text as the server sent it.
    :param error: the driver's error, quoted when the text shows no known reason.
    """
    lowered = text.strip().lower()
    type_name = f"PostgreSQL {type_key}"
    if type_key in ("json", "jsonb"):
        if isinstance(error, RecursionError):
            reason = "is nested deeper than Python's JSON parser can read"
        else:
            reason = f"could not be read by the database driver ({error or 'no detail'})"
        return UnreadableValue(type_name, text, reason, sendable_as_text=False)
    if lowered in ("infinity", "-infinity"):
        reason = (
            f"is PostgreSQL's {lowered}, which no Python {_PYTHON_TYPES.get(type_key, 'datetime')} can hold"
        )
    elif lowered.endswith(" bc"):
        reason = "is before the year 1 (BC), outside Python's dates (years 1 to 9999)"
    elif type_key != "interval" and _BIG_YEAR.search(lowered):
        reason = "is after the year 9999, outside Python's dates (years 1 to 9999)"
    elif type_key in ("time", "timetz") and lowered.startswith("24:"):
        reason = "is the end of the day (24:00:00), which Python's time (hours 0 to 23) cannot hold"
    elif isinstance(error, OverflowError):
        reason = "is outside Python's timedelta range (999,999,999 days either way)"
    else:
        reason = f"could not be read by the database driver ({error or 'no detail'})"
    return UnreadableValue(type_name, text, reason)


#: An interval as PostgreSQL writes it in its default IntervalStyle ``postgres``:
#: ``-1 years +2 mons 3 days -04:05:06.789``.
_INTERVAL = re.compile(
    r"(?:([+-]?\d+) years? ?)?(?:([+-]?\d+) mons? ?)?(?:([+-]?\d+) days? ?)?"
    r"(?:([+-])?(\d+):(\d+):(\d+)(?:\.(\d{1,6}))?)?"
)


def parse_postgres_interval(text: str) -> timedelta:
    """
    An interval's text (IntervalStyle ``postgres``) as a ``timedelta``, counting a year as 365 days and a
    month as 30, as both psycopg versions do.

    :raises OverflowError: the interval is outside ``timedelta``'s range.
    :raises ValueError: the text is not an interval in that style.
    """
    match = _INTERVAL.fullmatch(text.strip())
    if match is None or not any(match.groups()):
        raise ValueError(f"not an interval in IntervalStyle postgres: {text!r}")
    years, months, days, sign, hours, minutes, seconds, fraction = match.groups()
    total_days = 365 * int(years or 0) + 30 * int(months or 0) + int(days or 0)
    microseconds = 0
    if hours is not None:
        whole_seconds = (int(hours) * 60 + int(minutes)) * 60 + int(seconds)
        microseconds = whole_seconds * 1_000_000 + int((fraction or "").ljust(6, "0"))
        if sign == "-":
            microseconds = -microseconds
    return timedelta(days=total_days, microseconds=microseconds)


def _after_driver_error(type_key: str, text: str, error: BaseException) -> Any:
    """What a value becomes when the driver could not load it: an interval the driver's parser refused
    but ``timedelta`` holds (psycopg 2 stops at 2**31 hours) is that ``timedelta``; else a marker."""
    if type_key == "interval":
        try:
            return parse_postgres_interval(text)
        except (OverflowError, ValueError) as own_error:
            return unreadable(type_key, text, own_error if isinstance(own_error, OverflowError) else error)
    return unreadable(type_key, text, error)


def install_safe_loaders(conn: Any) -> None:
    """
    Make one DB-API connection return an :class:`UnreadableValue` for values its driver cannot hold,
    instead of raising at fetch time (see the module's table). Other drivers are left as they are.

    Call it before the connection's cursors are created. It changes this connection only, never the
    driver's global registry, and keeps loaders the hook installed itself (they are wrapped, not replaced).

    :param conn: a connection from ``DbApiHook.get_conn()``.
    """
    module = type(conn).__module__
    if module.startswith("psycopg2"):
        _install_psycopg2(conn)
    elif module.startswith("psycopg"):
        _install_psycopg(conn)


# -- psycopg 3 -------------------------------------------------------------------------------------------
def _install_psycopg(conn: Any) -> None:
    from psycopg.pq import Format

    adapters = conn.adapters
    for type_key, (oid, _array_oid) in _POSTGRES_OIDS.items():
        inner = adapters.get_loader(oid, Format.TEXT)
        if inner is None:
            continue
        if type_key == "interval" and inner.__module__.split(".")[0] in ("psycopg_binary", "psycopg_c"):
            from psycopg.types.datetime import IntervalLoader

            inner = IntervalLoader
        adapters.register_loader(oid, _psycopg_safe_loader(inner, type_key))


def _psycopg_safe_loader(inner: type, type_key: str) -> type:
    from psycopg.adapt import Loader

    class SafeLoader(Loader):
        """``inner``'s result, or an :class:`UnreadableValue` when ``inner`` cannot load the value."""

        def __init__(self, oid: int, context: Any = None) -> None:
            super().__init__(oid, context)
            self._load = inner(oid, context).load

        def load(self, data: Any) -> Any:
            try:
                return self._load(data)
            except Exception as error:  # the driver's DataError, NotImplementedError (IntervalStyle)...
                return _after_driver_error(type_key, bytes(data).decode("utf-8", "replace"), error)

    SafeLoader.__name__ = SafeLoader.__qualname__ = f"SafeLoader_{type_key}"
    return SafeLoader


# -- psycopg 2 -------------------------------------------------------------------------------------------
def _install_psycopg2(conn: Any) -> None:
    import psycopg2.extensions as extensions

    for type_key, (oid, array_oid) in _POSTGRES_OIDS.items():
        inner = conn.string_types.get(oid) or extensions.string_types.get(oid)
        if inner is None:
            continue
        caster = extensions.new_type(
            (oid,), f"SEGMENT_PROFILES_{type_key.upper()}", _psycopg2_cast(inner, type_key)
        )
        extensions.register_type(caster, conn)
        array = extensions.new_array_type((array_oid,), f"SEGMENT_PROFILES_{type_key.upper()}_ARRAY", caster)
        extensions.register_type(array, conn)


def _psycopg2_cast(inner: Any, type_key: str) -> Any:
    # psycopg 2 reads infinity as date.max/datetime.max (and -infinity as .min) and 24:00:00 as midnight:
    # values that exist but are not the warehouse's, so they are markers as with psycopg 3.
    special_infinity = type_key in ("date", "timestamp", "timestamptz")
    special_midnight = type_key in ("time", "timetz")

    def cast(text: str | None, cursor: Any) -> Any:
        if text is None:
            return None
        if special_infinity and text in ("infinity", "-infinity"):
            return unreadable(type_key, text)
        if special_midnight and text.startswith("24:"):
            return unreadable(type_key, text)
        try:
            return inner(text, cursor)
        except Exception as error:  # ValueError (years), OverflowError (intervals), DataError
            return _after_driver_error(type_key, text, error)

    return cast
