"""Faults between the sync and Segment, over real Airflow runs (``dag.test()``), a real SQLite warehouse and
the emulator over HTTP; after each, the same reconciliation.

Each scenario: 30 customers synced cleanly; then 6 updates, 3 deletes and 3 inserts; a dry run records the
exact 15 messages the next run must deliver (their ``messageId`` included); the fault is injected and the
faulty run goes; faults are cleared, a recovery run goes, and a last run must send nothing. Then:

1. nothing lost: every planned message was accepted at least once, and Segment's view of every customer
   (identify traits, ``Customer Deleted`` removes) equals the warehouse after Segment's de-duplication;
2. repeats carry the same ``messageId``: every accepted message equals its planned body (``sentAt`` aside),
   and nothing unplanned was sent;
3. the faulty run's summary matches what the emulator received: ``delivered`` equals the messages accepted
   (apart from requests whose reply timed out, which the emulator may still have accepted: those are counted
   failed, listed in the report, and re-sent under the same id);
4. state re-sends exactly the undelivered: the recovery run sends exactly the (record, mapping) pairs the
   faulty run reported failed, and the run after it sends nothing.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

pytest.register_assert_rewrite("reliability_support")
from reliability_support import (  # noqa: E402
    FIGURES,
    WRITE_KEY,
    DagHarness,
    assert_segment_matches,
    closed_port_url,
    comparable,
    count_emulator_faults,
    create_customers,
    insert_customers,
    read_ndjson,
    wait_until,
    warehouse_customers,
)

from airflow_provider_segment_profiles.testing import SegmentEmulator  # noqa: E402

pytest_plugins = ["reliability_support"]
pytestmark = pytest.mark.airflow_db

MAPPING_OF_MESSAGE = {
    "identify": "identify",
    "Customer Signed Up": "signed_up",
    "Customer Deleted": "deleted",
}


def pair(message: dict[str, Any]) -> tuple[str, str]:
    """``(primary key, mapping name)`` of a message of the customer mappings."""
    kind = message.get("event") or message["type"]
    return str(message["userId"]), MAPPING_OF_MESSAGE[kind]


@dataclass
class Scenario:
    """One fault: how to inject it, the faulty run's expected state and the operator settings it needs."""

    name: str
    inject: Callable[[DagHarness], None]
    first_state: str
    settings: dict[str, Any] = field(default_factory=dict)
    #: seconds to let delayed requests land in the emulator after the faulty run
    settle_s: float = 0.0
    #: replies may time out after the emulator accepted the request (delivery is ambiguous)
    ambiguous: bool = False
    retries: int = 0
    declared_faults: dict[str, int] = field(default_factory=dict)


def _unreachable(h: DagHarness) -> None:
    h.segment_connection = {**h.segment_connection, "host": closed_port_url()}


SCENARIOS = [
    Scenario(
        "429_burst_honours_retry_after",
        lambda h: h.emulator.fail_next(4, status=429, retry_after=0.25),
        "success",
        {"max_requests_in_flight": 1, "batch_size": 5, "request_retry_policy": {"max_attempts": 6}},
    ),
    Scenario(
        "429_burst_outlasts_the_retries",
        lambda h: h.emulator.fail_next(8, status=429, retry_after=0.01),
        "failed",
        {"max_requests_in_flight": 1, "batch_size": 5, "request_retry_policy": {"max_attempts": 2}},
    ),
    Scenario(
        "5xx_burst_recovered_by_retries",
        lambda h: (h.emulator.fail_next(2, status=503), h.emulator.fail_next(1, status=502)),
        "success",
        {"batch_size": 5, "request_retry_policy": {"max_attempts": 4, "base_delay_s": 0.01}},
    ),
    Scenario(
        "5xx_burst_outlasts_the_retries",
        lambda h: h.emulator.fail_next(7, status=500),
        "failed",
        {"max_requests_in_flight": 1, "batch_size": 5, "request_retry_policy": {"max_attempts": 2}},
    ),
    Scenario(
        "reply_slower_than_the_read_timeout_once",
        lambda h: h.emulator.delay_next(2, 0.8),
        "success",
        {"request_timeout": [2.0, 0.3], "batch_size": 5, "max_requests_in_flight": 2},
        settle_s=1.0,
        ambiguous=True,
        declared_faults={"reply slower than read timeout": 2},
    ),
    Scenario(
        "reply_slower_than_the_read_timeout_every_time",
        lambda h: h.emulator.delay_next(100, 0.5),
        "failed",
        {
            "request_timeout": [2.0, 0.15],
            "batch_size": 8,
            "max_requests_in_flight": 2,
            "request_retry_policy": {"max_attempts": 2},
        },
        settle_s=1.5,
        ambiguous=True,
        declared_faults={"reply slower than read timeout": 4},
    ),
    Scenario(
        "connection_dropped_mid_request",
        lambda h: h.emulator.drop_next(3),
        "success",
        {"batch_size": 5, "max_requests_in_flight": 1, "request_retry_policy": {"max_attempts": 4}},
    ),
    Scenario(
        "api_unreachable_at_start",
        _unreachable,
        "failed",
        {"request_retry_policy": {"max_attempts": 2}},
        retries=1,
        declared_faults={"API unreachable (closed port), per try": 2},
    ),
    Scenario(
        "users_failing_with_400_and_500_every_time",
        lambda h: (
            h.emulator.fail_user("3", status=400),
            h.emulator.fail_user("5", status=500),
            h.emulator.fail_user("26", status=500),  # a deleted customer: its delete fails
        ),
        "failed",
        {"batch_size": 50},
    ),
]


@pytest.mark.parametrize("engine", ["worker", "warehouse"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_fault_then_reconcile(rel_harness: DagHarness, scenario: Scenario, engine: str):
    h = rel_harness
    h.operator["change_detection"] = engine  # both change-detection engines settle faults alike
    wh, emulator = h.warehouse, h.emulator
    create_customers(wh, range(1, 31))
    baseline = h.run()
    assert baseline.state == "success" and baseline.summary["messages"]["delivered"] == 60

    wh.execute(f"UPDATE {wh.t('customers')} SET plan = 'pro' WHERE id <= 6")
    wh.execute(f"DELETE FROM {wh.t('customers')} WHERE id IN (25, 26, 27)")
    insert_customers(wh, [31, 32, 33])
    h.operator.update(scenario.settings)
    plan = h.plan()
    planned = {m["messageId"]: m for m in plan}
    assert len(planned) == len(plan) == 6 + 3 + 3 * 2  # updates, deletes, inserts (identify + signed up)
    planned_pairs = {pair(m) for m in plan}

    requests_before, messages_before = len(emulator.requests), emulator.message_count
    saved_connection = dict(h.segment_connection)
    h.retries = scenario.retries
    scenario.inject(h)
    faulty = h.run()
    if scenario.settle_s:
        time.sleep(scenario.settle_s)  # requests whose reply the client gave up on land meanwhile
    count_emulator_faults(emulator, requests_before)
    for kind, n in scenario.declared_faults.items():
        FIGURES.fault(kind, n)
    assert faulty.state == scenario.first_state
    if scenario.retries:
        assert faulty.try_number == 1 + scenario.retries  # a transient failure: Airflow retried the task

    emulator.clear_faults()
    h.segment_connection = saved_connection
    h.retries = 0
    faulty_sent = emulator.messages[messages_before:]
    recovery = h.run()
    assert recovery.state == "success"
    last = h.run()
    assert last.state == "success" and last.sent == []
    assert last.summary["records"]["unchanged"] == 30

    # 2. every accepted message is a planned one, byte for byte apart from sentAt: repeats keep their id
    for message in faulty_sent + recovery.sent:
        assert message["messageId"] in planned, f"unplanned message {message}"
        assert comparable(message) == comparable(planned[message["messageId"]])

    # 3. the faulty run's summary against what the emulator received
    summary = faulty.summary
    assert summary is not None
    counts = summary["messages"]
    assert counts["delivered"] + counts["rejected"] + counts["failed"] == len(plan)
    assert counts["rejected"] == 0
    failed_pairs = {(r["primary_key"], r["mapping"]) for r in read_ndjson(summary["report_path"])}
    assert len(failed_pairs) == counts["failed"]
    accepted_pairs = {pair(m) for m in faulty_sent}
    if scenario.ambiguous:
        assert planned_pairs - failed_pairs <= accepted_pairs  # everything counted delivered arrived
        assert accepted_pairs - (planned_pairs - failed_pairs) <= failed_pairs
        # the fault did what it is about: a request the client gave up on was accepted all the same
        late_copies = len(faulty_sent) - len({m["messageId"] for m in faulty_sent})
        assert late_copies > 0 or accepted_pairs & failed_pairs
    else:
        assert accepted_pairs == planned_pairs - failed_pairs
    if scenario.first_state == "success":
        assert counts["failed"] == 0
    else:
        assert counts["failed"] > 0

    # 4. the recovery run sends exactly what the faulty run did not deliver, under the same ids
    assert sorted(pair(m) for m in recovery.sent) == sorted(failed_pairs)
    assert recovery.summary["messages"] == {"delivered": len(failed_pairs), "rejected": 0, "failed": 0}

    # 1. nothing lost, with Segment's de-duplication applied to everything the emulator accepted
    assert planned_pairs <= accepted_pairs | {pair(m) for m in recovery.sent}
    assert_segment_matches(emulator.messages, warehouse_customers(wh))
    assert h.head()["generation"] == 4 + scenario.retries  # baseline, faulty (each try), recovery, last


def test_429_waits_as_long_as_retry_after_asks(rel_harness: DagHarness):
    """Sequential requests: after each 429 the next request comes no sooner than its Retry-After."""
    h = rel_harness
    create_customers(h.warehouse, range(1, 11))
    h.operator.update(max_requests_in_flight=1, batch_size=4, request_retry_policy={"max_attempts": 5})
    h.emulator.fail_next(3, status=429, retry_after=0.3)
    run = h.run()
    assert run.state == "success"
    count_emulator_faults(h.emulator)
    requests = h.emulator.requests
    assert [r.status for r in requests] == [429] * 3 + [200] * 5  # 20 messages in batches of 4
    gaps = [b.received_at - a.received_at for a, b in itertools.pairwise(requests)]
    assert all(gap >= 0.29 for gap in gaps[:3]), gaps
    ids = h.emulator.message_ids()
    assert len(ids) == 20 and set(ids.values()) == {1}


def test_the_api_going_down_mid_run_and_coming_back(rel_harness: DagHarness):
    """The emulator stops while the run sends (after some batches were accepted) and comes back on the
    same port: the run fails, keeping the undelivered; the next run sends exactly those."""
    h = rel_harness
    create_customers(h.warehouse, range(1, 41))
    h.operator.update(
        batch_size=4, max_requests_in_flight=1, request_retry_policy={"max_attempts": 2, "base_delay_s": 0.01}
    )
    plan = h.plan()
    port = h.emulator.port
    h.emulator.latency = 0.05

    def outage() -> None:
        wait_until(lambda: h.emulator.message_count >= 24, 30)
        h.emulator.stop()

    stopper = threading.Thread(target=outage)
    stopper.start()
    first = h.run()
    stopper.join()
    FIGURES.fault("API down mid-run (emulator stopped)")
    first_sent = h.emulator.messages
    assert first.state == "failed"
    delivered = first.summary["messages"]["delivered"]
    assert 24 <= delivered < 80
    assert first.summary["messages"]["failed"] == 80 - delivered
    # A request in flight when the server went away may have been accepted without a reply: one batch.
    assert delivered <= len(first_sent) <= delivered + 4

    with SegmentEmulator(write_key=WRITE_KEY, port=port, deduplicate=False) as back:  # as rel_emulator
        h.emulator = back
        second = h.run()
        assert second.state == "success"
        assert second.summary["messages"]["delivered"] == 80 - delivered
        resent = {m["messageId"] for m in first_sent} & {m["messageId"] for m in second.sent}
        assert len(resent) == len(first_sent) - delivered  # only the unanswered batch, under the same ids
        every = first_sent + second.sent
        assert {comparable(m) for m in every} == {comparable(m) for m in plan}  # repeats keep their id
        assert len(every) - len(plan) == len(resent)
        assert h.run().sent == []
        assert_segment_matches(every, warehouse_customers(h.warehouse))
