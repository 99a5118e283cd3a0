"""A mapped column that is not in the model's result: the error says which result column was probably meant,
as it does for misspelt action and field names."""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("reliability_support")
from reliability_support import IDENTIFY_MAPPING, DagHarness, create_customers  # noqa: E402

from airflow_provider_segment_profiles.actions import compile_mappings  # noqa: E402

pytest_plugins = ["reliability_support"]

RESULT = ["customer_id", "email_address", "plan_name", "lifetime_value"]


def problems_for(fields: dict) -> list[str]:
    (mapping,) = compile_mappings(
        [
            {
                "name": "m",
                "action": "send_identify",
                "fields": {"user_id": {"column": "customer_id"}, **fields},
            }
        ],
        sync_mode="diff",
        primary_key="customer_id",
    )
    return mapping.check_columns(RESULT)


@pytest.mark.parametrize(
    ("fields", "where", "hint"),
    [
        (
            {"traits": {"email": {"column": "email_adress"}}},
            "traits.email",
            "; did you mean 'email_address'?",
        ),
        (
            {"traits": {"email": {"column": "Email_Adress"}}},
            "traits.email",
            "; did you mean 'email_address'?",
        ),
        (
            {"traits": {"plan": {"column": "Plan_Name"}}},
            "traits.plan",
            "; did you mean 'plan_name'? (names are case-sensitive)",
        ),
        (
            {"traits": {"columns": ["customer_id", "lifetime_valeu"]}},
            "traits",
            "; did you mean 'lifetime_value'?",
        ),
        (
            {"traits": {"columns": "*", "exclude": ["lifetime_valu"]}},
            "traits.exclude",
            "; did you mean 'lifetime_value'?",
        ),
    ],
    ids=["typo", "typo-and-case", "case-only", "columns-list", "exclude"],
)
def test_a_missing_column_suggests_the_closest_result_column(fields, where, hint):
    (problem,) = problems_for(fields)
    assert f"at mappings[0].fields.{where}" in problem
    assert "is not in the query result" + hint in problem


def test_no_suggestion_when_nothing_is_close():
    (problem,) = problems_for({"traits": {"score": {"column": "nps"}}})
    assert "column 'nps' is not in the query result" in problem and "did you mean" not in problem


@pytest.mark.airflow_db
def test_an_operator_run_names_the_column_meant(rel_harness: DagHarness, capfd):
    """A real run (``dag.test()``) fails at once without retry, sends nothing and says which column was
    meant, for every misspelt column in one message."""
    h = rel_harness
    create_customers(h.warehouse, [1, 2])
    h.retries = 2
    mapping = {
        "name": "who",
        "action": "send_identify",
        "fields": {
            "user_id": {"column": "id"},
            "traits": {"email": {"column": "emial"}, "plan": {"column": "Plan"}, "nps": {"column": "nps"}},
        },
    }
    run = h.run(mappings=[mapping])
    output = capfd.readouterr().out
    assert run.state == "failed" and run.try_number == 1
    assert run.sent == [] and h.head() is None
    assert "AirflowFailException" in output
    assert (
        "mapping 'who' at mappings[0].fields.traits.email: column 'emial' is not in the query result; "
        "did you mean 'email'?" in output
    )
    assert (
        "at mappings[0].fields.traits.plan: column 'Plan' is not in the query result; did you mean 'plan'? "
        "(names are case-sensitive)" in output
    )
    assert "column 'nps' is not in the query result (result columns:" in output


@pytest.mark.airflow_db
@pytest.mark.parametrize("engine", ["worker", "warehouse"])
def test_primary_key_and_cursor_column_name_the_column_meant(rel_harness: DagHarness, capfd, engine):
    h = rel_harness
    create_customers(h.warehouse, [1, 2])
    h.retries = 2
    run = h.run(primary_key="Id", change_detection=engine, mappings=[IDENTIFY_MAPPING])
    output = capfd.readouterr().out
    assert run.state == "failed" and run.try_number == 1 and run.sent == []
    assert "primary_key 'Id' is not a column of the model's result; did you mean 'id'? (names are" in output
    if engine == "worker":  # incremental mode runs on the worker engine only
        run = h.run(mappings=[IDENTIFY_MAPPING], sync_mode="incremental", cursor_column="plann")
        output = capfd.readouterr().out
        assert run.state == "failed" and run.try_number == 1
        assert "cursor_column 'plann' is not a column of the model's result; did you mean 'plan'?" in output


@pytest.mark.airflow_db
def test_the_warehouse_engine_checks_columns_before_diffing_the_model(rel_harness: DagHarness, capfd):
    """A misspelt mapped column fails from the model's description: nothing is materialised or diffed (the
    engine logs its diff's counts only once it has diffed)."""
    h = rel_harness
    create_customers(h.warehouse, range(1, 51))
    mapping = {
        "name": "who",
        "action": "send_identify",
        "fields": {"user_id": {"column": "id"}, "traits": {"email": {"column": "emial"}}},
    }
    capfd.readouterr()
    run = h.run(mappings=[mapping], change_detection="warehouse")
    output = capfd.readouterr().out
    assert run.state == "failed" and run.sent == []
    assert "column 'emial' is not in the query result; did you mean 'email'?" in output
    assert "Warehouse change detection (state" not in output
    assert run.summary is None
