"""Ingest reanalysis files into the archive."""

from forecast.ingest.pipeline import IngestReport, ingest
from forecast.ingest.sources import IngestError

__all__ = ["IngestError", "IngestReport", "ingest"]
