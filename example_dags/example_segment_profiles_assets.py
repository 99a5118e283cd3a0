"""
### Jaffle Shop customers -> Segment Profiles, and a DAG that runs after every sync

`example_segment_profiles_customers_asset` syncs the Jaffle Shop customers (`sql/customers.sql`) into a
Profile Space and names the Asset `CUSTOMERS_IN_SEGMENT` as its outlet: every successful run records an
asset event whose `extra` holds the run's counts (rows read; records added, updated, deleted, unchanged
and rejected; messages delivered, rejected and failed, per mapping too). It also appends one row per
message outcome to the warehouse table `segment_sync_log` (`sync_log_table`), where support can look up
what became of any one customer (`docs/lineage.md`).

`example_segment_profiles_after_customers_sync` is scheduled on that Asset, so Airflow starts it after
each successful sync; its task reads the counts from `triggering_asset_events` (when triggered by hand,
from the Asset's latest event) and fails when the sync failed messages, as a place to hang alerts,
dashboards refreshes or follow-up jobs.

Connections: the warehouse is `jaffle_shop_warehouse` (any common-sql connection) and Segment is
`segment_profiles_default`.

The sync DAG declares the recovery params (`full_refresh`, `dry_run`, `max_deleted_fraction`), so a
failed state is recovered from the Trigger dialog: tick `full_refresh` (or send `{"full_refresh": true}`
as the run's configuration) and trigger (docs/operator.md).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset, Param, task

from airflow_provider_segment_profiles.operators.segment_profiles import SegmentProfilesSyncOperator

WAREHOUSE_CONN_ID = "jaffle_shop_warehouse"
SEGMENT_CONN_ID = "segment_profiles_default"
SQL_FOLDER = Path(__file__).parent / "sql"

#: What the sync task produces: the customers' profiles in the Profile Space. Any URI naming it stably
#: will do; it never holds the write key.
CUSTOMERS_IN_SEGMENT = Asset(
    name="segment_profiles_customers", uri="segment://profiles/jaffle_shop/customers"
)

IDENTIFY_CUSTOMERS = [
    {
        "name": "identify_customer",
        "action": "send_identify",
        "fields": {
            "user_id": {"column": "customer_id"},
            "traits": {
                "name": {"column": "name"},
                "email": {"column": "email"},
                "number_of_orders": {"column": "number_of_orders"},
                "lifetime_value": {"column": "lifetime_value"},
            },
        },
    }
]

#: Run params of the Trigger dialog; the sync takes its recovery settings from them.
RECOVERY_PARAMS = {
    "full_refresh": Param(
        False,
        type="boolean",
        title="Full refresh",
        description="Ignore the saved sync state for this run: every record is sent as added and the state "
        "is rebuilt. The way out of a state error.",
    ),
    "dry_run": Param(
        False,
        type="boolean",
        title="Dry run",
        description="Detect changes and build every message, send nothing and keep the state.",
    ),
    "max_deleted_fraction": Param(
        0.5,
        type=["null", "number"],
        minimum=0,
        maximum=1,
        title="Max deleted fraction",
        description="The delete guard: a run that would delete more than this fraction of the synced "
        "records sends no delete. Set to null to let one run's deletes through.",
    ),
}

with DAG(
    dag_id="example_segment_profiles_customers_asset",
    description="Reverse ETL of Jaffle Shop customers; an asset event with the counts after each run",
    doc_md=__doc__,
    schedule="@hourly",
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["segment", "reverse-etl", "example", "assets"],
    template_searchpath=[str(SQL_FOLDER)],
    params=RECOVERY_PARAMS,
) as sync_dag:
    SegmentProfilesSyncOperator(
        task_id="sync_customers",
        conn_id=WAREHOUSE_CONN_ID,
        sql="customers.sql",
        primary_key="customer_id",
        mappings=IDENTIFY_CUSTOMERS,
        segment_conn_id=SEGMENT_CONN_ID,
        sync_log_table="segment_sync_log",
        outlets=[CUSTOMERS_IN_SEGMENT],
        full_refresh="{{ params.full_refresh }}",
        dry_run="{{ params.dry_run }}",
        max_deleted_fraction="{{ params.max_deleted_fraction }}",
    )

with DAG(
    dag_id="example_segment_profiles_after_customers_sync",
    description="Runs after every successful customers sync and checks its counts",
    doc_md=__doc__,
    schedule=[CUSTOMERS_IN_SEGMENT],
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["segment", "example", "assets"],
) as after_sync_dag:

    @task(inlets=[CUSTOMERS_IN_SEGMENT])
    def check_customers_sync(*, triggering_asset_events: Any = None, inlet_events: Any = None) -> dict:
        """Read the sync's counts from the asset event that started this run; fail on failed messages."""
        events = list((triggering_asset_events or {}).get(CUSTOMERS_IN_SEGMENT, ()))
        if not events:  # triggered by hand: the latest sync's event
            events = [inlet_events[CUSTOMERS_IN_SEGMENT][-1]]
        counts = events[-1].extra
        print(
            f"Customers sync: {counts['rows_read']} rows read, records {counts['records']}, "
            f"messages {counts['messages']}"
        )
        if counts["messages"]["failed"]:
            raise RuntimeError(f"{counts['messages']['failed']} messages were not delivered to Segment")
        return counts

    check_customers_sync()
