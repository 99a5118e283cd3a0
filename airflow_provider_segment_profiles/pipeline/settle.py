"""
Stage 5, settling: what delivery reports about each message goes to the run's outcomes (the accounting and
the sync log, :mod:`.outcomes`), into the change detector's state marks (an undelivered record is sent
again next run) and into the incremental watermark (held back to the smallest cursor value not
delivered), and progress lines go to the task log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_segment_profiles.pipeline.records import ChangeKind, Outcome, Rejection

if TYPE_CHECKING:
    from airflow_provider_segment_profiles.delivery.dispatcher import Completion
    from airflow_provider_segment_profiles.pipeline.detection.base import ChangeDetector
    from airflow_provider_segment_profiles.pipeline.outcomes import OutcomeSink

_DELIVERED, _FAILED, _DELETED = Outcome.DELIVERED, Outcome.FAILED, ChangeKind.DELETED


class Progress:
    """
    Progress lines in the task log, at most every ``interval_s`` seconds.

    :param log: the task's logger.
    :param interval_s: seconds between lines.
    :param started: ``time.monotonic()`` at the start of the run.
    """

    def __init__(self, log: Any, interval_s: float, started: float) -> None:
        self.log = log
        self.interval_s = interval_s
        self.started = started
        self.last = started
        self.delivered = 0

    def maybe_log(self, phase: str, rows_read: int, force: bool = False) -> None:
        """Log one line when ``interval_s`` has passed since the last (always with ``force``)."""
        now = time.monotonic()
        if not force and now - self.last < self.interval_s:
            return
        self.last = now
        elapsed = now - self.started
        if elapsed < 1.0:  # a rate over a fraction of a second says nothing
            self.log.info(
                "phase=%s rows_read=%s messages_delivered=%s", phase, f"{rows_read:,}", f"{self.delivered:,}"
            )
            return
        self.log.info(
            "phase=%s rows_read=%s messages_delivered=%s rate=%s messages/s elapsed=%.0f s",
            phase,
            f"{rows_read:,}",
            f"{self.delivered:,}",
            f"{self.delivered / elapsed:,.0f}",
            elapsed,
        )


class Settler:
    """
    Settles message completions; call it with each list the dispatcher returns.

    :param outcomes: receives each list of completions.
    :param detector: receives the unique identifiers of records whose messages failed.
    :param progress: counts delivered messages.
    :param check_cancelled: raises when the run was cancelled; called before each settlement.
    """

    def __init__(
        self,
        outcomes: OutcomeSink,
        detector: ChangeDetector,
        progress: Progress,
        check_cancelled: Callable[[], None],
    ) -> None:
        self.outcomes = outcomes
        self.detector = detector
        self.progress = progress
        self.check_cancelled = check_cancelled
        #: Cursor values of records with an undelivered message (incremental mode holds the watermark).
        self.failed_cursor_values: list[Any] = []
        #: Called with each list of completions after it is settled (``verify_sample``'s
        #: :meth:`~.verify.VerificationSample.settled`), or ``None``.
        self.observer: Callable[[Sequence[Completion]], None] | None = None

    def __call__(self, completions: Sequence[Completion]) -> None:
        """Settle ``completions`` (each one's ``ref`` is a :class:`~.records.MessageRef`)."""
        self.check_cancelled()
        self.outcomes.settled(completions)
        failed: list[str] = []
        failed_deletes: list[str] = []
        rejected: list[Rejection] = []
        delivered = 0
        for done in completions:
            outcome = done.outcome
            if outcome == _DELIVERED:
                delivered += 1
                continue
            ref = done.ref
            if outcome == _FAILED:
                (failed_deletes if ref.kind == _DELETED else failed).append(ref.key)
                if ref.cursor_value is not None:
                    self.failed_cursor_values.append(ref.cursor_value)
            elif ref.kind != _DELETED:  # rejected by the hook (too large once encoded)
                rejected.append(Rejection(ref.key, ref.mapping, ref.kind))
        self.progress.delivered += delivered
        if failed:
            self.detector.mark_failed(failed)
        if failed_deletes:
            self.detector.mark_delete_failed(failed_deletes)
        if rejected:
            self.detector.mark_rejected(rejected)
        if self.observer is not None:
            self.observer(completions)
