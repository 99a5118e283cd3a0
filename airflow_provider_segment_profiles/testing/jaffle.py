"""
Jaffle Shop data for the example DAG: generate it with ``jafgen``, load it into SQLite or PostgreSQL,
change it deterministically between two runs, and compute what each run of the example DAG must report.

Used by ``scripts/demo.py`` (``make demo``) and the tests of the example DAG; importable as
``airflow_provider_segment_profiles.testing.jaffle`` so that a user's own test of the example can use it too. The expected figures are computed here in
Python from the CSV files and the list of changes, independently of the DAG's SQL.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

#: The files ``jafgen`` writes (``<prefix>_<entity>.csv``) that the example loads; tweets are left out.
ENTITIES = ("customers", "orders", "items", "products", "stores", "supplies")

#: Column types per table: ``text``, ``integer``, ``real``, ``timestamp`` or ``boolean``.
#: Amounts are integer cents, as ``jafgen`` writes them.
TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "raw_customers": (("id", "text"), ("name", "text")),
    "raw_orders": (
        ("id", "text"),
        ("customer", "text"),
        ("ordered_at", "timestamp"),
        ("store_id", "text"),
        ("subtotal", "integer"),
        ("tax_paid", "integer"),
        ("order_total", "integer"),
    ),
    "raw_items": (("id", "text"), ("order_id", "text"), ("sku", "text")),
    "raw_products": (
        ("sku", "text"),
        ("name", "text"),
        ("type", "text"),
        ("price", "integer"),
        ("description", "text"),
    ),
    "raw_stores": (("id", "text"), ("name", "text"), ("opened_at", "timestamp"), ("tax_rate", "real")),
    "raw_supplies": (
        ("id", "text"),
        ("name", "text"),
        ("cost", "integer"),
        ("perishable", "boolean"),
        ("sku", "text"),
    ),
}

# SQLite keeps timestamps as ISO-8601 text, marked as UTC with a "Z" (Segment ignores timestamp traits
# without a zone); PostgreSQL gets TIMESTAMP columns, which the operator sends as UTC.
_SQL_TYPES = {
    "sqlite": {
        "text": "TEXT",
        "integer": "INTEGER",
        "real": "REAL",
        "timestamp": "TEXT",
        "boolean": "INTEGER",
    },
    "postgres": {
        "text": "TEXT",
        "integer": "INTEGER",
        "real": "DOUBLE PRECISION",
        "timestamp": "TIMESTAMP",
        "boolean": "BOOLEAN",
    },
}
_PLACEHOLDER = {"sqlite": "?", "postgres": "%s"}

#: How many records the deterministic change of :func:`apply_changes` touches.
REMOVED_CUSTOMERS = 5
RENAMED_CUSTOMERS = 10
CUSTOMERS_WITH_NEW_ORDERS = 20
NEW_CUSTOMERS = 2
_NEW_CUSTOMER_NAMES = ("Ada Jaffleton", "Grace Toastie")
_NEW_ID_NAMESPACE = uuid.UUID("6f1f3a52-45d4-4b0e-9d8e-3a7c4d7f0a11")


def generate(target: Path, *, days: int | None = None) -> Path:
    """
    Generate Jaffle Shop data with ``jafgen`` into ``target/jaffle-data``.

    :param target: working directory for ``jafgen``; created if missing.
    :param days: ``None`` runs the ``jafgen 1`` command (one year). A number simulates only that many days
        through jafgen's ``Simulation`` class, for quicker tests (the first store opens on day 0, the
        second on day 192).
    :return: the directory holding ``raw_<entity>.csv``.
    """
    target.mkdir(parents=True, exist_ok=True)
    if days is None:
        jafgen = Path(sys.executable).with_name("jafgen")
        command = [str(jafgen) if jafgen.exists() else "jafgen", "1"]
    else:
        command = [
            sys.executable,
            "-c",
            "import sys\n"
            "from jafgen.simulation import Simulation\n"
            "simulation = Simulation(1, 'raw')\n"
            "simulation.sim_days = int(sys.argv[1])\n"
            "simulation.run_simulation()\n"
            "simulation.save_results()\n",
            str(days),
        ]
    # jafgen draws progress bars; keep them out of the caller's output.
    subprocess.run(
        command, cwd=target, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ
    )
    data_dir = target / "jaffle-data"
    missing = [entity for entity in ENTITIES if not (data_dir / f"raw_{entity}.csv").exists()]
    if missing:
        raise RuntimeError(f"jafgen did not write {', '.join(missing)} into {data_dir}")
    return data_dir


def read_csv(data_dir: Path, table: str) -> list[dict[str, str]]:
    """Return the rows of ``data_dir/<table>.csv`` (e.g. ``raw_orders``) as dicts of text."""
    with open(data_dir / f"{table}.csv", newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def _convert(value: str, kind: str, dialect: str) -> Any:
    if value == "":
        return None
    if kind == "integer":
        return int(value)
    if kind == "real":
        return float(value)
    if kind == "boolean":
        flag = value.strip().lower() == "true"
        return int(flag) if dialect == "sqlite" else flag
    if kind == "timestamp":
        # jafgen writes naive local shop times; both warehouses keep them as UTC.
        if dialect == "postgres":
            return datetime.fromisoformat(value)
        return value if value.endswith("Z") else f"{value}Z"
    return value


def load(conn: Any, dialect: str, data_dir: Path) -> dict[str, int]:
    """
    Create the ``raw_*`` tables (dropping old ones) and load the CSV files into them.

    :param conn: an open DB-API connection: ``sqlite3`` or ``psycopg`` (3).
    :param dialect: ``"sqlite"`` or ``"postgres"``.
    :param data_dir: the directory :func:`generate` returned.
    :return: rows loaded per table.
    """
    types = _SQL_TYPES[dialect]
    placeholder = _PLACEHOLDER[dialect]
    loaded = {}
    cursor = conn.cursor()
    for table, columns in TABLES.items():
        cursor.execute(f"DROP TABLE IF EXISTS {table}")
        column_sql = ", ".join(f"{name} {types[kind]}" for name, kind in columns)
        cursor.execute(f"CREATE TABLE {table} ({column_sql})")
        rows = [
            tuple(_convert(row[name], kind, dialect) for name, kind in columns)
            for row in read_csv(data_dir, table)
        ]
        names = ", ".join(name for name, _ in columns)
        if dialect == "postgres":
            with cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            marks = ", ".join(placeholder for _ in columns)
            cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)
        loaded[table] = len(rows)
    conn.commit()
    return loaded


@dataclass
class ChangeSet:
    """The deterministic change :func:`plan_changes` makes to the data between the two runs."""

    removed_customers: list[str]
    renamed_customers: dict[str, str]  # customer id -> new name
    new_customers: dict[str, str]  # customer id -> name
    new_orders: list[dict[str, Any]]  # raw_orders rows (text values, as in the CSV)
    new_items: list[dict[str, Any]] = field(default_factory=list)  # raw_items rows


def plan_changes(data_dir: Path) -> ChangeSet:
    """
    Decide the change between the two runs, deterministically from the data.

    Customers are taken in id order: the first :data:`REMOVED_CUSTOMERS` are removed, the next
    :data:`RENAMED_CUSTOMERS` get a new name (so a new email), the next :data:`CUSTOMERS_WITH_NEW_ORDERS`
    place one more order each, and :data:`NEW_CUSTOMERS` new customers place their first order. The new
    orders are one day after the last order, at the first store to open, with one jaffle and one beverage.
    """
    customers = sorted(read_csv(data_dir, "raw_customers"), key=lambda row: row["id"])
    orders = read_csv(data_dir, "raw_orders")
    stores = sorted(read_csv(data_dir, "raw_stores"), key=lambda row: (row["opened_at"], row["id"]))
    products = sorted(read_csv(data_dir, "raw_products"), key=lambda row: row["sku"])
    needed = REMOVED_CUSTOMERS + RENAMED_CUSTOMERS + CUSTOMERS_WITH_NEW_ORDERS
    if len(customers) < needed:
        raise ValueError(f"the data has {len(customers)} customers; the change needs at least {needed}")

    removed = [row["id"] for row in customers[:REMOVED_CUSTOMERS]]
    renamed_rows = customers[REMOVED_CUSTOMERS : REMOVED_CUSTOMERS + RENAMED_CUSTOMERS]
    renamed = {row["id"]: f"{row['name']} Jaffleson" for row in renamed_rows}
    ordering = [row["id"] for row in customers[REMOVED_CUSTOMERS + RENAMED_CUSTOMERS : needed]]
    new_customers = {
        str(uuid.uuid5(_NEW_ID_NAMESPACE, name)): name for name in _NEW_CUSTOMER_NAMES[:NEW_CUSTOMERS]
    }

    store = stores[0]
    jaffle = next(p for p in products if p["type"] == "jaffle")
    beverage = next(p for p in products if p["type"] == "beverage")
    subtotal = int(jaffle["price"]) + int(beverage["price"])
    tax = round(subtotal * float(store["tax_rate"]))
    last_order = max(datetime.fromisoformat(row["ordered_at"]) for row in orders)
    first_new = (last_order + timedelta(days=1)).replace(hour=12, minute=0, second=0, microsecond=0)

    new_orders, new_items = [], []
    for position, customer_id in enumerate([*ordering, *new_customers]):
        order_id = str(uuid.uuid5(_NEW_ID_NAMESPACE, f"order-{customer_id}"))
        new_orders.append(
            {
                "id": order_id,
                "customer": customer_id,
                "ordered_at": (first_new + timedelta(minutes=position)).isoformat(),
                "store_id": store["id"],
                "subtotal": str(subtotal),
                "tax_paid": str(tax),
                "order_total": str(subtotal + tax),
            }
        )
        for product in (jaffle, beverage):
            new_items.append(
                {
                    "id": str(uuid.uuid5(_NEW_ID_NAMESPACE, f"item-{order_id}-{product['sku']}")),
                    "order_id": order_id,
                    "sku": product["sku"],
                }
            )
    return ChangeSet(removed, renamed, new_customers, new_orders, new_items)


def apply_changes(conn: Any, dialect: str, changes: ChangeSet) -> None:
    """Apply ``changes`` to the loaded tables in one transaction."""
    mark = _PLACEHOLDER[dialect]
    cursor = conn.cursor()
    cursor.executemany(
        f"DELETE FROM raw_customers WHERE id = {mark}", [(i,) for i in changes.removed_customers]
    )
    cursor.executemany(
        f"UPDATE raw_customers SET name = {mark} WHERE id = {mark}",
        [(name, i) for i, name in changes.renamed_customers.items()],
    )
    cursor.executemany(
        f"INSERT INTO raw_customers (id, name) VALUES ({mark}, {mark})", list(changes.new_customers.items())
    )
    for table, rows in (("raw_orders", changes.new_orders), ("raw_items", changes.new_items)):
        columns = TABLES[table]
        names = ", ".join(name for name, _ in columns)
        marks = ", ".join(mark for _ in columns)
        cursor.executemany(
            f"INSERT INTO {table} ({names}) VALUES ({marks})",
            [tuple(_convert(row[name], kind, dialect) for name, kind in columns) for row in rows],
        )
    conn.commit()


# -- what the example DAG must report ---------------------------------------------------------------


@dataclass(frozen=True)
class TaskExpectation:
    """What one task of the example DAG must report for one run."""

    rows_read: int
    added: int
    updated: int
    deleted: int
    unchanged: int
    delivered: dict[str, int]  # mapping name -> messages delivered

    @property
    def records(self) -> dict[str, int]:
        return {
            "added": self.added,
            "updated": self.updated,
            "deleted": self.deleted,
            "unchanged": self.unchanged,
        }


def _diff(before: dict[str, Any], after: dict[str, Any]) -> tuple[int, int, int, int]:
    added = sum(1 for key in after if key not in before)
    updated = sum(1 for key, value in after.items() if key in before and before[key] != value)
    deleted = sum(1 for key in before if key not in after)
    return added, updated, deleted, len(after) - added - updated


def _customer_models(customers: dict[str, str], orders: list[dict[str, str]]) -> tuple[dict, dict]:
    """The customers and customer_store models, recomputed in Python: {customer id: row value}."""
    stats: dict[str, list[Any]] = {}
    visits: dict[str, Counter[str]] = defaultdict(Counter)
    for order in orders:
        entry = stats.setdefault(order["customer"], [order["ordered_at"], order["ordered_at"], 0, 0])
        entry[0] = min(entry[0], order["ordered_at"])
        entry[1] = max(entry[1], order["ordered_at"])
        entry[2] += 1
        entry[3] += int(order["order_total"])
        visits[order["customer"]][order["store_id"]] += 1
    customer_model = {cid: (name, *stats.get(cid, (None, None, 0, 0))) for cid, name in customers.items()}
    store_model = {
        cid: min(visits[cid].items(), key=lambda item: (-item[1], item[0]))[0]
        for cid in customers
        if visits.get(cid)
    }
    return customer_model, store_model


def expected_runs(data_dir: Path, changes: ChangeSet) -> list[dict[str, TaskExpectation]]:
    """
    The summaries the example DAG must produce: for the first run on the generated data, then for the
    second run after :func:`apply_changes`; per task id.
    """
    customers = {row["id"]: row["name"] for row in read_csv(data_dir, "raw_customers")}
    orders = read_csv(data_dir, "raw_orders")
    stores = read_csv(data_dir, "raw_stores")

    customers_after = {k: v for k, v in customers.items() if k not in set(changes.removed_customers)}
    customers_after.update(changes.renamed_customers)
    customers_after.update(changes.new_customers)
    orders_after = [*orders, *changes.new_orders]

    before = _customer_models(customers, orders)
    after = _customer_models(customers_after, orders_after)

    def customer_tasks(old: tuple[dict, dict], new: tuple[dict, dict]) -> dict[str, TaskExpectation]:
        added, updated, deleted, unchanged = _diff(old[0], new[0])
        # A change belongs to a mapping: email_subscriptions reads the email (made from the name) and the
        # newsletter status (52 orders or more), so an updated customer sends it only when those changed.
        subscriptions_updated = sum(
            1
            for key, value in new[0].items()
            if key in old[0] and (old[0][key][0], old[0][key][3] >= 52) != (value[0], value[3] >= 52)
        )
        store_added, store_updated, store_deleted, store_unchanged = _diff(old[1], new[1])
        return {
            "sync_customers": TaskExpectation(
                len(new[0]),
                added,
                updated,
                deleted,
                unchanged,
                {
                    "identify_customer": added + updated,
                    "email_subscriptions": added + subscriptions_updated,
                    "customer_removed": deleted,
                },
            ),
            "sync_customer_store": TaskExpectation(
                len(new[1]),
                store_added,
                store_updated,
                store_deleted,
                store_unchanged,
                {"customer_joins_store": store_added + store_updated},
            ),
        }

    first = {
        **customer_tasks(({}, {}), before),
        "sync_stores": TaskExpectation(len(stores), len(stores), 0, 0, 0, {"store_traits": len(stores)}),
        "sync_orders": TaskExpectation(len(orders), len(orders), 0, 0, 0, {"order_completed": len(orders)}),
    }
    # Incremental: the second run reads the rows at or past the saved watermark (the last order time);
    # the ones at the watermark were delivered already and count as unchanged.
    last_order = max(row["ordered_at"] for row in orders)
    at_watermark = sum(1 for row in orders if row["ordered_at"] == last_order)
    new_orders = len(changes.new_orders)
    second = {
        **customer_tasks(before, after),
        "sync_stores": TaskExpectation(len(stores), 0, 0, 0, len(stores), {"store_traits": 0}),
        "sync_orders": TaskExpectation(
            at_watermark + new_orders, new_orders, 0, 0, at_watermark, {"order_completed": new_orders}
        ),
    }
    return [first, second]


def expected_message_types(expectation: dict[str, TaskExpectation]) -> Counter[str]:
    """The tracking-API message types (``identify``, ``group``, ``track``) one run must deliver."""
    types = {
        "identify_customer": "identify",
        "email_subscriptions": "identify",
        "customer_removed": "track",
        "store_traits": "group",
        "customer_joins_store": "group",
        "order_completed": "track",
    }
    counts: Counter[str] = Counter()
    for task in expectation.values():
        for mapping, delivered in task.delivered.items():
            counts[types[mapping]] += delivered
    return counts
