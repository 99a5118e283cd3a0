"""
``change_detection="warehouse"`` on MariaDB through ``MySqlHook`` (``mysql-connector-python``), below the DAG
runs (those are the ``mariadb`` cases of ``wh_harness`` in ``test_change_detection_warehouse.py``): the
statement shapes MySQL needs (no ``FULL OUTER JOIN``, no temporary table named twice in a statement), the
identifiers' collation, and the value rendering. MySQL 8 itself is not tested here (no server): its
temporary-table rule is checked on the rendered statements.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_segment_profiles.exceptions import ConfigurationError
from airflow_provider_segment_profiles.pipeline.detection.warehouse.mysql_dialect import (
    MARIADB_COLLATION,
    MYSQL_COLLATION,
    MySqlDialect,
)
from airflow_provider_segment_profiles.pipeline.detection.warehouse.statements import render_statements

IDENTIFY = {
    "name": "identify",
    "action": "send_identify",
    "fields": {"user_id": {"column": "id"}, "traits": {"columns": "*", "exclude": ["id"]}},
}
TEMPORARY = (
    "sp_model",
    "sp_cur",
    "sp_prev",
    "sp_journal",
    "sp_diff",
    "sp_marks",
    "sp_flags",
    "sp_unconfirmed",
)


@pytest.fixture
def database(mariadb_params: dict[str, Any], monkeypatch: pytest.MonkeyPatch):
    """A fresh database on the MariaDB server and an Airflow connection ``wh`` to it (MySqlHook)."""
    import mysql.connector

    name = f"sp_test_{uuid.uuid4().hex[:10]}"
    admin = mysql.connector.connect(**mariadb_params)
    admin.autocommit = True
    cursor = admin.cursor()
    cursor.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    connection = {
        "conn_type": "mysql",
        "host": mariadb_params["host"],
        "port": mariadb_params["port"],
        "login": mariadb_params["user"],
        "password": mariadb_params["password"],
        "schema": name,
        "extra": {"client": "mysql-connector-python"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_WH", json.dumps(connection))
    cursor.execute(f"USE {name}")
    try:
        yield name, cursor
    finally:
        cursor.execute(f"DROP DATABASE IF EXISTS {name}")
        cursor.close()
        admin.close()


@pytest.mark.parametrize("scenario", [{}, {"full_refresh": True}, {"journal": True}])
def test_no_statement_names_a_temporary_table_twice_or_full_outer_joins(scenario: dict[str, bool]):
    """MySQL 8: "You cannot refer to a TEMPORARY table more than once in the same query", and it has no
    FULL OUTER JOIN. MariaDB runs both, so this is checked on what the dialect renders."""
    statements = render_statements(
        MySqlDialect(),
        "SELECT id, name FROM customers",
        ["id", "name"],
        ["LONG", "VAR_STRING"],
        primary_key="id",
        fingerprints=["fp"],
        **scenario,
    )
    assert any(step.startswith("diff_") for step, _sql in statements)
    for step, sql in statements:
        assert "FULL OUTER JOIN" not in sql.upper(), step
        for table in TEMPORARY:
            assert len(re.findall(rf"`{table}`", sql)) <= 1, (step, table, sql)
    # The check can fail: the shared shape names sp_model twice when an identifier repeats.
    from airflow_provider_segment_profiles.pipeline.detection.warehouse.dialects import Dialect

    shared = Dialect.first_per_key(MySqlDialect(), "SELECT ... FROM `sp_model` WHERE x", "`sp_model`")
    assert len(re.findall(r"`sp_model`", shared)) == 2


def _version_connection(version: str) -> Any:
    class Cursor:
        def execute(self, sql: str) -> None:
            assert sql == "SELECT VERSION()"

        def fetchone(self) -> tuple[str]:
            return (version,)

        def close(self) -> None:
            pass

    class Connection:
        def __init__(self) -> None:
            self.value = False

        @property
        def autocommit(self) -> bool:
            return self.value

        @autocommit.setter
        def autocommit(self, value: bool) -> None:
            self.value = value

        def cursor(self) -> Cursor:
            return Cursor()

    return Connection()


@pytest.mark.parametrize(
    ("version", "collation"),
    [
        ("10.11.19-MariaDB-0+deb12u1", MARIADB_COLLATION),
        ("8.0.36", MYSQL_COLLATION),
        ("8.4.3", MYSQL_COLLATION),
    ],
)
def test_the_collation_follows_the_server(version: str, collation: str):
    dialect = MySqlDialect()
    conn = _version_connection(version)
    dialect.prepare_connection(conn)
    assert dialect.collation == collation and conn.autocommit is True
    assert f"COLLATE {collation}" in dialect.key_sql("`id`")


@pytest.mark.parametrize("version", ["5.7.44-log", "8.0.16"])
def test_mysql_before_8_0_17_is_refused(version: str):
    with pytest.raises(ConfigurationError, match=r"MySQL 8\.0\.17 or later"):
        MySqlDialect().prepare_connection(_version_connection(version))


@pytest.mark.usefixtures("database")
def test_checksums_tell_apart_values_and_identifiers_are_compared_exactly():
    """Values that render alike checksum apart; identifiers that differ only by case or a trailing space are
    distinct records (the server's default collation would take them for one)."""
    from airflow.providers.mysql.hooks.mysql import MySqlHook

    from airflow_provider_segment_profiles.pipeline.detection.warehouse.dialects import hook_dialect_name

    assert hook_dialect_name(MySqlHook(mysql_conn_id="wh")) == "mysql"  # SQLAlchemy's name of the hook's URI
    dialect = MySqlDialect()
    conn = MySqlHook(mysql_conn_id="wh").get_conn()
    dialect.prepare_connection(conn)
    session = dialect.session(conn)
    try:
        cursor = session.cursor()
        sql = dialect.checksum_sql("seed", ["a", "b"], ["VAR_STRING", "VAR_STRING"])
        apart = [
            ((None, "x"), ("", "x")),
            ((None, "x"), ("NULL", "x")),
            (("a|b", "c"), ("a", "b|c")),
            (("'", "''"), ("''", "'")),
            (("a\\", "b"), ("a", "\\b")),
            (("a", "x"), ("A", "x")),
        ]
        for left, right in apart:
            sums = []
            for row in (left, right):
                cursor.execute(f"SELECT {sql} FROM (SELECT %s AS a, %s AS b) t", row)
                sums.append(cursor.fetchone()[0])
            assert sums[0] != sums[1], (left, right)
            assert len(sums[0]) == 16 and int(sums[0], 16) >= 0
        cursor.execute("SELECT 'a' = 'A', 'a' = 'a '")
        assert cursor.fetchone() == (1, 1)  # what the default collation does
        cursor.execute(f"SELECT {dialect.key_sql('%s')} = {dialect.key_sql('%s')}", ("a", "A"))
        assert cursor.fetchone() == (0,)
        cursor.execute(f"SELECT {dialect.key_sql('%s')} = {dialect.key_sql('%s')}", ("a", "a "))
        assert cursor.fetchone() == (0,)
        cursor.close()
    finally:
        session.close()


def _detector(tmp_path: Path, mappings: list, head: Any, journal_tag: str = "try1", **kwargs: Any):
    from airflow.providers.mysql.hooks.mysql import MySqlHook

    from airflow_provider_segment_profiles.pipeline.accounting import SyncAccounting
    from airflow_provider_segment_profiles.pipeline.detection.warehouse.engine import WarehouseChangeDetector
    from airflow_provider_segment_profiles.pipeline.modes import get_mode
    from airflow_provider_segment_profiles.state.location import StateLocation

    accounting = SyncAccounting([m.name for m in mappings])
    detector = WarehouseChangeDetector(
        mode=get_mode("diff"),
        hook=MySqlHook(mysql_conn_id="wh"),
        location=StateLocation((tmp_path / "state").as_uri(), "dag", "task", -1),
        previous=head,
        head=head,
        outcomes=accounting,
        primary_key="id",
        mappings=mappings,
        state_schema=kwargs.pop("state_schema"),
        full_refresh=False,
        dry_run=False,
        journal_tag=journal_tag,
        log=logging.getLogger("test"),
    )
    return detector, accounting


def _read(detector: Any, mappings: list) -> list[Any]:
    from airflow_provider_segment_profiles.pipeline.reader import ModelReader
    from airflow_provider_segment_profiles.pipeline.records import Record

    query, parameters = detector.query("SELECT id, name FROM customers", None)
    reader = ModelReader(None, query, parameters, 500, detector.source_connection())
    columns = reader.open()
    detector.bind(columns, [0, 1], "|".join(m.fingerprint for m in mappings))
    changes = []
    for rows in reader.chunks():
        changes += detector.detect([Record(row, str(row[0])) for row in rows])
    reader.close()
    return changes


def test_repeats_journal_and_commit_on_mariadb(database, tmp_path: Path):
    """Through the MySQL hook: repeated, NULL and case-differing identifiers; a try that journaled its sends
    and never committed, whose records the next try sends again under the same versions (the journal's
    unconfirmed adds take the MySQL shape); and the commit."""
    from airflow_provider_segment_profiles.actions import compile_mappings
    from airflow_provider_segment_profiles.pipeline.records import ChangeKind
    from airflow_provider_segment_profiles.state.location import SyncState

    name, admin = database
    admin.execute("CREATE TABLE customers (id VARCHAR(40), name TEXT)")
    rows = [(f"k{i}", f"Customer {i}") for i in range(1, 1201)]
    rows += [("Case", "upper"), ("case", "lower"), ("case ", "trailing space"), (None, "nobody")]
    rows += [("k7", "again"), ("k7", "thrice")]
    admin.executemany("INSERT INTO customers VALUES (%s, %s)", rows)
    mappings = compile_mappings([IDENTIFY], sync_mode="diff", primary_key="id")

    detector, accounting = _detector(tmp_path, mappings, None, state_schema=name)
    try:
        first = _read(detector, mappings)
        detector.mark_failed([f"k{i}" for i in range(1, 11)])  # unconfirmed adds
        _, count = detector.snapshot_to_commit(tmp_path, None)
        detector.after_commit()
    finally:
        detector.close()
    assert {c.key for c in first} >= {"Case", "case", "case "}
    assert len(first) == 1203 and count == 1203
    assert accounting.records["rejected"] == 3  # NULL, and two repeats of k7
    # One k7 is sent. MySQL/MariaDB keep its row with the smallest checksum, not the first (row_number()
    # OVER () there does not follow the order rows are returned): the same row every run, which the quiet
    # run below proves by sending nothing.
    assert sum(c.key == "k7" for c in first) == 1
    head = SyncState(
        generation=1, snapshot=None, sync_mode="diff", watermark=None, fingerprint="", records=count
    )

    # The table's default collation would match 'Case' and 'case' too.
    admin.execute(
        f"UPDATE customers SET name = 'changed' WHERE id COLLATE {MARIADB_COLLATION} IN ('k20', 'k21', 'case ')"
    )
    admin.execute("INSERT INTO customers VALUES ('k5000', 'new'), ('k5001', 'new')")
    killed, _ = _detector(tmp_path, mappings, head, journal_tag="try1", state_schema=name)
    try:
        sent = _read(killed, mappings)
        killed.write_ahead(sent)  # journaled, sent, then the try dies before committing
    finally:
        killed.close()
    assert sorted(c.key for c in sent if c.kind is ChangeKind.UPDATED) == ["case ", "k20", "k21"]
    # The new records and the failed adds of the first run (unconfirmed: added again).
    assert {c.key for c in sent if c.kind is ChangeKind.ADDED} == {
        f"k{i}" for i in (*range(1, 11), 5000, 5001)
    }
    versions = {c.key: c.version for c in sent}
    # Before the retry the model takes the sent values back and loses one of the sent adds: without the
    # journal the retry would find nothing to send; with it, what Segment may hold is sent again.
    admin.execute(f"UPDATE customers SET name = 'Customer 20' WHERE id COLLATE {MARIADB_COLLATION} = 'k20'")
    admin.execute(
        f"UPDATE customers SET name = 'trailing space' WHERE id COLLATE {MARIADB_COLLATION} = 'case '"
    )
    admin.execute("DELETE FROM customers WHERE id = 'k5000'")

    retry, accounting = _detector(tmp_path, mappings, head, journal_tag="try2", state_schema=name)
    try:
        again = _read(retry, mappings)
        deleted = [change for chunk in retry.deletions() for change in chunk]
        _, count = retry.snapshot_to_commit(tmp_path, None)
        retry.after_commit()
    finally:
        retry.close()
    # The same messages under the same versions (ids); k5000, an unconfirmed add the model lost, deleted.
    assert {c.key: c.version for c in again} == {k: v for k, v in versions.items() if k != "k5000"}
    assert [(c.key, c.version) for c in deleted] == [("k5000", versions["k5000"] + 1)]
    assert count == 1204
    admin.execute(f"SELECT generation, dialect FROM {name}.syncs")
    assert admin.fetchall() == [(2, "mysql")]

    head.generation = 2
    quiet, accounting = _detector(tmp_path, mappings, head, journal_tag="try3", state_schema=name)
    try:
        assert _read(quiet, mappings) == []
        assert accounting.records["unchanged"] == 1204
        quiet.snapshot_to_commit(tmp_path, None)
    finally:
        quiet.close()
