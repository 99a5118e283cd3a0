"""
The provider's errors, in one taxonomy.

Every error a sync run raises on purpose is a :class:`SegmentProfilesError`, and is one of two kinds:

* :class:`PermanentSyncError`: trying again cannot help until someone changes the configuration, the
  model or the state (a bad mapping, a model query the database refuses, state that does not fit the
  sync any more). The operator turns it into Airflow's ``AirflowFailException``: the task fails without
  using its retries.
* :class:`TransientSyncError`: the same try might succeed a moment later (the state store was briefly
  unreachable, the task was killed). The operator turns it into ``AirflowException``, which Airflow
  retries as the task's ``retries`` allow.

The mapping from these to Airflow's exceptions is done in one place,
:meth:`SegmentProfilesSyncOperator.execute <airflow_provider_segment_profiles.operators.segment_profiles.SegmentProfilesSyncOperator.execute>`
(Airflow's exceptions: https://airflow.apache.org/docs/apache-airflow/stable/core-concepts/tasks.html).
Per-record problems (a value that does not fit a field) are not exceptions of a run: they end as
``rejected`` outcomes in the summary and the report (``docs/operator.md``).
"""

from __future__ import annotations


class SegmentProfilesError(Exception):
    """Base class of every error this provider raises on purpose."""


class PermanentSyncError(SegmentProfilesError):
    """An error a retry cannot fix; the task fails without retry. The message says what to change."""


class TransientSyncError(SegmentProfilesError):
    """An error a later try may not meet; Airflow retries the task."""


class ConfigurationError(PermanentSyncError, ValueError):
    """The operator's settings, a connection or the mappings are invalid."""


class StateError(PermanentSyncError, RuntimeError):
    """
    State is missing, unreadable, committed by another run, or does not fit this sync any more (another
    sync mode, unique identifier, cursor column or destination); the message's first line says how to
    recover.
    """


class ModelQueryError(PermanentSyncError, ValueError):
    """The model's SQL cannot be used: not one query, no result set, or a column problem."""


class ModelReadError(TransientSyncError, RuntimeError):
    """Running or reading the model failed in a way a later try may not meet (a lost connection, a
    serialization failure, an administrator shutdown: :mod:`~.pipeline.db_errors`)."""


class WatermarkError(PermanentSyncError, ValueError):
    """A cursor value that cannot serve as a watermark (NULL, or a type with no order)."""


class JournalError(TransientSyncError, RuntimeError):
    """The send journal could not be written; nothing of the chunk was sent (a retry may succeed)."""


class AccountingMismatch(TransientSyncError, RuntimeError):
    """Totals do not reconcile: a record or message was lost or counted twice; nothing was committed."""


class HookClosedError(SegmentProfilesError, RuntimeError):
    """A hook was asked to send after :meth:`close` (the task is being killed: ``on_kill`` closes it)."""


class SyncCancelled(TransientSyncError):
    """The task was killed (``on_kill``) while syncing; no state was committed."""


class VerificationFailed(PermanentSyncError):
    """
    ``verify_sample`` read back delivered records through the Profile API and found none of them kept: the
    data reached Segment's tracking API but not the Profile Space (``docs/operator.md``, "Verifying what
    Profiles hold"). State was committed; the message names the likely causes.
    """


class ModelReaderClosed(SyncCancelled, RuntimeError):
    """Rows of the model were asked for after its reader was closed (the task is being killed)."""
