"""DAGs the end-to-end tests run with ``dag.test()``; their settings come from environment variables the
tests set before each run (the DAG file is parsed in the test process)."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_segment_profiles.operators.segment_profiles import SegmentProfilesSyncOperator

STATE_PATH = os.environ.get("SEGMENT_E2E_STATE_PATH", "file:///tmp/segment_e2e_state")
SETTINGS = json.loads(os.environ.get("SEGMENT_E2E_SETTINGS", "{}"))

CUSTOMER_MAPPINGS = [
    {
        "name": "customers_identify",
        "action": "send_identify",
        "trigger": "added_or_updated",
        "fields": {
            "user_id": {"column": "customer_id"},
            "traits": {"columns": "*", "exclude": ["customer_id", "updated_at"]},
            "timestamp": {"column": "updated_at"},
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

ORDER_MAPPINGS = [
    {
        "name": "order_completed",
        "action": "send_track",
        "fields": {
            "user_id": {"column": "customer_id"},
            "event_name": "Order Completed",
            "timestamp": {"column": "ordered_at"},
            "properties": {"order_id": {"column": "order_id"}, "total": {"column": "total"}},
        },
    }
]

COMMON = {
    "conn_id": "e2e_warehouse",
    "state_path": STATE_PATH,
    "request_retry_policy": {"max_attempts": 2, "base_delay_s": 0.01, "max_delay_s": 0.05},
    "max_events_per_second": None,
    "progress_interval_s": 0.0,
    **SETTINGS,
}

with DAG(
    "segment_e2e_customers",
    schedule="@daily",
    start_date=datetime(2024, 1, 1),
    catchup=False,
    default_args={"retries": int(os.environ.get("SEGMENT_E2E_RETRIES", "0")), "retry_delay": timedelta(0)},
):
    SegmentProfilesSyncOperator(
        task_id="sync_customers",
        sql="SELECT customer_id, name, email, plan, updated_at FROM customers",
        primary_key="customer_id",
        mappings=CUSTOMER_MAPPINGS,
        **COMMON,
    )

#: A track that fires on its own column only: an email change re-sends the Identify, not "Plan Changed".
PLAN_MAPPINGS = [
    {
        "name": "identify_customer",
        "action": "send_identify",
        "trigger": "added_or_updated",
        "fields": {
            "user_id": {"column": "customer_id"},
            "traits": {"email": {"column": "email"}, "plan": {"column": "plan"}},
        },
    },
    {
        "name": "plan_changed",
        "action": "send_track",
        "trigger": "updated",
        "fields": {
            "user_id": {"column": "customer_id"},
            "event_name": "Plan Changed",
            "properties": {"plan": {"column": "plan"}},
        },
    },
]

with DAG("segment_e2e_plan_changes", schedule="@daily", start_date=datetime(2024, 1, 1), catchup=False):
    SegmentProfilesSyncOperator(
        task_id="sync_plan_changes",
        sql="SELECT customer_id, name, email, plan, updated_at FROM customers",
        primary_key="customer_id",
        mappings=PLAN_MAPPINGS,
        # The engine of this DAG alone (the other DAGs include an incremental sync, which only the worker has).
        **{**COMMON, "change_detection": os.environ.get("SEGMENT_E2E_PLAN_ENGINE", "worker")},
    )

with DAG("segment_e2e_orders", schedule="@daily", start_date=datetime(2024, 1, 1), catchup=False):
    SegmentProfilesSyncOperator(
        task_id="sync_orders",
        sql="SELECT order_id, customer_id, ordered_at, total FROM orders",
        primary_key="order_id",
        sync_mode="incremental",
        cursor_column="ordered_at",
        mappings=ORDER_MAPPINGS,
        **COMMON,
    )

with DAG("segment_e2e_mapped", schedule="@daily", start_date=datetime(2024, 1, 1), catchup=False):
    # One sync per plan: each mapped task instance keeps its own state (one folder per map index).
    SegmentProfilesSyncOperator.partial(
        task_id="sync_plans",
        primary_key="customer_id",
        mappings=[CUSTOMER_MAPPINGS[0]],
        **COMMON,
    ).expand(
        sql=[
            "SELECT customer_id, name, email, plan, updated_at FROM customers WHERE plan = 'free'",
            "SELECT customer_id, name, email, plan, updated_at FROM customers WHERE plan = 'pro'",
        ]
    )
