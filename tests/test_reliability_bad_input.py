"""Bad input through real Airflow runs (``dag.test()``) of the operator, against a real SQLite file and, where
the type matters, the PostgreSQL server. Every input ends in exactly one of: the right JSON (asserted value by
value), a per-record rejection with a reason, or a clear configuration error that fails the task without a
retry and without touching state. Never a crash mid-run, a poisoned batch (good records next to a bad one
are delivered) or a silent drop (every record is accounted for).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.register_assert_rewrite("reliability_support")
from reliability_support import (  # noqa: E402
    FIGURES,
    DagHarness,
    create_customers,
    read_ndjson,
)

pytest_plugins = ["reliability_support"]
pytestmark = pytest.mark.airflow_db

REJECT = object()


class Rejected:
    """Expected outcome: the record's message is rejected with a reason containing every ``words``."""

    def __init__(self, field: str, *words: str) -> None:
        self.field = field
        self.words = words


def values_mapping(name: str = "values") -> dict[str, Any]:
    """Identify with the case's value as the trait ``v``."""
    return {
        "name": name,
        "action": "send_identify",
        "fields": {"user_id": {"column": "id"}, "traits": {"v": {"column": "v"}}},
    }


def identify_of(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Identify messages by user id (each user must have at most one)."""
    found: dict[str, dict[str, Any]] = {}
    for message in messages:
        if message["type"] == "identify":
            assert message["userId"] not in found, f"two identifies for {message['userId']}"
            found[message["userId"]] = message
    return found


def check_outcomes(run, expected: dict[str, Any], field: str = "v", mapping: str = "values") -> None:
    """Every case delivered with the expected trait value, or rejected with the expected reason."""
    assert run.state == "success", "bad values must not fail the run"
    delivered = identify_of(run.sent)
    rejected = {
        s["primary_key"]: s for s in read_ndjson(run.summary["report_path"]) if s["mapping"] == mapping
    }
    for case, want in expected.items():
        if isinstance(want, Rejected):
            assert case not in delivered, f"{case}: delivered although it should be rejected"
            assert case in rejected, f"{case}: neither delivered nor rejected (silent drop)"
            assert rejected[case]["outcome"] == "rejected"
            assert rejected[case].get("field") == want.field, rejected[case]
            for word in want.words:
                assert word in rejected[case]["reason"], (case, rejected[case]["reason"])
        else:
            assert case in delivered, f"{case}: not delivered ({rejected.get(case)})"
            got = delivered[case]["traits"][field]
            assert got == want and type(got) is type(want), f"{case}: sent {got!r}, expected {want!r}"
    assert set(delivered) | set(rejected) == set(expected)
    FIGURES.input("bad value", len(expected))


# ----------------------------------------------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------------------------------------------
SQLITE_VALUES: dict[str, tuple[Any, Any]] = {
    # case id: (value stored in SQLite, expected trait after the round trip through Segment's JSON)
    "nul_in_text": ("a\x00b\x00", "a\x00b\x00"),
    "multibyte_text": ("名前 😀 é", "名前 😀 é"),
    "int_max_safe": (2**53 - 1, 2**53 - 1),
    "int_past_safe": (2**53 + 1, "9007199254740993"),
    "int64_max": (2**63 - 1, "9223372036854775807"),
    "int64_min": (-(2**63), "-9223372036854775808"),
    "float_infinity": (float("inf"), None),
    "float_minus_infinity": (float("-inf"), None),
    "float_small": (1e-300, 1e-300),
    "blob": (b"\x00\xff\x10", "AP8Q"),
    "json_text_stays_text": ('{"a": 1}', '{"a": 1}'),
    "empty_text_is_kept": ("", ""),
    "null": (None, None),
}


def test_sqlite_values_become_the_documented_json(rel_harness: DagHarness):
    h = rel_harness
    wh = h.warehouse
    wh.execute("CREATE TABLE vals (id TEXT, v)")
    wh.execute(
        "INSERT INTO vals VALUES (%s, %s)", [(case, value) for case, (value, _) in SQLITE_VALUES.items()]
    )
    h.operator.update(sql="SELECT id, v FROM vals", mappings=[values_mapping()])
    run = h.run()
    check_outcomes(run, {case: want for case, (_, want) in SQLITE_VALUES.items()})
    assert run.summary["warnings"] == 2  # the two infinities, each replaced by null


def test_undecodable_text_follows_the_surrogate_policy(rel_harness: DagHarness):
    h = rel_harness
    wh = h.warehouse
    wh.execute("CREATE TABLE vals (id TEXT, v)")
    wh.execute("INSERT INTO vals VALUES ('ok', 'fine')")
    wh.execute("INSERT INTO vals VALUES ('lone_surrogate', CAST(X'61EDA08062' AS TEXT))")
    h.operator.update(sql="SELECT id, v FROM vals", mappings=[values_mapping()])
    run = h.run()
    assert run.state == "success"
    sent = identify_of(run.sent)
    assert sent["ok"]["traits"]["v"] == "fine"
    # Each byte that is not UTF-8 becomes U+FFFD (Python's "replace"), instead of failing every run.
    assert sent["lone_surrogate"]["traits"]["v"] == "a\ufffd\ufffd\ufffdb"


def test_timestamps_as_text_and_numbers(rel_harness: DagHarness):
    h = rel_harness
    wh = h.warehouse
    cases = {
        "naive": ("2024-03-10 02:30:00", "2024-03-10T02:30:00.000Z"),  # naive = UTC, even in a DST gap
        "aware": ("2024-03-10T02:30:00-05:00", "2024-03-10T07:30:00.000Z"),
        "zulu_micro": ("2024-01-01T00:00:00.123456Z", "2024-01-01T00:00:00.123456Z"),
        "pre_1970": ("1969-07-20T20:17:40Z", "1969-07-20T20:17:40.000Z"),
        "epoch_seconds": (1700000000, "2023-11-14T22:13:20.000Z"),
        "epoch_millis": (1700000000123, "2023-11-14T22:13:20.123Z"),
        "not_a_time": ("yesterday", Rejected("timestamp", "cannot parse 'yesterday'")),
        "infinite": (float("inf"), Rejected("timestamp", "is not a timestamp")),
        "null": (None, None),
    }
    wh.execute("CREATE TABLE times (id TEXT, ts)")
    wh.execute("INSERT INTO times VALUES (%s, %s)", [(case, value) for case, (value, _) in cases.items()])
    mapping = {
        "name": "values",
        "action": "send_identify",
        "fields": {"user_id": {"column": "id"}, "timestamp": {"column": "ts"}},
    }
    h.operator.update(sql="SELECT id, ts FROM times", mappings=[mapping], max_rejected_fraction=1.0)
    run = h.run()
    expected = {case: want for case, (_, want) in cases.items()}
    assert run.state == "success"
    sent = identify_of(run.sent)
    for case, want in expected.items():
        if isinstance(want, Rejected):
            continue
        assert sent[case].get("timestamp") == want, case
    lines = read_ndjson(run.summary["report_path"])
    rejected = {r["primary_key"]: r for r in lines if r["outcome"] == "rejected"}
    assert set(rejected) == {"not_a_time", "infinite"}
    for case in rejected:
        assert rejected[case]["field"] == "timestamp"
        assert all(word in rejected[case]["reason"] for word in expected[case].words)
    assert run.summary["warnings"] == 1  # pre-1970: Segment may not ingest it
    (warned,) = [r for r in lines if r["outcome"] == "warning"]
    assert warned["mapping"] == "values" and "1970" in warned["reason"]
    FIGURES.input("timestamp", len(cases))


def test_postgres_types_become_the_documented_json(
    rel_postgres, rel_emulator, tmp_path, monkeypatch, airflow_db
):
    """Decimal precision, NaN/Infinity (numeric and float8), bigints, naive/aware/DST-gap/pre-1970 times and
    json text with NUL and a lone surrogate, read in a session whose time zone is America/New_York."""
    wh = rel_postgres
    wh.extra = {"options": "-c TimeZone=America/New_York"}
    h = DagHarness(wh, rel_emulator, tmp_path / "state", monkeypatch, name="pg_types")
    t = wh.t("vals")
    wh.execute(
        f"CREATE TABLE {t} (id text, num numeric, dbl float8, big bigint, ts timestamp, tz timestamptz, d date, j json)"
    )
    wh.execute(
        f"""INSERT INTO {t} VALUES
        ('a', 0.12345678901234567890, 0.1, 9007199254740993, '2024-03-10 02:30:00',
         '2024-03-10 02:30:00 America/New_York', '1969-07-20', '{{"nul": "x\\u0000y", "lone": "\\ud800z"}}'),
        ('b', 12.10, 'NaN', 9007199254740991, '1969-12-31 23:59:59.999999',
         '2024-11-03 01:30:00-04', '1900-01-01', '[1, "two"]'),
        ('c', 'NaN', 'Infinity', -9223372036854775808, '2024-06-01 12:00:00',
         '2024-06-01 12:00:00+02', '2024-02-29', '"text"'),
        ('d', 'Infinity', '-Infinity', 0, '1960-01-01 00:00:00', '1960-01-01 00:00:00+00', NULL, NULL),
        ('e', 123456789012345678901234567890, 1e300, 1, NULL, NULL, NULL, 'null')"""
    )
    h.operator.update(
        sql=f"SELECT * FROM {t}",
        mappings=[
            {
                "name": "values",
                "action": "send_identify",
                "fields": {"user_id": {"column": "id"}, "traits": {"columns": "*", "exclude": ["id"]}},
            },
            {
                "name": "times",
                "action": "send_track",
                "fields": {"user_id": {"column": "id"}, "event_name": "Timed", "timestamp": {"column": "tz"}},
            },
        ],
    )
    run = h.run()
    assert run.state == "success"
    traits = {user: m["traits"] for user, m in identify_of(run.sent).items()}
    assert traits == {
        "a": {
            "num": "0.12345678901234567890",  # not representable as a float: exact digits as text
            "dbl": 0.1,
            "big": "9007199254740993",  # past 2**53: text, so JavaScript does not round it
            "ts": "2024-03-10T02:30:00.000Z",  # naive: taken as UTC
            "tz": "2024-03-10T07:30:00.000Z",  # 02:30 does not exist in New York that night: 03:30 EDT
            "d": "1969-07-20T00:00:00.000Z",
            "j": {"nul": "x\x00y", "lone": "\ufffdz"},  # json parsed by the driver; lone surrogate replaced
        },
        "b": {
            "num": 12.1,
            "dbl": None,
            "big": 9007199254740991,
            "ts": "1969-12-31T23:59:59.999999Z",
            "tz": "2024-11-03T05:30:00.000Z",
            "d": "1900-01-01T00:00:00.000Z",
            "j": [1, "two"],
        },
        "c": {
            "num": None,
            "dbl": None,
            "big": "-9223372036854775808",
            "ts": "2024-06-01T12:00:00.000Z",
            "tz": "2024-06-01T10:00:00.000Z",
            "d": "2024-02-29T00:00:00.000Z",
            "j": "text",
        },
        "d": {
            "num": None,
            "dbl": None,
            "big": 0,
            "ts": "1960-01-01T00:00:00.000Z",
            "tz": "1960-01-01T00:00:00.000Z",
            "d": None,
            "j": None,
        },
        "e": {
            "num": "123456789012345678901234567890",
            "dbl": 1e300,
            "big": 1,
            "ts": None,
            "tz": None,
            "d": None,
            "j": None,
        },
    }
    timed = {m["userId"]: m.get("timestamp") for m in run.sent if m.get("event") == "Timed"}
    assert timed == {
        "a": "2024-03-10T07:30:00.000Z",
        "b": "2024-11-03T05:30:00.000Z",
        "c": "2024-06-01T10:00:00.000Z",
        "d": "1960-01-01T00:00:00.000Z",  # sent, with a warning: Segment may not ingest pre-1970 events
        "e": None,
    }
    # NaN/Infinity: num c, d; dbl b, c, d; the lone surrogate; the pre-1970 event timestamp
    assert run.summary["warnings"] == 7
    assert run.summary["messages"] == {"delivered": 10, "rejected": 0, "failed": 0}
    FIGURES.input("postgres value", 5 * 7)


# ----------------------------------------------------------------------------------------------------------
# Unique identifiers
# ----------------------------------------------------------------------------------------------------------
def test_null_and_colliding_keys_in_sqlite(rel_harness: DagHarness):
    """Keys compare as text: 1, '1' and 1.0 are one record (the first row wins, the others are rejected
    naming the key); '00123' and 123 are two; case variants are distinct; a NULL key is rejected. A
    duplicate is found across fetch chunks too."""
    h = rel_harness
    wh = h.warehouse
    wh.execute("CREATE TABLE keyed (pos INTEGER, id, v TEXT)")
    rows = [
        (1, 1, "int one"),
        (2, "1", "text one"),
        (3, 1.0, "float one"),
        (4, "00123", "padded"),
        (5, 123, "number"),
        (6, "ABC", "upper"),
        (7, "abc", "lower"),
        (8, "Abc", "mixed"),
        (9, None, "no key"),
        (10, "late", "first late"),
        (11, "x1", "filler"),
        (12, "x2", "filler"),
        (13, "x3", "filler"),
        (14, "late", "second late"),  # in another fetch chunk than row 10
        (15, "nul\x00key", "NUL inside the key"),
    ]
    wh.execute("INSERT INTO keyed VALUES (%s, %s, %s)", rows)
    h.operator.update(
        sql="SELECT id, v FROM keyed ORDER BY pos",
        mappings=[values_mapping()],
        fetch_size=3,
        max_rejected_fraction=1.0,
    )
    run = h.run()
    FIGURES.input("unique identifier", len(rows))
    assert run.state == "success"
    sent = {user: m["traits"]["v"] for user, m in identify_of(run.sent).items()}
    assert sent == {
        "1": "int one",
        "00123": "padded",
        "123": "number",
        "ABC": "upper",
        "abc": "lower",
        "Abc": "mixed",
        "late": "first late",
        "x1": "filler",
        "x2": "filler",
        "x3": "filler",
        "nul\x00key": "NUL inside the key",
    }
    assert run.summary["records"] == {"added": 11, "updated": 0, "deleted": 0, "unchanged": 0, "rejected": 4}
    report = read_ndjson(run.summary["report_path"])
    rejected = sorted(((r["primary_key"] or ""), r["reason"]) for r in report)
    assert [key for key, _ in rejected] == ["", "1", "1", "late"]
    for key, reason in rejected:
        if not key:
            assert "the unique identifier 'id' is NULL" in reason
        else:
            assert "duplicate unique identifier" in reason and repr(key) in reason

    # Next run: nothing changed; the rejected rows are rejected again (found every run), nothing is sent.
    again = h.run()
    assert again.sent == []
    assert again.summary["records"]["rejected"] == 4 and again.summary["records"]["unchanged"] == 11


def test_keys_in_postgres_through_a_server_side_cursor(
    rel_postgres, rel_emulator, tmp_path, monkeypatch, airflow_db
):
    wh = rel_postgres
    h = DagHarness(wh, rel_emulator, tmp_path / "state", monkeypatch, name="pg_keys")
    t = wh.t("keyed")
    wh.execute(f"CREATE TABLE {t} (pos int, id text, v text)")
    rows = [
        (1, "A", "upper"),
        (2, "a", "lower"),
        (3, None, "no key"),
        (4, "b", "first"),
        (5, "c", "c"),
        (6, "d", "d"),
        (7, "b", "second"),
    ]
    wh.execute(f"INSERT INTO {t} VALUES (%s, %s, %s)", rows)
    h.operator.update(
        sql=f"SELECT id, v FROM {t} ORDER BY pos",
        mappings=[values_mapping()],
        fetch_size=2,
        max_rejected_fraction=1.0,
    )
    run = h.run()
    FIGURES.input("unique identifier", len(rows))
    assert run.state == "success"
    assert {u: m["traits"]["v"] for u, m in identify_of(run.sent).items()} == {
        "A": "upper",
        "a": "lower",
        "b": "first",
        "c": "c",
        "d": "d",
    }
    report = read_ndjson(run.summary["report_path"])
    assert sorted((r["primary_key"] or "") for r in report) == ["", "b"]


# ----------------------------------------------------------------------------------------------------------
# Sizes
# ----------------------------------------------------------------------------------------------------------
def test_records_over_32_kb_are_rejected_alone(rel_harness: DagHarness):
    """Segment's limit is 32,768 bytes of JSON per event, counted in UTF-8 bytes: a record over it is
    rejected with the reason and the field; its neighbours in the same batch are delivered."""
    h = rel_harness
    wh = h.warehouse
    cases = {
        "ascii_40k": "x" * 40_000,
        "two_byte_34k": "é" * 17_000,  # 17,000 characters but 34,000 bytes
        "four_byte_32.8k": "😀" * 8_200,  # 32,800 bytes
        "two_byte_30k": "é" * 15_000,  # 30,000 bytes: fits
        "small_1": "ok",
        "small_2": "ok",
    }
    wh.execute("CREATE TABLE big (id TEXT, v TEXT)")
    wh.execute("INSERT INTO big VALUES (%s, %s)", list(cases.items()))
    h.operator.update(
        sql="SELECT id, v FROM big ORDER BY id", mappings=[values_mapping()], max_rejected_fraction=1.0
    )
    run = h.run()
    words = ("over Segment's limit of 32,768 bytes", "traits")
    expected = {
        case: Rejected("traits", *words) if len(value.encode()) > 32_000 else value
        for case, value in cases.items()
    }
    check_outcomes(run, expected)
    assert len(h.emulator.requests) == 1  # one batch: the rejected ones were never put in it
    sizes = sorted(len(json.dumps(m, ensure_ascii=False).encode()) for m in run.sent)
    assert sizes[-1] < 32_768


def test_2501_small_records_go_in_two_requests(rel_harness: DagHarness):
    h = rel_harness
    create_customers(h.warehouse, range(2501))
    bare = {"name": "bare", "action": "send_identify", "fields": {"user_id": {"column": "id"}}}  # ~130 bytes
    h.operator.update(mappings=[bare], batch_size=2500, max_requests_in_flight=1)
    run = h.run()
    FIGURES.input("2,501 records")
    assert run.state == "success"
    assert [r.events for r in h.emulator.requests] == [2500, 1]
    assert [r.status for r in h.emulator.requests] == [200, 200]
    assert sorted(int(m["userId"]) for m in run.sent) == list(range(2501))
    assert len({m["messageId"] for m in run.sent}) == 2501
    assert run.summary["messages"] == {"delivered": 2501, "rejected": 0, "failed": 0}


# ----------------------------------------------------------------------------------------------------------
# JSON text, empty results
# ----------------------------------------------------------------------------------------------------------
def test_json_text_in_columns(rel_harness: DagHarness):
    h = rel_harness
    wh = h.warehouse
    cases = {
        "object": '{"plan": "pro", "seats": 3}',
        "array": "[1, 2]",
        "broken": '{"plan": ',
        "null_text": "null",
        "empty": "",
        "escaped_nul_and_lone_surrogate": '{"nul": "a\\u0000b", "lone": "\\ud800c"}',
    }
    wh.execute("CREATE TABLE docs (id TEXT, j TEXT)")
    wh.execute("INSERT INTO docs VALUES (%s, %s)", list(cases.items()))
    parsed = {
        "name": "parsed",
        "action": "send_identify",
        "fields": {"user_id": {"column": "id"}, "traits": {"column": "j", "parse_json": True}},
    }
    as_text = {
        "name": "as_text",
        "action": "send_track",
        "fields": {"user_id": {"column": "id"}, "event_name": "Doc", "properties": {"doc": {"column": "j"}}},
    }
    h.operator.update(sql="SELECT id, j FROM docs", mappings=[parsed, as_text], max_rejected_fraction=1.0)
    run = h.run()
    FIGURES.input("json text", len(cases) * 2)
    assert run.state == "success"
    identifies = {u: m["traits"] for u, m in identify_of(run.sent).items()}
    assert identifies == {
        "object": {"plan": "pro", "seats": 3},
        "null_text": {},
        "empty": {},
        # parsed JSON may hold what no database text can: NUL is kept, a lone surrogate becomes U+FFFD
        "escaped_nul_and_lone_surrogate": {"nul": "a\x00b", "lone": "\ufffdc"},
    }
    assert run.summary["warnings"] == 1
    tracks = {m["userId"]: m["properties"]["doc"] for m in run.sent if m["type"] == "track"}
    assert tracks == cases  # without parse_json, JSON text is sent as the text it is
    lines = read_ndjson(run.summary["report_path"])
    report = {r["primary_key"]: r for r in lines if r["outcome"] == "rejected"}
    assert set(report) == {"array", "broken"}
    warned = [r for r in lines if r["outcome"] == "warning"]  # each warning is in the report, named
    assert [(r["primary_key"], r["mapping"]) for r in warned] == [
        ("escaped_nul_and_lone_surrogate", "parsed")
    ]
    assert report["array"]["field"] == "traits" and report["array"]["mapping"] == "parsed"
    assert "does not hold valid JSON text" in report["broken"]["reason"]


def test_empty_result(rel_harness: DagHarness):
    """Zero rows is a normal run; after records were synced, an empty result deletes them all (diff)."""
    h = rel_harness
    create_customers(h.warehouse, [])
    run = h.run()
    FIGURES.input("empty result")
    assert run.state == "success"
    assert run.summary["rows_read"] == 0 and run.sent == [] and h.emulator.requests == []
    assert run.summary["messages"] == {"delivered": 0, "rejected": 0, "failed": 0}
    assert h.head()["generation"] == 1 and h.head()["records"] == 0

    from reliability_support import insert_customers

    insert_customers(h.warehouse, [1, 2, 3])
    assert len(h.run().sent) == 6
    h.warehouse.execute("DELETE FROM customers")
    run = h.run(max_deleted_fraction=None)  # past the delete guard, which holds this by default
    assert run.summary["records"]["deleted"] == 3
    assert sorted(m["userId"] for m in run.sent if m.get("event") == "Customer Deleted") == ["1", "2", "3"]


# ----------------------------------------------------------------------------------------------------------
# Queries and configuration
# ----------------------------------------------------------------------------------------------------------
GOOD_QUERIES = {
    "trailing_semicolon": "SELECT id, name, email, plan FROM customers;",
    "trailing_line_comment": "SELECT id, name, email, plan FROM customers -- the model",
    "semicolon_then_comment": "SELECT id, name, email, plan FROM customers;\n-- done\n",
    "block_comment": "/* model */ SELECT id, name, email, plan FROM customers /* end */",
}


def test_queries_with_trailing_semicolons_and_comments_work(rel_harness: DagHarness, subtests):
    """Each shape runs as a dry run (nothing sent, state untouched), so the cases share one warehouse."""
    h = rel_harness
    create_customers(h.warehouse, [1, 2, 3])
    for case, sql in GOOD_QUERIES.items():
        with subtests.test(case=case):
            run = h.run(sql=sql, dry_run=True)
            FIGURES.input("query")
            assert run.state == "success"
            assert run.summary["rows_read"] == 3
            assert run.summary["messages"] == {"delivered": 6, "rejected": 0, "failed": 0}


def test_trailing_comment_in_incremental_mode(rel_harness: DagHarness):
    """The incremental filter wraps the model; a trailing ``--`` comment must not swallow it."""
    h = rel_harness
    wh = h.warehouse
    wh.execute("CREATE TABLE events (id INTEGER, ts TEXT)")
    wh.execute("INSERT INTO events VALUES (%s, %s)", [(1, "2024-01-01"), (2, "2024-01-02")])
    mapping = {
        "name": "ev",
        "action": "send_track",
        "fields": {"user_id": {"column": "id"}, "event_name": "E"},
    }
    h.operator.update(
        sql="SELECT id, ts FROM events -- all events",
        mappings=[mapping],
        sync_mode="incremental",
        cursor_column="ts",
    )
    FIGURES.input("query")
    assert len(h.run().sent) == 2
    wh.execute("INSERT INTO events VALUES (3, '2024-01-03')")
    run = h.run()
    assert run.state == "success"
    assert [m["userId"] for m in run.sent] == ["3"]


def test_cursor_values_of_mixed_types_are_rejected_per_record(rel_harness: DagHarness):
    """A cursor column holding text and numbers (SQLite allows it) cannot be ordered: the odd rows are
    rejected with the column named, the rest is delivered, and the run does not crash."""
    h = rel_harness
    wh = h.warehouse
    wh.execute("CREATE TABLE events (id INTEGER, ts)")
    wh.execute(
        "INSERT INTO events VALUES (%s, %s)",
        [(1, "2024-01-01T00:00:00Z"), (2, None), (3, "2024-01-02T00:00:00Z"), (4, 5)],
    )
    mapping = {
        "name": "ev",
        "action": "send_track",
        "fields": {"user_id": {"column": "id"}, "event_name": "E"},
    }
    h.operator.update(
        sql="SELECT id, ts FROM events",
        mappings=[mapping],
        sync_mode="incremental",
        cursor_column="ts",
        max_rejected_fraction=0.5,  # 2 of 4 rejected records: over the default 10% (issue 19)
    )
    FIGURES.input("bad value")
    run = h.run()
    assert run.state == "success"
    assert sorted(m["userId"] for m in run.sent) == ["1", "3"]
    assert run.summary["records"]["rejected"] == 2
    reasons = {s["primary_key"]: s["reason"] for s in run.summary["rejected_samples"]}
    assert reasons["2"] == "cursor column 'ts': NULL cursor value"
    assert "cursor column 'ts': 5 is a number but the column's other values are text" in reasons["4"]


CONFIG_ERRORS = {
    # case: (operator settings, segment connection changes, words the error must contain)
    "dml_delete": ({"sql": "DELETE FROM customers"}, {}, ["DELETE statement", "must be a query"]),
    "dml_update": ({"sql": "UPDATE customers SET plan = 'x'"}, {}, ["UPDATE statement"]),
    "dml_insert_returning": (
        {"sql": "INSERT INTO customers VALUES (9, 'n', 'e', 'p') RETURNING *"},
        {},
        ["INSERT statement"],
    ),
    "two_statements": (
        {"sql": "SELECT id, name, email, plan FROM customers; SELECT 1"},
        {},
        ["2 statements", "single SELECT"],
    ),
    "duplicate_column_names": (
        {"sql": "SELECT id, name, email, plan, name FROM customers"},
        {},
        ["duplicate column names: name"],
    ),
    "mapped_column_missing": (
        {"sql": "SELECT id, name, email FROM customers"},
        {},
        ["plan"],
    ),
    "primary_key_missing": ({"sql": "SELECT name, email, plan FROM customers"}, {}, ["primary_key 'id'"]),
    "invalid_region": (
        {},
        {"host": None, "extra": {"region": "mars"}},
        ["Unknown Segment endpoint region 'mars'"],
    ),
    "empty_write_key": ({}, {"password": ""}, ["no write key"]),
}


def test_configuration_errors_fail_clearly_without_retry(rel_harness: DagHarness, capfd, subtests):
    """Each configuration error fails the task at once (``AirflowFailException``: no retry although the task
    has retries), sends nothing, leaves state as the last good run committed it and says what is wrong."""
    h = rel_harness
    create_customers(h.warehouse, [1, 2, 3])
    assert h.run().state == "success"
    head = h.head()
    good_connection = dict(h.segment_connection)
    h.retries = 2
    for case, (settings, connection, words) in CONFIG_ERRORS.items():
        with subtests.test(case=case):
            h.segment_connection = {
                k: v for k, v in {**good_connection, **connection}.items() if v is not None
            }
            capfd.readouterr()
            run = h.run(**settings)
            output = capfd.readouterr().out
            FIGURES.input("configuration")
            assert run.state == "failed"
            assert run.try_number == 1, "a configuration error must not be retried"
            assert run.sent == [] and run.summary is None
            assert h.head() == head  # state untouched
            assert "AirflowFailException" in output
            for word in words:
                assert word in output, f"{word!r} not in the task's error"
            assert len(h.warehouse.query("SELECT * FROM customers")) == 3  # DML never ran
    h.segment_connection = good_connection
    h.retries = 0
    assert h.run().sent == []  # and the next good run continues from the committed state


@pytest.mark.parametrize(
    ("sql", "words"),
    [("SELECT id FROM no_such_table", "no such table"), ("SELECT FROM WHERE", "syntax error")],
    ids=["unknown_table", "syntax_error"],
)
def test_sql_the_database_refuses_fails_before_sending(rel_harness: DagHarness, capfd, sql: str, words: str):
    """SQLite reports these as OperationalError, which the operator treats as transient (so Airflow may
    retry); the run must still fail before sending anything, keep state, and say why."""
    h = rel_harness
    create_customers(h.warehouse, [1, 2, 3])
    h.operator.update(sql=sql)
    run = h.run()
    FIGURES.input("query")
    assert run.state == "failed"
    assert run.sent == [] and h.head() is None
    assert words in capfd.readouterr().out


def test_data_modifying_cte_in_postgres_is_refused(
    rel_postgres, rel_emulator, tmp_path, monkeypatch, airflow_db, capfd
):
    wh = rel_postgres
    h = DagHarness(wh, rel_emulator, tmp_path / "state", monkeypatch, name="pg_cte")
    create_customers(wh, [1, 2, 3])
    t = wh.t("customers")
    h.operator.update(
        sql=f"WITH gone AS (DELETE FROM {t} RETURNING *) SELECT id, name, email, plan FROM gone"
    )
    h.retries = 1
    run = h.run()
    FIGURES.input("configuration")
    assert run.sent == []
    assert len(wh.query(f"SELECT * FROM {t}")) == 3  # the DELETE never took effect
    assert run.state == "failed" and run.try_number == 1
    assert "AirflowFailException" in capfd.readouterr().out
