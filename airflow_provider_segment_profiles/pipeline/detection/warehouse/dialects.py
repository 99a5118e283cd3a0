"""
The SQL that differs between warehouses for ``change_detection="warehouse"``: how a value is rendered for
the checksum, how the unique identifier becomes text, where state tables live, and how rows are written in
batches. One :class:`Dialect` per warehouse; :func:`dialect_for` picks it from the DB-API connection.
BigQuery, Redshift and Databricks have dialects in :mod:`.generated` whose SQL is generated only:
:func:`dialect_for` never returns them.

Checksum definition (:data:`CHECKSUM_DEFINITION`): ``md5`` (``SHA2(..., 256)`` on MySQL) of the mappings' fingerprint followed by one
rendering per used column, each ``|``-separated and tagged with its type, a NULL rendered as ``N`` (so
``NULL`` and ``''`` differ) and text length-prefixed (so no separator inside a value can make two records
render alike); the first 16 hex digits are the record's checksum. Each dialect renders values with
explicit casts that do not depend on session settings it does not set itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Any

from airflow_provider_segment_profiles.exceptions import ConfigurationError

#: Version of the checksum definition; state built with another one must be rebuilt (``full_refresh``).
CHECKSUM_DEFINITION = 1

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def check_state_schema(value: str) -> str | None:
    """The problem with a ``state_schema`` value, or ``None`` when it is a plain SQL identifier."""
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        return (
            f"state_schema {value!r} must be a plain SQL identifier (letters, digits, underscores, at most 63 "
            "characters, not starting with a digit)"
        )
    return None


def quote(name: str) -> str:
    """``name`` as a double-quoted SQL identifier (standard SQL, SQLite and PostgreSQL)."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """``text`` as a single-quoted SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _md5_hex(text: str | None) -> str | None:
    if text is None:
        return None
    return hashlib.md5(text.encode("utf-8", "surrogatepass"), usedforsecurity=False).hexdigest()


class Dialect:
    """
    What one warehouse's SQL needs. Subclasses fill in the parts that differ.

    :ivar name: recorded in the state; a state built by another dialect is refused.
    :ivar uses_named_cursors: stream large results through server-side cursors.
    """

    name = "generic"
    uses_named_cursors = False
    unique_indexes = True
    #: The statements are generated (and parsed in tests) but never ran on this warehouse: refused to run.
    generated_only = False
    #: The engine's column types (``TEXT``, ``BIGINT``, ``SMALLINT``, ``INTEGER``) as this warehouse names them.
    sql_types: dict[str, str] = {}
    #: How a temporary table of this run is created.
    temp_create = "CREATE TEMP TABLE"

    def quote(self, name: str) -> str:
        """``name`` as a quoted identifier of this warehouse."""
        return quote(name)

    def sql_type(self, name: str) -> str:
        """The engine's column type ``name`` in this warehouse's spelling."""
        if (
            name == "LONG_TEXT"
        ):  # text of any length (packed per-mapping checksums): TEXT unless said otherwise
            return self.sql_types.get(name, self.sql_types.get("TEXT", "TEXT"))
        return self.sql_types.get(name, name)

    def create_temp_as(self, name: str, select: str) -> str:
        """A temporary table of this run created from ``select`` (``name`` as created, unqualified)."""
        return f"{self.temp_create} {name} AS {select}"

    def create_temp(self, name: str, columns: Sequence[tuple[str, str]]) -> str:
        """An empty temporary table of this run; ``columns`` are ``(name, engine type)`` pairs."""
        return f"{self.temp_create} {name} (" + ", ".join(f"{c} {self.sql_type(t)}" for c, t in columns) + ")"

    def delete_all(self, table: str) -> str:
        """A statement that deletes every row of ``table``."""
        return f"DELETE FROM {table}"

    def concat(self, parts: Sequence[str]) -> str:
        """The ``|``-separated concatenation of text expressions that are never NULL."""
        return " || '|' || ".join(parts)

    def hash_hex(self, text: str) -> str:
        """The lower-case hex digest of a text expression (md5 unless the dialect says otherwise)."""
        return f"md5({text})"

    def prepare_connection(self, conn: Any) -> None:
        """Set up a fresh connection (functions, transaction mode)."""

    def session(self, conn: Any) -> Any:
        """
        The connection the engine runs through, after :meth:`prepare_connection`: ``conn`` itself, unless the
        driver's cursors are not of one session (DuckDB's, :mod:`.duckdb_dialect`).

        :param conn: the hook's DB-API connection.
        """
        return conn

    def session_settings(self) -> list[str]:
        """Statements that fix value rendering for the rest of the run's transaction."""
        return []

    def table(self, schema: str, name: str) -> str:
        """The qualified name of a state table."""
        return f"{self.quote(schema)}.{self.quote(name)}"

    def temp_table(self, name: str) -> str:
        """How a temporary table of this run is named in SQL."""
        return self.quote(name)

    def temp_index(self, table: str, column: str, unique: bool = False) -> str | None:
        """An index on one column of a temporary table of this run (``None``: the warehouse has none)."""
        return f"CREATE {'UNIQUE ' if unique else ''}INDEX {quote(table + '_' + column.strip('_'))} ON {quote(table)} ({column})"

    def position_sql(self) -> str:
        """Each row's position in the model's result (increasing; gaps allowed)."""
        return "row_number() OVER ()"

    def key_sql(self, column: str) -> str:
        """The unique identifier as text, as :func:`~..checksum.record_key` renders it."""
        raise NotImplementedError

    def value_sql(self, column: str) -> str:
        """One value's type-tagged text for the checksum (never NULL)."""
        raise NotImplementedError

    def checksum_sql(self, seed: str, columns: Sequence[str], types: Sequence[Any]) -> str:
        """
        The record's checksum: the first 16 hex digits of md5 over the seed, the used columns' names and
        result types (constant per run: a changed type re-sends the records once) and their values.
        """
        header = seed + "|" + ",".join(f"{c}:{t}" for c, t in zip(columns, types, strict=True))
        parts = [literal(header)] + [self.value_sql(self.quote(c)) for c in columns]
        return "substr(" + self.hash_hex(self.concat(parts)) + ", 1, 16)"

    def first_per_key(self, select: str, model: str) -> str:
        """
        ``select`` (of ``sp_cur`` from ``model``, ending in a ``WHERE``) kept to the first row of each identifier.

        :param select: the ``SELECT`` of ``sp_cur`` over ``model``.
        :param model: ``sp_model`` as this dialect names it.
        """
        return select + (
            f" AND __sp_pos IN (SELECT min(__sp_pos) FROM {model} WHERE __sp_key IS NOT NULL GROUP BY __sp_key)"
        )

    def insert_unconfirmed_adds(self, prev: str, journal: str, columns: str) -> list[str]:
        """
        The statements that add to ``prev`` the journaled records it does not hold, as unconfirmed adds.

        :param prev: ``sp_prev`` as this dialect names it.
        :param journal: ``sp_journal`` as this dialect names it.
        :param columns: the state's column list, in order.
        """
        return [
            f"INSERT INTO {prev} ({columns}) "
            f"SELECT j.pk, NULL, min(j.version), 1, 0, NULL, NULL FROM {journal} j "
            f"WHERE NOT EXISTS (SELECT 1 FROM {prev} p WHERE p.pk = j.pk) GROUP BY j.pk"
        ]

    def keep_one_row_per_key(self, rows: str, current: str) -> list[str]:
        """
        The statements that keep, per identifier repeated in ``rows`` (``sp_rows``), the one row whose
        checksum ``current`` (``sp_cur``) kept, once (see :func:`~.statements.keep_first_of_repeats`).

        :param rows: ``sp_rows`` as this dialect names it.
        :param current: ``sp_cur`` as this dialect names it.
        """
        return [
            f"DELETE FROM {rows} WHERE __sp_key IN (SELECT __sp_key FROM {rows} GROUP BY __sp_key "
            "HAVING count(*) > 1) AND __sp_row NOT IN (SELECT min(r.__sp_row) FROM "
            f"{rows} r JOIN {current} c ON c.pk = r.__sp_key AND c.checksum = r.__sp_checksum GROUP BY r.__sp_key)"
        ]

    def full_outer_join_as(
        self, name: str, select: str, current: str, previous: str, matched: str, unmatched: str
    ) -> str | list[str]:
        """
        A temporary table from a full outer join of ``current`` (``c``) and ``previous`` (``p``) on ``pk``.

        :param name: the table to create.
        :param select: the ``SELECT`` list (``SELECT ...``, no ``FROM``).
        :param current: this run's records (``c``).
        :param previous: what the run compares against (``p``).
        :param matched: the rows kept where ``c`` has the record.
        :param unmatched: the rows kept where only ``p`` has it.
        :return: one statement, or several where the warehouse has no ``FULL OUTER JOIN``.
        """
        return self.create_temp_as(
            name,
            f"{select} FROM {current} c FULL OUTER JOIN {previous} p ON p.pk = c.pk "
            f"WHERE ({matched}) OR ({unmatched})",
        )

    def analyze(self, table: str) -> str | None:
        """Statement that gathers a temporary table's statistics (autovacuum never sees them), or ``None``."""
        return None

    def tombstone_index_ddl(self, schema: str, name: str) -> str | None:
        """A partial index of the state's tombstones, so expiring them does not scan the state."""
        index = self.quote(self.index_name(schema, name, "deleted"))
        return (
            f"CREATE INDEX IF NOT EXISTS {index} ON {self.table(schema, name)} (deleted_at) "
            "WHERE deleted_at IS NOT NULL"
        )

    def index_name(self, schema: str, name: str, suffix: str) -> str:
        """An index's name (in the table's schema)."""
        return f"{name}_{suffix}"

    def greatest(self, a: str, b: str) -> str:
        """The larger of two integers."""
        return f"GREATEST({a}, {b})"

    def state_ddl(self, table: str) -> str:
        """The per-record state table."""
        return (
            f"CREATE TABLE IF NOT EXISTS {table} (pk TEXT PRIMARY KEY, checksum TEXT, version BIGINT NOT NULL, "
            "uncertain SMALLINT NOT NULL DEFAULT 0, pending SMALLINT NOT NULL DEFAULT 0, deleted_at BIGINT, "
            "mapping_checksums TEXT)"
        )

    def meta_ddl(self, table: str) -> str:
        """The table of every sync's state metadata (generation, dialect, checksum definition, columns)."""
        return (
            f"CREATE TABLE IF NOT EXISTS {table} (sync_id TEXT PRIMARY KEY, state_table TEXT NOT NULL, "
            "generation BIGINT NOT NULL, dialect TEXT, definition INTEGER, used_columns TEXT, "
            "updated_at BIGINT)"
        )

    def insert_ignore_meta(self, table: str, sync_id: str, state_table: str) -> tuple[str, tuple[Any, ...]]:
        """The statement (and its parameters) that inserts a sync's metadata row unless it exists."""
        return (
            f"INSERT INTO {table} (sync_id, state_table, generation) VALUES ({self.ph}, {self.ph}, 0) "
            "ON CONFLICT (sync_id) DO NOTHING",
            (sync_id, state_table),
        )

    @property
    def ph(self) -> str:
        """The bind placeholder."""
        return "?"

    def insert_many(self, cursor: Any, sql_prefix: str, rows: Iterable[Sequence[Any]], width: int) -> None:
        """Insert ``rows`` with ``sql_prefix`` (``INSERT INTO t (a, b)``) in batches, no per-row round trip."""
        values = "(" + ", ".join([self.ph] * width) + ")"
        cursor.executemany(f"{sql_prefix} VALUES {values}", list(rows))

    def table_exists(self, cursor: Any, schema: str, name: str) -> bool:
        """Whether a state table exists."""
        raise NotImplementedError

    def in_information_schema(self, cursor: Any, schema: str, name: str) -> bool:
        """Whether ``information_schema.tables`` lists the table (the SQL standard's catalog views)."""
        cursor.execute(
            "SELECT count(*) FROM information_schema.tables "
            f"WHERE table_schema = {self.ph} AND table_name = {self.ph}",
            (schema, name),
        )
        return bool(cursor.fetchone()[0])

    def ensure_schema(self, cursor: Any, schema: str) -> None:
        """Create the state schema when it is absent."""

    def begin_commit(self, conn: Any) -> None:
        """Start the commit's transaction (where the connection does not start one itself)."""

    def commit(self, conn: Any) -> None:
        """Commit the transaction."""
        conn.commit()

    def rollback(self, conn: Any) -> None:
        """Roll back, ignoring a broken connection."""
        with contextlib.suppress(Exception):
            conn.rollback()

    def grant_advice(self, schema: str, what: str) -> str:
        """The grant a refused ``what`` (``schema``, ``table``, ``temp``) needs."""
        return f"the warehouse user needs the right to create {what} objects for {schema}"


class SqliteDialect(Dialect):
    """SQLite: no schemas, so state tables are named ``{state_schema}__...`` in the model's database."""

    name = "sqlite"

    def prepare_connection(self, conn: Any) -> None:
        import sqlite3

        if sqlite3.sqlite_version_info < (3, 39, 0):
            raise ConfigurationError(
                f"change_detection='warehouse' needs SQLite 3.39 or later (FULL OUTER JOIN); this Python has "
                f"SQLite {sqlite3.sqlite_version}. Use change_detection='worker'."
            )
        # SQLite has no hash function; one is registered on this connection only.
        conn.create_function("md5", 1, _md5_hex, deterministic=True)
        conn.isolation_level = None  # autocommit; the commit's transaction is explicit (BEGIN IMMEDIATE)

    def table(self, schema: str, name: str) -> str:
        return quote(f"{schema}__{name}")

    def index_name(self, schema: str, name: str, suffix: str) -> str:
        return f"{schema}__{name}_{suffix}"

    def temp_table(self, name: str) -> str:
        return f"temp.{quote(name)}"

    def temp_index(self, table: str, column: str, unique: bool = False) -> str | None:
        # SQLite names the schema on the index, never on its table.
        name = quote(table + "_" + column.strip("_"))
        return f"CREATE {'UNIQUE ' if unique else ''}INDEX temp.{name} ON {quote(table)} ({column})"

    def key_sql(self, column: str) -> str:
        return (
            f"CASE WHEN typeof({column}) = 'real' AND {column} = CAST({column} AS INTEGER) "
            f"THEN CAST(CAST({column} AS INTEGER) AS TEXT) WHEN typeof({column}) = 'blob' "
            f"THEN lower(hex({column})) ELSE CAST({column} AS TEXT) END"
        )

    def value_sql(self, column: str) -> str:
        # typeof() tags the storage class; %!.17g prints a REAL exactly (16 significant digits without "!").
        return (
            f"CASE typeof({column}) WHEN 'null' THEN 'N' WHEN 'integer' THEN 'I' || {column} "
            f"WHEN 'real' THEN 'R' || printf('%!.17g', {column}) "
            f"WHEN 'text' THEN 'T' || length({column}) || ':' || {column} ELSE 'B' || hex({column}) END"
        )

    def greatest(self, a: str, b: str) -> str:
        return f"max({a}, {b})"

    def state_ddl(self, table: str) -> str:
        return super().state_ddl(table) + " WITHOUT ROWID"

    def table_exists(self, cursor: Any, schema: str, name: str) -> bool:
        cursor.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (f"{schema}__{name}",)
        )
        return cursor.fetchone() is not None

    def begin_commit(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def commit(self, conn: Any) -> None:
        conn.execute("COMMIT")

    def rollback(self, conn: Any) -> None:
        if conn.in_transaction:
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")

    def grant_advice(self, schema: str, what: str) -> str:
        return "the SQLite database file (and its folder, for the journal) must be writable by the worker"


class PostgresDialect(Dialect):
    """PostgreSQL (psycopg 2 or 3): state tables in the ``state_schema`` schema, created when absent."""

    name = "postgresql"
    uses_named_cursors = True

    def session_settings(self) -> list[str]:
        # Text output of timestamps, floats, intervals and bytea depends on these settings
        # (https://www.postgresql.org/docs/current/runtime-config-client.html); fixed for this transaction.
        return [
            "SET LOCAL TimeZone = 'UTC'",
            "SET LOCAL DateStyle = 'ISO, YMD'",
            "SET LOCAL IntervalStyle = 'postgres'",
            "SET LOCAL extra_float_digits = 1",
            "SET LOCAL bytea_output = 'hex'",
        ]

    @property
    def ph(self) -> str:
        return "%s"

    def key_sql(self, column: str) -> str:
        return f"CAST({column} AS TEXT)"

    def value_sql(self, column: str) -> str:
        # quote_nullable: NULL unquoted, any other value a quoted literal (quotes doubled), so no value can
        # render like another or like NULL; the column's type is in the checksum's constant header.
        return f"quote_nullable(CAST({column} AS TEXT))"

    def analyze(self, table: str) -> str | None:
        return f"ANALYZE {quote(table)}"

    def insert_many(self, cursor: Any, sql_prefix: str, rows: Iterable[Sequence[Any]], width: int) -> None:
        if type(cursor).__module__.startswith("psycopg2"):
            from psycopg2.extras import execute_values

            execute_values(cursor, f"{sql_prefix} VALUES %s", list(rows), page_size=1000)
        elif hasattr(cursor, "copy"):
            # psycopg 3: COPY streams the rows in one statement, several times faster than executemany for
            # the per-mapping checksums of every fetched row (docs/benchmarks.md); the values are text and
            # integers, which COPY's text format carries as they are.
            # https://www.psycopg.org/psycopg3/docs/basic/copy.html
            with cursor.copy(sql_prefix.replace("INSERT INTO", "COPY", 1) + " FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            super().insert_many(cursor, sql_prefix, rows, width)

    def table_exists(self, cursor: Any, schema: str, name: str) -> bool:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{quote(schema)}.{quote(name)}",))
        return bool(cursor.fetchone()[0])

    def ensure_schema(self, cursor: Any, schema: str) -> None:
        # CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema exists.
        cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        if cursor.fetchone() is None:
            cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")

    def grant_advice(self, schema: str, what: str) -> str:
        if what == "schema":
            return (
                f"create the schema first (CREATE SCHEMA {schema} AUTHORIZATION <user>) or "
                "GRANT CREATE ON DATABASE <database> TO <user>"
            )
        if what == "temp":
            return "GRANT TEMPORARY ON DATABASE <database> TO <user>"
        return f"GRANT USAGE, CREATE ON SCHEMA {schema} TO <user>"


class SnowflakeDialect(Dialect):
    """
    Snowflake (``snowflake-connector-python``; tested through ``fakesnow`` only, which runs Snowflake SQL on
    DuckDB). No indexes, so repeated identifiers are found with a query; state tables in ``state_schema``
    (quoted, so its case is kept), created when absent.
    """

    name = "snowflake"
    unique_indexes = False

    @property
    def ph(self) -> str:
        return "%s"

    def temp_table(self, name: str) -> str:
        return name  # created unquoted, so Snowflake stores it upper-cased: refer to it unquoted too

    def temp_index(self, table: str, column: str, unique: bool = False) -> str | None:
        return None

    def tombstone_index_ddl(self, schema: str, name: str) -> str | None:
        return None

    def position_sql(self) -> str:
        # Snowflake's ROW_NUMBER needs an ORDER BY; SEQ8 numbers rows as they come, maybe with gaps
        # (https://docs.snowflake.com/en/sql-reference/functions/seq1).
        return "SEQ8() + 1"

    def key_sql(self, column: str) -> str:
        return f"CAST({column} AS VARCHAR)"

    def value_sql(self, column: str) -> str:
        # Snowflake has no quote_nullable: the same quoted-literal rendering, spelled out.
        return f"coalesce('''' || replace(CAST({column} AS VARCHAR), '''', '''''') || '''', 'NULL')"

    def insert_ignore_meta(self, table: str, sync_id: str, state_table: str) -> tuple[str, tuple[Any, ...]]:
        return (
            f"INSERT INTO {table} (sync_id, state_table, generation) SELECT %s, %s, 0 "
            f"WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE sync_id = %s)",
            (sync_id, state_table, sync_id),
        )

    def table_exists(self, cursor: Any, schema: str, name: str) -> bool:
        return self.in_information_schema(cursor, schema, name)

    def ensure_schema(self, cursor: Any, schema: str) -> None:
        cursor.execute("SELECT count(*) FROM information_schema.schemata WHERE schema_name = %s", (schema,))
        if cursor.fetchone()[0]:
            return
        # CREATE SCHEMA also makes the new schema the session's current one
        # (https://docs.snowflake.com/en/sql-reference/sql/create-schema): the model's unqualified names
        # must keep resolving where they did, so the current schema is restored.
        cursor.execute("SELECT CURRENT_DATABASE(), CURRENT_SCHEMA()")
        database, current = cursor.fetchone()
        cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
        if database and current:
            cursor.execute(f"USE SCHEMA {quote(database)}.{quote(current)}")

    def begin_commit(self, conn: Any) -> None:
        conn.cursor().execute("BEGIN")

    def commit(self, conn: Any) -> None:
        conn.cursor().execute("COMMIT")

    def rollback(self, conn: Any) -> None:
        with contextlib.suppress(Exception):
            conn.cursor().execute("ROLLBACK")

    def grant_advice(self, schema: str, what: str) -> str:
        return (
            f"GRANT CREATE SCHEMA ON DATABASE <database> TO ROLE <role>, or create {schema} and GRANT USAGE, "
            f"CREATE TABLE ON SCHEMA {schema} TO ROLE <role>"
        )


#: common-sql's ``DbApiHook.dialect_name`` (the SQLAlchemy dialect of the hook's URI, or the connection
#: extra's ``dialect``) of the warehouses that have a dialect here.
HOOK_DIALECTS = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "snowflake": "snowflake",
    "duckdb": "duckdb",
    "mysql": "mysql",
    "mariadb": "mysql",
}


def hook_dialect_name(hook: Any) -> str | None:
    """
    The hook's ``dialect_name`` as common-sql resolves it (``DbApiHook.dialect_name``), or ``None`` when the
    hook has none or cannot say (it may need the Airflow connection, or SQLAlchemy's dialect of its URI).

    :param hook: the model's hook.
    """
    try:
        name = getattr(hook, "dialect_name", None)
    except Exception:
        return None
    return name if isinstance(name, str) else None


def _by_name(name: str) -> Dialect | None:
    """The dialect a hook's ``dialect_name`` names, ``None`` when it names none here."""
    if name == "duckdb":
        from airflow_provider_segment_profiles.pipeline.detection.warehouse.duckdb_dialect import (
            DuckDBDialect,
        )

        return DuckDBDialect()
    if name == "mysql":
        from airflow_provider_segment_profiles.pipeline.detection.warehouse.mysql_dialect import MySqlDialect

        return MySqlDialect()
    chosen = {"sqlite": SqliteDialect, "postgresql": PostgresDialect, "snowflake": SnowflakeDialect}.get(name)
    return chosen() if chosen is not None else None


def dialect_for(conn: Any, dialect_name: str | None = None) -> Dialect:
    """
    The dialect of a DB-API connection: the one the hook's ``dialect_name`` names (as common-sql picks its
    own ``Dialect`` by it), else the one of the connection's driver module.

    :param conn: the hook's DB-API connection.
    :param dialect_name: the hook's ``dialect_name`` (:func:`hook_dialect_name`); ``None``, ``"default"``
        or a name without a dialect here: the driver decides.
    :raises ConfigurationError: the warehouse has no dialect for ``change_detection="warehouse"`` yet.
    """
    if dialect_name is not None and dialect_name.lower() in HOOK_DIALECTS:
        chosen = _by_name(HOOK_DIALECTS[dialect_name.lower()])
        if chosen is not None:
            return chosen
    module = type(conn).__module__
    if module.startswith("sqlite3"):
        return SqliteDialect()
    if module.startswith(("psycopg2", "psycopg")):
        return PostgresDialect()
    if module.startswith(("snowflake.connector", "fakesnow")):
        return SnowflakeDialect()
    if module.startswith(("duckdb", "_duckdb")):
        return _by_name("duckdb")  # type: ignore[return-value]
    if module.startswith(("mysql.connector", "MySQLdb")):
        return _by_name("mysql")  # type: ignore[return-value]
    raise ConfigurationError(
        f"change_detection='warehouse' supports SQLite, PostgreSQL, Snowflake, DuckDB and MySQL connections, not "
        f"{module!r} yet; "
        "use change_detection='worker' (docs/change-detection.md)."
    )
