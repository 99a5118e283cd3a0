"""``verify_sample`` end to end: real ``dag.test()`` runs of the reliability DAG against a SQLite warehouse,
the emulator's tracking API and its Profile API over HTTP.

What the Profile API holds comes from the emulator's profile store, which only the messages it accepted
build; the expected counts come from the rows the tests insert and from what they make the emulator do
(delay visibility, another source overwriting traits, a second emulator that never received the data).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
from pathlib import Path

import pytest

pytest.register_assert_rewrite("reliability_support")
from reliability_support import CUSTOMER_MAPPINGS, WRITE_KEY, DagHarness, create_customers  # noqa: E402

from airflow_provider_segment_profiles.testing import ProfileSpace, SegmentEmulator  # noqa: E402

pytest_plugins = ["reliability_support"]
pytestmark = pytest.mark.airflow_db

SPACE_ID = "spa_verify_e2e"
#: Fast polling for tests: reads every 0.2-0.5 s, at most 6 per record, 20 s in all.
FAST_POLICY = {"first_wait_s": 0.2, "max_wait_s": 0.5, "max_attempts": 6, "budget_s": 20.0}
VERIFY_LINE = "Verification through the Profile API"


def space(token: str) -> ProfileSpace:
    return ProfileSpace(SPACE_ID, write_keys=(WRITE_KEY,), access_tokens=(token,))


@pytest.fixture
def token() -> str:
    return f"pat-{secrets.token_hex(16)}"


def harness(warehouse, emulator, tmp_path, monkeypatch, name: str, reader: SegmentEmulator | None = None):
    """A DagHarness whose Profile API connection reads ``reader`` (default: the emulator that gets the data)."""
    h = DagHarness(
        warehouse, emulator, tmp_path / "state", monkeypatch, name, emulator.airflow_connection(WRITE_KEY)
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_SEGMENT_PROFILE_API_DEFAULT", json.dumps((reader or emulator).profile_api_connection())
    )
    h.operator.update(mappings=CUSTOMER_MAPPINGS, verify_policy=FAST_POLICY)
    return h


def test_verify_sample_reads_back_what_was_sent(rel_sqlite, tmp_path, monkeypatch, airflow_db, token, capfd):
    with SegmentEmulator(profile_spaces=[space(token)]) as emulator:
        h = harness(rel_sqlite, emulator, tmp_path, monkeypatch, "verify_kept")
        create_customers(rel_sqlite, range(1, 21))
        run = h.run(verify_sample=5)
        assert run.state == "success"
        verification = run.summary["verification"]
        assert {k: verification[k] for k in ("sampled", "kept", "missing", "mismatched", "unverified")} == {
            "sampled": 5,
            "kept": 5,
            "missing": 0,
            "mismatched": 0,
            "unverified": 0,
        }
        assert verification["problems"] == []
        # One read per sampled record, each asking by user_id for exactly the traits the identify sent.
        reads = emulator.profile_api.requests
        assert len(reads) == verification["requests"] == 5
        assert all(
            r.path.startswith(f"/v1/spaces/{SPACE_ID}/collections/users/profiles/user_id:") for r in reads
        )
        assert all("include=name%2Cemail%2Cplan" in r.query for r in reads)
        assert reads[0].authorization == "Basic " + base64.b64encode(f"{token}:".encode()).decode()
        out = capfd.readouterr().out
        (line,) = [line for line in out.splitlines() if VERIFY_LINE in line]
        assert "5 sampled records read back, 5 kept, 0 missing, 0 mismatched, 0 unverified" in line

        # Nothing changed: nothing delivered, nothing to sample, the run stays green.
        run = h.run(verify_sample=5)
        assert run.state == "success"
        assert run.summary["verification"]["sampled"] == 0
        # Off (the default): zeros and no read.
        rel_sqlite.execute("UPDATE customers SET plan = 'pro' WHERE id = 1")
        run = h.run()
        assert run.state == "success"
        assert run.summary["verification"]["sampled"] == 0
        assert len(emulator.profile_api.requests) == 5


def test_traits_another_source_overwrote_count_as_mismatched(
    rel_sqlite, tmp_path, monkeypatch, airflow_db, token
):
    """A second source of the same Space writes ``plan`` for users 1 and 2 right after the sync's batch: those
    two profiles exist with another value (mismatched, named with the trait), the others are kept, and the
    run is green because something was kept."""
    other_key = "other-source-write-key"
    both = ProfileSpace(SPACE_ID, write_keys=(WRITE_KEY, other_key), access_tokens=(token,))
    # Visibility lags by 0.5 s, so the overwrite (sent after the batch arrives) lands after the sync's traits.
    with SegmentEmulator(profile_spaces=[both], profile_visibility_delay=0.5) as emulator:
        h = harness(rel_sqlite, emulator, tmp_path, monkeypatch, "verify_mismatch")
        create_customers(rel_sqlite, range(1, 6))
        overwriter = threading.Thread(target=overwrite_plan_after_first_batch, args=(emulator, other_key))
        overwriter.start()
        run = h.run(verify_sample=5)
        overwriter.join(timeout=130)
        assert run.state == "success"
        verification = run.summary["verification"]
        assert (verification["sampled"], verification["kept"], verification["mismatched"]) == (5, 3, 2)
        assert sorted(
            (p["primary_key"], p["outcome"], tuple(p["traits"])) for p in verification["problems"]
        ) == [
            ("1", "mismatched", ("plan",)),
            ("2", "mismatched", ("plan",)),
        ]
        assert emulator.profile_api.profile(SPACE_ID, "user_id:1")["plan"] == "enterprise"


def overwrite_plan_after_first_batch(emulator: SegmentEmulator, write_key: str) -> None:
    import time

    import requests

    deadline = time.monotonic() + 120  # parsing the DAG and starting the task take a while under load
    while not emulator.messages_for(WRITE_KEY):
        if time.monotonic() > deadline:
            return
        time.sleep(0.005)
    batch = [{"type": "identify", "userId": uid, "traits": {"plan": "enterprise"}} for uid in ("1", "2")]
    requests.post(f"{emulator.url}/batch", json={"batch": batch}, auth=(write_key, ""), timeout=5)


def test_profiles_that_show_late_are_polled_until_kept(rel_sqlite, tmp_path, monkeypatch, airflow_db, token):
    with SegmentEmulator(profile_spaces=[space(token)], profile_visibility_delay=1.5) as emulator:
        h = harness(rel_sqlite, emulator, tmp_path, monkeypatch, "verify_eventual")
        create_customers(rel_sqlite, range(1, 4))
        run = h.run(verify_sample=3, verify_policy={**FAST_POLICY, "max_attempts": 20})
        assert run.state == "success"
        verification = run.summary["verification"]
        assert (verification["sampled"], verification["kept"], verification["missing"]) == (3, 3, 0)
        # The first reads found no profile yet: every record was read more than once.
        assert verification["requests"] > 3
        assert verification["duration_s"] >= 1.0
        statuses = [r.status for r in emulator.profile_api.requests]
        assert statuses[:3] == [404, 404, 404] and statuses[-3:] == [200, 200, 200]


def test_a_budget_too_short_for_the_lag_reports_missing(rel_sqlite, tmp_path, monkeypatch, airflow_db, token):
    """The budget bounds the wait: with profiles 30 s late and 1 s to wait, every read finds nothing."""
    with SegmentEmulator(profile_spaces=[space(token)], profile_visibility_delay=30.0) as emulator:
        h = harness(rel_sqlite, emulator, tmp_path, monkeypatch, "verify_budget")
        create_customers(rel_sqlite, range(1, 4))
        run = h.run(verify_sample=3, verify_policy={**FAST_POLICY, "budget_s": 1.0})
        assert run.state == "failed"
        verification = run.summary["verification"]
        assert (verification["sampled"], verification["kept"], verification["missing"]) == (3, 0, 3)
        assert verification["duration_s"] < 5.0


def test_wrong_region_is_detected_and_fails_without_retry(
    rel_sqlite, tmp_path, monkeypatch, airflow_db, token, capfd
):
    """The data goes to one emulator; the Profile API connection reads another (the other region's API,
    with the same space id and token) that never received it: nothing is kept, the task fails at its first
    try although it has retries, naming the causes."""
    with (
        SegmentEmulator(profile_spaces=[space(token)]) as emulator,
        SegmentEmulator(profile_spaces=[space(token)]) as other_region,
    ):
        h = harness(rel_sqlite, emulator, tmp_path, monkeypatch, "verify_region", reader=other_region)
        h.retries = 2
        create_customers(rel_sqlite, range(1, 11))
        run = h.run(verify_sample=4)
        assert run.state == "failed"
        assert run.try_number == 1  # not retried
        assert len(emulator.messages) == 20  # the data was delivered (and state committed)
        assert h.head() is not None
        verification = run.summary["verification"]
        assert (verification["sampled"], verification["kept"], verification["missing"]) == (4, 0, 4)
        assert {p["outcome"] for p in verification["problems"]} == {"missing"}
        assert len(other_region.profile_api.requests) == 4 * FAST_POLICY["max_attempts"]
        assert emulator.profile_api.requests == []
        out = capfd.readouterr().out
        assert "none of the 4 delivered records read back through the Profile API" in out
        assert "Endpoint Region" in out and "write key is of another source" in out and "drop rule" in out
        assert out.count(VERIFY_LINE) == 1


def test_a_refused_token_is_a_configuration_error(
    rel_sqlite, tmp_path, monkeypatch, airflow_db, token, capfd
):
    with SegmentEmulator(profile_spaces=[space(token)]) as emulator:
        h = harness(rel_sqlite, emulator, tmp_path, monkeypatch, "verify_token")
        connection = {**emulator.profile_api_connection(), "password": "pat-revoked-token-0000"}
        monkeypatch.setenv("AIRFLOW_CONN_SEGMENT_PROFILE_API_DEFAULT", json.dumps(connection))
        h.retries = 1
        create_customers(rel_sqlite, range(1, 4))
        run = h.run(verify_sample=2)
        assert (run.state, run.try_number) == ("failed", 1)
        assert "refused connection 'segment_profile_api_default' (HTTP 401" in capfd.readouterr().out
        # A connection without a space id fails before any row is read or message sent.
        monkeypatch.setenv(
            "AIRFLOW_CONN_SEGMENT_PROFILE_API_DEFAULT",
            json.dumps({**emulator.profile_api_connection(), "extra": {}}),
        )
        before = emulator.message_count
        rel_sqlite.execute("UPDATE customers SET plan = 'pro'")
        run = h.run(verify_sample=2)
        assert run.state == "failed" and emulator.message_count == before
        assert "has no space_id" in capfd.readouterr().out


def test_the_access_token_is_in_no_log_xcom_report_or_lineage(
    rel_sqlite, tmp_path, monkeypatch, airflow_db, token, capfd
):
    """Runs that verify, fail verification and fail on a refused token; then the console (task logs), every
    file under AIRFLOW_HOME (the metadata database: XCom, rendered fields) and state_path (reports), and the
    OpenLineage events of an ``airflow dags test`` run are grepped for the token in both its forms."""
    import subprocess
    import sys

    forms = [token.encode(), base64.b64encode(f"{token}:".encode())]
    events_file = tmp_path / "openlineage.ndjson"
    with (
        SegmentEmulator(profile_spaces=[space(token)]) as emulator,
        SegmentEmulator(profile_spaces=[space(token)]) as other_region,
    ):
        h = harness(rel_sqlite, emulator, tmp_path, monkeypatch, "verify_secret")
        create_customers(rel_sqlite, range(1, 6))
        emulator.fail_user("5", status=400)  # a report file with a failed message
        assert h.run(verify_sample=3, max_failed_fraction=1.0).state == "success"
        monkeypatch.setenv(
            "AIRFLOW_CONN_SEGMENT_PROFILE_API_DEFAULT", json.dumps(other_region.profile_api_connection())
        )
        rel_sqlite.execute("UPDATE customers SET plan = 'pro' WHERE id < 3")
        assert h.run(verify_sample=3, max_failed_fraction=1.0).state == "failed"
        # An airflow dags test run with OpenLineage's file transport, verifying against the right emulator.
        rel_sqlite.execute("UPDATE customers SET plan = 'team' WHERE id < 3")
        env = {
            **os.environ,
            **h.env(verify_sample=3, max_failed_fraction=1.0),
            "AIRFLOW_CONN_SEGMENT_PROFILE_API_DEFAULT": json.dumps(emulator.profile_api_connection()),
            "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
                {"type": "file", "log_file_path": str(events_file), "append": True}
            ),
            "AIRFLOW__OPENLINEAGE__NAMESPACE": "segment_profiles_tests",
        }
        done = subprocess.run(
            [sys.executable, "-m", "airflow", "dags", "test", h.dag_id, h.next_day().isoformat()],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    out, err = capfd.readouterr()
    console = out + err + done.stdout + done.stderr
    assert console.count(VERIFY_LINE) == 3  # the grep reads the runs that verified
    assert events_file.exists() and "segment" in events_file.read_text()
    found = []
    for root in (tmp_path, Path(os.environ["AIRFLOW_HOME"])):
        for path in root.rglob("*"):
            if path.is_file():
                content = path.read_bytes()
                found += [str(path) for form in forms if form in content]
    found += ["console" for form in forms if form in console.encode()]
    assert found == [], f"access token found in {found}"


def test_an_unavailable_profile_api_leaves_the_sample_unverified(
    rel_sqlite, tmp_path, monkeypatch, airflow_db, token, capfd
):
    """503 on every read: the hook's retries run out on the first record, verification stops there, nothing
    counts as lost and the run stays green (it cannot tell), saying so."""
    with SegmentEmulator(profile_spaces=[space(token)]) as emulator:
        h = harness(rel_sqlite, emulator, tmp_path, monkeypatch, "verify_unavailable")
        create_customers(rel_sqlite, range(1, 4))
        emulator.profile_api.fail_next(100, 503)
        run = h.run(verify_sample=3)
        assert run.state == "success"
        verification = run.summary["verification"]
        assert (verification["sampled"], verification["unverified"], verification["kept"]) == (0, 3, 0)
        assert len(emulator.profile_api.requests) == verification["requests"] == 5  # the default 5 attempts
        out = capfd.readouterr().out
        assert "Profile API unavailable, verification stopped at record 1" in out
