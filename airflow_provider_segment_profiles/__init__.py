"""Apache Airflow provider for Reverse ETL from SQL warehouses into Segment Profiles."""

from __future__ import annotations

__version__ = "0.1.0"
