"""The model reader's checks and the state commit protocol, on real SQLite files and local object storage."""

from __future__ import annotations

import json
import sqlite3

import pytest

from airflow_provider_segment_profiles.pipeline.detection.checksum import Checksummer, record_key
from airflow_provider_segment_profiles.pipeline.reader import ModelQueryError, ModelReader, single_statement
from airflow_provider_segment_profiles.state.location import (
    StateError,
    StateLocation,
    SyncState,
    safe_component,
)
from airflow_provider_segment_profiles.state.snapshot import (
    TOMBSTONE_RETENTION_S,
    SnapshotStore,
    prepare_previous,
)


@pytest.fixture
def sqlite_hook(tmp_path, monkeypatch):
    from airflow.providers.sqlite.hooks.sqlite import SqliteHook

    path = tmp_path / "wh.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER, name TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"n{i}") for i in range(25)])
    conn.commit()
    conn.close()
    monkeypatch.setenv("AIRFLOW_CONN_READER_TEST", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    return SqliteHook(sqlite_conn_id="reader_test")


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT id FROM t;", "SELECT id FROM t"),
        ("SELECT id FROM t ;  \n", "SELECT id FROM t"),
        ("SELECT id FROM t -- trailing comment", "SELECT id FROM t"),
        ("SELECT id FROM t; -- trailing comment", "SELECT id FROM t"),
        ("WITH x AS (SELECT id FROM t) SELECT * FROM x", "WITH x AS (SELECT id FROM t) SELECT * FROM x"),
    ],
)
def test_single_statement_accepts_one_query(sqlite_hook, sql, expected):
    assert single_statement(sql, sqlite_hook) == expected


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT 1; SELECT 2", "2 statements"),
        ("DELETE FROM t", "DELETE statement"),
        ("UPDATE t SET name = 'x'", "UPDATE statement"),
        ("INSERT INTO t VALUES (1, 'x')", "INSERT statement"),
        ("", "no statement"),
        ("-- nothing but a comment", "no statement"),
    ],
)
def test_single_statement_refuses_anything_else(sqlite_hook, sql, message):
    with pytest.raises(ModelQueryError, match=message):
        single_statement(sql, sqlite_hook)


def test_reader_streams_in_fetch_size_chunks(sqlite_hook):
    reader = ModelReader(sqlite_hook, "SELECT id, name FROM t ORDER BY id", None, fetch_size=10)
    assert reader.open() == ["id", "name"]
    assert [len(chunk) for chunk in reader.chunks()] == [10, 10, 5]
    reader.close()
    reader.close()  # closing twice (on_kill after a normal end) is harmless


def test_reader_binds_parameters(sqlite_hook):
    reader = ModelReader(sqlite_hook, "SELECT id FROM t WHERE id < ?", [3], fetch_size=100)
    reader.open()
    assert [row[0] for chunk in reader.chunks() for row in chunk] == [0, 1, 2]
    reader.close()


def test_zero_rows_is_a_normal_result(sqlite_hook):
    reader = ModelReader(sqlite_hook, "SELECT id FROM t WHERE id < 0", None)
    assert reader.open() == ["id"]
    assert list(reader.chunks()) == []
    reader.close()


def test_duplicate_column_names_are_named(sqlite_hook):
    reader = ModelReader(sqlite_hook, "SELECT id, name, id, name AS name FROM t", None)
    with pytest.raises(ModelQueryError, match="duplicate column names: id, name"):
        reader.open()
    reader.close()


def test_a_statement_without_result_set_is_a_configuration_error(sqlite_hook):
    reader = ModelReader(sqlite_hook, "VACUUM", None)
    with pytest.raises(ModelQueryError, match="no result set"):
        reader.open()
    reader.close()


def test_a_missing_table_is_left_to_airflow_retries(sqlite_hook):
    # SQLite reports it as OperationalError, like a locked database: the task fails and retries, since an
    # upstream task may still be creating the table. (Drivers' ProgrammingError fails without retry.)
    reader = ModelReader(sqlite_hook, "SELECT nope FROM missing_table", None)
    with pytest.raises(sqlite3.OperationalError, match="missing_table"):
        reader.open()
    reader.close()


def test_a_programming_error_is_a_configuration_error(postgres_dsn, monkeypatch):
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    conn = {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres", "schema": "test"}
    monkeypatch.setenv("AIRFLOW_CONN_READER_PG", json.dumps(conn))
    reader = ModelReader(PostgresHook(postgres_conn_id="reader_pg"), "SELECT nope FROM missing_table", None)
    with pytest.raises(ModelQueryError, match=r"refused the model.s SQL.*missing_table"):
        reader.open()
    reader.close()


@pytest.mark.parametrize(
    ("value", "key"),
    [
        (1, "1"),
        ("1", "1"),
        (1.0, "1"),
        ("00123", "00123"),
        (123, "123"),
        ("ABC", "ABC"),
        ("abc", "abc"),
        (None, None),
    ],
)
def test_keys_compare_as_strings(value, key):
    assert record_key(value) == key


def test_checksums_follow_values_and_mappings():
    first = Checksummer("mappings-v1", [0, 1])
    assert first((1, "a", "ignored")) == first((1, "a", "other"))
    assert first((1, "a")) != first((1, "b"))
    assert first((1, "a")) != first(("1", "a"))  # a type change is a change
    assert Checksummer("mappings-v2", [0, 1])((1, "a")) != first((1, "a"))


def snapshot_rows(path) -> dict[str, tuple]:
    db = sqlite3.connect(path)
    try:
        return {
            "snapshot": {pk: (c, v) for pk, c, v in db.execute("SELECT pk, checksum, version FROM snapshot")},
            "uncertain": {pk for (pk,) in db.execute("SELECT pk FROM uncertain")},
            "tombstone": {pk: v for pk, v, _ in db.execute("SELECT * FROM tombstone")},
        }
    finally:
        db.close()


def test_snapshot_classifies_and_keeps_failed_records_for_the_next_run(tmp_path):
    new = (None, False, 1, False)
    first = SnapshotStore(tmp_path, None)
    assert first.add_and_look_up([("a", 1, None), ("b", 2, None), ("c", 3, None)]) == [new] * 3
    assert first.add_and_look_up([("a", 9, None), ("d", 4, None)]) == [None, new]  # a duplicate across chunks
    first.mark_failed(["c"])
    previous = tmp_path / "prev.sqlite"
    assert first.write_diff_snapshot(previous) == 4
    first.close()
    # c was added but not delivered: kept as unconfirmed (NULL) under the version it was sent with.
    assert snapshot_rows(previous)["snapshot"] == {"a": (1, 1), "b": (2, 1), "c": (None, 1), "d": (4, 1)}

    second = SnapshotStore(tmp_path, previous)
    assert second.add_and_look_up([("a", 1, None), ("b", 5, None), ("c", 3, None), ("d", 4, None)]) == [
        (1, True, 1, False),  # unchanged: keeps version 1
        (2, True, 2, False),  # updated: version 2
        (None, True, 1, False),  # the unconfirmed add, again under version 1 (same message id)
        (4, True, 1, False),
    ]
    second.mark_failed(["b"])
    assert list(second.deleted()) == []
    nxt = tmp_path / "next.sqlite"
    assert second.write_diff_snapshot(nxt) == 4
    second.close()
    # b keeps what Segment held (checksum 2, version 1) and is uncertain: the update may have arrived.
    rows = snapshot_rows(nxt)
    assert rows["snapshot"] == {"a": (1, 1), "b": (2, 1), "c": (3, 1), "d": (4, 1)}
    assert rows["uncertain"] == {"b"}

    third = SnapshotStore(tmp_path, nxt)
    # b went back to the value Segment held before the failed update: sent anyway, as version 2.
    assert third.add_and_look_up([("b", 2, None)]) == [(2, True, 2, True)]
    third.close()


def test_snapshot_lists_deleted_records_keeps_failed_deletes_and_tombstones(tmp_path):
    store = SnapshotStore(tmp_path, None, now=1_000_000)
    store.add_and_look_up([("a", 1, None), ("b", 2, None), ("c", 3, None)])
    previous = tmp_path / "prev.sqlite"
    store.write_diff_snapshot(previous)
    store.close()

    store = SnapshotStore(tmp_path, previous, now=1_000_000)
    store.add_and_look_up([("a", 1, None)])
    assert sorted(row for batch in store.deleted() for row in batch) == [("b", 2, 2), ("c", 3, 2)]
    store.mark_delete_failed(["c"])
    nxt = tmp_path / "next.sqlite"
    assert store.write_diff_snapshot(nxt) == 2  # a, and c whose delete must be sent again
    store.close()
    rows = snapshot_rows(nxt)
    assert rows["uncertain"] == {"c"} and rows["tombstone"] == {"b": 2}

    # b comes back with its old value: an add under version 3, not its first message id again.
    store = SnapshotStore(tmp_path, nxt, now=1_000_000 + TOMBSTONE_RETENTION_S - 1)
    assert store.add_and_look_up([("a", 1, None), ("b", 2, None)]) == [
        (1, True, 1, False),
        (None, False, 3, False),
    ]
    last = tmp_path / "last.sqlite"
    store.write_diff_snapshot(last)
    store.close()
    assert snapshot_rows(last)["tombstone"] == {"c": 2}  # b lives again; c's retried delete (version 2) went

    store = SnapshotStore(tmp_path, last, now=1_000_000 + 2 * TOMBSTONE_RETENTION_S)
    store.add_and_look_up([("a", 1, None), ("b", 2, None)])
    store.write_diff_snapshot(tmp_path / "pruned.sqlite")
    store.close()
    assert snapshot_rows(tmp_path / "pruned.sqlite")["tombstone"] == {}  # older than the retention


def test_journaled_records_of_an_uncommitted_try_are_folded_in(tmp_path):
    store = SnapshotStore(tmp_path, None)
    store.add_and_look_up([("a", 1, None)])
    committed = tmp_path / "committed.sqlite"
    store.write_diff_snapshot(committed)
    store.close()
    # A try sent an update of a (version 2) and an add of z (version 1), then died before committing.
    previous = prepare_previous(committed, tmp_path, [("a", 2), ("z", 1)])
    store = SnapshotStore(tmp_path, previous)
    # a is back at the committed value but Segment may hold the dead try's: sent again as version 2.
    assert store.add_and_look_up([("a", 1, None)]) == [(1, True, 2, True)]
    assert [row for batch in store.deleted() for row in batch] == [("z", None, 2)]  # z is gone: delete it
    store.close()
    # With no committed state at all, the journal alone makes a snapshot to compare against.
    assert prepare_previous(None, tmp_path, []) is None
    fresh = prepare_previous(None, tmp_path, [("z", 1)])
    store = SnapshotStore(tmp_path, fresh)
    assert store.add_and_look_up([("z", 7, None)]) == [(None, True, 1, True)]  # added again, same version
    store.close()


def test_snapshots_written_before_versions_are_upgraded(tmp_path):
    old = tmp_path / "old.sqlite"
    db = sqlite3.connect(old)
    db.execute("CREATE TABLE snapshot (pk TEXT PRIMARY KEY, checksum INTEGER, cursor) WITHOUT ROWID")
    db.executemany("INSERT INTO snapshot VALUES (?, ?, NULL)", [("a", 1), ("b", None)])
    db.commit()
    db.close()
    store = SnapshotStore(tmp_path, prepare_previous(old, tmp_path, []))
    assert store.add_and_look_up([("a", 1, None), ("b", 5, None), ("n", 6, None)]) == [
        (1, True, 0, False),
        (None, True, 1, False),
        (None, False, 1, False),
    ]
    store.close()


def state(**kwargs) -> SyncState:
    return SyncState(generation=0, snapshot=None, sync_mode="diff", **kwargs)


def test_commit_moves_head_and_refuses_a_concurrent_commit(tmp_path):
    location = StateLocation(tmp_path.as_uri(), "dag", "task", -1)
    assert location.read_head() is None
    snapshot = tmp_path / "local.sqlite"
    snapshot.write_bytes(b"snapshot")
    first = location.commit(None, state(run_id="r1"), snapshot)
    assert first.generation == 1
    assert location.read_head().snapshot == first.snapshot

    # Two runs both started from generation 1; the first to commit wins, the later one fails.
    winner = location.commit(first, state(run_id="r2"), snapshot)
    assert winner.generation == 2
    with pytest.raises(StateError, match="Another run of this sync committed state generation 2"):
        location.commit(first, state(run_id="r3"), snapshot)
    assert location.read_head().run_id == "r2"


def test_unreadable_head_fails_loudly_with_the_recovery(tmp_path):
    location = StateLocation(tmp_path.as_uri(), "dag", "task", 3)
    location.root.mkdir(parents=True)
    location.head.write_text("{not json")
    with pytest.raises(StateError, match="full_refresh=True"):
        location.read_head()


def test_old_snapshots_are_pruned(tmp_path):
    location = StateLocation(tmp_path.as_uri(), "dag", "task", -1)
    snapshot = tmp_path / "local.sqlite"
    snapshot.write_bytes(b"x")
    head = None
    for _ in range(5):
        head = location.commit(head, state(), snapshot)
    assert len(list(location.snapshots.iterdir())) == 2


@pytest.mark.parametrize(
    "value", ["../../etc", "a/b", "..", ".", "run/../../x", "manual__2024-01-01T00:00:00+00:00"]
)
def test_state_paths_cannot_escape_their_base(tmp_path, value):
    component = safe_component(value)
    assert "/" not in component and component not in {".", ".."}
    location = StateLocation((tmp_path / "base").as_uri(), value, value, -1)
    assert str(location.root).startswith((tmp_path / "base").as_uri())
    assert ".." not in str(location.root).split("/")


def test_send_journal_reads_uncommitted_tries_and_skips_torn_files(tmp_path):
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_segment_profiles.state.journal import JournalError, SendJournal

    folder = ObjectStoragePath(f"file://{tmp_path}/journal")
    dead = SendJournal(folder, base_generation=3, tag="run1-try1")
    dead.record([("a", 2), ("b", 1)])
    dead.record([])  # nothing to send: no file
    stale = SendJournal(folder, base_generation=2, tag="run0-try1")
    stale.record([("old", 5)])
    (tmp_path / "journal" / "00000003-run1-try1-torn-000009.json").write_text('{"format": 1, "reco')

    retry = SendJournal(folder, base_generation=3, tag="run1-try2")
    files, uncommitted = retry.uncommitted()
    assert len(files) == 3 and len(uncommitted) == 2  # the stale generation's file is not uncommitted
    assert list(SendJournal.records(uncommitted)) == [("a", 2), ("b", 1)]  # the torn file is skipped
    retry.record([("c", 1)])
    retry.discard(files)
    assert list((tmp_path / "journal").iterdir()) == []

    (tmp_path / "blocked").write_text("a file where the journal folder should be")
    with pytest.raises(JournalError, match="nothing of this chunk was sent"):
        SendJournal(ObjectStoragePath(f"file://{tmp_path}/blocked"), 0, "t").record([("a", 1)])
