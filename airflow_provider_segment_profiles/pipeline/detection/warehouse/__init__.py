"""The warehouse engine of change detection (``change_detection="warehouse"``): see :mod:`.engine`."""

from __future__ import annotations

from airflow_provider_segment_profiles.pipeline.detection.warehouse.engine import WarehouseChangeDetector

__all__ = ["WarehouseChangeDetector"]
