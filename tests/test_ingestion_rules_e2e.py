"""
Unify's ingestion rules through real ``dag.test()`` runs against the emulator over HTTP, both engines,
SQLite: each message Segment would accept with 200 and then drop ends as a per-record outcome (rejected,
naming the mapping and the field, in the summary, the report and the sync log) and is never sent; an
Identify over the trait limit is sent in parts, each kept. The emulator applies the same rules, so
``emulator.dropped`` being empty proves nothing was sent that Segment would lose (``docs/mappings.md``,
"What Segment drops after answering 200").
"""

from __future__ import annotations

import json

import pytest

pytest.register_assert_rewrite("reliability_support")
from reliability_support import DagHarness, create_customers  # noqa: E402

from airflow_provider_segment_profiles.actions.ingestion_limits import MAX_IDENTIFY_TRAITS  # noqa: E402

pytest_plugins = ["reliability_support"]
pytestmark = pytest.mark.airflow_db

RECORDS = 5
#: Columns c0 .. c349 of the wide model (SQLite allows 2,000 result columns).
WIDE = 350


@pytest.fixture(params=["worker", "warehouse"])
def harness(request, rel_harness: DagHarness) -> DagHarness:
    h = rel_harness
    wh = h.warehouse
    create_customers(wh, range(1, RECORDS + 1))
    columns = ", ".join(f"plan AS c{i}" for i in range(WIDE))
    h.operator.update(
        sql=(
            f"SELECT id, plan, email, {columns}, '' AS empty, printf('%.501c', 'g') AS long_group, "
            f"printf('%.120c', 'm') AS long_id FROM {wh.t('customers')}"
        ),
        change_detection=request.param,
        max_events_per_second=None,
        max_rejected_fraction=1.0,
        sync_log_table="sync_log",
    )
    return h


def _columns(count: int) -> dict:
    return {f"t{i}": {"column": f"c{i}"} for i in range(count)}


def _report(summary: dict) -> list[dict]:
    path = summary["report_path"].removeprefix("file://")
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


RULES = [
    pytest.param(
        {
            "action": "send_track",
            "fields": {
                "user_id": {"column": "id"},
                "event_name": {"literal": "Wide"},
                "properties": _columns(301),
            },
        },
        "properties",
        "301 properties",
        id="track-301-properties",
    ),
    pytest.param(
        {
            "action": "send_group",
            "fields": {"user_id": {"column": "id"}, "group_id": {"column": "id"}, "traits": _columns(301)},
        },
        "traits",
        "301 traits",
        id="group-301-traits",
    ),
    pytest.param(
        {
            "action": "send_group",
            "fields": {"user_id": {"column": "id"}, "group_id": {"column": "long_group"}},
        },
        "group_id",
        "501 characters",
        id="group-id-501-characters",
    ),
    pytest.param(
        {
            "action": "send_track",
            "fields": {
                "user_id": {"column": "id"},
                "event_name": {"literal": "Grouped"},
                "group_id": {"column": "long_group"},
            },
        },
        "group_id",
        "501 characters",
        id="track-context-group-id-501-characters",
    ),
    pytest.param(
        {
            "action": "send_identify",
            "fields": {"user_id": {"column": "id"}, "message_id": {"column": "long_id"}},
        },
        "message_id",
        "",
        id="message-id-120-characters",
    ),
    pytest.param(
        {
            "action": "send_subscriptions",
            "fields": {
                "user_id": {"column": "id"},
                "email": {"column": "email"},
                "email_subscription_status": {"literal": "subscribed"},
                "traits": _columns(300),
            },
        },
        "traits",
        "cannot be split",
        id="subscriptions-300-traits",
    ),
]


@pytest.mark.parametrize("mapping,field,reason", RULES)
def test_a_message_segment_would_drop_is_rejected_and_never_sent(harness: DagHarness, mapping, field, reason):
    h = harness
    h.operator["mappings"] = [{"name": "rule", **mapping}]
    run = h.run()
    assert run.state == "success", run.summary
    assert run.sent == []
    assert h.emulator.dropped == []
    assert run.summary["messages"] == {"delivered": 0, "rejected": RECORDS, "failed": 0}
    assert run.summary["records"]["added"] == RECORDS  # every record read has its outcome
    lines = [line for line in _report(run.summary) if line["outcome"] == "rejected"]
    assert sorted(line["primary_key"] for line in lines) == [str(i) for i in range(1, RECORDS + 1)]
    assert {(line["mapping"], line["field"]) for line in lines} == {("rule", field)}
    assert all(reason in line["reason"] for line in lines), lines[0]["reason"]
    logged = h.warehouse.query(
        f"SELECT primary_key, mapping, field, outcome FROM sync_log WHERE run_id = '{run.run_id}'"
    )
    assert sorted(logged) == [(str(i), "rule", field, "rejected") for i in range(1, RECORDS + 1)]

    quiet = h.run()  # still owed, still rejected, still not sent
    assert quiet.sent == [] and h.emulator.dropped == []
    assert quiet.summary["messages"]["rejected"] == RECORDS


def test_an_empty_group_id_rejects_a_group_call_and_leaves_a_track_call_without_one(harness: DagHarness):
    """Segment's actions core removes empty top-level fields before the call is built: a group call then has
    no groupId (required: rejected, never sent), a track call no ``context.groupId`` (sent, and kept)."""
    h = harness
    h.operator["mappings"] = [
        {
            "name": "group",
            "action": "send_group",
            "fields": {"user_id": {"column": "id"}, "group_id": {"column": "empty"}},
        },
        {
            "name": "track",
            "action": "send_track",
            "fields": {
                "user_id": {"column": "id"},
                "event_name": {"literal": "E"},
                "group_id": {"column": "empty"},
            },
        },
    ]
    run = h.run()
    assert h.emulator.dropped == []
    assert [m["type"] for m in run.sent] == ["track"] * RECORDS
    assert all("groupId" not in m["context"] for m in run.sent)
    assert run.summary["mappings"]["group"] == {"delivered": 0, "rejected": RECORDS, "failed": 0}
    assert run.summary["mappings"]["track"] == {"delivered": RECORDS, "rejected": 0, "failed": 0}
    fields = {
        (line["mapping"], line["field"]) for line in _report(run.summary) if line["outcome"] == "rejected"
    }
    assert fields == {("group", "group_id")}


def test_an_identify_over_the_trait_limit_is_sent_in_parts_that_segment_keeps(harness: DagHarness):
    h = harness
    h.operator["mappings"] = [
        {
            "name": "wide",
            "action": "send_identify",
            "fields": {"user_id": {"column": "id"}, "traits": _columns(WIDE)},
        }
    ]
    run = h.run()
    assert run.state == "success", run.summary
    assert h.emulator.dropped == []
    per_user: dict[str, list[dict]] = {}
    for message in run.sent:
        per_user.setdefault(message["userId"], []).append(message)
    assert sorted(per_user) == [str(i) for i in range(1, RECORDS + 1)]
    for parts in per_user.values():
        assert [len(p["traits"]) for p in parts] == [MAX_IDENTIFY_TRAITS, WIDE - MAX_IDENTIFY_TRAITS]
        assert len({p["messageId"] for p in parts}) == 2
        merged = {k: v for p in parts for k, v in p["traits"].items()}
        assert merged == {f"t{i}": "free" for i in range(WIDE)}
    assert run.summary["messages"] == {"delivered": 2 * RECORDS, "rejected": 0, "failed": 0}
    assert h.run().sent == []  # delivered: nothing owed
