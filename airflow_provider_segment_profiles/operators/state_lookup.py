"""
Where a sync task's state lives, as Airflow gives it: the state folder of the task instance, and the newest
state an earlier run pushed to XCom (the lost-state tripwire, ``docs/operator.md``, "State").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_segment_profiles.state.location import (
    STATE_XCOM_KEY,
    StateLocation,
    SyncState,
    default_state_path,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

#: Executors whose tasks run on several machines: a worker-local default ``state_path`` is not shared.
_DISTRIBUTED_EXECUTORS = ("Celery", "Kubernetes", "Edge", "Ecs", "Batch")


def state_location(ti: Any, state_path: str | None, state_conn_id: str | None, log: Any) -> StateLocation:
    """
    The state folder of the task instance ``ti`` under ``state_path`` (the default local path when
    ``None``, with a warning under a distributed executor).
    """
    location = StateLocation(
        state_path or default_state_path(),
        ti.dag_id,
        ti.task_id,
        getattr(ti, "map_index", -1),
        state_conn_id,
    )
    log.info("Sync state is kept under %s", location.root)
    if state_path is None:
        _warn_if_distributed(location, log)
    return location


def newest_xcom_state(context: Context, task_id: str, first_run: bool, log: Any) -> SyncState | None:
    """
    The newest state an earlier run of this task pushed to XCom, or ``None``.

    With no committed state under ``state_path`` and no earlier successful DAG run
    (``prev_start_date_success``, https://airflow.apache.org/docs/apache-airflow/stable/templates-ref.html),
    this is a first run: nothing is pulled, because Airflow logs a missing XCom as an error.

    :param first_run: whether ``state_path`` holds no committed state.
    """
    ti = context["ti"]
    if first_run:
        earlier_success = context.get("prev_start_date_success", True)  # unknown outside Airflow: check
        if not earlier_success:
            log.info("No committed state under state_path and no earlier successful run: a first sync")
            return None
        log.info("No committed state under state_path: checking XCom for state of earlier runs")
    try:
        pulled = ti.xcom_pull(
            task_ids=task_id,
            key=STATE_XCOM_KEY,
            include_prior_dates=True,
            map_indexes=getattr(ti, "map_index", -1),
        )
    except Exception as err:  # an XCom backend hiccup must not block a run: HEAD.json is authoritative
        log.warning("Could not read earlier sync state from XCom (%s); relying on state_path", err)
        return None
    values = pulled if isinstance(pulled, list) else [pulled]
    states = [SyncState.from_dict(v) for v in values if isinstance(v, dict) and "generation" in v]
    return max(states, key=lambda s: s.generation, default=None)


def _warn_if_distributed(location: StateLocation, log: Any) -> None:
    try:
        from airflow.configuration import conf

        executor = conf.get("core", "executor", fallback="") or ""
    except Exception:
        return
    if any(name in executor for name in _DISTRIBUTED_EXECUTORS):
        log.warning(
            "State is kept at the default local path %s while the %s runs tasks on several machines; "
            "set state_path to shared storage (s3://, gs://, ...): a run on another worker does not find this "
            "state and fails, finding newer state in XCom.",
            location.root,
            executor,
        )
