"""Hook for Segment's Profile API: read back the traits a Profile Space holds for a user.

Facts from segment-docs ``src/unify/profile-api.md`` (https://segment.com/docs/unify/profile-api/) and
``src/unify/profile-api-limits.md`` (https://segment.com/docs/unify/profile-api-limits/):

- route ``GET /v1/spaces/<space_id>/collections/users/profiles/<id_type:external_id>/traits`` ("Get a
  profile's traits"); ``404`` with ``{"error": {"code": "not_found", "message": "Profile was not found."}}``
  when no profile has that external id; ``include`` (comma-separated trait names), ``limit`` and the
  ``cursor`` {``has_more``, ``next``} of the list methods ("Pagination");
- hosts ``https://profiles.segment.com`` and, for EU workspaces, ``https://profiles.euw1.segment.com``
  ("API reference", "European Union requirements"): :data:`~.regions.PROFILE_API_REGIONS`;
- "basic authentication ... with the Access Token as the authorization key", the token as the username and
  an empty password ("Authentication");
- "each space has a limit of 100 requests/sec" and ``429 Too Many Requests`` above it, with "an exponential
  backoff" recommended; ``5xx`` are Segment's own errors ("Errors", "Rate limit");
- values with a non-alphanumeric character must be percent-encoded (``+`` as ``%2B``) in the path
  ("Find a user's external id").
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any, NamedTuple
from urllib.parse import quote

import requests
from airflow.sdk import BaseHook
from requests.adapters import HTTPAdapter

from airflow_provider_segment_profiles import __version__
from airflow_provider_segment_profiles.delivery.rate_limit import TokenBucket
from airflow_provider_segment_profiles.delivery.retry import (
    RETRYABLE_STATUSES,
    RetryPolicy,
    parse_retry_after,
)
from airflow_provider_segment_profiles.exceptions import ConfigurationError, TransientSyncError
from airflow_provider_segment_profiles.hooks.regions import DEFAULT_REGION, profile_api_url_for_region
from airflow_provider_segment_profiles.hooks.segment_profiles import _normalise_host, _without_userinfo

#: Segment's documented ceiling per Space, in requests per second.
MAX_REQUESTS_PER_SECOND = 100.0
#: What the hook uses by default: a quarter of the ceiling, because the Space's own readers (a
#: personalization service) share it.
DEFAULT_REQUESTS_PER_SECOND = 25.0
#: Most trait names put in one ``include`` parameter (and the page size asked for).
INCLUDE_CHUNK = 100
#: Retries for reads: shorter than the tracking API's, since a read can be skipped, a write cannot.
DEFAULT_READ_RETRY_POLICY = RetryPolicy(
    max_attempts=5, base_delay_s=0.5, max_delay_s=10.0, max_total_s=60.0, max_retry_after_s=30.0
)
_SPACE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_ERROR_BODY_CHARS = 300
_MAX_PAGES = 50


class ProfileApiAccessError(ConfigurationError):
    """The Profile API refused the connection's access token or space id (401, 403): fix the connection."""


class ProfileApiUnavailable(TransientSyncError):
    """The Profile API could not answer (429, 5xx, network) within the retry policy's bounds."""


class ProfileTraits(NamedTuple):
    """
    What the Profile API holds for one external id.

    :param found: ``False`` when the API answered ``404`` (no profile has this external id).
    :param traits: trait name -> value (empty when not found).
    :param requests: HTTP requests made, retries included.
    """

    found: bool
    traits: dict[str, Any]
    requests: int


class SegmentProfileApiHook(BaseHook):
    """
    Read profiles of a Profile Space through Segment's Profile API.

    The connection (type ``segment_profile_api``) holds the Space's access token in ``password``, the
    space id in extra ``space_id``, the region in extra ``region`` (``north_america`` or ``europe``) and an
    optional ``host`` base URL that overrides the region's (a proxy, or
    :class:`~airflow_provider_segment_profiles.testing.SegmentEmulator`, which serves the same routes).

    The token is registered with Airflow's secrets masker (also in its Basic form), kept out of ``repr``
    and of every message this hook writes or raises.

    :param profile_api_conn_id: id of a ``segment_profile_api`` connection.
    :param timeout: ``(connect, read)`` timeouts of each request, in seconds.
    :param retry_policy: bounds of the retries of ``429``, ``5xx`` and network errors (a
        :class:`RetryPolicy` or a dict of its fields); default :data:`DEFAULT_READ_RETRY_POLICY`.
    :param requests_per_second: token-bucket rate over every request of this hook, retries included;
        at most :data:`MAX_REQUESTS_PER_SECOND`.
    :param sleep: sleep function in seconds (injectable, with ``clock`` and ``jitter``, for tests).
    :param clock: monotonic clock in seconds.
    :param jitter: ``uniform(a, b)`` for the backoff's jitter.
    :raises ValueError: ``requests_per_second`` is not in (0, 100].
    """

    conn_name_attr = "profile_api_conn_id"
    default_conn_name = "segment_profile_api_default"
    conn_type = "segment_profile_api"
    hook_name = "Segment Profile API"

    def __init__(
        self,
        profile_api_conn_id: str = default_conn_name,
        *,
        timeout: tuple[float, float] = (10.0, 30.0),
        retry_policy: RetryPolicy | dict[str, float] | None = None,
        requests_per_second: float = DEFAULT_REQUESTS_PER_SECOND,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[float, float], float] | None = None,
    ) -> None:
        super().__init__()
        if not 0 < requests_per_second <= MAX_REQUESTS_PER_SECOND:
            raise ValueError(
                f"requests_per_second must be > 0 and at most {MAX_REQUESTS_PER_SECOND:g} (the Profile "
                "API's limit per Space)"
            )
        self.profile_api_conn_id = profile_api_conn_id
        self.timeout = timeout
        self.retry_policy = (
            DEFAULT_READ_RETRY_POLICY if retry_policy is None else RetryPolicy.coerce(retry_policy)
        )
        self.rate_limiter = TokenBucket(requests_per_second, capacity=1.0, clock=clock, sleep=sleep)
        self._sleep = sleep
        self._clock = clock
        self._jitter = jitter
        #: HTTP requests this hook made, retries and failed ones included.
        self.requests_made = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(profile_api_conn_id={self.profile_api_conn_id!r})"

    # -- connection form (Airflow 3.1 reads these; 3.2+ reads the same from get_provider_info) --------
    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hidden, relabelled and placeholder fields of the connection form."""
        from airflow_provider_segment_profiles.get_provider_info import (
            PROFILE_API_UI_FIELD_BEHAVIOUR,
            hook_field_behaviour,
        )

        return hook_field_behaviour(PROFILE_API_UI_FIELD_BEHAVIOUR)

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """
        The Space ID and Region fields for Airflow 3.1 (3.2+ reads ``conn-fields``); only ``StringField``,
        as :meth:`SegmentProfilesHook.get_connection_form_widgets
        <airflow_provider_segment_profiles.hooks.segment_profiles.SegmentProfilesHook.get_connection_form_widgets>`
        explains.
        """
        from airflow_provider_segment_profiles.get_provider_info import PROFILE_API_CONN_FIELDS

        try:
            from wtforms import StringField
            from wtforms.validators import any_of
        except ImportError:
            return {}
        space, region = PROFILE_API_CONN_FIELDS["space_id"], PROFILE_API_CONN_FIELDS["region"]
        return {
            "space_id": StringField(space["label"], description=space["description"]),
            "region": StringField(
                region["label"],
                validators=[any_of(region["schema"]["enum"])],
                description=region["description"],
                default=region["schema"]["default"],
            ),
        }

    # -- connection ----------------------------------------------------------------------------------
    @cached_property
    def _settings(self) -> tuple[str, str, str, str]:
        """``(token, space_id, region, base_url)`` read once from the connection."""
        from airflow.sdk.log import mask_secret

        conn = self.get_connection(self.profile_api_conn_id)
        token = conn.password or ""
        if token:
            mask_secret(token)
            mask_secret(_basic_auth(token))
            mask_secret(_basic_auth(token).removeprefix("Basic "))
        extra = conn.extra_dejson or {}
        region = str(extra.get("region") or DEFAULT_REGION).strip().lower()
        region_url = profile_api_url_for_region(region)
        host = (conn.host or "").strip()
        base_url = _normalise_host(host, conn.port) if host else region_url
        space_id = str(extra.get("space_id") or "").strip()
        return token, space_id, region, base_url

    @property
    def base_url(self) -> str:
        """
        Profile API base URL, ending in ``/v1``.

        :raises UnknownRegionError: when the connection's region is not one Segment has.
        """
        return self._settings[3]

    @property
    def region(self) -> str:
        """The connection's region: ``north_america`` or ``europe``."""
        return self._settings[2]

    @property
    def space_id(self) -> str:
        """
        The Space's id (Unify > Unify settings > API access).

        :raises ConfigurationError: the connection has none, or one that is not a plain identifier.
        """
        space_id = self._settings[1]
        if not space_id:
            raise ConfigurationError(
                f"Connection {self.profile_api_conn_id!r} has no space_id: put the Space's id (Unify > Unify "
                "settings > API access) in the connection's Space ID (extra space_id) field."
            )
        if not _SPACE_ID.match(space_id):
            raise ConfigurationError(
                f"Connection {self.profile_api_conn_id!r}: the space_id is not a Segment space id (letters, "
                "digits, '_', '-' and '.' only)."
            )
        return space_id

    @property
    def where(self) -> str:
        """``<base_url> space <space_id>`` for messages: never the token."""
        return f"{_without_userinfo(self.base_url)} space {self.space_id}"

    @cached_property
    def session(self) -> requests.Session:
        """
        Pooled HTTP session with the Basic authorization (the token as username, no password).

        :raises ConfigurationError: the connection has no access token, or one with whitespace in it.
        """
        token = self._settings[0]
        if not token.strip():
            raise ConfigurationError(
                f"Connection {self.profile_api_conn_id!r} has no access token: put the Space's Profile API "
                "access token (Unify > Unify settings > API access) in the Access Token (password) field."
            )
        if token != token.strip() or any(c.isspace() for c in token) or not token.isprintable():
            raise ConfigurationError(
                f"Connection {self.profile_api_conn_id!r}: the access token contains whitespace or control "
                "characters; copy it again."
            )
        self.space_id  # noqa: B018 - refuses a missing space id before any request
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=4)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers.update(
            {
                "Authorization": _basic_auth(token),
                "Accept": "application/json",
                "User-Agent": f"airflow-provider-segment-profiles/{__version__}",
            }
        )
        return session

    def get_conn(self) -> requests.Session:
        """Return the pooled :class:`requests.Session` (Airflow's hook contract)."""
        return self.session

    def close(self) -> None:
        """Close the pooled connections; safe to call more than once."""
        session = self.__dict__.pop("session", None)
        if session is not None:
            session.close()

    # -- reading -------------------------------------------------------------------------------------
    def traits_url(self, id_type: str, value: str) -> str:
        """
        URL of a profile's traits; the external id's value is percent-encoded whole (``/``, ``+`` too).

        :param id_type: external id type, e.g. ``user_id`` or ``anonymous_id``.
        :param value: the external id's value.
        """
        external_id = f"{quote(id_type, safe='')}:{quote(value, safe='')}"
        return f"{self.base_url}/spaces/{self.space_id}/collections/users/profiles/{external_id}/traits"

    def get_traits(self, id_type: str, value: str, include: Sequence[str] | None = None) -> ProfileTraits:
        """
        Read a profile's traits, following the cursor while it says ``has_more``.

        :param id_type: ``user_id``, ``anonymous_id``, ...
        :param value: the external id's value.
        :param include: trait names to read (asked in groups of :data:`INCLUDE_CHUNK` with ``include``, as
            the docs recommend); ``None`` reads every trait. Names with a comma cannot be put in
            ``include``: when one is asked for, every trait is read instead.
        :return: the traits, or ``found=False`` for a ``404``.
        :raises ProfileApiAccessError: ``401`` or ``403`` (the token or the space id is wrong).
        :raises ProfileApiUnavailable: ``429``, ``5xx`` or a network error outlasted the retry policy, or
            another status (``400``) that reading again cannot change; the message names it.
        """
        url = self.traits_url(id_type, value)
        names = None if include is None or any("," in n for n in include) else list(dict.fromkeys(include))
        queries: list[dict[str, str]] = (
            [{"limit": str(INCLUDE_CHUNK)}]
            if names is None
            else [
                {"include": ",".join(chunk), "limit": str(len(chunk))}
                for chunk in (
                    names[i : i + INCLUDE_CHUNK] for i in range(0, max(len(names), 1), INCLUDE_CHUNK)
                )
            ]
        )
        traits: dict[str, Any] = {}
        made = 0
        for query in queries:
            params = dict(query)
            for _page in range(_MAX_PAGES):
                status, body, requests_made = self._get(url, params)
                made += requests_made
                if status == 404:
                    return ProfileTraits(False, {}, made)
                page = body.get("traits") if isinstance(body, dict) else None
                if not isinstance(page, dict):
                    raise ProfileApiUnavailable(
                        f"The Profile API at {self.where} answered 200 without a traits object"
                    )
                traits.update(page)
                cursor = body.get("cursor") if isinstance(body.get("cursor"), dict) else {}
                if not cursor.get("has_more") or not cursor.get("next"):
                    break
                params = {**query, "next": str(cursor["next"])}
        return ProfileTraits(True, traits, made)

    def _get(self, url: str, params: dict[str, str]) -> tuple[int, Any, int]:
        """One GET with retries; ``(status, parsed body, requests made)`` for 200 and 404."""
        session, policy = self.session, self.retry_policy
        started = self._clock()
        attempt = 0
        while True:
            attempt += 1
            self.rate_limiter.acquire(1)
            self.requests_made += 1
            wait: float | None = None
            try:
                response = session.get(url, params=params, timeout=self.timeout)
            except requests.RequestException as err:  # connection, timeout, a broken reply
                reason = f"{type(err).__name__} talking to {_without_userinfo(self.base_url)}"
            else:
                status = response.status_code
                if status in (200, 404):
                    try:
                        return status, response.json() if status == 200 else None, attempt
                    except ValueError:
                        raise ProfileApiUnavailable(
                            f"The Profile API at {self.where} answered {status} with a body that is not JSON"
                        ) from None
                reason = self._redact(f"HTTP {status} from the Profile API: {_error_body(response)}")
                if status in (401, 403):
                    raise ProfileApiAccessError(
                        f"The Profile API at {self.where} refused connection {self.profile_api_conn_id!r} "
                        f"({reason}): check the access token and that it belongs to this space id and "
                        "region."
                    )
                if status not in RETRYABLE_STATUSES:
                    raise ProfileApiUnavailable(f"The Profile API at {self.where}: {reason} (not retried)")
                if status == 429:
                    wait = parse_retry_after(response.headers)
                    if wait is not None:
                        wait = min(wait, policy.max_retry_after_s)
            if attempt >= policy.max_attempts:
                raise ProfileApiUnavailable(f"{reason} (after {attempt} attempts)")
            if wait is None:
                wait = policy.backoff_s(attempt, self._jitter) if self._jitter else policy.backoff_s(attempt)
            if self._clock() - started + wait > policy.max_total_s:
                raise ProfileApiUnavailable(f"{reason} (retry budget of {policy.max_total_s:g} s spent)")
            self.log.info("Profile API: retrying in %.2f s (attempt %d): %s", wait, attempt, reason)
            self._sleep(wait)

    def _redact(self, text: str) -> str:
        """``text`` without the token or its Basic form (a proxy may echo them back)."""
        token = self.__dict__.get("_settings", ("",))[0]
        if token:
            text = text.replace(_basic_auth(token).removeprefix("Basic "), "***").replace(token, "***")
        return text

    # -- connection test -----------------------------------------------------------------------------
    def test_connection(self) -> tuple[bool, str]:
        """
        Read the traits of an external id no profile has: ``404`` proves the token opens the space.

        :return: ``(ok, message)``; never raises, never includes the token.
        """
        try:
            self.get_traits("user_id", "airflow-connection-test", include=["email"])
        except ProfileApiAccessError as err:
            return False, self._redact(str(err))
        except Exception as err:
            return False, self._redact(f"{type(err).__name__}: {err}")
        return True, f"The Profile API at {self.where} accepted the access token."


def _basic_auth(token: str) -> str:
    return "Basic " + base64.b64encode(f"{token}:".encode()).decode("ascii")


def _error_body(response: requests.Response) -> str:
    text = response.text.strip()
    return text[:_ERROR_BODY_CHARS] if text else "(empty body)"
