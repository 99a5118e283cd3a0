"""A task killed in the middle of sending: SIGKILL of a real task process (``airflow dags test`` in a
subprocess), SIGTERM (Airflow calls ``on_kill``) and an ``execution_timeout``; then the task is retried.

A killed try commits nothing, so its retry re-sends every change the killed try may have delivered, under the
same ``messageId`` (Segment drops the repeats), and state stays consistent: nothing lost, nothing unexplained.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.register_assert_rewrite("reliability_support")
from reliability_support import (  # noqa: E402
    FIGURES,
    WRITE_KEY,
    DagHarness,
    assert_segment_matches,
    comparable,
    create_customers,
    insert_customers,
    wait_until,
    warehouse_customers,
)

pytest_plugins = ["reliability_support"]
pytestmark = pytest.mark.airflow_db


def prepare_changes(h: DagHarness) -> dict[str, dict]:
    """60 customers synced; then 30 updates, 30 inserts and 10 deletes; return the planned messages by id."""
    wh = h.warehouse
    create_customers(wh, range(1, 61))
    assert h.run().state == "success"
    wh.execute(f"UPDATE {wh.t('customers')} SET plan = 'pro' WHERE id <= 30")
    wh.execute(f"DELETE FROM {wh.t('customers')} WHERE id > 50")
    insert_customers(wh, range(61, 91))
    plan = h.plan()
    assert len(plan) == 30 + 30 * 2 + 10
    return {m["messageId"]: m for m in plan}


def assert_all_planned(messages: list[dict], planned: dict[str, dict]) -> None:
    """Every message is a planned one with the planned body: a repeat keeps its messageId."""
    for message in messages:
        assert message["messageId"] in planned, f"unplanned message {message}"
        assert comparable(message) == comparable(planned[message["messageId"]])


def sigkill_mid_send(h: DagHarness, tmp_path: Path, after_messages: int) -> tuple[object, list[dict]]:
    """
    Run the DAG with ``airflow dags test`` in a subprocess and SIGKILL it once the emulator has accepted
    ``after_messages`` messages of it; return the run's logical date and the messages it delivered.
    """
    day = h.next_day()
    h.emulator.latency = 0.15
    before = h.emulator.message_count
    log = (tmp_path / "dags_test.log").open("wb")
    env = {**os.environ, **h.env()}
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow", "dags", "test", h.dag_id, day.isoformat()],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        started = wait_until(
            lambda: h.emulator.message_count - before >= after_messages or process.poll() is not None,
            timeout_s=180,
        )
        assert started and process.poll() is None, (
            "the task finished (or never sent) before it could be killed"
        )
        os.killpg(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
    FIGURES.fault("SIGKILL of the task process mid-send")
    output = (tmp_path / "dags_test.log").read_bytes()
    assert b"Task started" in output or b"phase=" in output  # the CLI ran the task
    assert WRITE_KEY.encode() not in output  # nor did the CLI print the write key
    FIGURES.run()
    h.emulator.latency = 0.0
    time.sleep(0.3)  # a request already read by the emulator may still be recorded
    return day, h.emulator.messages[before:]


def journal_files(h: DagHarness) -> list[Path]:
    return sorted(h.state_dir.rglob("journal/*.json"))


@pytest.mark.parametrize("engine", ["worker", "warehouse"])
def test_sigkill_mid_send_then_retry(rel_harness: DagHarness, tmp_path: Path, engine: str):
    h = rel_harness
    h.operator.update(batch_size=5, max_requests_in_flight=1, change_detection=engine)
    planned = prepare_changes(h)
    head_before = h.head()
    day, killed_sent = sigkill_mid_send(h, tmp_path, after_messages=30)
    assert 30 <= len(killed_sent) < len(planned)
    assert_all_planned(killed_sent, planned)
    assert h.head() == head_before  # the killed try committed nothing
    assert journal_files(h)  # but it wrote what it was about to send

    # The retry: the same DAG run again (the scheduler would retry the zombie task the same way).
    retry = h.run(logical_date=day)
    assert retry.state == "success"
    assert_all_planned(retry.sent, planned)
    assert {m["messageId"] for m in retry.sent} == set(planned)  # everything, the killed try's ones included
    assert retry.summary["messages"] == {"delivered": len(planned), "rejected": 0, "failed": 0}
    assert h.head()["generation"] == head_before["generation"] + 1
    assert journal_files(h) == []  # the commit accounted for the journal
    assert h.run().sent == []
    assert_segment_matches(h.emulator.messages, warehouse_customers(h.warehouse))


@pytest.mark.parametrize("engine", ["worker", "warehouse"])
def test_sigkill_then_the_warehouse_goes_back_before_the_next_run(
    rel_harness: DagHarness, tmp_path: Path, engine: str
):
    """The killed try delivered updates and adds; before the next run the updates are reverted and the
    added records deleted. Only the journal tells the next run that Segment may hold those values."""
    h = rel_harness
    h.operator.update(batch_size=5, max_requests_in_flight=1, change_detection=engine)
    wh = h.warehouse
    create_customers(wh, range(1, 41))
    assert h.run().state == "success"
    wh.execute(f"UPDATE {wh.t('customers')} SET plan = 'pro' WHERE id <= 20")
    insert_customers(wh, range(41, 61))
    _, killed_sent = sigkill_mid_send(h, tmp_path, after_messages=30)
    assert len(killed_sent) >= 30
    wh.execute(f"UPDATE {wh.t('customers')} SET plan = 'free' WHERE id <= 20")  # back to what Segment had
    wh.execute(f"DELETE FROM {wh.t('customers')} WHERE id > 40")  # the added ones are gone again
    assert h.run().state == "success"
    assert journal_files(h) == []
    assert_segment_matches(h.emulator.messages, warehouse_customers(wh))
    assert h.run().sent == []


def sigterm_while_sending(h: DagHarness, monkeypatch, after_messages: int) -> tuple[object, list[int]]:
    """Run the DAG and send SIGTERM to this process (where ``dag.test`` runs the task) once the emulator
    accepted ``after_messages`` messages of the run; return the run and, per ``on_kill`` call, the
    messages accepted by then."""
    from airflow_provider_segment_profiles.operators.segment_profiles import SegmentProfilesSyncOperator

    before = h.emulator.message_count
    killed: list[int] = []
    original_on_kill = SegmentProfilesSyncOperator.on_kill

    def spy_on_kill(self) -> None:
        original_on_kill(self)
        killed.append(h.emulator.message_count - before)

    monkeypatch.setattr(SegmentProfilesSyncOperator, "on_kill", spy_on_kill)
    # If the signal came while no handler of Airflow's were installed, the default action would end pytest.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)

    def terminate() -> None:
        if wait_until(lambda: h.emulator.message_count - before >= after_messages, 60):
            os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=terminate)
    try:
        sender.start()
        run = h.run()
        sender.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
        monkeypatch.setattr(SegmentProfilesSyncOperator, "on_kill", original_on_kill)
    FIGURES.fault("SIGTERM (on_kill) mid-send")
    return run, killed


@pytest.mark.parametrize("engine", ["worker", "warehouse"])
def test_sigterm_calls_on_kill_and_loses_nothing(rel_harness: DagHarness, monkeypatch, engine: str):
    """SIGTERM makes Airflow's handler call ``on_kill`` while the task sends; whatever the killed try did,
    it commits nothing partial, and the next run converges under the same message ids."""
    h = rel_harness
    h.operator.update(batch_size=5, max_requests_in_flight=1, change_detection=engine)
    planned = prepare_changes(h)
    head_before = h.head()
    h.emulator.latency = 0.1
    run, killed = sigterm_while_sending(h, monkeypatch, after_messages=20)
    h.emulator.latency = 0.0
    assert killed and killed[0] >= 20, "on_kill was not called while the task was sending"
    assert_all_planned(run.sent, planned)
    if run.state != "success":
        assert h.head() == head_before  # a try that did not finish commits nothing

    rerun = h.run()
    assert rerun.state == "success"
    assert_all_planned(rerun.sent, planned)
    delivered_before = set() if run.state != "success" else {m["messageId"] for m in run.sent}
    assert {m["messageId"] for m in rerun.sent} | delivered_before == set(planned)
    assert h.run().sent == []
    assert_segment_matches(h.emulator.messages, warehouse_customers(h.warehouse))


def test_on_kill_stops_sending(rel_harness: DagHarness, monkeypatch):
    """After ``on_kill`` returns, at most the requests already in flight may still arrive."""
    h = rel_harness
    h.operator.update(batch_size=5, max_requests_in_flight=1, mappings=[h.operator["mappings"][0]])
    create_customers(h.warehouse, range(1, 81))
    h.emulator.latency = 0.1
    before = h.emulator.message_count
    run, killed = sigterm_while_sending(h, monkeypatch, after_messages=10)
    h.emulator.latency = 0.0
    assert killed, "on_kill was not called"
    sent_after_on_kill = len(run.sent) - killed[0]
    assert sent_after_on_kill <= 5, f"{sent_after_on_kill} messages were sent after on_kill returned"
    assert run.state == "failed"
    assert h.emulator.message_count - before < 80


@pytest.mark.parametrize("engine", ["worker", "warehouse"])
def test_execution_timeout_mid_send_then_retry(rel_harness: DagHarness, monkeypatch, engine: str):
    """The first try runs past its execution_timeout (slow replies), Airflow calls on_kill and retries; the
    retry re-sends under the same ids and commits."""
    from airflow_provider_segment_profiles.operators.segment_profiles import SegmentProfilesSyncOperator

    h = rel_harness
    h.operator.update(batch_size=5, max_requests_in_flight=1, change_detection=engine)
    planned = prepare_changes(h)
    head_before = h.head()
    h.retries = 1
    h.execution_timeout_s = 2.0
    kills: list[int] = []
    original_on_kill = SegmentProfilesSyncOperator.on_kill

    def spy_on_kill(self) -> None:
        kills.append(h.emulator.message_count)
        h.emulator.clear_faults()  # the retry gets fast replies
        original_on_kill(self)

    monkeypatch.setattr(SegmentProfilesSyncOperator, "on_kill", spy_on_kill)
    h.emulator.delay_next(100, 0.15)  # try 1: slow replies outlast the 2 s timeout
    before = h.emulator.message_count
    run = h.run()
    FIGURES.fault("execution_timeout mid-send")
    assert run.state == "success"
    assert run.try_number == 2
    assert len(kills) == 1
    timed_out_sent = h.emulator.messages[before : kills[0]]
    assert 0 < len(timed_out_sent) < len(planned)
    assert_all_planned(run.sent, planned)
    assert run.summary["messages"] == {"delivered": len(planned), "rejected": 0, "failed": 0}
    assert h.head()["generation"] == head_before["generation"] + 1
    time.sleep(0.3)  # let a request of the timed-out try that is still in flight land
    assert h.run().sent == []
    assert_segment_matches(h.emulator.messages, warehouse_customers(h.warehouse))
