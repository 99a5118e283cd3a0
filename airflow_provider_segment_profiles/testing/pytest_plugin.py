"""
pytest plugin providing the ``segment_emulator`` fixture.

The package registers this module as a ``pytest11`` entry point, so any test suite with
``airflow-provider-segment-profiles`` installed can request the fixture without configuration. It
yields a started :class:`~airflow_provider_segment_profiles.testing.SegmentEmulator` that accepts the
write key :data:`TEST_WRITE_KEY` (``"test-write-key"``) and stops it after the test.

To run your own DAG or task against it, point the Segment connection's Host at the emulator::

    import json


    def test_customers_sync(segment_emulator, monkeypatch):
        monkeypatch.setenv(
            "AIRFLOW_CONN_SEGMENT_PROFILES_DEFAULT",
            json.dumps(
                {"conn_type": "segment_profiles", "password": "test-write-key", "host": segment_emulator.url}
            ),
        )
        # ... run the task, e.g. dag.test() or operator.execute(context) ...
        assert [m["userId"] for m in segment_emulator.messages] == ["c1", "c2"]

``segment_emulator.airflow_connection()`` returns that connection dict. Fault injection works the same
way, e.g. ``segment_emulator.fail_next(1, 429, retry_after=0.1)`` before the run.

This module imports only the standard library, pytest and the emulator (no Airflow), because pytest
loads it in every session of an environment where the package is installed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_provider_segment_profiles.testing.emulator import SegmentEmulator

#: Write key accepted by the ``segment_emulator`` fixture.
TEST_WRITE_KEY = "test-write-key"


@pytest.fixture
def segment_emulator() -> Iterator[SegmentEmulator]:
    """A running :class:`SegmentEmulator` accepting :data:`TEST_WRITE_KEY`, stopped after the test."""
    with SegmentEmulator(write_key=TEST_WRITE_KEY) as emulator:
        yield emulator
