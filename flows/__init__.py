"""Prefect flows: thin orchestration over the `forecast` library."""
