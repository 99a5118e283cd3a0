"""
Distributed workers: CeleryExecutor with the Redis broker on 127.0.0.1:6379 and two Celery workers, each
with an ``AIRFLOW_HOME`` of its own (its own local disk, as on two machines), running
``tests/celery_dags/segment_celery_sync.py``.

1. A mapped sync of three models (two on the worker engine, one on the warehouse engine) runs in parallel
   on both workers, state on a folder both share (``state_path``) and, for the warehouse engine, in the
   model's own SQLite file.
2. A try is killed with its worker (SIGKILL of the worker and its task processes, as when a machine is
   lost) while it is sending; the scheduler finds the try's heartbeat gone and the retry runs on the other
   worker. It continues from the killed try's send journal on the shared folder: every change is
   delivered, under one message id each, and only records the journal names are delivered twice.
3. With the default ``state_path`` (each worker's ``AIRFLOW_HOME``), the task log warns that state is
   worker-local, and it is: the next run, on the other worker, does not find the state and fails loudly
   (the XCom tripwire) rather than send everything again.

The broker is this machine's Redis (``.ci/run`` installs and starts one): a database number of its own
(:data:`REDIS_DB`) and a queue name of its own per test run keep it apart from anything else using it.
Without Redis or the Celery provider the test skips with the reason, except in CI, where it fails.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from airflow_deployment import AirflowDeployment, copy_tree, q

from airflow_provider_segment_profiles.testing import SegmentEmulator

pytestmark = pytest.mark.deployment

DAGS = Path(__file__).parent / "celery_dags"
SYNC_DAG, LOCAL_DAG = "segment_celery_sync", "segment_celery_local_state"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
#: A Redis database no other test uses.
REDIS_DB = 11
#: User ids of each model's rows (one SQLite file per model, as the DAG's MODELS).
IDS = {"accounts": range(1, 61), "stores": range(1001, 1011), "products": range(2001, 2011)}
WARNING = "State is kept at the default local path"


def _redis_problem() -> str | None:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=3) as sock:
            sock.sendall(b"PING\r\n")
            if not sock.recv(64).startswith(b"+PONG"):
                return f"the server on {REDIS_HOST}:{REDIS_PORT} does not answer PING as Redis does"
    except OSError as err:
        return f"no Redis on {REDIS_HOST}:{REDIS_PORT} ({err}); .ci/run installs and starts redis-server"
    try:
        import airflow.providers.celery  # noqa: F401
    except ImportError:
        return "apache-airflow-providers-celery is not installed (it is in the test extra)"
    return None


@pytest.fixture
def redis_broker() -> str:
    problem = _redis_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Celery deployment test: {problem}")
        pytest.skip(problem)
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"


def _warehouses(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for model, ids in IDS.items():
        paths[model] = tmp_path / f"{model}.db"
        with sqlite3.connect(paths[model]) as db:
            db.execute(f"CREATE TABLE {model} (id INTEGER, name TEXT, plan TEXT)")
            db.executemany(f"INSERT INTO {model} VALUES (?, ?, 'free')", [(i, f"{model} {i}") for i in ids])
    return paths


class Workers:
    """The two Celery workers of one deployment, each named and with a home of its own."""

    def __init__(self, airflow: AirflowDeployment, tmp_path: Path, queue: str, dags: Path) -> None:
        self.airflow, self.tmp_path, self.queue, self.dags = airflow, tmp_path, queue, dags

    def home(self, name: str) -> Path:
        return self.tmp_path / f"{name}-home"

    def start(self, name: str) -> None:
        self.home(name).mkdir(exist_ok=True)
        log = self.airflow.log_path(name)
        before = log.read_bytes() if log.exists() else b""
        self.airflow.start_named(
            name,
            [
                "celery",
                "worker",
                "--queues",
                self.queue,
                "--concurrency",
                "1",
                "--skip-serve-logs",
                "--celery-hostname",
                f"{name}@%h",
            ],
            {
                "AIRFLOW_HOME": str(self.home(name)),
                "SEGMENT_CELERY_WORKER": name,
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "celery_worker_name.hostname",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(self.dags), os.environ.get("PYTHONPATH")])),
            },
        )
        self.airflow.wait_for(
            lambda: b" ready." in log.read_bytes()[len(before) :], f"Celery worker {name} to be ready", 180
        )

    def task_logs(self, name: str) -> str:
        logs = self.home(name) / "logs"
        return "\n".join(p.read_text(errors="replace") for p in sorted(logs.rglob("*")) if p.is_file())


def _trigger(airflow: AirflowDeployment, dag_id: str) -> str:
    airflow.wait_for(
        lambda: airflow.api("GET", f"/api/v2/dags/{dag_id}").status_code == 200, f"{dag_id} to be parsed"
    )
    # A logical date (now) per run: the lost-state tripwire pulls earlier runs' XCom by logical date.
    logical_date = datetime.now(UTC).isoformat()
    reply = airflow.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": logical_date})
    assert reply.status_code == 200, reply.text
    return reply.json()["dag_run_id"]


def _run(airflow: AirflowDeployment, dag_id: str, run_id: str) -> dict:
    reply = airflow.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{q(run_id)}")
    reply.raise_for_status()
    return reply.json()


def _wait_run(airflow: AirflowDeployment, dag_id: str, run_id: str, timeout: float = 300) -> str:
    run = airflow.wait_for(
        lambda: (r := _run(airflow, dag_id, run_id))["state"] in ("success", "failed") and r,
        f"run {run_id} of {dag_id} to end",
        timeout,
    )
    return run["state"]


def _task_instances(airflow: AirflowDeployment, dag_id: str, run_id: str) -> dict[int, dict]:
    reply = airflow.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{q(run_id)}/taskInstances")
    reply.raise_for_status()
    return {ti["map_index"]: ti for ti in reply.json()["task_instances"]}


def _user_ids(messages: list[dict], model: str) -> list[int]:
    ids = range(1, 91) if model == "accounts" else IDS[model]  # accounts: 61-90 are added by the test
    return sorted(int(m["userId"]) for m in messages if int(m["userId"]) in ids)


def test_two_celery_workers_share_state_and_a_killed_try_continues_on_the_other(
    tmp_path: Path, redis_broker: str
) -> None:
    write_key = "celery-" + secrets.token_hex(12)
    warehouses = _warehouses(tmp_path)
    shared = tmp_path / "shared_state"
    queue = f"segment_celery_{secrets.token_hex(4)}"
    dags = copy_tree(DAGS, tmp_path / "dags")

    # Every copy sent is recorded: the test counts what the sync sent, Segment's de-duplication aside.
    with SegmentEmulator(write_key=write_key, deduplicate=False) as emulator:
        env = {
            **{
                f"AIRFLOW_CONN_CELERY_WH_{model.upper()}": json.dumps(
                    {"conn_type": "sqlite", "host": str(path)}
                )
                for model, path in warehouses.items()
            },
            "AIRFLOW_CONN_SEGMENT_PROFILES_DEFAULT": json.dumps(emulator.airflow_connection()),
            "SEGMENT_CELERY_STATE_PATH": shared.as_uri(),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": redis_broker,
            "AIRFLOW__CELERY__RESULT_BACKEND": redis_broker,
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
            # A lost worker's try is failed (and retried) 20 s after its last heartbeat, not 300 s.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
        }
        with AirflowDeployment(tmp_path / "airflow_home", dags_folder=dags, env=env) as airflow:
            airflow.migrate()
            airflow.start("api-server", "scheduler", "dag-processor")
            workers = Workers(airflow, tmp_path, queue, dags)
            workers.start("worker-a")
            workers.start("worker-b")

            # 1. The mapped sync, in parallel on both workers.
            first = _trigger(airflow, SYNC_DAG)
            assert _wait_run(airflow, SYNC_DAG, first) == "success", airflow.log_tail()
            tis = _task_instances(airflow, SYNC_DAG, first)
            first_messages = list(emulator.messages)

            # 2. Changes to two models; the accounts sync (map index 0) is killed with its worker mid-send.
            with sqlite3.connect(warehouses["accounts"]) as db:
                db.execute("UPDATE accounts SET plan = 'pro' WHERE id <= 30")
                db.executemany(
                    "INSERT INTO accounts VALUES (?, ?, 'team')", [(i, f"new {i}") for i in range(61, 91)]
                )
            with sqlite3.connect(warehouses["stores"]) as db:
                db.execute("UPDATE stores SET plan = 'pro' WHERE id <= 1005")
            emulator.latency = 0.4
            before = emulator.message_count
            second = _trigger(airflow, SYNC_DAG)
            airflow.wait_for(
                lambda: len(_user_ids(emulator.messages[before:], "accounts")) >= 10,
                "the accounts sync to be sending",
                240,
            )
            killed = _task_instances(airflow, SYNC_DAG, second)[0]["hostname"]
            assert killed in ("worker-a", "worker-b"), killed
            airflow.kill(killed)
            time.sleep(0.5)  # a request the emulator already read is still recorded
            killed_sent = _user_ids(emulator.messages[before:], "accounts")
            journal = shared / SYNC_DAG / "sync_models" / "map_0" / "journal"
            journaled = {
                int(pk)
                for path in journal.glob("*.json")
                for pk, _ in json.loads(path.read_text())["records"]
            }
            emulator.latency = 0.0
            assert _wait_run(airflow, SYNC_DAG, second, timeout=360) == "success", airflow.log_tail()
            retried = _task_instances(airflow, SYNC_DAG, second)
            second_messages = emulator.messages[before:]
            head = json.loads((shared / SYNC_DAG / "sync_models" / "map_0" / "HEAD.json").read_text())
            journal_left = sorted(p.name for p in journal.glob("*.json"))

            # 3. Worker-local state: the default state_path under each worker's AIRFLOW_HOME.
            survivor = "worker-b" if killed == "worker-a" else "worker-a"
            workers.start(killed)  # the lost machine is back, with its local disk
            local_first = _trigger(airflow, LOCAL_DAG)
            assert _wait_run(airflow, LOCAL_DAG, local_first) == "success", airflow.log_tail()
            ran_on = _task_instances(airflow, LOCAL_DAG, local_first)[-1]["hostname"]
            other = survivor if ran_on == killed else killed
            airflow.kill(ran_on)  # the next run can only land on the other worker
            before_local = emulator.message_count
            local_second = _trigger(airflow, LOCAL_DAG)
            local_second_state = _wait_run(airflow, LOCAL_DAG, local_second)
            local_ti = _task_instances(airflow, LOCAL_DAG, local_second)[-1]
            local_sent = emulator.messages[before_local:]
            logs = {name: workers.task_logs(name) for name in ("worker-a", "worker-b")}
            component_logs = airflow.logs()

    # 1. Three models in parallel on both workers, every row identified once.
    assert {ti["state"] for ti in tis.values()} == {"success"} and sorted(tis) == [0, 1, 2]
    assert {ti["hostname"] for ti in tis.values()} == {"worker-a", "worker-b"}
    spans = sorted((ti["start_date"], ti["end_date"], ti["hostname"]) for ti in tis.values())
    assert any(a[2] != b[2] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1 :]), (
        f"no two syncs ran at the same time: {spans}"
    )
    for model, ids in IDS.items():
        assert _user_ids(first_messages, model) == list(ids), model

    # 2. The killed try and its retry on the other worker.
    changed = set(range(1, 31)) | set(range(61, 91))
    accounts = [m for m in second_messages if int(m["userId"]) <= 90]
    assert 10 <= len(killed_sent) < len(changed), "the try was not killed while it was sending"
    assert set(killed_sent) <= journaled, "a message was sent for a record its try had not journaled"
    account = retried[0]
    assert (account["try_number"], account["state"], account["hostname"]) == (2, "success", survivor)
    by_id: dict[str, set[int]] = {}
    for message in accounts:
        by_id.setdefault(message["messageId"], set()).add(int(message["userId"]))
    assert {pk for pks in by_id.values() for pk in pks} == changed  # nothing lost
    assert len(by_id) == len(changed)  # one message id per change: a repeat is the same message
    counts = Counter(m["messageId"] for m in accounts)
    repeated = {int(m["userId"]) for m in accounts if counts[m["messageId"]] > 1}
    assert repeated <= journaled, "a record was delivered twice that the journal does not name"
    print(
        f"killed try on {killed}: {len(killed_sent)} messages delivered, {len(journaled)} records journaled; "
        f"retry on {survivor}: {len(changed)} changes delivered, {len(repeated)} records twice"
    )
    assert head["generation"] == 2 and journal_left == []
    assert sorted(int(m["userId"]) for m in second_messages if int(m["userId"]) in IDS["stores"]) == list(
        range(1001, 1006)
    )  # the warehouse engine's model: its five updates, once
    assert not [m for m in second_messages if int(m["userId"]) in IDS["products"]]

    # 3. The warning, and why it is right.
    assert WARNING in logs[ran_on] and "CeleryExecutor" in logs[ran_on]
    assert (
        workers.home(ran_on) / "segment_profiles_state" / LOCAL_DAG / "sync_products" / "task" / "HEAD.json"
    ).is_file()
    assert not (workers.home(other) / "segment_profiles_state" / LOCAL_DAG).exists()
    assert (local_second_state, local_ti["hostname"], local_ti["try_number"]) == ("failed", other, 1)
    assert "the state under state_path was deleted, moved or rolled back" in logs[other]
    assert local_sent == []  # it failed before sending everything again

    for text in (*logs.values(), component_logs):
        assert write_key not in text
