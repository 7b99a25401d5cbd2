"""Prefect flows over the `forecast` library: ingest, train, calibrate, ensemble, daily (the
forecast flow), diagnose, hindcast, serve, demo."""

import os

# No network at run time: a Prefect server started from these flows (the ephemeral one, or the
# test harness's) would otherwise send anonymous usage data on startup, and log an error
# where there is no internet. Set the variable to "true" to allow it.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The ephemeral server (no PREFECT_API_URL) gets 2 minutes to start, not Prefect's 20 s: on a
# machine busy with another run (a backfill beside the daily forecast, two heavy processes on 2
# cores) it took longer, and the flow failed before it began.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
