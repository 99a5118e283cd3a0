"""
A local stand-in for Segment's HTTP Tracking API (TAPI), for tests, demos and benchmarks.

:class:`SegmentEmulator` serves ``POST /v1/batch`` and the single-message endpoints ``/v1/identify``,
``/v1/track``, ``/v1/group``, ``/v1/page``, ``/v1/screen`` and ``/v1/alias`` on 127.0.0.1, records what it
accepts, and can be told to fail, stall or drop requests.

The behaviour follows Segment's public documentation:

- HTTP API, https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/ :
  authentication (``Authorization: Basic base64(writeKey + ":")`` or ``writeKey`` in the body), the
  ``application/json`` content type, the size limits (32 KB per request or event, 500 KB and 2,500 events
  per batch), the batch-level ``context``/``integrations`` that apply to every item, and the error
  rule "``200`` for everything except oversized payloads and invalid JSON, which get ``400``".
- Delivery Overview, https://segment.com/docs/connections/delivery-overview/ ("Failed on Ingest"): the
  discard codes used as :class:`DropReason` values (``project_not_found``, ``no_user_anon_id``,
  ``event_not_defined`` ...).
- Rate limits, https://segment.com/docs/connections/rate-limits/ : ``429`` with ``Retry-After`` and
  ``X-RateLimit-Reset``, which :meth:`SegmentEmulator.fail_next` reproduces on demand.
- Duplicate data, https://segment.com/docs/guides/duplicate-data/ : Segment de-duplicates by
  ``messageId``, and "the message de-duplication is not scoped to a specific source or a workspace, and
  applies to all events being received by Segment". So does the emulator, across every write key it
  serves, for as long as it runs (Segment keeps at least 24 hours of ids; :meth:`SegmentEmulator.reset`
  forgets them): a message whose ``messageId`` was accepted before, under any key, gets ``200`` and is
  recorded in :attr:`SegmentEmulator.dropped` with reason ``duplicate_message_id``. Pass
  ``deduplicate=False`` to record every copy instead (a test can then count repeats with
  :meth:`SegmentEmulator.message_ids`).
- Unify's ingestion rules, segment-docs ``src/unify/profile-api-limits.md`` ("Identity" table and "Unify
  ingestion limitations"): "Engage rejects Identify events with 300 or more traits", and Unify "will
  silently drop events if: The groupId has more than 500 characters. Events have more than 300
  properties/traits. messageId is longer than 100 characters. The groupId is empty in a group call or
  context.groupId is empty in a track call." Such a message gets ``200`` and is recorded in
  :attr:`SegmentEmulator.dropped` (reasons ``too_many_traits``, ``too_many_properties``,
  ``group_id_too_long``, ``message_id_too_long``, ``group_id_not_defined``, ``context_group_id_empty``;
  the emulator's names, Segment does not publish codes for these). Traits and properties are counted as
  the object's top-level keys.

Choices made where the documentation is silent (each is a deliberate, tested behaviour):

- A write key is taken from a ``Basic`` header first, else from the body's ``writeKey``. The header must
  decode to ``writeKey:`` with the colon, as the docs show; a header without it yields no key. An empty
  or missing key gets ``400 missing_write_key``. A non-empty key the emulator does not know gets
  ``200 {"success": true}`` and its messages are recorded in :attr:`SegmentEmulator.dropped` with reason
  ``project_not_found`` (what Segment does); with ``strict=True`` it gets ``401`` instead. ``Bearer``
  tokens are not verified.
- ``Content-Type`` must be ``application/json`` (parameters such as ``charset`` are allowed), else
  ``400``. ``Content-Encoding: gzip`` bodies are accepted; any other encoding gets ``400``. **Sizes are
  measured after decompression**: Segment's limits describe the payload, and a client must not be able
  to pass the 500 KB check by compressing.
- Request size: the whole decompressed body of ``/batch`` may be at most 512,000 bytes (500 KB); a
  single-message endpoint's body at most 32,768 bytes. An event inside a batch is measured as the UTF-8
  length of its compact re-serialisation (``json.dumps(item, separators=(",", ":"),
  ensure_ascii=False)``), so client whitespace does not count; over 32,768 bytes rejects the request
  with ``400``.
- Invalid JSON (including ``NaN``/``Infinity``, which are not JSON, and non-UTF-8 bytes) and a body that
  is not a JSON object get ``400 invalid_json``.
- ``batch`` must be a list whose items are objects with a string ``type`` (the docs say each item
  *must* have one), else ``400 invalid_request`` for the whole request: a structural error, like bad
  JSON. An empty batch is ``200`` with nothing recorded (Segment's ``empty_batch``).
- More than 2,500 events in one batch: ``200``, and every event is dropped with reason
  ``too_many_events`` (the docs: "returns a 200 response but rejects the event").
- Per-message validation never fails the request (``200``); an invalid message is dropped with a
  :class:`DropReason` while its valid siblings are accepted: no ``userId``/``anonymousId``
  (``no_user_anon_id``; ``""`` counts as missing), track without ``event`` or with a non-string one,
  group without ``groupId``, alias without ``previousId``, ``traits``/``properties`` that are not
  objects, or an unknown ``type``.
- Batch-level ``context`` and ``integrations`` are merged one level deep into each item, the item's own
  keys winning; batch-level ``sentAt`` is copied onto items that lack one. For single-message endpoints
  ``type`` is set from the path. ``writeKey`` is removed from recorded messages. Nothing else is added
  (no ``messageId``, ``receivedAt``): recorded messages are what the client sent.
- Timestamps and Protocols tracking plans are not checked.

Not part of Segment's API, for a person watching a run: ``GET /messages`` lists the accepted messages
(filters ``userId`` and ``type``), ``GET /dropped`` the messages answered 200 and dropped, with the reason
(filter ``reason``), and ``messages_file`` appends each accepted message to an NDJSON file as
it arrives (:mod:`~airflow_provider_segment_profiles.testing.inspection`). Neither needs nor shows a write
key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import os
import selectors
import socket
import socketserver
import struct
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from airflow_provider_segment_profiles.testing.inspection import (
    DROPPED_PATH,
    MESSAGES_PATH,
    NdjsonWriter,
    list_dropped,
    list_messages,
)
from airflow_provider_segment_profiles.testing.profile_api import SPACES_PREFIX, ProfileApi, ProfileSpace

log = logging.getLogger(__name__)

# Segment's limits as the emulator enforces them. Written here from Segment's docs, not imported from
# ``common/segment_limits.py``: the emulator is the tests' model of Segment, so a wrong limit in the product
# fails a test against it instead of being mirrored by it.
#: Largest decompressed ``/v1/batch`` request body Segment accepts, in bytes (500 KB).
MAX_BATCH_BYTES = 512_000
#: Largest single event, and largest single-message request body, in bytes (32 KB).
MAX_EVENT_BYTES = 32_768
#: Most events one ``/v1/batch`` request may carry.
MAX_BATCH_EVENTS = 2_500
#: Message types, each also served as ``/v1/<type>``.
MESSAGE_TYPES = frozenset({"identify", "track", "group", "page", "screen", "alias"})
#: Unify's ingestion limits (segment-docs ``src/unify/profile-api-limits.md``): an Identify with this many
#: traits or more is rejected; other events with more traits/properties than the next are dropped, and so
#: are ``groupId`` and ``messageId`` values longer than the last two.
IDENTIFY_TRAITS_REJECTED_FROM = 300
MAX_TRAITS_OR_PROPERTIES = 300
MAX_GROUP_ID_CHARS = 500
MAX_MESSAGE_ID_CHARS = 100

_ENDPOINTS = frozenset({"batch", *MESSAGE_TYPES})
_ALLOWED_HOSTS = frozenset({"127.0.0.1", "localhost"})
_BIND_HOST = "127.0.0.1"
# Hard cap on what the server reads into memory for one request (bytes), compressed or not.
_MAX_READ_BYTES = 16 * 1024 * 1024
_SUCCESS = b'{"success":true}'
_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode


class DropReason(StrEnum):
    """Why an event answered with ``200`` was not accepted (codes from Segment's Delivery Overview)."""

    UNKNOWN_WRITE_KEY = "project_not_found"
    TOO_MANY_EVENTS = "too_many_events"
    NO_USER_ANON_ID = "no_user_anon_id"
    EVENT_NOT_DEFINED = "event_not_defined"
    EVENT_NOT_STRING = "event_not_string"
    GROUP_ID_NOT_DEFINED = "group_id_not_defined"
    PREVIOUS_ID_NOT_DEFINED = "previous_id_not_defined"
    TRAITS_NOT_OBJECT = "traits_not_object"
    PROPERTIES_NOT_OBJECT = "properties_not_object"
    INVALID_TYPE = "invalid_type"
    #: The emulator's names for what Segment drops without a published code (duplicate data, Unify's limits).
    DUPLICATE_MESSAGE_ID = "duplicate_message_id"
    TOO_MANY_TRAITS = "too_many_traits"
    TOO_MANY_PROPERTIES = "too_many_properties"
    GROUP_ID_TOO_LONG = "group_id_too_long"
    MESSAGE_ID_TOO_LONG = "message_id_too_long"
    CONTEXT_GROUP_ID_EMPTY = "context_group_id_empty"


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """
    One HTTP request the emulator received.

    :param path: request path without the query string, e.g. ``/v1/batch``.
    :param status: status code sent back; ``None`` when the connection was dropped without a reply.
    :param events: number of events in the body; ``0`` when the body was not parsed.
    :param accepted: number of events recorded in :attr:`SegmentEmulator.messages`.
    :param body_bytes: body size after decompression, in bytes; ``None`` if it could not be decompressed.
    :param gzip: whether the body was sent with ``Content-Encoding: gzip``.
    :param has_auth_header: whether an ``Authorization`` header was sent.
    :param authorization: the raw ``Authorization`` header (kept out of ``repr``).
    :param received_at: arrival time, seconds since the epoch.
    :param client_port: the client's source port; equal ports mean a reused keep-alive connection.
    :param fault: the injected fault that shaped the reply (``fail_next``, ``fail_user``, ``drop``), if any.
    """

    path: str
    status: int | None
    events: int
    accepted: int
    body_bytes: int | None
    gzip: bool
    has_auth_header: bool
    authorization: str | None = field(repr=False)
    received_at: float
    client_port: int
    fault: str | None = None


@dataclass(frozen=True, slots=True)
class DroppedMessage:
    """
    An event that got a ``200`` reply but was not accepted, as Segment would silently discard it.

    :param message: the event as received (after batch-level merges).
    :param reason: why it was dropped.
    :param path: request path it arrived on.
    """

    message: dict[str, Any]
    reason: DropReason
    path: str


@dataclass(slots=True)
class _Failure:
    status: int
    headers: dict[str, str]
    body: bytes
    remaining: int | None  # None: until clear_faults()


@dataclass(slots=True)
class _Outcome:
    status: int
    body: bytes = _SUCCESS
    headers: Mapping[str, str] | None = None
    events: int = 0
    body_bytes: int | None = None
    write_key: str | None = None
    accepted: list[dict[str, Any]] | None = None
    dropped: list[DroppedMessage] | None = None
    fault: str | None = None


class _Reject(Exception):
    """A request-level error reply (4xx), raised while reading or validating a request."""

    def __init__(self, status: int, code: str, message: str, events: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.events = events


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"code": code, "message": message}).encode()


def _status_code_name(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return f"http_{status}"


def _encoded_size(item: dict[str, Any]) -> int:
    text = _compact(item)
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _blank(value: object) -> bool:
    return value is None or value == ""


def _drop_reason(message: dict[str, Any]) -> DropReason | None:
    """Return why Segment would discard ``message``, or ``None`` if it is acceptable."""
    kind = message["type"]
    if kind not in MESSAGE_TYPES:
        return DropReason.INVALID_TYPE
    if _blank(message.get("userId")) and _blank(message.get("anonymousId")):
        return DropReason.NO_USER_ANON_ID
    if kind == "track":
        event = message.get("event")
        if _blank(event):
            return DropReason.EVENT_NOT_DEFINED
        if not isinstance(event, str):
            return DropReason.EVENT_NOT_STRING
    elif kind == "group":
        if _blank(message.get("groupId")):
            return DropReason.GROUP_ID_NOT_DEFINED
    elif kind == "alias" and _blank(message.get("previousId")):
        return DropReason.PREVIOUS_ID_NOT_DEFINED
    traits = message.get("traits")
    if traits is not None and not isinstance(traits, dict):
        return DropReason.TRAITS_NOT_OBJECT
    properties = message.get("properties")
    if properties is not None and not isinstance(properties, dict):
        return DropReason.PROPERTIES_NOT_OBJECT
    return _unify_drop_reason(message, kind, traits, properties)


def _unify_drop_reason(
    message: dict[str, Any], kind: str, traits: dict[str, Any] | None, properties: dict[str, Any] | None
) -> DropReason | None:
    """Unify's ingestion rules (module docstring): the reason a well-formed event is still dropped."""
    if traits:
        limit = IDENTIFY_TRAITS_REJECTED_FROM - 1 if kind == "identify" else MAX_TRAITS_OR_PROPERTIES
        if len(traits) > limit:
            return DropReason.TOO_MANY_TRAITS
    if properties and len(properties) > MAX_TRAITS_OR_PROPERTIES:
        return DropReason.TOO_MANY_PROPERTIES
    group_id = message.get("groupId")
    if isinstance(group_id, str) and len(group_id) > MAX_GROUP_ID_CHARS:
        return DropReason.GROUP_ID_TOO_LONG
    message_id = message.get("messageId")
    if isinstance(message_id, str) and len(message_id) > MAX_MESSAGE_ID_CHARS:
        return DropReason.MESSAGE_ID_TOO_LONG
    if kind == "track":
        context = message.get("context")
        if isinstance(context, dict) and "groupId" in context and _blank(context["groupId"]):
            return DropReason.CONTEXT_GROUP_ID_EMPTY
    return None


def _write_key(authorization: str | None, payload: dict[str, Any]) -> str | None:
    """Return the write key of a request: ``Basic`` header first, then the body's ``writeKey``."""
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            key, colon, _ = decoded.partition(":")
            if key and colon:
                return key
    key = payload.get("writeKey")
    return key if isinstance(key, str) and key else None


def _decode_body(raw: bytes, encoding: str) -> bytes:
    """Return the decompressed body; raise :class:`_Reject` for an unsupported or broken encoding."""
    if encoding in ("", "identity"):
        return raw
    if encoding != "gzip":
        raise _Reject(400, "invalid_request", "Content-Encoding must be gzip or absent")
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        body = decompressor.decompress(raw, _MAX_READ_BYTES)
    except zlib.error as exc:
        raise _Reject(400, "invalid_request", f"gzip body cannot be decompressed: {exc}") from None
    if decompressor.unconsumed_tail:
        raise _Reject(400, "payload_too_large", f"gzip body inflates to over {_MAX_READ_BYTES} bytes")
    if not decompressor.eof or decompressor.unused_data:
        raise _Reject(400, "invalid_request", "gzip body is truncated or has trailing data")
    return body


def _prepare_batch(items: list[Any], payload: dict[str, Any]) -> None:
    """
    Check every batch item's shape and size, then apply the batch-level fields to it in place.

    :raises _Reject: 400 when an item is not an object with a string ``type`` or is over 32,768 bytes.
    """
    count = len(items)
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise _Reject(
                400, "invalid_request", f'batch[{index}] must be an object with a string "type"', count
            )
        size = _encoded_size(item)
        if size > MAX_EVENT_BYTES:
            raise _Reject(
                400,
                "payload_too_large",
                f"batch[{index}] is {size} bytes; an event may be at most {MAX_EVENT_BYTES} bytes",
                count,
            )
    context = payload.get("context")
    integrations = payload.get("integrations")
    sent_at = payload.get("sentAt")
    merge_context = isinstance(context, dict) and bool(context)
    merge_integrations = isinstance(integrations, dict) and bool(integrations)
    for item in items:
        item.pop("writeKey", None)
        if merge_context:
            own = item.get("context")
            item["context"] = {**context, **own} if isinstance(own, dict) else dict(context)
        if merge_integrations:
            own = item.get("integrations")
            item["integrations"] = {**integrations, **own} if isinstance(own, dict) else dict(integrations)
        if sent_at is not None and "sentAt" not in item:
            item["sentAt"] = sent_at


def _make_failure(
    status: int,
    retry_after: float | str | None,
    headers: Mapping[str, str] | None,
    body: bytes | str | Mapping[str, Any] | None,
    remaining: int | None,
) -> _Failure:
    if not 200 <= status <= 599 or status in (204, 304):
        # 1xx, 204 and 304 replies cannot carry the body, which would break keep-alive framing.
        raise ValueError(f"status must be 200-599 other than 204 and 304, got {status!r}")
    reply_headers = dict(headers or {})
    if retry_after is not None:
        if isinstance(retry_after, str):
            reply_headers["Retry-After"] = retry_after
        else:
            reply_headers["Retry-After"] = f"{retry_after:g}"
    if body is None:
        payload = _error_body(_status_code_name(status), f"injected fault: HTTP {status}")
    elif isinstance(body, bytes):
        payload = body
    elif isinstance(body, str):
        payload = body.encode()
    else:
        payload = json.dumps(body).encode()
    return _Failure(status, reply_headers, payload, remaining)


def _check_count(count: int) -> None:
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")


def _check_seconds(seconds: float, name: str) -> float:
    if not seconds >= 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {seconds!r}")
    return float(seconds)


class _Handler(BaseHTTPRequestHandler):
    """Request handler: reads the request, applies transport faults, and writes the reply."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)

    def version_string(self) -> str:
        return "SegmentEmulator"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silence the default per-request stderr line."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("segment emulator: " + format, *args)

    def do_POST(self) -> None:
        emulator = self.server.emulator
        received_at = time.time()
        path = self.path.partition("?")[0]
        endpoint = path[4:] if path.startswith("/v1/") else ""
        encoding = (self.headers.get("Content-Encoding") or "").strip().lower()
        outcome: _Outcome
        try:
            raw = self._read_body()
        except _Reject as exc:
            self.close_connection = True
            outcome = _Outcome(exc.status, _error_body(exc.code, exc.message))
        else:
            if endpoint not in _ENDPOINTS:
                outcome = _Outcome(404, _error_body("not_found", f"no endpoint at {path}"))
            elif emulator._take_drop():
                self._abort()
                outcome = _Outcome(0, fault="drop")
            else:
                delay = emulator._take_delay()
                if delay:
                    time.sleep(delay)
                outcome = emulator._process(endpoint, self.headers, raw, encoding)
        authorization = self.headers.get("Authorization")
        emulator._record(
            RecordedRequest(
                path=path,
                status=outcome.status or None,
                events=outcome.events,
                accepted=len(outcome.accepted or ()),
                body_bytes=outcome.body_bytes,
                gzip=encoding == "gzip",
                has_auth_header=authorization is not None,
                authorization=authorization,
                received_at=received_at,
                client_port=self.client_address[1],
                fault=outcome.fault,
            ),
            outcome,
        )
        if outcome.status:
            self._reply(outcome.status, outcome.body, outcome.headers)

    def _not_allowed(self) -> None:
        self.close_connection = True
        self._reply(405, _error_body("method_not_allowed", "the tracking API only accepts POST"))

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path.startswith(SPACES_PREFIX):  # the Profile API (testing/profile_api.py)
            profile_api = self.server.emulator.profile_api
            self._reply(*profile_api.handle_get(self.path, self.headers.get("Authorization")))
            return
        if path == MESSAGES_PATH:
            status, body = list_messages(self.server.emulator.messages, query)
        elif path == DROPPED_PATH:
            status, body = list_dropped(self.server.emulator.dropped, query)
        else:
            self._not_allowed()
            return
        self._reply(status, body)

    do_PUT = do_PATCH = do_DELETE = _not_allowed

    def _reply(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if headers:
            for name, value in headers.items():
                self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _abort(self) -> None:
        """Close the connection with a TCP reset and no reply at all."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            raise _Reject(411, "length_required", "send Content-Length or Transfer-Encoding: chunked")
        try:
            size = int(length)
        except ValueError:
            raise _Reject(400, "invalid_request", "Content-Length is not a number") from None
        if size < 0 or size > _MAX_READ_BYTES:
            raise _Reject(400, "payload_too_large", f"request body is over {_MAX_READ_BYTES} bytes")
        body = self.rfile.read(size)
        if len(body) != size:
            raise _Reject(400, "invalid_request", "request body is shorter than Content-Length")
        return body

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _Reject(400, "invalid_request", "malformed chunked body") from None
            if size < 0:
                raise _Reject(400, "invalid_request", "malformed chunked body")
            if size == 0:
                break
            total += size
            if total > _MAX_READ_BYTES:
                raise _Reject(400, "payload_too_large", f"request body is over {_MAX_READ_BYTES} bytes")
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)
        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
            pass  # trailer fields
        return b"".join(parts)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, port: int, emulator: SegmentEmulator) -> None:
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._wake_reader, self._wake_writer = socket.socketpair()
        try:
            super().__init__((_BIND_HOST, port), _Handler)
        except BaseException:
            self._wake_reader.close()
            self._wake_writer.close()
            raise

    def server_bind(self) -> None:
        # HTTPServer.server_bind() resolves the host's FQDN, which can be slow; the name is known.
        socketserver.TCPServer.server_bind(self)
        self.server_name = _BIND_HOST
        self.server_port = self.server_address[1]

    def serve(self) -> None:
        """Accept connections until :meth:`wake` is called; unlike serve_forever() it never polls."""
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is self._wake_reader:
                        return
                    self._handle_request_noblock()

    def wake(self) -> None:
        """Make :meth:`serve` return."""
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"x")

    def server_close(self) -> None:
        super().server_close()
        self._wake_reader.close()
        self._wake_writer.close()

    def track(self, connection: socket.socket, *, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        """Shut down open keep-alive connections so their handler threads end."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up (timeouts, dropped pools) are normal here; keep stderr quiet.
        log.debug("segment emulator: error while serving %s", client_address, exc_info=True)


class SegmentEmulator:
    """
    A local Segment HTTP Tracking API on 127.0.0.1, recording what it accepts.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with SegmentEmulator(write_key="k") as emu:
            requests.post(f"{emu.url}/batch", json={"batch": [...]}, auth=("k", ""))
            assert emu.messages[0]["userId"] == "u1"

    The module docstring lists the Segment behaviours it reproduces and the choices it makes.
    Recording and fault injection are thread-safe and can be used while the server runs.

    :param write_key: write key of a Profile Space's source that the emulator accepts.
    :param write_keys: further write keys to accept, e.g. one per Profile Space.
    :param host: ``127.0.0.1`` or ``localhost``; the server always binds to 127.0.0.1 only.
    :param port: TCP port; ``0`` (default) picks a free ephemeral port.
    :param strict: reply ``401`` to unknown write keys instead of Segment's ``200`` + silent drop.
    :param deduplicate: drop a message whose ``messageId`` was accepted before under any write key, as
        Segment does (default); ``False`` records every copy.
    :param latency: seconds added to every request (see :attr:`latency`).
    :param messages_file: a file to append every accepted message to, as NDJSON, while it runs (opened by
        :meth:`start`, closed by :meth:`stop`; :meth:`reset` does not empty it).
    :param profile_spaces: :class:`~.profile_api.ProfileSpace` s whose profiles the Profile API serves
        (their write keys are accepted too); see :mod:`~airflow_provider_segment_profiles.testing.profile_api`.
    :param profile_visibility_delay: seconds before an accepted message shows in the Profile API.
    :raises ValueError: for a host other than loopback, no write key, an empty write key, or a
        negative latency.
    """

    def __init__(
        self,
        write_key: str | None = None,
        *,
        write_keys: Iterable[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        strict: bool = False,
        latency: float = 0.0,
        messages_file: str | os.PathLike[str] | None = None,
        profile_spaces: Iterable[ProfileSpace] = (),
        profile_visibility_delay: float = 0.0,
        deduplicate: bool = True,
    ) -> None:
        if host not in _ALLOWED_HOSTS:
            raise ValueError(f"SegmentEmulator only binds to 127.0.0.1 (or 'localhost'), not {host!r}")
        keys = [write_key] if write_key is not None else []
        keys.extend(write_keys)
        #: The Profile API (:class:`~.profile_api.ProfileApi`): profiles built from accepted messages.
        self.profile_api = ProfileApi(profile_spaces, visibility_delay=profile_visibility_delay)
        keys.extend(self.profile_api.write_keys)
        if not keys:
            raise ValueError("SegmentEmulator needs at least one write key")
        if not all(isinstance(key, str) and key for key in keys):
            raise ValueError("write keys must be non-empty strings")
        self._write_keys = frozenset(keys)
        self._port = port
        self.strict = strict
        self.deduplicate = deduplicate
        self._accepted_ids: set[str] = set()
        self._latency = _check_seconds(latency, "latency")
        self._lock = threading.Lock()
        self._messages: list[dict[str, Any]] = []
        self._by_key: dict[str, list[dict[str, Any]]] = {}
        self._dropped: list[DroppedMessage] = []
        self._requests: list[RecordedRequest] = []
        self._failures: deque[_Failure] = deque()
        self._user_failures: dict[str, _Failure] = {}
        self._delays: deque[list[float]] = deque()  # [remaining, seconds]
        self._drops = 0
        self._messages_file = messages_file
        self._messages_out: NdjsonWriter | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> SegmentEmulator:
        """
        Bind the socket and serve in a daemon thread; does nothing if already running.

        :return: this emulator.
        :raises OSError: if the port cannot be bound or ``messages_file`` cannot be opened.
        """
        if self._server is not None:
            return self
        if self._messages_file is not None:
            self._messages_out = NdjsonWriter(self._messages_file)
        try:
            server = _Server(self._port, self)
        except BaseException:
            self._close_messages_file()
            raise
        thread = threading.Thread(target=server.serve, name="segment-emulator", daemon=True)
        thread.start()
        self._server, self._thread = server, thread
        log.debug("Segment emulator serving at %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and open connections. Safe to call repeatedly."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.wake()
        if thread is not None:
            thread.join(timeout=5)
        server.server_close()
        server.close_connections()
        self._close_messages_file()

    def _close_messages_file(self) -> None:
        out, self._messages_out = self._messages_out, None
        if out is not None:
            out.close()

    def __enter__(self) -> SegmentEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "stopped"
        return (
            f"<SegmentEmulator {where} write_keys={len(self._write_keys)} strict={self.strict} "
            f"messages={len(self._messages)}>"
        )

    @property
    def port(self) -> int:
        """
        The bound TCP port.

        :raises RuntimeError: if the emulator is not running.
        """
        if self._server is None:
            raise RuntimeError("SegmentEmulator is not running; call start() or use it as a context manager")
        return self._server.server_port

    @property
    def url(self) -> str:
        """
        Base URL of the tracking API, ``http://127.0.0.1:<port>/v1``, for a connection's Host field.

        :raises RuntimeError: if the emulator is not running.
        """
        return f"http://{_BIND_HOST}:{self.port}/v1"

    def airflow_connection(self, write_key: str | None = None) -> dict[str, Any]:
        """
        Return a ``segment_profiles`` connection pointing at this emulator, for ``AIRFLOW_CONN_*``.

        :param write_key: key to put in ``password``; defaults to the only key the emulator has.
        :raises ValueError: if ``write_key`` is omitted and the emulator has several keys.
        """
        if write_key is None:
            if len(self._write_keys) != 1:
                raise ValueError("this emulator has several write keys; pass write_key")
            (write_key,) = self._write_keys
        return {"conn_type": "segment_profiles", "password": write_key, "host": self.url}

    def profile_api_connection(self, space_id: str | None = None) -> dict[str, Any]:
        """A ``segment_profile_api`` connection reading this emulator's Profile API, for ``AIRFLOW_CONN_*``."""
        return self.profile_api.airflow_connection(self.url, space_id)

    # -- recordings ------------------------------------------------------------------------------

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Snapshot of the accepted messages (all write keys), in arrival order."""
        with self._lock:
            return list(self._messages)

    @property
    def message_count(self) -> int:
        """Number of accepted messages; cheaper than ``len(emu.messages)``."""
        return len(self._messages)

    @property
    def dropped(self) -> list[DroppedMessage]:
        """Snapshot of events answered with ``200`` but not accepted, with the reason."""
        with self._lock:
            return list(self._dropped)

    def dropped_counts(self) -> Counter[str]:
        """Count the dropped events per reason (the :class:`DropReason` value)."""
        with self._lock:
            return Counter(d.reason.value for d in self._dropped)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of every HTTP request received, in arrival order."""
        with self._lock:
            return list(self._requests)

    def messages_for(self, write_key: str) -> list[dict[str, Any]]:
        """
        Return the messages accepted for one write key (one Profile Space), in arrival order.

        :param write_key: the write key; an unknown key returns ``[]``.
        """
        with self._lock:
            return list(self._by_key.get(write_key, ()))

    def message_ids(self) -> Counter[str]:
        """Count accepted messages per ``messageId`` (messages without one are not counted)."""
        with self._lock:
            return Counter(m["messageId"] for m in self._messages if "messageId" in m)

    def duplicate_message_ids(self) -> dict[str, int]:
        """Return ``{messageId: copies}`` for every ``messageId`` accepted more than once."""
        return {message_id: n for message_id, n in self.message_ids().items() if n > 1}

    # -- fault injection -------------------------------------------------------------------------

    @property
    def latency(self) -> float:
        """Seconds slept before every reply (a setting, kept by :meth:`clear_faults`)."""
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        self._latency = _check_seconds(seconds, "latency")

    def fail_next(
        self,
        count: int = 1,
        status: int = 503,
        retry_after: float | str | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | str | Mapping[str, Any] | None = None,
    ) -> None:
        """
        Answer the next ``count`` requests with ``status`` instead of processing them.

        Only POSTs to tracking API endpoints count; nothing in a failed request is recorded as accepted
        (a 2xx status is allowed: the client sees success but the messages are lost). Calls queue up:
        ``fail_next(1, 429); fail_next(1, 503)`` fails one request with each.

        :param count: number of requests to fail, >= 1.
        :param status: HTTP status code to reply with.
        :param retry_after: ``Retry-After`` header value, in seconds (a fraction is allowed, to keep tests
            fast, though HTTP only defines whole seconds), or a string sent verbatim.
        :param headers: extra reply headers, e.g. ``{"X-RateLimit-Reset": "1"}``.
        :param body: reply body; a mapping is sent as JSON. Default: ``{"code": ..., "message": ...}``.
        :raises ValueError: for a count below 1, or a status outside 200-599 or equal to 204 or 304.
        """
        _check_count(count)
        failure = _make_failure(status, retry_after, headers, body, count)
        with self._lock:
            self._failures.append(failure)

    def fail_user(
        self,
        user_id: str,
        status: int = 500,
        *,
        times: int | None = None,
        retry_after: float | str | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | str | Mapping[str, Any] | None = None,
    ) -> None:
        """
        Answer ``status`` to every request carrying a message whose ``userId`` equals ``user_id``.

        The whole request fails and none of its messages is recorded. ``userId`` values are compared as
        strings. Other requests are unaffected.

        :param user_id: the user id to fail on.
        :param status: HTTP status code to reply with.
        :param times: fail only this many requests; ``None`` (default) until :meth:`clear_faults`.
        :param retry_after: as for :meth:`fail_next`.
        :param headers: as for :meth:`fail_next`.
        :param body: as for :meth:`fail_next`.
        :raises ValueError: for ``times`` below 1, or a status outside 200-599 or equal to 204 or 304.
        """
        if times is not None:
            _check_count(times)
        failure = _make_failure(status, retry_after, headers, body, times)
        with self._lock:
            self._user_failures[str(user_id)] = failure

    def delay_next(self, count: int, seconds: float) -> None:
        """
        Sleep ``seconds`` before handling each of the next ``count`` requests (on top of :attr:`latency`).

        :param count: number of requests to delay, >= 1.
        :param seconds: delay in seconds, >= 0.
        :raises ValueError: for a count below 1 or a negative delay.
        """
        _check_count(count)
        delay = _check_seconds(seconds, "seconds")
        with self._lock:
            self._delays.append([count, delay])

    def drop_next(self, count: int = 1) -> None:
        """
        Read the next ``count`` requests, then reset their connections without replying.

        Clients see a connection error (``requests.exceptions.ConnectionError``); nothing is recorded
        as accepted.

        :param count: number of requests to drop, >= 1.
        :raises ValueError: for a count below 1.
        """
        _check_count(count)
        with self._lock:
            self._drops += count

    def clear_faults(self) -> None:
        """Cancel every pending fault (:attr:`latency` is a setting and stays)."""
        with self._lock:
            self._failures.clear()
            self._user_failures.clear()
            self._delays.clear()
            self._drops = 0

    def reset(self) -> None:
        """Forget recorded messages, drops and requests, and cancel pending faults."""
        self.clear_faults()
        with self._lock:
            self._messages.clear()
            self._by_key.clear()
            self._accepted_ids.clear()
            self._dropped.clear()
            self._requests.clear()
        self.profile_api.reset()

    # -- request processing (called from handler threads) -----------------------------------------

    def _take_drop(self) -> bool:
        with self._lock:
            if self._drops:
                self._drops -= 1
                return True
        return False

    def _take_delay(self) -> float:
        delay = self._latency
        with self._lock:
            if self._delays:
                entry = self._delays[0]
                delay += entry[1]
                entry[0] -= 1
                if entry[0] <= 0:
                    self._delays.popleft()
        return delay

    def _take_failure(self) -> _Failure | None:
        with self._lock:
            if not self._failures:
                return None
            failure = self._failures[0]
            failure.remaining -= 1
            if failure.remaining <= 0:
                self._failures.popleft()
            return failure

    def _take_user_failure(self, messages: list[dict[str, Any]]) -> _Failure | None:
        if not self._user_failures:
            return None
        with self._lock:
            for message in messages:
                user_id = message.get("userId")
                if user_id is None:
                    continue
                key = user_id if isinstance(user_id, str) else str(user_id)
                failure = self._user_failures.get(key)
                if failure is None:
                    continue
                if failure.remaining is not None:
                    failure.remaining -= 1
                    if failure.remaining <= 0:
                        del self._user_failures[key]
                return failure
        return None

    def _process(self, endpoint: str, headers: Mapping[str, str], raw: bytes, encoding: str) -> _Outcome:
        """Turn one request body into an :class:`_Outcome`; never raises for client errors."""
        try:
            body: bytes | None = _decode_body(raw, encoding)
            decode_error: _Reject | None = None
        except _Reject as exc:
            body, decode_error = None, exc
        size = None if body is None else len(body)
        failure = self._take_failure()
        if failure is not None:
            return _Outcome(failure.status, failure.body, failure.headers, body_bytes=size, fault="fail_next")
        try:
            if decode_error is not None:
                raise decode_error
            outcome = self._evaluate(endpoint, headers, body)
        except _Reject as exc:
            outcome = _Outcome(exc.status, _error_body(exc.code, exc.message), events=exc.events)
        outcome.body_bytes = size
        return outcome

    def _evaluate(self, endpoint: str, headers: Mapping[str, str], body: bytes) -> _Outcome:
        content_type = (headers.get("Content-Type") or "").partition(";")[0].strip().lower()
        if content_type != "application/json":
            raise _Reject(400, "invalid_content_type", "Content-Type must be application/json")
        is_batch = endpoint == "batch"
        limit = MAX_BATCH_BYTES if is_batch else MAX_EVENT_BYTES
        if len(body) > limit:
            raise _Reject(
                400, "payload_too_large", f"request body is {len(body)} bytes; /{endpoint} allows {limit}"
            )
        try:
            payload = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise _Reject(400, "invalid_json", f"request body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise _Reject(400, "invalid_json", "request body must be a JSON object")

        write_key = _write_key(headers.get("Authorization"), payload)
        if write_key is None:
            raise _Reject(
                400,
                "missing_write_key",
                'send "Authorization: Basic base64(writeKey + \':\')" or "writeKey" in the body',
            )
        known = write_key in self._write_keys
        if not known and self.strict:
            raise _Reject(401, DropReason.UNKNOWN_WRITE_KEY.value, "no source has this write key")

        if is_batch:
            messages = payload.get("batch")
            if not isinstance(messages, list):
                raise _Reject(400, "invalid_request", '"batch" must be a list of messages')
            _prepare_batch(messages, payload)
        else:
            payload.pop("writeKey", None)
            payload["type"] = endpoint
            messages = [payload]
        count = len(messages)

        failure = self._take_user_failure(messages)
        if failure is not None:
            return _Outcome(failure.status, failure.body, failure.headers, events=count, fault="fail_user")

        path = f"/v1/{endpoint}"
        if not known or count > MAX_BATCH_EVENTS:
            reason = DropReason.UNKNOWN_WRITE_KEY if not known else DropReason.TOO_MANY_EVENTS
            dropped = [DroppedMessage(message, reason, path) for message in messages]
            return _Outcome(200, events=count, dropped=dropped)
        accepted: list[dict[str, Any]] = []
        dropped = []
        for message in messages:
            reason = _drop_reason(message)
            if reason is None:
                accepted.append(message)
            else:
                dropped.append(DroppedMessage(message, reason, path))
        return _Outcome(200, events=count, write_key=write_key, accepted=accepted, dropped=dropped)

    def _record(self, request: RecordedRequest, outcome: _Outcome) -> None:
        with self._lock:
            if outcome.accepted and self.deduplicate:
                self._drop_duplicates(outcome, request.path)
                request = dataclasses.replace(request, accepted=len(outcome.accepted))
            self._requests.append(request)
            if outcome.accepted:
                self._messages.extend(outcome.accepted)
                self._by_key.setdefault(outcome.write_key, []).extend(outcome.accepted)
                self.profile_api.ingest(outcome.write_key, outcome.accepted)
                if self._messages_out is not None:  # under the lock: the file keeps the arrival order
                    self._messages_out.write(outcome.accepted)
            if outcome.dropped:
                self._dropped.extend(outcome.dropped)

    def _drop_duplicates(self, outcome: _Outcome, path: str) -> None:
        """Move messages whose ``messageId`` was accepted before (any key) to the drops; under the lock."""
        seen = self._accepted_ids
        kept = []
        for message in outcome.accepted:
            message_id = message.get("messageId")
            if not isinstance(message_id, str):  # Segment assigns an id to a message without one
                kept.append(message)
            elif message_id in seen:
                if outcome.dropped is None:
                    outcome.dropped = []
                outcome.dropped.append(DroppedMessage(message, DropReason.DUPLICATE_MESSAGE_ID, path))
            else:
                seen.add(message_id)
                kept.append(message)
        outcome.accepted = kept
