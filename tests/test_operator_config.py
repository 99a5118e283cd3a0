"""Configuration errors surface when the DAG is parsed, with every problem in one message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_provider_segment_profiles.actions import MappingConfigError
from airflow_provider_segment_profiles.operators.segment_profiles import SegmentProfilesSyncOperator

IDENTIFY = {"action": "send_identify", "fields": {"user_id": {"column": "id"}}}


def make(**kwargs) -> SegmentProfilesSyncOperator:
    settings = {
        "task_id": "t",
        "conn_id": "wh",
        "sql": "SELECT 1",
        "primary_key": "id",
        "mappings": [IDENTIFY],
    }
    settings.update(kwargs)
    return SegmentProfilesSyncOperator(**settings)


def test_a_valid_operator_builds():
    op = make()
    assert op.sync_mode == "diff"
    assert op.template_ext == (".sql",)
    assert {"sql", "parameters", "mappings"} <= set(op.template_fields)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sync_mode": "mirror"}, "sync_mode 'mirror' is not one of diff, incremental, full"),
        ({"sync_mode": "incremental"}, "needs cursor_column"),
        ({"cursor_column": "updated_at"}, "only used by sync_mode 'incremental'"),
        ({"batch_size": 2501}, "between 1 and 2,500"),
        ({"max_rejected_fraction": 1.5}, "max_rejected_fraction must be between 0 and 1"),
        ({"max_events_per_second": 0}, "max_events_per_second must be > 0"),
    ],
)
def test_operator_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


@pytest.mark.parametrize(
    ("sync_mode", "trigger"),
    [("incremental", "updated"), ("incremental", "deleted"), ("full", "deleted")],
)
def test_triggers_that_do_not_fit_the_mode(sync_mode, trigger):
    cursor = {"cursor_column": "ts"} if sync_mode == "incremental" else {}
    with pytest.raises(MappingConfigError, match=trigger):
        make(sync_mode=sync_mode, mappings=[{**IDENTIFY, "trigger": trigger}], **cursor)


def test_templated_mappings_are_checked_at_run_time_not_parse_time():
    op = make(mappings="{{ var.json.segment_mappings }}")
    assert op.mappings == "{{ var.json.segment_mappings }}"


@pytest.mark.airflow_db  # runs Airflow's CLI against a metadata database of its own
def test_airflow_lists_one_import_error_naming_every_problem(tmp_path):
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/airflow.db",
        "AIRFLOW__CORE__DAGS_FOLDER": str(Path(__file__).parent / "bad_dags"),
    }

    def airflow(*args: str, expected_rc: int = 0) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "airflow", *args], env=env, capture_output=True, text=True, timeout=180
        )
        assert result.returncode == expected_rc, result.stderr
        return result.stdout

    airflow("db", "migrate")
    airflow("dags", "reserialize")
    output = airflow("dags", "list-import-errors", "--output", "json", expected_rc=1)
    errors = json.loads(next(line for line in output.splitlines() if line.startswith("[")))
    (error,) = errors
    assert error["filepath"] == "bad_mapping_dag.py"
    text = error["error"]
    assert "4 problems" in text
    assert "mappings[0].action: unknown action 'send_identity'" in text
    assert "mappings[1].fields.colour: unknown field" in text
    assert "required field 'group_id'" in text
    assert "required field 'event_name'" in text


@pytest.mark.parametrize(
    ("rendered", "expected"),
    [("True", True), ("false", False), (" yes ", True), ("0", False), (True, True), (0, False)],
)
def test_full_refresh_and_dry_run_render_from_templates_to_booleans(rendered, expected):
    op = make(full_refresh="{{ params.full_refresh }}", dry_run="{{ params.dry_run }}")
    assert {"full_refresh", "dry_run"} <= set(op.template_fields)
    op.render_template_fields({"params": {"full_refresh": rendered, "dry_run": rendered}})
    config = op._config()
    assert (config.full_refresh, config.dry_run) == (expected, expected)


def test_a_template_that_renders_to_no_boolean_is_a_configuration_error():
    op = make(full_refresh="{{ params.full_refresh }}")
    op.render_template_fields({"params": {"full_refresh": "maybe"}})
    with pytest.raises(ValueError, match=r"full_refresh must be a boolean .* not 'maybe'"):
        op._config()


def test_a_literal_that_is_no_boolean_fails_at_parse_time():
    with pytest.raises(ValueError, match="dry_run must be a boolean"):
        make(dry_run="sometimes")
