"""
The outcome protocol (``pipeline/outcomes.py``): every stage reports through an ``OutcomeSink``, the
accounting and the sync log each implement it, ``OutcomeSinks`` hands every outcome to both; and the named
records around it (``Rejection``, the snapshot's ``Lookup`` and ``Certainty``).
"""

from __future__ import annotations

import inspect
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_segment_profiles.actions import compile_mappings
from airflow_provider_segment_profiles.delivery.dispatcher import Completion
from airflow_provider_segment_profiles.pipeline.accounting import SyncAccounting
from airflow_provider_segment_profiles.pipeline.fanout import MessageFanout
from airflow_provider_segment_profiles.pipeline.modes import get_mode
from airflow_provider_segment_profiles.pipeline.outcomes import BuiltOutcome, OutcomeSink, OutcomeSinks
from airflow_provider_segment_profiles.pipeline.records import (
    Change,
    ChangeKind,
    MessageRef,
    Outcome,
    Record,
    Rejection,
)
from airflow_provider_segment_profiles.pipeline.settle import Progress, Settler
from airflow_provider_segment_profiles.pipeline.source import RecordSource
from airflow_provider_segment_profiles.pipeline.sync_log import INVALID_VALUE, SyncLog
from airflow_provider_segment_profiles.state.snapshot import (
    MAPPINGS_UNCHANGED,
    Certainty,
    MappingLookup,
    SnapshotStore,
)

LOG = logging.getLogger("test_outcome_sinks")
ADDED, UPDATED, DELETED = ChangeKind.ADDED, ChangeKind.UPDATED, ChangeKind.DELETED
#: The protocol's methods, by name.
EVENTS = sorted(name for name in vars(OutcomeSink) if not name.startswith("_"))


class Recorder:
    """An OutcomeSink that only records what it is told, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Any:
        if name not in EVENTS:
            raise AttributeError(name)
        return lambda *args, **kwargs: self.events.append((name, *args, *sorted(kwargs.items())))

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [event[1:] for event in self.events if event[0] == name]


def _sync_log(tmp_path: Path) -> SyncLog:
    class _Hook:
        dialect_name = "sqlite"

    return SyncLog(
        _Hook(), "sync_log", dag_id="d", task_id="t", map_index=-1, run_id="r", try_number=1, log=LOG
    )


# -- the protocol --------------------------------------------------------------------------------------------
def test_the_protocol_names_each_outcome_once():
    assert EVENTS == ["classified", "message", "read", "reject_record", "selected", "settled", "warn"]


@pytest.mark.parametrize("sink", [SyncAccounting, SyncLog, OutcomeSinks])
def test_every_sink_takes_every_outcome_with_the_protocols_parameters(sink):
    for name in EVENTS:
        wanted = list(inspect.signature(getattr(OutcomeSink, name)).parameters)
        given = inspect.signature(getattr(sink, name)).parameters
        if any(p.kind is p.VAR_POSITIONAL for p in given.values()):
            continue  # the sync log ignores it, whatever it is given
        assert list(given) == wanted, (sink.__name__, name)


def test_outcome_sinks_hand_every_outcome_to_every_sink_in_order():
    first, second = Recorder(), Recorder()
    sinks = OutcomeSinks([first, second])
    completions = [Completion(MessageRef("1", "m", ADDED), Outcome.DELIVERED)]
    sinks.read(3)
    sinks.classified(ADDED, 2)
    sinks.reject_record(None, "NULL", "id")
    sinks.selected("m", 4)
    ended = BuiltOutcome("m", Outcome.REJECTED, "2", UPDATED, "bad", "traits.email", carried_over=True)
    sinks.message(ended)
    sinks.settled(completions)
    sinks.warn("m", "3", ["cut"])
    expected = [
        ("read", 3),
        ("classified", ADDED, 2),
        ("reject_record", None, "NULL", "id"),
        ("selected", "m", 4),
        ("message", ended),
        ("settled", completions),
        ("warn", "m", "3", ["cut"]),
    ]
    assert first.events == expected and second.events == expected


# -- the accounting as a sink ----------------------------------------------------------------------------------
def test_the_accounting_counts_what_the_sink_is_told_and_reconciles():
    accounting = SyncAccounting(["m"])
    accounting.read(4)
    accounting.classified(ADDED, 2)
    accounting.classified(UPDATED, 0)
    accounting.classified(DELETED, 1)
    accounting.reject_record("9", "duplicate", "id")
    accounting.classified(ChangeKind.UNCHANGED, 1)
    accounting.selected("m", 3)
    accounting.message(BuiltOutcome("m", Outcome.REJECTED, "1", ADDED, "bad", "traits.email", True))
    accounting.message(BuiltOutcome("m", Outcome.SKIPPED, "2", ADDED, "nothing to send"))
    accounting.settled([Completion(MessageRef("3", "m", DELETED), Outcome.DELIVERED)])
    accounting.warn("m", "1", ["cut", "dropped"])
    accounting.reconcile()
    summary = accounting.summary()
    assert summary["rows_read"] == 4
    assert summary["records"] == {"added": 2, "updated": 0, "deleted": 1, "unchanged": 1, "rejected": 1}
    assert summary["mappings"] == {"m": {"delivered": 1, "rejected": 1, "failed": 0}}
    assert summary["skipped"] == {"total": 1, "mappings": {"m": 1}}
    assert summary["rejected_carried_over"] == 1 and accounting.mappings["m"].rejected_carried_over == 1
    assert summary["warnings"] == 2
    assert accounting.problems_reported == 5  # the record, the rejected and skipped messages, 2 warnings


def test_the_accounting_finds_a_selected_message_without_an_outcome():
    accounting = SyncAccounting(["m"])
    accounting.selected("m", 2)
    accounting.settled([Completion(MessageRef("3", "m", ADDED), Outcome.FAILED, "HTTP 500")])
    with pytest.raises(Exception, match="selected 2 != delivered"):
        accounting.reconcile()


# -- the sync log as a sink -----------------------------------------------------------------------------------
def test_the_sync_log_keeps_message_outcomes_only_and_never_a_rejections_wording(tmp_path):
    log = _sync_log(tmp_path)
    log.read(5)
    log.classified(ADDED, 5)
    log.reject_record(None, "NULL", "id")
    log.selected("m", 3)
    log.warn("m", "1", ["cut"])
    assert log.rows == 0
    log.message(BuiltOutcome("m", Outcome.REJECTED, "1", ADDED, "'ann@' is not an email", "traits.email"))
    log.message(BuiltOutcome("m", Outcome.SKIPPED, "2", UPDATED, "no trait changed"))
    log.settled([Completion(MessageRef("3", "m", DELETED, None, "id-3"), Outcome.FAILED, "HTTP 500")])
    assert [row[:7] for row in log._rows] == [
        ("m", "1", "added", "rejected", INVALID_VALUE, "traits.email", None),
        ("m", "2", "updated", "skipped", "no trait changed", None, None),
        ("m", "3", "deleted", "failed", "HTTP 500", None, "id-3"),
    ]
    log.close()


# -- the stages report through the sink alone -----------------------------------------------------------------
#: An Identify of every change, and a Track of added records whose user id is the (nullable) name.
MAPPINGS = [
    {"name": "identify", "action": "send_identify", "fields": {"user_id": {"column": "id"}}},
    {"name": "new", "action": "send_track", "trigger": "added", "fields": {"event_name": "New"}},
]
MAPPINGS[1]["fields"]["user_id"] = {"column": "name"}


def _fanout(sink: Any, message_ids: bool = False) -> MessageFanout:
    compiled = compile_mappings(MAPPINGS, sync_mode="diff", primary_key="id")
    builders = {m.name: m.bind(["id", "name"]) for m in compiled}
    spaces = {"identify": "a", "new": "a"}
    return MessageFanout(compiled, builders, spaces, get_mode("diff"), sink, message_ids=message_ids)


def test_message_building_reports_selections_once_per_chunk_and_rejections_by_name():
    sink = Recorder()
    fanout = _fanout(sink)
    refs: list[MessageRef] = []
    changes = [
        Change(ADDED, "1", ("1", "Ann"), "aa.1", 1),
        Change(ADDED, "3", ("3", None), "cc.1", 1, pending=("new",)),  # 'new' rejects a NULL user_id
        Change(UPDATED, "2", ("2", "Bo"), "bb.2", 2),
    ]
    fanout.send(changes, lambda space, encoded, ref: refs.append(ref) or [], lambda done: None)
    assert sink.of("selected") == [("identify", 3), ("new", 2)]
    ((ended,),) = sink.of("message")
    assert ended._replace(reason="") == BuiltOutcome(
        "new", Outcome.REJECTED, "3", ADDED, "", "user_id, anonymous_id", carried_over=True
    )
    assert fanout.take_rejected() == [Rejection("3", "new", ADDED)]
    assert [ref.message_id for ref in refs] == [None] * 4  # no sync log: refs carry no id


def test_message_building_gives_refs_their_message_ids_when_asked():
    refs: list[MessageRef] = []
    _fanout(Recorder(), message_ids=True).send(
        [Change(ADDED, "1", ("1", "Ann"), "aa.1", 1)], lambda s, e, ref: refs.append(ref) or [], None
    )
    assert all(ref.message_id for ref in refs) and len(refs) == 2


def test_a_rejection_unpacks_as_the_warehouse_engine_reads_it():
    rejection = Rejection("7", "identify", UPDATED)
    for key, _mapping, _kind in [rejection]:
        assert key == "7"
    assert rejection == ("7", "identify", UPDATED) and rejection.mapping == "identify"


class _Marks:
    def __init__(self) -> None:
        self.rejected: list[Rejection] = []
        self.failed: list[str] = []

    def mark_rejected(self, rejections):
        self.rejected.extend(rejections)

    def mark_failed(self, keys):
        self.failed.extend(keys)

    def mark_delete_failed(self, keys):
        raise AssertionError("no delete failed")


def test_settling_hands_each_list_to_the_sink_once_and_marks_by_name():
    sink, marks = Recorder(), _Marks()
    progress = Progress(LOG, 3600, 0.0)
    completions = [
        Completion(MessageRef("1", "identify", ADDED), Outcome.DELIVERED),
        Completion(MessageRef("2", "identify", UPDATED, 11), Outcome.FAILED, "HTTP 500"),
        Completion(MessageRef("3", "new", ADDED), Outcome.REJECTED, "too large"),
    ]
    settle = Settler(sink, marks, progress, lambda: None)
    settle(completions)
    assert sink.events == [("settled", completions)]
    assert marks.rejected == [Rejection("3", "new", ADDED)] and marks.failed == ["2"]
    assert progress.delivered == 1 and settle.failed_cursor_values == [11]


def test_the_source_reports_rows_read_and_rejected_records(tmp_path, monkeypatch):
    from airflow.providers.sqlite.hooks.sqlite import SqliteHook

    path = tmp_path / "wh.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE m (id, name)")
        conn.executemany("INSERT INTO m VALUES (?, ?)", [(1, "a"), (None, "b"), (1, "c"), (2, "d")])
    monkeypatch.setenv("AIRFLOW_CONN_SINKS", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    sink = Recorder()
    source = RecordSource(
        SqliteHook(sqlite_conn_id="sinks"),
        "SELECT * FROM m",
        None,
        primary_key="id",
        cursor_column=None,
        outcomes=sink,
        fetch_size=3,
    )
    source.open()
    records = [record for chunk in source.chunks() for record in chunk]
    source.close()
    assert [record.key for record in records] == ["1", "2"]
    assert sink.of("read") == [(3,), (1,)] and source.rows_read == 4
    assert [(key, field) for key, _reason, field in sink.of("reject_record")] == [(None, "id"), ("1", "id")]
    assert "(row 2 of the result)" in sink.of("reject_record")[0][1]


# -- the snapshot's lookup ------------------------------------------------------------------------------------
def test_a_lookup_names_its_fields_and_a_pending_record_is_certainty_pending(tmp_path):
    previous = tmp_path / "previous.sqlite"
    with sqlite3.connect(previous) as db:
        db.executescript(
            """
            CREATE TABLE snapshot (pk TEXT PRIMARY KEY, checksum INTEGER, cursor, version INTEGER,
                mapping_checksums BLOB);
            CREATE TABLE uncertain (pk TEXT PRIMARY KEY);
            CREATE TABLE tombstone (pk TEXT PRIMARY KEY, version INTEGER, deleted_at INTEGER);
            CREATE TABLE pending (pk TEXT, mapping TEXT, kind TEXT, PRIMARY KEY (pk, mapping));
            INSERT INTO snapshot VALUES ('a', 1, NULL, 1, x'00'), ('b', 2, NULL, 3, NULL), ('c', 3, NULL, 1, x'01');
            INSERT INTO uncertain VALUES ('b');
            INSERT INTO pending VALUES ('c', 'identify', 'added');
            """
        )
    store = SnapshotStore(tmp_path, previous, per_mapping=True)
    a, b, c, new = store.look_up([("a", 1, None), ("b", 2, None), ("c", 3, None), ("n", 4, None)])
    assert all(type(lookup) is MappingLookup for lookup in (a, b, c, new))
    assert (a.held, a.known, a.version, a.uncertain, a.held_mappings) == (1, 1, 1, 0, MAPPINGS_UNCHANGED)
    assert a.uncertain == Certainty.CERTAIN and not a.uncertain
    assert b.uncertain == Certainty.UNCERTAIN and b.version == 4  # sent again under the next version
    assert c.uncertain == Certainty.PENDING
    assert store.pending_messages(["c"]) == {"c": [("identify", "added")]}
    assert (new.held, new.known, new.uncertain) == (None, 0, Certainty.CERTAIN)
    store.add()
    store.close()


def test_the_worker_engine_reads_a_pending_lookup_as_a_retry(tmp_path):
    """End to end through the engine: a record an earlier run rejected comes back for that mapping."""
    from airflow_provider_segment_profiles.pipeline.commit import commit_state
    from airflow_provider_segment_profiles.pipeline.config import SyncConfig
    from airflow_provider_segment_profiles.pipeline.detection.worker import WorkerChangeDetector
    from airflow_provider_segment_profiles.state.location import StateLocation

    location = StateLocation((tmp_path / "state").as_uri(), "dag", "task", -1)

    def detector(run: str, head: Any, sink: Any) -> WorkerChangeDetector:
        (tmp_path / run).mkdir()
        made = WorkerChangeDetector(
            mode=get_mode("diff"),
            location=location,
            previous=head,
            head=head,
            workdir=tmp_path / run,
            outcomes=sink,
            primary_key="id",
            journal_tag=run,
            log=LOG,
        )
        made.bind(["id", "v"], [1], "seed")
        return made

    first = detector("r1", None, Recorder())
    first.detect([Record(("1", "a"), "1"), Record(("2", "b"), "2")])
    first.mark_rejected([Rejection("2", "identify", ADDED)])
    config = SyncConfig(sql="", primary_key="id", mappings=[], sync_mode="diff")
    head = commit_state(
        config=config,
        location=location,
        head=None,
        detector=first,
        workdir=first.store.workdir,
        watermark=None,
        fingerprint="f",
        messages={},
        destinations={"conn": "dest"},
        run_id="run1",
        try_number=1,
    )
    first.close()
    sink = Recorder()
    second = detector("r2", head, sink)
    (change,) = second.detect([Record(("1", "a"), "1"), Record(("2", "b"), "2")])
    assert (change.kind, change.key, change.pending) == (ChangeKind.UNCHANGED, "2", ("identify",))
    assert sink.of("classified") == [(ChangeKind.UNCHANGED, 2), (ADDED, 0), (UPDATED, 0)]
    assert second.rows_fetched is None  # the run reports the source's rows read
    second.close()
