"""The Profile API: the emulator's endpoints over HTTP, SegmentProfileApiHook against them (auth, 404,
pagination, retries, rate limit, the token kept out of messages) and the comparison rules of verification."""

from __future__ import annotations

import base64
import json

import pytest
import requests

from airflow_provider_segment_profiles.exceptions import ConfigurationError, VerificationFailed
from airflow_provider_segment_profiles.hooks.profile_api import (
    ProfileApiAccessError,
    ProfileApiUnavailable,
    SegmentProfileApiHook,
)
from airflow_provider_segment_profiles.hooks.regions import PROFILE_API_REGIONS, UnknownRegionError
from airflow_provider_segment_profiles.pipeline.verify import (
    VerificationOutcome,
    VerificationPolicy,
    VerificationResult,
    check_verification_settings,
    compare,
    failure,
    same_value,
)
from airflow_provider_segment_profiles.testing import ProfileSpace, SegmentEmulator
from airflow_provider_segment_profiles.testing.profile_api import ProfileApi

KEY, OTHER_KEY, TOKEN, OTHER_TOKEN = "wk-space-a", "wk-space-b", "pat-space-a-0123", "pat-space-b-4567"


@pytest.fixture
def emulator():
    spaces = [ProfileSpace("spa_a", (KEY,), (TOKEN,)), ProfileSpace("spa_b", (OTHER_KEY,), (OTHER_TOKEN,))]
    with SegmentEmulator(write_key="wk-no-space", profile_spaces=spaces) as emu:
        yield emu


def send(emu: SegmentEmulator, key: str, *messages: dict) -> None:
    response = requests.post(f"{emu.url}/batch", json={"batch": list(messages)}, auth=(key, ""), timeout=5)
    assert response.status_code == 200


def traits_url(emu: SegmentEmulator, external_id: str, space: str = "spa_a") -> str:
    return f"{emu.url}/spaces/{space}/collections/users/profiles/{external_id}/traits"


def get(emu, external_id, token=TOKEN, space="spa_a", **params):
    return requests.get(traits_url(emu, external_id, space), params=params, auth=(token, ""), timeout=5)


@pytest.fixture
def hook(emulator, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_PAPI_TEST", json.dumps(emulator.profile_api_connection("spa_a")))
    return SegmentProfileApiHook("papi_test", sleep=lambda s: None, requests_per_second=100)


# -- the emulator's endpoints --------------------------------------------------------------------------
def test_identify_traits_are_served_last_value_winning(emulator):
    send(emulator, KEY, {"type": "identify", "userId": "u1", "traits": {"plan": "free", "age": 3}})
    send(emulator, KEY, {"type": "identify", "userId": "u1", "traits": {"plan": "pro", "gone": None}})
    body = get(emulator, "user_id:u1", limit=200).json()
    assert body["traits"] == {"plan": "pro", "age": 3, "gone": None}
    assert body["cursor"]["has_more"] is False


def test_authentication_is_basic_with_the_spaces_token(emulator):
    send(emulator, KEY, {"type": "identify", "userId": "u1", "traits": {"a": 1}})
    url = traits_url(emulator, "user_id:u1")
    assert requests.get(url, timeout=5).status_code == 401
    assert get(emulator, "user_id:u1", token="pat-wrong").status_code == 401
    refused = get(emulator, "user_id:u1", token=OTHER_TOKEN)  # a token of another Space
    assert refused.status_code == 401
    assert refused.json() == {
        "error": {"code": "authentication_error", "message": "No valid Access Token provided."}
    }
    bearer = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert bearer.status_code == 401
    no_colon = {"Authorization": "Basic " + base64.b64encode(TOKEN.encode()).decode()}
    assert requests.get(url, headers=no_colon, timeout=5).status_code == 401
    assert get(emulator, "user_id:u1").status_code == 200


def test_unknown_profiles_and_ids_without_a_type_are_404(emulator):
    send(emulator, KEY, {"type": "identify", "userId": "u1", "traits": {"a": 1}})
    missing = get(emulator, "user_id:nobody")
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "not_found", "message": "Profile was not found."}}
    assert get(emulator, "u1").status_code == 404  # the documented mistake: no id type
    assert get(emulator, "anonymous_id:u1").status_code == 404


def test_profiles_belong_to_the_space_of_the_write_key(emulator):
    send(emulator, KEY, {"type": "identify", "userId": "u1", "traits": {"space": "a"}})
    send(emulator, OTHER_KEY, {"type": "identify", "userId": "u1", "traits": {"space": "b"}})
    send(emulator, "wk-no-space", {"type": "identify", "userId": "u2", "traits": {"space": "none"}})
    assert get(emulator, "user_id:u1").json()["traits"] == {"space": "a"}
    assert get(emulator, "user_id:u1", token=OTHER_TOKEN, space="spa_b").json()["traits"] == {"space": "b"}
    assert get(emulator, "user_id:u2").status_code == 404
    # Dropped messages (no user id) and unknown write keys build nothing either.
    send(emulator, "wk-unknown", {"type": "identify", "userId": "u3", "traits": {"x": 1}})
    assert get(emulator, "user_id:u3").status_code == 404


def test_external_ids_resolve_and_merge(emulator):
    send(emulator, KEY, {"type": "identify", "anonymousId": "anon-1", "traits": {"seen": True}})
    send(emulator, KEY, {"type": "identify", "userId": 42, "traits": {"n": 1}})
    send(emulator, KEY, {"type": "track", "userId": 42, "anonymousId": "anon-1", "event": "Joined"})
    merged = {"seen": True, "n": 1}
    assert get(emulator, "user_id:42").json()["traits"] == merged
    assert get(emulator, "anonymous_id:anon-1").json()["traits"] == merged
    send(emulator, KEY, {"type": "identify", "userId": "+15555550123", "traits": {"phone": True}})
    assert get(emulator, "user_id:%2B15555550123").json()["traits"] == {"phone": True}


def test_include_limit_and_pagination(emulator):
    traits = {f"t{i:03d}": i for i in range(25)}
    send(emulator, KEY, {"type": "identify", "userId": "u1", "traits": traits})
    first = get(emulator, "user_id:u1").json()
    assert list(first["traits"]) == [f"t{i:03d}" for i in range(10)]  # 10 by default
    assert first["cursor"]["has_more"] is True
    second = get(emulator, "user_id:u1", limit=10, next=first["cursor"]["next"]).json()
    assert list(second["traits"]) == [f"t{i:03d}" for i in range(10, 20)]
    assert get(emulator, "user_id:u1", include="t003,t007,absent").json()["traits"] == {"t003": 3, "t007": 7}
    for limit in (0, 201, "x"):
        bad = get(emulator, "user_id:u1", limit=limit)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "validation_error"


def test_visibility_delay_holds_messages_back():
    now = [100.0]
    api = ProfileApi([ProfileSpace("s", ("k",), ("t",))], visibility_delay=5.0, clock=lambda: now[0])
    api.ingest("k", [{"type": "identify", "userId": "u", "traits": {"a": 1}}])
    assert api.profile("s", "user_id:u") is None
    now[0] += 4.9
    assert api.profile("s", "user_id:u") is None
    now[0] += 0.2
    assert api.profile("s", "user_id:u") == {"a": 1}


def test_profile_space_settings_are_checked():
    with pytest.raises(ValueError, match="write key"):
        ProfileSpace("s", ())
    with pytest.raises(ValueError, match="one Profile Space"):
        ProfileApi([ProfileSpace("a", ("k",)), ProfileSpace("b", ("k",))])
    with pytest.raises(ValueError, match="visibility_delay"):
        ProfileApi([], visibility_delay=-1)


def test_the_tracking_api_is_unchanged_and_reset_forgets_profiles(emulator):
    send(emulator, KEY, {"type": "identify", "userId": "u1", "traits": {"a": 1}})
    assert emulator.messages_for(KEY)[0]["traits"] == {"a": 1}
    assert requests.post(traits_url(emulator, "user_id:u1"), json={}, timeout=5).status_code == 404
    emulator.reset()
    assert get(emulator, "user_id:u1").status_code == 404


# -- the hook ------------------------------------------------------------------------------------------
def test_hook_reads_traits_and_404(emulator, hook):
    send(emulator, KEY, {"type": "identify", "userId": "a/b+c", "traits": {"plan": "pro", "n": 2}})
    got = hook.get_traits("user_id", "a/b+c", include=["plan", "n", "absent"])
    assert got.found and got.traits == {"plan": "pro", "n": 2} and got.requests == 1
    assert emulator.profile_api.requests[-1].path.endswith("/profiles/user_id:a%2Fb%2Bc/traits")
    assert hook.get_traits("user_id", "nobody").found is False
    ok, message = hook.test_connection()
    assert ok and "spa_a" in message and TOKEN not in message


def test_hook_asks_in_groups_and_follows_the_cursor(emulator, hook):
    traits = {f"trait_{i}": i for i in range(250)}
    send(emulator, KEY, {"type": "identify", "userId": "big", "traits": traits})
    assert hook.get_traits("user_id", "big", include=list(traits)).traits == traits
    assert len(emulator.profile_api.requests) == 3  # 100 + 100 + 50 names
    assert hook.get_traits("user_id", "big").traits == traits  # every trait: 100 a page, 3 pages
    assert len(emulator.profile_api.requests) == 6
    comma = hook.get_traits("user_id", "big", include=["a,b", "trait_1"])  # a name include cannot carry
    assert comma.traits == traits


def test_hook_retries_429_and_5xx_within_bounds(emulator, hook):
    send(emulator, KEY, {"type": "identify", "userId": "u1", "traits": {"a": 1}})
    waits = []
    hook._sleep = waits.append
    emulator.profile_api.fail_next(1, 429, retry_after=1.5)
    emulator.profile_api.fail_next(1, 503)
    got = hook.get_traits("user_id", "u1")
    assert got.traits == {"a": 1} and got.requests == 3
    assert waits[0] == 1.5  # Retry-After honoured
    emulator.profile_api.fail_next(10, 500)
    with pytest.raises(ProfileApiUnavailable, match="after 5 attempts"):
        hook.get_traits("user_id", "u1")


def test_refused_tokens_are_configuration_errors_without_the_token(emulator, monkeypatch):
    conn = {**emulator.profile_api_connection("spa_a"), "password": "pat-not-this-space-999"}
    monkeypatch.setenv("AIRFLOW_CONN_PAPI_BAD", json.dumps(conn))
    hook = SegmentProfileApiHook("papi_bad")
    with pytest.raises(ProfileApiAccessError, match="HTTP 401") as raised:
        hook.get_traits("user_id", "u1")
    assert isinstance(raised.value, ConfigurationError)
    assert "pat-not-this-space-999" not in str(raised.value) and "pat-not" not in repr(hook)
    ok, message = hook.test_connection()
    assert not ok and "pat-not-this-space-999" not in message


@pytest.mark.parametrize(
    ("extra", "message"),
    [({}, "has no space_id"), ({"space_id": "a/b"}, "not a Segment space id")],
)
def test_connections_without_a_usable_space_id_fail_clearly(monkeypatch, extra, message):
    monkeypatch.setenv(
        "AIRFLOW_CONN_PAPI_NOSPACE",
        json.dumps({"conn_type": "segment_profile_api", "password": "t", "extra": extra}),
    )
    with pytest.raises(ConfigurationError, match=message):
        SegmentProfileApiHook("papi_nospace").session  # noqa: B018


@pytest.mark.parametrize("region", sorted(PROFILE_API_REGIONS))
def test_region_hosts(monkeypatch, region):
    conn = {"conn_type": "segment_profile_api", "password": "t", "extra": {"space_id": "s", "region": region}}
    monkeypatch.setenv("AIRFLOW_CONN_PAPI_REGION", json.dumps(conn))
    hook = SegmentProfileApiHook("papi_region")
    assert hook.base_url == PROFILE_API_REGIONS[region]
    assert hook.traits_url("user_id", "u").startswith(f"{PROFILE_API_REGIONS[region]}/spaces/s/collections/")


def test_unknown_region_and_rate_above_the_limit_are_refused(monkeypatch):
    conn = {"conn_type": "segment_profile_api", "password": "t", "extra": {"space_id": "s", "region": "mars"}}
    monkeypatch.setenv("AIRFLOW_CONN_PAPI_MARS", json.dumps(conn))
    with pytest.raises(UnknownRegionError, match="'mars'"):
        SegmentProfileApiHook("papi_mars").base_url  # noqa: B018
    with pytest.raises(ValueError, match="at most 100"):
        SegmentProfileApiHook("papi_mars", requests_per_second=101)


def test_the_rate_limit_spaces_requests(emulator, monkeypatch):
    """With a clock that only sleeping advances, 10 requests at 4 requests/s take 2.5 s of waiting."""
    send(emulator, KEY, {"type": "identify", "userId": "u1", "traits": {"a": 1}})
    monkeypatch.setenv("AIRFLOW_CONN_PAPI_RATE", json.dumps(emulator.profile_api_connection("spa_a")))
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    hook = SegmentProfileApiHook("papi_rate", requests_per_second=4, sleep=sleep, clock=lambda: now[0])
    for _ in range(10):
        hook.get_traits("user_id", "u1")
    assert now[0] == pytest.approx(2.5)


# -- comparison and settings ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sent", "held", "same"),
    [
        (1, 1.0, True),
        (True, 1, False),
        (1, True, False),
        (False, False, True),
        ("1", 1, False),
        ([1, "a"], [1, "a"], True),
        ([1, "a"], ["a", 1], False),
        ({"a": 1}, {"a": 1.0}, True),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        (None, None, True),
        (None, 0, False),
    ],
)
def test_values_compare_as_json(sent, held, same):
    assert same_value(sent, held) is same


def test_compare_outcomes():
    assert compare({"a": 1}, None) == (VerificationOutcome.MISSING, [])
    assert compare({"a": 1, "b": None}, {"a": 1}) == (VerificationOutcome.KEPT, [])  # a null may be absent
    assert compare({"a": 1, "b": 2, "c": 3}, {"a": 2, "c": 3}) == (VerificationOutcome.MISMATCHED, ["a", "b"])


def test_failure_names_the_causes_of_each_finding():
    assert failure(VerificationResult(sampled=3, kept=1, missing=2), where="w", conn_id="c") is None
    assert failure(VerificationResult(unverified=3), where="w", conn_id="c") is None
    missing = failure(VerificationResult(sampled=2, missing=2), where="w", conn_id="c")
    assert isinstance(missing, VerificationFailed)
    assert "Endpoint Region" in str(missing) and "another source wrote" not in str(missing)
    differ = failure(VerificationResult(sampled=2, mismatched=2), where="w", conn_id="c")
    assert "another source wrote" in str(differ) and "Endpoint Region" not in str(differ)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"verify_sample": -1}, "between 0"),
        ({"verify_sample": 1001}, "between 0"),
        ({"verify_sample": True}, "must be an integer"),
        ({"profile_api_conn_id": ""}, "profile_api_conn_id"),
        ({"verify_policy": {"max_attempts": 0}}, "max_attempts"),
        ({"verify_policy": {"requests_per_second": 500}}, "at most 100"),
        ({"verify_policy": {"first_wait_s": 5, "max_wait_s": 1}}, "first_wait_s"),
        ({"verify_policy": {"budget": 5}}, "verify_policy"),
    ],
)
def test_verification_settings_are_checked(settings, message):
    kwargs = {"verify_sample": 5, "profile_api_conn_id": "p", "verify_policy": None, **settings}
    with pytest.raises(ConfigurationError, match=message):
        check_verification_settings(task_id="t", **kwargs)


def test_policy_waits_double_up_to_the_cap():
    waits = VerificationPolicy(first_wait_s=1, max_wait_s=5).waits()
    assert [next(waits) for _ in range(5)] == [1, 2, 4, 5, 5]


def test_cli_serves_the_profile_api_without_printing_the_token():
    import re
    import signal
    import threading

    from test_emulator import _run_cli

    key, token = "cli-space-write-key", "cli-space-token-314159"
    process = _run_cli("--write-key", key, "--space-id", "spa_cli", "--access-token", token)
    watchdog = threading.Timer(15, process.kill)
    watchdog.start()
    try:
        lines = [process.stdout.readline() for _ in range(3)]
        url = re.search(r"(http://127\.0\.0\.1:\d+/v1)", lines[0]).group(1)
        route = f"{url}/spaces/spa_cli/collections/users/profiles/<id_type:value>/traits"
        assert lines[2].strip() == f"Profile API: GET {route}"
        batch = {"batch": [{"type": "identify", "userId": "42", "traits": {"plan": "pro"}}]}
        assert requests.post(f"{url}/batch", json=batch, auth=(key, ""), timeout=5).status_code == 200
        read = requests.get(route.replace("<id_type:value>", "user_id:42"), auth=(token, ""), timeout=5)
        assert read.json()["traits"] == {"plan": "pro"}
        process.send_signal(signal.SIGINT)
        rest, err = process.communicate(timeout=10)
    finally:
        watchdog.cancel()
        process.kill()
    assert process.returncode == 0, err
    assert token not in "".join(lines) + rest + err
    half = _run_cli("--write-key", key, "--space-id", "spa_cli")
    _out, err = half.communicate(timeout=10)
    assert half.returncode == 2 and "--space-id and --access-token go together" in err


def test_an_unreachable_api_is_unavailable_after_the_retries(monkeypatch):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conn = {"conn_type": "segment_profile_api", "password": "t0ken-x", "host": f"http://127.0.0.1:{port}/v1"}
    monkeypatch.setenv("AIRFLOW_CONN_PAPI_DOWN", json.dumps({**conn, "extra": {"space_id": "s"}}))
    hook = SegmentProfileApiHook(
        "papi_down", retry_policy={"max_attempts": 2, "base_delay_s": 0.01}, sleep=lambda s: None
    )
    with pytest.raises(
        ProfileApiUnavailable, match=r"ConnectionError talking to http://127\.0\.0\.1:\d+/v1 \(after 2"
    ):
        hook.get_traits("user_id", "u1")
