"""The frozen configuration of one sync run, and its checks."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from airflow_provider_segment_profiles.delivery.limits import DEFAULT_MAX_IN_FLIGHT, MAX_BATCH_MESSAGES
from airflow_provider_segment_profiles.exceptions import ConfigurationError
from airflow_provider_segment_profiles.pipeline.held_deletes import ApprovedDeletes
from airflow_provider_segment_profiles.pipeline.modes import SYNC_MODES, SyncMode, get_mode

#: Every default of the operator's parameters, in one place: the operator's signature, :class:`SyncConfig`
#: and the stages all use these (the stages take the config's values and default nothing themselves).
DEFAULT_SYNC_MODE = "diff"
DEFAULT_SEGMENT_CONN_ID = "segment_profiles_default"
#: Messages per ``/v1/batch`` request (Segment allows 2,500; 500 keeps a request near 100 KB for typical
#: Identify calls, well under the 500 KB limit).
DEFAULT_BATCH_SIZE = 500
#: Rows per ``fetchmany`` from the warehouse cursor.
DEFAULT_FETCH_SIZE = 5000
DEFAULT_PROGRESS_INTERVAL_S = 10.0
DEFAULT_CHANGE_DETECTION = "worker"
DEFAULT_STATE_SCHEMA = "segment_profiles"
DEFAULT_MAX_REJECTED_FRACTION = 0.1
DEFAULT_MAX_FAILED_FRACTION = 0.0
#: Segment Engage ingests at most 1,000 events per second per Profile Space
#: (https://segment.com/docs/engage/product-limits/); the default leaves room for other sources.
DEFAULT_MAX_EVENTS_PER_SECOND = 800.0
#: The mass-delete guard: a run that would delete more than this fraction of the committed records sends no
#: delete (an emptied model, a truncated table mid-rebuild, a join that lost rows).
DEFAULT_MAX_DELETED_FRACTION = 0.5


@dataclass(frozen=True)
class SyncConfig:
    """
    Everything a sync run needs to know about what to do, as the operator's rendered parameters give it.
    The parameters are documented on
    :class:`~airflow_provider_segment_profiles.operators.segment_profiles.SegmentProfilesSyncOperator`.

    :param mappings: the mapping dicts, rendered (compiled by the run).
    :param default_space: conn id of the ``segment_profiles`` connection for mappings without
        ``profile_space``.
    """

    sql: str
    primary_key: str
    mappings: Any
    parameters: Sequence[Any] | Mapping[str, Any] | None = None
    default_space: str = DEFAULT_SEGMENT_CONN_ID
    sync_mode: str = DEFAULT_SYNC_MODE
    cursor_column: str | None = None
    full_refresh: bool = False
    dry_run: bool = False
    report_path: str | None = None
    dry_run_path: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    fetch_size: int = DEFAULT_FETCH_SIZE
    max_requests_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_events_per_second: float | None = DEFAULT_MAX_EVENTS_PER_SECOND
    max_deleted_fraction: float | None = DEFAULT_MAX_DELETED_FRACTION
    progress_interval_s: float = DEFAULT_PROGRESS_INTERVAL_S
    change_detection: str = DEFAULT_CHANGE_DETECTION
    state_schema: str = DEFAULT_STATE_SCHEMA
    #: Deletes a human approved (``on_mass_delete="ask"``): the delete guard lets exactly these through.
    approved_deletes: ApprovedDeletes | None = None

    @property
    def mode(self) -> SyncMode:
        """The :class:`~.modes.SyncMode` strategy of ``sync_mode``."""
        return get_mode(self.sync_mode)

    def fingerprint(self, mapping_fingerprints: Sequence[str]) -> str:
        """16 hex digits identifying the mode, unique identifier, cursor and mappings of the sync."""
        material = json.dumps(
            [self.sync_mode, self.primary_key, self.cursor_column, list(mapping_fingerprints)]
        )
        return hashlib.sha256(material.encode()).hexdigest()[:16]


def check_settings(
    *,
    task_id: str,
    sync_mode: str,
    cursor_column: str | None,
    batch_size: int,
    fetch_size: int,
    max_requests_in_flight: int,
    max_events_per_second: float | None,
    fractions: Mapping[str, float | None],
    change_detection: str,
    state_schema: str,
) -> None:
    """
    Check the settings that do not depend on the data, all at once.

    :param fractions: threshold name -> value; each must be between 0 and 1 (``None`` disables one).
    :param change_detection: ``worker`` or ``warehouse`` (diff mode only, docs/change-detection.md).
    :param state_schema: where the warehouse engine keeps its tables (a plain SQL identifier).
    :raises ConfigurationError: listing every problem, naming the task.
    """
    problems = []
    if sync_mode not in SYNC_MODES:
        problems.append(f"sync_mode {sync_mode!r} is not one of {', '.join(SYNC_MODES)}")
    else:
        problems.extend(get_mode(sync_mode).check_settings(cursor_column))
    problems.extend(_engine_problems(sync_mode, change_detection, state_schema))
    if not 1 <= batch_size <= MAX_BATCH_MESSAGES:
        problems.append("batch_size must be between 1 and 2,500 (Segment's batch limit)")
    if fetch_size < 1 or max_requests_in_flight < 1:
        problems.append("fetch_size and max_requests_in_flight must be >= 1")
    if max_events_per_second is not None and max_events_per_second <= 0:
        problems.append("max_events_per_second must be > 0 or None")
    for name, value in fractions.items():
        if value is not None and not 0.0 <= value <= 1.0:
            problems.append(f"{name} must be between 0 and 1")
    if problems:
        raise ConfigurationError(f"Invalid SegmentProfilesSyncOperator {task_id!r}: " + "; ".join(problems))


def _engine_problems(sync_mode: str, change_detection: str, state_schema: str) -> list[str]:
    from airflow_provider_segment_profiles.pipeline.detection.factory import ENGINES
    from airflow_provider_segment_profiles.pipeline.detection.warehouse.dialects import check_state_schema

    if change_detection not in ENGINES:
        return [f"change_detection {change_detection!r} is not one of {', '.join(ENGINES)}"]
    if change_detection != "warehouse":
        return []
    problems = []
    if sync_mode != "diff":
        problems.append(
            f"change_detection 'warehouse' only fits sync_mode 'diff', not {sync_mode!r} (it compares the "
            "whole model with the committed state inside the warehouse)"
        )
    schema_problem = check_state_schema(state_schema)
    if schema_problem:
        problems.append(schema_problem)
    return problems


# -- rendered values --------------------------------------------------------------------------------------
_TRUE, _FALSE = frozenset({"true", "1", "yes", "on"}), frozenset({"false", "0", "no", "off", ""})


def holds_template(value: Any) -> bool:
    """Whether ``value`` is a Jinja template not rendered yet (checked again once it is)."""
    return isinstance(value, str) and "{{" in value


def as_fraction(name: str, value: Any) -> float | None:
    """
    A fraction parameter as given or as a template rendered it (``None``, ``"None"`` or ``""`` disable it).

    :raises ConfigurationError: for a value that is not a number between 0 and 1.
    """
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("", "none", "null"):
            return None
        try:
            value = float(text)
        except ValueError:
            raise ConfigurationError(
                f"{name} must be a number between 0 and 1 or None, not {text!r}"
            ) from None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ConfigurationError(f"{name} must be a number between 0 and 1 or None, not {value!r}")
    return float(value)


def as_bool(name: str, value: Any) -> bool:
    """
    A boolean parameter as given or as a template rendered it.

    :raises ConfigurationError: for a value that is not a boolean or one of true/false, 1/0, yes/no, on/off.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ConfigurationError(
        f"{name} must be a boolean (or text reading true/false, 1/0, yes/no, on/off), not {value!r}"
    )
