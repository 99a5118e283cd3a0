"""
DuckDB for ``change_detection="warehouse"``, through ``apache-airflow-providers-duckdb``'s ``DuckDBHook``.

Two properties of DuckDB's Python client shape this dialect (measured with ``duckdb`` 2.0.1):

- ``DuckDBPyConnection.cursor()`` opens a *duplicate connection* to the same database, not a cursor of the
  same session ("cursors now acquire a new connection", https://github.com/duckdb/duckdb/issues/3980): a
  ``CREATE TEMP TABLE`` on one is invisible to the other, and the two have separate transactions. One connection, in turn, holds one result
  at a time: executing a second query on it discards the rows of the first. The engine reads the changed
  rows and their classifications from two cursors at once and writes marks while they stream, so it needs
  independent cursors that all see the run's tables.
- DuckDB has no ``SAVEPOINT`` (``SAVEPOINT x`` raises a parser error) and no partial indexes
  (``CREATE INDEX ... WHERE`` raises "Creating partial indexes is not supported currently").

So the run's tables live in an in-memory database attached for the run (``ATTACH ':memory:' AS
sp_work_<tag>``; an attached database is visible to every connection of the database instance: a duplicate
connection and a second ``duckdb.connect()`` of the same file read it), which keeps them out of the file,
as temporary tables would be. :class:`DuckDBSession` wraps the hook's connection so that each cursor is a
duplicate connection with the session settings applied, except during the commit, when every cursor is the
one connection that holds the commit's transaction. Repeated identifiers are found with a ``GROUP BY``
(no savepoint to try a unique index in), and the run's tables get no indexes: DuckDB's ART indexes are
"mainly used to ensure primary key constraints and to speed up point and very highly selective (i.e.,
< 0.1%) queries", and every column has a min-max index already (https://duckdb.org/docs/stable/sql/indexes).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from airflow_provider_segment_profiles.exceptions import ConfigurationError
from airflow_provider_segment_profiles.pipeline.detection.warehouse.dialects import Dialect, quote

#: The work database's name in rendered SQL (golden files); a run attaches ``sp_work_<8 hex digits>``.
WORK_DATABASE = "sp_work"


class DuckDBDialect(Dialect):
    """
    DuckDB (``duckdb`` 1.2 or later, as ``apache-airflow-providers-duckdb`` requires): state tables in the
    ``state_schema`` schema of the hook's database, created when absent; the run's tables in an attached
    in-memory database (see the module docstring).

    :param work: the attached work database's name (:data:`WORK_DATABASE` until :meth:`prepare_connection`
        picks one for the run).
    """

    name = "duckdb"
    unique_indexes = False

    def __init__(self, work: str = WORK_DATABASE) -> None:
        self.work = work

    def prepare_connection(self, conn: Any) -> None:
        """
        Attach this run's in-memory work database, under a name no other run in the process uses (an
        attached database is shared by every connection of the instance).

        :raises ConfigurationError: DuckDB refused it (a ``read_only`` connection: "Cannot launch in-memory
            database in read-only mode").
        """
        work = f"{WORK_DATABASE}_{uuid.uuid4().hex[:8]}"
        try:
            conn.execute(f"ATTACH ':memory:' AS {quote(work)}")
        except Exception as err:
            raise ConfigurationError(
                f"change_detection='warehouse' needs a writable DuckDB connection for its work tables, but "
                f"DuckDB refused ATTACH ':memory:' ({err}); or use change_detection='worker'."
            ) from err
        self.work = work

    def session(self, conn: Any) -> Any:
        """:class:`DuckDBSession` over the hook's connection."""
        return DuckDBSession(conn, self.session_settings(), self.work)

    def session_settings(self) -> list[str]:
        # CAST(timestamptz AS VARCHAR) renders in the connection's TimeZone, by its Calendar (measured:
        # '2024-03-01 08:00:00+00' in UTC, '... 17:00:00+09' in Asia/Tokyo); a fresh connection starts from
        # the machine's zone. SESSION is explicit because "for most options" the default scope is GLOBAL, the
        # whole instance (https://duckdb.org/docs/stable/sql/statements/set).
        return ["SET SESSION TimeZone = 'UTC'", "SET SESSION Calendar = 'gregorian'"]

    def temp_table(self, name: str) -> str:
        return f"{quote(self.work)}.main.{quote(name)}"

    def create_temp_as(self, name: str, select: str) -> str:
        return f"CREATE TABLE {self.temp_table(name)} AS {select}"

    def create_temp(self, name: str, columns: Sequence[tuple[str, str]]) -> str:
        return (
            f"CREATE TABLE {self.temp_table(name)} ("
            + ", ".join(f"{c} {self.sql_type(t)}" for c, t in columns)
            + ")"
        )

    def temp_index(self, table: str, column: str, unique: bool = False) -> str | None:
        return None

    def tombstone_index_ddl(self, schema: str, name: str) -> str | None:
        return None

    def key_sql(self, column: str) -> str:
        return f"CAST({column} AS VARCHAR)"

    def value_sql(self, column: str) -> str:
        # DuckDB has no quote_nullable: the same quoted-literal rendering spelled out (as on Snowflake). Its
        # VARCHAR casts (measured on 2.0.1) quote strings inside lists, structs and maps where they need it
        # (['a, b'] renders "['a, b']", ['a', 'b'] "[a, b]"), print a DOUBLE as the shortest text that reads
        # back the same value (0.1 + 1e-16 as 0.1000000000000001) and keep a DECIMAL's scale (10.50).
        return f"coalesce('''' || replace(CAST({column} AS VARCHAR), '''', '''''') || '''', 'NULL')"

    def insert_many(self, cursor: Any, sql_prefix: str, rows: Iterable[Sequence[Any]], width: int) -> None:
        # DuckDB's executemany runs the statement once per row (5,000 two-column rows: 2.7 s); one
        # multi-row VALUES takes 0.18 s.
        rows = list(rows)
        if rows:
            values = ", ".join(["(" + ", ".join(["?"] * width) + ")"] * len(rows))
            cursor.execute(f"{sql_prefix} VALUES {values}", [value for row in rows for value in row])

    def table_exists(self, cursor: Any, schema: str, name: str) -> bool:
        cursor.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
            "AND schema_name = ? AND table_name = ?",
            (schema, name),
        )
        return bool(cursor.fetchone()[0])

    def ensure_schema(self, cursor: Any, schema: str) -> None:
        cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")

    def begin_commit(self, conn: Any) -> None:
        conn.begin()

    def grant_advice(self, schema: str, what: str) -> str:
        return (
            "DuckDB has no grants: the database file (and its folder, for the write-ahead log) must be "
            "writable by the worker, and the connection not read_only"
        )


class _Borrowed:
    """The commit's connection handed out as a cursor: everything but ``close`` goes to it."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def close(self) -> None:
        """The commit closes its connection, not the statements run on it."""


class DuckDBSession:
    """
    A DuckDB connection as the engine uses a DB-API connection: independent cursors that see the run's
    work database, and one transaction for the commit (see the module docstring).

    :param conn: the hook's ``DuckDBPyConnection`` (closed by :meth:`close`).
    :param settings: statements run on every connection this session opens.
    :param work: the attached work database, detached by :meth:`close`.
    """

    def __init__(self, conn: Any, settings: Sequence[str], work: str) -> None:
        self._conn = conn
        self._settings = list(settings)
        self._work = work
        self._transaction: Any = None

    def _open(self) -> Any:
        cursor = self._conn.cursor()
        for setting in self._settings:
            cursor.execute(setting)
        return cursor

    def cursor(self, name: str | None = None) -> Any:
        """A duplicate connection of its own; during the commit, the commit's connection."""
        if self._transaction is not None:
            return _Borrowed(self._transaction)
        return self._open()

    def begin(self) -> None:
        """Start the commit's transaction; every cursor until :meth:`commit` runs in it."""
        connection = self._open()
        connection.begin()
        self._transaction = connection

    def commit(self) -> None:
        """Commit the commit's transaction (nothing else is open: other statements autocommit)."""
        connection, self._transaction = self._transaction, None
        if connection is not None:
            try:
                connection.commit()
            finally:
                connection.close()

    def rollback(self) -> None:
        """Roll back the commit's transaction, if one is open."""
        connection, self._transaction = self._transaction, None
        if connection is not None:
            try:
                connection.rollback()
            finally:
                connection.close()

    def close(self) -> None:
        """Roll back, detach the work database (its tables go with it) and close the connection."""
        try:
            with contextlib.suppress(Exception):
                self.rollback()
            with contextlib.suppress(Exception):
                self._conn.execute(f"DETACH {quote(self._work)}")
        finally:
            self._conn.close()


__all__ = ["WORK_DATABASE", "DuckDBDialect", "DuckDBSession"]
