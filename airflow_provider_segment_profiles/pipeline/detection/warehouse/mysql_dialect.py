"""
MySQL 8 and MariaDB for ``change_detection="warehouse"``, through ``apache-airflow-providers-mysql``'s
``MySqlHook`` (``mysql-connector-python``, or ``mysqlclient``'s ``MySQLdb``).

What differs from the shared statements (:mod:`.statements`):

- MySQL has no ``FULL OUTER JOIN``, and "you cannot refer to a TEMPORARY table more than once in the same
  query" (https://dev.mysql.com/doc/refman/8.0/en/temporary-table-problems.html; MariaDB 10.11 allows it,
  MySQL 8 does not). So the diff is two statements, each naming ``sp_cur`` and the previous state once:
  the records this run no longer has (a ``LEFT JOIN`` from the state), then the added and updated ones
  (a ``LEFT JOIN`` from ``sp_cur``); the first row of a repeated identifier is kept with
  ``row_number() OVER (PARTITION BY ...)``; the journal's unconfirmed adds go through a table of their own.
- Text comparisons follow the collation, and the default ones (``utf8mb4_general_ci``,
  ``utf8mb4_0900_ai_ci``) are case-insensitive; MariaDB's ``utf8mb4_bin`` also pads (``'a' = 'a '``). The
  unique identifier is compared under a binary collation without padding: ``utf8mb4_nopad_bin`` on MariaDB
  ("NO PAD collations regard trailing spaces as normal characters",
  https://mariadb.com/kb/en/information-schema-collations-table), ``utf8mb4_0900_bin`` on MySQL 8.0.17 or
  later ("The utf8mb4 character set has a new binary collation, utf8mb4_0900_bin",
  https://dev.mysql.com/doc/relnotes/mysql/8.0/en/news-8-0-17.html; NO PAD: WL#13054,
  https://dev.mysql.com/worklog/task/?id=13054). Measured on MariaDB 10.11: ``'a' = 'A'`` and
  ``'a' = 'a '`` are both true under the server's default collation.
- Identifiers are ``VARCHAR(255)`` (a ``TEXT`` column cannot be a key without a prefix length): a longer
  identifier is cut there in the warehouse and the run stops with a ``ModelQueryError`` when such a record
  is read (its identifier renders differently than in the worker).
- ``mysql-connector-python``'s cursors are unbuffered: a second statement on the connection before the first
  result is read raises "Unread result found". :class:`MySqlSession` hands out buffered cursors (as
  ``mysqlclient``'s default cursor is), so the engine's two reads and its marks can interleave; the engine
  fetches only the changed rows, so only they are buffered. The connection runs in autocommit; the commit
  is one explicit transaction.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from airflow_provider_segment_profiles.exceptions import ConfigurationError
from airflow_provider_segment_profiles.pipeline.detection.warehouse.dialects import Dialect


def backquote(name: str) -> str:
    """
    ``name`` as a back-quoted identifier (MySQL, BigQuery, Databricks).

    :param name: the identifier.
    """
    return "`" + name.replace("`", "``") + "`"


#: The collation of identifiers on MySQL 8 (rendered SQL, golden files); MariaDB's is chosen on connect.
MYSQL_COLLATION = "utf8mb4_0900_bin"
MARIADB_COLLATION = "utf8mb4_nopad_bin"
_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)")


def _is_connector(conn: Any) -> bool:
    return type(conn).__module__.startswith("mysql.connector")


class MySqlDialect(Dialect):
    """
    MySQL 8.0.17 or later, and MariaDB (tested: 10.11): state tables in the ``state_schema`` database,
    created when absent. ``SHA2(..., 256)`` over ``CONCAT`` (``||`` is OR there); values render as
    ``QUOTE(CAST(col AS CHAR))`` (NULL as the bare word ``NULL``, any other value quoted with its quotes
    escaped), with the session's time zone UTC for ``TIMESTAMP`` columns.

    :param collation: the identifiers' collation (:data:`MYSQL_COLLATION` until :meth:`prepare_connection`
        asks the server).
    """

    name = "mysql"
    unique_indexes = False
    temp_create = "CREATE TEMPORARY TABLE"

    def __init__(self, collation: str = MYSQL_COLLATION) -> None:
        self.collation = collation

    @property
    def key_type(self) -> str:
        """The column type of identifiers: binary comparison, no padding."""
        return f"VARCHAR(255) CHARACTER SET utf8mb4 COLLATE {self.collation}"

    def sql_type(self, name: str) -> str:
        if name == "LONG_TEXT":  # packed per-mapping checksums: longer than an identifier
            return "TEXT"
        return self.key_type if name == "TEXT" else name

    def quote(self, name: str) -> str:
        return backquote(name)

    def temp_table(self, name: str) -> str:
        return backquote(name)

    @property
    def ph(self) -> str:
        return "%s"

    def prepare_connection(self, conn: Any) -> None:
        """
        Pick the identifiers' collation from the server's version and turn autocommit on.

        :raises ConfigurationError: MySQL before 8.0.17 (no window functions before 8.0, no
            ``utf8mb4_0900_bin`` before 8.0.17).
        """
        cursor = conn.cursor(buffered=True) if _is_connector(conn) else conn.cursor()
        cursor.execute("SELECT VERSION()")
        version = str(cursor.fetchone()[0])
        cursor.close()
        if "mariadb" in version.lower():
            self.collation = MARIADB_COLLATION
        else:
            match = _VERSION.match(version)
            if match is None or tuple(int(part) for part in match.groups()) < (8, 0, 17):
                raise ConfigurationError(
                    f"change_detection='warehouse' needs MySQL 8.0.17 or later (window functions, "
                    f"utf8mb4_0900_bin); this server is {version}. Use change_detection='worker'."
                )
            self.collation = MYSQL_COLLATION
        # mysql-connector-python's autocommit is a property, mysqlclient's a method (as MySqlHook says).
        if isinstance(getattr(type(conn), "autocommit", None), property):
            conn.autocommit = True
        else:
            conn.autocommit(True)

    def session(self, conn: Any) -> Any:
        """:class:`MySqlSession` over the hook's connection."""
        return MySqlSession(conn)

    def session_settings(self) -> list[str]:
        # TIMESTAMP values are converted to the session's time zone when read
        # (https://dev.mysql.com/doc/refman/8.0/en/datetime.html); the session is the engine's own.
        return ["SET time_zone = '+00:00'"]

    def key_sql(self, column: str) -> str:
        return f"CAST({column} AS CHAR(255) CHARACTER SET utf8mb4) COLLATE {self.collation}"

    def value_sql(self, column: str) -> str:
        # QUOTE: "The string is returned enclosed by single quotes and with each instance of single quote
        # ("'"), backslash ("\"), ASCII NUL, and Control-Z preceded by a backslash. If the argument is NULL,
        # the return value is the word "NULL" without enclosing single quotes." (https://mariadb.com/kb/en/quote/)
        return f"QUOTE(CAST({column} AS CHAR))"

    def concat(self, parts: Sequence[str]) -> str:
        return "CONCAT(" + ", '|', ".join(parts) + ")"

    def hash_hex(self, text: str) -> str:
        return f"SHA2({text}, 256)"

    def temp_index(self, table: str, column: str, unique: bool = False) -> str | None:
        # Never unique: there is no savepoint to try one in (autocommit), and repeats are found by query.
        return f"CREATE INDEX {backquote(table + '_' + column.strip('_'))} ON {backquote(table)} ({column})"

    def tombstone_index_ddl(self, schema: str, name: str) -> str | None:
        return None  # no partial indexes

    def state_ddl(self, table: str) -> str:
        return _keyed(
            super().state_ddl(table), "pk TEXT PRIMARY KEY", f"pk {self.key_type} NOT NULL PRIMARY KEY"
        )

    def meta_ddl(self, table: str) -> str:
        return _keyed(
            super().meta_ddl(table), "sync_id TEXT PRIMARY KEY", "sync_id VARCHAR(255) NOT NULL PRIMARY KEY"
        )

    def insert_ignore_meta(self, table: str, sync_id: str, state_table: str) -> tuple[str, tuple[Any, ...]]:
        return (
            f"INSERT IGNORE INTO {table} (sync_id, state_table, generation) VALUES (%s, %s, 0)",
            (sync_id, state_table),
        )

    def keep_one_row_per_key(self, rows: str, current: str) -> list[str]:
        # As the shared statement, with each temporary table named once per statement.
        keep, repeated = backquote("sp_keep"), backquote("sp_repeated")
        return [
            self.create_temp_as(
                "sp_keep",
                f"SELECT min(r.__sp_row) AS sp_row FROM {rows} r JOIN {current} c ON c.pk = r.__sp_key "
                "AND c.checksum = r.__sp_checksum GROUP BY r.__sp_key",
            ),
            self.create_temp_as(
                "sp_repeated", f"SELECT __sp_key FROM {rows} GROUP BY __sp_key HAVING count(*) > 1"
            ),
            f"DELETE r FROM {rows} r JOIN {repeated} x ON x.__sp_key = r.__sp_key "
            f"LEFT JOIN {keep} k ON k.sp_row = r.__sp_row WHERE k.sp_row IS NULL",
        ]

    def first_per_key(self, select: str, model: str) -> str:
        # One reference to sp_model (MySQL cannot sub-select a TEMPORARY table it reads). The row kept is the
        # one with the smallest checksum, not the first: MariaDB's row_number() OVER () does not follow the
        # order rows are returned, and it changed between two runs over the same rows (found by
        # test_repeats_journal_and_commit_on_mariadb), so "the first" would flip and re-send the record.
        return (
            "SELECT * FROM (SELECT sp_s.*, row_number() OVER (PARTITION BY sp_s.pk "
            "ORDER BY sp_s.checksum, sp_s.pos) AS sp_n "
            f"FROM ({select}) sp_s) sp_r WHERE sp_n = 1"
        )

    def insert_unconfirmed_adds(self, prev: str, journal: str, columns: str) -> list[str]:
        unconfirmed = self.temp_table("sp_unconfirmed")
        return [
            self.create_temp_as(
                "sp_unconfirmed",
                f"SELECT j.pk AS pk, min(j.version) AS version FROM {journal} j LEFT JOIN {prev} p "
                "ON p.pk = j.pk WHERE p.pk IS NULL GROUP BY j.pk",
            ),
            f"INSERT INTO {prev} ({columns}) SELECT pk, NULL, version, 1, 0, NULL, NULL FROM {unconfirmed}",
        ]

    def full_outer_join_as(
        self, name: str, select: str, current: str, previous: str, matched: str, unmatched: str
    ) -> str | list[str]:
        # The rows only previous has come first: created from the side where c's columns are NULL, the
        # table's columns accept NULL (pos, checksum) for the rows of the second statement to fit.
        return [
            self.create_temp_as(
                name,
                f"{select} FROM {previous} p LEFT JOIN {current} c ON c.pk = p.pk "
                f"WHERE c.pk IS NULL AND ({unmatched})",
            ),
            f"INSERT INTO {self.temp_table(name)} {select} FROM {current} c LEFT JOIN {previous} p "
            f"ON p.pk = c.pk WHERE {matched}",
        ]

    def table(self, schema: str, name: str) -> str:
        return f"{backquote(schema)}.{backquote(name)}"

    def table_exists(self, cursor: Any, schema: str, name: str) -> bool:
        return self.in_information_schema(cursor, schema, name)

    def ensure_schema(self, cursor: Any, schema: str) -> None:
        cursor.execute("SELECT count(*) FROM information_schema.schemata WHERE schema_name = %s", (schema,))
        if not cursor.fetchone()[0]:
            cursor.execute(f"CREATE DATABASE IF NOT EXISTS {backquote(schema)} CHARACTER SET utf8mb4")

    def begin_commit(self, conn: Any) -> None:
        conn.begin()

    def grant_advice(self, schema: str, what: str) -> str:
        if what == "schema":
            return f"create the database first (CREATE DATABASE {schema}) or GRANT CREATE ON *.* TO <user>"
        if what == "temp":
            return "GRANT CREATE TEMPORARY TABLES ON <model's database>.* TO <user>"
        return f"GRANT CREATE, SELECT, INSERT, UPDATE, DELETE, INDEX ON {schema}.* TO <user>"


def _keyed(ddl: str, column: str, keyed: str) -> str:
    """The shared DDL with its ``TEXT`` key column replaced by one MySQL can index."""
    if column not in ddl:
        raise AssertionError(f"the shared DDL no longer has {column!r}: {ddl}")
    return ddl.replace(column, keyed, 1)


class MySqlSession:
    """
    A MySQL connection whose cursors are buffered (``mysql-connector-python``'s are not by default), and
    whose commit is one explicit transaction on an autocommit connection.

    :param conn: the hook's connection (closed by :meth:`close`).
    """

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._buffered = _is_connector(conn)

    def cursor(self, name: str | None = None) -> Any:
        """A buffered cursor of the connection."""
        return self._conn.cursor(buffered=True) if self._buffered else self._conn.cursor()

    def begin(self) -> None:
        """Start the commit's transaction."""
        cursor = self.cursor()
        cursor.execute("START TRANSACTION")
        cursor.close()

    def commit(self) -> None:
        """Commit (nothing is open outside the commit's transaction: the connection autocommits)."""
        self._conn.commit()

    def rollback(self) -> None:
        """Roll back the commit's transaction, if one is open."""
        self._conn.rollback()

    def close(self) -> None:
        """Close the connection; its temporary tables go with its session."""
        self._conn.close()


__all__ = ["MARIADB_COLLATION", "MYSQL_COLLATION", "MySqlDialect", "MySqlSession", "backquote"]
