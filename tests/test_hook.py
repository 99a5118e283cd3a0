"""SegmentProfilesHook over real HTTP against the bundled emulator: auth, splitting, retries, secrecy."""

from __future__ import annotations

import json
import logging

import pytest

from airflow_provider_segment_profiles.delivery.limits import MAX_BATCH_ITEM_BYTES, MAX_MESSAGE_BYTES
from airflow_provider_segment_profiles.delivery.rate_limit import TokenBucket
from airflow_provider_segment_profiles.delivery.retry import parse_retry_after
from airflow_provider_segment_profiles.hooks.segment_profiles import SegmentProfilesHook
from airflow_provider_segment_profiles.testing import SegmentEmulator

WRITE_KEY = "abc123"


class FakeTime:
    """Injected sleep and clock: records the waits instead of waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


@pytest.fixture
def emulator():
    with SegmentEmulator(write_key=WRITE_KEY) as emu:
        yield emu


@pytest.fixture
def fake_time():
    return FakeTime()


def make_hook(monkeypatch, emu, fake_time=None, conn_id="segment_test", **kwargs) -> SegmentProfilesHook:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(emu.airflow_connection(WRITE_KEY)))
    if fake_time is not None:
        kwargs.setdefault("sleep", fake_time.sleep)
        kwargs.setdefault("clock", fake_time.clock)
        kwargs.setdefault("jitter", lambda low, high: high)  # pin full jitter to its cap
    return SegmentProfilesHook(conn_id, **kwargs)


def identify(user: str, **traits) -> dict:
    return {"type": "identify", "userId": user, "traits": traits}


def test_basic_auth_header_for_a_known_key(monkeypatch, emulator):
    result = make_hook(monkeypatch, emulator).send_messages([identify("u1")])
    assert result.delivered == [0]
    (request,) = emulator.requests
    assert request.authorization == "Basic YWJjMTIzOg=="
    assert request.path == "/v1/batch"
    assert emulator.messages[0]["userId"] == "u1"
    assert "sentAt" in emulator.messages[0]


def test_gzip_bodies(monkeypatch, emulator):
    hook = make_hook(monkeypatch, emulator, gzip=True)
    assert hook.send_messages([identify(f"u{i}") for i in range(10)]).delivered == list(range(10))
    assert emulator.requests[0].gzip is True
    assert len(emulator.messages) == 10


def test_splits_at_2500_messages(monkeypatch, emulator):
    result = make_hook(monkeypatch, emulator).send_messages([identify(f"u{i}") for i in range(2501)])
    assert len(result.delivered) == 2501
    assert [r.events for r in emulator.requests] == [2500, 1]
    assert [m["userId"] for m in emulator.messages] == [f"u{i}" for i in range(2501)]


def test_splits_at_the_byte_limit_measured_in_utf8_bytes(monkeypatch, emulator):
    # 3,000 "é" are 6,000 UTF-8 bytes but 3,000 characters: a character count would under-split.
    messages = [identify(f"u{i}", bio="é" * 3000) for i in range(200)]
    result = make_hook(monkeypatch, emulator).send_messages(messages)
    assert len(result.delivered) == 200
    assert len(emulator.requests) > 1
    for request in emulator.requests:
        assert request.body_bytes <= 500 * 1024
    assert sum(r.events for r in emulator.requests) == 200
    sizes = [len(json.dumps(m, separators=(",", ":"), ensure_ascii=False).encode()) for m in messages]
    assert max(r.events for r in emulator.requests) <= MAX_BATCH_ITEM_BYTES // min(sizes) + 1


def test_oversized_message_is_rejected_alone(monkeypatch, emulator):
    messages = [identify("small-1"), identify("huge", blob="x" * MAX_MESSAGE_BYTES), identify("small-2")]
    result = make_hook(monkeypatch, emulator).send_messages(messages)
    assert result.delivered == [0, 2]
    assert [p.index for p in result.rejected] == [1]
    assert "32,768" in result.rejected[0].reason
    assert [m["userId"] for m in emulator.messages] == ["small-1", "small-2"]


def test_429_waits_for_retry_after(monkeypatch, emulator, fake_time):
    emulator.fail_next(2, status=429, retry_after=7)
    result = make_hook(monkeypatch, emulator, fake_time).send_messages([identify("u1")])
    assert result.delivered == [0]
    assert fake_time.sleeps == [7.0, 7.0]
    assert [r.status for r in emulator.requests] == [429, 429, 200]


def test_429_with_rate_limit_reset_header(monkeypatch, emulator, fake_time):
    emulator.fail_next(1, status=429, headers={"X-RateLimit-Reset": "3"})
    make_hook(monkeypatch, emulator, fake_time).send_messages([identify("u1")])
    assert fake_time.sleeps == [3.0]


def test_retry_after_as_http_date():
    assert (
        parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=lambda: 1445412480.0) == 10.0
    )
    assert parse_retry_after({"Retry-After": "garbage"}) is None
    assert parse_retry_after({"X-RateLimit-Reset": "1445412490"}, now=lambda: 1445412480.0) == 10.0


def test_503_backs_off_exponentially(monkeypatch, emulator, fake_time):
    emulator.fail_next(3, status=503)
    result = make_hook(monkeypatch, emulator, fake_time).send_messages([identify("u1")])
    assert result.delivered == [0]
    assert fake_time.sleeps == [0.5, 1.0, 2.0]


def test_retries_stop_at_max_attempts(monkeypatch, emulator, fake_time):
    emulator.fail_next(10, status=500)
    hook = make_hook(monkeypatch, emulator, fake_time, retry_policy={"max_attempts": 3})
    result = hook.send_messages([identify("u1")])
    assert result.delivered == []
    assert "HTTP 500" in result.failed[0].reason and "after 3 attempts" in result.failed[0].reason
    assert len(emulator.requests) == 3


def test_retries_stop_at_the_total_time_budget(monkeypatch, emulator, fake_time):
    emulator.fail_next(10, status=503)
    hook = make_hook(monkeypatch, emulator, fake_time, retry_policy={"max_attempts": 10, "max_total_s": 3.0})
    result = hook.send_messages([identify("u1")])
    assert fake_time.sleeps == [0.5, 1.0]  # the next wait (2 s) would end at 3.5 s > 3 s
    assert "retry budget" in result.failed[0].reason


def test_dropped_connection_is_retried(monkeypatch, emulator, fake_time):
    emulator.drop_next(1)
    result = make_hook(monkeypatch, emulator, fake_time).send_messages([identify("u1")])
    assert result.delivered == [0]
    assert fake_time.sleeps == [0.5]
    assert [m["userId"] for m in emulator.messages] == ["u1"]


def test_read_timeout_is_retried(monkeypatch, emulator, fake_time):
    emulator.delay_next(1, 1.0)
    hook = make_hook(monkeypatch, emulator, fake_time, timeout=(2.0, 0.3))
    assert hook.send_messages([identify("u1")]).delivered == [0]
    assert fake_time.sleeps == [0.5]


@pytest.mark.parametrize("status", [400, 401, 403, 413])
def test_no_retry_on_permanent_errors(monkeypatch, emulator, fake_time, status):
    emulator.fail_next(1, status=status)
    result = make_hook(monkeypatch, emulator, fake_time).send_messages([identify("u1")])
    assert len(emulator.requests) == 1
    assert fake_time.sleeps == []
    assert result.failed[0].reason.startswith(f"HTTP {status} from Segment: ")


def test_a_refused_user_does_not_poison_its_batch(monkeypatch, emulator, fake_time):
    emulator.fail_user("bad", status=400)
    messages = (
        [identify(f"u{i}") for i in range(5)] + [identify("bad")] + [identify(f"v{i}") for i in range(4)]
    )
    result = make_hook(monkeypatch, emulator, fake_time).send_messages(messages)
    assert [p.index for p in result.failed] == [5]
    assert sorted(result.delivered) == [i for i in range(10) if i != 5]
    assert result.total == 10


def test_a_user_failing_with_500_is_isolated_after_retries(monkeypatch, emulator, fake_time):
    emulator.fail_user("flaky", status=500)
    messages = [identify(f"u{i}") for i in range(7)] + [identify("flaky")]
    hook = make_hook(monkeypatch, emulator, fake_time, retry_policy={"max_attempts": 2})
    result = hook.send_messages(messages)
    assert [p.index for p in result.failed] == [7]
    assert len(result.delivered) == 7


def test_every_message_is_accounted_for(monkeypatch, emulator, fake_time):
    emulator.fail_user("bad", status=400)
    messages = [identify(f"u{i}") for i in range(3000)]
    messages[10] = identify("bad")
    messages[20] = identify("huge", blob="x" * 40_000)
    result = make_hook(monkeypatch, emulator, fake_time).send_messages(messages)
    assert result.total == 3000
    assert sorted(result.delivered + [p.index for p in result.failed + result.rejected]) == list(range(3000))


def test_token_bucket_never_exceeds_its_rate(fake_time):
    bucket = TokenBucket(100, clock=fake_time.clock, sleep=fake_time.sleep)
    released = 0
    for _ in range(50):
        bucket.acquire(30)
        released += 30
        assert released <= 100 * fake_time.now + 1e-9
    assert released / fake_time.now == pytest.approx(100, rel=0.01)


def test_connection_test_is_honest_about_the_write_key(monkeypatch, emulator):
    ok, message = make_hook(monkeypatch, emulator).test_connection()
    assert ok
    assert "cannot verify the key" in message
    assert WRITE_KEY not in message


def test_connection_test_refuses_an_empty_key(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_SEGMENT_EMPTY", json.dumps({"conn_type": "segment_profiles", "password": ""})
    )
    ok, message = SegmentProfilesHook("segment_empty").test_connection()
    assert not ok and "no write key" in message


def test_connection_test_reports_an_unreachable_host(monkeypatch):
    conn = {"conn_type": "segment_profiles", "password": "secret-key-1", "host": "http://127.0.0.1:9/v1"}
    monkeypatch.setenv("AIRFLOW_CONN_SEGMENT_DOWN", json.dumps(conn))
    ok, message = SegmentProfilesHook("segment_down", timeout=(0.5, 0.5)).test_connection()
    assert not ok and "Could not reach" in message
    assert "secret-key-1" not in message


def test_empty_write_key_refuses_to_send(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_SEGMENT_EMPTY", json.dumps({"conn_type": "segment_profiles", "password": ""})
    )
    with pytest.raises(ValueError, match="no write key"):
        SegmentProfilesHook("segment_empty").send_messages([identify("u1")])


def test_write_key_never_appears_in_logs_errors_or_repr(monkeypatch, caplog, capfd, fake_time):
    secret = "s3cr3t-write-key-never-shown"
    caplog.set_level(logging.DEBUG)
    with SegmentEmulator(write_key=secret) as emu:
        monkeypatch.setenv("AIRFLOW_CONN_SEGMENT_SECRET", json.dumps(emu.airflow_connection(secret)))
        hook = SegmentProfilesHook(
            "segment_secret", sleep=fake_time.sleep, clock=fake_time.clock, retry_policy={"max_attempts": 2}
        )
        emu.fail_next(1, status=429, retry_after=1)
        emu.fail_user("bad", status=400)
        emu.drop_next(1)
        result = hook.send_messages([identify("u1"), identify("bad"), identify("big", b="x" * 40_000)])
        texts = [repr(hook), repr(emu), *(p.reason for p in result.failed + result.rejected)]
        texts.append(str(hook.test_connection()))
        emu.fail_next(5, status=503)
        texts.append(str(hook.send_messages([identify("u2")]).failed))
    emu_down = SegmentProfilesHook("segment_secret", timeout=(0.2, 0.2), retry_policy={"max_attempts": 1})
    texts.append(str(emu_down.send_messages([identify("u3")]).failed))
    out, err = capfd.readouterr()
    logs = caplog.text + out + err  # Airflow's structlog writes to the console, stdlib logging to caplog
    texts.append(logs)
    encoded = "czNjcjN0LXdyaXRlLWtleS1uZXZlci1zaG93bjo="  # base64(secret + ":")
    for text in texts:
        assert secret not in text
        assert encoded not in text
    assert "Retrying" in logs  # the logs were captured, so the check above had something to read


def test_a_write_key_with_whitespace_is_refused_before_sending(monkeypatch, emulator):
    # Segment (and the emulator) answer 200 to such a key and drop the events: "delivered" would be a lie.
    conn = {"conn_type": "segment_profiles", "password": WRITE_KEY + "\n", "host": emulator.url}
    monkeypatch.setenv("AIRFLOW_CONN_SEGMENT_NEWLINE", json.dumps(conn))
    with pytest.raises(ValueError, match="whitespace") as raised:
        SegmentProfilesHook("segment_newline").send_messages([identify("u1")])
    assert WRITE_KEY not in str(raised.value)
    assert emulator.requests == []


def test_uri_with_host_and_port_reaches_the_emulator(monkeypatch, emulator):
    monkeypatch.setenv(
        "AIRFLOW_CONN_SEGMENT_URI", f"segment-profiles://:{WRITE_KEY}@127.0.0.1:{emulator.port}"
    )
    hook = SegmentProfilesHook("segment_uri")
    assert hook.base_url == emulator.url
    assert hook.send_messages([identify("u1")]).delivered == [0]


@pytest.mark.parametrize(
    ("host", "port", "url"),
    [
        ("proxy.example.com", None, "https://proxy.example.com/v1"),
        ("https://proxy.example.com/v1", None, "https://proxy.example.com/v1"),
        ("localhost:8765", None, "http://localhost:8765/v1"),
        ("127.0.0.1", 8765, "http://127.0.0.1:8765/v1"),
    ],
)
def test_host_override_forms(monkeypatch, host, port, url):
    conn = {"conn_type": "segment_profiles", "password": "k3y", "host": host, "port": port}
    monkeypatch.setenv("AIRFLOW_CONN_SEGMENT_HOST_FORMS", json.dumps(conn))
    assert SegmentProfilesHook("segment_host_forms").base_url == url
