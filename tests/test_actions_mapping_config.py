"""Mapping validation: one MappingConfigError listing every problem, with mapping names and JSON paths."""

from __future__ import annotations

import copy
import pickle

import pytest

from airflow_provider_segment_profiles.actions import (
    MAX_MAPPINGS,
    CompiledMapping,
    MappingConfigError,
    compile_mappings,
)

IDENTIFY = {
    "name": "customers_identify",
    "action": "send_identify",
    "trigger": "added_or_updated",
    "profile_space": "segment_profiles_eu",
    "fields": {
        "user_id": {"column": "customer_id"},
        "traits": {
            "email": {"column": "email"},
            "phone": {"column": "phone", "skip_null": True},
            "source": "warehouse",
        },
        "timestamp": {"column": "updated_at"},
    },
}


def problems_of(mappings, sync_mode="diff", primary_key="customer_id") -> list[str]:
    with pytest.raises(MappingConfigError) as caught:
        compile_mappings(mappings, sync_mode=sync_mode, primary_key=primary_key)
    assert isinstance(caught.value, ValueError)
    for problem in caught.value.problems:
        assert problem in str(caught.value)
    return caught.value.problems


def test_spec_example_compiles():
    (compiled,) = compile_mappings([IDENTIFY], sync_mode="diff", primary_key="customer_id")
    assert isinstance(compiled, CompiledMapping)
    assert (compiled.name, compiled.action, compiled.trigger) == (
        "customers_identify",
        "send_identify",
        "added_or_updated",
    )
    assert compiled.profile_space == "segment_profiles_eu"
    assert compiled.columns == frozenset({"customer_id", "email", "phone", "updated_at"})
    assert compiled.uses_all_columns is False
    assert len(compiled.fingerprint) == 32


def test_defaults_name_trigger_and_profile_space():
    mapping = {"action": "send_track", "fields": {"user_id": {"column": "id"}, "event_name": "Signed Up"}}
    _first, second = compile_mappings([IDENTIFY, mapping], sync_mode="diff", primary_key="id")
    assert second.name == "send_track_1"  # f"{action}_{index}"
    assert second.trigger == "added_or_updated"
    assert second.profile_space is None


def test_one_error_lists_every_problem_with_names_and_paths():
    mappings = [
        {"action": "send_idnetify", "fields": {}},
        {
            "name": "groups",
            "action": "send_group",
            "trigger": "deleted",
            "profile_space": 7,
            "fields": {
                "userId": {"column": "customer_id"},
                "traits": "not an object",
                "timestamp": "yesterday-ish",
                "anonymous_id": {"column": "anon", "skp_null": True},
            },
        },
        {
            "name": "events",
            "action": "send_track",
            "trigger": "updated",
            "fields": {
                "user_id": {"columns": "*"},
                "properties": {"total": {"colum": "total"}, "bad": {"column": 5}},
                "event_name": {"literal": "x", "column": "y"},
            },
        },
        {"name": "events", "action": "send_subscriptions", "fields": {"user_id": {"column": "id"}}},
        "not a mapping",
    ]
    problems = problems_of(mappings, sync_mode="full")
    expected_fragments = [
        ("mapping #0 at mappings[0].action", "did you mean 'send_identify'"),
        ("mapping 'groups' at mappings[1].trigger", "does not fit sync_mode 'full'"),
        ("mapping 'groups' at mappings[1].profile_space", "conn id"),
        ("mapping 'groups' at mappings[1].fields.userId", "did you mean 'user_id'"),
        ("mapping 'groups' at mappings[1].fields.traits", "not of type 'object'"),
        ("mapping 'groups' at mappings[1].fields.timestamp", "cannot parse 'yesterday-ish'"),
        ("mapping 'groups' at mappings[1].fields.anonymous_id", "unknown key(s) ['skp_null']"),
        ("mapping 'groups' at mappings[1].fields:", "required field 'group_id' (Group ID) is not mapped"),
        ("mapping 'events' at mappings[2].fields.user_id", "takes a single value"),
        ("mapping 'events' at mappings[2].fields.properties.total.colum", "did you mean 'column'"),
        ("mapping 'events' at mappings[2].fields.properties.bad.column", "non-empty string"),
        ("mapping 'events' at mappings[2].fields.event_name", "mixes ['column', 'literal']"),
        ("mapping 'events' at mappings[3].fields", "map at least one of email, phone"),
        ("mapping 'events' at mappings[3].fields", "map at least one subscription status"),
        ("mapping #4 at mappings[4]", "must be an object"),
        ("mapping name 'events' is used 2 times (mappings[2], mappings[3])", "unique"),
    ]
    for location, fragment in expected_fragments:
        assert any(p.startswith(location) and fragment in p for p in problems), (location, fragment, problems)
    assert len(problems) == len(expected_fragments)


@pytest.mark.parametrize(
    ("sync_mode", "trigger", "fits"),
    [
        ("diff", "added", True),
        ("diff", "updated", True),
        ("diff", "added_or_updated", True),
        ("diff", "deleted", True),
        ("incremental", "added", True),
        ("incremental", "added_or_updated", True),
        ("incremental", "updated", False),
        ("incremental", "deleted", False),
        ("full", "added", True),
        ("full", "updated", True),
        ("full", "added_or_updated", True),
        ("full", "deleted", False),
    ],
)
def test_trigger_fits_sync_mode(sync_mode, trigger, fits):
    mapping = {**IDENTIFY, "trigger": trigger}
    if trigger == "deleted":
        mapping["fields"] = {"user_id": {"column": "customer_id"}, "traits": {"deleted": True}}
    if fits:
        compile_mappings([mapping], sync_mode=sync_mode, primary_key="customer_id")
    else:
        (problem,) = problems_of([mapping], sync_mode=sync_mode)
        assert f"trigger {trigger!r} does not fit sync_mode {sync_mode!r}" in problem


@pytest.mark.parametrize(
    ("trigger", "change", "sync_mode", "selected"),
    [
        ("added_or_updated", "added", "diff", True),
        ("added_or_updated", "updated", "diff", True),
        ("added_or_updated", "deleted", "diff", False),
        ("added", "updated", "diff", False),
        ("updated", "added", "diff", False),
        ("updated", "updated", "diff", True),
        ("deleted", "deleted", "diff", True),
        ("deleted", "added", "diff", False),
        ("added", "added", "incremental", True),
        ("updated", "added", "full", True),  # full: every row to every non-deleted mapping
        ("added", "updated", "full", True),
    ],
)
def test_selects(trigger, change, sync_mode, selected):
    fields = {"user_id": {"column": "customer_id"}}
    (compiled,) = compile_mappings(
        [{"action": "send_identify", "trigger": trigger, "fields": fields}],
        sync_mode=sync_mode,
        primary_key="customer_id",
    )
    assert compiled.selects(change) is selected


def test_selects_refuses_unknown_change():
    (compiled,) = compile_mappings([IDENTIFY], sync_mode="diff", primary_key="customer_id")
    with pytest.raises(ValueError, match="change must be one of"):
        compiled.selects("unchanged")


def test_more_than_50_mappings():
    mappings = [{**IDENTIFY, "name": f"m{i}"} for i in range(MAX_MAPPINGS + 1)]
    (problem,) = problems_of(mappings)
    assert "51 mappings given; Segment allows at most 50" in problem
    compile_mappings(mappings[:50], sync_mode="diff", primary_key="customer_id")


def test_default_name_collision_is_a_duplicate():
    unnamed = {"action": "send_identify", "fields": {"user_id": {"column": "customer_id"}}}
    (problem,) = problems_of([unnamed, {**IDENTIFY, "name": "send_identify_0"}])
    assert "mapping name 'send_identify_0' is used 2 times" in problem


def test_deleted_mapping_reads_only_the_primary_key():
    mapping = {
        "name": "gone",
        "action": "send_track",
        "trigger": "deleted",
        "fields": {
            "user_id": {"column": "customer_id"},
            "event_name": "Customer Removed",
            "properties": {"email": {"column": "email"}, "all": {"columns": "*"}},
        },
    }
    problems = problems_of([mapping])
    assert any(
        "mappings[0].fields.properties.email" in p and "column 'email'" in p and "'customer_id'" in p
        for p in problems
    )
    assert any("mappings[0].fields.properties.all" in p and '"columns": "*"' in p for p in problems)
    assert len(problems) == 2


@pytest.mark.parametrize(
    ("fields", "fragment", "path"),
    [
        ({"user_id": {"column": "id"}, "message_id": "fixed"}, "same id", "fields.message_id"),
        (
            {"user_id": {"column": "id"}, "traits": {"column": "t", "parse_json": "yes"}},
            "true or false",
            "parse_json",
        ),
        (
            {"user_id": {"column": "id", "parse_json": True}},
            "only applies to object fields",
            "user_id.parse_json",
        ),
        (
            {"user_id": {"column": "id"}, "traits": {"x": {"literal": 1, "other": 2}}},
            "only the key",
            "traits.x",
        ),
        ({"user_id": {"column": "id"}, "traits": {"x": float("nan")}}, "not JSON-serialisable", "traits.x"),
        (
            {"user_id": {"column": "id"}, "traits": {"when": {"literal": object()}}},
            "JSON-serialisable",
            "when",
        ),
        ({"user_id": {"column": "id"}, "traits": {"columns": ["a", "a"]}}, "more than once", "columns"),
        ({"user_id": {"column": "id"}, "traits": {"columns": []}}, "non-empty list", "traits.columns"),
        (
            {"user_id": {"column": "id"}, "traits": {"columns": ["a"], "exclude": ["b"]}},
            "only applies",
            "exclude",
        ),
        ({"user_id": {"column": "id"}, "traits": {"columns": "*", "rename": {}}}, "unknown key(s)", "traits"),
        ({"user_id": ["a", "b"]}, "not of type 'string'", "fields.user_id"),
        ({"user_id": {"column": ""}}, "non-empty string", "user_id.column"),
        ({"traits": {"a": 1}}, "map user_id or anonymous_id", "fields"),
        ({"user_id": None, "anonymous_id": ""}, "map user_id or anonymous_id", "fields"),
        ({"user_id": {"column": "id"}, "timestamp": {"columns": ["a"]}}, "single value", "timestamp"),
        (
            {"user_id": {"column": "id"}, "traits": {"first name": {"colum": "x"}}},
            "did you mean",
            '["first name"]',
        ),
    ],
)
def test_field_problems(fields, fragment, path):
    problems = problems_of([{"name": "m", "action": "send_identify", "fields": fields}], primary_key="id")
    assert any(fragment in p and path in p for p in problems), problems


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"email_subscription_status": "yes", "email": {"column": "e"}}, "literal status 'yes' is not valid"),
        ({"sms_subscription_status": {"column": "s"}, "email": {"column": "e"}}, "but phone is not"),
        (
            {
                "email": {"column": "e"},
                "sms_subscription_status": "true",
                "phone": {"column": "p"},
                "subscription_groups": {"columns": ["g"]},
            },
            "need email_subscription_status",
        ),
    ],
)
def test_subscription_mapping_problems(fields, fragment):
    mapping = {"action": "send_subscriptions", "fields": {"user_id": {"column": "id"}, **fields}}
    problems = problems_of([mapping], primary_key="id")
    assert any(fragment in p for p in problems), problems


@pytest.mark.parametrize(
    ("mappings", "sync_mode", "primary_key", "fragment"),
    [
        ({"action": "send_identify"}, "diff", "id", "must be a list"),
        ([], "diff", "id", "no mappings given"),
        ([IDENTIFY], "sometimes", "customer_id", "sync_mode must be one of"),
        ([IDENTIFY], "diff", "", "primary_key must be a non-empty column name"),
        ([{**IDENTIFY, "mappings_name": "x"}], "diff", "customer_id", "unknown mapping key"),
        ([{**IDENTIFY, "fields": None}], "diff", "customer_id", "must be an object of field key"),
        ([{**IDENTIFY, "action": None}], "diff", "customer_id", "missing; one of"),
        ([{**IDENTIFY, "name": ""}], "diff", "customer_id", "must be a non-empty string"),
        ([{**IDENTIFY, "trigger": "on_change"}], "diff", "customer_id", "unknown trigger 'on_change'"),
    ],
)
def test_operator_level_problems(mappings, sync_mode, primary_key, fragment):
    problems = problems_of(mappings, sync_mode=sync_mode, primary_key=primary_key)
    assert any(fragment in p for p in problems), problems


def test_fingerprint_is_stable_and_changes_with_the_mapping():
    (first,) = compile_mappings([IDENTIFY], sync_mode="diff", primary_key="customer_id")
    (again,) = compile_mappings([copy.deepcopy(IDENTIFY)], sync_mode="diff", primary_key="customer_id")
    explicit_default = {**IDENTIFY, "trigger": "added_or_updated"}
    (same,) = compile_mappings([explicit_default], sync_mode="diff", primary_key="customer_id")
    changed = copy.deepcopy(IDENTIFY)
    changed["fields"]["traits"]["source"] = "dbt"
    (different,) = compile_mappings([changed], sync_mode="diff", primary_key="customer_id")
    assert first.fingerprint == again.fingerprint == same.fingerprint
    assert different.fingerprint != first.fingerprint


def test_check_columns_names_missing_ambiguous_and_miscased_columns():
    mapping = {
        "name": "m",
        "action": "send_identify",
        "fields": {
            "user_id": {"column": "customer_id"},
            "traits": {
                "email": {"column": "email"},
                "plan": {"column": "plan"},
                "rest": {"columns": "*", "exclude": ["nope"]},
            },
        },
    }
    (compiled,) = compile_mappings([mapping], sync_mode="diff", primary_key="customer_id")
    assert compiled.uses_all_columns
    problems = compiled.check_columns(["customer_id", "EMAIL", "plan", "plan"])
    assert any("mappings[0].fields.traits.email" in p and "did you mean 'EMAIL'" in p for p in problems)
    assert any("2 columns named 'plan'" in p for p in problems)
    assert any("exclude: column 'nope'" in p for p in problems)
    assert any("duplicate column names ['plan']" in p for p in problems)
    with pytest.raises(MappingConfigError) as caught:
        compiled.bind(["customer_id", "EMAIL", "plan", "plan"])
    assert caught.value.problems == problems
    assert compiled.check_columns(["customer_id", "email", "plan", "nope"]) == []


def test_errors_pickle():
    error = MappingConfigError(["a", "b"])
    assert pickle.loads(pickle.dumps(error)).problems == ["a", "b"]
    from airflow_provider_segment_profiles.actions import RecordRejected

    rejected = pickle.loads(pickle.dumps(RecordRejected("m", "pk", "traits.x", "bad")))
    assert str(rejected) == "record with primary key 'pk' rejected by mapping 'm' at field 'traits.x': bad"
