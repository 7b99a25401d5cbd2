"""Huge-ensemble weather forecasting: ingest, SFNO checkpoints, bred-vector ensembles, diagnostics."""

__version__ = "0.1.0"
