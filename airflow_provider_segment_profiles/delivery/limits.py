"""How messages are grouped into ``/v1/batch`` requests within Segment's size limits (``common/segment_limits.py``).

Source: https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/#max-request-size
("There is a maximum of 32KB per call ... The batch API endpoint accepts a maximum of 500KB per request,
with a limit of 32KB per event in the batch ... no more than 2500 events per batch").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from airflow_provider_segment_profiles.common.segment_limits import (
    MAX_BATCH_ITEM_BYTES,
    MAX_BATCH_MESSAGES,
    MAX_MESSAGE_BYTES,
)

__all__ = [
    "DEFAULT_MAX_IN_FLIGHT",
    "MAX_BATCH_ITEM_BYTES",
    "MAX_BATCH_MESSAGES",
    "MAX_MESSAGE_BYTES",
    "plan_requests",
]

#: Default number of ``/v1/batch`` requests in flight. Round trips to the tracking API from a cloud worker
#: take tens to hundreds of milliseconds; 16 requests of 500 events keep a sync above 80% of its
#: zero-latency throughput at 100 ms (docs/benchmarks.md, "Latency hiding"), far below Segment's
#: 1,000 requests per second per workspace (https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/#rate-limits).
DEFAULT_MAX_IN_FLIGHT = 16


def plan_requests(
    sizes: Sequence[int],
    *,
    max_messages: int = MAX_BATCH_MESSAGES,
    max_bytes: int = MAX_BATCH_ITEM_BYTES,
) -> Iterator[list[int]]:
    """
    Group message indexes, in order, into requests that respect the count and byte limits.

    :param sizes: UTF-8 byte size of each message's JSON; every size must be <= ``max_bytes``.
    :param max_messages: most messages per request (<= 2,500).
    :param max_bytes: most bytes of messages per request.
    :return: lists of indexes into ``sizes``; each list is one request.
    """
    current: list[int] = []
    current_bytes = 0
    for index, size in enumerate(sizes):
        # +1 for the comma that joins items in the body.
        if current and (len(current) >= max_messages or current_bytes + size + 1 > max_bytes):
            yield current
            current, current_bytes = [], 0
        current.append(index)
        current_bytes += size + 1
    if current:
        yield current
