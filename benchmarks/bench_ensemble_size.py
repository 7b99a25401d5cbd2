"""Benchmark (issue #14): what more members buy, online, and what the new diagnostics cost.

On the demo's archive and packages (`make demo` first; its forecast init time has an M-climate):

1. statistics-only scored hindcasts (`store_members=False, score=True`) of 32 and 256 members
   from the demo's forecast init time, 5 days: the ensemble-size curves come out online
   (outliers beside 2/(m'+1), best-member error, missed 99th-percentile extremes), and the
   stores' sizes are compared (the contract: every array has the same shape at any member
   count but the ensemble-size curves, one entry per size 2, 4, ..., m, and the online commit
   record, one byte per block of members; the result arrays are uncompressed, so the bytes
   are exact, not the luck of a compressor);
2. `forecast diagnose` of a 128-member store with members, timed with the new scores
   (`extremes=True`: tails, q99 events, ensemble-size curves) and without them, in the same
   run: the issue asks for at most 2 x.

    python benchmarks/bench_ensemble_size.py [--demo demo-output] [--work DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

CHANNELS = ("z500", "t850", "t2m", "u10m")
LEADS = (0, 24, 48, 72, 96, 120)


def store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def hindcast(archive: str, packages: list[str], init: str, out: Path, members: int, store_members: bool) -> float:
    from forecast.diagnostics.online_scores import hindcast_scores
    from forecast.ensemble.engine import RunSettings, run_ensemble

    settings = RunSettings(
        perturbations=members // (2 * len(packages)),
        lead_hours=max(LEADS),
        output_leads=LEADS,
        amplitude=1.4,  # the demo's calibrated amplitude
        score=True,
        store_members=store_members,
    )
    start = time.perf_counter()
    run_ensemble(archive, packages, init, str(out), settings, progress=False, scores=hindcast_scores)
    return time.perf_counter() - start


def curves(store: Path) -> dict:
    from forecast.ensemble.store import open_forecast

    ds = open_forecast(str(store)).sel(channel=list(CHANNELS)).isel(init_time=0)
    out = {"ensemble_size": ds.ensemble_size.values.tolist()}
    for name in ("subset_outlier_fraction", "subset_best_member_error", "subset_missed_extreme_fraction"):
        out[name] = {
            f"{int(h) // 24}d": {c: ds[name].sel(lead_time=h, channel=c).values.round(5).tolist() for c in CHANNELS}
            for h in (24, 120)
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", default="demo-output")
    p.add_argument("--work")
    p.add_argument("--json", default="benchmarks/results/ensemble_size.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    from forecast.diagnostics.verify import diagnose
    from forecast.ensemble.store import ForecastStore

    demo = Path(args.demo)
    archive, packages = str(demo / "archive.zarr"), sorted(str(p) for p in (demo / "packages").iterdir())
    init = str(ForecastStore.open(str(demo / "forecast" / "forecast.zarr")).init_times[0])
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-size-"))
    result: dict = {"init_time": init, "packages": len(packages), "channels": list(CHANNELS)}

    stats = {}
    for m in (32, 256):
        out = work / f"stats-{m}.zarr"
        seconds = hindcast(archive, packages, init, out, m, store_members=False)
        stats[m] = {"seconds": round(seconds, 1), "store_bytes": store_bytes(out), "curves": curves(out)}
        print(f"{m} members, statistics only: {seconds:.0f} s, store {stats[m]['store_bytes'] / 1e6:.2f} MB")
    result["statistics_only"] = stats
    result["store_size_ratio_256_over_32"] = stats[256]["store_bytes"] / stats[32]["store_bytes"]
    result["store_bytes_256_minus_32"] = stats[256]["store_bytes"] - stats[32]["store_bytes"]

    members = work / "members-128.zarr"
    result["members_128_run_s"] = round(hindcast(archive, packages, init, members, 128, store_members=True), 1)
    timing = {}
    for extremes in (False, True, False, True):  # alternated: the second pair checks the first
        scores = work / f"scores-{extremes}-{len(timing)}.zarr"
        start = time.perf_counter()
        diagnose(str(members), archive, str(scores), progress=False, extremes=extremes)
        timing.setdefault(str(extremes), []).append(round(time.perf_counter() - start, 1))
    result["diagnose_128_s"] = {"without_extremes": timing["False"], "with_extremes": timing["True"]}
    result["diagnose_ratio"] = float(np.min(timing["True"]) / np.min(timing["False"]))
    print(json.dumps({k: v for k, v in result.items() if k != "statistics_only"}, indent=1))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
