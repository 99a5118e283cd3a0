"""
Every state error fails the task without retry, with its recovery advice on the first line.

A state error means the committed state cannot be trusted for this sync (the destination changed, the
settings changed, the state was lost); a retry meets the same state, so Airflow must not spend the task's
retries on it. Each test gives the task ``retries=2`` and checks it failed in its first try.
"""

from __future__ import annotations

import shutil

import pytest

pytest.register_assert_rewrite("reliability_support")
from reliability_support import FIGURES, IDENTIFY_MAPPING, DagHarness, create_customers  # noqa: E402

pytest_plugins = ["reliability_support"]
pytestmark = pytest.mark.airflow_db


def _first_run(h: DagHarness) -> None:
    h.operator.update(mappings=[IDENTIFY_MAPPING])
    create_customers(h.warehouse, range(1, 6))
    assert h.run().state == "success"
    h.retries = 2


def _assert_failed_without_retry(h: DagHarness, capfd, expected: str, **overrides) -> None:
    head_before = h.head()
    capfd.readouterr()
    run = h.run(**overrides)
    FIGURES.input("state error, no retry")
    assert run.state == "failed"
    assert run.try_number == 1, f"the task was retried ({run.try_number} tries) on a state error"
    assert run.sent == []
    assert h.head() == head_before
    log = _task_log(capfd)
    assert expected in log
    # The advice leads the error, on a line of its own, where the task log shows it first.
    assert "AirflowFailException: To recover: run this task once with full_refresh=True" in log


def _task_log(capfd) -> str:
    """What ``dag.test`` printed of the run (it logs the task to the console)."""
    captured = capfd.readouterr()
    return captured.out + captured.err


def test_changed_destination_fails_without_retry(rel_harness: DagHarness, capfd):
    h = rel_harness
    _first_run(h)
    h.segment_connection = h.emulator.airflow_connection(write_key="a-key-of-another-source")
    _assert_failed_without_retry(h, capfd, "now point at another destination")


def test_changed_settings_fail_without_retry(rel_harness: DagHarness, capfd):
    h = rel_harness
    _first_run(h)
    _assert_failed_without_retry(h, capfd, "primary_key was 'id', now 'email'", primary_key="email")


def test_lost_state_fails_without_retry(rel_harness: DagHarness, capfd):
    h = rel_harness
    _first_run(h)
    shutil.rmtree(h.state_root)
    capfd.readouterr()
    run = h.run()
    FIGURES.input("state error, no retry")
    assert run.state == "failed"
    assert run.try_number == 1
    assert run.sent == []
    assert "the state under state_path was deleted, moved or rolled back" in _task_log(capfd)
