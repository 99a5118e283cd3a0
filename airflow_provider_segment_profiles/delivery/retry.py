"""When and how long to wait before retrying a request to Segment's tracking API.

Segment asks clients to retry 429 after the ``Retry-After`` / ``X-RateLimit-Reset`` seconds and to back off
on 5xx and network errors (https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/#rate-limits,
https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/#errors); other 4xx are
permanent. The backoff is exponential with full jitter (a random wait between 0 and the exponential cap).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

#: Statuses worth retrying: rate limited, request timeout, and every server error.
RETRYABLE_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """
    Bounds of the retry loop for one request.

    :param max_attempts: most tries of one request, the first included (>= 1).
    :param base_delay_s: cap of the first backoff wait, in seconds; doubles each retry.
    :param max_delay_s: cap of any single backoff wait, in seconds.
    :param max_total_s: give up when the next wait would end later than this many seconds after the first
        try started.
    :param max_retry_after_s: longest ``Retry-After`` honoured, in seconds; longer values are capped.
    """

    max_attempts: int = 8
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    max_total_s: float = 300.0
    max_retry_after_s: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if min(self.base_delay_s, self.max_delay_s, self.max_total_s, self.max_retry_after_s) < 0:
            raise ValueError("retry delays must be >= 0 seconds")

    @classmethod
    def coerce(cls, value: RetryPolicy | Mapping[str, float] | None) -> RetryPolicy:
        """Accept a policy, a dict of its fields (from a DAG's JSON), or ``None`` for the defaults."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        return cls(**dict(value))

    def backoff_s(self, retry_number: int, rng: Callable[[float, float], float] = random.uniform) -> float:
        """
        Full-jitter wait before retry ``retry_number`` (1 for the first retry), in seconds.

        :param rng: ``uniform(a, b)``; injectable so tests can pin the jitter.
        """
        cap = min(self.max_delay_s, self.base_delay_s * (2 ** (retry_number - 1)))
        return rng(0.0, cap)


def parse_retry_after(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """
    Seconds the server asked us to wait, from ``Retry-After`` or ``X-RateLimit-Reset``.

    ``Retry-After`` may be delta-seconds or an HTTP-date (RFC 9110 §10.2.3). Segment documents
    ``X-RateLimit-Reset`` in seconds; a value larger than 10^9 is read as a Unix time, smaller as a delay.

    :param headers: response headers (case-insensitive mapping, as ``requests`` gives).
    :param now: current Unix time in seconds; injectable for tests.
    :return: seconds to wait (>= 0), or ``None`` when neither header is usable.
    """
    value = headers.get("Retry-After")
    if value:
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - now())
            except (TypeError, ValueError, IndexError, OverflowError):
                pass
    reset = headers.get("X-RateLimit-Reset")
    if reset:
        try:
            seconds = float(reset.strip())
        except ValueError:
            return None
        return max(0.0, seconds - now()) if seconds > 1e9 else max(0.0, seconds)
    return None
