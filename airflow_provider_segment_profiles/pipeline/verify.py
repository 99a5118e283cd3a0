"""
After delivery, read back what a sample of delivered records sent and compare it with what the Profile
Space holds (``verify_sample``; ``docs/operator.md``, "Verifying what Profiles hold").

Segment's tracking API answers ``200`` to events it then drops: sent to the other region's endpoint, with a
write key of a source that is not connected to the Space, or discarded by a filter or drop rule
(segment-docs ``src/connections/sources/catalog/libraries/server/http-api/index.md``: "you might not see
any errors, but your events will not appear"). Only reading the profile shows whether the data arrived.

Two parts, kept out of the per-record path:

* :class:`VerificationSample` watches the first messages of the run: while it holds fewer than its size it
  decodes the Identify messages of the sampled mappings (only for the chunks read while it is collecting)
  and sees their completions through the settler; after that it costs one attribute test per list of
  completions.
* :func:`verify` reads each sampled record's traits through :class:`SegmentProfileApiHook` and polls the
  ones not kept yet within a bounded budget, because Segment processes accepted events asynchronously
  ("Segment reserves the right to queue any additional events and process those at a rate that doesn't
  exceed the limit", HTTP API "Rate limits") and the Profile API reads the profile store, so a profile can
  lag the ``200``; the Profile API docs give no bound.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple

from airflow_provider_segment_profiles.exceptions import ConfigurationError, VerificationFailed
from airflow_provider_segment_profiles.hooks.profile_api import (
    DEFAULT_REQUESTS_PER_SECOND,
    MAX_REQUESTS_PER_SECOND,
    ProfileApiUnavailable,
)
from airflow_provider_segment_profiles.pipeline.records import Outcome

if TYPE_CHECKING:
    from airflow_provider_segment_profiles.delivery.dispatcher import Completion
    from airflow_provider_segment_profiles.hooks.profile_api import SegmentProfileApiHook

#: Most records one run may sample (at the default 25 requests/s one read round of them takes 40 s).
MAX_VERIFY_SAMPLE = 1000
#: Most records named in the summary's ``verification.problems``.
MAX_PROBLEMS_LISTED = 10
_DELIVERED = Outcome.DELIVERED.value

#: The likely causes named when nothing sampled was kept, for each finding.
CAUSES_NOTHING_ARRIVED = (
    "the Segment Profiles connection's Endpoint Region is not the region of the workspace that holds the "
    "Space (Segment answers 200 in the other region and drops the events), or the Profile API connection "
    "names another region or space than the one the data was sent to",
    "the write key is of another source than this Profile Space's own (docs/connection.md, \"Where the write "
    'key comes from"), so the events built profiles in another Space or nowhere',
    "a drop rule or filter (Unify event filtering, a source's or Protocols' blocking, a destination filter) "
    "discards the Identify calls",
)
CAUSES_TRAITS_DIFFER = (
    "a filter, drop rule or transformation removes or changes the traits on the way in",
    "another source wrote these traits after this sync (the Profile API resolves traits by last update)",
)


class VerificationOutcome(StrEnum):
    """What the Profile API showed for one sampled record."""

    #: Every trait sent equals the profile's (a sent ``null`` also matches a trait the profile lacks).
    KEPT = "kept"
    #: No profile has the record's external id (``404``).
    MISSING = "missing"
    #: A profile exists but at least one sent trait differs or is absent.
    MISMATCHED = "mismatched"
    #: Not read: the Profile API was unavailable, or the time budget ran out before the first read.
    UNVERIFIED = "unverified"


@dataclass(frozen=True)
class VerificationPolicy:
    """
    Bounds of the read-back, for eventual consistency.

    :param budget_s: seconds the whole verification may take, reads and waits, from its start (> 0).
    :param max_attempts: most reads of one record's profile (>= 1); a record not kept is read again in the
        next round.
    :param first_wait_s: seconds between the first and the second read round (>= 0); doubles each round.
    :param max_wait_s: longest wait between two rounds, in seconds.
    :param requests_per_second: Profile API requests per second, retries included (at most 100, Segment's
        limit per Space).
    :raises ValueError: for a value out of its range.
    """

    budget_s: float = 120.0
    max_attempts: int = 6
    first_wait_s: float = 2.0
    max_wait_s: float = 30.0
    requests_per_second: float = DEFAULT_REQUESTS_PER_SECOND

    def __post_init__(self) -> None:
        problems = []
        if not self.budget_s > 0:
            problems.append("budget_s must be > 0 seconds")
        if (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or self.max_attempts < 1
        ):
            problems.append("max_attempts must be an integer >= 1")
        if not 0 <= self.first_wait_s <= self.max_wait_s:
            problems.append(
                "first_wait_s and max_wait_s must be seconds with 0 <= first_wait_s <= max_wait_s"
            )
        if not 0 < self.requests_per_second <= MAX_REQUESTS_PER_SECOND:
            problems.append(
                "requests_per_second must be > 0 and at most 100 (the Profile API's limit per Space)"
            )
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def coerce(cls, value: VerificationPolicy | Mapping[str, Any] | None) -> VerificationPolicy:
        """A policy, a dict of its fields (from a DAG's JSON), or ``None`` for the defaults."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        return cls(**dict(value))

    def waits(self) -> Iterator[float]:
        """The waits between rounds, in seconds: ``first_wait_s`` doubling up to ``max_wait_s``."""
        wait = self.first_wait_s
        while True:
            yield wait
            wait = min(self.max_wait_s, wait * 2 if wait else self.max_wait_s)


def check_verification_settings(
    *,
    task_id: str,
    verify_sample: Any,
    profile_api_conn_id: Any,
    verify_policy: VerificationPolicy | Mapping[str, Any] | None,
) -> VerificationPolicy:
    """
    Check the verification settings all at once, as :func:`~.config.check_settings` does the others.

    :return: the policy.
    :raises ConfigurationError: listing every problem, naming the task.
    """
    problems = []
    if isinstance(verify_sample, bool) or not isinstance(verify_sample, int):
        problems.append(f"verify_sample must be an integer, not {type(verify_sample).__name__}")
    elif not 0 <= verify_sample <= MAX_VERIFY_SAMPLE:
        problems.append(f"verify_sample must be between 0 (off) and {MAX_VERIFY_SAMPLE:,}")
    if not isinstance(profile_api_conn_id, str) or not profile_api_conn_id.strip():
        problems.append("profile_api_conn_id must name a segment_profile_api connection")
    policy = VerificationPolicy()
    try:
        policy = VerificationPolicy.coerce(verify_policy)
    except (TypeError, ValueError) as err:
        problems.append(f"verify_policy: {err}")
    if problems:
        raise ConfigurationError(f"Invalid SegmentProfilesSyncOperator {task_id!r}: " + "; ".join(problems))
    return policy


class SentProfile(NamedTuple):
    """
    What one sampled record sent to its profile.

    :param key: the record's primary key.
    :param mapping: the (first) mapping whose Identify carried the traits.
    :param id_type: ``user_id`` or ``anonymous_id``: the external id the Profile API is asked by.
    :param id_value: its value.
    :param traits: every trait the record's Identify messages of this run sent (later ones win).
    """

    key: str
    mapping: str
    id_type: str
    id_value: str
    traits: dict[str, Any]


@dataclass
class _Candidate:
    profile: SentProfile
    waiting: int = 0
    undelivered: bool = False


class VerificationSample:
    """
    Picks up to ``size`` delivered records whose Identify carried traits, from the start of the run.

    A record's external id is its ``userId``, else its ``anonymousId``. Every Identify for that id seen while
    collecting adds its traits; the record is sampled when all of them were delivered.

    :param size: records to sample (>= 1).
    :param mappings: names of the mappings whose messages may be sampled (Identify mappings sending to the
        Space that the Profile API connection reads).
    """

    def __init__(self, size: int, mappings: Collection[str]) -> None:
        self.size = size
        self.mappings = frozenset(mappings)
        self._candidates: dict[tuple[str, str], _Candidate] = {}
        self._waiting: dict[int, tuple[Any, _Candidate]] = {}
        self._usable = 0

    @property
    def collecting(self) -> bool:
        """Whether the sample still takes new records (the run wraps its ``add`` only then)."""
        return bool(self.mappings) and self._usable < self.size

    def tap(
        self, add: Callable[[str, bytes, Any], list[Completion]]
    ) -> Callable[[str, bytes, Any], list[Completion]]:
        """``add`` (the dispatcher's), looking at each message on the way while the sample collects."""

        def tapped(space: str, encoded: bytes, ref: Any) -> list[Completion]:
            if ref.mapping in self.mappings:
                self._look_at(encoded, ref)
            return add(space, encoded, ref)

        return tapped

    def _look_at(self, encoded: bytes, ref: Any) -> None:
        message = json.loads(encoded)
        traits = message.get("traits")
        if message.get("type") != "identify" or not isinstance(traits, dict) or not traits:
            return
        identity = _external_id(message)
        if identity is None:
            return
        candidate = self._candidates.get(identity)
        if candidate is None:
            if self._usable >= self.size:
                return
            candidate = self._candidates[identity] = _Candidate(
                SentProfile(ref.key, ref.mapping, *identity, {})
            )
            self._usable += 1
        candidate.profile.traits.update(traits)
        candidate.waiting += 1
        self._waiting[id(ref)] = (ref, candidate)  # the ref is kept so its id() stays unique

    def settled(self, completions: Sequence[Completion]) -> None:
        """The settler's observer: note which sampled messages were delivered."""
        waiting = self._waiting
        if not waiting:
            return
        for done in completions:
            entry = waiting.pop(id(done.ref), None)
            if entry is None:
                continue
            candidate = entry[1]
            if done.outcome == _DELIVERED:
                candidate.waiting -= 1
            elif not candidate.undelivered:
                candidate.undelivered = True
                self._usable -= 1

    def profiles(self) -> list[SentProfile]:
        """The sampled records: every Identify delivered, at most ``size``, in the order first seen."""
        chosen = [c.profile for c in self._candidates.values() if not c.undelivered and c.waiting == 0]
        return chosen[: self.size]


@dataclass
class VerificationResult:
    """
    The ``verification`` summary key.

    :param sampled: records whose profile was read (``kept + missing + mismatched``).
    :param kept: records whose profile holds every trait as sent.
    :param missing: records no profile has.
    :param mismatched: records whose profile has other values for some traits.
    :param unverified: records picked but not read (Profile API unavailable, or out of time).
    :param requests: Profile API requests made, retries and failed ones included.
    :param duration_s: seconds the verification took.
    :param problems: up to :data:`MAX_PROBLEMS_LISTED` records not kept: primary key, mapping, outcome and
        the names (never the values) of the traits that differ.
    """

    sampled: int = 0
    kept: int = 0
    missing: int = 0
    mismatched: int = 0
    unverified: int = 0
    requests: int = 0
    duration_s: float = 0.0
    problems: list[dict[str, Any]] = field(default_factory=list)

    def to_summary(self) -> dict[str, Any]:
        """The dict the run summary holds."""
        return asdict(self)


def off() -> dict[str, Any]:
    """The ``verification`` summary key of a run that does not verify: zeros."""
    return VerificationResult().to_summary()


def verify(
    profiles: Sequence[SentProfile],
    hook: SegmentProfileApiHook,
    policy: VerificationPolicy,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> VerificationResult:
    """
    Read back every sampled profile, polling the ones not kept until they are, until ``max_attempts`` reads
    of each, or until ``budget_s`` is spent; a record's outcome is that of its last read.

    :raises ProfileApiAccessError: the Profile API refused the connection (a configuration error).
    """
    started = clock()
    outcomes: dict[int, tuple[VerificationOutcome, list[str]]] = {}
    attempts = dict.fromkeys(range(len(profiles)), 0)
    requests_before = hook.requests_made
    todo = list(range(len(profiles)))
    waits = policy.waits()
    while todo:
        again = []
        for index in todo:
            if clock() - started >= policy.budget_s:
                break
            profile = profiles[index]
            try:
                held = hook.get_traits(profile.id_type, profile.id_value, include=list(profile.traits))
            except ProfileApiUnavailable as err:
                # The hook already retried within its policy: the API is down, stop reading (the records
                # not read stay unverified rather than counted as lost).
                hook.log.warning(
                    "Profile API unavailable, verification stopped at record %s: %s", profile.key, err
                )
                outcomes[index] = (VerificationOutcome.UNVERIFIED, [])
                again = []
                break
            attempts[index] += 1
            outcomes[index] = compare(profile.traits, held.traits if held.found else None)
            if outcomes[index][0] is not VerificationOutcome.KEPT and attempts[index] < policy.max_attempts:
                again.append(index)
        wait = next(waits)
        if not again or clock() - started + wait >= policy.budget_s:
            break
        sleep(wait)
        todo = again
    result = VerificationResult(requests=hook.requests_made - requests_before)
    for index, profile in enumerate(profiles):
        outcome, differing = outcomes.get(index, (VerificationOutcome.UNVERIFIED, []))
        setattr(result, outcome.value, getattr(result, outcome.value) + 1)
        if outcome is not VerificationOutcome.KEPT and len(result.problems) < MAX_PROBLEMS_LISTED:
            result.problems.append(
                {
                    "primary_key": profile.key,
                    "mapping": profile.mapping,
                    "outcome": outcome.value,
                    "traits": differing,
                    "reads": attempts[index],
                }
            )
    result.sampled = result.kept + result.missing + result.mismatched
    result.duration_s = round(clock() - started, 3)
    return result


def compare(sent: Mapping[str, Any], held: Mapping[str, Any] | None) -> tuple[VerificationOutcome, list[str]]:
    """
    Compare the traits sent with the profile's.

    :param held: the profile's traits, or ``None`` when no profile was found.
    :return: the outcome and the names of the sent traits that differ (sorted).
    """
    if held is None:
        return VerificationOutcome.MISSING, []
    differing = sorted(
        name
        for name, value in sent.items()
        if not (same_value(value, held[name]) if name in held else value is None)
    )
    return (VerificationOutcome.MISMATCHED if differing else VerificationOutcome.KEPT), differing


def same_value(sent: Any, held: Any) -> bool:
    """
    JSON equality: numbers by value (``1`` equals ``1.0``) but never booleans (``true`` is not ``1``),
    objects by keys and values, arrays in order.
    """
    if isinstance(sent, bool) or isinstance(held, bool):
        return isinstance(sent, bool) and isinstance(held, bool) and sent is held
    if isinstance(sent, int | float) and isinstance(held, int | float):
        return sent == held  # Python compares an int and a float by value, exactly
    if isinstance(sent, dict) and isinstance(held, dict):
        return sent.keys() == held.keys() and all(same_value(v, held[k]) for k, v in sent.items())
    if isinstance(sent, list) and isinstance(held, list):
        return len(sent) == len(held) and all(same_value(a, b) for a, b in zip(sent, held, strict=True))
    return type(sent) is type(held) and sent == held


def failure(result: VerificationResult, *, where: str, conn_id: str) -> VerificationFailed | None:
    """
    The error of a sample that found nothing kept (``sampled > 0`` and ``kept == 0``), else ``None``.

    :param where: the Profile API's base URL and space id (:attr:`SegmentProfileApiHook.where`).
    :param conn_id: the Profile API connection's id.
    """
    if not result.sampled or result.kept:
        return None
    causes = list(CAUSES_NOTHING_ARRIVED if result.missing else ()) + list(
        CAUSES_TRAITS_DIFFER if result.mismatched else ()
    )
    keys = ", ".join(p["primary_key"] for p in result.problems)
    return VerificationFailed(
        f"verify_sample: none of the {result.sampled:,} delivered records read back through the Profile API "
        f"(connection {conn_id!r}, {where}) holds what was sent: {result.missing:,} missing (no profile has "
        f"the record's user_id/anonymous_id), {result.mismatched:,} with other trait values. Segment accepted "
        "the messages with 200, so the loss happened after the tracking API. Likely causes:\n- "
        + "\n- ".join(causes)
        + f"\nRecords read: {keys}. State was committed; the next run will not send these records again "
        "unless they change (use full_refresh after fixing the cause)."
    )


def log_line(result: VerificationResult, where: str) -> str:
    """The task log's one line about the verification."""
    return (
        f"Verification through the Profile API ({where}): {result.sampled:,} sampled records read back, "
        f"{result.kept:,} kept, {result.missing:,} missing, {result.mismatched:,} mismatched, "
        f"{result.unverified:,} unverified; {result.requests:,} requests in {result.duration_s:g} s"
    )


def _external_id(message: Mapping[str, Any]) -> tuple[str, str] | None:
    for key, id_type in (("userId", "user_id"), ("anonymousId", "anonymous_id")):
        value = message.get(key)
        if value is not None and value != "":
            return id_type, value if isinstance(value, str) else json.dumps(value)
    return None


class Verification:
    """
    ``verify_sample`` for one run: the Profile API hook resolved before any row is read, the sample the run
    fills, and the read-back after it.

    :param size: ``verify_sample`` (>= 1).
    :param conn_id: the ``segment_profile_api`` connection.
    :param policy: the polling bounds.
    :param mappings: the compiled mappings (``name``, ``action``).
    :param space_conn_ids: mapping name -> the ``segment_profiles`` connection it sends to.
    :param verified_space: the ``segment_profiles`` connection whose Space the Profile API connection reads
        (the operator's ``segment_conn_id``): only Identify mappings sending there are sampled.
    :param timeout: ``(connect, read)`` HTTP timeouts in seconds.
    :param log: the task's logger.
    :raises ConfigurationError: the connection is missing, or lacks a token or space id, or names an
        unknown region.
    """

    def __init__(
        self,
        size: int,
        *,
        conn_id: str,
        policy: VerificationPolicy,
        mappings: Sequence[Any],
        space_conn_ids: Mapping[str, str],
        verified_space: str,
        timeout: tuple[float, float],
        log: Any,
    ) -> None:
        from airflow_provider_segment_profiles.hooks.profile_api import SegmentProfileApiHook

        self.conn_id = conn_id
        self.policy = policy
        self.log = log
        self.hook = SegmentProfileApiHook(
            conn_id, timeout=timeout, requests_per_second=policy.requests_per_second
        )
        try:
            self.hook.session  # noqa: B018 - resolves the connection, token, space id and region now
            self.where = self.hook.where
        except ConfigurationError as err:
            raise ConfigurationError(f"verify_sample: {err}") from err
        except Exception as err:  # the connection does not exist, or cannot be read
            raise ConfigurationError(
                f"verify_sample: Profile API connection {conn_id!r}: {self.hook._redact(str(err))}"
            ) from err
        names = [
            m.name
            for m in mappings
            if m.action == "send_identify" and space_conn_ids.get(m.name) == verified_space
        ]
        if not names:
            log.warning(
                "verify_sample: no send_identify mapping sends to %r, the Space the Profile API connection "
                "reads; nothing will be verified",
                verified_space,
            )
        self.sample = VerificationSample(size, names)

    def run(self) -> tuple[dict[str, Any], Exception | None]:
        """
        Verify the sample; log one line.

        :return: the summary's ``verification`` and the error to fail the task with (a
            :class:`VerificationFailed`, or the ``ConfigurationError`` of a refused token), else ``None``.
        """
        from airflow_provider_segment_profiles.exceptions import SegmentProfilesError

        try:
            result = verify(self.sample.profiles(), self.hook, self.policy)
        except SegmentProfilesError as err:  # 401/403: the token or the space id is wrong
            return off(), err
        finally:
            self.hook.close()
        self.log.info("%s", log_line(result, self.where))
        return result.to_summary(), failure(result, where=self.where, conn_id=self.conn_id)
