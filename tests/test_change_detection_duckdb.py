"""
``change_detection="warehouse"`` on DuckDB, below the DAG runs (those are the ``duckdb`` cases of
``wh_harness`` in ``test_change_detection_warehouse.py``): what the DuckDB dialect and its session do that
the other warehouses do not, on real DuckDB files through the DuckDB provider's hook.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import duckdb
import pytest

from airflow_provider_segment_profiles.exceptions import ConfigurationError
from airflow_provider_segment_profiles.pipeline.detection.warehouse.dialects import (
    PostgresDialect,
    SqliteDialect,
    dialect_for,
    hook_dialect_name,
)
from airflow_provider_segment_profiles.pipeline.detection.warehouse.duckdb_dialect import (
    DuckDBDialect,
    DuckDBSession,
)

#: What ``DuckDBHook`` opens a file with (no connection extra): DuckDB refuses a second configuration.
CONFIG = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": True,
    "allow_community_extensions": False,
}

#: Pairs of two-column rows of the same types that must checksum apart.
APART = [
    ((None, "x"), ("", "x")),
    ((None, "x"), ("NULL", "x")),
    (("a|b", "c"), ("a", "b|c")),
    (("'", "''"), ("''", "'")),
    (("a', 'b", "c"), ("a", "b', 'c")),
    ((0.1, "x"), (0.1 + 1e-16, "x")),
    ((["a, b"], "x"), (["a", "b"], "x")),
    (([None], "x"), (["NULL"], "x")),
]


def _session(path: Path, zone: str | None = None) -> tuple[DuckDBDialect, DuckDBSession]:
    conn = duckdb.connect(str(path), config=CONFIG)
    if zone is not None:
        conn.execute(f"SET TimeZone = '{zone}'")
    dialect = DuckDBDialect()
    dialect.prepare_connection(conn)
    return dialect, dialect.session(conn)


def _checksum(dialect: DuckDBDialect, cursor: Any, row: tuple[Any, Any]) -> str:
    sql = dialect.checksum_sql("seed", ["a", "b"], [None, None])
    cursor.execute(f"SELECT {sql} FROM (SELECT ? AS a, ? AS b) t", list(row))
    return cursor.fetchone()[0]


def test_checksums_tell_apart_values_that_render_alike(tmp_path: Path):
    dialect, session = _session(tmp_path / "w.duckdb")
    try:
        cursor = session.cursor()
        for left, right in APART:
            a, b = _checksum(dialect, cursor, left), _checksum(dialect, cursor, right)
            assert a != b, (left, right)
            assert _checksum(dialect, cursor, left) == a  # deterministic
            assert len(a) == 16 and int(a, 16) >= 0
    finally:
        session.close()


def test_checksums_ignore_the_connections_time_zone(tmp_path: Path):
    """The same instant checksums alike from connections in other zones (the session pins UTC); a plain
    cursor of such a connection does not, which is what the session settings are for."""
    path = tmp_path / "w.duckdb"
    setup = duckdb.connect(str(path), config=CONFIG)
    setup.execute("CREATE TABLE t AS SELECT TIMESTAMPTZ '2024-03-01 10:00:00+02' AS a, NULL::VARCHAR AS b")
    sql = DuckDBDialect().checksum_sql("seed", ["a", "b"], ["TIMESTAMP WITH TIME ZONE", "VARCHAR"])
    seen, unpinned = set(), set()
    for zone in ("UTC", "Asia/Tokyo", "America/New_York"):
        _dialect, session = _session(path, zone)
        try:
            cursor = session.cursor()
            seen.add(cursor.execute(f"SELECT {sql} FROM t").fetchone()[0])
            assert cursor.execute("SELECT current_setting('TimeZone')").fetchone()[0] == "UTC"
        finally:
            session.close()
        raw = duckdb.connect(str(path), config=CONFIG)
        raw.execute(f"SET TimeZone = '{zone}'")
        unpinned.add(raw.execute(f"SELECT {sql} FROM t").fetchone()[0])
        raw.close()
    setup.close()
    assert len(seen) == 1
    assert len(unpinned) == 3


def test_cursors_stream_independently_and_see_the_work_tables(tmp_path: Path):
    """Two results read in turns while a third cursor writes: what the engine does while the source
    streams (changed rows, classifications, marks)."""
    dialect, session = _session(tmp_path / "w.duckdb")
    try:
        setup = session.cursor()
        setup.execute(dialect.create_temp_as("sp_model", "SELECT range AS i FROM range(5000)"))
        setup.execute(dialect.create_temp("sp_marks", (("pk", "TEXT"), ("mark", "INTEGER"))))
        setup.close()
        rows, sides = session.cursor(), session.cursor()
        rows.execute(f"SELECT i FROM {dialect.temp_table('sp_model')} ORDER BY i")
        sides.execute(f"SELECT i * 10 FROM {dialect.temp_table('sp_model')} ORDER BY i")
        marks = session.cursor()
        seen, side_seen = [], []
        while chunk := rows.fetchmany(1000):
            side_seen += sides.fetchmany(len(chunk))
            dialect.insert_many(
                marks,
                f"INSERT INTO {dialect.temp_table('sp_marks')} (pk, mark)",
                [(str(r[0]), 1) for r in chunk],
                2,
            )
            seen += chunk
        assert [r[0] for r in seen] == list(range(5000))
        assert [r[0] for r in side_seen] == [i * 10 for i in range(5000)]
        marks.execute(f"SELECT count(*), count(DISTINCT pk) FROM {dialect.temp_table('sp_marks')}")
        assert marks.fetchone() == (5000, 5000)
    finally:
        session.close()


def test_the_commit_is_one_transaction(tmp_path: Path):
    """Every cursor between begin and commit is the commit's connection: its statements are invisible to
    other connections until the commit, and a failure rolls all of them back."""
    path = tmp_path / "w.duckdb"
    dialect, session = _session(path)
    other = duckdb.connect(str(path), config=CONFIG)
    try:
        other.execute("CREATE TABLE s (pk TEXT PRIMARY KEY, v INTEGER)")
        other.execute("INSERT INTO s VALUES ('1', 0), ('2', 0)")
        dialect.begin_commit(session)
        cursor = session.cursor()
        cursor.execute("DELETE FROM s WHERE pk = '1'")
        cursor.execute("INSERT INTO s VALUES ('1', 1)")  # a key deleted and inserted again in one transaction
        cursor.close()  # the engine closes its cursor before committing
        assert other.execute("SELECT v FROM s WHERE pk = '1'").fetchone() == (0,)
        dialect.commit(session)
        assert other.execute("SELECT v FROM s WHERE pk = '1'").fetchone() == (1,)

        dialect.begin_commit(session)
        cursor = session.cursor()
        cursor.execute("UPDATE s SET v = 2 WHERE pk = '2'")
        assert cursor.rowcount == 1  # the engine's generation check reads it
        with pytest.raises(duckdb.ConstraintException):
            cursor.execute("INSERT INTO s VALUES ('1', 3)")
        dialect.rollback(session)
        assert other.execute("SELECT pk, v FROM s ORDER BY pk").fetchall() == [("1", 1), ("2", 0)]
    finally:
        other.close()
        session.close()


def test_close_detaches_the_work_database(tmp_path: Path):
    path = tmp_path / "w.duckdb"
    keep = duckdb.connect(str(path), config=CONFIG)  # keeps the instance open across the session
    dialect, session = _session(path)
    cursor = session.cursor()
    cursor.execute(dialect.create_temp_as("sp_cur", "SELECT 1 AS pk"))
    cursor.close()
    assert dialect.work.startswith("sp_work_") and len(dialect.work) == len("sp_work_") + 8
    databases = "SELECT database_name FROM duckdb_databases()"
    assert dialect.work in {r[0] for r in keep.execute(databases).fetchall()}
    session.close()
    assert dialect.work not in {r[0] for r in keep.execute(databases).fetchall()}
    assert [r[0] for r in keep.execute("SELECT table_name FROM duckdb_tables()").fetchall()] == []
    keep.close()


def test_a_read_only_connection_is_a_configuration_error(tmp_path: Path):
    path = tmp_path / "w.duckdb"
    duckdb.connect(str(path)).close()
    conn = duckdb.connect(str(path), read_only=True)
    try:
        with pytest.raises(ConfigurationError, match="writable DuckDB connection"):
            DuckDBDialect().prepare_connection(conn)
    finally:
        conn.close()


def test_the_hooks_dialect_name_picks_the_dialect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from airflow.providers.duckdb.hooks.duckdb import DuckDBHook

    path = tmp_path / "w.duckdb"
    monkeypatch.setenv("AIRFLOW_CONN_WH", json.dumps({"conn_type": "duckdb", "host": str(path)}))
    hook = DuckDBHook(duckdb_conn_id="wh")
    assert hook_dialect_name(hook) == "duckdb"
    conn = hook.get_conn()
    try:
        assert isinstance(dialect_for(conn, hook_dialect_name(hook)), DuckDBDialect)
        assert isinstance(dialect_for(conn), DuckDBDialect)  # no name: the driver's module decides
        assert isinstance(dialect_for(conn, "default"), DuckDBDialect)
    finally:
        conn.close()

    import sqlite3

    sqlite = sqlite3.connect(":memory:")
    assert isinstance(dialect_for(sqlite, "postgresql"), PostgresDialect)  # the hook's name comes first
    assert isinstance(dialect_for(sqlite, "duckdb"), DuckDBDialect)
    assert isinstance(dialect_for(sqlite, "mssql"), SqliteDialect)  # a name without a dialect here
    sqlite.close()

    class Unanswering:
        @property
        def dialect_name(self) -> str:
            raise RuntimeError("no connection")

    assert hook_dialect_name(Unanswering()) is None
    databricks = type("Connection", (), {"__module__": "databricks.sql.client"})()
    with pytest.raises(ConfigurationError, match="change_detection='worker'"):
        dialect_for(databricks, "databricks")  # generated only: never chosen


def test_repeated_and_null_identifiers_are_rejected_and_failed_records_stay_uncertain(tmp_path: Path):
    """The engine over the DuckDB hook: repeats found with a GROUP BY (no savepoint), marks written in one
    multi-row insert, and the commit's rules, across two runs."""
    from airflow.providers.duckdb.hooks.duckdb import DuckDBHook

    from airflow_provider_segment_profiles.actions import compile_mappings
    from airflow_provider_segment_profiles.pipeline.accounting import SyncAccounting
    from airflow_provider_segment_profiles.pipeline.detection.warehouse.engine import WarehouseChangeDetector
    from airflow_provider_segment_profiles.pipeline.modes import get_mode
    from airflow_provider_segment_profiles.pipeline.reader import ModelReader
    from airflow_provider_segment_profiles.pipeline.records import Record
    from airflow_provider_segment_profiles.state.location import StateLocation, SyncState

    path = tmp_path / "w.duckdb"
    setup = duckdb.connect(str(path), config=CONFIG)
    setup.execute(
        "CREATE TABLE customers AS SELECT range AS id, 'Customer ' || range AS name, "
        "'c' || range || '@example.com' AS email FROM range(1, 6001)"
    )
    setup.execute(
        "INSERT INTO customers VALUES (NULL, 'Nobody', 'n@x'), (7, 'Again', 'a@x'), (7, 'Thrice', 't@x')"
    )
    mappings = compile_mappings(
        [
            {
                "name": "identify",
                "action": "send_identify",
                "fields": {"user_id": {"column": "id"}, "traits": {"columns": "*", "exclude": ["id"]}},
            }
        ],
        sync_mode="diff",
        primary_key="id",
    )

    def one_run(head: SyncState | None, failed: list[str]) -> tuple[dict[str, int], int, SyncAccounting]:
        accounting = SyncAccounting([m.name for m in mappings])
        detector = WarehouseChangeDetector(
            mode=get_mode("diff"),
            hook=DuckDBHook(database=str(path)),
            location=StateLocation((tmp_path / "state").as_uri(), "dag", "task", -1),
            previous=head,
            head=head,
            outcomes=accounting,
            primary_key="id",
            mappings=mappings,
            state_schema="segment_profiles",
            full_refresh=False,
            dry_run=False,
            journal_tag="try1",
            log=logging.getLogger("test"),
        )
        try:
            assert isinstance(detector.dialect, DuckDBDialect)
            query, parameters = detector.query("SELECT id, name, email FROM customers", None)
            reader = ModelReader(None, query, parameters, 1000, detector.source_connection())
            columns = reader.open()
            detector.bind(columns, [0, 1, 2], "|".join(m.fingerprint for m in mappings))
            kinds: dict[str, int] = {}
            for rows in reader.chunks():
                for change in detector.detect([Record(row, str(row[0])) for row in rows]):
                    kinds[change.kind] = kinds.get(change.kind, 0) + 1
            reader.close()
            for chunk in detector.deletions():
                kinds["deleted"] = kinds.get("deleted", 0) + len(chunk)
            detector.mark_failed(failed)
            _, count = detector.snapshot_to_commit(tmp_path, None)
            kinds["unchanged"] = accounting.records["unchanged"]
            return kinds, count, accounting
        finally:
            detector.close()

    try:
        kinds, count, accounting = one_run(None, failed=[str(i) for i in range(1, 5001)])
        assert kinds == {"added": 6000, "unchanged": 0} and count == 6000
        # NULL and two repeats of id 7; the engine counts the rows it rejects or finds unchanged (the
        # source, not used here, counts the rows it fetches).
        assert accounting.records["rejected"] == 3 and accounting.rows_read == 3
        (table,) = [
            r[0]
            for r in setup.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'segment_profiles' "
                "AND table_name <> 'syncs'"
            ).fetchall()
        ]
        state = f'segment_profiles."{table}"'
        # A failed add stays unconfirmed (checksum NULL); a delivered one holds its checksum.
        assert setup.execute(f"SELECT checksum FROM {state} WHERE pk = '1'").fetchone() == (None,)
        assert setup.execute(f"SELECT checksum IS NOT NULL FROM {state} WHERE pk = '5001'").fetchone() == (
            True,
        )
        setup.execute("DELETE FROM customers WHERE id > 5990")
        head = SyncState(
            generation=1, snapshot=None, sync_mode="diff", watermark=None, fingerprint="", records=count
        )
        kinds, count, _ = one_run(head, failed=[])
        assert kinds == {"added": 5000, "unchanged": 990, "deleted": 10} and count == 5990
        generation, dialect = setup.execute(
            "SELECT generation, dialect FROM segment_profiles.syncs"
        ).fetchone()
        assert (generation, dialect) == (2, "duckdb")
    finally:
        setup.close()
