"""Benchmark: `forecast mclimate` at 0.25° (721 x 1440) from 4 hindcasts x 8 members (issue #12).

The contract: memory bounded by one lead and one latitude tile, never by the lead or member
count; `forecast mclimate` from 4 hindcasts x 8 members at 0.25° stays under 8 GB (21
channels). This script writes a synthetic hindcast store (4 init dates within the window, 8
members each, `--leads` lead times, `--channels` channels of random float32 fields, written a
member pair at a time), then runs the `forecast mclimate` command in a child process and
reports the child's peak resident memory (its VmHWM; getrusage RUSAGE_CHILDREN ru_maxrss, the
largest of this script's children, beside it), the peak of a child that only imports the
package (the interpreter, numpy, zarr, dask, torch), the wall time, and the sizes that bound
it: one side-store chunk (one lead-tile of quantiles, all channels), one lead's quantiles
and one lead of the pooled members. The hindcasts are written by a child of their own, so
this process stays small (Linux counts a parent's peak in its child's ru_maxrss).

The build before the tiling held every lead of every member (float32 and a float64 copy)
and np.quantile's temporaries over every lead at once, about 5.5 x the float64 quantiles of
all leads (measured at 181 x 360): some 290 GB here at 21 channels and 3 leads; not run.

    python benchmarks/bench_mclimate.py [--channels 21] [--leads 3] [--dir /tmp/bench] [--keep]

Disk: the hindcasts take 4 x 8 x leads x channels x 4.15 MB (8.4 GB at 21 channels and 3
leads), the side store 101/32 as much per lead (26 GB): use a disk with room.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET = "2003-11-20"
LEVELS = 101  # quantiles 0, 1, ..., 100 %
INITS = ["1999-11-20T00", "2000-11-18T00", "2001-11-22T00", "2002-11-19T00"]  # 4 hindcasts in the window


def write_hindcasts(path: Path, channels: int, leads: int, members: int, nlat: int, nlon: int) -> None:
    from forecast.ensemble.members import Layout
    from forecast.ensemble.store import ForecastStore

    layout = Layout(("synthetic",), members // 2)
    lat, lon = np.linspace(90.0, -90.0, nlat), np.arange(nlon) * (360.0 / nlon)
    names = [f"c{c:02d}" for c in range(channels)]
    store = ForecastStore.create(
        str(path), layout, np.array(INITS, "datetime64[h]"), [6 * k for k in range(leads)], names, lat, lon, {}
    )
    rng = np.random.default_rng(0)
    for i in range(len(INITS)):
        for block in layout.blocks(2):
            for k in range(leads):
                values = rng.standard_normal((block.size, channels, nlat, nlon), dtype=np.float32)
                store.write_lead(i, block, k, values)
            store.mark_complete(i, block)


PEAK = """
import resource
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print("PEAK", hwm * 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def child(code: str) -> tuple[float, int, str]:
    """Run `code` in a fresh interpreter: (seconds, its peak resident memory in bytes (VmHWM:
    this process's own pages, nothing inherited from the parent), its output)."""
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code + PEAK], capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if done.returncode:
        raise SystemExit(f"child failed:\n{done.stdout}\n{done.stderr}")
    peak = next(int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("PEAK"))
    return seconds, peak, done.stdout + done.stderr


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--channels", type=int, default=21)
    p.add_argument("--leads", type=int, default=3)
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--nlat", type=int, default=721)
    p.add_argument("--nlon", type=int, default=1440)
    p.add_argument("--dir", help="working directory (default: a new temporary one, removed after)")
    p.add_argument("--keep", action="store_true", help="keep the stores")
    args = p.parse_args()
    # this process stays small (stdlib and numpy): a child's peak counts its parent's at spawn
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-mclimate-"))
    work.mkdir(parents=True, exist_ok=True)
    hindcast, archive, side = work / "hindcast.zarr", work / "archive.zarr", work / "archive.side.zarr"
    here = str(Path(__file__).resolve().parent)
    try:
        shutil.rmtree(hindcast, ignore_errors=True)
        shutil.rmtree(side, ignore_errors=True)
        write = (
            f"import sys; sys.path.insert(0, {here!r})\nfrom bench_mclimate import write_hindcasts\n"
            f"write_hindcasts({str(hindcast)!r}, {args.channels}, {args.leads}, {args.members}, "
            f"{args.nlat}, {args.nlon})"
        )
        write_s, write_peak, _ = child(write)
        _, import_peak, tile = child("from forecast.diagnostics.mclimate import TILE_ROWS\nprint('TILE', TILE_ROWS)")
        tile_rows = int(tile.split("TILE")[1].split()[0])
        cli = [
            "mclimate", "--archive", str(archive), "--hindcasts", str(hindcast), "--date", TARGET,
            "--window-days", "15", "--min-samples", str(len(INITS) * args.members),
        ]  # fmt: skip
        seconds, peak, out = child(f"from forecast.cli import main\nassert main({cli!r}) == 0")
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        c, n, points = args.channels, len(INITS) * args.members, args.nlat * args.nlon
        result = {
            "grid": [args.nlat, args.nlon],
            "channels": c,
            "leads": args.leads,
            "hindcasts": len(INITS),
            "members_per_hindcast": args.members,
            "tile_rows": tile_rows,
            "mclimate_peak_rss_gb": round(peak / 1e9, 3),
            "mclimate_seconds": round(seconds, 1),
            "import_only_peak_rss_gb": round(import_peak / 1e9, 3),
            "rusage_children_maxrss_gb": round(children / 1e9, 3),
            "write_hindcasts_peak_rss_gb": round(write_peak / 1e9, 3),
            "write_hindcasts_seconds": round(write_s, 1),
            "one_chunk_gb": round(LEVELS * c * tile_rows * args.nlon * 4 / 1e9, 3),
            "one_lead_quantiles_gb": round(LEVELS * c * points * 4 / 1e9, 3),
            "one_lead_pooled_members_gb": round(n * c * points * 4 / 1e9, 3),
            "all_leads_pooled_members_gb": round(n * args.leads * c * points * 4 / 1e9, 3),
            "side_store_gb": round(sum(f.stat().st_size for f in side.rglob("*") if f.is_file()) / 1e9, 2),
            "cli_output": out.strip().splitlines()[0],
        }
        print(json.dumps(result, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(hindcast, ignore_errors=True)
            shutil.rmtree(side, ignore_errors=True)
            if not args.dir:
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
