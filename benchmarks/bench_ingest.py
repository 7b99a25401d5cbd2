"""Benchmark: ingest throughput against a plain `xr.open_mfdataset(...).to_zarr(...)`.

Same files, same process, alternating runs, best of N each. Our ingest also validates
(variables, levels, times, grids, NaN), writes one chunk per time step with a commit record,
and computes statistics; the baseline does none of that. Target: ratio <= 1 (not slower).

    python benchmarks/bench_ingest.py [--world DIR] [--months 12] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import xarray as xr


def baseline(files: list[Path], out: Path, chunk: int = 1) -> float:
    start = time.perf_counter()
    pl = xr.open_mfdataset([f for f in files if "_pl_" in f.name], combine="by_coords")
    sfc = xr.open_mfdataset([f for f in files if "_sfc_" in f.name], combine="by_coords")
    # Minimal changes needed for to_zarr to accept it: drop the string `expver`, clear the
    # NetCDF encodings, and use uniform chunks (1 step: the archive's chunking; or ~a month).
    ds = xr.merge([pl, sfc]).drop_vars("expver").chunk({"valid_time": chunk})
    for v in ds.variables.values():
        v.encoding = {}
    ds.to_zarr(out, mode="w", zarr_format=3, consolidated=False)
    return time.perf_counter() - start


def ours(files: list[Path], out: Path) -> float:
    from forecast.ingest import ingest

    start = time.perf_counter()
    ingest(files, out, progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--world", help="an existing world directory (default: generate one)")
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        world = Path(args.world) if args.world else tmp / "world"
        if not args.world:
            from forecast.world import WorldRun, generate_world

            generate_world(world, WorldRun(months=args.months), progress=False)
        files = sorted(world.glob("era5_world_*_*.nc"))
        nbytes = sum(f.stat().st_size for f in files)
        times = {"baseline": [], "baseline_monthly_chunks": [], "ours": []}
        runs = (("baseline", baseline), ("baseline_monthly_chunks", lambda f, o: baseline(f, o, 124)), ("ours", ours))
        for _ in range(args.repeat):
            for name, fn in runs:
                out = tmp / f"{name}.zarr"
                shutil.rmtree(out, ignore_errors=True)
                times[name].append(fn(files, out))
        steps = xr.open_zarr(tmp / "ours.zarr", consolidated=False).sizes["time"]
        best = {k: min(v) for k, v in times.items()}
        print(
            json.dumps(
                {
                    "files": len(files),
                    "megabytes": round(nbytes / 1e6, 1),
                    "time_steps": steps,
                    "baseline_seconds": round(best["baseline"], 2),
                    "baseline_monthly_chunks_seconds": round(best["baseline_monthly_chunks"], 2),
                    "ours_seconds": round(best["ours"], 2),
                    "ours_over_baseline": round(best["ours"] / best["baseline"], 2),
                    "ours_over_baseline_monthly_chunks": round(best["ours"] / best["baseline_monthly_chunks"], 2),
                    "ours_steps_per_second": round(steps / best["ours"], 1),
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
