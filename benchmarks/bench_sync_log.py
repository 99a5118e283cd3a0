"""
What ``sync_log_table`` costs: full syncs of the same SQLite rows with the package of a git revision
(before), with this checkout and the sync log off, and with this checkout and the sync log on, interleaved
round by round (each round starting with the next variant) so load from other processes on the machine
hits all three alike.

Run: ``.venv/bin/python benchmarks/bench_sync_log.py --baseline REV [--rows 200k] [--rounds 3]``.
Each run is a ``bench_worker.py`` process (the real operator, ``sync_mode="full"`` from fresh state, no
rate limit) against the benchmark emulator; the baseline's package comes from ``git archive REV`` and is
put first on ``PYTHONPATH``. Prints the wall and CPU seconds of each run and the medians.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import bench_data  # noqa: E402
from run import BENCH_DIR, SQLITE_FILE, WRITE_KEY, Bench, Emulator, parse_size  # noqa: E402

LOG_TABLE = "bench_sync_log"


def extract(revision: str, folder: Path) -> Path:
    """The package at ``revision`` under ``folder`` (for ``PYTHONPATH``)."""
    archive = subprocess.run(
        ["git", "archive", revision, "airflow_provider_segment_profiles"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def run_once(bench: Bench, rows: int, state: Path, options: dict[str, Any], pythonpath: Path | None) -> dict:
    shutil.rmtree(state, ignore_errors=True)
    spec = {
        "kind": "operator",
        "task_id": "sync_log_bench",
        "run_id": "bench",
        "sql": bench_data.model_sql(rows),
        "state_path": state.as_uri(),
        "options": {"sync_mode": "full", "max_events_per_second": None, **options},
        "fetch_size": 5000,
        "write_key": WRITE_KEY,
        "emulator_url": bench.emulator.url,
        "source": "sqlite",
        "sqlite_path": str(SQLITE_FILE),
    }
    env = bench.environment("sqlite")
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    bench.emulator.command("reset")
    proc = subprocess.run(
        [sys.executable, str(HERE / "bench_worker.py"), json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit("a benchmark run failed")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["accepted"] = bench.emulator.command("stats")["messages"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--baseline", required=True, help="git revision measured as 'before'")
    parser.add_argument("--rows", type=parse_size, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bench_data.ensure_sqlite(SQLITE_FILE, args.rows)
    with sqlite3.connect(SQLITE_FILE) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {LOG_TABLE}")
    variants = {
        f"before ({args.baseline})": ({}, "baseline"),
        "after, sync log off": ({}, None),
        "after, sync log on": ({"sync_log_table": LOG_TABLE}, None),
    }
    figures: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    emulator = Emulator()
    with tempfile.TemporaryDirectory(prefix="bench_sync_log_") as tmp:
        baseline = extract(args.baseline, Path(tmp) / "baseline")
        bench = Bench(args, emulator, BENCH_DIR)
        try:
            names = list(variants)
            for round_ in range(1, args.rounds + 1):
                # Each round starts with another variant, so no variant always follows the same one.
                shift = (round_ - 1) % len(names)
                for name in names[shift:] + names[:shift]:
                    options, which = variants[name]
                    result = run_once(
                        bench, args.rows, Path(tmp) / "state", options, baseline if which else None
                    )
                    assert result["accepted"] == args.rows, result
                    figures[name].append(result)
                    print(
                        f"round {round_} {name:28s} wall {result['elapsed_s']:6.2f} s  cpu {result['cpu_s']:6.2f} s",
                        flush=True,
                    )
        finally:
            emulator.stop()
    with sqlite3.connect(SQLITE_FILE) as conn:
        logged = conn.execute(f"SELECT COUNT(*) FROM {LOG_TABLE}").fetchone()[0]
        conn.execute(f"DROP TABLE IF EXISTS {LOG_TABLE}")
    print(f"\nFull sync of {args.rows:,} SQLite rows, median of {args.rounds} interleaved rounds:")
    print("| variant | wall s | CPU s | messages/s (wall) |")
    print("|---|---:|---:|---:|")
    for name, results in figures.items():
        wall = statistics.median(r["elapsed_s"] for r in results)
        cpu = statistics.median(r["cpu_s"] for r in results)
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {args.rows / wall:,.0f} |")
    print(f"\nSync log rows written by the 'on' runs: {logged:,} ({args.rounds} x {args.rows:,})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
