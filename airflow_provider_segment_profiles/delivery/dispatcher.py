"""Batching messages per Profile Space and keeping several requests in flight."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from queue import SimpleQueue
from typing import IO, TYPE_CHECKING, Any

from airflow_provider_segment_profiles.common.outcomes import Outcome
from airflow_provider_segment_profiles.delivery.limits import MAX_BATCH_ITEM_BYTES, MAX_BATCH_MESSAGES
from airflow_provider_segment_profiles.delivery.outcome import DeliveryResult

if TYPE_CHECKING:
    from airflow_provider_segment_profiles.delivery.rate_limit import TokenBucket
    from airflow_provider_segment_profiles.hooks.segment_profiles import SegmentProfilesHook


@dataclass(slots=True)
class Completion:
    """
    The outcome of one message (treat as read-only; not frozen because a frozen dataclass is twice as
    slow to create, and one is created per message).

    :param ref: the caller's reference given to :meth:`Dispatcher.add`.
    :param outcome: delivered, rejected or failed.
    :param reason: why it was not delivered (empty when delivered).
    """

    ref: Any
    outcome: Outcome
    reason: str = ""


class _Batch:
    __slots__ = ("items", "nbytes", "refs")

    def __init__(self) -> None:
        self.items: list[bytes] = []
        self.refs: list[Any] = []
        self.nbytes = 0


class Dispatcher:
    """
    Collects encoded messages into batches per Profile Space and sends them from a thread pool.

    At most ``max_in_flight`` requests run at once; :meth:`add` blocks while they are all busy, so memory
    stays bounded by ``max_in_flight + spaces`` batches whatever the number of records. Completions are
    handed back to the calling thread, which keeps all bookkeeping single-threaded.

    :param hooks: Profile Space connection id -> hook sending to it.
    :param batch_size: most messages per batch (<= 2,500; the run's ``SyncConfig.batch_size``).
    :param max_in_flight: most requests in flight (>= 1; ``SyncConfig.max_requests_in_flight``).
    :param rate_limiter: shared token bucket in events per second, or ``None``.
    :param dry_run_sink: when given, messages are written to it as NDJSON instead of being sent, and count
        as delivered.
    """

    def __init__(
        self,
        hooks: dict[str, SegmentProfilesHook],
        *,
        batch_size: int,
        max_in_flight: int,
        rate_limiter: TokenBucket | None = None,
        dry_run_sink: IO[bytes] | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH_MESSAGES:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_MESSAGES}")
        if max_in_flight < 1:
            raise ValueError("max_requests_in_flight must be >= 1")
        self.hooks = hooks
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight
        self.rate_limiter = rate_limiter
        self.dry_run_sink = dry_run_sink
        self.requests = 0
        self._batches: dict[str, _Batch] = {}
        self._futures: dict[Future[DeliveryResult], list[Any]] = {}
        # Futures put themselves here when they finish (from the pool's threads), so checking for
        # completions after each message costs one emptiness test instead of a lock per future in flight.
        self._finished: SimpleQueue[Future[DeliveryResult]] = SimpleQueue()
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="segment-profiles")

    def add(self, space: str, encoded: bytes, ref: Any) -> list[Completion]:
        """
        Queue one message for a Profile Space; return the completions that arrived meanwhile.

        :param space: key into ``hooks``.
        :param encoded: the message's compact UTF-8 JSON.
        :param ref: anything; handed back in the message's :class:`Completion`.
        """
        batch = self._batches.get(space)
        if batch is None:
            batch = self._batches[space] = _Batch()
        elif batch.nbytes + len(encoded) + 1 > MAX_BATCH_ITEM_BYTES:
            self._submit(space)
            batch = self._batches[space] = _Batch()
        batch.items.append(encoded)
        batch.refs.append(ref)
        batch.nbytes += len(encoded) + 1
        if len(batch.items) >= self.batch_size:
            self._submit(space)
            del self._batches[space]
        return self._collect(block=len(self._futures) >= self.max_in_flight)

    def poll(self) -> list[Completion]:
        """Completions that have arrived, without waiting."""
        return self._collect(block=False)

    def flush(self) -> list[Completion]:
        """Send every partial batch and wait for all requests; return their completions."""
        for space in list(self._batches):
            self._submit(space)
        self._batches.clear()
        completions: list[Completion] = []
        while self._futures:
            completions.extend(self._collect(block=True))
        return completions

    def close(self) -> None:
        """Stop the pool; requests already running finish or fail on their own timeouts."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _submit(self, space: str) -> None:
        batch = self._batches[space]
        if not batch.items:
            return
        if self.dry_run_sink is not None:
            self.dry_run_sink.write(b"\n".join(batch.items) + b"\n")
            future: Future[DeliveryResult] = Future()
            future.set_result(DeliveryResult(delivered=list(range(len(batch.items)))))
        else:
            future = self._pool.submit(
                self.hooks[space].send_encoded, batch.items, rate_limiter=self.rate_limiter
            )
        self._futures[future] = batch.refs
        future.add_done_callback(self._finished.put)

    def _collect(self, block: bool) -> list[Completion]:
        finished = self._finished
        if finished.empty():
            if not block or not self._futures:
                return []
            done = [finished.get()]  # blocks until a request finishes
        else:
            done = []
        while not finished.empty():
            done.append(finished.get())
        completions: list[Completion] = []
        for future in done:
            refs = self._futures.pop(future)
            result = future.result()
            self.requests += result.requests
            completions.extend([Completion(refs[i], Outcome.DELIVERED) for i in result.delivered])
            completions.extend(
                [Completion(refs[p.index], Outcome.REJECTED, p.reason) for p in result.rejected]
            )
            completions.extend([Completion(refs[p.index], Outcome.FAILED, p.reason) for p in result.failed])
        return completions
