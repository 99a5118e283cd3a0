"""
Micro-benchmark of the sync's per-record components outside the record builder: the unique identifier
text, the change-detection checksum, the snapshot lookup, the dispatcher's per-message bookkeeping and the
hook's request body. These are the before/after figures of the optimisations in ``docs/benchmarks.md``.

Run: ``.venv/bin/python benchmarks/bench_components.py [--records N] [--repeats R]``. Prints CPU
microseconds per record (``time.process_time``, best of R repeats), so load from other processes on the
machine inflates the figures less than wall time would.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from airflow_provider_segment_profiles.actions import compile_mappings
from airflow_provider_segment_profiles.delivery.dispatcher import Dispatcher
from airflow_provider_segment_profiles.delivery.outcome import DeliveryResult
from airflow_provider_segment_profiles.pipeline.detection.checksum import (
    Checksummer,
    checksum_hex,
    record_key,
)
from airflow_provider_segment_profiles.state.snapshot import SnapshotStore


def best_of(repeats: int, run: Callable[[], object], setup: Callable[[], object] | None = None) -> float:
    best = float("inf")
    for _ in range(repeats):
        if setup is not None:
            setup()
        started = time.process_time()
        run()
        best = min(best, time.process_time() - started)
    return best


def make_rows(count: int) -> list[tuple]:
    """Rows as the SQLite source gives them (text timestamps, float, 0/1 booleans)."""
    return [
        (
            number,
            f"customer{number}@example.com",
            "Ada",
            "Lovelace",
            ("free", "pro", "enterprise")[number % 3],
            (number % 100000) / 100.0 + 0.25,
            number % 50,
            number % 2,
            f"+1555{number:07d}",
            f"2023-11-14T22:{number % 60:02d}:{number % 60:02d}Z",
        )
        for number in range(1, count + 1)
    ]


def postgres_rows(rows: list[tuple]) -> list[tuple]:
    """The same rows as psycopg gives them from PostgreSQL (Decimal, bool, aware datetime)."""
    from datetime import UTC, datetime
    from decimal import Decimal

    return [
        (
            *row[:5],
            Decimal(f"{row[5]:.2f}"),
            row[6],
            bool(row[7]),
            row[8],
            datetime.fromisoformat(row[9]).astimezone(UTC),
        )
        for row in rows
    ]


def bench_build(rows: list[tuple], repeats: int) -> float:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_data import COLUMNS, MAPPINGS

    (mapping,) = compile_mappings(MAPPINGS, sync_mode="full", primary_key="customer_id")
    build = mapping.bind(list(COLUMNS)).build
    keys = [str(row[0]) for row in rows]

    def run() -> None:
        for row, key in zip(rows, keys, strict=True):
            build(row, primary_key=key, checksum="0123456789abcdef")

    return best_of(repeats, run)


class _InstantHook:
    """A hook whose ``send_encoded`` delivers at once (no HTTP): the dispatcher's own cost only."""

    def send_encoded(self, items, *, rate_limiter=None) -> DeliveryResult:
        return DeliveryResult(delivered=list(range(len(items))), requests=1)


def bench_snapshot(rows: list[tuple], chunk_size: int, repeats: int) -> dict[str, float]:
    keys = [str(row[0]) for row in rows]
    chunks = [
        [(key, index, None) for index, key in enumerate(keys[start : start + chunk_size], start)]
        for start in range(0, len(keys), chunk_size)
    ]
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        first_run: list[SnapshotStore] = []

        def new_first() -> None:
            for store in first_run:
                store.close()
            first_run[:] = [SnapshotStore(workdir, None)]

        def classify_first() -> None:
            store = first_run[0]
            for chunk in chunks:
                store.add_and_look_up(chunk)

        results["snapshot.classify, first run"] = best_of(repeats, classify_first, new_first)
        previous = workdir / "previous.sqlite"
        first_run[0].write_diff_snapshot(previous)
        first_run[0].close()
        second_dir = workdir / "second"
        second_dir.mkdir()
        second_run: list[SnapshotStore] = []

        def new_second() -> None:
            for store in second_run:
                store.close()
            second_run[:] = [SnapshotStore(second_dir, previous)]

        def classify_unchanged() -> None:
            store = second_run[0]
            for chunk in chunks:
                store.add_and_look_up(chunk)

        results["snapshot.classify, 0% changed"] = best_of(repeats, classify_unchanged, new_second)
        second_run[0].close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", help="run only the figures whose name contains this text")
    args = parser.parse_args()
    rows = make_rows(args.records)
    count = len(rows)
    checksummer = Checksummer("fingerprint", list(range(10)))
    sums = [checksummer(row) for row in rows]
    payload = b'{"userId":"1","traits":{"email":"customer1@example.com"},"type":"identify"}' * 4

    def dispatch() -> None:
        dispatcher = Dispatcher({"space": _InstantHook()}, batch_size=500, max_in_flight=4)
        received = 0
        for number in range(count):
            received += len(dispatcher.add("space", payload, number))
        received += len(dispatcher.flush())
        dispatcher.close()
        assert received == count

    repeats = args.repeats
    benches: dict[str, Callable[[], dict[str, float]]] = {
        "RecordBuilder.build, SQLite row": lambda: bench_build(rows, repeats),
        "RecordBuilder.build, PostgreSQL row": lambda: bench_build(postgres_rows(rows), repeats),
        "record_key(int)": lambda: best_of(repeats, lambda: [record_key(row[0]) for row in rows]),
        "Checksummer(row), 10 columns": lambda: best_of(repeats, lambda: [checksummer(row) for row in rows]),
        "checksum_hex": lambda: best_of(repeats, lambda: [checksum_hex(value) for value in sums]),
        "snapshot.classify": lambda: bench_snapshot(rows, 5000, repeats),
        "Dispatcher.add + completions": lambda: best_of(repeats, dispatch),
    }
    print(f"{count:,} records, CPU us per record, best of {repeats}")
    for name, bench in benches.items():
        if args.only and args.only.lower() not in name.lower():
            continue
        figure = bench()
        for label, seconds in figure.items() if isinstance(figure, dict) else [(name, figure)]:
            print(f"  {label:<36} {seconds / count * 1e6:7.2f}", flush=True)


if __name__ == "__main__":
    main()
