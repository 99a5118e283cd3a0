"""
Send Subscriptions with NULL subscription-group values, as the issue's PostgreSQL model gave them
(``CASE WHEN email_status IS NULL THEN NULL ELSE newsletter END``): a NULL group is no change, like a NULL
status; a record whose every subscription value is NULL is skipped, not rejected, through real
``dag.test()`` runs over both engines.
"""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("reliability_support")
from reliability_support import DagHarness, PostgresWarehouse  # noqa: E402

pytest_plugins = ["reliability_support"]
pytestmark = pytest.mark.airflow_db

MAPPING = {
    "name": "subscriptions",
    "action": "send_subscriptions",
    "fields": {
        "user_id": {"column": "id"},
        "email": {"column": "email"},
        "email_subscription_status": {"column": "email_status"},
        "phone": {"column": "phone"},
        "sms_subscription_status": {"column": "sms_status"},
        "subscription_groups": {"newsletter": {"column": "newsletter"}},
    },
}


@pytest.fixture(params=["worker", "warehouse"])
def pg(request, rel_emulator, tmp_path, monkeypatch, airflow_db) -> DagHarness:
    wh = PostgresWarehouse(request.getfixturevalue("postgres_dsn"))
    request.addfinalizer(wh.close)
    wh.execute(
        f"CREATE TABLE {wh.t('people')} (id int, email text, email_status text, phone text, sms_status text, "
        "newsletter text)"
    )
    # 1-3: email status and newsletter; 4-6: nothing known (all NULL); 7-9: only an SMS status.
    rows = [(i, f"p{i}@example.com", "subscribed", None, None, "unsubscribed") for i in (1, 2, 3)]
    rows += [(i, f"p{i}@example.com", None, None, None, "subscribed") for i in (4, 5, 6)]
    rows += [(i, f"p{i}@example.com", None, f"+4930{i}", "true", "subscribed") for i in (7, 8, 9)]
    wh.execute(f"INSERT INTO {wh.t('people')} VALUES (%s, %s, %s, %s, %s, %s)", rows)
    h = DagHarness(wh, rel_emulator, tmp_path / "state", monkeypatch, name=request.node.name)
    h.operator.update(
        sql=(
            "SELECT id, email, email_status, phone, sms_status, "
            "CASE WHEN email_status IS NULL THEN NULL ELSE newsletter END AS newsletter "
            f"FROM {wh.t('people')}"
        ),
        mappings=[MAPPING],
        change_detection=request.param,
        state_schema=wh.schema,
    )
    return h


def test_null_groups_are_no_change_and_all_null_records_are_skipped(pg: DagHarness):
    run = pg.run()
    assert run.state == "success"
    assert run.summary["messages"] == {"delivered": 6, "rejected": 0, "failed": 0}
    assert run.summary["skipped"] == {"total": 3, "mappings": {"subscriptions": 3}}
    by_user = {m["userId"]: m["context"]["messaging_subscriptions"] for m in run.sent}
    assert sorted(by_user, key=int) == ["1", "2", "3", "7", "8", "9"]
    assert by_user["1"] == [
        {
            "key": "p1@example.com",
            "type": "EMAIL",
            "status": "SUBSCRIBED",
            "groups": [{"name": "newsletter", "status": "UNSUBSCRIBED"}],
        }
    ]
    # Only an SMS status and a NULL group: no `Email_Subscription must be defined...` rejection.
    assert by_user["7"] == [{"key": "+49307", "type": "SMS", "status": "SUBSCRIBED"}]
    assert pg.run().sent == []  # skipped records are synced: nothing pending
