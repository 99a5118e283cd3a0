"""What the emulator received, seen from outside Python: ``GET /messages`` and the NDJSON messages file, over
real HTTP on 127.0.0.1 and through the command line."""

from __future__ import annotations

import json
import re
import signal
import threading

import pytest
import requests
from test_emulator import BASIC, KEY, _run_cli, emu, identify, post

from airflow_provider_segment_profiles.testing import SegmentEmulator

__all__ = ["emu"]  # the fixture, shared with test_emulator.py


def listing(emulator: SegmentEmulator, query: str = "") -> requests.Response:
    """``GET /messages?query``, without any credentials."""
    base = emulator.url.removesuffix("/v1")
    return requests.get(f"{base}/messages{'?' + query if query else ''}", timeout=5)


def track(user_id: object, event: str = "Signed Up") -> dict:
    return {"type": "track", "userId": user_id, "event": event}


def test_listing_filters_by_user_id_and_type(emu):
    sent = [identify("u1"), track("u1"), identify("u2"), identify(42), track("u2", "Churned")]
    assert post(emu, {"batch": sent}).status_code == 200
    cases = {
        "": sent,
        "userId=u1": sent[:2],
        "type=identify": [sent[0], sent[2], sent[3]],
        "userId=u1&type=track": [sent[1]],
        "userId=42": [sent[3]],  # compared as text
        "userId=u1&userId=u2&type=track": [sent[1], sent[4]],  # repeated: any of the values
        "type=group": [],
        "userId=": [],
    }
    for query, expected in cases.items():
        response = listing(emu, query)
        assert response.status_code == 200, query
        assert response.headers["Content-Type"] == "application/json"
        assert response.json() == {"count": len(expected), "messages": expected}, query


def test_listing_shows_only_accepted_messages_and_never_a_write_key(emu):
    post(emu, {"batch": [identify("kept")], "writeKey": KEY}, auth=None)  # key in the body only
    post(emu, {"batch": [identify("unknown key")]}, auth="Basic b3RoZXI6")  # 200, dropped
    post(emu, {"batch": [{"type": "identify"}]})  # 200, dropped: no user id
    response = listing(emu)
    assert response.json() == {"count": 1, "messages": [identify("kept")]}
    assert KEY not in response.text and BASIC.split()[1] not in response.text
    assert len(emu.requests) == 3  # the listing is not tracking traffic


def test_listing_refuses_other_parameters_without_repeating_them(emu):
    payload = listing(emu, "userid=u1").json()
    assert listing(emu, "userid=u1").status_code == 400
    assert payload["code"] == "invalid_request"
    assert "only userId and type filter the listing" in payload["message"]
    assert "names are case-sensitive: userId" in payload["message"]
    response = listing(emu, f"{KEY}=1&type=identify")
    assert response.status_code == 400 and KEY not in response.text


def test_listing_is_read_only(emu):
    base = emu.url.removesuffix("/v1")
    for method in (requests.put, requests.delete, requests.patch):
        assert method(f"{base}/messages", timeout=5).status_code == 405
    response = requests.post(
        f"{base}/messages", data=b"{}", headers={"Content-Type": "application/json"}, timeout=5
    )
    assert response.status_code == 404
    assert requests.get(f"{emu.url}/batch", timeout=5).status_code == 405
    assert requests.get(f"{base}/messages/", timeout=5).status_code == 405
    assert emu.messages == []


def test_messages_file_gets_each_accepted_message_as_it_arrives(tmp_path):
    path = tmp_path / "received.ndjson"
    with SegmentEmulator(write_key=KEY, messages_file=path) as emulator:
        post(emulator, {"batch": [identify("u1"), {"type": "identify"}]})  # the second is dropped
        assert [json.loads(line) for line in path.read_text().splitlines()] == [identify("u1")]
        post(emulator, {"batch": [identify("u2")], "writeKey": KEY}, auth=None)
        raw = json.dumps({"batch": [identify("u3", traits={"name": "Zoë \ud800"})]}).encode()
        post(emulator, raw)
        lines = path.read_bytes().splitlines()
        assert [json.loads(line) for line in lines] == [
            identify("u1"),
            identify("u2"),
            identify("u3", traits={"name": "Zoë \ud800"}),  # the lone surrogate stays an escape
        ]
        assert all(line.decode("utf-8") for line in lines)
        emulator.reset()  # forgets the recordings; the file keeps them
    with SegmentEmulator(write_key=KEY, messages_file=path) as emulator:
        post(emulator, {"batch": [identify("u4")]})
    text = path.read_text()
    assert [json.loads(line)["userId"] for line in text.splitlines()] == ["u1", "u2", "u3", "u4"]
    assert KEY not in text


def test_messages_file_that_cannot_be_opened_fails_start(tmp_path):
    emulator = SegmentEmulator(write_key=KEY, messages_file=tmp_path / "missing" / "received.ndjson")
    with pytest.raises(OSError):
        emulator.start()
    with pytest.raises(RuntimeError):
        emulator.port  # noqa: B018 - not running


def test_cli_lists_and_writes_what_it_accepted(tmp_path):
    secret = "cli-secret-write-key"
    path = tmp_path / "received.ndjson"
    process = _run_cli("--write-key", secret, "--messages-file", str(path))
    watchdog = threading.Timer(15, process.kill)
    watchdog.start()
    try:
        first_line, second_line = process.stdout.readline(), process.stdout.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+)/v1", first_line).group(1)
        assert f"GET {url}/messages" in second_line and str(path) in second_line
        batch = {"batch": [identify("u1"), track("u1"), identify("u2")]}
        assert requests.post(f"{url}/v1/batch", json=batch, auth=(secret, ""), timeout=5).status_code == 200
        filtered = requests.get(f"{url}/messages?userId=u1&type=track", timeout=5).json()
        assert filtered == {"count": 1, "messages": [track("u1")]}
        assert [json.loads(line) for line in path.read_text().splitlines()] == batch["batch"]
        process.send_signal(signal.SIGINT)
        rest, err = process.communicate(timeout=10)
    finally:
        watchdog.cancel()
        process.kill()
    assert process.returncode == 0, err
    assert re.search(r"\b3 messages accepted", rest)
    assert secret not in first_line + second_line + rest + err + path.read_text()


def test_cli_reports_a_messages_file_it_cannot_open(tmp_path):
    secret = "cli-secret-write-key"
    process = _run_cli("--write-key", secret, "--messages-file", str(tmp_path / "missing" / "x.ndjson"))
    out, err = process.communicate(timeout=10)
    assert process.returncode == 1
    assert "could not start" in err and "No such file or directory" in err
    assert secret not in out + err


def test_dropped_listing_shows_what_segment_would_lose(emu):
    """``GET /dropped``: every message answered 200 and lost, with its reason; ``reason`` filters; no key."""
    traits = {f"t{i}": i for i in range(300)}
    post(emu, {"batch": [identify("u1", messageId="m-1"), identify("u2", traits=traits)]})
    post(emu, {"batch": [identify("u1", messageId="m-1")]})
    base = emu.url.removesuffix("/v1")
    everything = requests.get(f"{base}/dropped", timeout=5)
    assert everything.status_code == 200
    body = everything.json()
    assert body["count"] == 2
    assert [(d["reason"], d["path"], d["message"]["userId"]) for d in body["dropped"]] == [
        ("too_many_traits", "/v1/batch", "u2"),
        ("duplicate_message_id", "/v1/batch", "u1"),
    ]
    assert KEY not in everything.text and BASIC not in everything.text
    duplicates = requests.get(f"{base}/dropped?reason=duplicate_message_id", timeout=5).json()
    assert duplicates["count"] == 1 and duplicates["dropped"][0]["message"]["messageId"] == "m-1"
    bad = requests.get(f"{base}/dropped?userId=u1", timeout=5)
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_request"
