"""
CPU seconds of the per-record path, in one process: a 0%-changed diff run and a full dry run (no HTTP)
of the real operator on the SQLite benchmark model, several times each. Prints one JSON line.

CPU time of repeated in-process runs is steadier than the wall time of single runs on a shared machine,
which is what an interleaved before/after comparison of a change to the per-record path needs::

    python benchmarks/bench_pipeline_cpu.py --label after
    git worktree add /tmp/before <commit> && PYTHONPATH=/tmp/before python benchmarks/bench_pipeline_cpu.py --label before

(the second line measures an older checkout with this script; alternate the two a few times).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="segment_profiles_bench_home_"))

from bench_data import MAPPINGS, ensure_sqlite, model_sql  # noqa: E402
from bench_worker import FakeTaskInstance  # noqa: E402
from run import parse_size  # noqa: E402

WRITE_KEY = "bench-write-key"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=parse_size, default=parse_size("200k"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--label", default="")
    args = parser.parse_args()

    from airflow_provider_segment_profiles.operators.segment_profiles import SegmentProfilesSyncOperator
    from airflow_provider_segment_profiles.testing import SegmentEmulator

    database = ensure_sqlite(HERE.parent / ".bench" / "warehouse.sqlite", args.rows)
    os.environ["AIRFLOW_CONN_BENCH_WAREHOUSE"] = json.dumps({"conn_type": "sqlite", "host": str(database)})
    state = Path(tempfile.mkdtemp(prefix="segment_profiles_bench_state_"))

    def run(mode: str, dry_run: bool, run_id: str) -> tuple[float, dict]:
        operator = SegmentProfilesSyncOperator(
            task_id=f"cpu_{mode}",
            conn_id="bench_warehouse",
            sql=model_sql(args.rows),
            primary_key="customer_id",
            mappings=MAPPINGS,
            state_path=state.as_uri(),
            progress_interval_s=3600,
            sync_mode=mode,
            dry_run=dry_run,
            max_events_per_second=None,
        )
        operator.warehouse_hook  # noqa: B018 - resolve the connection before the clock starts
        started = time.process_time()
        summary = operator.execute({"ti": FakeTaskInstance(f"cpu_{mode}", run_id), "run_id": run_id})
        return time.process_time() - started, summary

    result: dict = {
        "label": args.label,
        "rows": args.rows,
        "diff_0_changed_cpu_s": [],
        "full_dry_run_cpu_s": [],
    }
    try:
        with SegmentEmulator(write_key=WRITE_KEY) as emulator:
            os.environ["AIRFLOW_CONN_SEGMENT_PROFILES_DEFAULT"] = json.dumps(
                emulator.airflow_connection(write_key=WRITE_KEY)
            )
            run("diff", False, "first")  # the committed state the 0%-changed runs compare against
            for repeat in range(args.repeats):
                cpu, summary = run("diff", False, f"unchanged{repeat}")
                assert summary["records"]["unchanged"] == args.rows, summary["records"]
                result["diff_0_changed_cpu_s"].append(round(cpu, 3))
                cpu, summary = run("full", True, f"full{repeat}")
                assert summary["messages"]["delivered"] == args.rows, summary["messages"]
                result["full_dry_run_cpu_s"].append(round(cpu, 3))
    finally:
        shutil.rmtree(state, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
