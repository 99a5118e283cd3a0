"""Hook for Segment's tracking API, as the Segment Profiles destination uses it."""

from __future__ import annotations

import base64
import gzip as gzip_module
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

import requests
from airflow.sdk import BaseHook
from requests.adapters import HTTPAdapter

from airflow_provider_segment_profiles import __version__
from airflow_provider_segment_profiles.actions.message_id import destination_scope
from airflow_provider_segment_profiles.delivery.limits import (
    DEFAULT_MAX_IN_FLIGHT,
    MAX_BATCH_ITEM_BYTES,
    MAX_BATCH_MESSAGES,
    MAX_MESSAGE_BYTES,
    plan_requests,
)
from airflow_provider_segment_profiles.delivery.outcome import DeliveryResult, MessageProblem
from airflow_provider_segment_profiles.delivery.retry import (
    RETRYABLE_STATUSES,
    RetryPolicy,
    parse_retry_after,
)
from airflow_provider_segment_profiles.exceptions import ConfigurationError, HookClosedError
from airflow_provider_segment_profiles.hooks.regions import DEFAULT_REGION, base_url_for_region

if TYPE_CHECKING:
    from airflow_provider_segment_profiles.delivery.rate_limit import TokenBucket

#: Requests a top-level request may add while splitting itself to isolate the messages Segment refuses.
MAX_SPLIT_REQUESTS = 64
_ERROR_BODY_CHARS = 500


class ConnectionSettings(NamedTuple):
    """
    What the hook reads from its connection, once.

    :param write_key: the write key of the Profile Space's source (never logged: see the class docstring).
    :param region: ``north_america`` or ``europe``, lower case.
    :param base_url: the tracking API's base URL, ending in ``/v1`` (the region's, or the Host override).
    :param gzip: whether request bodies are compressed.
    """

    write_key: str
    region: str
    base_url: str
    gzip: bool


class Attempt(NamedTuple):
    """
    One HTTP request of a ``/v1/batch`` POST, before any retry decision.

    :param status: the HTTP status, or ``None`` when no response came (connection error, timeout).
    :param reason: why it did not deliver, without the write key (``""`` when it did).
    :param retry_after_s: the 429 answer's ``Retry-After``, in seconds, when it gave one.
    """

    status: int | None
    reason: str
    retry_after_s: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class BatchOutcome(NamedTuple):
    """
    What became of one ``/v1/batch`` POST after the retry policy ran.

    :param delivered: whether Segment answered 2xx.
    :param status: the last HTTP status, or ``None`` when the last attempt got no response.
    :param reason: why it failed (``""`` when delivered).
    :param requests: HTTP requests made, retries included.
    """

    delivered: bool
    status: int | None
    reason: str
    requests: int


class SegmentProfilesHook(BaseHook):
    """
    Send messages to the tracking API of the Segment workspace that holds a Profile Space.

    The connection (type ``segment_profiles``) carries the write key of the Profile Space's source in
    ``password``, the endpoint region in extra ``region`` (``north_america`` or ``europe``) and an optional
    ``host`` that overrides the base URL (a proxy, or :class:`~airflow_provider_segment_profiles.testing.SegmentEmulator`).
    Messages go to ``POST {base_url}/batch`` with ``Authorization: Basic base64(write_key + ":")``
    (https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/#authentication).

    The write key is registered with Airflow's secrets masker, kept out of ``repr`` and never put in a log
    line, exception or return value.

    :param segment_profiles_conn_id: id of a ``segment_profiles`` connection.
    :param timeout: ``(connect, read)`` timeouts of each HTTP request, in seconds.
    :param retry_policy: retry bounds (:class:`RetryPolicy`, or a dict of its fields).
    :param gzip: compress request bodies (``Content-Encoding: gzip``); ``None`` reads the connection's
        extra ``gzip`` (default off).
    :param pool_size: HTTP connections kept open; set it to the number of threads sending at once.
    :param sleep: sleep function in seconds (injectable so tests check retry waits without waiting).
    :param clock: monotonic clock in seconds (injectable, with ``sleep``).
    :param jitter: ``uniform(a, b)`` used for backoff jitter (injectable).
    """

    conn_name_attr = "segment_profiles_conn_id"
    default_conn_name = "segment_profiles_default"
    conn_type = "segment_profiles"
    hook_name = "Segment Profiles"

    def __init__(
        self,
        segment_profiles_conn_id: str = default_conn_name,
        *,
        timeout: tuple[float, float] = (10.0, 30.0),
        retry_policy: RetryPolicy | dict[str, float] | None = None,
        gzip: bool | None = None,
        pool_size: int = DEFAULT_MAX_IN_FLIGHT,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[float, float], float] | None = None,
    ) -> None:
        super().__init__()
        self.segment_profiles_conn_id = segment_profiles_conn_id
        self.timeout = timeout
        self.retry_policy = RetryPolicy.coerce(retry_policy)
        self._gzip = gzip
        self.pool_size = pool_size
        self._sleep = sleep
        self._clock = clock
        self._jitter = jitter

    def __repr__(self) -> str:
        return f"{type(self).__name__}(segment_profiles_conn_id={self.segment_profiles_conn_id!r})"

    # -- connection form (Airflow 3.1 reads these; 3.2+ reads the same from get_provider_info) --------
    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hidden, relabelled and placeholder fields of the connection form."""
        from airflow_provider_segment_profiles.get_provider_info import (
            UI_FIELD_BEHAVIOUR,
            hook_field_behaviour,
        )

        return hook_field_behaviour(UI_FIELD_BEHAVIOUR)

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """
        The Endpoint Region field, for Airflow 3.1 (3.2+ reads ``conn-fields`` from the provider info).

        Airflow 3.1 turns only wtforms ``StringField``, ``PasswordField``, ``IntegerField`` and
        ``BooleanField`` into UI fields and drops the whole connection type when a hook returns any other
        class (a ``SelectField`` made the type vanish); an ``any_of`` validator becomes the dropdown's
        choices.
        """
        from airflow_provider_segment_profiles.get_provider_info import CONN_FIELDS

        try:
            from wtforms import StringField
            from wtforms.validators import any_of
        except ImportError:  # no wtforms: Airflow 3.1 builds no form from the hook
            return {}
        region = CONN_FIELDS["region"]
        return {
            "region": StringField(
                region["label"],
                validators=[any_of(region["schema"]["enum"])],
                description=region["description"],
                default=region["schema"]["default"],
            )
        }

    # -- connection ----------------------------------------------------------------------------------
    @cached_property
    def _settings(self) -> ConnectionSettings:
        """What the connection says, read once."""
        from airflow.sdk.log import mask_secret

        conn = self.get_connection(self.segment_profiles_conn_id)
        write_key = conn.password or ""
        if write_key:
            mask_secret(write_key)
            mask_secret(_basic_auth(write_key))
        extra = conn.extra_dejson or {}
        region = str(extra.get("region") or DEFAULT_REGION)
        region_url = base_url_for_region(region)
        host = (conn.host or "").strip()
        base_url = _normalise_host(host, conn.port) if host else region_url
        use_gzip = self._gzip if self._gzip is not None else _truthy(extra.get("gzip", False))
        return ConnectionSettings(write_key, region.strip().lower(), base_url, use_gzip)

    @property
    def region(self) -> str:
        """Endpoint region of the connection: ``north_america`` or ``europe``."""
        return self._settings.region

    @property
    def base_url(self) -> str:
        """
        Tracking API base URL, ending in ``/v1``.

        :raises UnknownRegionError: when the connection's region is not one Segment has.
        """
        return self._settings.base_url

    @property
    def destination_id(self) -> str:
        """
        16 hex digits naming where messages go: a keyed BLAKE2b hash of the region and the write key.

        The write key cannot be recovered from it (a key has well over 64 bits of entropy, the digest has
        64). It changes when the connection points at another source (write key) or region, which the sync
        must notice: Segment answers 200 to an unknown write key and to the wrong region and drops the data
        (https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/,
        https://segment.com/docs/guides/regional-segment/). The Host is left out: a proxy in front of the
        same region is the same destination.
        """
        settings = self._settings
        write_key, region = settings.write_key, settings.region
        material = f"{region}\n{write_key}".encode("utf-8", "surrogatepass")
        return hashlib.blake2b(material, key=b"segment-profiles-destination", digest_size=8).hexdigest()

    @property
    def host_overridden(self) -> bool:
        """Whether the connection's Host replaces the region's API (a proxy, the emulator)."""
        return self.base_url != base_url_for_region(self.region)

    @property
    def endpoint_host(self) -> str:
        """The host (and port) messages are posted to, without user info, e.g. ``api.segment.io``."""
        authority = _without_userinfo(self.base_url).partition("://")[2].partition("/")[0]
        return authority

    def describe_destination(self) -> str:
        """
        Where this hook sends, for the task log: the connection id, the region and the endpoint host
        (``connection 'x': region europe, endpoint events.eu1.segmentapis.com``); never the write key.
        A Host override is named as one, since only the region's own API is known to ingest the region's data.
        """
        text = f"connection {self.segment_profiles_conn_id!r}: region {self.region}, endpoint {self.endpoint_host}"
        if self.host_overridden:
            region_host = base_url_for_region(self.region).partition("://")[2].partition("/")[0]
            text += f" (the connection's Host, in place of the {self.region} API {region_host})"
        return text

    @property
    def message_id_scope(self) -> bytes:
        """
        The scope mixed into derived message ids
        (:func:`~airflow_provider_segment_profiles.actions.message_id.destination_scope` of the write key):
        Segment de-duplicates ``messageId`` across every source and workspace
        (https://segment.com/docs/guides/duplicate-data/), so ids must differ per destination. Only hashed
        into ids; never logged, returned in a summary or stored.
        """
        return destination_scope(self._settings.write_key)

    @cached_property
    def session(self) -> requests.Session:
        """
        Pooled HTTP session with the auth and content headers set.

        :raises ConfigurationError: when the connection has no write key or a malformed one.
        :raises HookClosedError: after :meth:`close`.
        """
        write_key = self._settings.write_key
        if not write_key.strip():
            raise ConfigurationError(
                f"Connection {self.segment_profiles_conn_id!r} has no write key: put the write key of the "
                "Profile Space's source in the connection's Write Key (password) field."
            )
        # Segment answers 200 to a malformed key and drops the events, so refuse it before sending.
        problem = _write_key_problem(write_key)
        if problem:
            raise ConfigurationError(f"Connection {self.segment_profiles_conn_id!r}: {problem}")
        if getattr(self, "_closed", False):
            raise HookClosedError(f"SegmentProfilesHook({self.segment_profiles_conn_id!r}) was closed")
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(1, self.pool_size))
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers.update(
            {
                "Authorization": _basic_auth(write_key),
                "Content-Type": "application/json",
                "User-Agent": f"airflow-provider-segment-profiles/{__version__}",
            }
        )
        if self._settings.gzip:
            session.headers["Content-Encoding"] = "gzip"
        return session

    def get_conn(self) -> requests.Session:
        """Return the pooled :class:`requests.Session` (Airflow's hook contract)."""
        return self.session

    def close(self) -> None:
        """
        Close pooled HTTP connections; the hook sends nothing more afterwards (``on_kill`` relies on it).
        Safe to call more than once, and from another thread.
        """
        self._closed = True
        session = self.__dict__.pop("session", None)
        if session is not None:
            session.close()

    # -- sending -------------------------------------------------------------------------------------
    def send_messages(self, messages: Iterable[dict[str, Any]]) -> DeliveryResult:
        """
        Send tracking API messages in as many ``/v1/batch`` requests as Segment's limits require.

        :param messages: message dicts, each with ``type`` (``identify``, ``group``, ``track``, ...).
            Values must be JSON-serialisable; NaN and Infinity are refused.
        :return: a :class:`DeliveryResult` whose indexes refer to the order of ``messages``.
        :raises ValueError: when a message cannot be serialised to strict JSON.
        """
        encoded = [
            json.dumps(m, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
            for m in messages
        ]
        return self.send_encoded(encoded)

    def send_encoded(
        self, items: Sequence[bytes], *, rate_limiter: TokenBucket | None = None
    ) -> DeliveryResult:
        """
        Send already-serialised messages; the fast path used by the sync operator.

        Messages over 32,768 bytes are rejected alone; the rest are grouped into requests of at most
        2,500 messages and 475,000 bytes of messages. Each request is retried per :attr:`retry_policy`;
        a request Segment refuses for its content (4xx, or 5xx that outlasts the retries) is split in
        halves to isolate the refused messages, within :data:`MAX_SPLIT_REQUESTS` extra requests.

        :param items: compact UTF-8 JSON of each message.
        :param rate_limiter: shared token bucket; one token is taken per message per attempt.
        :return: outcome of every item, by index into ``items``.
        """
        result = DeliveryResult()
        sizes = list(map(len, items))
        if (
            sizes
            and max(sizes) <= MAX_MESSAGE_BYTES
            and len(sizes) <= MAX_BATCH_MESSAGES
            and sum(sizes) + len(sizes) <= MAX_BATCH_ITEM_BYTES
        ):
            # The usual case, a batch from the dispatcher that fits one request: skip the per-item planning.
            self._send_splitting(
                items, list(range(len(sizes))), result, rate_limiter, budget=[MAX_SPLIT_REQUESTS], first=True
            )
            return result
        sendable: list[int] = []
        for index, item in enumerate(items):
            if len(item) > MAX_MESSAGE_BYTES:
                result.rejected.append(
                    MessageProblem(
                        index,
                        f"message is {len(item):,} bytes of JSON; Segment accepts at most "
                        f"{MAX_MESSAGE_BYTES:,} bytes per message",
                    )
                )
            else:
                sendable.append(index)
        sizes = [len(items[i]) for i in sendable]
        for group in plan_requests(sizes, max_messages=MAX_BATCH_MESSAGES, max_bytes=MAX_BATCH_ITEM_BYTES):
            indexes = [sendable[i] for i in group]
            self._send_splitting(
                items, indexes, result, rate_limiter, budget=[MAX_SPLIT_REQUESTS], first=True
            )
        return result

    def _send_splitting(
        self,
        items: Sequence[bytes],
        indexes: list[int],
        result: DeliveryResult,
        rate_limiter: TokenBucket | None,
        budget: list[int],
        first: bool,
    ) -> None:
        policy = self.retry_policy if first else _split_policy(self.retry_policy)
        outcome = self._post_batch([items[i] for i in indexes], policy, rate_limiter)
        result.requests += outcome.requests
        status, reason = outcome.status, outcome.reason
        if outcome.delivered:
            result.delivered.extend(indexes)
            return
        # A refusal with an HTTP status may be caused by one message; a network failure is not.
        if status is not None and len(indexes) > 1 and budget[0] >= 2:
            budget[0] -= 2
            half = len(indexes) // 2
            self.log.info(
                "Segment refused a request of %d messages (%s); splitting it to isolate the refused ones",
                len(indexes),
                reason,
            )
            for part in (indexes[:half], indexes[half:]):
                self._send_splitting(items, part, result, rate_limiter, budget, first=False)
            return
        result.failed.extend(MessageProblem(i, reason) for i in indexes)

    def _post_batch(
        self, items: list[bytes], policy: RetryPolicy, rate_limiter: TokenBucket | None
    ) -> BatchOutcome:
        """
        POST one ``/v1/batch`` request, retried as ``policy`` allows: 429 and 5xx answers and network
        failures are retried with backoff (a 429's ``Retry-After`` first), other statuses are not.
        """
        url = f"{self.base_url}/batch"
        session = self.session
        send_settings = self._send_settings(session, url)
        started = self._clock()
        attempt_number = 0
        while True:
            attempt_number += 1
            if rate_limiter is not None:
                rate_limiter.acquire(len(items))
            attempt = self._attempt(session, url, items, send_settings)
            if attempt.delivered:
                return BatchOutcome(True, attempt.status, "", attempt_number)
            reason = attempt.reason
            if attempt.status is not None and attempt.status not in RETRYABLE_STATUSES:
                self.log.warning("Segment refused %d messages: %s (not retried)", len(items), reason)
                return BatchOutcome(False, attempt.status, reason, attempt_number)
            if attempt_number >= policy.max_attempts:
                self.log.warning(
                    "Giving up on %d messages after %d attempts: %s", len(items), attempt_number, reason
                )
                return BatchOutcome(
                    False, attempt.status, f"{reason} (after {attempt_number} attempts)", attempt_number
                )
            wait = attempt.retry_after_s
            if wait is not None:
                wait = min(wait, policy.max_retry_after_s)
            else:
                wait = (
                    policy.backoff_s(attempt_number, self._jitter)
                    if self._jitter
                    else policy.backoff_s(attempt_number)
                )
            if self._clock() - started + wait > policy.max_total_s:
                self.log.warning(
                    "Giving up on %d messages: retrying in %.1f s would pass the %.0f s retry budget (%s)",
                    len(items),
                    wait,
                    policy.max_total_s,
                    reason,
                )
                return BatchOutcome(
                    False,
                    attempt.status,
                    f"{reason} (retry budget of {policy.max_total_s:.0f} s spent)",
                    attempt_number,
                )
            self.log.info(
                "Retrying %d messages in %.2f s (attempt %d): %s", len(items), wait, attempt_number, reason
            )
            self._sleep(wait)

    def _attempt(
        self, session: requests.Session, url: str, items: list[bytes], send_settings: dict[str, Any]
    ) -> Attempt:
        """One HTTP request of a batch POST; never raises for an HTTP or network failure."""
        body = _batch_body(items)
        if self._settings.gzip:
            body = gzip_module.compress(body, compresslevel=6)
        try:
            # What session.post() does, minus reading the proxy and CA settings of the environment
            # again for every request (a quarter of the client's CPU per request; docs/benchmarks.md).
            prepared = session.prepare_request(requests.Request("POST", url, data=body))
            response = session.send(prepared, timeout=self.timeout, allow_redirects=True, **send_settings)
        except (requests.ConnectionError, requests.Timeout) as err:
            return Attempt(None, self._redact(f"{type(err).__name__} talking to {_without_userinfo(url)}"))
        status = response.status_code
        if 200 <= status < 300:
            return Attempt(status, "")
        reason = self._redact(f"HTTP {status} from Segment: {_error_body(response)}")
        retry_after = parse_retry_after(response.headers) if status == 429 else None
        return Attempt(status, reason, retry_after)

    def _redact(self, text: str) -> str:
        """``text`` without the write key or its Basic credentials (a proxy may echo them back)."""
        settings = self.__dict__.get("_settings")
        key = settings.write_key if settings is not None else ""
        if key:
            text = text.replace(_basic_auth(key).removeprefix("Basic "), "***").replace(key, "***")
        return text

    def _send_settings(self, session: requests.Session, url: str) -> dict[str, Any]:
        """
        The proxies, TLS verification and certificate ``session.post(url)`` would take from the environment
        (``HTTPS_PROXY``, ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``...), read once per session and URL.
        """
        cached = self.__dict__.get("_send_settings_cache")
        if cached is not None and cached[0] is session and cached[1] == url:
            return cached[2]
        settings = session.merge_environment_settings(url, {}, None, None, None)
        self.__dict__["_send_settings_cache"] = (session, url, settings)
        return settings

    # -- connection test -----------------------------------------------------------------------------
    def test_connection(self) -> tuple[bool, str]:
        """
        Check what can be checked without sending an event.

        Segment's tracking API answers 200 to any non-empty write key and silently drops the events of an
        unknown one (https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/#errors),
        so this test checks that the key is present and well-formed and that the region's host answers an
        empty batch; it cannot prove that the key belongs to the Profile Space's source.

        :return: ``(ok, message)``; never raises, never includes the write key.
        """
        try:
            settings = self._settings
        except Exception as err:
            return False, _scrub(str(err), self)
        write_key, region, base_url = settings.write_key, settings.region, settings.base_url
        problem = _write_key_problem(write_key)
        if problem:
            return False, problem
        try:
            response = self.session.post(f"{base_url}/batch", data=_batch_body([]), timeout=self.timeout)
        except requests.RequestException as err:
            return (
                False,
                f"Could not reach the tracking API at {_without_userinfo(base_url)}: {type(err).__name__}",
            )
        if response.status_code >= 400:
            return (
                False,
                self._redact(
                    f"The tracking API at {_without_userinfo(base_url)} answered HTTP {response.status_code}: "
                    f"{_error_body(response)}"
                ),
            )
        region_url = base_url_for_region(region)
        if base_url == region_url:
            reached = f"Reached the {region} tracking API at {region_url}"
        else:
            # The Host replaces the region's API: only the Host answered, the region's API was not contacted.
            reached = (
                f"Reached the connection's Host {_without_userinfo(base_url)}, which replaces the {region} "
                f"tracking API ({region_url}, not contacted by this test: make sure the Host forwards there)"
            )
        return True, (
            f"{reached}, and the write key is well-formed. Segment accepts any write key and drops events "
            "sent with an unknown one, so this test cannot verify the key: after the first sync, check the "
            "Profile Space source's debugger in Segment."
        )


def _basic_auth(write_key: str) -> str:
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode("ascii")


def _batch_body(items: list[bytes]) -> bytes:
    sent_at = datetime.now(UTC).isoformat(timespec="milliseconds")
    return b'{"batch":[' + b",".join(items) + b'],"sentAt":"' + sent_at.encode() + b'"}'


def _split_policy(policy: RetryPolicy) -> RetryPolicy:
    """Sub-requests of a split get one quick retry: the whole request already used the full budget."""
    return RetryPolicy(
        max_attempts=min(2, policy.max_attempts),
        base_delay_s=policy.base_delay_s,
        max_delay_s=policy.max_delay_s,
        max_total_s=policy.max_total_s,
        max_retry_after_s=policy.max_retry_after_s,
    )


def _error_body(response: requests.Response) -> str:
    text = response.text.strip()
    return text[:_ERROR_BODY_CHARS] if text else "(empty body)"


def _normalise_host(host: str, port: int | None = None) -> str:
    """
    Base URL from the connection's Host (and Port, as a URI such as ``segment-profiles://:KEY@127.0.0.1:8765``
    gives them): a host without a scheme is ``http`` on loopback (the emulator) and ``https`` elsewhere.
    """
    url = host.rstrip("/")
    if "://" not in url:
        loopback = url.split("/")[0].split(":")[0] in {"127.0.0.1", "localhost", "::1", "[::1]"}
        url = f"{'http' if loopback else 'https'}://{url}"
    if port:
        scheme, rest = url.split("://", 1)
        authority, _, path = rest.partition("/")
        if ":" not in authority.rsplit("]", 1)[-1]:
            url = f"{scheme}://{authority}:{int(port)}" + (f"/{path}" if path else "")
    if not url.endswith("/v1"):
        url = f"{url}/v1"
    return url


def _truthy(value: object) -> bool:
    return value is True or str(value).strip().lower() in {"1", "true", "yes", "on"}


def _write_key_problem(write_key: str) -> str | None:
    if not write_key:
        return "The connection has no write key: set the Write Key (password) field."
    if write_key != write_key.strip() or any(c.isspace() for c in write_key):
        return "The write key contains whitespace; copy it again from the source's settings in Segment."
    if not write_key.isascii() or not write_key.isprintable():
        return "The write key contains characters Segment write keys never have (non-ASCII or control)."
    return None


def _scrub(text: str, hook: SegmentProfilesHook) -> str:
    """Remove the write key from text that may have come from a library's exception."""
    return hook._redact(text)


def _without_userinfo(url: str) -> str:
    """The URL without ``user:password@``, which must never reach a log or a report."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    return f"{scheme}{sep}{authority.rsplit('@', 1)[-1]}{slash}{path}"
