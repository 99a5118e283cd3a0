"""
``on_mass_delete="ask"`` through real ``dag.test()`` runs, with both change-detection engines.

``dag.test()`` keeps a run alive while a task waits in ``AWAITING_INPUT`` until the answer is recorded from
outside. Here a thread records it in the metadata database exactly as the REST API's
``PATCH .../hitlDetails`` does (the response columns, then ``handle_event_submit`` with the detail's resume
payload), or as the scheduler's timeout sweep does (a timeout event). The answer through the real UI and the
REST API, on a real scheduler, is in ``tests/test_deployment_mass_delete.py``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

pytest.register_assert_rewrite("reliability_support")
from reliability_support import (  # noqa: E402
    DELETE_EVENT,
    DagHarness,
    create_customers,
    insert_customers,
)

pytest_plugins = ["reliability_support"]
pytestmark = pytest.mark.airflow_db


def _deletes(sent: list[dict]) -> list[str]:
    return sorted((m["userId"] for m in sent if m.get("event") == DELETE_EVENT), key=int)


class Responder:
    """Answers the first question of one DAG once its task waits; keeps what the question said."""

    def __init__(self, dag_id: str, choice: str | None) -> None:
        self.dag_id = dag_id
        self.choice = choice  # None: time out
        self.question: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and self.question is None:
                self._answer_if_waiting()
                time.sleep(0.2)
        except BaseException as err:  # reported by the test; the waiting task is timed out so the run ends
            self.error = err
            self.choice = None
            with contextlib.suppress(Exception):
                self._answer_if_waiting()

    def _answer_if_waiting(self) -> None:
        from airflow.models.hitl import HITLDetail, HITLUser
        from airflow.models.taskinstance import TaskInstance
        from airflow.models.trigger import handle_event_submit
        from airflow.sdk.timezone import utcnow
        from airflow.triggers.base import TriggerEvent
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState
        from sqlalchemy import select

        with create_session() as session:
            ti = session.scalars(
                select(TaskInstance).where(
                    TaskInstance.dag_id == self.dag_id,
                    TaskInstance.state == TaskInstanceState.AWAITING_INPUT,
                )
            ).first()
            if ti is None:
                return
            detail = session.scalars(select(HITLDetail).where(HITLDetail.ti_id == ti.id)).one()
            self.question = {"subject": detail.subject, "body": detail.body, "options": list(detail.options)}
            self.before_answer()
            if self.choice is None:  # what the scheduler's sweep sends when no default exists
                event = {"error": "The response timeout has passed.", "error_type": "timeout"}
            else:  # what PATCH /api/v2/dags/.../hitlDetails does
                detail.responded_by = HITLUser(id="ops", name="ops")
                detail.responded_at = utcnow()
                detail.chosen_options = [self.choice]
                detail.params_input = {}
                session.add(detail)
                event = detail.as_resume_event_payload()
            handle_event_submit(TriggerEvent(event), task_instance=ti, session=session)

    def before_answer(self) -> None:
        """What happens between the question and the answer (nothing)."""

    def __enter__(self) -> Responder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        if self.error is not None:
            raise self.error


@contextmanager
def answering(h: DagHarness, choice: str | None) -> Iterator[Responder]:
    with Responder(h.dag_id, choice) as responder:
        yield responder


def _mass_delete(h: DagHarness) -> None:
    """Ten customers synced, then eight of them gone from the model and one new one."""
    wh = h.warehouse
    create_customers(wh, range(1, 11))
    first = h.run()
    assert first.state == "success"
    wh.execute(f"DELETE FROM {wh.t('customers')} WHERE id > 2")
    insert_customers(wh, [11])


@pytest.mark.parametrize("engine", ["worker", "warehouse"])
def test_approve_sends_exactly_the_held_deletes(rel_harness: DagHarness, engine: str):
    h = rel_harness
    h.operator.update(change_detection=engine, on_mass_delete="ask")
    _mass_delete(h)
    generation = h.head()["generation"]

    with answering(h, "Approve") as responder:
        run = h.run()
    assert run.state == "success"
    asked = responder.question
    assert asked["options"] == ["Approve", "Reject"]
    assert asked["subject"] == "Delete 8 of 10 records from Segment? (sync)"
    assert "would delete **8** of the **10** records" in asked["body"]
    # The sample: the smallest keys as text, in order.
    assert "`10`, `3`, `4`, `5`, `6`, `7`, `8`, `9`." in asked["body"]
    # The adds went out before the question, the deletes only after the approval, each exactly once.
    identifies = [m for m in run.sent if m["type"] == "identify"]
    assert [m["userId"] for m in identifies] == ["11"]
    assert _deletes(run.sent) == [str(i) for i in range(3, 11)]
    first_delete = next(i for i, m in enumerate(run.sent) if m.get("event") == DELETE_EVENT)
    assert run.sent.index(identifies[0]) < first_delete
    assert run.summary["records"]["deleted"] == 8 and run.summary["deletes_held"] is None
    assert run.summary["mass_delete"] == {"decision": "approved", "by": "ops", "held": 8}
    assert h.head()["generation"] == generation + 2  # the asking run's commit, then the approved one's

    after = h.run()
    assert after.state == "success" and after.sent == []
    assert after.summary["records"] == {"added": 0, "updated": 0, "deleted": 0, "unchanged": 3, "rejected": 0}


@pytest.mark.parametrize("engine", ["worker", "warehouse"])
def test_reject_keeps_the_deletes_held_and_the_next_run_asks_again(rel_harness: DagHarness, engine: str):
    h = rel_harness
    h.operator.update(change_detection=engine, on_mass_delete="ask")
    _mass_delete(h)

    with answering(h, "Reject"):
        rejected = h.run()
    assert rejected.state == "success"
    assert _deletes(rejected.sent) == []
    assert [m["userId"] for m in rejected.sent if m["type"] == "identify"] == ["11"]
    assert rejected.summary["deletes_held"]["would_delete"] == 8
    assert rejected.summary["mass_delete"] == {"decision": "rejected", "by": "ops", "held": 8}

    # The records stayed in state: the next run finds the same eight missing and asks again.
    with answering(h, "Approve") as responder:
        again = h.run()
    assert (
        responder.question is not None and "**8** of the **11**" in responder.question["body"]
    )  # 11 was committed
    assert again.state == "success"
    assert _deletes(again.sent) == [str(i) for i in range(3, 11)]
    assert [m for m in again.sent if m["type"] == "identify"] == []


def test_timeout_fails_like_on_mass_delete_fail(rel_harness: DagHarness):
    h = rel_harness
    h.operator.update(on_mass_delete="ask")
    _mass_delete(h)
    with answering(h, None):
        timed_out = h.run()
    assert timed_out.state == "failed" and timed_out.try_number == 1
    assert _deletes(timed_out.sent) == []
    assert timed_out.summary["deletes_held"]["would_delete"] == 8
    # Held, not forgotten: a run that lets them through sends them.
    through = h.run(max_deleted_fraction=None)
    assert _deletes(through.sent) == [str(i) for i in range(3, 11)]


def test_approval_for_other_records_sends_no_delete(rel_harness: DagHarness):
    """The model changes between the question and the approval: the approval does not fit any more."""
    h = rel_harness
    h.operator.update(on_mass_delete="ask")
    _mass_delete(h)
    wh = h.warehouse

    class ChangingResponder(Responder):
        def before_answer(self) -> None:  # one more record gone; a connection of this thread's own
            with contextlib.closing(sqlite3.connect(wh.path, isolation_level=None)) as conn:
                conn.execute(f"DELETE FROM {wh.t('customers')} WHERE id = 2")

    with ChangingResponder(h.dag_id, "Approve"):
        run = h.run()
    assert run.state == "failed"
    assert _deletes(run.sent) == []
    assert run.summary["deletes_held"]["would_delete"] == 9


def test_ask_is_checked_at_parse_time():
    from airflow_provider_segment_profiles.exceptions import ConfigurationError
    from airflow_provider_segment_profiles.operators.segment_profiles import SegmentProfilesSyncOperator

    with pytest.raises(ConfigurationError, match="on_mass_delete must be one of 'fail', 'ask', not 'prompt'"):
        SegmentProfilesSyncOperator(
            task_id="t",
            conn_id="c",
            sql="SELECT 1 AS id",
            primary_key="id",
            mappings=[],
            on_mass_delete="prompt",
        )
