"""A thread-safe token bucket that keeps the event rate sent to Segment under a limit."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """
    Token bucket in events per second, shared by every request in flight.

    The bucket starts empty and holds at most ``capacity`` tokens, so over any window starting at creation
    the events released never exceed ``rate * elapsed``: the limit is never overshot, even at start.
    Segment Engage's inbound limit is 1,000 events per second per Profile Space
    (https://segment.com/docs/engage/product-limits/).

    :param rate: events per second (> 0).
    :param capacity: most tokens kept while idle (defaults to one second's worth).
    :param clock: monotonic clock in seconds; injectable for tests.
    :param sleep: sleep function in seconds; injectable for tests.
    """

    def __init__(
        self,
        rate: float,
        capacity: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0 events per second")
        self.rate = float(rate)
        self.capacity = float(capacity if capacity is not None else rate)
        self._clock = clock
        self._sleep = sleep
        self._tokens = 0.0
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self, events: int) -> float:
        """
        Block until ``events`` tokens are available and take them.

        Requests larger than ``capacity`` are allowed: the bucket goes into debt and later callers wait
        for it to be repaid, which keeps the long-run rate exact.

        :return: seconds spent waiting.
        """
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= events
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait
