"""
What the emulator accepted, for a person at a command line: an NDJSON file written as messages arrive,
and a read-only listing over HTTP.

``GET /messages`` (next to ``/v1``, not part of Segment's API) answers ``{"count": n, "messages": [...]}``
with the accepted messages in arrival order, as recorded (``writeKey`` removed). ``userId`` and ``type``
filter the list; a parameter given several times matches any of its values, and ``userId`` compares as text
(a numeric ``userId`` matches its digits)::

    GET /messages?userId=42&type=identify&type=track

``GET /dropped`` answers ``{"count": n, "dropped": [{"reason", "path", "message"}, ...]}``: the messages
Segment would have answered 200 and then lost (unknown write key, duplicate ``messageId``, Unify's ingestion
rules, ...), in arrival order, so a DAG test against the emulator shows the loss. ``reason`` filters it
(repeatable)::

    GET /dropped?reason=duplicate_message_id&reason=too_many_traits

Both need no write key and never show one: messages are recorded without their ``writeKey``, and nothing
about the request's credentials is listed. It is not recorded in :attr:`SegmentEmulator.requests`, and no
fault applies to it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from typing import IO, Any
from urllib.parse import parse_qs

#: The listing's path.
MESSAGES_PATH = "/messages"
#: Query parameters that filter the listing.
FILTERS = ("userId", "type")
#: The drops' listing path, and its filter.
DROPPED_PATH = "/dropped"
DROPPED_FILTERS = ("reason",)


def list_messages(messages: Iterable[dict[str, Any]], query: str) -> tuple[int, bytes]:
    """
    The reply to ``GET /messages?<query>``.

    :param messages: the accepted messages, in arrival order.
    :param query: the URL's query string, without ``?``.
    :return: ``(status, JSON body)``: ``200`` with ``{"count", "messages"}``, or ``400`` with
        ``{"code", "message"}`` for a parameter other than :data:`FILTERS`. Parameter names other than those
        are not repeated in the reply.
    """
    params = parse_qs(query, keep_blank_values=True)
    unknown = [name for name in params if name not in FILTERS]
    if unknown:
        hint = [allowed for allowed in FILTERS if any(name.lower() == allowed.lower() for name in unknown)]
        message = (
            f"only {' and '.join(FILTERS)} filter the listing; {len(unknown)} other parameter(s) given"
            + (f" (names are case-sensitive: {', '.join(hint)})" if hint else "")
        )
        return 400, json.dumps({"code": "invalid_request", "message": message}).encode()
    users = set(params.get("userId", ()))
    types = set(params.get("type", ()))
    selected = [
        message
        for message in messages
        if (not users or _text(message.get("userId")) in users)
        and (not types or message.get("type") in types)
    ]
    return 200, json.dumps({"count": len(selected), "messages": selected}).encode()


def list_dropped(dropped: Iterable[Any], query: str) -> tuple[int, bytes]:
    """
    The reply to ``GET /dropped?<query>``.

    :param dropped: the emulator's :class:`~.emulator.DroppedMessage` records, in arrival order.
    :param query: the URL's query string, without ``?``.
    :return: ``(status, JSON body)``: ``200`` with ``{"count", "dropped"}``, or ``400`` with ``{"code",
        "message"}`` for a parameter other than ``reason``.
    """
    params = parse_qs(query, keep_blank_values=True)
    if any(name not in DROPPED_FILTERS for name in params):
        message = "only reason filters the listing of dropped messages"
        return 400, json.dumps({"code": "invalid_request", "message": message}).encode()
    reasons = set(params.get("reason", ()))
    selected = [
        {"reason": drop.reason.value, "path": drop.path, "message": drop.message}
        for drop in dropped
        if not reasons or drop.reason.value in reasons
    ]
    return 200, json.dumps({"count": len(selected), "dropped": selected}).encode()


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, bool) else str(value)


class NdjsonWriter:
    """
    Appends accepted messages to a file, one compact JSON object per line, flushed after each request so a
    reader (``tail -f``, ``jq``) sees them as they arrive.

    :param path: the file; created if missing, appended to if it exists.
    :raises OSError: when the file cannot be opened for appending.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._file: IO[bytes] | None = open(self.path, "ab")  # noqa: SIM115 - closed by close()
        self._lock = threading.Lock()

    def write(self, messages: Iterable[dict[str, Any]]) -> None:
        """Append ``messages`` and flush; does nothing after :meth:`close`."""
        lines = []
        for message in messages:
            text = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
            try:
                lines.append(text.encode("utf-8") + b"\n")
            except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape: keep it escaped
                lines.append(json.dumps(message, separators=(",", ":")).encode("ascii") + b"\n")
        with self._lock:
            if self._file is not None:
                self._file.write(b"".join(lines))
                self._file.flush()

    def close(self) -> None:
        """Close the file; safe to call twice."""
        with self._lock:
            file, self._file = self._file, None
        if file is not None:
            file.close()
