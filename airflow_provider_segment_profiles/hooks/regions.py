"""Segment endpoint regions and the tracking API base URL of each.

Source: Segment's Segment Profiles destination (``SEGMENT_ENDPOINTS`` in segmentio/action-destinations,
``destinations/segment-profiles/properties.ts``) and the HTTP tracking API doc
(https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/#regional-configuration).
"""

from __future__ import annotations

from airflow_provider_segment_profiles.exceptions import ConfigurationError

DEFAULT_REGION = "north_america"

#: region name -> tracking API base URL (ends in ``/v1``).
REGIONS: dict[str, str] = {
    "north_america": "https://api.segment.io/v1",
    "europe": "https://events.eu1.segmentapis.com/v1",
}


class UnknownRegionError(ConfigurationError):
    """Raised when a connection names a region Segment does not have."""

    def __init__(self, region: object) -> None:
        allowed = ", ".join(sorted(REGIONS))
        super().__init__(f"Unknown Segment endpoint region {region!r}; allowed values: {allowed}.")


def base_url_for_region(region: str | None) -> str:
    """
    Return the tracking API base URL of a region.

    :param region: ``north_america`` or ``europe``; ``None`` or ``""`` means ``north_america``.
    :raises UnknownRegionError: for any other value; the message lists the allowed values.
    """
    name = (region or DEFAULT_REGION).strip().lower()
    try:
        return REGIONS[name]
    except KeyError:
        raise UnknownRegionError(region) from None


#: region name -> Profile API base URL (ends in ``/v1``; routes follow ``/v1/spaces/<space_id>/...``).
#: Source: segment-docs ``src/unify/profile-api.md`` (https://segment.com/docs/unify/profile-api/), "API
#: reference": the endpoint ``https://profiles.segment.com`` and the "European Union endpoint"
#: ``https://profiles.euw1.segment.com``, which an EU workspace must use ("European Union requirements").
PROFILE_API_REGIONS: dict[str, str] = {
    "north_america": "https://profiles.segment.com/v1",
    "europe": "https://profiles.euw1.segment.com/v1",
}


def profile_api_url_for_region(region: str | None) -> str:
    """
    Return the Profile API base URL of a region (the same region names as the tracking API's).

    :param region: ``north_america`` or ``europe``; ``None`` or ``""`` means ``north_america``.
    :raises UnknownRegionError: for any other value; the message lists the allowed values.
    """
    name = (region or DEFAULT_REGION).strip().lower()
    try:
        return PROFILE_API_REGIONS[name]
    except KeyError:
        raise UnknownRegionError(region) from None
