"""The outcome of one message a mapping selected: one word for delivery, settling, the summary and the sync log."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """
    What became of one message a mapping selected: ``delivered`` (Segment answered 2xx, or a dry run wrote
    it), ``rejected`` (bad data: it could not become a valid call, or is too large), ``failed`` (it could
    not be delivered: a 4xx or the retries ran out), ``skipped`` (the record had nothing to send through
    the mapping: nothing was sent, and it is not bad data).
    """

    DELIVERED = "delivered"
    REJECTED = "rejected"
    FAILED = "failed"
    SKIPPED = "skipped"
