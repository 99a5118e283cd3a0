"""
``sync_log_table``: real ``dag.test()`` runs of the reliability DAG into the emulator, on SQLite and on
PostgreSQL, and what the table holds afterwards.

Expected rows come from the warehouse rows the test wrote, the changes it made between runs and the
messages the emulator accepted (their ``messageId``), not from the sync log code.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("reliability_support")
from reliability_support import (  # noqa: E402
    CUSTOMER_MAPPINGS,
    WRITE_KEY,
    DagHarness,
    PostgresWarehouse,
    SqliteWarehouse,
    create_customers,
    read_ndjson,
)

from airflow_provider_segment_profiles.exceptions import ConfigurationError  # noqa: E402
from airflow_provider_segment_profiles.pipeline import sync_log as sync_log_module  # noqa: E402
from airflow_provider_segment_profiles.pipeline.sync_log import COLUMNS, SyncLog  # noqa: E402

pytest_plugins = ["reliability_support"]
pytestmark = pytest.mark.airflow_db

#: A track whose timestamp comes from ``plan``: every plan value is rejected, and the rejection's reason
#: quotes it ("'pro-7Q2' is not a timestamp"), so the test can see that the table does not.
STAMPED_MAPPING = {
    "name": "stamped",
    "action": "send_track",
    "trigger": "added",
    "fields": {"user_id": {"column": "id"}, "event_name": "Stamped", "timestamp": {"column": "plan"}},
}
PLAN = "pro-7Q2-payload-value"


def _rows(wh: SqliteWarehouse | PostgresWarehouse, table: str) -> list[dict[str, Any]]:
    return [
        dict(zip(COLUMNS, row, strict=True)) for row in wh.query(f"SELECT {', '.join(COLUMNS)} FROM {table}")
    ]


def _message_ids(sent: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(user id, mapping) -> messageId of what the emulator accepted, the mapping told by the call."""
    by_call = {"identify": "identify", "Customer Signed Up": "signed_up", "Customer Deleted": "deleted"}
    return {(str(m["userId"]), by_call[m.get("event") or m["type"]]): m["messageId"] for m in sent}


def _assert_free_of_secrets_and_values(rows: list[dict[str, Any]], wh: Any) -> None:
    text = json.dumps(rows, default=str)
    assert WRITE_KEY not in text
    assert PLAN not in text
    for _id, name, email, _plan in wh.query(f"SELECT id, name, email, plan FROM {wh.t('customers')}"):
        assert name not in text and email not in text


def _sync_log_dag_runs(h: DagHarness, wh: Any, table: str) -> None:
    """Two runs: 5 added (with a rejecting mapping), then one updated and one deleted customer."""
    create_customers(wh, range(1, 6), plan=PLAN)
    h.operator = {
        **h.operator,
        "mappings": [*CUSTOMER_MAPPINGS, STAMPED_MAPPING],
        "sync_log_table": table,
        "max_rejected_fraction": 1.0,
    }
    first = h.run()
    assert first.state == "success"
    rows = _rows(wh, table)
    assert len(rows) == 15  # identify, signed_up and stamped for each of the 5 added customers
    assert {(r["dag_id"], r["task_id"], r["map_index"], r["run_id"], r["try_number"]) for r in rows} == {
        (h.dag_id, "sync", -1, first.run_id, 1)
    }
    assert Counter((r["mapping"], r["change_kind"], r["outcome"]) for r in rows) == {
        ("identify", "added", "delivered"): 5,
        ("signed_up", "added", "delivered"): 5,
        ("stamped", "added", "rejected"): 5,
    }
    ids = _message_ids(first.sent)
    for r in rows:
        if r["outcome"] == "delivered":
            assert r["message_id"] == ids[r["primary_key"], r["mapping"]]
            assert (r["reason"], r["field"]) == (None, None)
        else:
            assert (r["reason"], r["field"], r["message_id"]) == ("invalid value", "timestamp", None)
        assert r["logged_at"] is not None
    # The report keeps the full reason, which quotes the value; the table does not.
    report = read_ndjson(first.summary["report_path"])
    assert sum(PLAN in line["reason"] for line in report) == 5
    _assert_free_of_secrets_and_values(rows, wh)

    wh.execute(f"UPDATE {wh.t('customers')} SET name = 'Renamed Two' WHERE id = 2")
    wh.execute(f"DELETE FROM {wh.t('customers')} WHERE id = 5")
    second = h.run()
    assert second.state == "success"
    rows = _rows(wh, table)
    new = [r for r in rows if r["run_id"] == second.run_id]
    # Customers 1, 3 and 4 are unchanged but still pending for "stamped", which rejected them: it builds
    # them again (and rejects them again); customer 2's update goes to identify, and to "stamped" too,
    # which it still owes its message although the trigger selects only added records; customer 5's
    # deletion goes to the deleted mapping.
    assert len(rows) == 21
    assert sorted((r["primary_key"], r["mapping"], r["change_kind"], r["outcome"]) for r in new) == [
        ("1", "stamped", "unchanged", "rejected"),
        ("2", "identify", "updated", "delivered"),
        ("2", "stamped", "updated", "rejected"),
        ("3", "stamped", "unchanged", "rejected"),
        ("4", "stamped", "unchanged", "rejected"),
        ("5", "deleted", "deleted", "delivered"),
    ]
    ids = _message_ids(second.sent)
    assert {r["message_id"] for r in new if r["outcome"] == "delivered"} == set(ids.values())
    _assert_free_of_secrets_and_values(rows, wh)

    # The support query of docs/lineage.md: what became of customer 3, newest first.
    why = wh.query(
        f"SELECT run_id, mapping, change_kind, outcome, reason, field FROM {table} "
        "WHERE primary_key = '3' ORDER BY logged_at DESC, mapping"
    )
    assert why == [
        (second.run_id, "stamped", "unchanged", "rejected", "invalid value", "timestamp"),
        (first.run_id, "identify", "added", "delivered", None, None),
        (first.run_id, "signed_up", "added", "delivered", None, None),
        (first.run_id, "stamped", "added", "rejected", "invalid value", "timestamp"),
    ]


def test_sqlite_sync_log_rows_per_message_outcome(rel_harness: DagHarness) -> None:
    _sync_log_dag_runs(rel_harness, rel_harness.warehouse, "segment_sync_log")


def test_postgres_sync_log_rows_per_message_outcome(
    request: pytest.FixtureRequest,
    rel_postgres: PostgresWarehouse,
    rel_emulator: Any,
    tmp_path: Path,
    airflow_db: Path,
) -> None:
    h = DagHarness(
        rel_postgres, rel_emulator, tmp_path / "state", request.getfixturevalue("monkeypatch"), name="pg_log"
    )
    table = rel_postgres.t("segment_sync_log")
    _sync_log_dag_runs(h, rel_postgres, table)
    (kind,) = rel_postgres.query(
        "SELECT data_type FROM information_schema.columns "
        f"WHERE table_schema = '{rel_postgres.schema}' AND table_name = 'segment_sync_log' AND column_name = 'logged_at'"
    )
    assert kind == ("timestamp with time zone",)


def test_failed_messages_are_logged_with_the_delivery_reason_even_when_the_task_fails(
    rel_harness: DagHarness,
) -> None:
    """Customer 4's requests get HTTP 400: its messages fail, the task fails on max_failed_fraction, and
    the log still has every outcome, the failures with Segment's answer."""
    h = rel_harness
    create_customers(h.warehouse, range(1, 6))
    h.emulator.fail_user("4", status=400)
    run = h.run(sync_log_table="segment_sync_log", batch_size=1)
    assert run.state == "failed"
    rows = _rows(h.warehouse, "segment_sync_log")
    assert Counter((r["primary_key"], r["outcome"]) for r in rows if r["primary_key"] == "4") == {
        ("4", "failed"): 2
    }
    assert Counter(r["outcome"] for r in rows) == {"delivered": 8, "failed": 2}
    for r in rows:
        if r["outcome"] == "failed":
            assert r["reason"].startswith("HTTP 400 from Segment")
            assert r["message_id"]  # built and sent, so it has an id Segment could de-duplicate on
    assert WRITE_KEY not in json.dumps(rows)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_failed_log_write_is_a_warning_and_the_sync_succeeds(
    request: pytest.FixtureRequest, kind: str, rel_emulator: Any, tmp_path: Path, airflow_db: Path, capfd: Any
) -> None:
    wh = request.getfixturevalue("rel_sqlite" if kind == "sqlite" else "rel_postgres")
    h = DagHarness(
        wh, rel_emulator, tmp_path / "state", request.getfixturevalue("monkeypatch"), name=f"badlog_{kind}"
    )
    create_customers(wh, range(1, 4))
    # A schema (PostgreSQL) or attached database (SQLite) that does not exist: CREATE TABLE fails.
    run = h.run(sync_log_table="no_such_schema_7f3.sync_log")
    assert run.state == "success"
    assert run.summary["messages"] == {"delivered": 6, "rejected": 0, "failed": 0}
    assert len(run.sent) == 6
    assert h.head()["generation"] == 1
    output = capfd.readouterr()
    assert "Sync log: could not append 6 rows to no_such_schema_7f3.sync_log" in output.out + output.err


def test_dry_runs_write_no_sync_log(rel_harness: DagHarness) -> None:
    create_customers(rel_harness.warehouse, range(1, 4))
    run = rel_harness.run(sync_log_table="segment_sync_log", dry_run=True)
    assert run.state == "success"
    assert rel_harness.warehouse.query("SELECT name FROM sqlite_master WHERE name = 'segment_sync_log'") == []


# -- the writer on its own ----------------------------------------------------------------------------------
class _CountingConnection:
    """A sqlite3 connection that counts ``execute`` and ``executemany`` calls of its cursors."""

    def __init__(self, path: Path, calls: Counter[str]) -> None:
        self._conn = sqlite3.connect(path)
        self._calls = calls

    def cursor(self) -> Any:
        conn, calls = self._conn, self._calls

        class Cursor:
            def execute(self, sql: str, *args: Any) -> Any:
                calls["execute"] += 1
                return conn.execute(sql, *args)

            def executemany(self, sql: str, rows: list[Any]) -> Any:
                calls["executemany"] += 1
                calls["rows"] += len(rows)
                return conn.executemany(sql, rows)

            def close(self) -> None:
                pass

        return Cursor()

    def commit(self) -> None:
        self._conn.commit()

    def rollback(self) -> None:
        self._conn.rollback()

    def close(self) -> None:
        self._conn.close()


class _Hook:
    dialect_name = "sqlite"
    placeholder = "?"

    def __init__(self, path: Path, calls: Counter[str]) -> None:
        self.path, self.calls = path, calls

    def get_conn(self) -> _CountingConnection:
        return _CountingConnection(self.path, self.calls)


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, text: str, *args: Any) -> None:
        self.lines.append(("info", text % args))

    def warning(self, text: str, *args: Any) -> None:
        self.lines.append(("warning", text % args))


class _Ref(tuple):
    key = property(lambda self: self[0])
    mapping = property(lambda self: self[1])
    kind = property(lambda self: self[2])


def test_rows_spill_to_disk_and_are_written_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_segment_profiles.delivery.dispatcher import Completion
    from airflow_provider_segment_profiles.pipeline.records import ChangeKind, MessageRef, Outcome

    monkeypatch.setattr(sync_log_module, "SPOOL_ROWS", 1_000)
    monkeypatch.setattr(sync_log_module, "BATCH_ROWS", 400)
    calls: Counter[str] = Counter()
    log = _Log()
    writer = SyncLog(
        _Hook(tmp_path / "wh.db", calls),
        "sync_log",
        dag_id="d",
        task_id="t",
        map_index=-1,
        run_id="r",
        try_number=2,
        log=log,
    )
    for start in range(0, 12_345, 500):
        writer.settled(
            [
                Completion(
                    MessageRef(str(i), "identify", ChangeKind.ADDED, None, f"id-{i}"), Outcome.DELIVERED
                )
                for i in range(start, min(start + 500, 12_345))
            ]
        )
    writer.rejected("identify", "x", ChangeKind.UPDATED, "traits.email")
    # A ref built without the message id field (as an older stage would) is logged without one.
    writer.settled(
        [Completion(_Ref(("y", "identify", ChangeKind.DELETED, None)), Outcome.FAILED, "HTTP 500")]
    )
    assert writer._spill is not None  # the rows went to disk on the way
    assert writer.write() == 12_347
    # One CREATE TABLE, then executemany per batch: 12 spilled chunks of 1,000 rows (3 batches each) and
    # the 347 rows still in memory (1 batch): no statement per row.
    assert calls == {"execute": 1, "executemany": 12 * 3 + 1, "rows": 12_347}
    with sqlite3.connect(tmp_path / "wh.db") as conn:
        stored = conn.execute("SELECT COUNT(*), COUNT(DISTINCT message_id) FROM sync_log").fetchone()
        tail = conn.execute(
            "SELECT try_number, primary_key, change_kind, outcome, reason, field, message_id FROM sync_log "
            "WHERE primary_key IN ('x', 'y', '7') ORDER BY primary_key"
        ).fetchall()
    assert stored == (12_347, 12_345)
    assert tail == [
        (2, "7", "added", "delivered", None, None, "id-7"),
        (2, "x", "updated", "rejected", "invalid value", "traits.email", None),
        (2, "y", "deleted", "failed", "HTTP 500", None, None),
    ]
    assert log.lines == [("info", "Sync log: appended 12347 rows to sync_log")]


@pytest.mark.parametrize("name", ["log; DROP TABLE x", "1table", "a.b.c.d", "sch.", "", "sch-1.t"])
def test_table_names_that_are_not_plain_identifiers_are_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match="sync_log_table must be"):
        SyncLog(
            _Hook(Path("unused"), Counter()),
            name,
            dag_id="d",
            task_id="t",
            map_index=-1,
            run_id="r",
            try_number=1,
            log=_Log(),
        )


def test_skipped_messages_are_logged_with_their_reason(rel_harness: DagHarness) -> None:
    """A Send Subscriptions record whose statuses are all NULL has nothing to send: ``skipped``."""
    from airflow_provider_segment_profiles.actions.subscriptions import NOTHING_TO_SEND, STATUS_FIELDS

    h = rel_harness
    create_customers(h.warehouse, range(1, 4))
    subscriptions = {
        "name": "subs",
        "action": "send_subscriptions",
        "fields": {
            "user_id": {"column": "id"},
            "email": {"column": "email"},
            "email_subscription_status": {"column": "status"},
        },
    }
    run = h.run(
        sql="SELECT id, name, email, plan, CAST(NULL AS TEXT) AS status FROM customers",
        mappings=[subscriptions],
        sync_log_table="segment_sync_log",
    )
    assert run.state == "success"
    assert run.sent == []
    rows = _rows(h.warehouse, "segment_sync_log")
    assert sorted(
        (r["primary_key"], r["outcome"], r["reason"], r["field"], r["message_id"]) for r in rows
    ) == [(str(i), "skipped", NOTHING_TO_SEND, ", ".join(STATUS_FIELDS), None) for i in range(1, 4)]
