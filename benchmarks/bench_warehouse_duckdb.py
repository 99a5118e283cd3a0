"""
Cost of ``change_detection="warehouse"`` on DuckDB: the engine alone (diff in SQL, the changed rows read and
classified, the commit), without sending, on a DuckDB file of ``--rows`` customers; first run, then 0% and 1%
changed. For comparison, the bare read of every row through the DuckDB hook, the least the worker engine
pays before it diffs anything.

Run: ``python benchmarks/bench_warehouse_duckdb.py --rows 1M`` (needs ``apache-airflow-providers-duckdb``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MAPPING = {
    "name": "identify",
    "action": "send_identify",
    "fields": {"user_id": {"column": "id"}, "traits": {"columns": "*", "exclude": ["id"]}},
}
MODEL = "SELECT id, name, email, plan FROM customers"


def parse_rows(text: str) -> int:
    text = text.lower().replace("_", "")
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("km")) * factor)


def one_run(folder: Path, path: Path, head: Any) -> dict[str, Any]:
    """One engine run: query, read and classify the changed rows, deletions, commit."""
    from airflow.providers.duckdb.hooks.duckdb import DuckDBHook

    from airflow_provider_segment_profiles.actions import compile_mappings
    from airflow_provider_segment_profiles.pipeline.accounting import SyncAccounting
    from airflow_provider_segment_profiles.pipeline.detection.warehouse.engine import WarehouseChangeDetector
    from airflow_provider_segment_profiles.pipeline.modes import get_mode
    from airflow_provider_segment_profiles.pipeline.reader import ModelReader
    from airflow_provider_segment_profiles.pipeline.records import Record
    from airflow_provider_segment_profiles.state.location import StateLocation

    mappings = compile_mappings([MAPPING], sync_mode="diff", primary_key="id")
    accounting = SyncAccounting([m.name for m in mappings])
    started = time.perf_counter()
    detector = WarehouseChangeDetector(
        mode=get_mode("diff"),
        hook=DuckDBHook(database=str(path)),
        location=StateLocation((folder / "state").as_uri(), "bench", "duckdb", -1),
        previous=head,
        head=head,
        outcomes=accounting,
        primary_key="id",
        mappings=mappings,
        state_schema="segment_profiles",
        full_refresh=False,
        dry_run=False,
        journal_tag=None,
        log=logging.getLogger("bench"),
    )
    try:
        query, parameters = detector.query(MODEL, None)
        diffed = time.perf_counter()
        reader = ModelReader(None, query, parameters, 5000, detector.source_connection())
        columns = reader.open()
        detector.bind(columns, [0, 1, 2, 3], "|".join(m.fingerprint for m in mappings))
        changed = 0
        for rows in reader.chunks():
            changed += len(detector.detect([Record(row, str(row[0])) for row in rows]))
        reader.close()
        deleted = sum(len(chunk) for chunk in detector.deletions())
        read = time.perf_counter()
        _, count = detector.snapshot_to_commit(folder, None)
    finally:
        detector.close()
    done = time.perf_counter()
    return {
        "total_s": done - started,
        "diff_s": diffed - started,
        "read_s": read - diffed,
        "commit_s": done - read,
        "changed": changed,
        "deleted": deleted,
        "unchanged": accounting.records["unchanged"],
        "records": count,
    }


def bare_read(path: Path) -> float:
    """Every row of the model through the DuckDB hook's connection, in chunks of 5,000."""
    from airflow.providers.duckdb.hooks.duckdb import DuckDBHook

    started = time.perf_counter()
    conn = DuckDBHook(database=str(path)).get_conn()
    cursor = conn.cursor()
    cursor.execute(MODEL)
    while cursor.fetchmany(5000):
        pass
    cursor.close()
    conn.close()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--rows", type=parse_rows, default=parse_rows("1M"))
    args = parser.parse_args(argv)
    import duckdb

    from airflow_provider_segment_profiles.state.location import SyncState

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="sp_bench_duckdb_") as tmp:
        folder = Path(tmp)
        path = folder / "warehouse.duckdb"
        setup = duckdb.connect(str(path))
        setup.execute(
            "CREATE TABLE customers AS SELECT range AS id, 'Customer ' || range AS name, "
            f"'c' || range || '@example.com' AS email, 'free' AS plan FROM range(1, {args.rows + 1})"
        )
        setup.close()
        results: dict[str, Any] = {"rows": args.rows, "duckdb": duckdb.__version__}
        results["bare_read_s"] = bare_read(path)
        results["first"] = one_run(folder, path, None)
        head = SyncState(
            generation=1, snapshot=None, sync_mode="diff", watermark=None, fingerprint="", records=args.rows
        )
        results["0%"] = one_run(folder, path, head)
        setup = duckdb.connect(str(path))
        setup.execute("UPDATE customers SET plan = 'pro' WHERE id % 100 = 0")
        setup.close()
        head.generation = 2
        results["1%"] = one_run(folder, path, head)
        if hasattr(os, "getloadavg"):
            results["load_average"] = round(os.getloadavg()[0], 2)
    print(
        f"DuckDB {results['duckdb']}, {args.rows:,} rows; bare read of every row: {results['bare_read_s']:.2f} s"
    )
    print(
        f"{'run':<10}{'total s':>9}{'diff s':>9}{'read s':>9}{'commit s':>10}{'changed':>10}{'unchanged':>11}"
    )
    for run in ("first", "0%", "1%"):
        r = results[run]
        print(
            f"{run:<10}{r['total_s']:>9.2f}{r['diff_s']:>9.2f}{r['read_s']:>9.2f}{r['commit_s']:>10.2f}"
            f"{r['changed']:>10,}{r['unchanged']:>11,}"
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
