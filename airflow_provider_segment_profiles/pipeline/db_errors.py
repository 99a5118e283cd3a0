"""
The warehouse driver's errors, classified once for the source (:mod:`.reader`) and both change-detection
engines: permanent (a retry meets the same error: fail without retry) or transient (retried by Airflow).

Where the driver gives an SQLSTATE, its class decides. SQLSTATE classes are the SQL standard's, as listed in
PostgreSQL's "Appendix A. PostgreSQL Error Codes" (https://www.postgresql.org/docs/current/errcodes-appendix.html):
the first two characters are the class, e.g. ``22`` data exception, ``42`` syntax error or access rule
violation, ``28`` invalid authorization specification, ``08`` connection exception, ``40`` transaction
rollback (serialization failure, deadlock), ``57`` operator intervention (``57P01`` admin shutdown).
Drivers expose it as ``err.sqlstate`` (psycopg 3, mysql-connector, the Snowflake connector), ``err.pgcode``
(psycopg 2), or as a 5-character argument; sqlite3 gives none, and then today's rules stay: the DB-API's
``ProgrammingError`` and ``NotSupportedError`` are permanent, anything else is left to Airflow's retries as
it is raised.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, NoReturn

from airflow_provider_segment_profiles.exceptions import ModelQueryError, ModelReadError, SegmentProfilesError

#: SQLSTATE classes a retry cannot fix, with their names in the SQL standard.
PERMANENT_CLASSES = {
    "0A": "feature not supported",
    "0L": "invalid grantor",
    "0P": "invalid role specification",
    "21": "cardinality violation",
    "22": "data exception",
    "23": "integrity constraint violation",
    "26": "invalid SQL statement name",
    "28": "invalid authorization specification",
    "2B": "dependent privilege descriptors still exist",
    "2F": "SQL routine exception",
    "34": "invalid cursor name",
    "38": "external routine exception",
    "39": "external routine invocation exception",
    "3D": "invalid catalog name",
    "3F": "invalid schema name",
    "42": "syntax error or access rule violation",
    "44": "WITH CHECK OPTION violation",
}
#: SQLSTATE classes the same statement may not meet a moment later.
TRANSIENT_CLASSES = {
    "08": "connection exception",
    "40": "transaction rollback",
    "53": "insufficient resources",
    "57": "operator intervention",
    "58": "system error",
}
#: Single SQLSTATEs of otherwise permanent classes that are transient.
TRANSIENT_STATES = {"55P03": "lock not available", "55006": "object in use"}
#: DB-API exception classes that are permanent when the driver gives no SQLSTATE (today's rules).
_PERMANENT_NAMES = frozenset({"ProgrammingError", "NotSupportedError"})
_SQLSTATE = re.compile(r"(?=[0-9A-Z]*[0-9])[0-9A-Z]{5}")


class ErrorKind(StrEnum):
    """What a retry can do about a driver error."""

    PERMANENT = "permanent"
    TRANSIENT = "transient"
    UNKNOWN = "unknown"


def sqlstate(err: BaseException) -> str | None:
    """
    The SQLSTATE of a driver error, or ``None`` when the driver gives none.

    Read from ``sqlstate`` (psycopg 3 and others), ``pgcode`` (psycopg 2), the error SQLAlchemy wraps
    (``orig``), or a 5-character argument holding a digit.
    """
    for candidate in (err, getattr(err, "orig", None)):
        if candidate is None:
            continue
        for attribute in ("sqlstate", "pgcode"):
            value = getattr(candidate, attribute, None)
            if isinstance(value, str) and _SQLSTATE.fullmatch(value):
                return value
        for value in getattr(candidate, "args", ()):
            if isinstance(value, str) and _SQLSTATE.fullmatch(value):
                return value
    return None


def classify(err: BaseException) -> tuple[ErrorKind, str]:
    """
    ``(kind, why)`` of a driver error: ``why`` names the SQLSTATE and its class, or the exception class.
    """
    state = sqlstate(err)
    if state is not None:
        if state in TRANSIENT_STATES:
            return ErrorKind.TRANSIENT, f"SQLSTATE {state}, {TRANSIENT_STATES[state]}"
        cls = state[:2]
        if cls in PERMANENT_CLASSES:
            return ErrorKind.PERMANENT, f"SQLSTATE {state}, class {cls} {PERMANENT_CLASSES[cls]}"
        if cls in TRANSIENT_CLASSES:
            return ErrorKind.TRANSIENT, f"SQLSTATE {state}, class {cls} {TRANSIENT_CLASSES[cls]}"
        return ErrorKind.UNKNOWN, f"SQLSTATE {state}"
    if any(c.__name__ in _PERMANENT_NAMES for c in type(err).__mro__):
        return ErrorKind.PERMANENT, type(err).__name__
    return ErrorKind.UNKNOWN, type(err).__name__


def is_unique_violation(err: BaseException) -> bool:
    """Whether ``err`` is a unique-constraint violation (SQLSTATE ``23505``; sqlite3's ``IntegrityError``)."""
    state = sqlstate(err)
    if state is not None:
        return state == "23505"
    return any(c.__name__ in {"IntegrityError", "UniqueViolation"} for c in type(err).__mro__)


def is_insufficient_privilege(err: BaseException) -> bool:
    """Whether ``err`` is a refused privilege (SQLSTATE ``42501``)."""
    return sqlstate(err) == "42501" or type(err).__name__ == "InsufficientPrivilege"


def model_label(sql: str, conn_id: str | None = None, limit: int = 120) -> str:
    """
    The model as error messages name it: its connection and the start of its SQL on one line.

    :param sql: the model's SQL.
    :param conn_id: the warehouse connection id, when known.
    """
    text = " ".join(sql.split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return f"the model ({'conn_id ' + repr(conn_id) + ': ' if conn_id else ''}{text})"


def model_error(err: BaseException, model: str) -> SegmentProfilesError | None:
    """
    The provider's error for a driver error raised running or reading the model, or ``None`` to let the
    driver's error through unchanged (no SQLSTATE and no DB-API class that says; Airflow retries it).

    :param err: the driver's error.
    :param model: the model as :func:`model_label` names it.
    :return: a :class:`ModelQueryError` (permanent: no retry) or a :class:`ModelReadError` (transient).
    """
    kind, why = classify(err)
    detail = str(err).strip()
    if kind is ErrorKind.PERMANENT:
        return ModelQueryError(
            f"The database refused the model's SQL ({why}; permanent, not retried): {detail}\nModel: {model}"
        )
    if kind is ErrorKind.TRANSIENT:
        return ModelReadError(
            f"Reading the model failed ({why}; transient, the task is retried): {detail}\nModel: {model}"
        )
    return None


def raise_model_error(err: Exception, model: str) -> NoReturn:
    """Raise :func:`model_error`'s error for ``err`` (from it), or ``err`` itself when there is none."""
    mapped = model_error(err, model)
    if mapped is None:
        raise err
    raise mapped from err


def conn_id_of(hook: Any) -> str | None:
    """The connection id of a common-sql hook (``None`` when it has none)."""
    try:
        return getattr(hook, hook.conn_name_attr)
    except Exception:
        return None


__all__ = [
    "ErrorKind",
    "classify",
    "conn_id_of",
    "is_insufficient_privilege",
    "is_unique_violation",
    "model_error",
    "model_label",
    "raise_model_error",
    "sqlstate",
]
