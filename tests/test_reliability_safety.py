"""
Safe by default, through real ``dag.test()`` runs and the emulator: the mass-delete guard, rejected records
that stay pending until they are delivered, messages with nothing to send, and a task log that says what
happened.
"""

from __future__ import annotations

import re

import pytest

pytest.register_assert_rewrite("reliability_support")
from reliability_support import (  # noqa: E402
    DELETE_EVENT,
    FIGURES,
    IDENTIFY_MAPPING,
    DagHarness,
    assert_segment_matches,
    create_customers,
    insert_customers,
    read_ndjson,
    warehouse_customers,
)

pytest_plugins = ["reliability_support"]
pytestmark = pytest.mark.airflow_db


def _deletes(sent: list[dict]) -> list[str]:
    return sorted(m["userId"] for m in sent if m.get("event") == DELETE_EVENT)


# -- the mass-delete guard ------------------------------------------------------------------------------------
@pytest.mark.parametrize("remaining", [0, 3], ids=["emptied model", "most rows lost upstream"])
def test_delete_guard_holds_a_mass_delete_and_fails_without_retry(rel_harness: DagHarness, capfd, remaining):
    h = rel_harness
    wh = h.warehouse
    create_customers(wh, range(1, 11))
    assert h.run().state == "success"
    wh.execute(f"DELETE FROM {wh.t('customers')} WHERE id > {remaining}")
    insert_customers(wh, [11])
    h.retries = 2
    head_before = h.head()
    capfd.readouterr()

    held = h.run()
    FIGURES.input("delete guard: mass delete held")
    assert held.state == "failed" and held.try_number == 1
    assert _deletes(held.sent) == []  # no delete reached Segment
    assert sorted(m["userId"] for m in held.sent if m["type"] == "identify") == ["11"]  # adds still synced
    assert held.summary["deletes_held"] == {
        "would_delete": 10 - remaining,
        "committed_records": 10,
        "max_deleted_fraction": 0.5,
    }
    assert held.summary["records"]["deleted"] == 0
    assert h.head()["generation"] == head_before["generation"] + 1
    log = capfd.readouterr().out
    assert "AirflowFailException: Delete guard: no delete was sent. To let these deletes through" in log
    assert f"would have deleted {10 - remaining:,} of the 10 records" in log

    again = h.run()  # the records stay in state: still held, not forgotten
    assert again.state == "failed" and _deletes(again.sent) == []

    through = h.run(max_deleted_fraction=None)
    assert through.state == "success"
    assert _deletes(through.sent) == sorted(str(i) for i in range(remaining + 1, 11))
    assert_segment_matches(h.emulator.messages, warehouse_customers(wh))


def test_delete_guard_lets_ordinary_deletes_through(rel_harness: DagHarness):
    h = rel_harness
    wh = h.warehouse
    create_customers(wh, range(1, 11))
    assert h.run().state == "success"
    wh.execute(f"DELETE FROM {wh.t('customers')} WHERE id > 5")  # exactly half: not more than 0.5
    run = h.run()
    FIGURES.input("delete guard: ordinary delete")
    assert run.state == "success" and run.summary["deletes_held"] is None
    assert _deletes(run.sent) == ["10", "6", "7", "8", "9"]


def test_delete_guard_threshold_is_templated(rel_harness: DagHarness):
    h = rel_harness
    wh = h.warehouse
    create_customers(wh, range(1, 5))
    assert h.run().state == "success"
    wh.execute(f"DELETE FROM {wh.t('customers')}")
    run = h.run(max_deleted_fraction="{{ 'None' }}")
    assert run.state == "success"
    assert _deletes(run.sent) == ["1", "2", "3", "4"]


# -- rejected records stay pending ----------------------------------------------------------------------------
TIMESTAMPED = {
    "name": "identify",
    "action": "send_identify",
    "fields": {
        "user_id": {"column": "id"},
        "traits": {"plan": {"column": "plan"}},
        "timestamp": {"column": "ts"},
    },
}


def _bad_timestamp_model(h: DagHarness) -> str:
    return f"SELECT id, plan, CASE WHEN plan = 'bad' THEN 'not a date' END AS ts FROM {h.warehouse.t('customers')}"


def test_a_rejected_record_is_evaluated_again_every_run_until_delivered(rel_harness: DagHarness):
    h = rel_harness
    wh = h.warehouse
    create_customers(wh, range(1, 6))
    wh.execute(f"UPDATE {wh.t('customers')} SET plan = 'bad' WHERE id = 3")
    h.operator.update(sql=_bad_timestamp_model(h), mappings=[TIMESTAMPED], max_rejected_fraction=1.0)

    first = h.run()
    FIGURES.input("rejected record, then fixed")
    assert first.state == "success"
    assert first.summary["messages"] == {"delivered": 4, "rejected": 1, "failed": 0}
    assert first.summary["rejected_carried_over"] == 0

    unchanged = h.run()  # nothing changed in the warehouse: the rejected record is built again
    assert unchanged.sent == []
    assert unchanged.summary["messages"] == {"delivered": 0, "rejected": 1, "failed": 0}
    assert unchanged.summary["rejected_carried_over"] == 1
    assert unchanged.summary["rejected_samples"][0]["primary_key"] == "3"

    wh.execute(f"UPDATE {wh.t('customers')} SET plan = 'pro' WHERE id = 3")
    fixed = h.run()
    assert [m["userId"] for m in fixed.sent] == ["3"]
    assert fixed.summary["messages"] == {"delivered": 1, "rejected": 0, "failed": 0}
    assert h.run().sent == []  # delivered: no longer pending


def test_a_rejected_record_that_leaves_the_model_is_not_pending_any_more(rel_harness: DagHarness):
    h = rel_harness
    wh = h.warehouse
    create_customers(wh, range(1, 6))
    wh.execute(f"UPDATE {wh.t('customers')} SET plan = 'bad' WHERE id = 3")
    h.operator.update(sql=_bad_timestamp_model(h), mappings=[TIMESTAMPED], max_rejected_fraction=1.0)
    assert h.run().summary["messages"]["rejected"] == 1
    wh.execute(f"DELETE FROM {wh.t('customers')} WHERE id = 3")
    gone = h.run()
    assert gone.summary["messages"] == {"delivered": 0, "rejected": 0, "failed": 0}
    assert gone.summary["records"]["deleted"] == 1
    assert h.run().summary["messages"] == {"delivered": 0, "rejected": 0, "failed": 0}


def test_clearing_a_task_failed_on_rejections_does_not_turn_it_green(rel_harness: DagHarness):
    h = rel_harness
    wh = h.warehouse
    create_customers(wh, range(1, 6))
    wh.execute(f"UPDATE {wh.t('customers')} SET plan = 'bad' WHERE id IN (2, 3)")
    h.operator.update(
        sql=_bad_timestamp_model(h), mappings=[TIMESTAMPED]
    )  # default max_rejected_fraction 0.1
    first = h.run()
    assert first.state == "failed"
    assert first.summary["messages"] == {"delivered": 3, "rejected": 2, "failed": 0}
    rerun = h.run()  # what clearing the task does: the same sync again
    FIGURES.input("rejections, then the task cleared")
    assert rerun.state == "failed"
    assert rerun.summary["messages"] == {"delivered": 0, "rejected": 2, "failed": 0}
    assert rerun.summary["rejected_carried_over"] == 2


# -- nothing to send --------------------------------------------------------------------------------------
SUBSCRIPTIONS = {
    "name": "subscriptions",
    "action": "send_subscriptions",
    "fields": {
        "user_id": {"column": "id"},
        "email": {"column": "email"},
        "email_subscription_status": {"column": "status"},
    },
}


def test_a_record_with_nothing_to_send_is_skipped_not_rejected(rel_harness: DagHarness, capfd):
    h = rel_harness
    wh = h.warehouse
    create_customers(wh, range(1, 10))
    h.operator.update(
        sql=f"SELECT id, email, CASE WHEN id % 3 = 0 THEN NULL ELSE 'subscribed' END AS status "
        f"FROM {wh.t('customers')}",
        mappings=[SUBSCRIPTIONS],
    )
    capfd.readouterr()
    run = h.run()
    FIGURES.input("nothing to send (NULL statuses)")
    assert run.state == "success"  # 3 of 9 skipped is not 33% rejected
    assert run.summary["messages"] == {"delivered": 6, "rejected": 0, "failed": 0}
    assert run.summary["skipped"] == {"total": 3, "mappings": {"subscriptions": 3}}
    assert sorted(m["userId"] for m in run.sent) == ["1", "2", "4", "5", "7", "8"]
    report = read_ndjson(run.summary["report_path"])
    assert sorted(r["primary_key"] for r in report if r["outcome"] == "skipped") == ["3", "6", "9"]
    table = capfd.readouterr().out
    assert re.search(r"subscriptions\s+6\s+0\s+0\s+3", table)
    assert h.run().sent == []  # skipped records are synced: nothing pending


# -- the task log -----------------------------------------------------------------------------------------
def test_the_task_log_says_what_happened(rel_harness: DagHarness, capfd):
    h = rel_harness
    wh = h.warehouse
    create_customers(wh, range(1, 1201))
    wh.execute(f"UPDATE {wh.t('customers')} SET plan = 'bad' WHERE id % 100 = 0")
    h.operator.update(
        sql=_bad_timestamp_model(h), mappings=[TIMESTAMPED, IDENTIFY_MAPPING | {"name": "plain"}]
    )
    capfd.readouterr()
    run = h.run()
    FIGURES.input("task log of a healthy first run")
    log = capfd.readouterr().out
    assert run.state == "success"
    assert "XCom not found" not in log
    assert not re.search(r"\[error", log), "a healthy first run logged an error line"
    assert re.search(r"rows read\s+1,200\b", log)
    assert re.search(r"plain\s+1,200\s+0\s+0\s+0", log)
    # the 12 rejections, grouped, with a count and one example key
    assert re.search(
        r"12\s+rejected\s+identify timestamp: .*not a date.* \(e\.g\. primary key '\d+00'\)", log
    )
    assert f"Report of every problem: {run.summary['report_path']}" in log
    assert "Sync state is kept under" in log
    # the table starts on a line of its own: no log prefix before its first row
    assert re.search(r"\n  rows read", log)

    dry = h.run(dry_run=True)
    assert f"Payloads this dry run would send: {dry.summary['dry_run_path']}" in capfd.readouterr().out


def test_only_the_mapping_that_rejected_a_record_builds_it_again(rel_harness: DagHarness):
    h = rel_harness
    wh = h.warehouse
    create_customers(wh, range(1, 6))
    wh.execute(f"UPDATE {wh.t('customers')} SET plan = 'bad' WHERE id = 3")
    plain = {"name": "plain", "action": "send_identify", "fields": {"user_id": {"column": "id"}}}
    h.operator.update(sql=_bad_timestamp_model(h), mappings=[TIMESTAMPED, plain], max_rejected_fraction=1.0)
    first = h.run()
    assert first.summary["mappings"]["plain"]["delivered"] == 5
    assert first.summary["mappings"]["identify"] == {"delivered": 4, "rejected": 1, "failed": 0}
    again = h.run()
    FIGURES.input("rejected by one mapping, delivered by another")
    assert again.sent == []  # 'plain' delivered record 3 already: it is not sent again
    assert again.summary["mappings"]["plain"] == {"delivered": 0, "rejected": 0, "failed": 0}
    assert again.summary["mappings"]["identify"] == {"delivered": 0, "rejected": 1, "failed": 0}
    assert again.summary["rejected_carried_over"] == 1
    assert again.summary["records"]["unchanged"] == 5


# -- full refresh ----------------------------------------------------------------------------------------
def test_a_full_refresh_still_sends_the_deletes_the_old_state_knows(rel_harness: DagHarness):
    """The recovery every state error points to must not forget records deleted meanwhile."""
    h = rel_harness
    wh = h.warehouse
    create_customers(wh, range(1, 11))
    assert h.run().state == "success"
    wh.execute(f"DELETE FROM {wh.t('customers')} WHERE id > 7")
    refreshed = h.run(full_refresh=True)
    FIGURES.input("full refresh with pending deletes")
    assert refreshed.state == "success"
    assert refreshed.summary["records"] == {
        "added": 7,
        "updated": 0,
        "deleted": 3,
        "unchanged": 0,
        "rejected": 0,
    }
    assert _deletes(refreshed.sent) == ["10", "8", "9"]
    assert h.run().sent == []
    assert_segment_matches(h.emulator.messages, warehouse_customers(wh))
