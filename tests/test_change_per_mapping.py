"""A change belongs to a mapping: an updated record is sent only through the mappings whose own inputs
(the columns they read, their definition) changed; ``added`` and ``deleted`` stay per record.

Unit tests of the decision (checksums, the worker engine across committed runs, the fan-out) and a killed
try retried with per-mapping changes. The DAG runs over SQLite and PostgreSQL are in ``test_sync_e2e.py``.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

pytest.register_assert_rewrite("reliability_support")
from reliability_support import (  # noqa: E402
    DagHarness,
    assert_segment_matches,
    create_customers,
    warehouse_customers,
)
from test_reliability_killed_worker import assert_all_planned, journal_files, sigkill_mid_send  # noqa: E402

from airflow_provider_segment_profiles.actions import compile_mappings  # noqa: E402
from airflow_provider_segment_profiles.pipeline.accounting import SyncAccounting  # noqa: E402
from airflow_provider_segment_profiles.pipeline.commit import commit_state  # noqa: E402
from airflow_provider_segment_profiles.pipeline.config import SyncConfig  # noqa: E402
from airflow_provider_segment_profiles.pipeline.detection.checksum import (  # noqa: E402
    MappingChecksums,
    changed_among,
)
from airflow_provider_segment_profiles.pipeline.detection.checksum import (  # noqa: E402
    mapping_input_columns as _input_columns,
)
from airflow_provider_segment_profiles.pipeline.detection.worker import WorkerChangeDetector  # noqa: E402
from airflow_provider_segment_profiles.pipeline.fanout import MessageFanout  # noqa: E402
from airflow_provider_segment_profiles.pipeline.modes import get_mode  # noqa: E402
from airflow_provider_segment_profiles.pipeline.records import Change, ChangeKind, Record  # noqa: E402
from airflow_provider_segment_profiles.state.location import StateLocation  # noqa: E402

pytest_plugins = ["reliability_support"]
LOG = logging.getLogger("test_change_per_mapping")
ADDED, UPDATED, DELETED, UNCHANGED = (
    ChangeKind.ADDED,
    ChangeKind.UPDATED,
    ChangeKind.DELETED,
    ChangeKind.UNCHANGED,
)
COLUMNS = ["id", "email", "plan", "name"]


def mappings(event_name: str = "Plan Changed", extra: bool = False) -> list[dict]:
    defined = [
        {
            "name": "identify",
            "action": "send_identify",
            "fields": {
                "user_id": {"column": "id"},
                "traits": {"email": {"column": "email"}, "plan": {"column": "plan"}},
            },
        },
        {
            "name": "plan_changed",
            "action": "send_track",
            "trigger": "updated",
            "fields": {
                "user_id": {"column": "id"},
                "event_name": event_name,
                "properties": {"plan": {"column": "plan"}},
            },
        },
        {
            "name": "signed_up",
            "action": "send_track",
            "trigger": "added",
            "fields": {"user_id": {"column": "id"}, "event_name": "Signed Up"},
        },
    ]
    if extra:
        defined.append(
            {
                "name": "email_track",
                "action": "send_track",
                "trigger": "updated",
                "fields": {
                    "user_id": {"column": "id"},
                    "event_name": "Email",
                    "properties": {"e": {"column": "email"}},
                },
            }
        )
    return defined


# -- checksums ----------------------------------------------------------------------------------------------
def test_mapping_checksums_cover_each_mappings_own_columns_and_compare_as_a_set():
    checksums = MappingChecksums([("a", "fa", [1]), ("b", "fb", [2]), ("c", "fc", [])])
    before = checksums(("1", "x@e", "free"))
    held = b"".join(before)
    assert len(held) == 24
    assert changed_among(checksums.names, checksums(("1", "y@e", "free")), held) == (
        ("a",),
        b"".join(before[1:]),
    )
    assert changed_among(checksums.names, checksums(("1", "y@e", "pro")), held)[0] == ("a", "b")
    assert changed_among(checksums.names, before, held) == ((), held)
    # Order does not matter: the same mappings listed the other way round find nothing changed.
    reordered = MappingChecksums([("c", "fc", []), ("b", "fb", [2]), ("a", "fa", [1])])
    assert changed_among(reordered.names, reordered(("1", "x@e", "free")), held)[0] == ()
    # Another fingerprint (a changed literal) is another checksum over the same values.
    edited = MappingChecksums([("a", "fa", [1]), ("b", "fb-edited", [2]), ("c", "fc", [])])
    assert changed_among(edited.names, edited(("1", "x@e", "free")), held)[0] == ("b",)


def test_a_mapping_reads_its_named_columns_and_what_columns_star_leaves_after_exclude():
    (star, named) = compile_mappings(
        [
            {
                "name": "star",
                "action": "send_identify",
                "fields": {
                    "user_id": {"column": "id"},
                    "traits": {"columns": "*", "exclude": ["id", "name"]},
                },
            },
            {
                "name": "named",
                "action": "send_track",
                "fields": {"user_id": {"column": "id"}, "event_name": "E"},
            },
        ],
        sync_mode="diff",
        primary_key="id",
    )
    assert _input_columns(star, COLUMNS) == [0, 1, 2]  # id by name; email and plan through "*"; not name
    assert _input_columns(named, COLUMNS) == [0]  # the event name is a literal: part of the fingerprint


# -- the worker engine across committed runs ---------------------------------------------------------------
def _detector(tmp_path: Path, run: str, head, defined: list[dict]) -> WorkerChangeDetector:
    workdir = tmp_path / run
    workdir.mkdir()
    compiled = compile_mappings(defined, sync_mode="diff", primary_key="id")
    detector = WorkerChangeDetector(
        mode=get_mode("diff"),
        location=StateLocation((tmp_path / "state").as_uri(), "dag", "task", -1),
        previous=head,
        head=head,
        workdir=workdir,
        outcomes=SyncAccounting([m.name for m in compiled]),
        primary_key="id",
        journal_tag=run,
        log=LOG,
        mappings=compiled,
    )
    used = sorted({COLUMNS.index(c) for m in compiled for c in m.columns})
    detector.bind(COLUMNS, used, "|".join(m.fingerprint for m in compiled))
    return detector


def _commit(tmp_path: Path, detector: WorkerChangeDetector, head):
    return commit_state(
        config=SyncConfig(sql="", primary_key="id", mappings=[], sync_mode="diff"),
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


def _run(tmp_path, head, rows, defined=None, failed=()):
    """One detect-and-commit run; ``failed`` keys had a message that was not delivered."""
    detector = _detector(tmp_path, f"r{(head.generation if head else 0) + 1}", head, defined or mappings())
    changes = detector.detect([Record(row, row[0]) for row in rows])
    detector.mark_failed(failed)
    head = _commit(tmp_path, detector, head)
    detector.close()
    return head, {c.key: (c.kind, c.changed_mappings, c.token) for c in changes}


ROWS = [("1", "a@e", "free", "Ann"), ("2", "b@e", "free", "Bo"), ("3", "c@e", "free", "Cy")]


def test_an_updated_record_names_the_mappings_whose_inputs_changed(tmp_path):
    head, changes = _run(tmp_path, None, ROWS)
    assert {key: kind for key, (kind, _, _) in changes.items()} == {"1": ADDED, "2": ADDED, "3": ADDED}
    assert all(changed is None for _, changed, _ in changes.values())  # added: every mapping

    rows = [("1", "new@e", "free", "Ann"), ("2", "b@e", "pro", "Bo"), ("3", "c@e", "free", "Renamed")]
    head, changes = _run(tmp_path, head, rows)
    assert changes["1"][:2] == (UPDATED, ("identify",))
    assert changes["2"][:2] == (UPDATED, ("identify", "plan_changed"))
    assert "3" not in changes  # 'name' is read by no mapping
    assert changes["1"][2].endswith(".2") and changes["2"][2].endswith(".2")

    # Unchanged records kept their mapping checksums: the next change is told apart again.
    rows = [("1", "new@e", "pro", "Ann"), ("2", "b@e", "pro", "Bo"), ("3", "c2@e", "free", "Renamed")]
    _, changes = _run(tmp_path, head, rows)
    assert changes["1"][:2] == (UPDATED, ("identify", "plan_changed"))
    assert changes["3"][:2] == (UPDATED, ("identify",))
    assert "2" not in changes


def test_a_failed_record_sends_again_the_mappings_that_sent_under_the_same_ids(tmp_path):
    head, _ = _run(tmp_path, None, ROWS)
    rows = [("1", "a@e", "pro", "Ann"), *ROWS[1:]]
    head, failed_run = _run(tmp_path, head, rows, failed=["1"])
    assert failed_run["1"][:2] == (UPDATED, ("identify", "plan_changed"))
    head, retry = _run(tmp_path, head, rows)
    assert retry["1"] == failed_run["1"]  # same mappings, same token: the same message ids

    # A failed message whose value then goes back: Segment may hold either value for the mappings that sent.
    head, failed_run = _run(tmp_path, head, [("1", "x@e", "pro", "Ann"), *ROWS[1:]], failed=["1"])
    assert failed_run["1"][1] == ("identify",)
    _, back = _run(tmp_path, head, rows)
    assert back["1"][:2] == (UPDATED, None)  # uncertain and back to what state holds: every mapping


def test_adding_removing_and_editing_mappings_touches_only_those_mappings(tmp_path):
    head, _ = _run(tmp_path, None, ROWS)
    # A new mapping: every record's whole checksum changed, but only the new mapping has inputs to send.
    head, changes = _run(tmp_path, head, ROWS, defined=mappings(extra=True))
    assert {key: changed for key, (_, changed, _) in changes.items()} == {k: ("email_track",) for k in "123"}
    # Removed again: no mapping's inputs changed, so nothing is sent and the records count as unchanged.
    head, changes = _run(tmp_path, head, ROWS)
    assert changes == {}
    # A literal edited (the event name): that mapping's fingerprint, so that mapping alone, changes.
    _, changes = _run(tmp_path, head, ROWS, defined=mappings(event_name="Plan Updated"))
    assert {key: changed for key, (_, changed, _) in changes.items()} == {k: ("plan_changed",) for k in "123"}


def _strip_mapping_checksums(snapshot: Path) -> None:
    db = sqlite3.connect(snapshot, isolation_level=None)
    db.executescript(
        """
        CREATE TABLE old (pk TEXT PRIMARY KEY, checksum INTEGER, cursor, version INTEGER) WITHOUT ROWID;
        INSERT INTO old SELECT pk, checksum, cursor, version FROM snapshot;
        DROP TABLE snapshot;
        ALTER TABLE old RENAME TO snapshot;
        """
    )
    db.close()


def test_a_snapshot_without_mapping_checksums_is_upgraded_in_place(tmp_path):
    head, _ = _run(tmp_path, None, ROWS)
    snapshot = tmp_path / "state/dag/task/task/snapshots" / head.snapshot
    _strip_mapping_checksums(snapshot)
    rows = [("1", "new@e", "free", "Ann"), *ROWS[1:]]
    head, changes = _run(tmp_path, head, rows)
    assert {key: changed for key, (_, changed, _) in changes.items()} == {"1": None}  # unknown: every mapping
    upgraded = sqlite3.connect(tmp_path / "state/dag/task/task/snapshots" / head.snapshot)
    assert upgraded.execute("SELECT count(*) FROM snapshot WHERE mapping_checksums IS NULL").fetchone() == (
        0,
    )
    upgraded.close()
    _, changes = _run(tmp_path, head, [("1", "new@e", "free", "Ann"), ("2", "b2@e", "free", "Bo"), ROWS[2]])
    assert {key: changed for key, (_, changed, _) in changes.items()} == {"2": ("identify",)}


# -- the fan-out -------------------------------------------------------------------------------------------
def _fanout() -> tuple[MessageFanout, SyncAccounting]:
    compiled = compile_mappings(mappings(), sync_mode="diff", primary_key="id")
    builders = {m.name: m.bind(COLUMNS) for m in compiled}
    accounting = SyncAccounting([m.name for m in compiled])
    spaces = {m.name: "space" for m in compiled}
    return MessageFanout(compiled, builders, spaces, get_mode("diff"), accounting), accounting


def _sent(changes: list[Change]) -> list[tuple[str, str]]:
    fanout, _ = _fanout()
    sent: list[tuple[str, str]] = []
    fanout.send(changes, lambda space, encoded, ref: sent.append((ref.key, ref.mapping)) or [], None)
    return sent


ROW = ("1", "a@e", "pro", "Ann")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (Change(UPDATED, "1", ROW, "t.2", 2, None, (), ("identify",)), ["identify"]),
        (Change(UPDATED, "1", ROW, "t.2", 2, None, (), ("plan_changed",)), ["plan_changed"]),
        (
            Change(UPDATED, "1", ROW, "t.2", 2, None, (), ("identify", "plan_changed")),
            ["identify", "plan_changed"],
        ),
        (Change(UPDATED, "1", ROW, "t.2", 2), ["identify", "plan_changed"]),  # None: every mapping
        # The trigger still decides: 'signed_up' (added) never sends an update, whatever changed.
        (Change(UPDATED, "1", ROW, "t.2", 2, None, (), ("signed_up", "identify")), ["identify"]),
        (Change(ADDED, "1", ROW, "t.1", 1), ["identify", "signed_up"]),
        # Pending (earlier-rejected) mappings are built again even when their inputs did not change.
        (
            Change(UPDATED, "1", ROW, "t.2", 2, None, ("plan_changed",), ("identify",)),
            ["identify", "plan_changed"],
        ),
        (Change(UNCHANGED, "1", ROW, "t.1", 1, None, ("identify",)), ["identify"]),
    ],
)
def test_fanout_applies_changed_mappings_with_the_trigger_and_pending_mappings(change, expected):
    assert _sent([change]) == [("1", name) for name in expected]


def test_summary_counts_per_mapping_the_updated_records_whose_inputs_changed():
    accounting = SyncAccounting(["identify", "plan_changed", "signed_up"])
    accounting.updating_mappings = frozenset({"identify", "plan_changed"})
    accounting.count_mapping_changes(
        [
            Change(UPDATED, "1", ROW, "t", 2, None, (), ("identify",)),
            Change(UPDATED, "2", ROW, "t", 2, None, (), ("identify", "plan_changed")),
            Change(UPDATED, "3", ROW, "t", 2),  # not told apart: counts for every mapping that sends updates
            Change(ADDED, "4", ROW, "t", 1),
        ]
    )
    assert accounting.summary()["mapping_changes"] == {"identify": 3, "plan_changed": 2, "signed_up": 0}


# -- a killed try, retried ------------------------------------------------------------------------------------
def test_sigkill_mid_send_then_retry_resends_only_changed_mappings_under_the_same_ids(
    rel_harness: DagHarness, tmp_path: Path
):
    h = rel_harness
    h.operator.update(
        batch_size=5,
        max_requests_in_flight=1,
        mappings=[
            {
                "name": "identify",
                "action": "send_identify",
                "fields": {"user_id": {"column": "id"}, "traits": {"columns": "*", "exclude": ["id"]}},
            },
            {
                "name": "plan_changed",
                "action": "send_track",
                "trigger": "updated",
                "fields": {
                    "user_id": {"column": "id"},
                    "event_name": "Plan Changed",
                    "properties": {"plan": {"column": "plan"}},
                },
            },
        ],
    )
    wh = h.warehouse
    create_customers(wh, range(1, 61))
    assert h.run().state == "success"
    wh.execute(f"UPDATE {wh.t('customers')} SET email = 'new-' || email WHERE id <= 30")
    wh.execute(f"UPDATE {wh.t('customers')} SET plan = 'pro' WHERE id > 30")
    planned = {m["messageId"]: m for m in h.plan()}
    tracks = sorted(int(m["userId"]) for m in planned.values() if m.get("event") == "Plan Changed")
    assert tracks == list(range(31, 61))  # the email changes send no Plan Changed
    assert len(planned) == 60 + 30

    head_before = h.head()
    day, killed_sent = sigkill_mid_send(h, tmp_path, after_messages=30)
    assert 30 <= len(killed_sent) < len(planned)
    assert_all_planned(killed_sent, planned)
    assert h.head() == head_before and journal_files(h)

    retry = h.run(logical_date=day)
    assert retry.state == "success"
    assert_all_planned(retry.sent, planned)
    assert {m["messageId"] for m in retry.sent} == set(planned)  # the killed try's ones under the same ids
    assert retry.summary["mapping_changes"] == {"identify": 60, "plan_changed": 30}
    assert h.run().sent == []
    assert_segment_matches(
        [m for m in h.emulator.messages if m["type"] == "identify"], warehouse_customers(h.warehouse)
    )
