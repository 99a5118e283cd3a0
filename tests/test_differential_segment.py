"""
Differential test: this provider against Segment's own Segment Profiles destination.

Segment publishes the destination this provider reproduces: npm ``@segment/action-destinations`` holds
``segment-profiles`` (sendIdentify, sendGroup, sendTrack, sendSubscription) and ``@segment/actions-core``
its runtime (mapping-kit, ``removeEmptyValues``, Ajv validation with coercion, then ``perform``, which
returns the batch it would hand to the tracking API). The harness in ``tests/differential/segment_harness``
runs that code, pinned by its lockfile, on records given as JSON lines.

Each run generates, from a fixed seed, :data:`RECORDS_PER_ACTION` records per action, typical and
hostile (every status spelling with invisible characters around it, nulls, empty strings, one-item and
longer lists, unicode and unpaired surrogates, nested objects with ``__proto__`` and integer-like keys,
big integers, every timestamp form). Each record comes with a mapping in this provider's public format,
built through :func:`~airflow_provider_segment_profiles.actions.compile_mappings`, ``bind`` and
``build``; the same mapping is translated into Segment's mapping format (``@path`` directives into the
event's ``properties``, which hold the record's columns) and run through Segment's code.

The bodies are compared as JSON values, ignoring only what legitimately differs: ``messageId`` when this
provider derives it (Segment sends none), ``sentAt`` and ``context.library`` (added at delivery), and
timestamp text that names the same instant. Every other difference is classified by kind, each kind
checked against the inputs that explain it (an epoch number must have been converted to the right
instant, a zoneless text read as UTC, ...). A kind that is not an id in the deliberate-differences table
of ``docs/mappings.md`` fails the test, so a new difference fails the build until it is decided.

Without Node.js and npm the test skips with the reason; when ``CI`` is set it fails instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_segment_profiles.actions import (
    MappingConfigError,
    MessageSkipped,
    RecordRejected,
    compile_mappings,
)
from airflow_provider_segment_profiles.actions.payloads import MISSING_IDS
from airflow_provider_segment_profiles.actions.subscriptions import SV1, SV2, SV3, SV4, SV5, SV6, SV7, SV8

ROOT = Path(__file__).parent.parent
HARNESS = Path(__file__).parent / "differential" / "segment_harness"
DOCS = ROOT / "docs" / "mappings.md"

SEED = 13
RECORDS_PER_ACTION = 320
SEGMENT_ACTIONS = {
    "send_identify": "sendIdentify",
    "send_group": "sendGroup",
    "send_track": "sendTrack",
    "send_subscriptions": "sendSubscription",
}
#: Segment's mapping needs its required setting field; the value is a placeholder, not a write key.
ENGAGE_SPACE = "differential-test-space"
PRIMARY_KEY = "pk"
CHECKSUM = "0123456789abcdef"

# --- the harness: Node.js, npm ci from the lockfile ------------------------------------------------------


def harness_unavailable() -> str | None:
    """``None`` when Segment's packages are installed in the harness (``npm ci`` from its lockfile when
    the installed tree is not from the current lockfile), else why they cannot be."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH; the differential test runs Segment's destination under Node.js"
    lock_digest = hashlib.sha256((HARNESS / "package-lock.json").read_bytes()).hexdigest()
    stamp = HARNESS / "node_modules" / ".installed-from-lock-sha256"
    if stamp.is_file() and stamp.read_text().strip() == lock_digest:
        return None
    try:
        installed = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
            cwd=HARNESS,
            capture_output=True,
            text=True,
            timeout=900,
        )
    except subprocess.TimeoutExpired:
        return f"npm ci in {HARNESS} took more than 15 minutes"
    if installed.returncode != 0:
        return f"npm ci in {HARNESS} failed: {installed.stderr.strip()[-2000:]}"
    stamp.write_text(lock_digest)
    return None


@pytest.fixture(scope="session")
def segment_harness() -> Path:
    """The installed harness folder. Skips with the reason when it cannot be installed, except in CI."""
    reason = harness_unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the differential test against Segment's code: {reason}")
        pytest.skip(reason)
    return HARNESS


def run_segment(cases: list[Case]) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """
    Run every case through Segment's destination.

    :return: the package versions the harness reports, and one result per case, in order:
        ``{"ok": true, "batch": [message]}`` or ``{"ok": false, "error": ..., "pointers": [...]}``.
    """
    lines = "".join(
        json.dumps(
            {
                "id": index,
                "action": SEGMENT_ACTIONS[case.action],
                "mapping": case.segment_mapping,
                "event": case.event,
            }
        )
        + "\n"
        for index, case in enumerate(cases)
    )
    finished = subprocess.run(
        ["node", "run.js"],
        cwd=HARNESS,
        input=lines,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=600,
        env={**os.environ, "TZ": "UTC"},
    )
    assert finished.returncode == 0, finished.stderr
    # Only "\n" ends a line: JSON.stringify leaves U+2028, U+2029 and U+0085 unescaped inside strings.
    first, *rest = finished.stdout.rstrip("\n").split("\n")
    results = [json.loads(line) for line in rest]
    assert [result["id"] for result in results] == list(range(len(cases))), "the harness lost records"
    return json.loads(first)["versions"], results


# --- generated records -----------------------------------------------------------------------------------

#: Whitespace and invisible characters where Python's ``str.strip`` and JavaScript's ``trim`` agree or
#: not: U+FEFF (JS only), U+0085 and U+001C-U+001F (Python only), U+180E and U+200B (neither).
EDGE_CHARACTERS = [
    " ",
    "\t",
    "\n",
    "\r",
    "\v",
    "\f",
    "\u00a0",
    "\u1680",
    "\u2003",
    "\u2028",
    "\u2029",
    "\u202f",
    "\u3000",
    "\ufeff",
    "\u0085",
    "\u001c",
    "\u001f",
    "\u180e",
    "\u200b",
]
STATUS_WORDS = ["true", "subscribed", "false", "unsubscribed", "did-not-subscribe", "did_not_subscribe"]
ODD_STATUSES = [
    "",
    None,
    "   ",
    "yes",
    "no",
    "1",
    "0",
    "null",
    "INVALID",
    "tru e",
    "\u017fubscribed",  # long s: lower-cases to itself in both languages
    "SUBSCR\u0130BED",  # dotted capital I: lower-cases to two characters in both
    True,
    False,
    1,
    0,
    1.5,
    [True],
    [False],
    [None],
    ["true"],
    [],
    ["true", "false"],
    {"status": "true"},
]
TEXTS = [
    "user-1",
    "ada@example.com",
    "+15555550100",
    "Zoë Ångström",
    "用户-七",
    "🚀 rocket",
    " padded ",
    "line\nbreak",
    "nul\u0000inside",
    "\ufeffbom",
    "x" * 120,
    "unpaired \ud800 surrogate",
    "null",
    "0",
]
ODD_TEXT_VALUES = [
    "",
    None,
    0,
    12345,
    -7,
    1.5,
    1.0,
    -0.0,
    1e21,
    1e-7,
    2**53 - 1,
    2**53 + 1,
    True,
    False,
    ["in-a-list"],
    [None],
    [""],
    [5],
    [True],
    [],
    ["a", "b"],
    [["nested"]],
    {"a": 1},
]
KEYS = [
    "email",
    "plan",
    "first name",
    "名前",
    "a.b",
    "$price",
    "10",
    "2",
    "0",
    "01",
    "-1",
    "1.5",
    "4294967294",
    "4294967295",
    "constructor",
    "toString",
    "hasOwnProperty",
    "",
    "x" * 40,
    "emoji 🚀",
]
GROUP_NAMES = [
    "weekly",
    "newsletter",
    "Product Updates",
    "10",
    "2",
    "0",
    "01",
    "-1",
    "1.5",
    "4294967294",
    "4294967295",
    "9007199254740993",
    "名前",
    "",
    "constructor",
]
TIMESTAMP_TEXTS = [
    "2023-09-26T09:46:28.290Z",
    "2023-09-26T09:46:28Z",
    "2023-09-26T11:46:28+02:00",
    "2023-09-26T02:46:28-07:00",
    "2023-09-26T09:46:28.123456Z",
    "2023-09-26T09:46:28.123456789Z",
    "2023-09-26T09:46:28.1Z",
    "2023-09-26 09:46:28Z",
    "2023-09-26T09:46:28.290+00:00",
    "2023-09-26T09:46:28-00:00",
    "2023-09-26T11:46:28+0200",
    "2023-09-26T09:46:28",
    "2023-09-26T09:46",
    "2023-09-26 09:46:28",
    "2023-09-26",
    "1969-07-20T20:17:40Z",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999Z",
    "2023-09-26t09:46:28z",
    "2023-09-26T09:46:28z",
    "2023-09-26t09:46:28Z",
    "20230926T094628Z",
    "20230926",
    "2023-W39-2",
    "2023-W39-2T09:46:28Z",
    " 2023-09-26T09:46:28Z",
    "2023-09-26T09:46:28Z ",
    "2023-09-26T09:46:28,5Z",
    "2023-09-26T09Z",
    "2023-09-26x09:46:28",
    "Tue, 26 Sep 2023 09:46:28 GMT",
    "Tue, 26 Sep 2023 09:46:28 +0000",
    "09/26/2023",
    "2023/09/26 09:46",
    "2023-02-30",
    "2023-02-30T10:00:00Z",
    "2023-13-01",
    "2023-09-26T25:00:00Z",
    "2023-09",
    "2023",
    "12",
    "garbage",
    "now",
    "1695721588",
    "1695721588290",
    "1695721588.29",
    "-86400",
    "1e9",
]
TIMESTAMP_OTHERS = [
    "",
    None,
    1695721588,
    1695721588.29,
    1695721588290,
    0,
    -1,
    99_999_999_999,
    100_000_000_000,
    1e300,
    -1e20,
    True,
    [1695721588],
    ["2023-09-26T09:46:28Z"],
    [None],
    [],
    {"at": "2023-09-26T09:46:28Z"},
]
CONSENT_VALUES = [
    {"categoryPreferences": {"analytics": True, "advertising": False}},
    {"categoryPreferences": {}},
    {"categoryPreferences": {"analytics": "yes"}},
    {"categoryPreferences": {"analytics": None}},
    {"categoryPreferences": [True, False]},
    {"categoryPreferences": []},
    {"categoryPreferences": ["yes"]},
    {"categoryPreferences": None},
    {"categoryPreferences": "analytics"},
    {"other": True},
    {},
    None,
    "",
    "text",
    [True],
    5,
]
MESSAGE_IDS = ["m-1", "msg 名前", "x" * 99, "x" * 100, "x" * 150, "", None, 12345, ["m-in-list"], [None]]


def random_instant_text(rng: random.Random) -> str:
    """An RFC 3339 timestamp with a random offset and 0-9 fraction digits."""
    instant = datetime(1971, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(0, 2_000_000_000))
    offset_minutes = rng.choice([0, 0, 60, -300, 330, 345, -600, 840])
    local = instant + timedelta(minutes=offset_minutes)
    digits = rng.choice([0, 1, 3, 3, 6, 9])
    fraction = "." + "".join(rng.choice("0123456789") for _ in range(digits)) if digits else ""
    if offset_minutes == 0 and rng.random() < 0.7:
        zone = "Z"
    else:
        sign = "+" if offset_minutes >= 0 else "-"
        zone = f"{sign}{abs(offset_minutes) // 60:02d}:{abs(offset_minutes) % 60:02d}"
    return local.strftime("%Y-%m-%dT%H:%M:%S") + fraction + zone


TYPICAL_TEXTS = ["user-1", "ada@example.com", "Zoë Ångström", "用户-七", "🚀 rocket", 12345, "acct-42"]
TYPICAL_TIMESTAMPS = ["2023-09-26T09:46:28.290Z", "2023-09-26T11:46:28+02:00", 1695721588, "2023-09-26"]


class Generator:
    """Seeded generator of values; a *calm* record (about half of them) takes typical values only."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.calm = False

    def next_record(self) -> None:
        self.calm = self.rng.random() < 0.5

    def pick(self, values: list[Any]) -> Any:
        value = self.rng.choice(values)
        return json.loads(json.dumps(value))  # a private copy

    def text(self) -> Any:
        if self.calm:
            return self.pick(TYPICAL_TEXTS)
        return self.pick(TEXTS) if self.rng.random() < 0.6 else self.pick(ODD_TEXT_VALUES)

    def status(self) -> Any:
        roll = self.rng.random() * (0.35 if self.calm else 1.0)
        if roll < 0.35:
            word = self.rng.choice(STATUS_WORDS)
            return self.rng.choice([word, word.upper(), word.title(), word.capitalize()])
        if roll < 0.65:
            word = self.rng.choice(STATUS_WORDS)
            before = "".join(self.rng.choice(EDGE_CHARACTERS) for _ in range(self.rng.randrange(0, 3)))
            after = "".join(self.rng.choice(EDGE_CHARACTERS) for _ in range(self.rng.randrange(0, 3)))
            return before + word + after
        return self.pick(ODD_STATUSES)

    def timestamp(self) -> Any:
        if self.calm:
            return random_instant_text(self.rng) if self.rng.random() < 0.5 else self.pick(TYPICAL_TIMESTAMPS)
        roll = self.rng.random()
        if roll < 0.3:
            return random_instant_text(self.rng)
        if roll < 0.8:
            return self.pick(TIMESTAMP_TEXTS)
        return self.pick(TIMESTAMP_OTHERS)

    def scalar(self) -> Any:
        roll = self.rng.random() * (0.65 if self.calm else 1.0)
        if roll < 0.5:
            return self.pick(TEXTS)
        if roll < 0.65:
            return self.rng.choice([0, 1, -42, 3.25, 1e21, 1e-7, -0.0, 2**53 + 1, -(2**60), 0.1])
        return self.rng.choice(["", None, True, False, "0", "false"])

    def key(self, proto: float = 0.0) -> str:
        if self.calm:
            return self.rng.choice(["email", "plan", "first name", "名前", "10", "2", "score"])
        if self.rng.random() < proto:
            return "__proto__"
        return self.rng.choice(KEYS)

    def json_value(self, depth: int = 0) -> Any:
        """A JSON value as a JSON/JSONB column holds it: objects with hostile keys, lists, scalars."""
        roll = self.rng.random()
        if depth < 3 and roll < 0.25:
            return {self.key(proto=0.08): self.json_value(depth + 1) for _ in range(self.rng.randrange(0, 5))}
        if depth < 3 and roll < 0.35:
            return [self.json_value(depth + 1) for _ in range(self.rng.randrange(0, 4))]
        return self.scalar()


@dataclass
class Case:
    """One record: its mapping in this provider's format, the same in Segment's, and the inputs."""

    action: str
    number: int
    fields: dict[str, Any] = field(default_factory=dict)
    segment_fields: dict[str, Any] = field(default_factory=dict)
    columns: list[str] = field(default_factory=lambda: [PRIMARY_KEY])
    row: list[Any] = field(default_factory=list)
    properties: dict[str, Any] = field(default_factory=dict)
    #: top-level field -> the value the record gives it (absent when the field is not mapped)
    inputs: dict[str, Any] = field(default_factory=dict)
    star_fields: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.row = [f"pk-{self.number}"]
        self.properties = {"c0": self.row[0]}

    def column(self, value: Any, name: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """A new result column holding ``value``: (this provider's form, Segment's @path)."""
        index = len(self.columns)
        name = name or f"col{index}"
        while name in self.columns:
            name += "_"
        alias = f"c{index}"
        self.columns.append(name)
        self.row.append(value)
        self.properties[alias] = value
        return {"column": name}, {"@path": f"$.properties.{alias}"}

    @property
    def segment_mapping(self) -> dict[str, Any]:
        mapping = {"engage_space": ENGAGE_SPACE, **self.segment_fields}
        for key in self.star_fields:  # {"columns": "*"} is every result column but the excluded key
            mapping[key] = {
                name: {"@path": f"$.properties.c{index}"}
                for index, name in enumerate(self.columns)
                if name != PRIMARY_KEY
            }
        return mapping

    @property
    def event(self) -> dict[str, Any]:
        return {"type": "track", "event": "Differential Record", "properties": self.properties}

    def set(self, key: str, provider: Any, segment: Any, value: Any) -> None:
        self.fields[key] = provider
        self.segment_fields[key] = segment
        self.inputs[key] = value


def add_scalar_field(case: Case, gen: Generator, key: str, value: Any, *, literal_ok: bool = True) -> None:
    """A top-level single-value field from a column, or (sometimes) a literal with the same value."""
    if literal_ok and gen.rng.random() < 0.15 and value not in (None, "") and not isinstance(value, dict):
        case.set(key, value, value, value)
        return
    provider, segment = case.column(value)
    case.set(key, provider, segment, value)


def add_object_field(case: Case, gen: Generator, key: str, *, values: Any = None, depth: int = 0) -> None:
    """An object field (traits, properties, consent, subscription_groups) in one of the value forms."""
    roll = gen.rng.random()
    if values is not None or roll < 0.3:  # a JSON column
        value = values if values is not None else gen.json_value()
        if values is None and gen.rng.random() < 0.7:
            value = {gen.key(proto=0.05): gen.json_value(1) for _ in range(gen.rng.randrange(0, 6))}
        provider, segment = case.column(value)
        case.set(key, provider, segment, value)
        return
    if roll < 0.75:
        provider_form, segment_form, resolved = object_of_forms(case, gen, depth)
        case.set(key, provider_form, segment_form, resolved)
        return
    if roll < 0.88:
        names = []
        provider_form: dict[str, Any] = {"columns": names}
        segment_form: dict[str, Any] = {}
        resolved = {}
        for _ in range(gen.rng.randrange(1, 4)):
            name = gen.key(proto=0.03) or "blank"
            if name in names or name == PRIMARY_KEY:
                continue
            value = gen.json_value(1)
            _, path = case.column(value, name=name)
            names.append(case.columns[-1])
            segment_form[case.columns[-1]] = path
            resolved[case.columns[-1]] = value
        case.set(key, provider_form, segment_form, resolved)
        return
    if roll < 0.94:
        case.fields[key] = {"columns": "*", "exclude": [PRIMARY_KEY]}
        case.star_fields.append(key)
        case.inputs[key] = "*"
        return
    value = {gen.key(): gen.scalar() for _ in range(gen.rng.randrange(0, 4))}
    case.set(key, {"literal": value}, value, value)


def object_of_forms(case: Case, gen: Generator, depth: int) -> tuple[dict, dict, dict]:
    """``{"key": FORM, ...}``: (this provider's form, Segment's mapping, the object it resolves to)."""
    provider: dict[str, Any] = {}
    segment: dict[str, Any] = {}
    resolved: dict[str, Any] = {}
    for _ in range(gen.rng.randrange(0, 5)):
        key = gen.key(proto=0.04)
        roll = gen.rng.random()
        if roll < 0.6:
            value = gen.json_value(1)
            provider[key], segment[key] = case.column(value)
        elif roll < 0.8 or depth >= 2:
            value = gen.scalar() if gen.rng.random() < 0.8 else [gen.scalar(), gen.scalar()]
            provider[key] = segment[key] = value
        else:
            provider[key], segment[key], value = object_of_forms(case, gen, depth + 1)
        resolved[key] = value
    return provider, segment, resolved


def add_common_fields(case: Case, gen: Generator, object_key: str | None) -> None:
    if gen.rng.random() < 0.85 or "anonymous_id" in case.fields:
        add_scalar_field(case, gen, "user_id", gen.text(), literal_ok=False)
    if gen.rng.random() < 0.4 or "user_id" not in case.fields:
        add_scalar_field(case, gen, "anonymous_id", gen.text(), literal_ok=False)
    if object_key and gen.rng.random() < 0.85:
        add_object_field(case, gen, object_key)
    if gen.rng.random() < 0.75:
        add_scalar_field(case, gen, "timestamp", gen.timestamp(), literal_ok=False)
    if gen.rng.random() < 0.25:
        add_scalar_field(
            case, gen, "message_id", gen.pick(MESSAGE_IDS[:3] if gen.calm else MESSAGE_IDS), literal_ok=False
        )
    if gen.rng.random() < 0.35:
        if gen.rng.random() < 0.7:
            add_object_field(
                case, gen, "consent", values=gen.pick(CONSENT_VALUES[:2] if gen.calm else CONSENT_VALUES)
            )
        else:
            choices = {name: gen.rng.choice([True, False, "yes", None]) for name in ("analytics", "ads")}
            provider, segment, resolved = {}, {}, {}
            for name, choice in choices.items():
                provider[name], segment[name] = case.column(choice)
                resolved[name] = choice
            case.set(
                "consent",
                {"categoryPreferences": provider},
                {"categoryPreferences": segment},
                {"categoryPreferences": resolved},
            )


def identify_case(gen: Generator, number: int) -> Case:
    case = Case("send_identify", number)
    add_common_fields(case, gen, "traits")
    if gen.rng.random() < 0.4:
        add_scalar_field(case, gen, "group_id", gen.text())
    return case


def group_case(gen: Generator, number: int) -> Case:
    case = Case("send_group", number)
    add_common_fields(case, gen, "traits")
    add_scalar_field(case, gen, "group_id", gen.text() if gen.rng.random() < 0.5 else "acct-1")
    return case


def track_case(gen: Generator, number: int) -> Case:
    case = Case("send_track", number)
    add_common_fields(case, gen, "properties")
    add_scalar_field(case, gen, "event_name", gen.text() if gen.rng.random() < 0.4 else "Order Completed")
    if gen.rng.random() < 0.4:
        add_scalar_field(case, gen, "group_id", gen.text())
    return case


CHANNELS = {
    "email": ["email_subscription_status"],
    "phone": ["sms_subscription_status", "whatsapp_subscription_status"],
    "android_push_token": ["android_push_subscription_status"],
    "ios_push_token": ["ios_push_subscription_status"],
}
KEY_VALUES = {
    "email": ["ada@example.com", "Zoë@example.com", " spaced@example.com "],
    "phone": ["+15555550100", "+44 20 7946 0958"],
    "android_push_token": ["android-token-1"],
    "ios_push_token": ["ios-token-1", "ios 🍎"],
}


def subscriptions_case(gen: Generator, number: int) -> Case:
    case = Case("send_subscriptions", number)
    add_common_fields(case, gen, "traits" if gen.rng.random() < 0.5 else None)
    channels = [channel for channel in CHANNELS if gen.rng.random() < 0.55] or [
        gen.rng.choice(list(CHANNELS))
    ]
    for channel in channels:
        value = gen.pick(KEY_VALUES[channel]) if gen.calm or gen.rng.random() < 0.8 else gen.text()
        add_scalar_field(case, gen, channel, value)
        for status_field in CHANNELS[channel]:
            if gen.rng.random() < 0.7 or (
                status_field == CHANNELS[channels[-1]][-1] and not has_status(case)
            ):
                status = gen.status()
                literal_ok = isinstance(status, str) and status.strip(JS_WHITESPACE).lower() in STATUS_WORDS
                add_scalar_field(case, gen, status_field, status, literal_ok=literal_ok)
    if "email_subscription_status" in case.fields and gen.rng.random() < 0.5:
        if gen.rng.random() < 0.6:
            groups = {gen.rng.choice(GROUP_NAMES): gen.status() for _ in range(gen.rng.randrange(0, 5))}
            if gen.rng.random() < 0.05 and not gen.calm:
                groups["__proto__"] = "true"
            add_object_field(case, gen, "subscription_groups", values=groups)
        else:
            provider, segment, resolved = {}, {}, {}
            for _ in range(gen.rng.randrange(1, 5)):
                name = gen.rng.choice(GROUP_NAMES)
                resolved[name] = gen.status()
                provider[name], segment[name] = case.column(resolved[name])
            case.set("subscription_groups", provider, segment, resolved)
    return case


def has_status(case: Case) -> bool:
    return any(key.endswith("_subscription_status") for key in case.fields)


BUILDERS = {
    "send_identify": identify_case,
    "send_group": group_case,
    "send_track": track_case,
    "send_subscriptions": subscriptions_case,
}


def generate_cases(seed: int = SEED, per_action: int = RECORDS_PER_ACTION) -> list[Case]:
    gen = Generator(seed)
    cases = []
    for position, action in enumerate(SEGMENT_ACTIONS):
        for index in range(per_action):
            gen.next_record()
            cases.append(BUILDERS[action](gen, len(SEGMENT_ACTIONS) * index + position))
    return cases


# --- this provider, through its public mapping API -----------------------------------------------------


@dataclass
class ProviderResult:
    message: dict[str, Any] | None = None
    rejection: RecordRejected | None = None
    config_error: MappingConfigError | None = None
    skipped: MessageSkipped | None = None


def run_provider(case: Case) -> ProviderResult:
    mapping = {"name": "differential", "action": case.action, "fields": case.fields}
    try:
        (compiled,) = compile_mappings([mapping], sync_mode="diff", primary_key=PRIMARY_KEY)
        builder = compiled.bind(case.columns)
    except MappingConfigError as error:
        return ProviderResult(config_error=error)
    try:
        built = builder.build(case.row, primary_key=case.row[0], checksum=CHECKSUM)
    except RecordRejected as rejection:
        return ProviderResult(rejection=rejection)
    except MessageSkipped as skipped:
        return ProviderResult(skipped=skipped)
    assert json.loads(built.encoded) == built.message
    return ProviderResult(message=json.loads(built.encoded))


# --- reference readings of timestamps (independent of the provider's code) -----------------------------

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})"
)
_ISO = re.compile(
    r"""(?P<year>\d{4})(?:
        -(?P<month>\d{2})-(?P<day>\d{2}) | (?P<bmonth>\d{2})(?P<bday>\d{2})
        | -W(?P<week>\d{2})-(?P<weekday>\d) | W(?P<bweek>\d{2})(?P<bweekday>\d))
    (?:.(?P<hour>\d{2})(?::?(?P<minute>\d{2})(?::?(?P<second>\d{2}))?)?(?:[.,](?P<fraction>\d+))?)?
    (?P<zone>[Zz]|[+-]\d{2}(?::?\d{2})?)?""",
    re.X,
)
_NUMERIC = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FIRST_INSTANT_US = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)
LAST_INSTANT_US = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - _EPOCH) // timedelta(
    microseconds=1
)


def _nanoseconds(day: date, hour: int, minute: int, second: int, fraction: str, zone: str) -> int:
    offset = 0
    if zone and zone not in "Zz":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        offset = sign * (int(digits[:2]) * 3600 + int(digits[2:4] or 0) * 60)
    days = (day - _EPOCH.date()).days
    seconds = days * 86400 + hour * 3600 + minute * 60 + second - offset
    return seconds * 10**9 + int((fraction + "000000000")[:9])


def rfc3339_nanoseconds(text: str) -> int | None:
    """The instant RFC 3339 text names, in ns since 1970; ``None`` when it is not RFC 3339."""
    match = _RFC3339.fullmatch(text)
    if not match:
        return None
    year, month, day, hour, minute, second = map(int, match.groups()[:6])
    try:
        calendar_day = date(year, month, day)
    except ValueError:
        return None
    if hour > 23 or minute > 59 or second > 59:
        return None
    return _nanoseconds(calendar_day, hour, minute, second, match[7] or "", match[8])


def iso_reading(text: str) -> tuple[int, bool] | None:
    """
    (instant in ns, whether the text has an offset) for ISO-8601 text: calendar or week dates, basic or
    extended, optional time and offset; a text without an offset is read as UTC. Like Python's
    ``datetime.fromisoformat`` (3.11+), any one character may separate the date and the time.
    ``None`` for other text.
    """
    match = _ISO.fullmatch(text)
    if not match:
        return None
    parts = match.groupdict()
    year = int(parts["year"])
    try:
        if parts["week"] or parts["bweek"]:
            week = int(parts["week"] or parts["bweek"])
            weekday = int(parts["weekday"] or parts["bweekday"])
            day = date.fromisocalendar(year, week, weekday)
        else:
            day = date(year, int(parts["month"] or parts["bmonth"]), int(parts["day"] or parts["bday"]))
    except ValueError:
        return None
    hour, minute, second = (int(parts[name] or 0) for name in ("hour", "minute", "second"))
    if hour > 23 or minute > 59 or second > 59:
        return None
    zone = parts["zone"] or ""
    return _nanoseconds(day, hour, minute, second, parts["fraction"] or "", zone), bool(zone)


def epoch_microseconds(value: Any) -> int:
    """Microseconds since 1970 of an epoch number: seconds, or milliseconds from 1e11 up (the policy)."""
    number = Decimal(value.strip()) if isinstance(value, str) else Decimal(repr(value))
    scale = 1000 if abs(number) >= 100_000_000_000 else 1_000_000
    return int((number * scale).to_integral_value())


def is_epoch_input(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return isinstance(value, str) and _NUMERIC.fullmatch(value.strip()) is not None


def provider_microseconds(text: Any) -> int | None:
    nanoseconds = rfc3339_nanoseconds(text) if isinstance(text, str) and text.endswith("Z") else None
    return None if nanoseconds is None else nanoseconds // 1000


# --- comparison and classification ---------------------------------------------------------------------

ABSENT = object()
PRESENCE_RULES = (MISSING_IDS, SV1, SV2, SV3, SV4, SV5, SV6, SV7, SV8)
TEXT_FIELDS = {
    "userId": "user_id",
    "anonymousId": "anonymous_id",
    "groupId": "group_id",
    "event": "event_name",
    "messageId": "message_id",
}


def same_json(left: Any, right: Any) -> bool:
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    return type(left) is type(right) and left == right


def differences(left: Any, right: Any, path: tuple = ()) -> list[tuple[tuple, Any, Any]]:
    """Every (path, provider value, Segment value) where two JSON values differ; objects are unordered."""
    if isinstance(left, dict) and isinstance(right, dict):
        found = []
        for key in list(left) + [key for key in right if key not in left]:
            found.extend(differences(left.get(key, ABSENT), right.get(key, ABSENT), (*path, key)))
        return found
    if isinstance(left, list) and isinstance(right, list) and len(left) == len(right):
        found = []
        for index, (one, other) in enumerate(zip(left, right, strict=True)):
            found.extend(differences(one, other, (*path, index)))
        return found
    if left is ABSENT and right is ABSENT:
        return []
    if left is ABSENT or right is ABSENT or not same_json(left, right):
        return [(path, left, right)]
    return []


def js_string_of_double(number: int) -> str:
    """JavaScript's ``String(n)`` for an integer JSON number once parsed as a double."""
    as_float = float(number)
    return str(int(as_float)) if abs(as_float) < 1e21 else repr(as_float)


def is_empty_one_item_list(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 1 and value[0] in (None, "")


def has_surrogate(text: Any) -> bool:
    return isinstance(text, str) and any("\ud800" <= char <= "\udfff" for char in text)


def big_integer_difference(ours: Any, theirs: Any) -> bool:
    """We send an integer beyond 2^53 as its exact digits; Segment's JavaScript holds the nearest double."""
    if not (isinstance(ours, str) and re.fullmatch(r"-?\d{16,}", ours)) or abs(int(ours)) <= 2**53 - 1:
        return False
    if isinstance(theirs, int | float) and not isinstance(theirs, bool):
        return float(int(ours)) == float(theirs)
    return theirs == js_string_of_double(int(ours))


def timestamp_kind(given: Any, ours: Any, theirs: Any) -> str | None:
    """
    The kind of a difference in ``timestamp`` when both sides send the record, or ``None`` when both
    name the same instant. Segment forwards the text or number it was given; the provider sends UTC
    ISO text, and each kind checks that it is the right reading.
    """
    if ours is ABSENT or theirs is ABSENT or not same_json(theirs, given):
        return "unclassified"
    ours_us = provider_microseconds(ours)
    if ours_us is None:
        return "unclassified"
    if is_epoch_input(given):
        return "timestamp-epoch" if abs(ours_us - epoch_microseconds(given)) <= 1 else "unclassified"
    exact = rfc3339_nanoseconds(given)
    if exact is not None:
        if exact == ours_us * 1000:
            return None
        return "timestamp-sub-microsecond" if exact // 1000 == ours_us else "unclassified"
    reading = iso_reading(given)
    if reading is None or reading[0] // 1000 != ours_us:
        return "unclassified"
    if reading[1]:
        return None if reading[0] % 1000 == 0 else "timestamp-sub-microsecond"
    return "timestamp-zoneless"


def js_status(value: Any) -> str | None:
    """Segment's ``getStatus`` on ``String(value)``, with JavaScript's ``trim`` (for classification)."""
    if value is None or value == "":
        return None
    text = {True: "true", False: "false"}.get(value, value) if isinstance(value, bool) else value
    if not isinstance(text, str):
        text = str(text)
    text = text.strip(JS_WHITESPACE).lower()
    if not text:
        return None
    return {
        "true": "SUBSCRIBED",
        "subscribed": "SUBSCRIBED",
        "false": "UNSUBSCRIBED",
        "unsubscribed": "UNSUBSCRIBED",
        "did-not-subscribe": "DID_NOT_SUBSCRIBE",
        "did_not_subscribe": "DID_NOT_SUBSCRIBE",
    }.get(text, "INVALID")


#: ECMA-262 WhiteSpace and LineTerminator code points: what ``String.prototype.trim`` removes.
JS_WHITESPACE = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)


def js_string(value: Any) -> str:
    """JavaScript's ``String(value)`` for the JSON values the generator makes."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    if isinstance(value, list):
        return ",".join("" if item is None else js_string(item) for item in value)
    if isinstance(value, dict):
        return "[object Object]"
    return str(value)


def field_input(case: Case, path: str) -> Any:
    """The input behind a rejected field path such as ``subscription_groups["10"]``."""
    match = re.fullmatch(r"(\w+)(?:\.(\w+)|\[(\".*\")\])?", path)
    if not match or match[1] not in case.inputs:
        return ABSENT
    value = case.inputs[match[1]]
    nested = match[2] if match[2] is not None else (json.loads(match[3]) if match[3] else None)
    if nested is None:
        return value
    return value.get(nested, ABSENT) if isinstance(value, dict) else ABSENT


def has_proto_key(value: Any) -> bool:
    if isinstance(value, dict):
        return "__proto__" in value or any(has_proto_key(item) for item in value.values())
    if isinstance(value, list):
        return "__proto__" in value or any(has_proto_key(item) for item in value)
    return False


def rejection_kind(case: Case, rejection: RecordRejected, theirs: dict[str, Any]) -> str:
    """Why the provider rejects a record that Segment sends."""
    given = field_input(case, rejection.field)
    if rejection.field == "timestamp":
        if isinstance(given, list):
            return "timestamp-list"
        if is_epoch_input(given):  # Segment forwards any number; the policy reads years 1-9999 only
            in_range = FIRST_INSTANT_US <= epoch_microseconds(given) <= LAST_INSTANT_US
            return "unclassified" if in_range else "timestamp-epoch"
        if isinstance(given, str) and theirs.get("timestamp") == given and iso_reading(given.strip()) is None:
            return "timestamp-segment-only"
        return "unclassified"
    status_field = rejection.field.endswith("_subscription_status")
    if status_field or rejection.field.startswith("subscription_groups"):
        if status_field and isinstance(given, list):
            return "status-list"
        if status_field and given is not ABSENT and js_status(given) == "INVALID":
            return "invalid-status"
        if not status_field and given is not ABSENT and js_status(js_string(given)) == "INVALID":
            return "invalid-status"  # a group's status, which Segment reads as String(value)
        return "unclassified"
    if rejection.field == "user_id, anonymous_id" and case.action == "send_subscriptions":
        if any(is_empty_one_item_list(case.inputs.get(key)) for key in ("user_id", "anonymous_id")):
            return "text-list-empty"
        return (
            "subscriptions-no-id"
            if not (theirs.get("userId") or theirs.get("anonymousId"))
            else "unclassified"
        )
    if rejection.field in ("group_id", "event_name", "email", "phone") and is_empty_one_item_list(given):
        return "text-list-empty"
    if rejection.field == "message_id" and isinstance(given, str) and len(given) >= 100:
        return "message-id-length"
    return "unclassified"


def null_group_names(case: Case) -> set[str]:
    """The subscription groups given as NULL (the provider leaves them out, Segment sends ``"INVALID"``)."""
    groups = case.inputs.get("subscription_groups")
    return {name for name, value in groups.items() if value is None} if isinstance(groups, dict) else set()


def without_null_groups(case: Case, message: dict[str, Any]) -> dict[str, Any]:
    """Segment's message without the groups given as NULL (which the provider leaves out)."""
    nulls = null_group_names(case)
    entries = (message.get("context") or {}).get("messaging_subscriptions")
    if not nulls or not isinstance(entries, list):
        return message
    message = json.loads(json.dumps(message))
    for entry in message["context"]["messaging_subscriptions"]:
        if entry.get("type") == "EMAIL" and "groups" in entry:
            entry["groups"] = [group for group in entry["groups"] if group.get("name") not in nulls]
            if not entry["groups"]:
                del entry["groups"]
    return message


def segment_rejection_kind(case: Case, result: dict[str, Any], ours: dict[str, Any]) -> str:
    """Why Segment rejects a record that the provider sends."""
    groups = case.inputs.get("subscription_groups")
    if result.get("error") == SV4 and isinstance(groups, dict) and set(groups) == null_group_names(case):
        return "null-group"  # only NULL groups: no groups to the provider
    given = case.inputs.get("timestamp", ABSENT)
    if "/timestamp" in (result.get("pointers") or []) and isinstance(given, str):
        sent = provider_microseconds(ours.get("timestamp"))
        if is_epoch_input(given):  # numeric text Segment's date-like check does not read ("1e9")
            return (
                "timestamp-epoch"
                if sent is not None and abs(sent - epoch_microseconds(given)) <= 1
                else "unclassified"
            )
        reading = iso_reading(given.strip())
        if reading is not None and reading[0] // 1000 == sent:
            return "timestamp-provider-only"
    return "unclassified"


def consent_array_kept(case: Case, ours: Any, theirs: Any) -> bool:
    """Segment keeps a consent whose ``categoryPreferences`` is a list of booleans; we send ``{}``."""
    consent = case.inputs.get("consent")
    preferences = consent.get("categoryPreferences") if isinstance(consent, dict) else None
    return (
        isinstance(preferences, list)
        and all(isinstance(choice, bool) for choice in preferences)
        and ours is ABSENT
        and theirs == preferences
    )


def external_ids_of_empty_lists(case: Case, ours: Any, theirs: Any) -> bool:
    """Segment lists an external id ``""`` for each key field given as ``[null]`` or ``[""]``."""
    if not (isinstance(ours, list) and isinstance(theirs, list)):
        return False
    empty = [entry for entry in theirs if entry.get("id") == ""]
    types = {"email": "email", "phone": "phone", "android_push_token": "android.push_token"}
    types["ios_push_token"] = "ios.push_token"
    expected = sorted(types[key] for key in types if is_empty_one_item_list(case.inputs.get(key)))
    return (
        bool(empty)
        and sorted(entry["type"] for entry in empty) == expected
        and [entry for entry in theirs if entry.get("id") != ""] == ours
    )


def body_kinds(case: Case, ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """The kind of every difference between two sent bodies (empty: they agree)."""
    kinds = []
    for path, mine, segments in differences(ours, theirs):
        if path == ("timestamp",):
            kind = timestamp_kind(case.inputs.get("timestamp", ABSENT), mine, segments)
            if kind:
                kinds.append(kind)
        elif (
            path == ("context", "groupId")
            and case.action == "send_track"
            and segments is ABSENT
            and isinstance(mine, str)
            and mine
        ):
            kinds.append("track-group-id")
        elif path == ("context", "consent", "categoryPreferences") and consent_array_kept(
            case, mine, segments
        ):
            kinds.append("consent-array")
        elif big_integer_difference(mine, segments):
            kinds.append("big-integer")
        elif (
            isinstance(mine, str)
            and has_surrogate(segments)
            and mine == segments.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        ):
            kinds.append("lone-surrogate")
        elif (path == ("context", "externalIds") and external_ids_of_empty_lists(case, mine, segments)) or (
            len(path) == 1
            and path[0] in TEXT_FIELDS
            and mine is ABSENT
            and segments == ""
            and is_empty_one_item_list(case.inputs.get(TEXT_FIELDS[path[0]]))
        ):
            kinds.append("text-list-empty")
        else:
            kinds.append("unclassified")
    return kinds


def normalise(message: dict[str, Any]) -> dict[str, Any]:
    message = json.loads(json.dumps(message))
    message.pop("sentAt", None)
    if isinstance(message.get("context"), dict):
        message["context"].pop("library", None)
    return message


@dataclass
class Verdict:
    outcome: str  # "sent by both", "rejected by both" or "differs"
    kinds: list[str]


def compare(case: Case, ours: ProviderResult, theirs: dict[str, Any]) -> Verdict:
    if ours.config_error is not None:  # the mapping is refused: no record of it is sent
        if not theirs["ok"]:
            return Verdict("rejected by both", [])
        if has_proto_key(case.fields):
            return Verdict("differs", ["proto-key-in-mapping"])
        return Verdict("differs", ["unclassified"])
    if ours.skipped is not None:
        # Neither sends anything: Segment refuses the record (SV2, or an earlier check such as the timestamp),
        # the provider counts it as skipped instead of rejected. Segment sending it would be a new difference.
        return Verdict("differs", ["unclassified" if theirs["ok"] else "nothing-to-send"])
    if ours.rejection is not None:
        if not theirs["ok"]:
            return Verdict("rejected by both", [])
        return Verdict("differs", [rejection_kind(case, ours.rejection, theirs["batch"][0])])
    assert ours.message is not None
    if not theirs["ok"]:
        return Verdict("differs", [segment_rejection_kind(case, theirs, ours.message)])
    mine, segments = normalise(ours.message), normalise(theirs["batch"][0])
    kinds = []
    if (left_out := without_null_groups(case, segments)) != segments:
        segments = left_out
        kinds.append("null-group")
    given_id = case.inputs.get("message_id", ABSENT)
    if given_id in (None, "", ABSENT) or is_empty_one_item_list(given_id):
        assert re.fullmatch(r"rs-[0-9a-f]{32}", mine.pop("messageId", "")), "a derived messageId"
        if segments.get("messageId") == "" and is_empty_one_item_list(given_id):
            del segments["messageId"]
            kinds.append("text-list-empty")
    kinds += body_kinds(case, mine, segments)
    return Verdict("differs" if kinds else "sent by both", sorted(set(kinds)))


def names_field_and_value(case: Case, rejection: RecordRejected) -> bool:
    """A rejection must name its field and, unless a rule is about presence, the value."""
    text = str(rejection)
    if not rejection.field or rejection.field not in text:
        return False
    if rejection.reason in PRESENCE_RULES or "missing the required field" in rejection.reason:
        return True
    given = field_input(case, rejection.field)
    if given is ABSENT:
        return False
    as_sent = as_converted(given)
    renderings = {repr(given), repr(as_sent), json.dumps(given, ensure_ascii=False), json.dumps(given)}
    if isinstance(given, str):
        renderings.add(given)
    return any(rendering[:30] in text for rendering in renderings)


def as_converted(value: Any) -> Any:
    """``value`` as the provider converts it to JSON: integers beyond 2^53 - 1 as their digits, keys
    named ``__proto__`` dropped (a rejection shows the converted value)."""
    if isinstance(value, dict):
        return {key: as_converted(item) for key, item in value.items() if key != "__proto__"}
    if isinstance(value, list):
        return [as_converted(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53 - 1:
        return str(value)
    return value


def documented_kinds() -> set[str]:
    """Kind ids in the last column of the deliberate-differences table of docs/mappings.md."""
    section = DOCS.read_text().split("## Deliberate differences from Segment's destination")[1]
    section = section.split("\n## ")[0]
    return set(re.findall(r"\| `([a-z0-9-]+)` \|$", section, re.M))


def describe(case: Case, ours: ProviderResult, theirs: dict[str, Any]) -> str:
    provider = (
        ours.message if ours.message is not None else str(ours.rejection or ours.skipped or ours.config_error)
    )
    segment = theirs.get("batch", [None])[0] if theirs["ok"] else theirs["error"]
    return json.dumps(
        {"action": case.action, "inputs": case.inputs, "provider": provider, "segment": segment},
        ensure_ascii=False,
        default=repr,
    )[:1500]


# --- the test --------------------------------------------------------------------------------------------


def test_generated_records_agree_with_segment_or_differ_as_documented(segment_harness, capsys):
    started = time.monotonic()
    cases = generate_cases()
    assert len(cases) >= 1000
    ours = [run_provider(case) for case in cases]
    versions, theirs = run_segment(cases)
    assert versions["@segment/action-destinations"] == "3.497.0"
    assert versions["@segment/actions-core"] == "3.170.0"

    counts: dict[str, Counter] = defaultdict(Counter)
    examples: dict[str, list[str]] = defaultdict(list)
    badly_worded = []
    for case, mine, segments in zip(cases, ours, theirs, strict=True):
        verdict = compare(case, mine, segments)
        counts[case.action][verdict.outcome] += 1
        for kind in verdict.kinds:
            counts[case.action][kind] += 1
            if len(examples[kind]) < 3:
                examples[kind].append(describe(case, mine, segments))
        if mine.rejection is not None and not names_field_and_value(case, mine.rejection):
            badly_worded.append(str(mine.rejection))

    with capsys.disabled():
        print(f"\ndifferential test against Segment's code {versions}, seed {SEED}:")
        for action, counted in counts.items():
            print(f"  {action}: {dict(sorted(counted.items()))}")
        print(f"  {len(cases)} records in {time.monotonic() - started:.1f} s")

    seen = set(examples)
    undocumented = seen - documented_kinds()
    assert not undocumented, (
        "differences not in docs/mappings.md's deliberate-differences table:\n"
        + "\n".join(f"{kind}:\n    " + "\n    ".join(examples[kind]) for kind in sorted(undocumented))
    )
    assert not badly_worded, "rejections that do not name their field and value:\n" + "\n".join(
        badly_worded[:10]
    )
    for action, counted in counts.items():
        # The generator must keep exercising both pipelines end to end, not only their rejections.
        assert counted["sent by both"] >= RECORDS_PER_ACTION // 4, (action, counted)
        assert counted["rejected by both"] >= 5, (action, counted)
