"""
Benchmarks of the Segment Profiles sync (issue 6): throughput, diff cost, memory, latency hiding and rate
limiting, each compared in the same run, on the same rows, with what a user would otherwise write (the
official ``segment-analytics-python`` SDK) and with the physical floor (fetch + serialise, no HTTP).

Run with ``make bench`` (``BENCH_ARGS="..."`` passes options) or ``.venv/bin/python benchmarks/run.py``.
See ``docs/benchmarks.md`` for what each figure means and the figures measured on the project's machine.

Every measured run is its own process (``bench_worker.py``), so its peak RSS is its own; the Segment
emulator is another process (``bench_emulator.py``), so it does not compete with the sync for the GIL.
Data lives in ``.bench/`` (a SQLite file; the ``bench_customers`` table in the local PostgreSQL).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import bench_data  # noqa: E402 - the helper next to this script

from airflow_provider_segment_profiles.delivery.limits import DEFAULT_MAX_IN_FLIGHT  # noqa: E402

BENCH_DIR = REPO / ".bench"
WRITE_KEY = "bench-write-key"
SQLITE_FILE = BENCH_DIR / "warehouse.sqlite"
SECTIONS = ("throughput", "diff", "memory", "latency", "rate")
#: Targets of issue 6, read against the figures.
TARGET_SDK_RATIO = 50.0
TARGET_FLOOR_FRACTION = 0.60
TARGET_DIFF_FETCH_RATIO = 1.5
TARGET_STATE_BYTES = 32
TARGET_RSS_GROWTH_MB = 30.0
TARGET_LATENCY_FRACTION = 0.80
TARGET_RATE_TOLERANCE = 0.02
MB = 1024 * 1024


def parse_size(text: str) -> int:
    text = text.strip().lower().replace("_", "")
    factor = 1
    if text.endswith("k"):
        factor, text = 1_000, text[:-1]
    elif text.endswith("m"):
        factor, text = 1_000_000, text[:-1]
    return int(float(text) * factor)


def sizes(text: str) -> list[int]:
    return [parse_size(part) for part in text.split(",") if part.strip()]


def human(count: int) -> str:
    if count >= 1_000_000 and count % 1_000_000 == 0:
        return f"{count // 1_000_000}M"
    if count >= 1_000 and count % 1_000 == 0:
        return f"{count // 1_000}k"
    return f"{count:,}"


# -- the emulator process ---------------------------------------------------------------------------------


class Emulator:
    """``bench_emulator.py`` as a subprocess, driven over its stdin/stdout."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "bench_emulator.py"), "--write-key", WRITE_KEY],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the benchmark's Segment emulator did not start")
        self.url = json.loads(line)["url"]

    def command(self, text: str) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self.command("quit")
                self.process.wait(timeout=10)
            except Exception:
                self.process.kill()
                self.process.wait()


# -- running one measurement ------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    emulator: Emulator
    state_root: Path
    results: dict[str, Any] = field(default_factory=dict)
    runs: int = 0
    #: Schema (PostgreSQL) / table prefix (SQLite) of the warehouse engine's state; dropped at the end.
    state_schema: str = field(default_factory=lambda: f"sp_bench_{os.getpid()}")

    def drop_warehouse_state(self) -> None:
        """Drop the warehouse engine's state tables of this benchmark run."""
        import sqlite3

        if SQLITE_FILE.exists():
            db = sqlite3.connect(SQLITE_FILE)
            names = [
                r[0]
                for r in db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ?",
                    (f"{self.state_schema}__%",),
                )
            ]
            for name in names:
                db.execute(f'DROP TABLE "{name}"')
            db.commit()
            db.close()
        if "postgres" in self.args.diff_sources and "warehouse" in self.args.diff_engines:
            import psycopg

            with psycopg.connect(bench_data.POSTGRES_DSN, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.state_schema}" CASCADE')

    def environment(self, source: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
        home = BENCH_DIR / "airflow_home"
        home.mkdir(parents=True, exist_ok=True)
        if source == "sqlite":
            warehouse = {"conn_type": "sqlite", "host": str(SQLITE_FILE)}
        else:
            dsn = dict(part.split("=", 1) for part in bench_data.POSTGRES_DSN.split())
            warehouse = {
                "conn_type": "postgres",
                "host": dsn.get("host", "127.0.0.1"),
                "port": int(dsn.get("port", 5432)),
                "login": dsn.get("user", "postgres"),
                "password": dsn.get("password", ""),
                "schema": dsn.get("dbname", "test"),
            }
        env.update(
            AIRFLOW_HOME=str(home),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__UNIT_TEST_MODE="False",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
            AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
            AIRFLOW_CONN_BENCH_WAREHOUSE=json.dumps(warehouse),
            AIRFLOW_CONN_SEGMENT_PROFILES_DEFAULT=json.dumps(
                {"conn_type": "segment_profiles", "password": WRITE_KEY, "host": self.emulator.url}
            ),
        )
        return env

    def run(self, spec: dict[str, Any], source: str, label: str) -> dict[str, Any]:
        """Run one worker; add the emulator's view (messages accepted) and the wall time around it."""
        self.runs += 1
        spec = {
            "fetch_size": 5000,
            "write_key": WRITE_KEY,
            "emulator_url": self.emulator.url,
            "source": source,
            "sqlite_path": str(SQLITE_FILE),
            "postgres_dsn": bench_data.POSTGRES_DSN,
            **spec,
        }
        self.emulator.command("reset")
        print(f"  running {label} ...", end="", flush=True)
        proc = subprocess.run(
            [sys.executable, str(HERE / "bench_worker.py"), json.dumps(spec)],
            env=self.environment(source),
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            print(" failed")
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise SystemExit(f"benchmark run {label!r} failed (exit {proc.returncode})")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        stats = self.emulator.command("stats")
        result["accepted"] = stats["messages"]
        result["emulator_requests"] = stats["requests"]
        result["emulator_dropped"] = stats["dropped"]
        if spec["kind"] in ("operator", "sdk", "ceiling"):
            result["msgs_per_s"] = stats["messages"] / result["elapsed_s"]
        result["rows_per_s"] = result["rows"] / result["elapsed_s"]
        result["load"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        print(
            f" {result['elapsed_s']:.1f} s, {result['rows']:,} rows"
            + (
                f", {stats['messages']:,} messages accepted"
                if spec["kind"] in ("operator", "sdk", "ceiling")
                else ""
            )
            + f", peak RSS {result['peak_rss'] / MB:.0f} MB"
        )
        return result

    # -- the contenders --------------------------------------------------------------------------------

    def operator(
        self,
        source: str,
        rows: int,
        mode: str,
        *,
        task: str,
        sql: str | None = None,
        label: str,
        **options: Any,
    ) -> dict[str, Any]:
        options = {"sync_mode": mode, "max_events_per_second": None, **options}
        if mode == "incremental":
            options.setdefault("cursor_column", "updated_at")
        spec = {
            "kind": "operator",
            "task_id": f"{task}_{source}",
            "run_id": f"bench_{self.runs}",
            "sql": sql or bench_data.model_sql(rows),
            "state_path": self.state_root.as_uri(),
            "options": options,
        }
        if self.args.profile_dir:
            spec["profile"] = str(Path(self.args.profile_dir) / f"{task}_{source}_{self.runs}.txt")
        return self.run(spec, source, label)

    def sdk(self, source: str, rows: int) -> dict[str, Any]:
        spec = {"kind": "sdk", "sql": bench_data.model_sql(rows), "rows": rows}
        return self.run(spec, source, f"official SDK, {source}, {human(rows)} rows")

    def floor(self, source: str, rows: int, kind: str = "floor", sql: str | None = None) -> dict[str, Any]:
        spec = {"kind": kind, "sql": sql or bench_data.model_sql(rows)}
        what = "fetch + serialise (floor)" if kind == "floor" else "bare fetch"
        return self.run(spec, source, f"{what}, {source}, {human(rows)} rows")

    def ceiling(self, source: str, rows: int) -> dict[str, Any]:
        spec = {"kind": "ceiling", "sql": bench_data.model_sql(rows)}
        return self.run(spec, source, f"HTTP ceiling (pre-encoded, hook only), {source}, {human(rows)} rows")

    def cached(self, key: str, make) -> dict[str, Any]:
        if key not in self.results:
            self.results[key] = make()
        return self.results[key]

    def full_sync(self, source: str, rows: int) -> dict[str, Any]:
        return self.cached(
            f"full/{source}/{rows}",
            lambda: self.operator(
                source,
                rows,
                "full",
                task=f"full_{rows}",
                label=f"provider full sync, {source}, {human(rows)} rows",
            ),
        )

    def snapshot_bytes(self, task_id: str) -> tuple[int, int]:
        """(bytes of the committed snapshot file, records in it) of a diff sync's state."""
        root = self.state_root / "segment_profiles_bench" / task_id / "task"
        head = json.loads((root / "HEAD.json").read_text())
        return (root / "snapshots" / head["snapshot"]).stat().st_size, head["records"]


# -- sections ---------------------------------------------------------------------------------------------


def section_throughput(bench: Bench, out: Report) -> None:
    args = bench.args
    out.heading("1. Full sync throughput (identify, no added latency, rate limit off)")
    table = []
    for rows in args.sizes:
        for source in args.sources:
            provider = bench.full_sync(source, rows)
            sdk_rows = min(rows, args.sdk_max_rows) if args.sdk_max_rows else rows
            sdk = bench.cached(f"sdk/{source}/{sdk_rows}", lambda s=source, n=sdk_rows: bench.sdk(s, n))
            floor = bench.cached(f"floor/{source}/{rows}", lambda s=source, n=rows: bench.floor(s, n))
            fetch = bench.cached(
                f"fetch/{source}/{rows}", lambda s=source, n=rows: bench.floor(s, n, kind="fetch")
            )
            ceiling_rows = min(rows, args.sdk_max_rows) if args.sdk_max_rows else rows
            ceiling = bench.cached(
                f"ceiling/{source}/{ceiling_rows}", lambda s=source, n=ceiling_rows: bench.ceiling(s, n)
            )
            check_delivery(provider, rows, "provider")
            check_delivery(sdk, sdk_rows, "SDK")
            sdk_ratio = provider["msgs_per_s"] / sdk["msgs_per_s"]
            floor_fraction = provider["msgs_per_s"] / floor["rows_per_s"]
            out.target(
                f"full sync {source} {human(rows)} >= {TARGET_SDK_RATIO:.0f}x SDK",
                sdk_ratio >= TARGET_SDK_RATIO,
                f"{sdk_ratio:.1f}x",
            )
            out.target(
                f"full sync {source} {human(rows)} >= {TARGET_FLOOR_FRACTION:.0%} of floor",
                floor_fraction >= TARGET_FLOOR_FRACTION,
                f"{floor_fraction:.0%}",
            )
            table.append(
                [
                    source,
                    human(rows),
                    f"{provider['msgs_per_s']:,.0f}",
                    f"{sdk['msgs_per_s']:,.0f}" + ("" if sdk_rows == rows else f" ({human(sdk_rows)})"),
                    f"{sdk_ratio:.1f}x",
                    f"{floor['rows_per_s']:,.0f}",
                    f"{floor_fraction:.0%}",
                    f"{fetch['rows_per_s']:,.0f}",
                    f"{ceiling['msgs_per_s']:,.0f}",
                    f"{provider['msgs_per_s'] / ceiling['msgs_per_s']:.0%}",
                    f"{provider['cpu_s'] / rows * 1e6:.1f}",
                    f"{provider['peak_rss'] / MB:.0f}",
                ]
            )
    out.table(
        [
            "source",
            "rows",
            "provider msg/s",
            "SDK msg/s",
            "provider/SDK",
            "floor rows/s",
            "provider/floor",
            "fetch rows/s",
            "HTTP ceiling msg/s",
            "provider/ceiling",
            "provider CPU us/rec",
            "provider peak RSS MB",
        ],
        table,
    )
    out.note(
        "provider: SegmentProfilesSyncOperator.execute(), sync_mode=full, max_events_per_second=None, "
        f"defaults otherwise (batch_size 500, {DEFAULT_MAX_IN_FLIGHT} requests in flight). "
        "SDK: segment-analytics-python, a loop of "
        "analytics.identify then flush(), defaults except max_queue_size (raised so nothing is dropped); "
        "a figure in brackets is the row count the SDK was measured on (--sdk-max-rows; its rate does not "
        "depend on the count). floor: the same query fetched and each row serialised to the same message "
        "JSON with msgspec, no HTTP. HTTP ceiling: the same messages encoded beforehand, then only sent "
        f"with the provider's hook (batches of 500, {DEFAULT_MAX_IN_FLIGHT} threads): the most the HTTP path "
        "and the emulator "
        "take, measured on the SDK's row count."
    )


def section_diff(bench: Bench, out: Report) -> None:
    args = bench.args
    rows = args.diff_size
    out.heading(f"2. Diff cost on {human(rows)} records (sync_mode=diff)")
    table = []
    for source in args.diff_sources:
        fetch = bench.cached(f"fetch/{source}/{rows}", lambda s=source: bench.floor(s, rows, kind="fetch"))
        for engine in args.diff_engines:
            table.extend(diff_runs(bench, out, source, rows, engine, fetch))
        table.append(
            [
                source,
                "",
                "bare fetch",
                f"{fetch['elapsed_s']:.1f}",
                "",
                f"{rows:,}",
                "",
                "1.0x",
                f"{fetch['peak_rss'] / MB:.0f}",
                "",
            ]
        )
    out.table(
        [
            "source",
            "change_detection",
            "run",
            "wall s",
            "selected",
            "rows fetched",
            "messages",
            "vs bare fetch",
            "peak RSS MB",
            "RSS growth MB",
        ],
        table,
    )
    out.note(
        "Each run is a new process continuing from the state the previous one committed. Changes are "
        "made by the model SQL (every k-th record's plan reads differently), not by rewriting the table. "
        "RSS growth: peak RSS minus RSS just before execute(). Rows fetched: rows that crossed the network "
        "(the summary's rows_fetched); the warehouse engine counts unchanged rows in SQL."
    )


def diff_runs(
    bench: Bench, out: Report, source: str, rows: int, engine: str, fetch: dict[str, Any]
) -> list[list[str]]:
    """First run, then 0%, 1% and 100% changed, with one change-detection engine; the table's rows."""
    warehouse = engine == "warehouse"
    task = f"diff_{rows}" + ("_warehouse" if warehouse else "")
    options: dict[str, Any] = (
        {"change_detection": "warehouse", "state_schema": bench.state_schema} if warehouse else {}
    )
    suffix = "" if not warehouse else "-warehouse"
    first = bench.cached(
        f"diff-first{suffix}/{source}/{rows}",
        lambda: bench.operator(
            source,
            rows,
            "diff",
            task=task,
            label=f"diff first run (100% added), {engine}, {source}, {human(rows)}",
            **options,
        ),
    )
    runs = [("first run, 100% added", first, None)]
    for label, every, marker in (
        ("0% changed", None, "changed"),
        ("1% changed", 100, "changed"),
        ("100% changed", 1, "changed-again"),
    ):
        result = bench.operator(
            source,
            rows,
            "diff",
            task=task,
            sql=bench_data.model_sql(rows, every, marker),
            label=f"diff {label}, {engine}, {source}, {human(rows)}",
            **options,
        )
        runs.append((label, result, every))
        bench.results[f"diff-{label}{suffix}/{source}/{rows}"] = result
    table = []
    for label, result, _every in runs:
        ratio = result["elapsed_s"] / fetch["elapsed_s"]
        fetched = result.get("rows_fetched")
        table.append(
            [
                source,
                engine,
                label,
                f"{result['elapsed_s']:.1f}",
                f"{result['records']['updated'] + result['records']['added']:,}",
                "" if fetched is None else f"{fetched:,}",
                f"{result['accepted']:,}",
                f"{ratio:.1f}x",
                f"{result['peak_rss'] / MB:.0f}",
                f"{(result['peak_rss'] - result['baseline_rss']) / MB:+.0f}",
            ]
        )
    zero = runs[1][1]
    ratio = zero["elapsed_s"] / fetch["elapsed_s"]
    out.target(
        f"diff 0% changed {engine} {source} {human(rows)} <= {TARGET_DIFF_FETCH_RATIO}x bare fetch",
        ratio <= TARGET_DIFF_FETCH_RATIO,
        f"{ratio:.2f}x ({zero['elapsed_s']:.1f} s vs {fetch['elapsed_s']:.1f} s)",
    )
    if not warehouse:  # the warehouse engine keeps no snapshot file
        size, records = bench.snapshot_bytes(f"{task}_{source}")
        bench.results[f"diff-state/{source}/{rows}"] = {"bytes": size, "records": records}
        per_record = size / max(records, 1)
        out.target(
            f"diff state {source} <= {TARGET_STATE_BYTES} bytes/record (on disk)",
            per_record <= TARGET_STATE_BYTES,
            f"{per_record:.1f} bytes/record ({size / MB:.1f} MB for {records:,} records)",
        )
    return table


def section_memory(bench: Bench, out: Report) -> None:
    args = bench.args
    out.heading("3. Memory vs size (peak RSS of the whole sync process, MB)")
    table = []
    source = "sqlite"
    peaks: dict[str, dict[int, int]] = {"full": {}, "incremental": {}, "diff": {}}
    for rows in args.memory_sizes:
        full = bench.full_sync(source, rows)
        incremental = bench.cached(
            f"incremental/{source}/{rows}",
            lambda n=rows: bench.operator(
                source,
                n,
                "incremental",
                task=f"incremental_{n}",
                label=f"provider incremental sync, {source}, {human(n)}",
            ),
        )
        diff = bench.cached(
            f"diff-first/{source}/{rows}",
            lambda n=rows: bench.operator(
                source,
                n,
                "diff",
                task=f"diff_{n}",
                label=f"diff first run (100% added), {source}, {human(n)}",
            ),
        )
        size, records = bench.snapshot_bytes(f"diff_{rows}_{source}")
        for mode, result in (("full", full), ("incremental", incremental), ("diff", diff)):
            peaks[mode][rows] = result["peak_rss"]
        table.append(
            [
                human(rows),
                f"{full['peak_rss'] / MB:.0f}",
                f"{incremental['peak_rss'] / MB:.0f}",
                f"{diff['peak_rss'] / MB:.0f}",
                f"{size / max(records, 1):.1f}",
                f"{size / MB:.1f}",
            ]
        )
    out.table(
        ["rows", "full", "incremental", "diff (first run)", "diff state bytes/record", "snapshot MB"], table
    )
    smallest, largest = min(args.memory_sizes), max(args.memory_sizes)
    for mode in ("full", "incremental"):
        growth = (peaks[mode][largest] - peaks[mode][smallest]) / MB
        span = f"{human(smallest)} -> {human(largest)}"
        out.target(
            f"RSS growth {mode} {span} <= {TARGET_RSS_GROWTH_MB:.0f} MB"
            + ("" if largest >= 5_000_000 else " (5M not run: --large)"),
            growth <= TARGET_RSS_GROWTH_MB,
            f"{growth:+.1f} MB",
        )
    growth = (peaks["diff"][largest] - peaks["diff"][smallest]) / MB
    per_record = growth * MB / max(largest - smallest, 1)
    out.target(
        f"diff state in memory <= {TARGET_STATE_BYTES} bytes/record",
        per_record <= TARGET_STATE_BYTES,
        f"RSS {growth:+.1f} MB from {human(smallest)} to {human(largest)} = {per_record:.1f} bytes/record "
        "(the snapshot is an SQLite file on disk)",
    )
    out.note("SQLite source. Full and incremental syncs send every row (first run); diff is the first run.")


def section_latency(bench: Bench, out: Report) -> None:
    args = bench.args
    rows = args.latency_size
    out.heading(
        f"4. Latency hiding ({args.latency * 1000:.0f} ms added per request, {human(rows)} rows, SQLite)"
    )
    zero = bench.full_sync("sqlite", rows)
    bench.emulator.command(f"latency {args.latency}")
    try:
        slow = bench.operator(
            "sqlite",
            rows,
            "full",
            task=f"latency_{rows}",
            label=f"provider full sync, {args.latency * 1000:.0f} ms",
        )
        bench.results[f"latency/sqlite/{rows}"] = slow
        extra = []
        for in_flight in args.latency_in_flight:
            result = bench.operator(
                "sqlite",
                rows,
                "full",
                task=f"latency_{rows}_{in_flight}",
                label=f"provider full sync, {args.latency * 1000:.0f} ms, {in_flight} in flight",
                max_requests_in_flight=in_flight,
            )
            bench.results[f"latency/sqlite/{rows}/{in_flight}"] = result
            extra.append((in_flight, result))
    finally:
        bench.emulator.command("latency 0")
    fraction = slow["msgs_per_s"] / zero["msgs_per_s"]
    table = [
        ["0 ms", f"{DEFAULT_MAX_IN_FLIGHT} (default)", f"{zero['msgs_per_s']:,.0f}", "100%"],
        [
            f"{args.latency * 1000:.0f} ms",
            f"{DEFAULT_MAX_IN_FLIGHT} (default)",
            f"{slow['msgs_per_s']:,.0f}",
            f"{fraction:.0%}",
        ],
    ]
    for in_flight, result in extra:
        table.append(
            [
                f"{args.latency * 1000:.0f} ms",
                str(in_flight),
                f"{result['msgs_per_s']:,.0f}",
                f"{result['msgs_per_s'] / zero['msgs_per_s']:.0%}",
            ]
        )
    out.table(["added latency", "requests in flight", "msg/s", "vs no latency"], table)
    out.target(
        f"{args.latency * 1000:.0f} ms latency >= {TARGET_LATENCY_FRACTION:.0%} of zero-latency throughput",
        fraction >= TARGET_LATENCY_FRACTION,
        f"{fraction:.0%} with the defaults",
    )


def section_rate(bench: Bench, out: Report) -> None:
    args = bench.args
    rate = 1000.0
    batch = 500
    rows = int(args.rate_seconds * rate) + batch
    out.heading(f"5. Rate limiting (max_events_per_second={rate:.0f}, {human(rows)} rows, SQLite)")
    result = bench.operator(
        "sqlite",
        rows,
        "full",
        task="rate",
        label=f"provider, {rate:.0f} events/s",
        max_events_per_second=rate,
    )
    arrivals = sorted((t, n) for t, n in bench.emulator.command("arrivals")["arrivals"])
    bench.results["rate"] = {**result, "arrivals": len(arrivals)}
    figures = rate_figures(arrivals, result["started_epoch"], rate)
    bench.results["rate"].update(figures)
    out.table(
        ["measure", "value"],
        [
            ["events delivered", f"{figures['events']:,}"],
            ["requests", f"{len(arrivals):,}"],
            ["span first -> last arrival", f"{figures['span_s']:.1f} s"],
            ["measured rate (events after the first request / span)", f"{figures['rate']:.1f} /s"],
            ["highest rate over any window of >= 10 s", f"{figures['max_10s']:.1f} /s"],
            ["highest rate over any window of >= 1 s", f"{figures['max_1s']:.1f} /s"],
            ["most events in any 1 s window [t, t+1)", f"{figures['max_in_1s']:,}"],
            ["events ahead of rate x time since execute() started", f"{figures['ahead']:,}"],
        ],
    )
    error = abs(figures["rate"] - rate) / rate
    out.target(
        f"rate within {TARGET_RATE_TOLERANCE:.0%} of {rate:.0f}/s",
        error <= TARGET_RATE_TOLERANCE,
        f"{figures['rate']:.1f}/s ({error:.2%} off)",
    )
    out.target(
        "rate never above the limit (cumulative events <= rate x elapsed since start)",
        figures["ahead"] <= 0,
        f"highest 10 s window {figures['max_10s']:.1f}/s, cumulative margin {-figures['ahead']:,} events",
    )
    out.note(
        "Times are the emulator's arrival times of each /v1/batch request (500 events each). A 1 s window "
        "holds whole requests, so it can hold 1,000 events, or 1,500 when network jitter brings three "
        "requests 0.5 s apart inside one second; windows of >= 10 s smooth that out."
    )


def rate_figures(arrivals: list[tuple[float, int]], started: float, rate: float) -> dict[str, Any]:
    times = [t for t, _ in arrivals]
    counts = [n for _, n in arrivals]
    events = sum(counts)
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    measured = (events - counts[0]) / span if span else float("nan")
    cumulative = []
    total = 0
    for n in counts:
        total += n
        cumulative.append(total)

    def max_rate(min_window: float) -> float:
        best = 0.0
        for i in range(len(times)):
            for j in range(i + 1, len(times)):
                window = times[j] - times[i]
                if window >= min_window:
                    best = max(best, (cumulative[j] - cumulative[i]) / window)
        return best

    max_in_1s = 0
    j = 0
    for i in range(len(times)):
        while j < len(times) and times[j] < times[i] + 1.0:
            j += 1
        max_in_1s = max(max_in_1s, cumulative[j - 1] - (cumulative[i - 1] if i else 0))
    ahead = max(cumulative[k] - rate * (times[k] - started) for k in range(len(times)))
    return {
        "events": events,
        "span_s": span,
        "rate": measured,
        "max_10s": max_rate(10.0),
        "max_1s": max_rate(1.0),
        "max_in_1s": max_in_1s,
        "ahead": int(ahead),
    }


def check_delivery(result: dict[str, Any], expected: int, who: str) -> None:
    if result["accepted"] != expected:
        print(f"  WARNING: {who} delivered {result['accepted']:,} of {expected:,} messages to the emulator")


# -- output -----------------------------------------------------------------------------------------------


class Report:
    """Collects tables and target verdicts; prints as it goes and writes Markdown at the end."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.targets: list[tuple[str, bool, str]] = []

    def emit(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def heading(self, text: str) -> None:
        self.emit()
        self.emit(f"### {text}")
        self.emit()

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
        self.emit("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
        self.emit("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for row in rows:
            self.emit("| " + " | ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)) + " |")
        self.emit()

    def note(self, text: str) -> None:
        self.emit(text)

    def target(self, name: str, met: bool, figure: str) -> None:
        self.targets.append((name, met, figure))

    def summary(self) -> None:
        self.heading("Targets")
        self.table(
            ["target", "result", "figure"],
            [[name, "met" if met else "MISSED", figure] for name, met, figure in self.targets],
        )


def machine() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor() or "?"
    info["cpu"] = f"{cpu}, {os.cpu_count()} cores"
    try:
        kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if "MemTotal" in line
        )
        info["memory"] = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration):
        pass
    info["python"] = platform.python_version()
    from importlib.metadata import PackageNotFoundError, version

    for package in (
        "apache-airflow",
        "airflow-provider-segment-profiles",
        "segment-analytics-python",
        "psycopg",
        "msgspec",
        "requests",
    ):
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            info[package] = "not installed"
    import sqlite3

    info["sqlite"] = sqlite3.sqlite_version
    if bench_data.postgres_problem() is None:
        import psycopg

        with psycopg.connect(bench_data.POSTGRES_DSN) as conn:
            info["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
    return info


# -- main -------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmarks of the Segment Profiles sync against the official SDK and the floor.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help="comma-separated: " + ", ".join(SECTIONS)
    )
    parser.add_argument("--sizes", type=sizes, default=sizes("100k,1M"), help="full-sync row counts")
    parser.add_argument("--sources", default="sqlite,postgres", help="warehouses: sqlite, postgres")
    parser.add_argument(
        "--sdk-max-rows",
        type=parse_size,
        default=parse_size("100k"),
        help="measure the SDK on at most this many rows (its rate does not depend on the count); 0: all",
    )
    parser.add_argument("--diff-size", type=parse_size, default=parse_size("1M"))
    parser.add_argument("--diff-sources", default="sqlite")
    parser.add_argument(
        "--diff-engines",
        default="worker",
        help="change_detection engines of the diff section: worker, warehouse",
    )
    parser.add_argument("--memory-sizes", type=sizes, default=sizes("100k,1M"))
    parser.add_argument("--large", action="store_true", help="add 5M rows to --memory-sizes")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the emulator adds per request")
    parser.add_argument("--latency-size", type=parse_size, default=parse_size("100k"))
    parser.add_argument(
        "--latency-in-flight",
        type=lambda t: [int(x) for x in t.split(",") if x],
        default=[],
        help="also measure the latency run with these max_requests_in_flight values",
    )
    parser.add_argument("--rate-seconds", type=float, default=60.0, help="length of the rate-limit run")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test of the benchmark")
    parser.add_argument("--profile-dir", help="write a pyinstrument profile of every provider run here")
    parser.add_argument("--keep-state", action="store_true", help="keep the sync state folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = [10_000]
        args.sdk_max_rows = 10_000
        args.diff_size = 20_000
        args.memory_sizes = [10_000, 20_000]
        args.latency_size = 10_000
        args.rate_seconds = 5.0
    if args.large and 5_000_000 not in args.memory_sizes:
        args.memory_sizes.append(5_000_000)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    args.sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    args.diff_sources = [s.strip() for s in args.diff_sources.split(",") if s.strip()]
    args.diff_engines = [s.strip() for s in args.diff_engines.split(",") if s.strip()]
    unknown = set(args.diff_engines) - {"worker", "warehouse"}
    if unknown:
        parser.error(f"unknown change_detection engines: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Report()
    info = machine()
    wanted_postgres = "postgres" in args.sources or "postgres" in args.diff_sources
    problem = bench_data.postgres_problem() if wanted_postgres else None
    if problem:
        print(f"PostgreSQL skipped: {problem}")
        args.sources = [s for s in args.sources if s != "postgres"]
        args.diff_sources = [s for s in args.diff_sources if s != "postgres"]
    needed = {"sqlite": 0, "postgres": 0}
    rate_rows = int(args.rate_seconds * 1000) + 500
    for section, counts, sources in (
        ("throughput", args.sizes, args.sources),
        ("diff", [args.diff_size], args.diff_sources),
        ("memory", args.memory_sizes, ["sqlite"]),
        ("latency", [args.latency_size], ["sqlite"]),
        ("rate", [rate_rows], ["sqlite"]),
    ):
        if section in args.sections:
            for source in sources:
                needed[source] = max(needed[source], *counts)
    started = time.monotonic()
    print("Preparing data ...", flush=True)
    if needed["sqlite"]:
        bench_data.ensure_sqlite(SQLITE_FILE, needed["sqlite"])
    if needed["postgres"]:
        bench_data.ensure_postgres(needed["postgres"])

    out.emit("## Segment Profiles sync benchmarks")
    out.emit()
    out.emit("Machine: " + "; ".join(f"{k} {v}" for k, v in info.items()))
    out.emit(f"Command: benchmarks/run.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    if hasattr(os, "getloadavg"):
        out.emit(f"Load average at start: {os.getloadavg()[0]:.2f}")
    state_root = BENCH_DIR / f"state-{os.getpid()}"
    shutil.rmtree(state_root, ignore_errors=True)
    state_root.mkdir(parents=True)
    emulator = Emulator()
    bench = Bench(args, emulator, state_root)
    try:
        for name in args.sections:
            globals()[f"section_{name}"](bench, out)
    finally:
        emulator.stop()
        if not args.keep_state:
            shutil.rmtree(state_root, ignore_errors=True)
            bench.drop_warehouse_state()
    out.summary()
    elapsed = time.monotonic() - started
    out.emit(
        f"Benchmarks took {elapsed / 60:.1f} min"
        + (f"; load average at end {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "")
    )
    BENCH_DIR.mkdir(exist_ok=True)
    (BENCH_DIR / "results.md").write_text("\n".join(out.lines) + "\n")
    (BENCH_DIR / "results.json").write_text(
        json.dumps({"machine": info, "args": vars(args), "results": bench.results}, indent=1, default=str)
    )
    print(f"\nWritten: {BENCH_DIR / 'results.md'} and results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
