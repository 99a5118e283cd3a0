"""
The DAG of ``tests/test_deployment.py``: a customers sync the real scheduler runs every five seconds.

Each run first waits at a gate (a file named after its run id) that the test opens once it has changed the
warehouse for that run, so which changes a run sees does not depend on how fast the machine is. The settings
come from the environment the test gives the Airflow components.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.standard.sensors.python import PythonSensor
from airflow.sdk import DAG

from airflow_provider_segment_profiles.operators.segment_profiles import SegmentProfilesSyncOperator

GATES = Path(os.environ.get("SEGMENT_DEPLOY_GATES", "/nonexistent"))
START = datetime.fromisoformat(os.environ.get("SEGMENT_DEPLOY_START", "2024-01-01T00:00:00+00:00"))

MAPPINGS = [
    {
        "name": "customers_identify",
        "action": "send_identify",
        "fields": {
            "user_id": {"column": "customer_id"},
            "traits": {"columns": "*", "exclude": ["customer_id"]},
        },
    },
    {
        "name": "customer_signed_up",
        "action": "send_track",
        "trigger": "added",
        "fields": {
            "user_id": {"column": "customer_id"},
            "event_name": "Customer Signed Up",
            "properties": {"plan": {"column": "plan"}},
        },
    },
    {
        "name": "customer_removed",
        "action": "send_track",
        "trigger": "deleted",
        "fields": {"user_id": {"column": "customer_id"}, "event_name": "Customer Removed"},
    },
]


def gate_is_open(run_id: str, **_context: object) -> bool:
    return (GATES / run_id).exists()


with DAG(
    "segment_deployment_sync",
    schedule=timedelta(seconds=5),
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 0},
):
    gate = PythonSensor(
        task_id="wait_for_warehouse_change",
        python_callable=gate_is_open,
        poke_interval=0.5,
        timeout=120,
        mode="poke",
    )
    sync = SegmentProfilesSyncOperator(
        task_id="sync_customers",
        conn_id="deploy_warehouse",
        sql="SELECT customer_id, name, email, plan FROM customers",
        primary_key="customer_id",
        mappings=MAPPINGS,
        state_path=os.environ.get("SEGMENT_DEPLOY_STATE_PATH"),
        max_events_per_second=None,
        progress_interval_s=0.0,
    )
    gate >> sync
