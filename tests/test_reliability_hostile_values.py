"""Values a warehouse holds that its Python driver cannot turn into a Python object (``docs/mappings.md``,
"Values the driver cannot hold"), through real Airflow runs (``dag.test()``) against the PostgreSQL server
with each driver Airflow's Postgres hook may use, and against a real SQLite file. Every such value ends as a
per-record outcome (its text sent with a warning naming the field, or the record rejected naming it) while
the other rows are delivered; none fails the run.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.register_assert_rewrite("reliability_support")
from reliability_support import FIGURES, DagHarness, assert_segment_matches, read_ndjson  # noqa: E402

from airflow_provider_segment_profiles.pipeline import driver_values  # noqa: E402

pytest_plugins = ["reliability_support"]
pytestmark = pytest.mark.airflow_db

#: Fixed session settings, so the server's text of each value does not depend on the server's defaults.
SESSION = {"options": "-c DateStyle=ISO,MDY -c TimeZone=UTC -c IntervalStyle=postgres"}
REJECTED = "<rejected>"

#: Column -> (SQL type, an ordinary value, what Segment receives for it).
COLUMNS: dict[str, tuple[str, str, Any]] = {
    "d": ("date", "'2024-02-29'", "2024-02-29T00:00:00.000Z"),
    "ts": ("timestamp", "'2024-03-01 10:00'", "2024-03-01T10:00:00.000Z"),
    "tz": ("timestamptz", "'2024-03-01 10:00+02'", "2024-03-01T08:00:00.000Z"),
    "t": ("time", "'09:30'", "09:30:00Z"),
    "tt": ("timetz", "'09:30+02'", "09:30:00+02:00"),
    "iv": ("interval", "'1 day 02:00:00'", 93_600),
    "j": ("jsonb", '\'{"plan": "pro"}\'', {"plan": "pro"}),
    "ds": ("date[]", "'{2024-01-02}'", ["2024-01-02T00:00:00.000Z"]),
    "n": ("numeric", "12.5", 12.5),
}
#: Case -> (column, SQL value, the trait Segment receives or REJECTED). Each case row holds its value in
#: its column and NULL in the others. Sent text comes with a warning naming the field.
HOSTILE: dict[str, tuple[str, str, Any]] = {
    "date_infinity": ("d", "'infinity'", "infinity"),
    "date_minus_infinity": ("d", "'-infinity'", "-infinity"),
    "date_bc": ("d", "'0044-03-15 BC'", "0044-03-15 BC"),
    "date_after_9999": ("d", "'10000-01-01'", "10000-01-01"),
    "timestamp_infinity": ("ts", "'infinity'", "infinity"),
    "timestamp_bc": ("ts", "'0044-03-15 12:00 BC'", "0044-03-15 12:00:00 BC"),
    "timestamp_after_9999": ("ts", "'10000-01-01 00:00'", "10000-01-01 00:00:00"),
    "timestamptz_minus_infinity": ("tz", "'-infinity'", "-infinity"),
    # 9999-12-31 in New York is already the year 10000 in UTC, the session's time zone
    "timestamptz_after_9999_in_utc": ("tz", "'9999-12-31 23:00-05'", "10000-01-01 04:00:00+00"),
    "time_end_of_day": ("t", "'24:00:00'", "24:00:00"),
    "timetz_end_of_day": ("tt", "'24:00:00+00'", "24:00:00+00"),
    "interval_past_timedelta": ("iv", "'178000000 years'", "178000000 years"),
    "jsonb_deeper_than_python_parses": ("j", "(repeat('[', 5000) || repeat(']', 5000))::jsonb", REJECTED),
    "date_array_with_infinity": ("ds", "'{infinity,2024-01-02}'", ["infinity", "2024-01-02T00:00:00.000Z"]),
}
#: Values at the edge that are read as usual: psycopg 2's own parser stops at 2**31 hours, which timedelta
#: holds; numeric NaN is a Decimal (sent as null with a warning, as any NaN).
EDGES: dict[str, tuple[str, str, Any]] = {
    "interval_within_timedelta": ("iv", "make_interval(secs => 9.2e12)", 9_200_000_000_000),
    "numeric_nan": ("n", "'NaN'", None),
}
#: Track mappings whose event timestamp is a column: name -> (event name, column).
TIMED = {"by_d": ("Timed by d", "d"), "by_ts": ("Timed by ts", "ts"), "by_tz": ("Timed by tz", "tz")}
IDENTIFY = {
    "name": "values",
    "action": "send_identify",
    "fields": {"user_id": {"column": "id"}, "traits": {"columns": "*", "exclude": ["id"]}},
}


def mappings() -> list[dict[str, Any]]:
    """The identify with every column as a trait, and one track per timestamp column."""
    tracks = [
        {
            "name": name,
            "action": "send_track",
            "fields": {"user_id": {"column": "id"}, "event_name": event, "timestamp": {"column": column}},
        }
        for name, (event, column) in TIMED.items()
    ]
    return [IDENTIFY, *tracks]


def report_of(run) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``{mapping: {outcome: [report lines]}}`` of one run."""
    found: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for line in read_ndjson(run.summary["report_path"]):
        found.setdefault(line["mapping"], {}).setdefault(line["outcome"], []).append(line)
    return found


@pytest.fixture(params=["psycopg3", "psycopg2"])
def postgres_driver(request, monkeypatch) -> tuple[str, list[str]]:
    """
    Make Airflow's Postgres hook connect with one driver: it uses psycopg 3 when it is installed with
    SQLAlchemy 2, else psycopg 2 (``airflow.providers.postgres.hooks.postgres.USE_PSYCOPG3``). Returns the
    driver and the list of drivers whose safe loaders were installed, to check what the run really used.
    """
    from airflow.providers.postgres.hooks import postgres

    monkeypatch.setattr(postgres, "USE_PSYCOPG3", request.param == "psycopg3")
    installed: list[str] = []
    for attribute in ("_install_psycopg", "_install_psycopg2"):
        real = getattr(driver_values, attribute)

        def spy(conn: Any, real=real) -> None:
            installed.append(type(conn).__module__.split(".")[0])
            real(conn)

        monkeypatch.setattr(driver_values, attribute, spy)
    return request.param, installed


def test_postgres_values_the_driver_cannot_hold_are_per_record_outcomes(
    postgres_driver, rel_postgres, rel_emulator, tmp_path, monkeypatch, airflow_db
):
    """One row per value class next to an ordinary row, read through an identify (every column a trait)
    and one track per date/time column used as the event timestamp."""
    driver, installed = postgres_driver
    wh = rel_postgres
    wh.extra = SESSION
    h = DagHarness(wh, rel_emulator, tmp_path / "state", monkeypatch, name=f"pg_hostile_{driver}")
    t = wh.t("hostile")
    wh.execute(f"CREATE TABLE {t} (id text, {', '.join(f'{c} {sql}' for c, (sql, _, _) in COLUMNS.items())})")
    rows = {"ok": {c: value for c, (_, value, _) in COLUMNS.items()}}
    rows.update({case: {column: value} for case, (column, value, _) in {**HOSTILE, **EDGES}.items()})
    values = ", ".join(
        f"('{case}', {', '.join(row.get(c, 'NULL') for c in COLUMNS)})" for case, row in rows.items()
    )
    wh.execute(f"INSERT INTO {t} (id, {', '.join(COLUMNS)}) VALUES {values}")
    h.operator.update(sql=f"SELECT * FROM {t}", mappings=mappings(), max_rejected_fraction=1.0)

    run = h.run()
    FIGURES.input("hostile postgres value", len(HOSTILE) + len(EDGES))
    assert run.state == "success", "a value the driver cannot hold must not fail the run"
    assert set(installed) == {"psycopg" if driver == "psycopg3" else "psycopg2"}
    report = report_of(run)

    # The identify: every ordinary row as usual, each hostile value as the server's text, with a warning
    # naming the field; the JSON too deep for Python is rejected naming its field.
    expected_traits = {"ok": {c: sent for c, (_, _, sent) in COLUMNS.items()}}
    for case, (column, _, sent) in {**HOSTILE, **EDGES}.items():
        if sent is not REJECTED:
            expected_traits[case] = {c: (sent if c == column else None) for c in COLUMNS}
    assert_segment_matches(run.sent, expected_traits)
    rejected = {line["primary_key"]: line for line in report["values"]["rejected"]}
    assert set(rejected) == {"jsonb_deeper_than_python_parses"}
    deep = rejected["jsonb_deeper_than_python_parses"]
    assert deep["field"] == "traits.j"
    assert (
        "PostgreSQL jsonb" in deep["reason"] and "nested deeper than Python's JSON parser" in deep["reason"]
    )
    warned = {line["primary_key"]: line["reason"] for line in report["values"]["warning"]}
    assert set(warned) == {case for case, (_, _, sent) in HOSTILE.items() if sent is not REJECTED} | {
        "numeric_nan"
    }
    for case, (column, _, sent) in HOSTILE.items():
        if sent is REJECTED:
            continue
        field = f"traits.{column}[0]" if isinstance(sent, list) else f"traits.{column}"
        text = sent[0] if isinstance(sent, list) else sent
        assert warned[case].startswith(f"{field}: PostgreSQL "), warned[case]
        assert f"{text!r}" in warned[case] and warned[case].endswith("sent as the warehouse's text")
    assert run.summary["warnings"] == len(warned)

    # The tracks: a hostile value in the timestamp column rejects the record, naming the field; the
    # record's other mappings and every other record are delivered.
    for name, (event, column) in TIMED.items():
        stamps = {m["userId"]: m.get("timestamp") for m in run.sent if m.get("event") == event}
        bad = {case for case, (col, _, _) in HOSTILE.items() if col == column}
        assert set(stamps) == set(rows) - bad, name
        assert stamps["ok"] == COLUMNS[column][2]
        rejections = {line["primary_key"]: line for line in report[name]["rejected"]}
        assert set(rejections) == bad, name
        for case in bad:
            assert rejections[case]["field"] == "timestamp"
            assert HOSTILE[case][2] in rejections[case]["reason"]
            assert "cannot be sent as a timestamp" in rejections[case]["reason"]
    rejections = 1 + sum(1 for column, _, _ in HOSTILE.values() for _, c in TIMED.values() if c == column)
    assert run.summary["messages"] == {
        "delivered": (1 + len(TIMED)) * len(rows) - rejections,
        "rejected": rejections,
        "failed": 0,
    }

    # The markers' checksums are the same on the next run: nothing changed, so nothing is sent again.
    again = h.run()
    assert again.state == "success"
    assert again.sent == []
    assert_segment_matches(run.sent + again.sent, expected_traits)


def test_postgres_cursor_value_the_driver_cannot_hold_rejects_only_its_record(
    postgres_driver, rel_postgres, rel_emulator, tmp_path, monkeypatch, airflow_db
):
    """Incremental mode: an ``infinity`` cursor value cannot be a watermark; its record is rejected naming
    the cursor column, the others are delivered and the watermark moves past them."""
    driver, installed = postgres_driver
    wh = rel_postgres
    wh.extra = SESSION
    h = DagHarness(wh, rel_emulator, tmp_path / "state", monkeypatch, name=f"pg_hostile_cursor_{driver}")
    t = wh.t("events")
    wh.execute(f"CREATE TABLE {t} (id int, updated_at timestamptz)")
    wh.execute(
        f"INSERT INTO {t} VALUES (1, '2024-03-01 00:00+00'), (2, 'infinity'), (3, '2024-03-02 00:00+00')"
    )
    track = {"name": "ev", "action": "send_track", "fields": {"user_id": {"column": "id"}, "event_name": "E"}}
    h.operator.update(
        sql=f"SELECT id, updated_at FROM {t}",
        mappings=[track],
        sync_mode="incremental",
        cursor_column="updated_at",
        max_rejected_fraction=1.0,
    )
    run = h.run()
    FIGURES.input("hostile postgres value")
    assert run.state == "success"
    assert set(installed) == {"psycopg" if driver == "psycopg3" else "psycopg2"}
    assert sorted(m["userId"] for m in run.sent) == ["1", "3"]
    (rejection,) = run.summary["rejected_samples"]
    assert rejection["primary_key"] == "2" and rejection["field"] == "updated_at"
    assert "cursor column 'updated_at'" in rejection["reason"]

    wh.execute(f"INSERT INTO {t} VALUES (4, '2024-03-03 00:00+00')")
    later = h.run()
    assert later.state == "success"
    assert [m["userId"] for m in later.sent] == ["4"]


#: SQLite has no date type: such values are TEXT (or numbers), which the driver always reads. Case ->
#: (SQL value, the trait Segment receives, words of the timestamp mapping's rejection or the timestamp).
SQLITE_CASES: dict[str, tuple[str, Any, Any]] = {
    "text_infinity": ("'infinity'", "infinity", ("cannot parse 'infinity'",)),
    "text_year_0": ("'0000-01-01'", "0000-01-01", ("cannot parse '0000-01-01'",)),
    "text_bc_as_negative_year": ("'-0044-03-15'", "-0044-03-15", ("cannot parse '-0044-03-15'",)),
    "text_after_9999": ("'10000-01-01 00:00:00'", "10000-01-01 00:00:00", ("cannot parse",)),
    "text_end_of_day": ("'2024-03-01 24:00:00'", "2024-03-01 24:00:00", ("cannot parse",)),
    # beyond 64 bits SQLite itself stores a REAL: the driver reads a float
    "integer_past_64_bits": ("18446744073709551616", 1.8446744073709552e19, ("out of range",)),
    "real_infinity": ("9e999", None, ("is not a timestamp",)),
    "real_nan_is_stored_as_null": ("9e999 - 9e999", None, None),
    "blob": ("X'FF00'", "/wA=", ("cannot be read as a timestamp",)),
    "undecodable_text": ("CAST(X'61FF62' AS TEXT)", "a\ufffdb", ("cannot parse",)),
    "ordinary": ("'2024-03-01T10:00:00Z'", "2024-03-01T10:00:00Z", "2024-03-01T10:00:00.000Z"),
}


def test_sqlite_values_outside_python_ranges_are_per_record_outcomes(rel_harness: DagHarness):
    h = rel_harness
    wh = h.warehouse
    wh.execute("CREATE TABLE vals (id TEXT, v)")
    for case, (value, _, _) in SQLITE_CASES.items():
        wh.execute(f"INSERT INTO vals VALUES ('{case}', {value})")
    identify = {
        "name": "values",
        "action": "send_identify",
        "fields": {"user_id": {"column": "id"}, "traits": {"v": {"column": "v"}}},
    }
    timed = {
        "name": "timed",
        "action": "send_track",
        "fields": {"user_id": {"column": "id"}, "event_name": "Timed", "timestamp": {"column": "v"}},
    }
    h.operator.update(sql="SELECT id, v FROM vals", mappings=[identify, timed], max_rejected_fraction=1.0)
    run = h.run()
    FIGURES.input("hostile sqlite value", len(SQLITE_CASES))
    assert run.state == "success"
    assert_segment_matches(run.sent, {case: {"v": sent} for case, (_, sent, _) in SQLITE_CASES.items()})
    traits = {m["userId"]: m["traits"]["v"] for m in run.sent if m["type"] == "identify"}
    for case, (_, sent, _) in SQLITE_CASES.items():
        assert type(traits[case]) is type(sent), case
    stamps = {m["userId"]: m.get("timestamp") for m in run.sent if m["type"] == "track"}
    report = report_of(run)
    rejected = {line["primary_key"]: line for line in report["timed"]["rejected"]}
    for case, (_, _, outcome) in SQLITE_CASES.items():
        if isinstance(outcome, tuple):
            assert case not in stamps and rejected[case]["field"] == "timestamp", case
            assert all(word in rejected[case]["reason"] for word in outcome), rejected[case]["reason"]
        else:
            assert stamps[case] == outcome, case
    assert set(stamps) | set(rejected) == set(SQLITE_CASES)
