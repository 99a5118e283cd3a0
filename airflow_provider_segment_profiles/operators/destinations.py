"""Where a sync sends, as the task log names it: a wrong region is answered 200 and silently dropped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_segment_profiles.exceptions import ConfigurationError
from airflow_provider_segment_profiles.hooks.segment_profiles import SegmentProfilesHook

if TYPE_CHECKING:
    from airflow_provider_segment_profiles.actions import CompiledMapping
    from airflow_provider_segment_profiles.delivery.retry import RetryPolicy
    from airflow_provider_segment_profiles.pipeline.verify import Verification, VerificationPolicy


def segment_hook(
    conn_id: str,
    *,
    timeout: tuple[float, float],
    retry_policy: RetryPolicy,
    pool_size: int,
    resolve: bool,
) -> SegmentProfilesHook:
    """
    The hook of one Profile Space connection.

    :param timeout: ``(connect, read)`` seconds per request.
    :param pool_size: HTTP connections kept open (the run's ``max_requests_in_flight``).
    :param resolve: resolve the connection and its region now, before any row is read (not in a dry run).
    :raises ConfigurationError: naming the connection, when it cannot be resolved or its write key is empty.
    """
    hook = SegmentProfilesHook(conn_id, timeout=timeout, retry_policy=retry_policy, pool_size=pool_size)
    if resolve:
        try:
            hook.base_url  # noqa: B018 - resolves the connection and region now, before any row is read
            hook.session  # noqa: B018 - refuses an empty write key
        except Exception as err:
            raise ConfigurationError(f"Segment Profiles connection {conn_id!r}: {err}") from err
    return hook


def verification(
    sample: int,
    *,
    dry_run: bool,
    conn_id: str,
    policy: VerificationPolicy,
    mappings: Sequence[CompiledMapping],
    space_conn_ids: Mapping[str, str],
    verified_space: str,
    timeout: tuple[float, float],
    log: Any,
) -> Verification | None:
    """
    ``verify_sample``'s read-back of what the Profile Space holds, resolved before any row is read
    (``docs/operator.md``, "Verifying what Profiles hold"); ``None`` when off or in a dry run.

    :param sample: most delivered records read back (0: off).
    :param conn_id: the ``segment_profile_api`` connection (the Space's access token).
    :param verified_space: the Profile Space connection whose Space ``conn_id`` reads.
    """
    if not sample:
        return None
    if dry_run:
        log.info("verify_sample: a dry run sends nothing, so there is nothing to verify")
        return None
    from airflow_provider_segment_profiles.pipeline.verify import Verification

    return Verification(
        sample,
        conn_id=conn_id,
        policy=policy,
        mappings=list(mappings),
        space_conn_ids=dict(space_conn_ids),
        verified_space=verified_space,
        timeout=timeout,
        log=log,
    )


def log_destinations_before(log: Any, hooks: Mapping[str, SegmentProfilesHook]) -> None:
    """One line per Profile Space connection the run will send to (connection id, region, endpoint host)."""
    for conn_id in sorted(hooks):
        log.info("Sending to Profile Space %s", _describe(hooks[conn_id]))


def destinations_report(
    hooks: Mapping[str, SegmentProfilesHook], space_conn_ids: Mapping[str, str], summary: dict[str, Any]
) -> str:
    """
    The lines the task log ends with: for each Profile Space connection, where its messages went and how
    many were delivered there (from the summary's per-mapping counts). Never the write key.

    :param space_conn_ids: mapping name -> the Profile Space connection it sends to.
    """
    delivered = dict.fromkeys(hooks, 0)
    for mapping, counts in summary.get("mappings", {}).items():
        conn_id = space_conn_ids.get(mapping)
        if conn_id in delivered:
            delivered[conn_id] += counts.get("delivered", 0)
    verb = "would have been delivered (dry run)" if summary.get("dry_run") else "delivered"
    lines = ["Destinations (Profile Space connection: region, endpoint host; messages):"]
    lines += [
        f"  {_describe(hooks[conn_id])}: {delivered[conn_id]:,} {verb}" for conn_id in sorted(delivered)
    ]
    return "\n".join(lines)


def _describe(hook: SegmentProfilesHook) -> str:
    try:
        return hook.describe_destination()
    except Exception as err:  # an unreadable connection is reported where it is used; name what is known
        return f"connection {hook.segment_profiles_conn_id!r} ({type(err).__name__})"
