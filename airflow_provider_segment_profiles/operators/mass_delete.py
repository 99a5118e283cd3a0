"""
``on_mass_delete="ask"``: when the delete guard holds a run's deletes, ask a human in the Airflow UI.

The sync task asks itself, with Airflow's human-in-the-loop machinery (Airflow 3.1+, the standard
provider's ``operators/hitl.py``): it writes the question as the task instance's HITL detail
(``upsert_hitl_detail``, what ``HITLOperator.execute`` does) and then waits for the answer the way
``HITLOperator`` does: on Airflow 3.3+ it raises ``TaskAwaitingInput`` (the task parks in
``AWAITING_INPUT``, no triggerer), on 3.1 and 3.2 it defers to ``HITLTrigger``. Airflow resumes the task in
``execute_complete`` with the answer. Why one task and not an ``ApprovalOperator`` after it: in
``docs/operator.md`` ("A mass delete that asks").
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from airflow_provider_segment_profiles.exceptions import ConfigurationError
from airflow_provider_segment_profiles.operators.airflow_errors import AirflowFailException
from airflow_provider_segment_profiles.operators.summary import delete_guard_breach
from airflow_provider_segment_profiles.pipeline.held_deletes import ApprovedDeletes

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context

    from airflow_provider_segment_profiles.pipeline.run import DeletesHeld

#: The ``on_mass_delete`` values.
ON_MASS_DELETE = ("fail", "ask")
#: The answers, as ``ApprovalOperator`` names them.
APPROVE, REJECT = "Approve", "Reject"
#: The method Airflow resumes the task with.
RESUME_METHOD = "execute_complete"


def check_on_mass_delete(value: str, timeout: timedelta | None) -> None:
    """:raises ConfigurationError: ``value`` is not one of :data:`ON_MASS_DELETE`, or a bad timeout."""
    if value not in ON_MASS_DELETE:
        raise ConfigurationError(
            f"on_mass_delete must be one of {', '.join(map(repr, ON_MASS_DELETE))}, not {value!r}"
        )
    if timeout is not None and (not isinstance(timeout, timedelta) or timeout <= timedelta(0)):
        raise ConfigurationError(f"mass_delete_timeout must be a positive timedelta or None, not {timeout!r}")


class Question(NamedTuple):
    """What the Airflow UI shows: a headline and a Markdown body."""

    subject: str
    body: str


def question(task_id: str, held: DeletesHeld, generation: int | None, timeout: timedelta | None) -> Question:
    """The question for ``held``: the counts, a sample of keys, and what each answer does."""
    share = held.would_delete / held.committed
    sample = ", ".join(f"`{key}`" for key in held.sample)
    more = held.would_delete - len(held.sample)
    waits = (
        f"Without an answer within {_duration(timeout)} the task fails as with `on_mass_delete='fail'`."
        if timeout
        else "The task waits for an answer without a time limit."
    )
    body = "\n\n".join(
        [
            f"Task `{task_id}` would delete **{held.would_delete:,}** of the **{held.committed:,}** records "
            f"the committed sync state holds ({share:.1%}, more than max_deleted_fraction {held.limit:.1%}). "
            "Is the model empty or broken upstream?",
            f"Records that would be deleted: {sample}" + (f" and {more:,} more." if more > 0 else "."),
            "Adds and updates of this run were already sent and committed"
            + (f" (state generation {generation:,})." if generation is not None else ".")
            + " No delete has been sent.",
            f"**{APPROVE}**: send exactly these {held.would_delete:,} deletes. The task reads the model again; "
            "if the records missing from it are no longer exactly these, it sends no delete and fails.",
            f"**{REJECT}**: send none of them. The records stay in the sync state, so the next run finds them "
            "missing again (and asks again if they still are).",
            waits,
        ]
    )
    subject = f"Delete {held.would_delete:,} of {held.committed:,} records from Segment? ({task_id})"
    return Question(subject, body)


def held_payload(held: DeletesHeld) -> dict[str, Any]:
    """What the task carries from the question to the answer: the held set's count and fingerprint."""
    return {
        "count": held.would_delete,
        "committed": held.committed,
        "limit": held.limit,
        "digest": held.digest,
        "sample": list(held.sample),
    }


def ask(
    operator: BaseOperator, context: Context, asked: Question, held: dict[str, Any], timeout: timedelta | None
):
    """
    Write the question for this task instance and wait for the answer; Airflow resumes the task in
    ``operator.execute_complete(context, held=held, event=...)``.

    :raises TaskAwaitingInput: on Airflow 3.3+ (the task waits in ``AWAITING_INPUT``).
    :raises TaskDeferred: on Airflow 3.1 and 3.2 (the task defers to ``HITLTrigger``).
    """
    from airflow.sdk.execution_time.hitl import upsert_hitl_detail

    ti_id = context["task_instance"].id
    upsert_hitl_detail(
        ti_id=ti_id,
        options=[APPROVE, REJECT],
        subject=asked.subject,
        body=asked.body,
        defaults=None,  # no default: a timeout fails the task, as on_mass_delete="fail" would
        multiple=False,
        params={},
        assigned_users=None,
    )
    operator.log.warning("Delete guard: asking in the Airflow UI (Required Actions): %s", asked.subject)
    try:
        from airflow.sdk.exceptions import TaskAwaitingInput
    except ImportError:  # Airflow 3.1, 3.2: defer to the standard provider's trigger
        from airflow.providers.standard.triggers.hitl import HITLTrigger
        from airflow.sdk.timezone import utcnow

        operator.defer(
            trigger=HITLTrigger(
                ti_id=ti_id,
                options=[APPROVE, REJECT],
                params={},
                defaults=None,
                multiple=False,
                timeout_datetime=utcnow() + timeout if timeout else None,
            ),
            method_name=RESUME_METHOD,
            kwargs={"held": held},
        )
    raise TaskAwaitingInput(method_name=RESUME_METHOD, kwargs={"held": held}, timeout=timeout)


class Answer(NamedTuple):
    """
    :param choice: ``"approved"``, ``"rejected"`` or ``"timeout"``.
    :param by: who answered (``None`` for a timeout).
    """

    choice: str
    by: str | None


def answer(event: dict[str, Any]) -> Answer:
    """
    The answer in the event Airflow resumed the task with (``HITLDetail.as_resume_event_payload``, or the
    timeout event of the scheduler's sweep / ``HITLTrigger``: ``{"error": ..., "error_type": "timeout"}``).

    :raises ValueError: an error event other than a timeout, or an option this task did not offer.
    """
    if "error" in event:
        if event.get("error_type") == "timeout":
            return Answer("timeout", None)
        raise ValueError(f"The answer to the mass-delete question could not be read: {event['error']}")
    chosen = list(event.get("chosen_options") or [])
    if chosen not in ([APPROVE], [REJECT]):
        raise ValueError(f"The answer {chosen!r} is not one of {APPROVE!r} or {REJECT!r}")
    user = event.get("responded_by_user") or {}
    by = user.get("name") or user.get("id") if isinstance(user, dict) else str(user)
    return Answer("approved" if chosen == [APPROVE] else "rejected", by)


class Resumption(NamedTuple):
    """
    What an answered question leads to.

    :param approved: the deletes to let through in a sync run again, or ``None`` (rejected).
    :param summary: the asking run's summary with its ``mass_delete`` decision.
    """

    approved: ApprovedDeletes | None
    summary: dict[str, Any]


def resume(
    held: dict[str, Any], event: dict[str, Any], task_id: str, timeout: timedelta | None, log: Any
) -> Resumption:
    """
    The answer to the question about ``held`` (:func:`held_payload` with the asking run's ``summary``).

    :raises AirflowFailException: no answer within ``timeout`` (as ``on_mass_delete="fail"``).
    :raises ValueError: an answer this task did not offer (:func:`answer`).
    """
    decided = answer(event)
    summary = held.pop("summary", None) or {}
    if decided.choice == "timeout":
        guard = delete_guard_breach(
            {
                "deletes_held": {
                    "would_delete": held["count"],
                    "committed_records": held["committed"],
                    "max_deleted_fraction": held["limit"],
                }
            },
            task_id,
        )
        raise AirflowFailException(
            f"Delete guard: the mass-delete question was not answered within {timeout}; no delete was sent. "
            f"{guard}"
        )
    summary["mass_delete"] = {"decision": decided.choice, "by": decided.by, "held": held["count"]}
    if decided.choice == "rejected":
        log.warning(
            "Delete guard: %s rejected the %s deletes; none was sent. The records stay in the sync state, "
            "so the next run finds them missing again.",
            decided.by or "a human",
            f"{held['count']:,}",
        )
        return Resumption(None, summary)
    log.info("Delete guard: %s approved the %s deletes", decided.by or "a human", f"{held['count']:,}")
    return Resumption(ApprovedDeletes.from_dict(held, decided.by), summary)


def fail_or_ask(
    operator: BaseOperator,
    context: Context,
    breach: Exception,
    held: DeletesHeld | None,
    approved: ApprovedDeletes | None,
    summary: dict[str, Any],
    timeout: timedelta | None,
    dry_run: bool,
) -> None:
    """
    End a run that breached a threshold: with deletes held and ``on_mass_delete="ask"``, ask (the task
    waits); after an approval whose deletes no longer fit the model, fail saying so; else raise ``breach``.

    :raises AirflowFailException: the approved deletes are not the records missing now.
    :raises TaskAwaitingInput: (or ``TaskDeferred``) when it asks (:func:`ask`).
    """
    if held is not None and held.approval_mismatch and approved is not None:
        raise AirflowFailException(
            f"Delete guard: the deletes approved by {approved.approved_by or 'a human'} were for "
            f"{approved.count:,} records, but this run finds {held.would_delete:,} missing from the "
            "model, not the same ones (the model changed after the question); no delete was sent. The "
            "next run asks again about the records missing then.\n" + str(breach)
        )
    if held is not None and operator.on_mass_delete == "ask" and not dry_run:
        asked = question(operator.task_id, held, summary.get("state_generation"), timeout)
        ask(operator, context, asked, {**held_payload(held), "summary": summary}, timeout)
    raise breach


def _duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"
