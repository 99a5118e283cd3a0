"""
Dialects whose SQL is generated (and parsed in tests, ``tests/golden/warehouse_sql``) but never ran on the
warehouse: BigQuery, Redshift and Databricks. :func:`~.dialects.dialect_for` never returns one, so
the engine keeps refusing these warehouses with a :class:`ConfigurationError`; what must be verified
before one is enabled is listed in ``docs/change-detection.md``.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_segment_profiles.exceptions import ConfigurationError
from airflow_provider_segment_profiles.pipeline.detection.warehouse.dialects import (
    Dialect,
    PostgresDialect,
    SnowflakeDialect,
    SqliteDialect,
)
from airflow_provider_segment_profiles.pipeline.detection.warehouse.duckdb_dialect import DuckDBDialect
from airflow_provider_segment_profiles.pipeline.detection.warehouse.mysql_dialect import MySqlDialect


def backquote(name: str) -> str:
    """
    ``name`` as a back-quoted identifier (BigQuery, Databricks, MySQL).

    :param name: the identifier.
    """
    return "`" + name.replace("`", "``") + "`"


class _GeneratedOnly(Dialect):
    """No indexes, no enforced keys, a portable insert-unless-exists; connection-level parts refuse."""

    generated_only = True
    unique_indexes = False

    @property
    def ph(self) -> str:
        return "%s"

    def temp_index(self, table: str, column: str, unique: bool = False) -> str | None:
        return None

    def tombstone_index_ddl(self, schema: str, name: str) -> str | None:
        return None

    def insert_ignore_meta(self, table: str, sync_id: str, state_table: str) -> tuple[str, tuple[Any, ...]]:
        ph = self.ph
        return (
            f"INSERT INTO {table} (sync_id, state_table, generation) SELECT {ph}, {ph}, 0 "
            f"WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE sync_id = {ph})",
            (sync_id, state_table, sync_id),
        )

    def prepare_connection(self, conn: Any) -> None:
        raise ConfigurationError(
            f"change_detection='warehouse' generates SQL for {self.name} but never ran it there; "
            "use change_detection='worker' (docs/change-detection.md)."
        )

    def table_exists(self, cursor: Any, schema: str, name: str) -> bool:
        raise ConfigurationError(
            f"change_detection='warehouse' never ran on {self.name}: no state is read there"
        )


class BigQueryDialect(_GeneratedOnly):
    """
    BigQuery. Temporary tables need a session (or one multi-statement script); no indexes; primary keys are
    ``NOT ENFORCED``; ``DELETE`` needs a ``WHERE``. Values render with ``TO_JSON_STRING``, which renders
    every type (FLOAT64 round-trip, NUMERIC exactly, TIMESTAMP in UTC with ``Z``, BOOL as ``true``/``false``,
    arrays, structs and JSON as JSON) without depending on session settings; NULL renders ``N``, ``''`` as
    ``""``.
    """

    name = "bigquery"
    sql_types = {"TEXT": "STRING", "BIGINT": "INT64", "SMALLINT": "INT64", "INTEGER": "INT64"}

    def quote(self, name: str) -> str:
        return backquote(name)

    def key_sql(self, column: str) -> str:
        return f"CAST({column} AS STRING)"

    def value_sql(self, column: str) -> str:
        return f"coalesce(TO_JSON_STRING({column}), 'N')"

    def hash_hex(self, text: str) -> str:
        return f"TO_HEX(MD5({text}))"

    def delete_all(self, table: str) -> str:
        return f"DELETE FROM {table} WHERE TRUE"

    def state_ddl(self, table: str) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {table} (pk STRING NOT NULL, checksum STRING, version INT64 NOT NULL, "
            "uncertain INT64 NOT NULL, pending INT64 NOT NULL, deleted_at INT64, mapping_checksums STRING, "
            "PRIMARY KEY (pk) NOT ENFORCED)"
        )

    def meta_ddl(self, table: str) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {table} (sync_id STRING NOT NULL, state_table STRING NOT NULL, "
            "generation INT64 NOT NULL, dialect STRING, definition INT64, used_columns STRING, "
            "updated_at INT64, PRIMARY KEY (sync_id) NOT ENFORCED)"
        )


class RedshiftDialect(_GeneratedOnly):
    """
    Amazon Redshift. ``TEXT`` is ``VARCHAR(256)`` there, so identifiers are ``VARCHAR(65535)``; keys are not
    enforced; no indexes. Values render as PostgreSQL's ``quote_nullable`` spelled out (Redshift has no such
    function), with the session's time zone UTC and floats at full precision.
    """

    name = "redshift"
    sql_types = {"TEXT": "VARCHAR(65535)"}

    def session_settings(self) -> list[str]:
        return ["SET timezone TO 'UTC'", "SET extra_float_digits TO 1"]

    def key_sql(self, column: str) -> str:
        return f"CAST({column} AS VARCHAR(65535))"

    def value_sql(self, column: str) -> str:
        return f"coalesce('''' || replace(CAST({column} AS VARCHAR(65535)), '''', '''''') || '''', 'NULL')"

    def hash_hex(self, text: str) -> str:
        return f"MD5({text})"

    def state_ddl(self, table: str) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {table} (pk VARCHAR(65535) NOT NULL PRIMARY KEY, checksum VARCHAR(64), "
            "version BIGINT NOT NULL, uncertain SMALLINT NOT NULL DEFAULT 0, pending SMALLINT NOT NULL DEFAULT 0, "
            "deleted_at BIGINT, mapping_checksums VARCHAR(65535))"
        )

    def meta_ddl(self, table: str) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {table} (sync_id VARCHAR(1024) NOT NULL PRIMARY KEY, "
            "state_table VARCHAR(256) NOT NULL, generation BIGINT NOT NULL, dialect VARCHAR(64), "
            "definition INTEGER, used_columns VARCHAR(65535), updated_at BIGINT)"
        )


class DatabricksDialect(_GeneratedOnly):
    """
    Databricks SQL. State tables are Delta tables; this run's tables are session-scoped
    ``CREATE TEMPORARY TABLE`` (recent runtimes only). ``row_number()`` needs an ordering there, so the
    position is ``monotonically_increasing_id()`` (increasing, with gaps). Values render with ``to_json`` of
    a one-field struct: a NULL field is left out (NULL renders ``{}``, ``''`` renders ``{"v":""}``), arrays,
    maps and structs as JSON, timestamps in UTC (the session's time zone is set) with an explicit format.
    """

    name = "databricks"
    sql_types = {"TEXT": "STRING"}

    @property
    def ph(self) -> str:
        return "?"  # databricks-sql-connector's native parameters

    def session_settings(self) -> list[str]:
        return ["SET TIME ZONE 'UTC'"]

    def quote(self, name: str) -> str:
        return backquote(name)

    temp_create = "CREATE TEMPORARY TABLE"

    def position_sql(self) -> str:
        return "monotonically_increasing_id() + 1"

    def key_sql(self, column: str) -> str:
        return f"CAST({column} AS STRING)"

    def value_sql(self, column: str) -> str:
        return (
            f"to_json(named_struct('v', {column}), map('timestampFormat', 'yyyy-MM-dd HH:mm:ss.SSSSSSXXX'))"
        )

    def state_ddl(self, table: str) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {table} (pk STRING NOT NULL, checksum STRING, version BIGINT NOT NULL, "
            "uncertain SMALLINT NOT NULL, pending SMALLINT NOT NULL, deleted_at BIGINT, mapping_checksums STRING) "
            "USING DELTA"
        )

    def meta_ddl(self, table: str) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {table} (sync_id STRING NOT NULL, state_table STRING NOT NULL, "
            "generation BIGINT NOT NULL, dialect STRING, definition INT, used_columns STRING, "
            "updated_at BIGINT) USING DELTA"
        )


#: Every dialect by name; those marked ``generated_only`` are never chosen by ``dialect_for``.
DIALECTS: dict[str, type[Dialect]] = {
    d.name: d
    for d in (
        SqliteDialect,
        PostgresDialect,
        SnowflakeDialect,
        DuckDBDialect,
        BigQueryDialect,
        RedshiftDialect,
        DatabricksDialect,
        MySqlDialect,
    )
}

__all__ = ["DIALECTS", "BigQueryDialect", "DatabricksDialect", "RedshiftDialect"]
