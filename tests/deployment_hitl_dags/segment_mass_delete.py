"""
The DAGs of ``tests/test_deployment_mass_delete.py``: customer syncs with ``on_mass_delete="ask"``, one per
change-detection engine, triggered by the test only (no schedule). Settings come from the environment the
test gives the Airflow components.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_segment_profiles.operators.segment_profiles import SegmentProfilesSyncOperator

MAPPINGS = [
    {
        "name": "customers_identify",
        "action": "send_identify",
        "fields": {"user_id": {"column": "customer_id"}, "traits": {"name": {"column": "name"}}},
    },
    {
        "name": "customer_removed",
        "action": "send_track",
        "trigger": "deleted",
        "fields": {"user_id": {"column": "customer_id"}, "event_name": "Customer Removed"},
    },
]

for engine in ("worker", "warehouse"):
    with DAG(
        f"segment_mass_delete_{engine}",
        schedule=None,
        start_date=datetime(2024, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args={"retries": 0},
    ):
        SegmentProfilesSyncOperator(
            task_id="sync_customers",
            conn_id="deploy_warehouse",
            sql=f"SELECT customer_id, name FROM customers_{engine}",
            primary_key="customer_id",
            mappings=MAPPINGS,
            change_detection=engine,
            on_mass_delete="ask",
            state_path=os.environ.get("SEGMENT_DEPLOY_STATE_PATH"),
            max_events_per_second=None,
            progress_interval_s=0.0,
        )
