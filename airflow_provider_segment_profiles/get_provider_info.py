"""Provider metadata read by Airflow's providers manager through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_provider_segment_profiles import __version__
from airflow_provider_segment_profiles.hooks.regions import DEFAULT_REGION, PROFILE_API_REGIONS, REGIONS

#: The emulator's port in docs/emulator.md; 8080 is Airflow's own API server.
EMULATOR_EXAMPLE_URL = "http://127.0.0.1:8765/v1"

#: The form Airflow shows for a ``segment_profiles`` connection. Declared here (Airflow >= 3.2 reads it
#: without importing the hook); :class:`SegmentProfilesHook` returns the same through its classmethods
#: for Airflow 3.1.
UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["login", "port", "schema", "extra"],
    "relabeling": {"password": "Write Key", "host": "Host"},
    "placeholders": {
        "password": "write key of the Profile Space's source",
        "host": f"optional override, e.g. {EMULATOR_EXAMPLE_URL} (emulator)",
    },
}

#: Title of the form section that holds the region. Airflow 3.2+ shows a field's ``section`` as a
#: collapsed heading in place of the generic "Extra Fields". The heading is the same whatever the
#: connection's region (a section title cannot show a field's value), so it names no region: it says that
#: the choice is inside and why it matters; the dropdown shows the connection's region once opened.
REGION_SECTION = "Endpoint Region (open to check it: Segment drops events sent to the wrong region)"

#: Shown under the Endpoint Region dropdown.
REGION_DESCRIPTION = (
    "Region of the Segment workspace that holds the Profile Space: north_america (api.segment.io) or "
    "europe (events.eu1.segmentapis.com). Segment answers 200 to events sent to the other region's API "
    "and drops them, so check this choice."
)

CONN_FIELDS: dict[str, Any] = {
    "region": {
        "label": "Endpoint Region",
        "description": REGION_DESCRIPTION,
        "schema": {
            "type": "string",
            "enum": sorted(REGIONS),
            "default": DEFAULT_REGION,
            "section": REGION_SECTION,
            "values_display": {
                "north_america": "north_america (api.segment.io)",
                "europe": "europe (events.eu1.segmentapis.com)",
            },
        },
    }
}

#: The form of a ``segment_profile_api`` connection (the Profile API that verify_sample reads back from).
PROFILE_API_UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["login", "port", "schema", "extra"],
    "relabeling": {"password": "Access Token", "host": "Host"},
    "placeholders": {
        "password": "the Space's Profile API access token (Unify > Unify settings > API access)",
        "host": f"optional override, e.g. {EMULATOR_EXAMPLE_URL} (emulator)",
    },
}

PROFILE_API_CONN_FIELDS: dict[str, Any] = {
    "space_id": {
        "label": "Space ID",
        "description": "The Profile Space's id, shown beside the access token under Unify > Unify settings > "
        "API access.",
        "schema": {"type": "string", "section": "Space ID and Region"},
    },
    "region": {
        "label": "Region",
        "description": "Region of the workspace that holds the Space: north_america (profiles.segment.com) "
        "or europe (profiles.euw1.segment.com). It must be the region the sync's Segment Profiles "
        "connection sends to.",
        "schema": {
            "type": "string",
            "enum": sorted(PROFILE_API_REGIONS),
            "default": DEFAULT_REGION,
            "section": "Space ID and Region",
            "values_display": {
                "north_america": "north_america (profiles.segment.com)",
                "europe": "europe (profiles.euw1.segment.com)",
            },
        },
    },
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
                "python-modules": [
                    "airflow_provider_segment_profiles.hooks.segment_profiles",
                    "airflow_provider_segment_profiles.hooks.profile_api",
                ],
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
            },
            {
                "connection-type": "segment_profile_api",
                "hook-class-name": "airflow_provider_segment_profiles.hooks.profile_api.SegmentProfileApiHook",
                "hook-name": "Segment Profile API",
                "ui-field-behaviour": PROFILE_API_UI_FIELD_BEHAVIOUR,
                "conn-fields": PROFILE_API_CONN_FIELDS,
            },
        ],
    }


def hook_field_behaviour(declared: dict[str, Any]) -> dict[str, Any]:
    """
    A connection type's ``ui-field-behaviour`` (the provider info's spelling) in the shape a hook's
    ``get_ui_field_behaviour`` returns it (Airflow 3.1 reads the hook; 3.2+ reads the provider info).
    """
    return {
        "hidden_fields": declared["hidden-fields"],
        "relabeling": declared["relabeling"],
        "placeholders": declared["placeholders"],
    }
