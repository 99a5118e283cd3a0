"""
Counting every record and message of a sync run, the problem report, and the run summary.

:class:`SyncAccounting` is the run's :class:`~.outcomes.OutcomeSink` that counts: the stages report to it
through that protocol (``pipeline/outcomes.py``) and the run reads the totals, the summary and the
reconciliation from it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from airflow_provider_segment_profiles.common.outcomes import Outcome
from airflow_provider_segment_profiles.exceptions import AccountingMismatch

if TYPE_CHECKING:
    from airflow_provider_segment_profiles.common.changes import ChangeKind
    from airflow_provider_segment_profiles.delivery.dispatcher import Completion
    from airflow_provider_segment_profiles.pipeline.outcomes import BuiltOutcome

_DELIVERED, _REJECTED, _FAILED = Outcome.DELIVERED, Outcome.REJECTED, Outcome.FAILED

#: Most rejected or failed examples kept in the summary (the report file has all of them).
MAX_SAMPLES = 20
#: Most distinct (outcome, mapping, field, reason) groups counted for the task log.
MAX_GROUPS = 200
#: Quoted values and numbers in a reason, masked so that reasons of the same kind group together.
_VALUES = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|(?<![\w.])\d[\d.,:+\-]*")


@dataclass
class MappingTally:
    """Messages one mapping selected and what became of them."""

    selected: int = 0
    delivered: int = 0
    rejected: int = 0
    failed: int = 0
    skipped: int = 0
    #: Rejected messages of records an earlier run had rejected through this mapping too.
    rejected_carried_over: int = 0


class RejectionBasis(NamedTuple):
    """
    What ``max_rejected_fraction`` judges (``docs/operator.md``, "Thresholds").

    :param rejected: rejected messages that count.
    :param messages: the messages they are a fraction of.
    """

    rejected: int
    messages: int


@dataclass
class SyncAccounting:
    """
    Running totals of one sync run: an :class:`~.outcomes.OutcomeSink`.

    Records: every row read is exactly one of added, updated, unchanged or rejected (NULL or duplicate
    unique identifier, NULL cursor); deleted records are counted apart (they are not rows of this run).
    Messages: every message a mapping selects is exactly one of delivered, rejected, failed or skipped.

    The warehouse engine (``pipeline/detection/warehouse/``) still adds to :attr:`rows_read` and
    :attr:`records` directly besides calling :meth:`reject_record`; every other stage reports through the
    protocol only.

    :param mapping_names: names of the operator's mappings, in order.
    :param report: binary file receiving one NDJSON line per rejected or failed record/message and per
        warning, or ``None``.
    """

    mapping_names: list[str]
    report: IO[bytes] | None = None
    rows_read: int = 0
    records: Counter[str] = field(default_factory=Counter)
    warnings: int = 0
    requests: int = 0
    rejected_samples: list[dict[str, Any]] = field(default_factory=list)
    failed_samples: list[dict[str, Any]] = field(default_factory=list)
    problems_reported: int = 0
    #: Rejected messages of records an earlier run had rejected too (pending records evaluated again).
    rejected_carried_over: int = 0

    def __post_init__(self) -> None:
        self.mappings = {name: MappingTally() for name in self.mapping_names}
        #: mapping name -> updated records whose inputs of that mapping changed (see count_mapping_changes).
        self.mapping_changes: Counter[str] = Counter()
        #: Updated records that did not say which mappings changed (every mapping counts them).
        self.updated_every_mapping = 0
        #: Names of the mappings that send updated records (``None``: all); the others count none.
        self.updating_mappings: frozenset[str] | None = None
        #: Names of the mappings that send added records: each record the model holds is one of their
        #: messages (see :meth:`rejection_basis`); ``None`` until the run knows its mappings.
        self.adding_mappings: frozenset[str] | None = None
        #: (outcome, mapping, field, reason with values masked) -> [count, first primary key, first reason]
        self._groups: dict[tuple[str, str | None, str | None, str], list[Any]] = {}

    def read(self, rows: int) -> None:
        """See :meth:`.OutcomeSink.read`."""
        self.rows_read += rows

    def classified(self, kind: ChangeKind, records: int) -> None:
        """See :meth:`.OutcomeSink.classified`."""
        self.records[kind] += records

    def selected(self, mapping: str, messages: int) -> None:
        """See :meth:`.OutcomeSink.selected`."""
        self.mappings[mapping].selected += messages

    def reject_record(self, primary_key: str | None, reason: str, field_: str | None = None) -> None:
        """A row that cannot be synced at all (its unique identifier is NULL or repeated, or its cursor bad)."""
        self.records["rejected"] += 1
        entry = {"primary_key": primary_key, "mapping": None, "outcome": "rejected", "reason": reason}
        if field_:
            entry["field"] = field_
        self._report(entry)

    def count_mapping_changes(self, changes: Iterable[Any]) -> None:
        """
        Count, per mapping, the updated records among ``changes`` (:class:`~.records.Change`) whose inputs
        of that mapping changed; one whose ``changed_mappings`` is ``None`` counts for every mapping.
        """
        updated = "updated"
        counts = self.mapping_changes
        for change in changes:
            if change.kind == updated:
                names = change.changed_mappings
                if names is None:
                    self.updated_every_mapping += 1
                else:
                    counts.update(names)

    def warn(self, mapping: str, primary_key: str, warnings: Sequence[str]) -> None:
        """
        What a mapping changed to make a record's message sendable (one report line per warning, outcome
        ``warning``); the message itself ends in its own outcome as usual.
        """
        self.warnings += len(warnings)
        for text in warnings:
            self._report(
                {"primary_key": primary_key, "mapping": mapping, "outcome": "warning", "reason": text}
            )

    def message(self, ended: BuiltOutcome) -> None:
        """See :meth:`.OutcomeSink.message`: counted and reported as :meth:`count_message` does."""
        self.count_message(ended.mapping, ended.outcome, ended.primary_key, ended.reason, ended.field)
        if ended.carried_over:
            self.rejected_carried_over += 1
            self.mappings[ended.mapping].rejected_carried_over += 1

    def settled(self, completions: Sequence[Completion]) -> None:
        """See :meth:`.OutcomeSink.settled`: each completion counted as :meth:`count_message` does."""
        count = self.count_message
        for done in completions:
            ref = done.ref
            count(ref.mapping, done.outcome, ref.key, done.reason)

    def count_message(
        self, mapping: str, outcome: Outcome, primary_key: str, reason: str = "", field_: str | None = None
    ) -> None:
        """
        Count one message's final outcome (``delivered``, ``rejected``, ``failed`` or ``skipped``); report
        any but ``delivered``.
        """
        tally = self.mappings[mapping]
        setattr(tally, outcome, getattr(tally, outcome) + 1)
        if outcome != _DELIVERED:
            entry = {"primary_key": primary_key, "mapping": mapping, "outcome": outcome, "reason": reason}
            if field_:
                entry["field"] = field_
            self._report(entry)

    def _report(self, entry: dict[str, Any]) -> None:
        self.problems_reported += 1
        outcome = entry["outcome"]
        group_key = (outcome, entry["mapping"], entry.get("field"), _VALUES.sub("…", entry["reason"]))
        group = self._groups.get(group_key)
        if group is None:
            if len(self._groups) < MAX_GROUPS:
                self._groups[group_key] = [1, entry["primary_key"], entry["reason"]]
        else:
            group[0] += 1
        target = (
            self.rejected_samples
            if outcome == _REJECTED
            else self.failed_samples
            if outcome == _FAILED
            else None
        )
        if target is not None and len(target) < MAX_SAMPLES:
            target.append({k: v for k, v in entry.items() if k != "outcome"})
        if self.report is not None:
            self.report.write(json.dumps(entry, ensure_ascii=False, default=str).encode() + b"\n")

    @property
    def messages(self) -> dict[str, int]:
        """Message totals over all mappings."""
        return {
            "delivered": sum(t.delivered for t in self.mappings.values()),
            "rejected": sum(t.rejected for t in self.mappings.values()),
            "failed": sum(t.failed for t in self.mappings.values()),
        }

    def rejection_basis(self) -> RejectionBasis:
        """
        The rejected messages ``max_rejected_fraction`` judges, and the messages they are a fraction of,
        chosen so that the same data gets the same verdict in every run, whatever else changed.

        A record an earlier run rejected comes back every run (its mapping still owes the message) and is
        rejected again until the data is fixed. For a mapping that sends added records, the judged
        messages are therefore the ones the model holds: each live record (added, updated or unchanged now)
        once, or this run's messages when there are more (an Identify sent in parts). Judged against this
        run's messages alone, one bad record in 100 would be 1% in the first run and 100% in every quiet
        run after it. A mapping that sends only updates or deletes sends events of this run: its
        carried-over rejections counted in the run that first rejected them and do not count again.
        """
        live = self.records["added"] + self.records["updated"] + self.records["unchanged"]
        adding = self.adding_mappings
        rejected = messages = 0
        for name, tally in self.mappings.items():
            sent = tally.delivered + tally.rejected + tally.failed
            if adding is not None and name in adding:
                rejected += tally.rejected
                messages += max(sent, live)
            else:
                rejected += tally.rejected - tally.rejected_carried_over
                messages += sent - tally.rejected_carried_over
        return RejectionBasis(rejected, messages)

    def reconcile(self) -> None:
        """
        Check that every record and message has exactly one outcome.

        :raises AccountingMismatch: naming the totals that disagree.
        """
        problems = []
        counted = sum(self.records[k] for k in ("added", "updated", "unchanged", "rejected"))
        if counted != self.rows_read:
            problems.append(
                f"rows read {self.rows_read} != added+updated+unchanged+rejected {counted} ({dict(self.records)})"
            )
        for name, tally in self.mappings.items():
            ended = tally.delivered + tally.rejected + tally.failed + tally.skipped
            if ended != tally.selected:
                problems.append(
                    f"mapping {name!r}: selected {tally.selected} != delivered+rejected+failed+skipped {ended}"
                )
        if problems:
            raise AccountingMismatch("Sync totals do not reconcile: " + "; ".join(problems))

    def summary(self) -> dict[str, Any]:
        """The run summary's counting part (keys fixed by the public contract, ``docs/operator.md``)."""
        return {
            "rows_read": self.rows_read,
            "records": {k: self.records[k] for k in ("added", "updated", "deleted", "unchanged", "rejected")},
            "messages": self.messages,
            "mappings": {
                name: {"delivered": t.delivered, "rejected": t.rejected, "failed": t.failed}
                for name, t in self.mappings.items()
            },
            # Apart from "messages" and "mappings", whose keys are fixed: nothing was sent for these.
            "skipped": {
                "total": sum(t.skipped for t in self.mappings.values()),
                "mappings": {name: t.skipped for name, t in self.mappings.items()},
            },
            # Apart from "mappings" too: updated records whose inputs of each mapping changed.
            "mapping_changes": {
                name: self.mapping_changes[name] + self.updated_every_mapping
                if self.updating_mappings is None or name in self.updating_mappings
                else 0
                for name in self.mappings
            },
            "rejected_samples": list(self.rejected_samples),
            "failed_samples": list(self.failed_samples),
            "rejected_carried_over": self.rejected_carried_over,
            # The messages max_rejected_fraction judges rejections against (see rejection_basis).
            "messages_in_model": self.rejection_basis().messages,
            "rejected_judged": self.rejection_basis().rejected,
            "problem_groups": self.problem_groups(),
            "warnings": self.warnings,
            "requests": self.requests,
        }

    def problem_groups(self, limit: int = 20) -> list[dict[str, Any]]:
        """
        Rejected, failed and skipped messages and warnings grouped by (outcome, mapping, field, reason with
        its values masked), largest first: ``{outcome, mapping, field, reason, count, example_primary_key}``,
        the reason being the first one seen of the group.
        """
        ordered = sorted(self._groups.items(), key=lambda item: -item[1][0])[:limit]
        return [
            {
                "outcome": outcome,
                "mapping": mapping,
                "field": field_,
                "reason": first_reason,
                "count": count,
                "example_primary_key": example,
            }
            for (outcome, mapping, field_, _), (count, example, first_reason) in ordered
        ]
