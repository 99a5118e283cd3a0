"""
The emulator's Profile API: profiles built from the messages it accepted, read back as Segment serves them.

A :class:`ProfileSpace` ties write keys (the sources connected to the Space) to a space id and the access
tokens that may read it. Every message the tracking API accepts for one of those write keys resolves to a
profile by its external ids (``user_id:<userId>``, ``anonymous_id:<anonymousId>``); an Identify sets its
traits on that profile, a later value replacing an earlier one ("last updated precedence"). A message that
names the external ids of two profiles merges them.

Served, as documented in segment-docs ``src/unify/profile-api.md`` (https://segment.com/docs/unify/profile-api/):

- ``GET /v1/spaces/<space_id>/collections/users/profiles/<id_type:external_id>/traits`` with ``include``
  (comma-separated names), ``limit`` (default 10; 1 to 200, else ``400 validation_error``) and ``next``;
  the reply is ``{"traits": {...}, "cursor": {"url", "has_more", "next", "limit"}}``.
- Basic authentication with an access token of the Space as the username and an empty password; a missing
  or unknown token, or one of another Space, gets ``401 authentication_error`` ("No valid Access Token").
- An external id without a type, or one no profile has, gets ``404 {"error": {"code": "not_found",
  "message": "Profile was not found."}}``. The id's value is percent-decoded (``%2B`` is ``+``).

Choices where the docs are silent: a ``null`` trait value is stored and returned as ``null``; trait values
are stored as sent (objects replace objects whole); other Profile API routes get ``404``. Segment processes
messages asynchronously, so a profile may lag what the tracking API accepted: ``visibility_delay`` (seconds)
holds each accepted message back from the Profile API for that long, to test code that must wait.
:meth:`ProfileApi.fail_next` makes the next reads fail (``429`` with ``Retry-After``, ``5xx``).
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

#: Prefix of every Profile API path the emulator routes here.
SPACES_PREFIX = "/v1/spaces/"
#: Largest ``limit`` a traits read may ask for.
MAX_TRAITS_LIMIT = 200
DEFAULT_TRAITS_LIMIT = 10
_EXTERNAL_IDS = (("userId", "user_id"), ("anonymousId", "anonymous_id"))


@dataclass(frozen=True)
class ProfileSpace:
    """
    A Profile Space of the emulator.

    :param space_id: the id in the Profile API's paths.
    :param write_keys: write keys of the sources connected to the Space; their accepted messages build its
        profiles.
    :param access_tokens: tokens that may read the Space (the username of the Basic authorization).
    :raises ValueError: an empty space id, no write key, or an empty key or token.
    """

    space_id: str
    write_keys: tuple[str, ...]
    access_tokens: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.space_id or "/" in self.space_id:
            raise ValueError("a space id must be a non-empty path segment")
        if not self.write_keys or not all(isinstance(k, str) and k for k in self.write_keys):
            raise ValueError(f"space {self.space_id!r} needs at least one non-empty write key")
        if not all(isinstance(t, str) and t for t in self.access_tokens):
            raise ValueError(f"space {self.space_id!r}: access tokens must be non-empty strings")


@dataclass(frozen=True, slots=True)
class ProfileApiRequest:
    """
    One Profile API request the emulator received.

    :param path: the path without the query string.
    :param query: the query string.
    :param status: the status answered.
    :param authorization: the raw ``Authorization`` header (kept out of ``repr``).
    :param fault: ``"fail_next"`` when an injected fault answered.
    """

    path: str
    query: str
    status: int
    authorization: str | None = field(repr=False)
    fault: str | None = None


@dataclass
class _Profile:
    ids: set[str] = field(default_factory=set)
    traits: dict[str, Any] = field(default_factory=dict)


@dataclass
class _SpaceStore:
    profiles: list[_Profile] = field(default_factory=list)
    index: dict[str, _Profile] = field(default_factory=dict)

    def apply(self, message: Mapping[str, Any]) -> None:
        ids = [
            f"{kind}:{_text(message.get(key))}" for key, kind in _EXTERNAL_IDS if not _blank(message.get(key))
        ]
        if not ids:
            return
        matches: list[_Profile] = []
        for external_id in ids:
            profile = self.index.get(external_id)
            if profile is not None and all(profile is not m for m in matches):
                matches.append(profile)
        if matches:
            profile = matches[0]
            for other in matches[1:]:  # the message joins two profiles: merge them
                profile.ids |= other.ids
                profile.traits.update(other.traits)
                self.profiles.remove(other)
                for external_id in other.ids:
                    self.index[external_id] = profile
        else:
            profile = _Profile()
            self.profiles.append(profile)
        for external_id in ids:
            profile.ids.add(external_id)
            self.index[external_id] = profile
        traits = message.get("traits")
        if message.get("type") == "identify" and isinstance(traits, dict):
            profile.traits.update(traits)


@dataclass(slots=True)
class _Failure:
    status: int
    retry_after: float | None
    remaining: int


class ProfileApi:
    """
    The Profile API of a :class:`~airflow_provider_segment_profiles.testing.SegmentEmulator` (its
    ``profile_api`` attribute); see the module docstring for what it serves.

    :param spaces: the emulator's Profile Spaces.
    :param visibility_delay: seconds an accepted message waits before the Profile API shows it (>= 0).
    :param clock: monotonic clock in seconds (injectable).
    :raises ValueError: two spaces with one id, a write key in two spaces, or a negative delay.
    """

    def __init__(
        self,
        spaces: Iterable[ProfileSpace] = (),
        *,
        visibility_delay: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._spaces: dict[str, ProfileSpace] = {}
        self._space_of_key: dict[str, str] = {}
        for space in spaces:
            if space.space_id in self._spaces:
                raise ValueError(f"two Profile Spaces have the id {space.space_id!r}")
            self._spaces[space.space_id] = space
            for key in space.write_keys:
                if key in self._space_of_key:
                    raise ValueError("a write key belongs to one Profile Space only")
                self._space_of_key[key] = space.space_id
        self._clock = clock
        self.visibility_delay = visibility_delay
        self._lock = threading.Lock()
        self._stores: dict[str, _SpaceStore] = {space_id: _SpaceStore() for space_id in self._spaces}
        self._pending: deque[tuple[float, str, dict[str, Any]]] = deque()
        self._failures: deque[_Failure] = deque()
        self._requests: list[ProfileApiRequest] = []

    @property
    def space_ids(self) -> list[str]:
        """The ids of the Profile Spaces, in the order given."""
        return list(self._spaces)

    @property
    def write_keys(self) -> list[str]:
        """The write keys of every Profile Space."""
        return list(self._space_of_key)

    def airflow_connection(self, base_url: str, space_id: str | None = None) -> dict[str, Any]:
        """
        A ``segment_profile_api`` connection reading one Space through ``base_url`` (the emulator's ``url``).

        :param space_id: the Space; defaults to the only one.
        :raises ValueError: ``space_id`` omitted with several Spaces, an unknown one, or one without a token.
        """
        if space_id is None:
            if len(self._spaces) != 1:
                raise ValueError(f"pass space_id: the emulator has {len(self._spaces)} Profile Spaces")
            (space_id,) = self._spaces
        space = self._spaces.get(space_id)
        if space is None or not space.access_tokens:
            raise ValueError(f"the emulator has no Profile Space {space_id!r} with an access token")
        return {
            "conn_type": "segment_profile_api",
            "password": space.access_tokens[0],
            "host": base_url,
            "extra": {"space_id": space_id},
        }

    @property
    def visibility_delay(self) -> float:
        """Seconds between the tracking API accepting a message and the Profile API showing it."""
        return self._visibility_delay

    @visibility_delay.setter
    def visibility_delay(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"visibility_delay must be a number of seconds >= 0, got {seconds!r}")
        self._visibility_delay = float(seconds)

    @property
    def requests(self) -> list[ProfileApiRequest]:
        """Snapshot of the Profile API requests received, in arrival order."""
        with self._lock:
            return list(self._requests)

    def fail_next(self, count: int = 1, status: int = 503, retry_after: float | None = None) -> None:
        """
        Answer the next ``count`` Profile API reads with ``status`` (``Retry-After`` in seconds if given).

        :raises ValueError: ``count`` below 1 or ``status`` outside 400-599.
        """
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive integer, got {count!r}")
        if not 400 <= status <= 599:
            raise ValueError(f"status must be 400-599, got {status!r}")
        with self._lock:
            self._failures.append(_Failure(status, retry_after, count))

    def profile(self, space_id: str, external_id: str) -> dict[str, Any] | None:
        """
        The traits the Profile API shows now for ``external_id`` (``"user_id:42"``), or ``None``.

        :raises KeyError: an unknown space id.
        """
        with self._lock:
            self._apply_visible()
            found = self._stores[space_id].index.get(external_id)
            return None if found is None else dict(found.traits)

    def reset(self) -> None:
        """Forget every profile, pending message, fault and recorded request."""
        with self._lock:
            self._stores = {space_id: _SpaceStore() for space_id in self._spaces}
            self._pending.clear()
            self._failures.clear()
            self._requests.clear()

    # -- called by the emulator --------------------------------------------------------------------
    def ingest(self, write_key: str | None, messages: Iterable[dict[str, Any]]) -> None:
        """Queue the messages the tracking API accepted for ``write_key`` for the key's Space, if any."""
        space_id = self._space_of_key.get(write_key or "")
        if space_id is None:
            return
        visible_at = self._clock() + self._visibility_delay
        with self._lock:
            self._pending.extend((visible_at, space_id, message) for message in messages)

    def handle_get(self, raw_path: str, authorization: str | None) -> tuple[int, bytes, dict[str, str]]:
        """
        Answer ``GET raw_path`` (path and query) under :data:`SPACES_PREFIX`.

        :return: ``(status, JSON body, extra headers)``.
        """
        path, _, query = raw_path.partition("?")
        status, body, headers, fault = self._answer(path, query, authorization)
        with self._lock:
            self._requests.append(ProfileApiRequest(path, query, status, authorization, fault))
        return status, json.dumps(body).encode(), headers

    def _answer(
        self, path: str, query: str, authorization: str | None
    ) -> tuple[int, dict[str, Any], dict[str, str], str | None]:
        with self._lock:
            failure = self._failures[0] if self._failures else None
            if failure is not None:
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._failures.popleft()
        if failure is not None:
            headers = {} if failure.retry_after is None else {"Retry-After": f"{failure.retry_after:g}"}
            code = "rate_limit_error" if failure.status == 429 else "server_error"
            return (
                failure.status,
                _error(code, f"injected fault: HTTP {failure.status}"),
                headers,
                "fail_next",
            )
        parts = path[len(SPACES_PREFIX) :].split("/")
        space = self._spaces.get(parts[0]) if parts else None
        token = _token(authorization)
        if space is None or token is None or token not in space.access_tokens:
            return 401, _error("authentication_error", "No valid Access Token provided."), {}, None
        if len(parts) != 6 or parts[1:4] != ["collections", "users", "profiles"] or parts[5] != "traits":
            return 404, _error("not_found", "The emulator serves only a profile's traits."), {}, None
        external_id = unquote(parts[4])
        id_type, colon, value = external_id.partition(":")
        params = parse_qs(query, keep_blank_values=True)
        try:
            limit = int(params.get("limit", [str(DEFAULT_TRAITS_LIMIT)])[-1])
            offset = int(params.get("next", ["0"])[-1] or 0)
        except ValueError:
            return 400, _error("validation_error", "limit and next must be integers"), {}, None
        if not 1 <= limit <= MAX_TRAITS_LIMIT or offset < 0:
            return (
                400,
                _error("validation_error", f"limit must be between 1 and {MAX_TRAITS_LIMIT}"),
                {},
                None,
            )
        with self._lock:
            self._apply_visible()
            profile = (
                self._stores[space.space_id].index.get(external_id) if colon and id_type and value else None
            )
            traits = None if profile is None else dict(profile.traits)
        if traits is None:
            return 404, _error("not_found", "Profile was not found."), {}, None
        include = [n for value in params.get("include", []) for n in value.split(",") if n]
        if include:
            traits = {name: traits[name] for name in dict.fromkeys(include) if name in traits}
        names = list(traits)
        page = names[offset : offset + limit]
        has_more = offset + limit < len(names)
        cursor = {
            "url": path,
            "has_more": has_more,
            "next": str(offset + limit) if has_more else "",
            "limit": limit,
        }
        return 200, {"traits": {name: traits[name] for name in page}, "cursor": cursor}, {}, None

    def _apply_visible(self) -> None:
        """Apply the pending messages whose time has come, in arrival order (call under the lock)."""
        now = self._clock()
        pending = self._pending
        while pending and pending[0][0] <= now:
            _, space_id, message = pending.popleft()
            self._stores[space_id].apply(message)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _token(authorization: str | None) -> str | None:
    """The access token of a ``Basic base64(token + ":")`` header, or ``None``."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    token, colon, _ = decoded.partition(":")
    return token if token and colon else None


def _blank(value: object) -> bool:
    return value is None or value == ""


def _text(value: Any) -> str:
    """An id as Segment keys it: text as is, a number by its digits."""
    if isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, bool) else str(value)
