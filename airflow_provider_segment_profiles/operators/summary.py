"""The run summary as the task log shows it, and the thresholds that fail a task after its commit."""

from __future__ import annotations

from typing import Any

try:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
except ImportError:  # Airflow 3.1
    from airflow.exceptions import AirflowException, AirflowFailException  # type: ignore[no-redef]


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a small table for the task log (counts per record change and per mapping)."""
    records, messages = summary["records"], summary["messages"]
    lines = [
        f"{'dry run ' if summary.get('dry_run') else ''}sync summary ({summary['sync_mode']}) in "
        f"{summary['duration_s']} s",
        f"  rows read  {summary['rows_read']:>10}",
        *(f"  {k:<10} {v:>10}" for k, v in records.items()),
        f"  {'mapping':<30} {'delivered':>10} {'rejected':>10} {'failed':>10}",
        *(
            f"  {name:<30} {m['delivered']:>10} {m['rejected']:>10} {m['failed']:>10}"
            for name, m in summary["mappings"].items()
        ),
        f"  {'total':<30} {messages['delivered']:>10} {messages['rejected']:>10} {messages['failed']:>10}",
    ]
    if summary.get("warnings"):
        lines.append(
            f"  {summary['warnings']} warnings: values changed to make messages sendable (each in the report)"
        )
    return "\n".join(lines)


def threshold_breach(
    summary: dict[str, Any], max_rejected_fraction: float, max_failed_fraction: float
) -> Exception | None:
    """
    The Airflow exception to fail the task with when too many messages were not delivered, else ``None``.

    Failed messages (transient: a retry sends only those) give ``AirflowException``; rejected ones (bad
    data: a retry cannot help) give ``AirflowFailException``. Fractions are of the messages mappings
    selected.
    """
    selected = sum(m["delivered"] + m["rejected"] + m["failed"] for m in summary["mappings"].values())
    if not selected:
        return None
    messages = summary["messages"]
    rejected_fraction = messages["rejected"] / selected
    failed_fraction = messages["failed"] / selected
    if failed_fraction > max_failed_fraction:
        return AirflowException(
            f"{messages['failed']} of {selected} messages could not be delivered ({failed_fraction:.1%} > "
            f"max_failed_fraction {max_failed_fraction:.1%}); state keeps them for the next try. "
            f"Report: {summary['report_path']}"
        )
    if rejected_fraction > max_rejected_fraction:
        return AirflowFailException(
            f"{messages['rejected']} of {selected} messages were rejected ({rejected_fraction:.1%} > "
            f"max_rejected_fraction {max_rejected_fraction:.1%}); delivered ones are committed. "
            f"Fix the data or mappings. Report: {summary['report_path']}"
        )
    return None
