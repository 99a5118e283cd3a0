"""The DAG the reliability suite runs (``dag.test()`` in the test process, or ``airflow dags test`` in a
subprocess that the tests kill).

Everything about it comes from environment variables the tests set before each run, because the file is
parsed again for every run:

- ``RELIABILITY_DAG_ID``: the DAG id (each test uses its own, so runs of different tests never share
  XCom history in the session's metadata database);
- ``RELIABILITY_TASK_ID``: the task id (default ``sync``);
- ``RELIABILITY_SPEC``: JSON ``{"operator": {...SegmentProfilesSyncOperator kwargs...}, "retries": n,
  "execution_timeout_s": s}``; the operator kwargs are laid over :data:`DEFAULTS`.

Without those variables (for example while another test module's run parses the dags folder) it builds a
harmless default DAG.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_segment_profiles.operators.segment_profiles import SegmentProfilesSyncOperator

SPEC = json.loads(os.environ.get("RELIABILITY_SPEC") or "{}")
DAG_ID = os.environ.get("RELIABILITY_DAG_ID") or "reliability_sync"
TASK_ID = os.environ.get("RELIABILITY_TASK_ID") or "sync"

DEFAULTS = {
    "conn_id": "reliability_warehouse",
    "sql": "SELECT id, name, email, plan FROM customers",
    "primary_key": "id",
    "mappings": [
        {
            "name": "identify",
            "action": "send_identify",
            "fields": {"user_id": {"column": "id"}, "traits": {"columns": "*", "exclude": ["id"]}},
        }
    ],
    "state_path": os.environ.get("RELIABILITY_STATE_PATH", "file:///tmp/segment_reliability_state"),
    "request_retry_policy": {"max_attempts": 3, "base_delay_s": 0.01, "max_delay_s": 0.05},
    "max_events_per_second": None,
    "progress_interval_s": 0.0,
}

timeout = SPEC.get("execution_timeout_s")
with DAG(
    DAG_ID,
    schedule="@daily",
    start_date=datetime(2024, 1, 1),
    catchup=False,
    default_args={
        "retries": int(SPEC.get("retries", 0)),
        "retry_delay": timedelta(0),
        "execution_timeout": timedelta(seconds=timeout) if timeout else None,
    },
):
    SegmentProfilesSyncOperator(task_id=TASK_ID, **{**DEFAULTS, **SPEC.get("operator", {})})
