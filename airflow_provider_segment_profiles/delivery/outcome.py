"""What happened to each message handed to the hook: delivered, rejected before sending, or failed."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class MessageProblem:
    """
    A message that did not reach Segment.

    :param index: position of the message in the sequence given to the hook (0-based).
    :param reason: readable cause, e.g. ``"message is 40,112 bytes; Segment accepts at most 32,768"`` or
        ``"HTTP 400 from Segment: {...}"``; never contains the write key.
    """

    index: int
    reason: str


@dataclass(slots=True)
class DeliveryResult:
    """
    Accounting for a sequence of messages given to :class:`SegmentProfilesHook`.

    Every index ``0 .. n-1`` of the input appears in exactly one of ``delivered``, ``rejected`` or
    ``failed``, so ``total == n``.

    :param delivered: indexes Segment answered 2xx for.
    :param rejected: messages refused before sending (over Segment's 32 KB message limit).
    :param failed: messages whose request failed permanently (4xx) or after the retry budget ran out.
    :param requests: HTTP requests made, retries included.
    """

    delivered: list[int] = field(default_factory=list)
    rejected: list[MessageProblem] = field(default_factory=list)
    failed: list[MessageProblem] = field(default_factory=list)
    requests: int = 0

    @property
    def total(self) -> int:
        """Number of messages accounted for."""
        return len(self.delivered) + len(self.rejected) + len(self.failed)
