"""Secrets and paths on failure paths: the write key never leaves the connection, state and report files
cannot escape ``state_path``, and the emulator is reachable from this machine only.

``tests/test_sync_e2e.py::test_write_key_is_in_no_artefact_of_a_run`` greps the artefacts of a successful
run; here the runs fail in every way a run can fail (configuration errors, an unreachable API, refused
messages, a crash mid-run) and every artefact is grepped: the console (task logs), the metadata database
(XCom, rendered templates, task instance notes), every file under ``AIRFLOW_HOME`` and ``state_path``
(reports, dry runs, snapshots, HEAD), and the text and ``repr`` of every exception raised.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

pytest.register_assert_rewrite("reliability_support")
from reliability_support import (  # noqa: E402
    FIGURES,
    DagHarness,
    DirectRunner,
    closed_port_url,
    count_emulator_faults,
    create_customers,
    read_ndjson,
)

from airflow_provider_segment_profiles.testing import SegmentEmulator  # noqa: E402

pytest_plugins = ["reliability_support"]


def secret_forms(key: str) -> list[bytes]:
    """The write key as it could leak: itself and inside the Basic authorization header."""
    return [key.encode(), base64.b64encode(f"{key}:".encode())]


def grep_artefacts(roots: list[Path], texts: dict[str, str], key: str) -> list[str]:
    """Where the key appears: names of files under ``roots`` and of ``texts`` that hold it."""
    found = []
    forms = secret_forms(key)
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                content = path.read_bytes()
                found += [str(path) for form in forms if form in content]
    for name, text in texts.items():
        found += [name for form in forms if form in text.encode("utf-8", "replace")]
    return found


def stored_rows(dag_id: str) -> dict[str, int]:
    """How many XCom and rendered-template rows the metadata database holds for one DAG."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        return {
            "xcom": session.scalar(select(func.count()).where(XComModel.dag_id == dag_id)),
            "rendered": session.scalar(
                select(func.count()).where(RenderedTaskInstanceFields.dag_id == dag_id)
            ),
        }


@pytest.mark.airflow_db
def test_write_key_is_in_no_artefact_of_failing_runs(rel_sqlite, tmp_path, monkeypatch, airflow_db, capfd):
    key = f"wk-{secrets.token_hex(16)}"
    with SegmentEmulator(write_key=key) as emulator:
        h = DagHarness(rel_sqlite, emulator, tmp_path / "state", monkeypatch, name="secret_failures")
        create_customers(rel_sqlite, range(1, 11))
        outcomes = {}

        # 1. configuration errors
        h.segment_connection = {**emulator.airflow_connection(), "extra": {"region": "mars"}}
        h.segment_connection.pop("host")
        outcomes["invalid region"] = h.run().state
        h.segment_connection = emulator.airflow_connection()
        outcomes["mapped column missing"] = h.run(sql="SELECT id, name FROM customers").state
        outcomes["DML"] = h.run(sql="DELETE FROM customers").state
        # 2. the API unreachable
        h.segment_connection = {**emulator.airflow_connection(), "host": closed_port_url()}
        outcomes["unreachable"] = h.run(request_retry_policy={"max_attempts": 1}).state
        h.segment_connection = emulator.airflow_connection()
        # 3. refused messages (400 and 500), reported
        emulator.fail_user("3", status=400)
        emulator.fail_user("4", status=500)
        outcomes["refused"] = h.run().state
        emulator.clear_faults()
        # 4. a crash mid-run: the warehouse table vanishes under a dry run
        outcomes["dry run"] = h.run(dry_run=True).state
        outcomes["crash"] = h.run(sql="SELECT id, name, email, plan FROM customers_gone").state
        FIGURES.input("failure path grepped for the write key", len(outcomes))
        count_emulator_faults(emulator)
        FIGURES.fault("API unreachable (closed port), per try")
        stored = stored_rows(h.dag_id)

    assert outcomes == {
        "invalid region": "failed",
        "mapped column missing": "failed",
        "DML": "failed",
        "unreachable": "failed",
        "refused": "failed",
        "dry run": "success",
        "crash": "failed",
    }
    # The grep below must have something to read: XCom and rendered templates of these runs are stored.
    assert stored["xcom"] >= 4 and stored["rendered"] == len(outcomes)
    out, err = capfd.readouterr()
    assert "Unknown Segment endpoint region 'mars'" in out and "ConnectionError" in out  # logs were captured
    assert any(p.name.endswith(".ndjson") for p in (tmp_path / "state").rglob("*"))  # reports were written
    found = grep_artefacts(
        [tmp_path / "state", Path(os.environ["AIRFLOW_HOME"])], {"console": out + err}, key
    )
    assert found == [], f"write key found in {found}"


def test_write_key_is_in_no_exception_or_repr(rel_sqlite, tmp_path, monkeypatch):
    """Exceptions raised by the operator (text, repr, chained causes, formatted traceback) and the reprs of
    the operator and hook never hold the key."""
    from airflow_provider_segment_profiles.hooks.segment_profiles import SegmentProfilesHook

    key = f"wk-{secrets.token_hex(16)}"
    create_customers(rel_sqlite, range(1, 4))
    monkeypatch.setenv("AIRFLOW_CONN_REL_WH", json.dumps(rel_sqlite.airflow_conn))
    settings = {
        "conn_id": "rel_wh",
        "sql": "SELECT id, name, email, plan FROM customers",
        "primary_key": "id",
        "mappings": [{"action": "send_identify", "fields": {"user_id": {"column": "id"}}}],
        "request_retry_policy": {"max_attempts": 1},
    }
    texts: dict[str, str] = {}
    connections = {
        "bad region": {"conn_type": "segment_profiles", "password": key, "extra": {"region": "mars"}},
        "unreachable": {"conn_type": "segment_profiles", "password": key, "host": closed_port_url()},
    }
    for name, connection in connections.items():
        monkeypatch.setenv("AIRFLOW_CONN_SEGMENT_PROFILES_DEFAULT", json.dumps(connection))
        runner = DirectRunner(settings, tmp_path / name.replace(" ", "_"))
        with pytest.raises(Exception) as caught:
            runner.run()
        FIGURES.input(f"exception text: {name}")
        error = caught.value
        chain = []
        while error is not None:
            chain.append(error)
            error = error.__cause__ or error.__context__
        texts[f"{name}: str/repr"] = " | ".join(f"{e!s} {e!r}" for e in chain)
        texts[f"{name}: traceback"] = "".join(traceback.format_exception(caught.value))
        hook = SegmentProfilesHook("segment_profiles_default")
        texts[f"{name}: hook repr"] = repr(hook)
        texts[f"{name}: test_connection"] = str(hook.test_connection())
    assert "Unknown Segment endpoint region" in texts["bad region: str/repr"]
    found = grep_artefacts([tmp_path], texts, key)
    assert found == [], f"write key found in {found}"


def _echoing_body(emulator: SegmentEmulator, key: str) -> None:
    header = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    emulator.fail_user("2", status=401, body={"code": "unauthorized", "message": f"bad credentials {header}"})
    emulator.fail_user("3", status=403, body=f"write key {key} may not write here")


def _key_in_host_url(emulator: SegmentEmulator, key: str) -> dict:
    return {**emulator.airflow_connection(), "host": f"http://user:{key}@127.0.0.1:1/v1"}


@pytest.mark.parametrize("case", ["error body echoes the key", "key in the host URL"])
def test_failure_reasons_are_scrubbed_of_the_key(rel_sqlite, tmp_path, monkeypatch, capfd, case):
    key = f"wk-{secrets.token_hex(16)}"
    create_customers(rel_sqlite, range(1, 4))
    monkeypatch.setenv("AIRFLOW_CONN_REL_WH", json.dumps(rel_sqlite.airflow_conn))
    with SegmentEmulator(write_key=key) as emulator:
        connection = emulator.airflow_connection()
        if case == "error body echoes the key":
            _echoing_body(emulator, key)
        else:
            connection = _key_in_host_url(emulator, key)
        monkeypatch.setenv("AIRFLOW_CONN_SEGMENT_PROFILES_DEFAULT", json.dumps(connection))
        runner = DirectRunner(
            {
                "conn_id": "rel_wh",
                "sql": "SELECT id, name, email, plan FROM customers",
                "primary_key": "id",
                "mappings": [{"action": "send_identify", "fields": {"user_id": {"column": "id"}}}],
                "max_failed_fraction": 1.0,
                "request_retry_policy": {"max_attempts": 1},
            },
            tmp_path / "state",
        )
        summary = runner.run()
    FIGURES.fault(f"failure reason: {case}")
    assert summary["messages"]["failed"] >= 2
    out, err = capfd.readouterr()
    texts = {"summary": json.dumps(summary), "console": out + err}
    texts["report"] = json.dumps(read_ndjson(summary["report_path"]))
    found = grep_artefacts([tmp_path / "state"], texts, key)
    assert found == [], f"write key found in {found}"


# ----------------------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------------------
#: (dag id, task id, run id) as a task instance could report them; Airflow validates dag and task ids
#: (``[A-Za-z0-9_.-]``, so ``..`` passes) and run ids against ``allowed_run_id_pattern``, but the paths must
#: not depend on that.
HOSTILE_IDS = [
    ("..", "..", ".."),
    ("../../escape_dag", "../escape_task", "../../../../escape_run"),
    ("/abs_dag", "/abs_task", "/tmp/abs_run"),
    ("a/../../b", "t\\..\\..\\x", "run\x00id/.."),
    ("...", ". .", "~/run"),
]


@pytest.mark.parametrize(("dag_id", "task_id", "run_id"), HOSTILE_IDS)
def test_state_and_report_paths_stay_under_state_path(
    rel_sqlite, rel_emulator, tmp_path, monkeypatch, dag_id, task_id, run_id
):
    """Whatever the dag id, task id and run id hold, every file a run writes (snapshot, HEAD, report, dry
    run) lands inside ``state_path``."""
    create_customers(rel_sqlite, range(1, 5))
    monkeypatch.setenv("AIRFLOW_CONN_REL_WH", json.dumps(rel_sqlite.airflow_conn))
    monkeypatch.setenv("AIRFLOW_CONN_SEGMENT_PROFILES_DEFAULT", json.dumps(rel_emulator.airflow_connection()))
    base = tmp_path / "deep" / "er" / "state"
    rel_emulator.fail_user("2", status=400)  # a report gets written
    runner = DirectRunner(
        {
            "conn_id": "rel_wh",
            "sql": "SELECT id, name FROM customers",
            "primary_key": "id",
            "mappings": [{"action": "send_identify", "fields": {"user_id": {"column": "id"}}}],
            "max_failed_fraction": 1.0,
        },
        base,
        dag_id=dag_id,
    )
    before = set(Path("/tmp").iterdir())
    summary = runner.run(run_id=run_id, ti_task_id=task_id)
    dry = runner.run(run_id=run_id + "dry", ti_task_id=task_id, dry_run=True)
    FIGURES.input("hostile dag/task/run id")
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".db"]
    outside = [p for p in written if base.resolve() not in p.resolve().parents]
    assert outside == []
    assert {p.name for p in written} >= {"HEAD.json"}
    for uri in (summary["report_path"], dry["dry_run_path"]):
        path = Path(uri.removeprefix("file://")).resolve()
        assert base.resolve() in path.parents and path.exists()
    new_in_tmp = set(Path("/tmp").iterdir()) - before
    assert not any("escape" in p.name or "abs_run" in p.name for p in new_in_tmp)


@pytest.mark.airflow_db
def test_dotted_dag_and_task_ids_through_airflow(rel_sqlite, rel_emulator, tmp_path, monkeypatch, airflow_db):
    """Airflow accepts ``..`` as a DAG id and a task id. (It then cannot store the task's XCom: its Execution
    API URL collapses the ``..``, so the run fails after the sync committed.) The sync's files must stay
    inside state_path: ``..`` becomes ``_``."""
    base = tmp_path / "deep" / "state"
    h = DagHarness(rel_sqlite, rel_emulator, base, monkeypatch)
    h.dag_id = ".."
    h.task_id = ".."
    create_customers(rel_sqlite, range(1, 4))
    rel_emulator.fail_user("1", status=400)
    h.run(max_failed_fraction=1.0)
    FIGURES.input("hostile dag/task id through Airflow")
    assert len(rel_emulator.messages) == 4  # the sync ran: users 2 and 3, identify and signed up
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".db"]
    assert (base / "_" / "_" / "task" / "HEAD.json") in written
    assert [p for p in written if base.resolve() not in p.resolve().parents] == []


# ----------------------------------------------------------------------------------------------------------
# The emulator listens on loopback only
# ----------------------------------------------------------------------------------------------------------
def listening_addresses(port: int) -> list[str]:
    """Local addresses of sockets listening on ``port`` (Linux ``/proc/net/tcp`` and ``tcp6``)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A = LISTEN
                raw = bytes.fromhex(address)
                if len(raw) == 4:
                    found.append(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    found.append(socket.inet_ntop(socket.AF_INET6, words))
    return found


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (no packet is sent), or ``None``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the outgoing interface
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_the_emulator_listens_on_loopback_only(host):
    with SegmentEmulator(write_key="loopback-key", host=host) as emulator:
        assert sys.platform != "linux" or listening_addresses(emulator.port) == ["127.0.0.1"]
        with socket.create_connection(("127.0.0.1", emulator.port), timeout=2):
            pass
        other = non_loopback_address()
        if other is not None:
            with pytest.raises(OSError), socket.create_connection((other, emulator.port), timeout=2):
                pass
        FIGURES.input("emulator bind address")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.0.2.1", "example.com"])
def test_the_emulator_refuses_other_bind_addresses(host):
    with pytest.raises(ValueError, match=r"only binds to 127\.0\.0\.1"):
        SegmentEmulator(write_key="loopback-key", host=host)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "airflow_provider_segment_profiles.testing",
            "--host",
            host,
            "--write-key",
            "k1234",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "only binds to 127.0.0.1" in result.stderr
    FIGURES.input("emulator bind address")
