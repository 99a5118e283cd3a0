"""The run summary as the task log shows it, and the thresholds that fail a task after its commit."""

from __future__ import annotations

from typing import Any

try:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
except ImportError:  # Airflow 3.1
    from airflow.exceptions import AirflowException, AirflowFailException  # type: ignore[no-redef]


def format_summary(summary: dict[str, Any]) -> str:
    """
    The summary as the task log shows it: a table of record changes and of messages per mapping, then the
    problems grouped by (outcome, mapping, field, reason) with a count and one example key each, and where
    the report and the dry run's payloads are. Starts and ends with a line break, so the table stands on
    lines of its own in the Airflow UI whatever the log format adds around a message.
    """
    records, messages = summary["records"], summary["messages"]
    skipped = summary.get("skipped") or {"total": 0, "mappings": {}}
    title = f"{'Dry run s' if summary.get('dry_run') else 'S'}ync summary ({summary['sync_mode']}"
    title += ", full refresh" if summary.get("full_refresh") else ""
    title += f") in {summary['duration_s']:,} s"
    lines = ["", title, f"  {'rows read':<12} {summary['rows_read']:>12,}"]
    fetched = summary.get("rows_fetched")
    if fetched is not None and fetched != summary["rows_read"]:  # the warehouse engine read the rest in SQL
        lines.append(f"  {'fetched':<12} {fetched:>12,}  (rows that left the warehouse)")
    lines += [f"  {kind:<12} {count:>12,}" for kind, count in records.items()]
    header = f"  {'mapping':<30} {'delivered':>11} {'rejected':>10} {'failed':>10} {'skipped':>10}"
    # changed: the updated records whose inputs of the mapping changed (summary key mapping_changes)
    changed = summary.get("mapping_changes") or {}
    lines += ["", header + f" {'changed':>10}"]
    for name, counts in summary["mappings"].items():
        lines.append(
            f"  {name:<30} {counts['delivered']:>11,} {counts['rejected']:>10,} {counts['failed']:>10,} "
            f"{skipped['mappings'].get(name, 0):>10,} {changed.get(name, 0):>10,}"
        )
    lines.append(
        f"  {'total':<30} {messages['delivered']:>11,} {messages['rejected']:>10,} {messages['failed']:>10,} "
        f"{skipped['total']:>10,}"
    )
    carried = summary.get("rejected_carried_over") or 0
    if carried:
        lines.append(
            f"  {carried:,} of the rejected messages {'was' if carried == 1 else 'were'} rejected by an earlier "
            "run too (pending messages are built again every run until they are delivered)"
        )
    warnings = summary.get("warnings") or 0
    if warnings:
        lines.append(
            f"  {warnings:,} {'warning' if warnings == 1 else 'warnings'}: values changed to make messages sendable"
        )
    held = summary.get("deletes_held")
    if held:
        lines.append(
            f"  deletes held by the delete guard: {held['would_delete']:,} of {held['committed_records']:,} "
            "committed records"
        )
    groups = [g for g in summary.get("problem_groups") or [] if g["outcome"] != "warning"]
    warned = [g for g in summary.get("problem_groups") or [] if g["outcome"] == "warning"]
    for heading, chosen in (("Problems", groups), ("Warnings", warned)):
        if chosen:
            lines += ["", f"{heading} (count, outcome, mapping, field: reason of the first, e.g. its key):"]
            lines += [
                f"  {g['count']:>8,}  {g['outcome']:<8} {g['mapping'] or '(record)'} {g['field'] or ''}: "
                f"{_shorten(g['reason'])}{_example(g['example_primary_key'])}"
                for g in chosen[:10]
            ]
    lines.append("")
    if summary.get("report_path"):
        lines.append(f"Report of every problem: {summary['report_path']}")
    if summary.get("dry_run_path"):
        lines.append(f"Payloads this dry run would send: {summary['dry_run_path']}")
    if summary.get("state_generation") is not None:
        lines.append(f"Committed state generation {summary['state_generation']:,}")
    return "\n".join(lines) + "\n"


def _example(primary_key: str | None) -> str:
    return "" if primary_key is None else f" (e.g. primary key {primary_key!r})"


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def delete_guard_breach(summary: dict[str, Any], task_id: str) -> Exception | None:
    """
    The ``AirflowFailException`` of a run whose deletes the mass-delete guard held, else ``None``. The run's
    adds and updates were committed; the message names the counts and how to let the deletes through.
    """
    held = summary.get("deletes_held")
    if not held:
        return None
    would, committed, limit = held["would_delete"], held["committed_records"], held["max_deleted_fraction"]
    return AirflowFailException(
        f"Delete guard: no delete was sent. To let these deletes through, run {task_id!r} once with "
        "max_deleted_fraction=None (or a higher fraction; from the Trigger dialog when the DAG templates it, "
        "see docs/operator.md).\n"
        f"This run would have deleted {would:,} of the {committed:,} records the committed state holds "
        f"({would / committed:.1%} > max_deleted_fraction {limit:.1%}): is the model empty or broken upstream? "
        "Its adds and updates were synced and committed; the missing records stay in state and count as "
        "deleted again next run."
    )


def threshold_breach(
    summary: dict[str, Any], max_rejected_fraction: float, max_failed_fraction: float
) -> Exception | None:
    """
    The Airflow exception to fail the task with when too many messages were not delivered, else ``None``.

    Failed messages (transient: a retry sends only those) give ``AirflowException``, as a fraction of the
    messages mappings selected in this run. Rejected ones (bad data: a retry cannot help) give
    ``AirflowFailException``, as a fraction of the messages the model holds (``rejected_judged`` of
    ``messages_in_model``, :meth:`~..pipeline.accounting.SyncAccounting.rejection_basis`), so that one bad
    record fails every run or none, whatever else changed.
    """
    selected = sum(m["delivered"] + m["rejected"] + m["failed"] for m in summary["mappings"].values())
    if not selected:
        return None
    messages = summary["messages"]
    judged, in_model = summary["rejected_judged"], summary["messages_in_model"]
    rejected_fraction = judged / in_model if in_model else 0.0
    failed_fraction = messages["failed"] / selected
    if failed_fraction > max_failed_fraction:
        return AirflowException(
            f"{messages['failed']} of {selected} messages could not be delivered ({failed_fraction:.1%} > "
            f"max_failed_fraction {max_failed_fraction:.1%}); state keeps them for the next try. "
            f"Report: {summary['report_path']}"
        )
    if rejected_fraction > max_rejected_fraction:
        return AirflowFailException(
            f"{judged} of the {in_model} messages of the model are rejected ({rejected_fraction:.1%} > "
            f"max_rejected_fraction {max_rejected_fraction:.1%}); delivered ones are committed. "
            f"Fix the data or mappings. Report: {summary['report_path']}"
        )
    return None


def record_rejection_breach(summary: dict[str, Any], max_rejected_fraction: float) -> Exception | None:
    """
    The ``AirflowFailException`` of a run that rejected more than ``max_rejected_fraction`` of the rows it
    read as whole records (a NULL or repeated unique identifier, an unusable cursor value), else ``None``.
    No mapping selected those records, so :func:`threshold_breach` never sees them: without this a model
    whose keys are all NULL (a broken join) would deliver nothing and succeed.
    """
    rows, rejected = summary["rows_read"], summary["records"]["rejected"]
    if not rows or rejected / rows <= max_rejected_fraction:
        return None
    first = next((s["reason"] for s in summary.get("rejected_samples") or () if s.get("mapping") is None), "")
    return AirflowFailException(
        f"{rejected:,} of the {rows:,} records read were rejected as a whole ({rejected / rows:.1%} > "
        f"max_rejected_fraction {max_rejected_fraction:.1%}), e.g. {first}. Is the model's unique identifier "
        "NULL or repeated because of a broken join? Nothing was sent for those records; delivered ones are "
        f"committed. Fix the model. Report: {summary['report_path']}"
    )


def run_breach(
    summary: dict[str, Any],
    task_id: str,
    dry_run: bool,
    max_rejected_fraction: float,
    max_failed_fraction: float,
) -> Exception | None:
    """
    The first threshold a finished run breached, as the Airflow exception to fail it with, else ``None``: the
    delete guard (also in a dry run), then the failed and rejected messages, then records rejected whole.
    """
    return delete_guard_breach(summary, task_id) or (
        None
        if dry_run
        else threshold_breach(summary, max_rejected_fraction, max_failed_fraction)
        or record_rejection_breach(summary, max_rejected_fraction)
    )
