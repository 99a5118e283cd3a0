"""
``max_rejected_fraction`` judges the same data the same way in every run: hourly-style ``dag.test()`` runs
over both engines on SQLite, with a record whose message a mapping rejects.

A rejected record comes back every run until its data is fixed (its mapping still owes the message). Judged
against the messages of the run alone, one bad record in 100 was 1% in the first run and 100% in every quiet
run after it, so the same data went from green to red. Now a mapping that sends added records is judged
against the messages the model holds (one per live record); a mapping that sends only updates counts a
rejection once, in the run of the change (``docs/operator.md``, "Thresholds").
"""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("reliability_support")
from reliability_support import DagHarness, create_customers  # noqa: E402

pytest_plugins = ["reliability_support"]
pytestmark = pytest.mark.airflow_db

#: An Identify whose timestamp column is not a date for the records whose plan is 'bad'.
TIMESTAMPED = {
    "name": "identify",
    "action": "send_identify",
    "fields": {
        "user_id": {"column": "id"},
        "traits": {"plan": {"column": "plan"}},
        "timestamp": {"column": "ts"},
    },
}
#: A Track that fires on updates only, with the same bad timestamp.
PLAN_CHANGED = {
    "name": "plan_changed",
    "action": "send_track",
    "trigger": "updated",
    "fields": {
        "user_id": {"column": "id"},
        "event_name": {"literal": "Plan Changed"},
        "properties": {"plan": {"column": "plan"}},
        "timestamp": {"column": "ts"},
    },
}


@pytest.fixture(params=["worker", "warehouse"])
def harness(request, rel_harness: DagHarness) -> DagHarness:
    h = rel_harness
    wh = h.warehouse
    create_customers(wh, range(1, 101))
    h.operator.update(
        sql=f"SELECT id, plan, CASE WHEN plan = 'bad' THEN 'not a date' END AS ts FROM {wh.t('customers')}",
        mappings=[TIMESTAMPED],
        change_detection=request.param,
        max_events_per_second=None,
    )
    return h


def _set_plan(h: DagHarness, plan: str, ids: range | list[int]) -> None:
    wh = h.warehouse
    wh.execute(f"UPDATE {wh.t('customers')} SET plan = '{plan}' WHERE id IN ({', '.join(map(str, ids))})")


def test_one_bad_record_in_100_is_green_in_every_run(harness: DagHarness):
    h = harness
    _set_plan(h, "bad", [7])
    first = h.run()
    assert first.state == "success", first.summary
    assert first.summary["messages"] == {"delivered": 99, "rejected": 1, "failed": 0}
    assert (first.summary["rejected_judged"], first.summary["messages_in_model"]) == (1, 100)

    quiet = h.run()  # nothing changed: only the rejected record is built again, and rejected again
    assert quiet.state == "success", quiet.summary
    assert quiet.summary["messages"] == {"delivered": 0, "rejected": 1, "failed": 0}
    assert quiet.summary["rejected_carried_over"] == 1
    assert (quiet.summary["rejected_judged"], quiet.summary["messages_in_model"]) == (1, 100)

    _set_plan(h, "pro", range(20, 25))
    busy = h.run()
    assert busy.state == "success", busy.summary
    assert busy.summary["messages"] == {"delivered": 5, "rejected": 1, "failed": 0}
    assert (busy.summary["rejected_judged"], busy.summary["messages_in_model"]) == (1, 100)


def test_too_many_bad_records_fail_every_run_not_only_the_first(harness: DagHarness):
    h = harness
    _set_plan(h, "bad", range(1, 21))  # 20% > the default 10%
    first = h.run()
    assert first.state == "failed" and first.try_number == 1, first.summary
    assert first.summary["messages"]["delivered"] == 80  # committed despite the failure

    quiet = h.run()  # the same data: the same verdict, and still no retry
    assert quiet.state == "failed" and quiet.try_number == 1, quiet.summary
    assert quiet.summary["messages"] == {"delivered": 0, "rejected": 20, "failed": 0}
    assert (quiet.summary["rejected_judged"], quiet.summary["messages_in_model"]) == (20, 100)

    _set_plan(h, "pro", range(1, 21))  # fixed: every owed message is delivered, and the run is green
    fixed = h.run()
    assert fixed.state == "success", fixed.summary
    assert fixed.summary["messages"] == {"delivered": 20, "rejected": 0, "failed": 0}


def test_an_update_only_mapping_counts_a_rejection_once(harness: DagHarness):
    h = harness
    h.operator["mappings"] = [PLAN_CHANGED]
    assert h.run().state == "success"  # every record is added: nothing for an update-only mapping

    _set_plan(h, "bad", [3])  # one change, rejected by the track mapping: 1 of its 1 message this run
    changed = h.run()
    assert changed.state == "failed" and changed.try_number == 1, changed.summary
    assert changed.summary["mappings"]["plan_changed"] == {"delivered": 0, "rejected": 1, "failed": 0}

    quiet = h.run()  # the event was judged in the run of its change; it is still owed and still rejected
    assert quiet.summary["mappings"]["plan_changed"]["rejected"] == 1
    assert quiet.summary["rejected_carried_over"] == 1
    assert quiet.state == "success", quiet.summary
    assert quiet.summary["rejected_judged"] == 0
