"""
The DAGs of ``tests/test_deployment_celery.py``, run by CeleryExecutor on two Celery workers.

``segment_celery_sync`` syncs three models in parallel as one mapped task, each from its own SQLite file
(so the warehouse engine's writes never wait for another model's reads), with its state on a folder both
workers share (``SEGMENT_CELERY_STATE_PATH``). ``segment_celery_local_state`` is the same kind of sync with
the default, worker-local ``state_path``. The settings come from the environment the test gives the
components.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_segment_profiles.operators.segment_profiles import SegmentProfilesSyncOperator

#: model -> change detection engine; each model is the table of that name in its own SQLite file,
#: connection ``celery_wh_{model}``.
MODELS = {"accounts": "worker", "stores": "warehouse", "products": "worker"}

MAPPINGS = [
    {
        "name": "identify",
        "action": "send_identify",
        "fields": {"user_id": {"column": "id"}, "traits": {"columns": "*", "exclude": ["id"]}},
    }
]

COMMON = {
    "primary_key": "id",
    "mappings": MAPPINGS,
    "max_events_per_second": None,
    "progress_interval_s": 0.0,
    # Small requests one at a time: a try is killed while it is sending (the test slows the emulator).
    "batch_size": 5,
    "max_requests_in_flight": 1,
    "retries": 1,
    "retry_delay": timedelta(seconds=1),
}

with DAG("segment_celery_sync", schedule=None, start_date=datetime(2024, 1, 1), catchup=False):
    SegmentProfilesSyncOperator.partial(
        task_id="sync_models", state_path=os.environ.get("SEGMENT_CELERY_STATE_PATH"), **COMMON
    ).expand_kwargs(
        [
            {
                "conn_id": f"celery_wh_{model}",
                "sql": f"SELECT id, name, plan FROM {model}",
                "change_detection": engine,
            }
            for model, engine in MODELS.items()
        ]
    )

with DAG("segment_celery_local_state", schedule=None, start_date=datetime(2024, 1, 1), catchup=False):
    SegmentProfilesSyncOperator(
        task_id="sync_products",
        conn_id="celery_wh_products",
        sql="SELECT id, name, plan FROM products",
        **{**COMMON, "retries": 0},
    )
