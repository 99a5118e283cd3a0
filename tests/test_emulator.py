"""Tests of the Segment tracking API emulator, over real HTTP on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import base64
import gzip
import json
import logging
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from airflow_provider_segment_profiles.testing import (
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_EVENT_BYTES,
    DropReason,
    SegmentEmulator,
)
from airflow_provider_segment_profiles.testing.pytest_plugin import TEST_WRITE_KEY

KEY = "abc123"
BASIC = "Basic YWJjMTIzOg=="  # base64("abc123:"), the example in Segment's HTTP API doc


def basic(write_key: str) -> str:
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


def compact_size(obj: object) -> int:
    return len(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode())


def event_of_size(size: int, pad_char: str = "a") -> dict:
    """An identify whose compact UTF-8 JSON is exactly ``size`` bytes, padded with ``pad_char``."""
    event = {"type": "identify", "userId": "u1", "traits": {"pad": ""}}
    count, rest = divmod(size - compact_size(event), len(pad_char.encode()))
    event["traits"]["pad"] = pad_char * count + "a" * rest
    assert compact_size(event) == size
    return event


def identify(user_id: str = "u1", **fields: object) -> dict:
    return {"type": "identify", "userId": user_id, **fields}


def post(
    emu: SegmentEmulator,
    body: object,
    path: str = "/batch",
    *,
    headers: dict | None = None,
    auth: str | None = BASIC,
    session: requests.Session | None = None,
    timeout: float = 5,
) -> requests.Response:
    """POST ``body`` (bytes as is, anything else as JSON) with the Basic header of ``KEY``."""
    all_headers = {"Content-Type": "application/json", "Authorization": auth}
    all_headers.update(headers or {})
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    sender = session or requests
    return sender.post(f"{emu.url}{path}", data=data, headers=all_headers, timeout=timeout)


def assert_error(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    payload = response.json()
    assert set(payload) == {"code", "message"}
    assert payload["code"] and payload["message"]
    return payload


@pytest.fixture
def emu():
    with SegmentEmulator(write_key=KEY) as emulator:
        yield emulator


# -- authentication -------------------------------------------------------------------------------


def test_basic_header_is_accepted(emu):
    assert "Basic " + base64.b64encode(b"abc123:").decode() == BASIC
    response = post(emu, {"batch": [identify()]})
    assert response.status_code == 200
    assert response.json() == {"success": True}
    assert emu.messages == [identify()]
    request = emu.requests[0]
    assert (request.path, request.status, request.events, request.accepted) == ("/v1/batch", 200, 1, 1)
    assert request.has_auth_header and request.authorization == BASIC


def test_requests_basic_auth_tuple_is_accepted(emu):
    response = requests.post(f"{emu.url}/batch", json={"batch": [identify()]}, auth=(KEY, ""), timeout=5)
    assert response.status_code == 200
    assert emu.requests[0].authorization == BASIC
    assert emu.message_count == 1


def test_write_key_in_body_is_accepted_and_not_recorded(emu):
    response = post(emu, {"batch": [identify(writeKey=KEY)], "writeKey": KEY}, auth=None)
    assert response.status_code == 200
    assert emu.messages == [identify()]
    assert not emu.requests[0].has_auth_header
    response = post(emu, {"userId": "u2", "writeKey": KEY}, "/identify", auth=None)
    assert response.status_code == 200
    assert emu.messages[1] == {"userId": "u2", "type": "identify"}


@pytest.mark.parametrize(
    ("auth", "body_key"),
    [
        pytest.param(None, None, id="no-key"),
        pytest.param("Basic " + base64.b64encode(b":").decode(), None, id="empty-basic"),
        pytest.param(None, "", id="empty-body-key"),
        pytest.param("Basic " + base64.b64encode(b"abc123").decode(), None, id="basic-without-colon"),
        pytest.param("Basic !!!", None, id="basic-not-base64"),
    ],
)
def test_missing_or_empty_key_is_400(emu, auth, body_key):
    body: dict = {"batch": [identify()]}
    if body_key is not None:
        body["writeKey"] = body_key
    assert_error(post(emu, body, auth=auth), 400)
    assert emu.messages == [] and emu.dropped == []


def test_unknown_key_gets_200_but_events_are_dropped(emu):
    response = post(
        emu, {"batch": [identify(), identify("u2")]}, auth="Basic " + base64.b64encode(b"x:").decode()
    )
    assert response.status_code == 200 and response.json() == {"success": True}
    assert emu.messages == []
    assert [d.reason for d in emu.dropped] == [DropReason.UNKNOWN_WRITE_KEY] * 2
    assert emu.dropped[0].reason == "project_not_found"
    assert emu.messages_for("x") == []


def test_strict_mode_rejects_unknown_key_with_401():
    with SegmentEmulator(write_key=KEY, strict=True) as emu:
        assert post(emu, {"batch": [identify()]}).status_code == 200
        assert_error(post(emu, {"batch": [identify()]}, auth=None, headers={}), 400)
        other = "Basic " + base64.b64encode(b"other:").decode()
        assert_error(post(emu, {"batch": [identify("u2")]}, auth=other), 401)
        assert emu.message_count == 1 and emu.dropped == []


def test_several_write_keys_are_kept_apart():
    with SegmentEmulator(write_key="space-a", write_keys=["space-b"]) as emu:
        post(emu, {"batch": [identify("a1")], "writeKey": "space-a"}, auth=None)
        post(emu, {"batch": [identify("b1"), identify("b2")], "writeKey": "space-b"}, auth=None)
        assert [m["userId"] for m in emu.messages_for("space-a")] == ["a1"]
        assert [m["userId"] for m in emu.messages_for("space-b")] == ["b1", "b2"]
        assert [m["userId"] for m in emu.messages] == ["a1", "b1", "b2"]


# -- body format ----------------------------------------------------------------------------------


def test_gzip_body_is_accepted_and_measured_decompressed(emu):
    raw = json.dumps({"batch": [identify(), identify("u2")]}).encode()
    response = post(emu, gzip.compress(raw), headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200
    assert [m["userId"] for m in emu.messages] == ["u1", "u2"]
    request = emu.requests[0]
    assert request.gzip and request.body_bytes == len(raw)


def test_broken_gzip_and_unknown_encoding_are_400(emu):
    raw = json.dumps({"batch": [identify()]}).encode()
    assert_error(post(emu, raw, headers={"Content-Encoding": "gzip"}), 400)
    assert_error(post(emu, gzip.compress(raw)[:-6], headers={"Content-Encoding": "gzip"}), 400)
    assert_error(post(emu, raw, headers={"Content-Encoding": "br"}), 400)
    assert emu.messages == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"batch": [', id="truncated"),
        pytest.param(b'{"batch": [{"type": "track", "userId": "u", "event": "e", "value": NaN}]}', id="nan"),
        pytest.param(b"[]", id="not-an-object"),
        pytest.param(b'{"batch": [], "x": "\xff"}', id="not-utf8"),
        pytest.param(b"", id="empty"),
    ],
)
def test_invalid_json_is_400(emu, body):
    assert_error(post(emu, body), 400)
    assert emu.messages == []


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_content_type_must_be_json(emu, content_type):
    response = post(emu, {"batch": [identify()]}, headers={"Content-Type": content_type})
    assert_error(response, 400)
    assert emu.messages == []


def test_content_type_parameters_are_allowed(emu):
    response = post(emu, {"batch": [identify()]}, headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 200


def test_chunked_body_is_accepted(emu):
    raw = json.dumps({"batch": [identify()]}).encode()
    response = requests.post(
        f"{emu.url}/batch",
        data=(raw[i : i + 7] for i in range(0, len(raw), 7)),
        headers={"Content-Type": "application/json", "Authorization": BASIC},
        timeout=5,
    )
    assert response.status_code == 200
    assert emu.messages == [identify()]


def test_unknown_path_and_method(emu):
    assert_error(post(emu, {"batch": [identify()]}, "/nope"), 404)
    assert_error(requests.get(f"{emu.url}/batch", timeout=5), 405)


# -- limits -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("pad_char", ["a", "é", "€", "😀"])
def test_event_size_boundary_in_batch(emu, pad_char):
    fits, too_big = event_of_size(MAX_EVENT_BYTES, pad_char), event_of_size(MAX_EVENT_BYTES + 1, pad_char)
    # json.dumps defaults (spaces, \u escapes) make the raw text bigger: the emulator re-serialises.
    assert post(emu, {"batch": [identify("u0"), fits]}).status_code == 200
    assert emu.message_count == 2
    payload = assert_error(post(emu, {"batch": [identify("u0"), too_big]}), 400)
    assert str(MAX_EVENT_BYTES + 1) in payload["message"]
    assert emu.message_count == 2
    assert emu.requests[-1].events == 2 and emu.requests[-1].accepted == 0


def test_single_message_endpoint_body_limit(emu):
    for size, status in [(MAX_EVENT_BYTES, 200), (MAX_EVENT_BYTES + 1, 400)]:
        body = json.dumps(event_of_size(size, "é"), separators=(",", ":"), ensure_ascii=False).encode()
        assert len(body) == size
        assert post(emu, body, "/identify").status_code == status
    assert emu.message_count == 1


def _batch_body(size: int) -> bytes:
    """A /batch body of exactly ``size`` bytes: 25 events of 20,000 bytes, then whitespace."""
    body = json.dumps({"batch": [event_of_size(20_000) for _ in range(25)]}).encode()
    assert len(body) <= size
    return body + b" " * (size - len(body))


@pytest.mark.parametrize("use_gzip", [False, True])
def test_batch_size_boundary(emu, use_gzip):
    headers = {"Content-Encoding": "gzip"} if use_gzip else {}
    for size, status in [(MAX_BATCH_BYTES, 200), (MAX_BATCH_BYTES + 1, 400)]:
        body = _batch_body(size)
        response = post(emu, gzip.compress(body) if use_gzip else body, headers=headers)
        assert response.status_code == status, response.text
        assert emu.requests[-1].body_bytes == size
    assert emu.message_count == 25


def test_too_many_events_get_200_and_are_all_dropped(emu):
    events = [identify(f"u{i}") for i in range(MAX_BATCH_EVENTS + 1)]
    response = post(emu, {"batch": events})
    assert response.status_code == 200 and response.json() == {"success": True}
    assert emu.messages == []
    assert len(emu.dropped) == MAX_BATCH_EVENTS + 1
    assert {d.reason for d in emu.dropped} == {DropReason.TOO_MANY_EVENTS}
    assert post(emu, {"batch": events[:MAX_BATCH_EVENTS]}).status_code == 200
    assert emu.message_count == MAX_BATCH_EVENTS


# -- per-message validation -------------------------------------------------------------------------


def test_invalid_messages_are_dropped_and_siblings_accepted(emu):
    batch = [
        identify("ok-1"),
        {"type": "identify", "traits": {"a": 1}},
        {"type": "identify", "userId": "", "anonymousId": None},
        {"type": "track", "userId": "u"},
        {"type": "track", "userId": "u", "event": 5},
        {"type": "group", "userId": "u"},
        {"type": "identify", "userId": "u", "traits": "x"},
        {"type": "track", "userId": "u", "event": "E", "properties": []},
        {"type": "alias", "userId": "u"},
        {"type": "bogus", "userId": "u"},
        {"type": "track", "anonymousId": "a", "event": "ok-2"},
        {"type": "group", "userId": "u", "groupId": "ok-3"},
    ]
    response = post(emu, {"batch": batch})
    assert response.status_code == 200 and response.json() == {"success": True}
    assert emu.messages == [batch[0], batch[10], batch[11]]
    assert [d.reason.value for d in emu.dropped] == [
        "no_user_anon_id",
        "no_user_anon_id",
        "event_not_defined",
        "event_not_string",
        "group_id_not_defined",
        "traits_not_object",
        "properties_not_object",
        "previous_id_not_defined",
        "invalid_type",
    ]
    assert emu.requests[0].events == 12 and emu.requests[0].accepted == 3


def test_single_message_endpoint_drops_invalid_message_with_200(emu):
    assert post(emu, {"anonymousId": "a"}, "/track").status_code == 200
    assert emu.messages == [] and emu.dropped[0].reason == DropReason.EVENT_NOT_DEFINED


@pytest.mark.parametrize(
    "batch",
    [
        pytest.param([{"userId": "u1"}], id="missing-type"),
        pytest.param([identify(), {"type": 3, "userId": "u"}], id="type-not-string"),
        pytest.param(["identify"], id="item-not-object"),
        pytest.param({"type": "identify"}, id="batch-not-list"),
    ],
)
def test_malformed_batch_is_400(emu, batch):
    assert_error(post(emu, {"batch": batch}), 400)
    assert emu.messages == [] and emu.dropped == []


def test_empty_batch_is_200_with_nothing_recorded(emu):
    assert post(emu, {"batch": []}).status_code == 200
    assert emu.messages == [] and emu.requests[0].events == 0


def test_type_is_implied_by_single_message_path(emu):
    assert post(emu, {"userId": "u", "event": "Signed Up", "type": "identify"}, "/track").status_code == 200
    assert post(emu, {"userId": "u", "groupId": "g"}, "/group").status_code == 200
    assert [m["type"] for m in emu.messages] == ["track", "group"]


def test_batch_context_integrations_and_sent_at_apply_to_items(emu):
    body = {
        "batch": [
            identify("u1", context={"ip": "10.0.0.2"}, integrations={"All": False}),
            identify("u2", sentAt="2024-01-01T00:00:01Z"),
        ],
        "context": {"ip": "10.0.0.1", "library": {"name": "test"}},
        "integrations": {"All": True, "Mixpanel": False},
        "sentAt": "2024-01-01T00:00:00Z",
    }
    assert post(emu, body).status_code == 200
    first, second = emu.messages
    assert first["context"] == {"ip": "10.0.0.2", "library": {"name": "test"}}
    assert first["integrations"] == {"All": False, "Mixpanel": False}
    assert first["sentAt"] == "2024-01-01T00:00:00Z"
    assert second["context"] == {"ip": "10.0.0.1", "library": {"name": "test"}}
    assert second["sentAt"] == "2024-01-01T00:00:01Z"
    first["context"]["ip"] = "changed"
    assert emu.messages[1]["context"]["ip"] == "10.0.0.1"  # items do not share the merged dict


def test_duplicates_are_recorded_when_deduplication_is_off():
    with SegmentEmulator(write_key=KEY, deduplicate=False) as emu:
        for _ in range(2):
            post(emu, {"batch": [identify(messageId="m-1"), identify(messageId="m-2")]})
        post(emu, {"batch": [identify(messageId="m-1"), identify()]})
        assert emu.message_count == 6
        assert emu.message_ids() == {"m-1": 3, "m-2": 2}
        assert emu.duplicate_message_ids() == {"m-1": 3, "m-2": 2}
        assert emu.dropped == []


def test_duplicates_are_dropped_like_segment_does(emu):
    for _ in range(2):
        assert post(emu, {"batch": [identify(messageId="m-1"), identify(messageId="m-2")]}).json() == {
            "success": True
        }
    post(emu, {"batch": [identify(messageId="m-1"), identify(), identify()]})
    assert emu.message_count == 4  # m-1, m-2 and the two without an id (Segment assigns one to each)
    assert emu.duplicate_message_ids() == {}
    assert emu.dropped_counts() == {"duplicate_message_id": 3}
    assert [r.accepted for r in emu.requests] == [2, 0, 2]
    emu.reset()
    post(emu, {"batch": [identify(messageId="m-1")]})
    assert emu.message_count == 1 and emu.dropped == []


def test_deduplication_spans_every_write_key():
    """Segment's de-duplication "is not scoped to a specific source or a workspace" (duplicate-data guide):
    the same id sent to a second write key is dropped there."""
    with SegmentEmulator(write_key="staging", write_keys=["production"]) as emu:
        body = {"batch": [identify("u1", messageId="same-id"), identify("u2", messageId="staging-only")]}
        post(emu, body, auth=basic("staging"))
        post(emu, {"batch": [identify("u1", messageId="same-id")]}, auth=basic("production"))
        assert [m["messageId"] for m in emu.messages_for("staging")] == ["same-id", "staging-only"]
        assert emu.messages_for("production") == []
        (drop,) = emu.dropped
        assert drop.reason == "duplicate_message_id" and drop.message["userId"] == "u1"


def test_concurrent_copies_of_one_id_are_accepted_once(emu):
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: post(emu, {"batch": [identify(messageId="race")]}), range(16)))
    assert {r.status_code for r in replies} == {200}
    assert emu.message_count == 1 and len(emu.dropped) == 15


def _traits(count: int) -> dict:
    return {f"t{i}": i for i in range(count)}


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (identify(traits=_traits(300)), "too_many_traits"),
        ({"type": "group", "userId": "u", "groupId": "g", "traits": _traits(301)}, "too_many_traits"),
        ({"type": "track", "userId": "u", "event": "E", "properties": _traits(301)}, "too_many_properties"),
        ({"type": "group", "userId": "u", "groupId": "g" * 501}, "group_id_too_long"),
        (identify(groupId="g" * 501), "group_id_too_long"),
        (identify(messageId="m" * 101), "message_id_too_long"),
        ({"type": "group", "userId": "u", "groupId": ""}, "group_id_not_defined"),
        (
            {"type": "track", "userId": "u", "event": "E", "context": {"groupId": ""}},
            "context_group_id_empty",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_unify_ingestion_rules_drop_with_200(emu, message, reason):
    """segment-docs src/unify/profile-api-limits.md: answered 200, then lost; valid siblings are kept."""
    reply = post(emu, {"batch": [message, identify("kept")]})
    assert reply.status_code == 200 and reply.json() == {"success": True}
    assert [m["userId"] for m in emu.messages] == ["kept"]
    assert [d.reason.value for d in emu.dropped] == [reason]


@pytest.mark.parametrize(
    "message",
    [
        identify(traits=_traits(299)),
        {"type": "group", "userId": "u", "groupId": "g" * 500, "traits": _traits(300)},
        {
            "type": "track",
            "userId": "u",
            "event": "E",
            "properties": _traits(300),
            "context": {"groupId": "g"},
        },
        identify(messageId="m" * 100),
    ],
)
def test_messages_at_the_unify_limits_are_kept(emu, message):
    post(emu, {"batch": [message]})
    assert emu.message_count == 1 and emu.dropped == []


# -- faults -----------------------------------------------------------------------------------------


def test_fail_next_429_with_retry_after(emu):
    emu.fail_next(1, 429, retry_after=2, headers={"X-RateLimit-Reset": "2"})
    response = post(emu, {"batch": [identify()]})
    payload = assert_error(response, 429)
    assert payload["code"] == "too_many_requests"
    assert response.headers["Retry-After"] == "2" and response.headers["X-RateLimit-Reset"] == "2"
    assert emu.messages == [] and emu.requests[0].fault == "fail_next"
    assert post(emu, {"batch": [identify()]}).status_code == 200
    assert emu.message_count == 1


def test_fail_next_counts_and_queues(emu):
    emu.fail_next(2, 503)
    emu.fail_next(1, 500, retry_after=0.25, body={"error": "custom"})
    statuses = [post(emu, {"batch": [identify(f"u{i}")]}).status_code for i in range(4)]
    assert statuses == [503, 503, 500, 200]
    assert [m["userId"] for m in emu.messages] == ["u3"]
    emu.fail_next(1, 500, retry_after=0.25, body={"error": "custom"})
    response = post(emu, {"batch": [identify()]})
    assert response.json() == {"error": "custom"} and response.headers["Retry-After"] == "0.25"


def test_fail_user_fails_only_requests_with_that_user(emu):
    emu.fail_user("bad")
    assert post(emu, {"batch": [identify("good")]}).status_code == 200
    assert_error(post(emu, {"batch": [identify("other"), identify("bad")]}), 500)
    assert_error(post(emu, {"userId": "bad"}, "/identify"), 500)
    assert [m["userId"] for m in emu.messages] == ["good"]
    assert emu.requests[1].fault == "fail_user" and emu.requests[1].events == 2
    emu.clear_faults()
    assert post(emu, {"batch": [identify("bad")]}).status_code == 200


def test_fail_user_times(emu):
    emu.fail_user("bad", 503, times=1)
    assert post(emu, {"batch": [identify("bad")]}).status_code == 503
    assert post(emu, {"batch": [identify("bad")]}).status_code == 200
    assert emu.message_count == 1


def test_delay_next_and_latency(emu):
    emu.delay_next(1, 0.3)
    started = time.monotonic()
    assert post(emu, {"batch": [identify()]}).status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    post(emu, {"batch": [identify()]})
    assert time.monotonic() - started < 0.25
    emu.latency = 0.1
    started = time.monotonic()
    post(emu, {"batch": [identify()]})
    assert time.monotonic() - started >= 0.1
    emu.clear_faults()
    assert emu.latency == 0.1


def test_slow_reply_times_out_client_but_message_is_kept(emu):
    emu.delay_next(1, 0.3)
    with pytest.raises(requests.exceptions.ReadTimeout):
        post(emu, {"batch": [identify()]}, timeout=0.05)
    deadline = time.monotonic() + 3
    while emu.message_count == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert emu.message_count == 1


def test_drop_next_resets_connection(emu):
    emu.drop_next()
    with requests.Session() as session:
        with pytest.raises(requests.exceptions.ConnectionError):
            post(emu, {"batch": [identify()]}, session=session)
        assert post(emu, {"batch": [identify()]}, session=session).status_code == 200
    assert emu.message_count == 1
    dropped_request = emu.requests[0]
    assert dropped_request.status is None and dropped_request.fault == "drop"


def test_fault_arguments_are_checked(emu):
    with pytest.raises(ValueError):
        emu.fail_next(0)
    for status in (100, 204, 304, 700):
        with pytest.raises(ValueError):
            emu.fail_next(1, status)
    with pytest.raises(ValueError):
        emu.delay_next(1, -1)
    with pytest.raises(ValueError):
        emu.fail_user("u", times=0)
    with pytest.raises(ValueError):
        emu.latency = -0.1


def test_reset_forgets_everything(emu):
    post(emu, {"batch": [identify(), {"type": "identify"}]})
    emu.fail_next(5)
    emu.reset()
    assert emu.messages == [] and emu.dropped == [] and emu.requests == []
    assert post(emu, {"batch": [identify()]}).status_code == 200


# -- server behaviour -------------------------------------------------------------------------------


def test_keep_alive_reuses_connection_even_after_errors(emu):
    with requests.Session() as session:
        post(emu, {"batch": [identify()]}, session=session)
        post(emu, b"not json", session=session)
        post(emu, {"batch": [identify()]}, session=session)
    assert [r.status for r in emu.requests] == [200, 400, 200]
    assert len({r.client_port for r in emu.requests}) == 1


def test_concurrent_requests_are_all_recorded(emu):
    emu.fail_next(5, 503)

    def send(i: int) -> int:
        with requests.Session() as session:
            return post(
                emu, {"batch": [identify(f"u{i}-{j}") for j in range(10)]}, session=session
            ).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(send, range(40)))
    assert statuses.count(503) == 5 and statuses.count(200) == 35
    assert emu.message_count == 350
    assert len({m["userId"] for m in emu.messages}) == 350


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::1", "::", "example.com", ""])
def test_non_loopback_host_is_refused(host):
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        SegmentEmulator(write_key=KEY, host=host)


def test_localhost_binds_to_127_0_0_1():
    with SegmentEmulator(write_key=KEY, host="localhost") as emu:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", emu.url)
        assert emu.url.endswith(f":{emu.port}/v1")


@pytest.mark.parametrize("keys", [{}, {"write_key": ""}, {"write_keys": ["a", ""]}])
def test_write_keys_are_required(keys):
    with pytest.raises(ValueError):
        SegmentEmulator(**keys)


def test_lifecycle_and_repr_hide_keys():
    emu = SegmentEmulator(write_key="very-secret-key", write_keys=["other-secret"])
    with pytest.raises(RuntimeError):
        emu.url  # noqa: B018
    assert "secret" not in repr(emu)
    emu.start()
    assert emu.start() is emu
    url = emu.url
    with requests.Session() as session:
        assert post(emu, {"batch": [identify()], "writeKey": "very-secret-key"}, auth=None, session=session)
        assert "secret" not in repr(emu) and "secret" not in repr(emu.requests) + repr(emu.messages)
        emu.stop()
        emu.stop()
        with pytest.raises(requests.exceptions.ConnectionError):
            session.post(f"{url}/batch", json={"batch": [identify()]}, timeout=2)
    assert "stopped" in repr(emu)


def test_airflow_connection(emu):
    assert emu.airflow_connection() == {"conn_type": "segment_profiles", "password": KEY, "host": emu.url}
    with SegmentEmulator(write_key="a", write_keys=["b"]) as several:
        with pytest.raises(ValueError):
            several.airflow_connection()
        assert several.airflow_connection("b")["password"] == "b"


def test_nothing_is_logged_or_printed_with_the_key(emu, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    post(emu, {"batch": [identify()]})
    post(emu, b"{", auth=None, headers={"Authorization": BASIC})
    emu.drop_next()
    with pytest.raises(requests.exceptions.ConnectionError):
        post(emu, {"batch": [identify()]})
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert KEY not in caplog.text and "YWJjMTIzOg" not in caplog.text


# -- CLI and pytest plugin --------------------------------------------------------------------------


def _run_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_segment_profiles.testing", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_cli_serves_and_stops_cleanly_on_sigint():
    secret = "cli-secret-write-key"
    process = _run_cli("--port", "0", "--write-key", secret, "--latency", "0")
    watchdog = threading.Timer(15, process.kill)
    watchdog.start()
    try:
        first_line = process.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/v1)", first_line)
        assert match, first_line
        url = match.group(1)
        response = requests.post(f"{url}/batch", json={"batch": [identify()]}, auth=(secret, ""), timeout=5)
        assert response.status_code == 200
        process.send_signal(signal.SIGINT)
        rest, err = process.communicate(timeout=10)
    finally:
        watchdog.cancel()
        process.kill()
    assert process.returncode == 0, err
    output = first_line + rest + err
    assert secret not in output
    assert re.search(r"\b1 messages accepted", rest)


def test_cli_refuses_non_loopback_host_without_echoing_the_key():
    secret = "cli-secret-write-key"
    process = _run_cli("--host", "0.0.0.0", "--write-key", secret)
    out, err = process.communicate(timeout=10)
    assert process.returncode == 2 and "127.0.0.1" in err
    assert secret not in out + err
    process = _run_cli("--write-key", "k", "--writekey", secret)
    out, err = process.communicate(timeout=10)
    assert process.returncode == 2 and "--writekey" in err
    assert secret not in out + err


def test_pytest_fixture_serves(segment_emulator):
    assert isinstance(segment_emulator, SegmentEmulator)
    response = requests.post(
        f"{segment_emulator.url}/batch", json={"batch": [identify()]}, auth=(TEST_WRITE_KEY, ""), timeout=5
    )
    assert response.status_code == 200
    assert segment_emulator.messages_for("test-write-key") == [identify()]


def test_pytest_plugin_imports_no_airflow():
    code = (
        "import sys, airflow_provider_segment_profiles.testing.pytest_plugin\n"
        "print(sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.strip() == "[]"
