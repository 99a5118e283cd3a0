"""
Segment's documented limits, in one place: every check of the product that follows from one cites it here.

Tracking API sizes: https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/#max-request-size
("There is a maximum of 32KB per call ... The batch API endpoint accepts a maximum of 500KB per request,
with a limit of 32KB per event in the batch ... no more than 2500 events per batch").
"""

from __future__ import annotations

#: Largest single message Segment accepts, in UTF-8 bytes of its compact JSON; analytics-python uses the same
#: 32 << 10 bytes (``consumer.py`` ``MAX_MSG_SIZE``).
MAX_MESSAGE_BYTES = 32 * 1024
#: Most events Segment accepts in one ``/v1/batch`` request.
MAX_BATCH_MESSAGES = 2500
#: Budget for the sum of message sizes in one request, in bytes. Segment's limit is 500 KB for the whole
#: body; like analytics-python (``BATCH_SIZE_LIMIT = 475000``) we keep 25,000 bytes for the envelope
#: (``{"batch":[...],"sentAt":...}``, commas).
MAX_BATCH_ITEM_BYTES = 475_000

# Unify's ingestion rules: Segment answers 200 and then loses these messages (segment-docs
# ``src/unify/profile-api-limits.md``, 2023-06, "Identity" table and "Unify ingestion limitations"); the
# checks are in ``actions/ingestion_limits.py``.
#: Most traits one Identify may carry: "Engage rejects Identify events with 300 or more traits".
MAX_IDENTIFY_TRAITS = 299
#: Most traits (group, subscriptions) or properties (track) of other calls: "Events have more than 300
#: properties/traits" are dropped.
MAX_TRAITS_OR_PROPERTIES = 300
#: Longest ``groupId`` Unify keeps: "The groupId has more than 500 characters" is dropped.
MAX_GROUP_ID_CHARS = 500
#: Segment's limit on a ``messageId``: "messageId is longer than 100 characters" is dropped.
MAX_MESSAGE_ID_CHARS = 100
