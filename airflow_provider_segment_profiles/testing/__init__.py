"""
Test helpers for code that sends data to Segment.

:class:`SegmentEmulator` is a local, faithful stand-in for Segment's HTTP Tracking API; see
:mod:`airflow_provider_segment_profiles.testing.emulator` for the behaviour it reproduces. The pytest
fixture ``segment_emulator`` (:mod:`airflow_provider_segment_profiles.testing.pytest_plugin`) is
registered automatically when this package is installed, and ``python -m
airflow_provider_segment_profiles.testing`` serves one from the command line.
"""

from __future__ import annotations

from airflow_provider_segment_profiles.testing.emulator import (
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_EVENT_BYTES,
    MESSAGE_TYPES,
    DroppedMessage,
    DropReason,
    RecordedRequest,
    SegmentEmulator,
)
from airflow_provider_segment_profiles.testing.profile_api import ProfileSpace

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_EVENTS",
    "MAX_EVENT_BYTES",
    "MESSAGE_TYPES",
    "DropReason",
    "DroppedMessage",
    "ProfileSpace",
    "RecordedRequest",
    "SegmentEmulator",
]
