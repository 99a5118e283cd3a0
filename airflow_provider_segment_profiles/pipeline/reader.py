"""Streaming a SQL model's rows out of any common-sql (``DbApiHook``) connection."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import sqlparse

from airflow_provider_segment_profiles.exceptions import ModelQueryError, ModelReaderClosed
from airflow_provider_segment_profiles.pipeline import db_errors
from airflow_provider_segment_profiles.pipeline.config import DEFAULT_FETCH_SIZE
from airflow_provider_segment_profiles.pipeline.driver_values import install_safe_loaders

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

#: Statement types that change data; the model must be a query, so these are refused before running.
_WRITE_STATEMENTS = frozenset(
    {"INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE", "UPSERT", "CREATE", "DROP", "ALTER", "TRUNCATE"}
)
WATERMARK_PARAMETER = "segment_profiles_watermark"


def single_statement(sql: str, hook: DbApiHook) -> str:
    """
    Return the model's one statement without trailing semicolons.

    :raises ModelQueryError: when ``sql`` holds no statement, several statements, or one that writes.
    """
    statements = [
        s
        for s in hook.split_sql_string(sql, strip_semicolon=True)
        if sqlparse.format(s, strip_comments=True).strip().strip(";").strip()
    ]
    if not statements:
        raise ModelQueryError("The model's SQL holds no statement.")
    if len(statements) > 1:
        raise ModelQueryError(
            f"The model's SQL holds {len(statements)} statements; it must be a single SELECT "
            "(put preparation steps in an upstream task)."
        )
    statement = statements[0].rstrip().rstrip(";").rstrip()
    kind = sqlparse.parse(statement)[0].get_type()
    if kind in _WRITE_STATEMENTS:
        raise ModelQueryError(f"The model's SQL is a {kind} statement; it must be a query that returns rows.")
    return statement


def with_watermark_filter(
    statement: str,
    cursor_column: str,
    watermark: Any,
    parameters: Sequence[Any] | Mapping[str, Any] | None,
    hook,
    comparison: str = ">=",
    select: str = "*",
) -> tuple[str, Sequence[Any] | Mapping[str, Any]]:
    """
    Wrap the model so only rows whose ``cursor_column`` is at or past ``watermark`` are read (``comparison``
    and ``select`` make other queries of the same shape, e.g. the count of rows behind it).

    The watermark is bound with the hook's placeholder (``?`` for SQLite and DuckDB, ``%s`` for
    PostgreSQL); named parameters get a named placeholder. Rows equal to the watermark are read again on
    purpose: those already delivered are skipped by key, so none is lost at the boundary.
    """
    column = _quote_identifier(hook, cursor_column)
    placeholder = hook.placeholder
    if isinstance(parameters, Mapping):
        named = f":{WATERMARK_PARAMETER}" if placeholder == "?" else f"%({WATERMARK_PARAMETER})s"
        bound: Sequence[Any] | Mapping[str, Any] = {**parameters, WATERMARK_PARAMETER: watermark}
        marker = named
    else:
        bound = [*(parameters or ()), watermark]
        marker = placeholder
    # The newlines keep a trailing "-- comment" in the model from swallowing the wrapper.
    sql = (
        f"SELECT {select} FROM (\n{statement}\n) segment_profiles_model WHERE {column} {comparison} {marker}"
    )
    return sql, bound


def _quote_identifier(hook: DbApiHook, name: str) -> str:
    try:
        escape_format = hook.dialect.escape_word_format
    except Exception:
        escape_format = '"{}"'
    return escape_format.format(name.replace('"', '""'))


class ModelReader:
    """
    Run the model's query and yield its rows in chunks, with bounded memory.

    Uses ``cursor.fetchmany``; on PostgreSQL (psycopg 2 or 3, including Redshift through the Postgres
    hook) a named server-side cursor, because client-side cursors there buffer the whole result.

    :param hook: any common-sql hook.
    :param sql: one query (see :func:`single_statement`).
    :param parameters: bind parameters, a sequence or a mapping.
    :param fetch_size: rows per ``fetchmany`` call.
    :param connection: an open connection of ``hook`` to read through (it is not closed here), or ``None``
        to open one (the warehouse change detector's temporary tables live in its own session).
    """

    def __init__(
        self,
        hook: DbApiHook,
        sql: str,
        parameters: Sequence[Any] | Mapping[str, Any] | None,
        fetch_size: int = DEFAULT_FETCH_SIZE,
        connection: Any = None,
    ) -> None:
        self.hook = hook
        self._shared = connection
        self.sql = sql
        #: The model's own SQL, for error messages (``sql`` may wrap it); set by the caller.
        self.model_sql: str | None = None
        self.parameters = parameters
        self.fetch_size = fetch_size
        self.columns: list[str] = []
        self._conn: Any = None
        self._cursor: Any = None
        self._first: list[Any] = []

    def open(self) -> list[str]:
        """
        Execute the query and return the result's column names.

        :raises ModelQueryError: when the statement returns no result set, has duplicate column names, or
            the database refuses it as a programming error (syntax, unknown table, several statements).
        """
        self._conn = self._shared if self._shared is not None else self.hook.get_conn()
        install_safe_loaders(self._conn)  # values the driver cannot hold become per-record outcomes
        if isinstance(self._conn, sqlite3.Connection):
            # SQLite stores any bytes as TEXT; undecodable text would fail every run (see _decode_sqlite_text).
            self._conn.text_factory = _decode_sqlite_text
        module = type(self._conn).__module__
        if module.startswith(("psycopg2", "psycopg")):
            self._cursor = self._conn.cursor(name=f"segment_profiles_{uuid.uuid4().hex[:12]}")
            if hasattr(self._cursor, "itersize"):
                self._cursor.itersize = self.fetch_size
        else:
            self._cursor = self._conn.cursor()
        try:
            if self.parameters is None:
                self._cursor.execute(self.sql)
            else:
                self._cursor.execute(self.sql, self.parameters)
            # psycopg2 named cursors describe the result only after the first fetch.
            if self._cursor.description is None and module.startswith("psycopg2"):
                self._first = self._cursor.fetchmany(self.fetch_size)
        except Exception as err:
            self._raise_model_error(err)
        if self._cursor.description is None:
            raise ModelQueryError(
                "The model's SQL returned no result set (is it DML or a command?); it must be a SELECT."
            )
        self.columns = [str(d[0]) for d in self._cursor.description]
        #: The result's DB-API description (its type codes are kept in state, see ``column_types``).
        self.description = [tuple(d) for d in self._cursor.description]
        seen: set[str] = set()
        duplicates = sorted({c for c in self.columns if c in seen or seen.add(c)})  # type: ignore[func-returns-value]
        if duplicates:
            raise ModelQueryError(
                f"The model's result has duplicate column names: {', '.join(duplicates)}; alias them apart."
            )
        return self.columns

    def chunks(self) -> Iterator[list[Sequence[Any]]]:
        """
        Yield lists of at most ``fetch_size`` rows until the result is exhausted.

        :raises ModelReaderClosed: when the reader was closed meanwhile (``on_kill``).
        """
        if self._first:
            first, self._first = self._first, []
            yield first
        while True:
            cursor = self._cursor
            if cursor is None:
                raise ModelReaderClosed("The model's cursor was closed (the task is being killed)")
            try:
                rows = cursor.fetchmany(self.fetch_size)
            except Exception as err:
                if self._cursor is None:  # closed meanwhile (on_kill): whatever the driver says
                    raise ModelReaderClosed(
                        "The model's cursor was closed (the task is being killed)"
                    ) from err
                self._raise_model_error(err)
            if not rows:
                return
            yield rows

    def _raise_model_error(self, err: Exception) -> NoReturn:
        """Raise the provider's error for a driver error (:func:`~.db_errors.model_error`), else ``err``."""
        label = db_errors.model_label(self.model_sql or self.sql, db_errors.conn_id_of(self.hook))
        db_errors.raise_model_error(err, label)

    def close(self) -> None:
        """Close the cursor and the connection; safe to call twice and from ``on_kill``."""
        cursor, self._cursor = self._cursor, None
        conn, self._conn = self._conn, None
        if conn is self._shared:
            conn = None  # its owner closes it
        for closeable in (cursor, conn):
            if closeable is not None:
                # Closing after a kill or a broken connection: nothing more to do.
                with contextlib.suppress(Exception):
                    closeable.close()


def _decode_sqlite_text(raw: bytes) -> str:
    """
    Decode SQLite TEXT. Lone surrogates stored as CESU-8 become ``U+FFFD`` through the value policy (with a
    warning); any other invalid UTF-8 becomes ``U+FFFD`` here, instead of failing the whole run.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace")
