"""
Micro-benchmark of the per-record hot path: ``RecordBuilder.build`` for typical identify, track and
subscriptions records, next to the "json.dumps each row" floor the sync benchmark compares against.

Run: ``.venv/bin/python benchmarks/bench_actions.py [--records N]``. Prints microseconds per record
(CPU time of this process, best of several repeats, so other load on the machine inflates the
figures less).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from airflow_provider_segment_profiles.actions import compile_mappings

COLUMNS = [
    "customer_id",
    "email",
    "first_name",
    "last_name",
    "plan",
    "lifetime_value",
    "orders",
    "is_active",
    "phone",
    "updated_at",
    "email_status",
    "sms_status",
]

MAPPINGS = [
    {
        "name": "identify",
        "action": "send_identify",
        "fields": {
            "user_id": {"column": "customer_id"},
            "traits": {
                "email": {"column": "email"},
                "first_name": {"column": "first_name"},
                "last_name": {"column": "last_name"},
                "plan": {"column": "plan"},
                "lifetime_value": {"column": "lifetime_value"},
                "orders": {"column": "orders"},
                "is_active": {"column": "is_active"},
                "phone": {"column": "phone", "skip_null": True},
                "source": "warehouse",
            },
            "timestamp": {"column": "updated_at"},
        },
    },
    {
        "name": "identify_all_columns",
        "action": "send_identify",
        "fields": {
            "user_id": {"column": "customer_id"},
            "traits": {"columns": "*", "exclude": ["customer_id", "updated_at"]},
            "timestamp": {"column": "updated_at"},
        },
    },
    {
        "name": "track",
        "action": "send_track",
        "fields": {
            "user_id": {"column": "customer_id"},
            "event_name": "Plan Changed",
            "properties": {"plan": {"column": "plan"}, "value": {"column": "lifetime_value"}},
            "timestamp": {"column": "updated_at"},
        },
    },
    {
        "name": "subscriptions",
        "action": "send_subscriptions",
        "fields": {
            "user_id": {"column": "customer_id"},
            "email": {"column": "email"},
            "email_subscription_status": {"column": "email_status"},
            "phone": {"column": "phone"},
            "sms_subscription_status": {"column": "sms_status"},
            "traits": {"first_name": {"column": "first_name"}},
        },
    },
]


def make_rows(count: int, *, decimals: bool) -> list[tuple]:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    rows = []
    for number in range(count):
        value = Decimal(f"{number % 1000}.50") if decimals else (number % 1000) + 0.5
        rows.append(
            (
                100_000 + number,
                f"customer{number}@example.com",
                "Ada",
                "Lovelace",
                ("free", "pro", "enterprise")[number % 3],
                value,
                number % 50,
                number % 2 == 0,
                f"+1555{number:07d}",
                start + timedelta(seconds=number),
                ("subscribed", "unsubscribed")[number % 2],
                "true",
            )
        )
    return rows


def cpu_seconds(run) -> float:
    started = time.process_time()
    run()
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    compiled = compile_mappings(MAPPINGS, sync_mode="diff", primary_key="customer_id")
    builders = [(mapping.name, mapping.bind(COLUMNS).build) for mapping in compiled]
    checksums = [f"{number:032x}" for number in range(args.records)]
    for decimals in (False, True):
        rows = make_rows(args.records, decimals=decimals)
        keys = [str(row[0]) for row in rows]

        def floor(rows=rows) -> None:
            for row in rows:
                json.dumps(row, default=str)

        runs = {"floor": floor}
        for name, build in builders:

            def run(build=build, rows=rows, keys=keys) -> None:
                for row, key, checksum in zip(rows, keys, checksums, strict=True):
                    build(row, primary_key=key, checksum=checksum)

            runs[name] = run
        # Rounds interleave the floor and the builds, so a machine whose speed drifts (shared CPUs,
        # throttling) affects both alike; the best round of each is reported.
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(args.repeats):
            for name, run in runs.items():
                best[name] = min(best[name], cpu_seconds(run))
        floor_us = best.pop("floor") / len(rows) * 1e6
        print(f"rows with {'Decimal' if decimals else 'float'} lifetime_value, {len(rows):,} records")
        print(f"  floor  json.dumps(row, default=str)  {floor_us:6.2f} us/record")
        for name, seconds in best.items():
            per_record = seconds / len(rows) * 1e6
            print(f"  build  {name:<28} {per_record:6.2f} us/record ({per_record / floor_us:4.2f}x floor)")


if __name__ == "__main__":
    main()
