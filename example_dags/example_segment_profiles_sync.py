"""
### Jaffle Shop -> Segment Profiles

Reverse ETL from the Jaffle Shop warehouse (the data `jafgen` generates: customers, orders, items,
products, stores, supplies) into a Segment Profile Space. One task per SQL model in `sql/`:

| task | model | sync mode | Segment calls |
|---|---|---|---|
| `sync_customers` | `customers.sql` | diff | Send Identify (traits), Send Subscriptions (email, `newsletter` group) for added or updated customers; Track `Customer Removed` for deleted ones |
| `sync_stores` | `stores.sql` | diff | Send Group with the store's traits |
| `sync_customer_store` | `customer_store.sql` | diff | Send Group: each customer joins the store they order from most |
| `sync_orders` | `orders.sql` | incremental on `ordered_at` | Track `Order Completed` |

Customers are identified before their orders and store memberships are sent. Connections come from
Airflow: the warehouse is `jaffle_shop_warehouse` (any common-sql connection; the SQL runs unchanged on
SQLite and PostgreSQL) and Segment is `segment_profiles_default` (a `segment_profiles` connection
holding the Profile Space source's write key). Sync state is kept under `state_path`, by default
`$AIRFLOW_HOME/segment_profiles_state`; set it to shared storage (`s3://...`) when workers do not share
a disk.

**Recovering from the Trigger dialog.** The DAG declares the params the recovery uses, and every sync
takes them from there: trigger with `full_refresh` ticked when a run failed with a state error (every
record is sent again and the state rebuilt), with `dry_run` to see what a run would send, or with
`max_deleted_fraction` set to null to let one run's mass delete through (docs/operator.md). Scheduled
runs keep the defaults.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, Param

from airflow_provider_segment_profiles.operators.segment_profiles import SegmentProfilesSyncOperator

WAREHOUSE_CONN_ID = "jaffle_shop_warehouse"
SEGMENT_CONN_ID = "segment_profiles_default"
#: The SQL models, next to this file.
SQL_FOLDER = Path(__file__).parent / "sql"

#: Run params of the Trigger dialog (its form, or the configuration JSON such as {"full_refresh": true});
#: each sync below takes its recovery settings from them.
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
        description="Detect changes and build every message, send nothing and keep the state; the payloads "
        "go to the summary's dry_run_path.",
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
#: The operator arguments that read those params (templated; rendered text becomes a bool or a number).
FROM_PARAMS = {
    "full_refresh": "{{ params.full_refresh }}",
    "dry_run": "{{ params.dry_run }}",
    "max_deleted_fraction": "{{ params.max_deleted_fraction }}",
}

CUSTOMER_MAPPINGS = [
    {
        "name": "identify_customer",
        "action": "send_identify",
        "trigger": "added_or_updated",
        "fields": {
            "user_id": {"column": "customer_id"},
            "traits": {
                "name": {"column": "name"},
                "email": {"column": "email"},
                "first_order": {"column": "first_order", "skip_null": True},
                "most_recent_order": {"column": "most_recent_order", "skip_null": True},
                "number_of_orders": {"column": "number_of_orders"},
                "lifetime_value": {"column": "lifetime_value"},
            },
        },
    },
    {
        "name": "email_subscriptions",
        "action": "send_subscriptions",
        "trigger": "added_or_updated",
        "fields": {
            "user_id": {"column": "customer_id"},
            "email": {"column": "email"},
            "email_subscription_status": {"column": "email_subscription_status"},
            "subscription_groups": {"newsletter": {"column": "newsletter_status"}},
        },
    },
    {
        # A deleted record has only its primary key left, so this mapping may use nothing else.
        "name": "customer_removed",
        "action": "send_track",
        "trigger": "deleted",
        "fields": {"user_id": {"column": "customer_id"}, "event_name": "Customer Removed"},
    },
]

STORE_MAPPINGS = [
    {
        "name": "store_traits",
        "action": "send_group",
        "fields": {
            "anonymous_id": {"column": "store_anonymous_id"},
            "group_id": {"column": "store_id"},
            "traits": {
                "name": {"column": "name"},
                "opened_at": {"column": "opened_at"},
                "tax_rate": {"column": "tax_rate"},
            },
        },
    },
]

CUSTOMER_STORE_MAPPINGS = [
    {
        "name": "customer_joins_store",
        "action": "send_group",
        "fields": {"user_id": {"column": "customer_id"}, "group_id": {"column": "store_id"}},
    },
]

ORDER_MAPPINGS = [
    {
        "name": "order_completed",
        "action": "send_track",
        "trigger": "added",
        "fields": {
            "user_id": {"column": "customer_id"},
            "event_name": "Order Completed",
            "timestamp": {"column": "ordered_at"},
            "properties": {
                "order_id": {"column": "order_id"},
                "total": {"column": "order_total"},
                "subtotal": {"column": "subtotal"},
                "tax": {"column": "tax_paid"},
                "currency": "USD",
                "item_count": {"column": "item_count"},
                "store": {"column": "store_name"},
            },
        },
    },
]

with DAG(
    dag_id="example_segment_profiles_sync",
    description="Reverse ETL: Jaffle Shop customers, stores and orders into Segment Profiles",
    doc_md=__doc__,
    schedule="@hourly",
    start_date=datetime(2024, 1, 1),
    catchup=False,
    # Each task commits its sync state at the end of a run; overlapping runs would race for it.
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=1)},
    tags=["segment", "reverse-etl", "example"],
    template_searchpath=[str(SQL_FOLDER)],
    params=RECOVERY_PARAMS,
) as dag:
    sync_customers = SegmentProfilesSyncOperator(
        task_id="sync_customers",
        **FROM_PARAMS,
        conn_id=WAREHOUSE_CONN_ID,
        sql="customers.sql",
        primary_key="customer_id",
        mappings=CUSTOMER_MAPPINGS,
        segment_conn_id=SEGMENT_CONN_ID,
        sync_mode="diff",
        # The diff runs as SQL in the warehouse: only added, updated and deleted customers reach the worker
        # (the summary's rows_fetched; docs/change-detection.md). The other syncs use the default engine.
        change_detection="warehouse",
    )

    sync_stores = SegmentProfilesSyncOperator(
        task_id="sync_stores",
        **FROM_PARAMS,
        conn_id=WAREHOUSE_CONN_ID,
        sql="stores.sql",
        primary_key="store_id",
        mappings=STORE_MAPPINGS,
        segment_conn_id=SEGMENT_CONN_ID,
        sync_mode="diff",
    )

    sync_customer_store = SegmentProfilesSyncOperator(
        task_id="sync_customer_store",
        **FROM_PARAMS,
        conn_id=WAREHOUSE_CONN_ID,
        sql="customer_store.sql",
        primary_key="customer_id",
        mappings=CUSTOMER_STORE_MAPPINGS,
        segment_conn_id=SEGMENT_CONN_ID,
        sync_mode="diff",
    )

    sync_orders = SegmentProfilesSyncOperator(
        task_id="sync_orders",
        **FROM_PARAMS,
        conn_id=WAREHOUSE_CONN_ID,
        sql="orders.sql",
        primary_key="order_id",
        mappings=ORDER_MAPPINGS,
        segment_conn_id=SEGMENT_CONN_ID,
        sync_mode="incremental",
        cursor_column="ordered_at",
    )

    # Profiles exist before their events and group memberships reach Segment.
    sync_customers >> [sync_orders, sync_customer_store]
    sync_stores >> sync_customer_store
