"""The one place a provider error becomes Airflow's: permanent ones are not retried."""

from __future__ import annotations

from airflow_provider_segment_profiles.exceptions import PermanentSyncError, SegmentProfilesError

try:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
except ImportError:  # Airflow 3.1
    from airflow.exceptions import AirflowException, AirflowFailException  # type: ignore[no-redef]

__all__ = ["AirflowException", "AirflowFailException", "airflow_error"]


def airflow_error(err: SegmentProfilesError) -> Exception:
    """
    ``AirflowFailException`` (no retry) for a :class:`~..exceptions.PermanentSyncError` (configuration,
    model query, state), ``AirflowException`` (retried) for any other provider error.
    """
    if isinstance(err, PermanentSyncError):
        return AirflowFailException(str(err))
    return AirflowException(str(err))
