"""Unit tests of each stage of the pipeline: source checks, classification per mode, fan-out, settling, commit."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest

from airflow_provider_segment_profiles.actions import compile_mappings
from airflow_provider_segment_profiles.delivery.dispatcher import Completion
from airflow_provider_segment_profiles.exceptions import (
    AccountingMismatch,
    ConfigurationError,
    JournalError,
    ModelQueryError,
    PermanentSyncError,
    StateError,
    SyncCancelled,
    TransientSyncError,
    WatermarkError,
)
from airflow_provider_segment_profiles.pipeline.accounting import SyncAccounting
from airflow_provider_segment_profiles.pipeline.commit import commit_state
from airflow_provider_segment_profiles.pipeline.config import SyncConfig
from airflow_provider_segment_profiles.pipeline.detection.worker import WorkerChangeDetector
from airflow_provider_segment_profiles.pipeline.fanout import MessageFanout
from airflow_provider_segment_profiles.pipeline.modes import MODES, get_mode
from airflow_provider_segment_profiles.pipeline.records import Change, ChangeKind, MessageRef, Outcome, Record
from airflow_provider_segment_profiles.pipeline.settle import Progress, Settler
from airflow_provider_segment_profiles.pipeline.source import RecordSource
from airflow_provider_segment_profiles.state.location import StateLocation

LOG = logging.getLogger("test_pipeline_stages")
ADDED, UPDATED, DELETED, UNCHANGED = (
    ChangeKind.ADDED,
    ChangeKind.UPDATED,
    ChangeKind.DELETED,
    ChangeKind.UNCHANGED,
)


def _hook(tmp_path: Path, monkeypatch, rows: list[tuple]) -> object:
    from airflow.providers.sqlite.hooks.sqlite import SqliteHook

    path = tmp_path / "wh.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE m (id, name, ts)")
        conn.executemany("INSERT INTO m VALUES (?, ?, ?)", rows)
    monkeypatch.setenv("AIRFLOW_CONN_STAGES", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    return SqliteHook(sqlite_conn_id="stages")


# -- errors ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("error", [ConfigurationError, StateError, ModelQueryError, WatermarkError])
def test_permanent_errors(error):
    assert issubclass(error, PermanentSyncError) and not issubclass(error, TransientSyncError)


@pytest.mark.parametrize("error", [JournalError, AccountingMismatch, SyncCancelled])
def test_transient_errors(error):
    assert issubclass(error, TransientSyncError) and not issubclass(error, PermanentSyncError)


# -- source ------------------------------------------------------------------------------------------------
def test_source_rejects_null_and_repeated_keys_naming_the_column(tmp_path, monkeypatch):
    hook = _hook(tmp_path, monkeypatch, [(1, "a", 1), (None, "b", 2), (1, "c", 3), (2, "d", 4)])
    accounting = SyncAccounting(["m"])
    source = RecordSource(
        hook, "SELECT * FROM m", None, primary_key="id", cursor_column=None, outcomes=accounting
    )
    assert source.open() == ["id", "name", "ts"]
    assert source.column_problems() == []
    chunks = list(source.chunks())
    source.close()
    assert [[(r.key, r.row[1]) for r in chunk] for chunk in chunks] == [[("1", "a"), ("2", "d")]]
    assert accounting.rows_read == 4 and accounting.records["rejected"] == 2
    assert [s["field"] for s in accounting.rejected_samples] == ["id", "id"]
    assert "NULL (row 2 of the result)" in accounting.rejected_samples[0]["reason"]
    assert "duplicate unique identifier" in accounting.rejected_samples[1]["reason"]


def test_source_rejects_cursor_values_that_cannot_be_ordered_together(tmp_path, monkeypatch):
    hook = _hook(tmp_path, monkeypatch, [(1, "a", 10), (2, "b", "2024-01-01"), (3, "c", None), (4, "d", 11)])
    accounting = SyncAccounting(["m"])
    source = RecordSource(
        hook, "SELECT * FROM m", None, primary_key="id", cursor_column="ts", outcomes=accounting
    )
    source.open()
    records = [r for chunk in source.chunks() for r in chunk]
    source.close()
    assert [(r.key, r.cursor_value, r.cursor_key) for r in records] == [("1", 10, 10), ("4", 11, 11)]
    assert [s["field"] for s in accounting.rejected_samples] == ["ts", "ts"]
    assert "cannot be ordered together" in accounting.rejected_samples[0]["reason"]
    assert "NULL cursor value" in accounting.rejected_samples[1]["reason"]


def test_source_names_missing_columns(tmp_path, monkeypatch):
    hook = _hook(tmp_path, monkeypatch, [(1, "a", 1)])
    source = RecordSource(
        hook, "SELECT name FROM m", None, primary_key="id", cursor_column="ts", outcomes=SyncAccounting([])
    )
    source.open()
    assert source.column_problems() == [
        "primary_key 'id' is not a column of the model's result",
        "cursor_column 'ts' is not a column of the model's result",
    ]
    source.close()


# -- modes -------------------------------------------------------------------------------------------------
def test_diff_mode_classifies_against_what_segment_holds():
    diff = get_mode("diff")
    assert diff.classify(known=False, held=None, checksum=5, uncertain=False) is ADDED
    assert diff.classify(known=True, held=None, checksum=5, uncertain=False) is ADDED  # an unconfirmed add
    assert diff.classify(known=True, held=5, checksum=5, uncertain=False) is UNCHANGED
    assert diff.classify(known=True, held=5, checksum=5, uncertain=True) is UPDATED
    assert diff.classify(known=True, held=4, checksum=5, uncertain=False) is UPDATED
    assert diff.change_token("ab", 3) == "ab.3"


def test_incremental_and_full_modes():
    incremental, full = get_mode("incremental"), get_mode("full")
    assert incremental.classify(known=True, held=1, checksum=2, uncertain=True) is UNCHANGED
    assert incremental.classify(known=False, held=None, checksum=2, uncertain=False) is ADDED
    assert full.classify(known=True, held=2, checksum=2, uncertain=False) is ADDED
    assert incremental.change_token("ab", 3) == full.change_token("ab", 3) == "ab"
    assert full.changes_selected("updated") == {ADDED, UPDATED}
    assert full.changes_selected("deleted") == frozenset()
    assert incremental.changes_selected("added_or_updated") == {ADDED, UPDATED}
    assert set(incremental.unfit_triggers) == {"updated", "deleted"} and set(full.unfit_triggers) == {
        "deleted"
    }
    assert incremental.check_settings(None) == ["sync_mode 'incremental' needs cursor_column"]
    assert get_mode("diff").check_settings("ts") == [
        "cursor_column is only used by sync_mode 'incremental', not 'diff'"
    ]
    assert [m.detects_deletions for m in MODES.values()] == [True, False, False]


# -- worker change detection ---------------------------------------------------------------------------------
def _detector(
    tmp_path: Path, run: str, mode: str = "diff", head=None, accounting=None
) -> WorkerChangeDetector:
    workdir = tmp_path / run
    workdir.mkdir()
    detector = WorkerChangeDetector(
        mode=get_mode(mode),
        location=StateLocation((tmp_path / "state").as_uri(), "dag", "task", -1),
        previous=get_mode(mode).resumes_from(head, False),
        head=head,
        workdir=workdir,
        outcomes=accounting or SyncAccounting(["m"]),
        primary_key="id",
        journal_tag=run,
        log=LOG,
    )
    detector.bind(["id", "v"], [1], "seed")
    return detector


def _commit(tmp_path, detector, head, mode="diff"):
    config = SyncConfig(sql="", primary_key="id", mappings=[], sync_mode=mode)
    return commit_state(
        config=config,
        location=StateLocation((tmp_path / "state").as_uri(), "dag", "task", -1),
        head=head,
        detector=detector,
        workdir=detector.store.workdir,
        watermark=None,
        fingerprint="f",
        messages={},
        destinations={"conn": "dest"},
        run_id=f"run{(head.generation if head else 0) + 1}",
        try_number=1,
    )


def test_worker_detector_finds_every_change_across_runs_and_journals_them(tmp_path):
    first = _detector(tmp_path, "r1")
    changes = first.detect([Record(("1", "a"), "1"), Record(("2", "b"), "2")])
    assert [(c.kind, c.key, c.version) for c in changes] == [(ADDED, "1", 1), (ADDED, "2", 1)]
    assert all(c.token.endswith(".1") for c in changes)
    first.write_ahead(changes)
    assert len(first.journal.written) == 1
    head = _commit(tmp_path, first, None)
    first.close()
    assert head.generation == 1 and head.records == 2
    assert not list((tmp_path / "state/dag/task/task/journal").iterdir())  # the commit removed the journal

    accounting = SyncAccounting(["m"])
    second = _detector(tmp_path, "r2", head=head, accounting=accounting)
    changes = second.detect([Record(("1", "a"), "1"), Record(("3", "c"), "3")])
    assert [(c.kind, c.key, c.version) for c in changes] == [(ADDED, "3", 1)]
    assert second.detect([Record(("1", "z"), "1")]) == []  # a key an earlier chunk had: rejected
    assert accounting.records == {"unchanged": 1, "added": 1, "updated": 0, "rejected": 1}
    deleted = [c for chunk in second.deletions() for c in chunk]
    assert [(c.kind, c.key, c.row, c.version) for c in deleted] == [(DELETED, "2", None, 2)]
    second.mark_delete_failed(["2"])
    head = _commit(tmp_path, second, head)
    second.close()

    third = _detector(tmp_path, "r3", head=head)
    assert [(c.kind, c.key) for c in third.detect([Record(("1", "b"), "1"), Record(("3", "c"), "3")])] == [
        (UPDATED, "1")
    ]
    assert [c.key for chunk in third.deletions() for c in chunk] == ["2"]  # the failed delete is sent again
    third.close()


def test_worker_detector_incremental_watermark(tmp_path):
    detector = _detector(tmp_path, "r1", mode="incremental")
    detector.detect(
        [Record(("1", "a"), "1", 5, 5), Record(("2", "b"), "2", 9, 9), Record(("3", "c"), "3", 7, 7)]
    )
    assert detector.watermark([]) == 9
    assert detector.watermark([7, 5]) == 5
    detector.close()


# -- fan-out -------------------------------------------------------------------------------------------------
MAPPINGS = [
    {
        "name": "identify",
        "action": "send_identify",
        "fields": {"user_id": {"column": "id"}, "traits": {"n": {"column": "name"}}},
    },
    {
        "name": "gone",
        "action": "send_track",
        "trigger": "deleted",
        "fields": {"user_id": {"column": "id"}, "event_name": "Gone"},
    },
    {
        "name": "new",
        "action": "send_track",
        "trigger": "added",
        "fields": {"user_id": {"column": "name"}, "event_name": "New"},
    },
]


def _fanout(mode: str = "diff") -> tuple[MessageFanout, SyncAccounting]:
    compiled = compile_mappings(MAPPINGS, sync_mode="diff", primary_key="id")
    builders = {m.name: m.bind(["id", "name"]) for m in compiled}
    accounting = SyncAccounting([m.name for m in compiled])
    spaces = {"identify": "a", "gone": "b", "new": "a"}
    return MessageFanout(compiled, builders, spaces, get_mode(mode), accounting), accounting


def test_fanout_sends_each_change_to_the_mappings_its_trigger_selects():
    fanout, accounting = _fanout()
    assert fanout.kinds_sent == {ADDED, UPDATED, DELETED}
    sent: list[tuple[str, dict, MessageRef]] = []
    changes = [
        Change(ADDED, "1", ("1", "Ann"), "aa.1", 1),
        Change(UPDATED, "2", ("2", "Bo"), "bb.2", 2),
        Change(ADDED, "3", ("3", None), "cc.1", 1),  # 'new' maps user_id from NULL: rejected there only
        Change(DELETED, "4", None, "dd.3", 3),
    ]
    fanout.send(
        changes, lambda space, encoded, ref: sent.append((space, json.loads(encoded), ref)) or [], None
    )
    assert [(space, ref.mapping, ref.key, ref.kind) for space, _, ref in sent] == [
        ("a", "identify", "1", ADDED),
        ("a", "new", "1", ADDED),
        ("a", "identify", "2", UPDATED),
        ("a", "identify", "3", ADDED),
        ("b", "gone", "4", DELETED),
    ]
    assert sent[-1][1]["event"] == "Gone" and sent[-1][1]["userId"] == "4"
    assert {m: t.selected for m, t in accounting.mappings.items()} == {"identify": 3, "gone": 1, "new": 2}
    assert accounting.mappings["new"].rejected == 1
    assert (
        accounting.rejected_samples[0]["primary_key"] == "3"
        and accounting.rejected_samples[0]["mapping"] == "new"
    )


def test_fanout_settles_completions_that_delivery_returns_meanwhile():
    fanout, _ = _fanout()
    settled: list[list[Completion]] = []
    done = [Completion(MessageRef("0", "identify", ADDED), "delivered")]
    fanout.send([Change(UPDATED, "2", ("2", "Bo"), "bb.2", 2)], lambda *a: done, settled.append)
    assert settled == [done]


# -- settling --------------------------------------------------------------------------------------------------
class _Marks:
    def __init__(self):
        self.failed, self.delete_failed, self.rejected = [], [], []

    def mark_rejected(self, keys):
        self.rejected.extend(keys)

    def mark_failed(self, keys):
        self.failed.extend(keys)

    def mark_delete_failed(self, keys):
        self.delete_failed.extend(keys)


def test_settling_counts_outcomes_and_marks_undelivered_records():
    accounting = SyncAccounting(["identify", "gone"])
    accounting.mappings["identify"].selected = 3
    accounting.mappings["gone"].selected = 1
    marks = _Marks()
    progress = Progress(LOG, 3600, 0.0)
    settle = Settler(accounting, marks, progress, lambda: None)
    settle(
        [
            Completion(MessageRef("1", "identify", ADDED, 10), Outcome.DELIVERED),
            Completion(MessageRef("2", "identify", UPDATED, 11), Outcome.FAILED, "HTTP 500"),
            Completion(MessageRef("3", "identify", ADDED), Outcome.REJECTED, "too large"),
            Completion(MessageRef("4", "gone", DELETED), Outcome.FAILED, "HTTP 400"),
        ]
    )
    assert (marks.failed, marks.delete_failed) == (["2"], ["4"])
    assert marks.rejected == [("3", "identify", ADDED)]
    assert settle.failed_cursor_values == [11]
    assert progress.delivered == 1
    assert accounting.messages == {"delivered": 1, "rejected": 1, "failed": 2}
    accounting.reconcile()


def test_settling_stops_a_cancelled_run():
    def cancelled():
        raise SyncCancelled("killed")

    with pytest.raises(SyncCancelled):
        Settler(SyncAccounting([]), _Marks(), Progress(LOG, 1, 0.0), cancelled)([])


# -- commit ----------------------------------------------------------------------------------------------------
def test_commit_is_generation_checked(tmp_path):
    first = _detector(tmp_path, "r1")
    first.detect([Record(("1", "a"), "1")])
    head = _commit(tmp_path, first, None)
    first.close()
    racing = _detector(tmp_path, "r2", head=None)  # started before the first commit
    racing.detect([Record(("1", "b"), "1")])
    with pytest.raises(StateError, match="Another run of this sync committed"):
        _commit(tmp_path, racing, None)
    racing.close()
    saved = json.loads((tmp_path / "state/dag/task/task/HEAD.json").read_text())
    assert saved["generation"] == head.generation == 1
    assert saved["extra"]["destinations"] == {"conn": "dest"}
