"""
The SQL of ``change_detection="warehouse"`` for every dialect, as :func:`render_statements` builds it from
the engine's own statement builders: compared with golden files under ``tests/golden/warehouse_sql`` (set
``SEGMENT_PROFILES_UPDATE_GOLDEN=1`` to rewrite them) and parsed with sqlglot in each warehouse's dialect.

Parsing proves the syntax as sqlglot knows it, not that the warehouse runs it (sqlglot's MySQL parser
accepts ``FULL OUTER JOIN``, which MySQL does not): the generated-only dialects stay refused by the engine,
and the MySQL dialect's statements run on MariaDB in ``test_change_detection_warehouse.py``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlglot
from sqlglot import exp

from airflow_provider_segment_profiles.exceptions import ConfigurationError
from airflow_provider_segment_profiles.pipeline.detection.warehouse.dialects import (
    SqliteDialect,
    _md5_hex,
    dialect_for,
)
from airflow_provider_segment_profiles.pipeline.detection.warehouse.engine import (
    WarehouseChangeDetector,
    state_table_name,
)
from airflow_provider_segment_profiles.pipeline.detection.warehouse.generated import DIALECTS
from airflow_provider_segment_profiles.pipeline.detection.warehouse.statements import render_statements

GOLDEN = Path(__file__).parent / "golden" / "warehouse_sql"
UPDATE = os.environ.get("SEGMENT_PROFILES_UPDATE_GOLDEN") == "1"

#: sqlglot's name of each dialect.
SQLGLOT = {
    "sqlite": "sqlite",
    "postgresql": "postgres",
    "snowflake": "snowflake",
    "duckdb": "duckdb",
    "bigquery": "bigquery",
    "redshift": "redshift",
    "databricks": "databricks",
    "mysql": "mysql",
}

#: Statements sqlglot does not parse, with what the test parses instead (``None``: nothing) and why.
UNPARSED = {
    # sqlglot 30 does not know SQLite's WITHOUT ROWID tables; the rest of the statement must parse.
    ("sqlite", "state_ddl"): lambda sql: sql.removesuffix(" WITHOUT ROWID"),
    # sqlglot 30 parses Databricks' SET TIME ZONE only as an opaque command.
    ("databricks", "session_0"): None,
}

COLUMNS = ["customer_id", "email", "plan", "score", "signed_up_at", "tags"]
TYPES = ["TEXT", "TEXT", "TEXT", "FLOAT", "TIMESTAMP", "JSON"]
MODEL = "SELECT customer_id, email, plan, score, signed_up_at, tags FROM customers WHERE plan <> 'closed'"
SCENARIOS = {"state": {}, "full_refresh": {"full_refresh": True}, "journal": {"journal": True}}


def _render(dialect_name: str, scenario: str) -> list[tuple[str, str]]:
    return render_statements(
        DIALECTS[dialect_name](),
        MODEL,
        COLUMNS,
        TYPES,
        primary_key="customer_id",
        fingerprints=["identify:0123abcd", "track:4567ef01"],
        used_columns=["customer_id", "email", "score", "signed_up_at", "tags"],
        state_table="sp_sync_customers_0123456789ab",
        sync_id="dag/sync_customers/-1",
        now=1_700_000_000,
        tombstone_retention_s=172_800,
        **SCENARIOS[scenario],
    )


def _as_file(statements: list[tuple[str, str]]) -> str:
    return "".join(f"-- {step}\n{sql};\n\n" for step, sql in statements)


CASES = [(name, scenario) for name in sorted(DIALECTS) for scenario in SCENARIOS]


def test_every_dialect_is_covered() -> None:
    assert set(DIALECTS) == set(SQLGLOT)
    assert {name for name, cls in DIALECTS.items() if cls.generated_only} == {
        "bigquery",
        "redshift",
        "databricks",
    }


@pytest.mark.parametrize(("dialect_name", "scenario"), CASES)
def test_rendered_sql_matches_golden_file(dialect_name: str, scenario: str) -> None:
    path = GOLDEN / dialect_name / f"{scenario}.sql"
    rendered = _as_file(_render(dialect_name, scenario))
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rendered, encoding="utf-8")
    assert path.exists(), f"{path} is missing; run with SEGMENT_PROFILES_UPDATE_GOLDEN=1"
    assert rendered == path.read_text(encoding="utf-8"), (
        f"the {dialect_name} SQL changed; review it, then rewrite {path} with SEGMENT_PROFILES_UPDATE_GOLDEN=1"
    )


@pytest.mark.parametrize(("dialect_name", "scenario"), CASES)
def test_every_statement_parses_in_its_dialect(dialect_name: str, scenario: str) -> None:
    read = SQLGLOT[dialect_name]
    for step, sql in _render(dialect_name, scenario):
        if (dialect_name, step) in UNPARSED:
            strip = UNPARSED[dialect_name, step]
            if strip is None:
                continue
            sql = strip(sql)
        # Bind placeholders are the driver's, not SQL: %s is replaced by a literal; ? parses as a placeholder.
        parsed = sqlglot.parse(sql.replace("%s", "0"), read=read, error_level=sqlglot.ErrorLevel.RAISE)
        assert len(parsed) == 1, (step, sql)
        assert parsed[0] is not None and not isinstance(parsed[0], exp.Command), (
            f"sqlglot could not parse {dialect_name} step {step}: {sql}"
        )


def test_the_parse_check_can_fail() -> None:
    # What the test above relies on: a statement in another warehouse's syntax does not pass.
    with pytest.raises(sqlglot.errors.ParseError):
        sqlglot.parse("SELECT FROM WHERE", read="bigquery", error_level=sqlglot.ErrorLevel.RAISE)
    assert isinstance(sqlglot.parse("SET TIME ZONE 'UTC'", read="databricks")[0], exp.Command)


@pytest.mark.parametrize("dialect_name", ["bigquery", "redshift", "databricks"])
def test_generated_only_dialects_are_refused_by_the_engine(dialect_name: str) -> None:
    dialect = DIALECTS[dialect_name]()
    with pytest.raises(ConfigurationError, match="never ran"):
        dialect.prepare_connection(object())
    driver = {
        "bigquery": "google.cloud.bigquery.dbapi.connection",
        "redshift": "redshift_connector.core",
        "databricks": "databricks.sql.client",
    }[dialect_name]
    connection = type("Connection", (), {"__module__": driver})()
    with pytest.raises(ConfigurationError, match="change_detection='worker'"):
        dialect_for(connection)


def test_mysql_checksum_is_sha2_and_the_others_md5() -> None:
    checksums = {name: dict(_render(name, "state"))["materialise_model"] for name in DIALECTS}
    assert "SHA2(CONCAT(" in checksums["mysql"]
    assert "MD5" not in checksums["mysql"].upper()
    assert "TO_HEX(MD5(" in checksums["bigquery"]
    assert "MD5(" in checksums["redshift"]
    for name in ("databricks", "sqlite", "postgresql", "snowflake", "duckdb"):
        assert "md5(" in checksums[name], name


def test_rendered_sqlite_statements_run_and_classify() -> None:
    """The rendered SQLite statements of a first run, executed in order, classify every record as added."""
    conn = sqlite3.connect(":memory:")
    conn.create_function("md5", 1, _md5_hex, deterministic=True)
    conn.execute(
        "CREATE TABLE customers (customer_id TEXT, email TEXT, plan TEXT, score REAL, signed_up_at TEXT, tags TEXT)"
    )
    conn.executemany(
        "INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?)",
        [
            ("c1", "a@x", "pro", 1.5, "2024-01-01", "[]"),
            ("c2", "", "free", None, None, None),
            ("c1", "dup", "pro", 0, "", ""),
        ],
    )
    dialect = SqliteDialect()
    assert dialect.ph == "?"
    steps = dict(_render("sqlite", "full_refresh"))
    params = {
        "insert_meta": ("dag/sync_customers/-1", "sp_sync_customers_0123456789ab"),
        "move_generation": (1, "sqlite", 1, "cols", 1_700_000_000, "dag/sync_customers/-1", 0),
    }
    results = {}
    for step, sql in _render("sqlite", "full_refresh"):
        count = sql.count("?")
        cursor = conn.execute(sql, params.get(step, (1_700_000_000,) * count))
        results[step] = cursor.fetchall()
    assert results["repeated_keys"] == [("c1", 1)]
    assert sorted(row[0] for row in results["classifications"]) == ["c1", "c2"]
    assert {row[3] for row in results["classifications"]} == {"added"}
    assert results["live_count"] == [(2,)]
    assert "FULL OUTER JOIN" in steps["diff"]


def test_render_is_what_the_engine_runs_on_sqlite(tmp_path: Path) -> None:
    """The SQLite statements the engine executes (traced) are the rendered ones, parameters aside."""
    database = tmp_path / "warehouse.db"
    with sqlite3.connect(database) as setup:
        setup.execute("CREATE TABLE customers (customer_id TEXT, email TEXT)")
        setup.execute("INSERT INTO customers VALUES ('c1', 'a@x'), ('c2', NULL)")
    setup.close()
    traced: list[str] = []

    def get_conn() -> sqlite3.Connection:
        conn = sqlite3.connect(database)
        conn.set_trace_callback(traced.append)
        return conn

    root = tmp_path / "dag" / "task" / "-1"
    location = SimpleNamespace(root=root, journal=root / "journal")
    accounting = SimpleNamespace(
        read=lambda rows: None, classified=lambda kind, records: None, reject_record=lambda *args: None
    )
    mode = SimpleNamespace(journals_sends=False, detects_deletions=True, tracks_mapping_changes=False)
    mapping = SimpleNamespace(
        uses_all_columns=True,
        columns=(),
        fingerprint="fp",
        name="m",
        trigger=None,
        check_columns=lambda columns: [],
    )
    detector = WarehouseChangeDetector(
        mode=mode,
        hook=SimpleNamespace(get_conn=get_conn),
        location=location,
        previous=None,
        head=None,
        outcomes=accounting,
        primary_key="customer_id",
        mappings=[mapping],
        state_schema="segment_profiles",
        full_refresh=False,
        dry_run=False,
        journal_tag=None,
        log=logging.getLogger(__name__),
    )
    try:
        query, _parameters = detector.query("SELECT customer_id, email FROM customers", None)
        detector.snapshot_to_commit(tmp_path, None)
    finally:
        detector.close()
    rendered = dict(
        render_statements(
            SqliteDialect(),
            "SELECT customer_id, email FROM customers",
            ["customer_id", "email"],
            [None, None],  # sqlite3's description has no types
            primary_key="customer_id",
            fingerprints=["fp"],
            state_table=state_table_name(location)[1],
            sync_id="dag/task/-1",
        )
    )
    assert query == rendered["changed_rows"]
    # Not run here: the de-duplication (no identifier repeats) and the reads of detect() and deletions().
    not_run = {"repeated_keys", "current_records", "changed_rows", "classifications", "deleted_rows"}
    expected = {step: sql for step, sql in rendered.items() if "?" not in sql and step not in not_run}
    assert len(expected) > 10
    missing = {step: sql for step, sql in expected.items() if sql not in traced}
    assert not missing
