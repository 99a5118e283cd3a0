"""A DAG whose mappings are wrong in several ways at once; the tests check Airflow shows one import error
that lists every problem."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_segment_profiles.operators.segment_profiles import SegmentProfilesSyncOperator

with DAG("segment_bad_mapping", schedule=None, start_date=datetime(2024, 1, 1)):
    SegmentProfilesSyncOperator(
        task_id="sync",
        conn_id="warehouse",
        sql="SELECT id, email FROM users",
        primary_key="id",
        mappings=[
            {"name": "who", "action": "send_identity", "fields": {}},
            {"name": "grp", "action": "send_group", "fields": {"user_id": {"column": "id"}, "colour": "red"}},
            {"name": "evt", "action": "send_track", "fields": {"user_id": {"column": "id"}}},
        ],
    )
