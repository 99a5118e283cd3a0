"""
One measured run, in its own process so its peak RSS is its own: ``python bench_worker.py '<json spec>'``.

The spec's ``kind`` picks the contender; the result is one JSON line on stdout (the last line):

- ``operator``: :class:`SegmentProfilesSyncOperator` ``execute()`` with a minimal fake TaskInstance context
  (dag_id, task_id, run_id, try_number, map_index, and XCom calls that keep nothing: ``HEAD.json`` under
  ``state_path`` carries state between runs). Everything else is the real operator: the real connections
  (``AIRFLOW_CONN_*``), reader, checksums, snapshot store, mapping compiler, hook and dispatcher.
- ``sdk``: the official ``segment-analytics-python``: a loop of ``analytics.identify`` over the same rows,
  then ``analytics.flush()``.
- ``floor``: the same query fetched and each row serialised to the same message JSON with msgspec, no
  HTTP, no change detection, no validation.
- ``fetch``: the same query fetched, nothing else.
- ``ceiling``: the rows' messages encoded beforehand, then only sent, with the provider's hook from as
  many threads as the operator's default requests in flight: what the HTTP path and the emulator can take.

The SDK, floor and fetch open the warehouse with its driver directly (``sqlite3``, ``psycopg`` 3, as a
user's script would); the provider reads through Airflow's hooks, which use the same drivers.

Peak RSS is ``ru_maxrss`` of this process; ``baseline_rss`` is the RSS after imports and connection setup,
just before the measured part starts.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_data import MAPPINGS


def current_rss() -> int:
    """Resident set size now, in bytes (Linux ``/proc``; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss()


def peak_rss() -> int:
    """Peak resident set size of this process, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak RSS mark (Linux >= 4.0: ``/proc/self/clear_refs`` ``5``)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def vm_hwm() -> int | None:
    """Peak RSS since the last :func:`reset_peak_rss` (Linux ``VmHWM``), in bytes."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads), in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def connect(spec: dict[str, Any]) -> Any:
    """
    A DB-API connection to the benchmark's warehouse straight from its driver (``sqlite3``, ``psycopg``
    3), as a script of a user would open it; the provider gets the same drivers through Airflow's hooks.
    """
    if spec["source"] == "sqlite":
        import sqlite3

        return sqlite3.connect(spec["sqlite_path"])
    import psycopg

    return psycopg.connect(spec["postgres_dsn"])


def open_cursor(conn: Any, sql: str, fetch_size: int) -> Any:
    """A cursor over ``sql`` as a careful user would open it: server-side on PostgreSQL."""
    if type(conn).__module__.startswith(("psycopg2", "psycopg")):
        cursor = conn.cursor(name="bench_cursor")
        if hasattr(cursor, "itersize"):
            cursor.itersize = fetch_size
    else:
        cursor = conn.cursor()
    cursor.execute(sql)
    return cursor


def rows_of(cursor: Any, fetch_size: int):
    while rows := cursor.fetchmany(fetch_size):
        yield rows


# -- contenders ------------------------------------------------------------------------------------------


def run_operator(spec: dict[str, Any]) -> dict[str, Any]:
    from airflow_provider_segment_profiles.operators.segment_profiles import SegmentProfilesSyncOperator

    options = dict(spec.get("options", {}))
    operator = SegmentProfilesSyncOperator(
        task_id=spec["task_id"],
        conn_id="bench_warehouse",
        sql=spec["sql"],
        primary_key="customer_id",
        mappings=MAPPINGS,
        state_path=spec["state_path"],
        progress_interval_s=3600,
        **options,
    )
    context = {"ti": FakeTaskInstance(spec["task_id"], spec["run_id"]), "run_id": spec["run_id"]}
    operator.warehouse_hook  # noqa: B018 - resolve the connection before the clock starts
    profile = spec.get("profile")
    started_epoch = time.time()
    baseline = current_rss()
    reset_peak_rss()
    cpu_started = cpu_seconds()
    started = time.perf_counter()
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001)
        profiler.start()
        summary = operator.execute(context)
        profiler.stop()
        Path(profile).write_text(profiler.output_text(unicode=False, color=False, show_all=False))
    else:
        summary = operator.execute(context)
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds() - cpu_started
    return {
        "elapsed_s": elapsed,
        "cpu_s": cpu,
        "rows": summary["rows_read"],
        "messages": summary["messages"]["delivered"],
        "rejected": summary["messages"]["rejected"],
        "failed": summary["messages"]["failed"],
        "records": summary["records"],
        "rows_fetched": summary.get("rows_fetched"),
        "requests": summary.get("requests"),
        "started_epoch": started_epoch,
        "baseline_rss": baseline,
        "peak_rss": vm_hwm() or peak_rss(),
    }


class FakeTaskInstance:
    """What ``execute()`` reads from the context's TaskInstance; XCom keeps nothing."""

    def __init__(self, task_id: str, run_id: str) -> None:
        self.dag_id = "segment_profiles_bench"
        self.task_id = task_id
        self.run_id = run_id
        self.try_number = 1
        self.map_index = -1

    def xcom_pull(self, **kwargs: Any) -> Any:
        return None

    def xcom_push(self, key: str, value: Any) -> None:
        pass


def run_sdk(spec: dict[str, Any]) -> dict[str, Any]:
    from datetime import datetime

    from segment import analytics

    analytics.write_key = spec["write_key"]
    analytics.host = spec["emulator_url"].removesuffix("/v1")
    # The default queue (10,000) drops messages once the loop outruns the upload thread; a user who
    # wants every record delivered raises it. Everything else is the SDK's default.
    analytics.max_queue_size = spec["rows"] + 1
    errors: list[str] = []
    analytics.on_error = lambda error, items: errors.append(repr(error))
    fetch_size = spec["fetch_size"]
    conn = connect(spec)
    baseline = current_rss()
    reset_peak_rss()
    cpu_started = cpu_seconds()
    started = time.perf_counter()
    cursor = open_cursor(conn, spec["sql"], fetch_size)
    rows = 0
    parse = datetime.fromisoformat
    for chunk in rows_of(cursor, fetch_size):
        rows += len(chunk)
        for row in chunk:
            updated_at = row[9]
            analytics.identify(
                str(row[0]),
                {
                    "email": row[1],
                    "first_name": row[2],
                    "last_name": row[3],
                    "plan": row[4],
                    "lifetime_value": row[5],
                    "orders": row[6],
                    "is_active": row[7],
                    "phone": row[8],
                },
                timestamp=parse(updated_at) if isinstance(updated_at, str) else updated_at,
            )
    analytics.flush()
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds() - cpu_started
    cursor.close()
    conn.close()
    analytics.shutdown()
    return {
        "elapsed_s": elapsed,
        "cpu_s": cpu,
        "rows": rows,
        "errors": errors[:5],
        "baseline_rss": baseline,
        "peak_rss": vm_hwm() or peak_rss(),
    }


_INTEGRATIONS = {"All": False}
_CONTEXT = {"consent": {}}


def floor_message(row: tuple) -> dict[str, Any]:
    """The provider's identify message for a row, built by hand (no validation, no conversion)."""
    user_id = str(row[0])
    return {
        "userId": user_id,
        "messageId": "rs-" + user_id,
        "traits": {
            "email": row[1],
            "first_name": row[2],
            "last_name": row[3],
            "plan": row[4],
            "lifetime_value": row[5],
            "orders": row[6],
            "is_active": row[7],
            "phone": row[8],
        },
        "timestamp": row[9],
        "integrations": _INTEGRATIONS,
        "type": "identify",
        "context": _CONTEXT,
    }


def run_ceiling(spec: dict[str, Any]) -> dict[str, Any]:
    """
    The HTTP ceiling: the rows' messages encoded beforehand (not timed), then sent as fast as the
    provider's hook can, batches of 500 from as many threads as the operator's default requests in
    flight. Measures the client's HTTP path and what the emulator can take, with no per-record work.
    """
    from concurrent.futures import ThreadPoolExecutor

    import msgspec

    from airflow_provider_segment_profiles.delivery.limits import DEFAULT_MAX_IN_FLIGHT
    from airflow_provider_segment_profiles.hooks.segment_profiles import SegmentProfilesHook

    encode = msgspec.json.Encoder(decimal_format="number").encode
    conn = connect(spec)
    cursor = open_cursor(conn, spec["sql"], spec["fetch_size"])
    messages = [encode(floor_message(row)) for chunk in rows_of(cursor, spec["fetch_size"]) for row in chunk]
    cursor.close()
    conn.close()
    batches = [messages[i : i + 500] for i in range(0, len(messages), 500)]
    hook = SegmentProfilesHook(pool_size=DEFAULT_MAX_IN_FLIGHT)
    hook.session  # noqa: B018 - connect before the clock starts
    baseline = current_rss()
    reset_peak_rss()
    cpu_started = cpu_seconds()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=DEFAULT_MAX_IN_FLIGHT) as pool:
        delivered = sum(len(r.delivered) for r in pool.map(hook.send_encoded, batches))
    elapsed = time.perf_counter() - started
    return {
        "elapsed_s": elapsed,
        "cpu_s": cpu_seconds() - cpu_started,
        "rows": len(messages),
        "messages": delivered,
        "baseline_rss": baseline,
        "peak_rss": vm_hwm() or peak_rss(),
    }


def run_floor(spec: dict[str, Any], serialise: bool) -> dict[str, Any]:
    import msgspec

    encode = msgspec.json.Encoder(decimal_format="number").encode
    fetch_size = spec["fetch_size"]
    conn = connect(spec)
    baseline = current_rss()
    reset_peak_rss()
    cpu_started = cpu_seconds()
    started = time.perf_counter()
    cursor = open_cursor(conn, spec["sql"], fetch_size)
    rows = 0
    size = 0
    for chunk in rows_of(cursor, fetch_size):
        rows += len(chunk)
        if not serialise:
            continue
        for row in chunk:
            size += len(encode(floor_message(row)))
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds() - cpu_started
    cursor.close()
    conn.close()
    return {
        "elapsed_s": elapsed,
        "cpu_s": cpu,
        "rows": rows,
        "bytes": size,
        "baseline_rss": baseline,
        "peak_rss": vm_hwm() or peak_rss(),
    }


def main() -> int:
    spec = json.loads(sys.argv[1])
    kind = spec["kind"]
    if kind == "operator":
        result = run_operator(spec)
    elif kind == "sdk":
        result = run_sdk(spec)
    elif kind == "ceiling":
        result = run_ceiling(spec)
    elif kind in ("floor", "fetch"):
        result = run_floor(spec, serialise=kind == "floor")
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
