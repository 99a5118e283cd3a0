"""
The one-command demo (``make demo``): a real sync of generated Jaffle Shop data into the bundled Segment
emulator, twice.

1. ``jafgen`` generates one year of Jaffle Shop data into ``.demo/``; it is loaded into the SQLite file
   ``.demo/jaffle_shop.db`` (the embedded warehouse).
2. The Segment emulator is started as a subprocess on a free loopback port.
3. ``airflow dags test`` runs ``example_dags/example_segment_profiles_sync.py`` with its connections
   given as ``AIRFLOW_CONN_*`` environment variables; the run summaries are read from the task XComs.
4. The data changes (new orders, some customers renamed, some removed, two new customers), and a second
   run with a later logical date sends only those changes.

Everything lives in ``.demo/`` (wiped at the start, so the demo can be run again) and nothing is left
running: the emulator is stopped in a ``finally``, also on Ctrl+C. Run it inside the virtual environment
that has the ``demo`` extra: ``python scripts/demo.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from airflow_provider_segment_profiles.testing import jaffle as jaffle_data

REPO = Path(__file__).resolve().parent.parent
DEMO_DIR = REPO / ".demo"
AIRFLOW_HOME = DEMO_DIR / "airflow"
WAREHOUSE_FILE = DEMO_DIR / "jaffle_shop.db"
DAGS_FOLDER = REPO / "example_dags"
DAG_ID = "example_segment_profiles_sync"
TASK_ORDER = ("sync_customers", "sync_stores", "sync_customer_store", "sync_orders")
#: The emulator accepts this key; Segment would need the write key of a Profile Space's source.
DEMO_WRITE_KEY = "demo-write-key"
RUN_DATES = ("2024-06-01T00:00:00+00:00", "2024-06-02T00:00:00+00:00")

_LISTENING = re.compile(r"listening on (http://\S+/v1)")
_STOPPED = re.compile(r"(\d+) messages accepted, (\d+) dropped, (\d+) requests")


class EmulatorProcess:
    """The Segment emulator's CLI (``python -m airflow_provider_segment_profiles.testing``) as a subprocess."""

    def __init__(self, write_key: str) -> None:
        self.write_key = write_key
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self.final_counts: dict[str, int] = {}

    def start(self) -> str:
        """Start the emulator on a free port (``--port 0``) and return its base URL."""
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "airflow_provider_segment_profiles.testing",
                "--port",
                "0",
                "--write-key",
                self.write_key,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # Its own session: Ctrl+C reaches only this script, which then stops the emulator itself.
            start_new_session=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        match = _LISTENING.search(line)
        if not match:
            self.stop()
            raise RuntimeError(f"the Segment emulator did not start: {line.strip() or 'no output'}")
        self.url = match.group(1)
        return self.url

    def stop(self) -> dict[str, int]:
        """Stop the emulator (SIGTERM, then SIGKILL after 10 s) and return its final counts."""
        process, self.process = self.process, None
        if process is None:
            return self.final_counts
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        match = _STOPPED.search(output or "")
        if match:
            accepted, dropped, requests = (int(group) for group in match.groups())
            self.final_counts = {"accepted": accepted, "dropped": dropped, "requests": requests}
        return self.final_counts


def airflow_environment(emulator_url: str | None = None) -> dict[str, str]:
    """
    The environment of the Airflow commands: an isolated AIRFLOW_HOME, the warehouse connection and, given
    the emulator's URL, the Segment connection.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env.update(
        AIRFLOW_HOME=str(AIRFLOW_HOME),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS_FOLDER),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
        AIRFLOW_CONN_JAFFLE_SHOP_WAREHOUSE=json.dumps({"conn_type": "sqlite", "host": str(WAREHOUSE_FILE)}),
    )
    if emulator_url:
        env["AIRFLOW_CONN_SEGMENT_PROFILES_DEFAULT"] = json.dumps(
            {"conn_type": "segment_profiles", "password": DEMO_WRITE_KEY, "host": emulator_url}
        )
    return env


def run_airflow(args: list[str], env: dict[str, str], log_file: Path) -> None:
    """Run ``airflow <args>``, its output going to ``log_file``; on failure show the log's tail and exit."""
    airflow = Path(sys.executable).with_name("airflow")
    command = [str(airflow) if airflow.exists() else "airflow", *args]
    with open(log_file, "w") as log:
        result = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    if result.returncode != 0:
        tail = log_file.read_text(errors="replace").splitlines()[-40:]
        print("\n".join(tail), file=sys.stderr)
        raise SystemExit(
            f"`airflow {' '.join(args)}` failed (exit {result.returncode}); full log: {log_file}"
        )


def read_summaries(logical_date: str) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Task states and the sync summaries (XCom ``return_value``) of the run with ``logical_date``."""
    with sqlite3.connect(AIRFLOW_HOME / "airflow.db") as db:
        run_ids = [
            run_id
            for run_id, date in db.execute(
                "SELECT run_id, logical_date FROM dag_run WHERE dag_id = ?", (DAG_ID,)
            )
            if date and date.replace(" ", "T").startswith(logical_date[:19])
        ]
        if not run_ids:
            raise SystemExit(f"no run of {DAG_ID} with logical date {logical_date} in the Airflow database")
        run_id = run_ids[0]
        states = dict(
            db.execute(
                "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?", (DAG_ID, run_id)
            )
        )
        summaries = {}
        for task_id, value in db.execute(
            "SELECT task_id, value FROM xcom WHERE dag_id = ? AND run_id = ? AND key = 'return_value'",
            (DAG_ID, run_id),
        ):
            decoded = json.loads(value)
            summaries[task_id] = json.loads(decoded) if isinstance(decoded, str) else decoded
    return states, summaries


def print_summary(
    title: str, states: dict[str, str], summaries: dict[str, dict[str, Any]], emulator: dict
) -> None:
    """
    Print one run's summary: records per task (rows read by the model, and rows fetched by the worker: the
    warehouse engine of sync_customers fetches only the changed ones), messages per mapping, and what the
    emulator accepted.
    """
    print(f"\n{title}")
    print(
        f"  {'task':<22}{'state':>9}{'rows read':>11}{'fetched':>9}{'added':>8}{'updated':>9}{'deleted':>9}"
        f"{'unchanged':>11}"
    )
    for task_id in TASK_ORDER:
        summary = summaries.get(task_id)
        if summary is None:
            print(f"  {task_id:<22}{states.get(task_id, '?'):>9}  (no summary)")
            continue
        records = summary["records"]
        print(
            f"  {task_id:<22}{states.get(task_id, '?'):>9}{summary['rows_read']:>11,}"
            f"{summary.get('rows_fetched', summary['rows_read']):>9,}{records['added']:>8,}"
            f"{records['updated']:>9,}{records['deleted']:>9,}{records['unchanged']:>11,}"
        )
        if summary.get("sync_mode") == "incremental" and records["unchanged"]:
            print(
                f"  {'':<22}(incremental: the {records['unchanged']:,} unchanged rows sit at the saved "
                "watermark; they are read again on purpose, so none sharing it is lost, and skipped by key)"
            )
    print(f"  {'mapping':<42}{'delivered':>11}{'rejected':>10}{'failed':>8}")
    delivered = 0
    for task_id in TASK_ORDER:
        for name, counts in summaries.get(task_id, {}).get("mappings", {}).items():
            delivered += counts["delivered"]
            print(
                f"  {task_id + '.' + name:<42}{counts['delivered']:>11,}{counts['rejected']:>10,}"
                f"{counts['failed']:>8,}"
            )
    print(f"  {'total delivered':<42}{delivered:>11,}")
    if emulator:
        print(
            f"  Segment emulator: {emulator['accepted']:,} messages accepted, {emulator['dropped']:,} dropped, "
            f"in {emulator['requests']:,} requests"
        )


def mismatches(
    summaries: dict[str, dict[str, Any]], expected: dict[str, jaffle_data.TaskExpectation], emulator: dict
) -> list[str]:
    """Where the run's figures differ from those computed from the CSV files and the change."""
    problems = []
    for task_id, expectation in expected.items():
        summary = summaries.get(task_id, {})
        got = {
            "rows read": summary.get("rows_read"),
            **{k: summary.get("records", {}).get(k) for k in expectation.records},
            **{
                f"{name} delivered": summary.get("mappings", {}).get(name, {}).get("delivered")
                for name in expectation.delivered
            },
        }
        want = {
            "rows read": expectation.rows_read,
            **expectation.records,
            **{f"{name} delivered": count for name, count in expectation.delivered.items()},
        }
        problems.extend(
            f"{task_id}: {key} is {got[key]}, expected {value}"
            for key, value in want.items()
            if got[key] != value
        )
    expected_total = sum(sum(e.delivered.values()) for e in expected.values())
    if emulator.get("accepted") != expected_total:
        problems.append(
            f"the emulator accepted {emulator.get('accepted')} messages, expected {expected_total}"
        )
    return problems


def sync_once(
    number: int, logical_date: str, log_file: Path, expected: dict[str, jaffle_data.TaskExpectation]
) -> dict[str, dict[str, Any]]:
    """
    Start an emulator, run the DAG once with ``airflow dags test``, stop the emulator, print the summary
    and check it against ``expected``.
    """
    emulator = EmulatorProcess(DEMO_WRITE_KEY)
    try:
        url = emulator.start()
        print(f"Run {number}: airflow dags test {DAG_ID} {logical_date[:10]} (Segment emulator at {url}) ...")
        started = time.monotonic()
        run_airflow(["dags", "test", DAG_ID, logical_date], airflow_environment(url), log_file)
        elapsed = time.monotonic() - started
    finally:
        counts = emulator.stop()
    states, summaries = read_summaries(logical_date)
    print_summary(
        f"Run {number} summary ({elapsed:.0f} s; task log: {log_file.relative_to(REPO)})",
        states,
        summaries,
        counts,
    )
    if any(state != "success" for state in states.values()):
        raise SystemExit(f"run {number} did not succeed: {states}")
    problems = mismatches(summaries, expected, counts)
    if problems:
        raise SystemExit(f"run {number} does not match the data:\n  " + "\n  ".join(problems))
    print("  Every count matches the figures computed independently from the CSV files and the change.")
    return summaries


def main() -> int:
    started = time.monotonic()
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    AIRFLOW_HOME.mkdir(parents=True)

    print("Generating one year of Jaffle Shop data with jafgen ...")
    data_dir = jaffle_data.generate(DEMO_DIR)
    with sqlite3.connect(WAREHOUSE_FILE) as warehouse:
        loaded = jaffle_data.load(warehouse, "sqlite", data_dir)
    warehouse.close()
    print(
        "Loaded into "
        + str(WAREHOUSE_FILE.relative_to(REPO))
        + ": "
        + ", ".join(f"{count:,} {table.removeprefix('raw_')}" for table, count in loaded.items())
    )

    print("Creating the Airflow metadata database (airflow db migrate) ...")
    run_airflow(["db", "migrate"], airflow_environment(), DEMO_DIR / "db-migrate.log")

    changes = jaffle_data.plan_changes(data_dir)
    first_expected, second_expected = jaffle_data.expected_runs(data_dir, changes)
    sync_once(1, RUN_DATES[0], DEMO_DIR / "run-1.log", first_expected)

    with sqlite3.connect(WAREHOUSE_FILE) as warehouse:
        jaffle_data.apply_changes(warehouse, "sqlite", changes)
    warehouse.close()
    print(
        f"\nChanging the data: {len(changes.new_orders)} new orders ({len(changes.new_customers)} from new "
        f"customers), {len(changes.renamed_customers)} customers renamed, "
        f"{len(changes.removed_customers)} customers removed."
    )

    sync_once(2, RUN_DATES[1], DEMO_DIR / "run-2.log", second_expected)
    print(f"\nDone in {time.monotonic() - started:.0f} s. Everything is in {DEMO_DIR.relative_to(REPO)}/.")
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the emulator


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\nInterrupted; the emulator was stopped.", file=sys.stderr)
        sys.exit(130)
