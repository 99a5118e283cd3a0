"""Provider metadata read by Airflow's providers manager through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_provider_segment_profiles import __version__
from airflow_provider_segment_profiles.hooks.regions import DEFAULT_REGION, REGIONS

#: The form Airflow shows for a ``segment_profiles`` connection. Declared here (Airflow >= 3.2 reads it
#: without importing the hook); :class:`SegmentProfilesHook` returns the same through its classmethods
#: for Airflow 3.1.
UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["login", "port", "schema", "extra"],
    "relabeling": {"password": "Write Key", "host": "Host"},
    "placeholders": {
        "password": "write key of the Profile Space's source",
        "host": "optional base URL override ending in /v1, e.g. http://127.0.0.1:8080/v1",
    },
}

CONN_FIELDS: dict[str, Any] = {
    "region": {
        "label": "Endpoint Region",
        "description": "Region of the Segment workspace whose tracking API receives the calls.",
        "schema": {"type": "string", "enum": sorted(REGIONS), "default": DEFAULT_REGION},
    }
}


def get_provider_info() -> dict[str, Any]:
    """Return the provider-info dict described by Airflow's ``provider_info.schema.json``."""
    return {
        "package-name": "airflow-provider-segment-profiles",
        "name": "Segment Profiles",
        "description": "Reverse ETL from any SQL warehouse into Segment Profiles "
        "(Send Identify, Send Group, Send Subscriptions, Send Track).",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Segment Profiles",
                "external-doc-url": "https://segment.com/docs/connections/destinations/catalog/actions-segment-profiles/",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Segment Profiles",
                "python-modules": ["airflow_provider_segment_profiles.hooks.segment_profiles"],
            }
        ],
        "operators": [
            {
                "integration-name": "Segment Profiles",
                "python-modules": ["airflow_provider_segment_profiles.operators.segment_profiles"],
            }
        ],
        "connection-types": [
            {
                "connection-type": "segment_profiles",
                "hook-class-name": "airflow_provider_segment_profiles.hooks.segment_profiles.SegmentProfilesHook",
                "hook-name": "Segment Profiles",
                "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
                "conn-fields": CONN_FIELDS,
            }
        ],
    }
