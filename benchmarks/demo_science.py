"""Is the demo's ensemble calibrated and sharp? Issue #13's demo targets, from the online
scores of the demo's forecast and its four hindcasts (five init times, none of them the
calibration's): spread-skill ratio within 0.7-1.3 at days 3 and 5 and member power at l >= 8
at least 0.6 of the analysis's at day 5, for z500, t850, t2m and u10m.

The spread-skill ratio is sqrt((m+1)/m) sqrt(<s²>) / sqrt(<e²>) with the means over init times
taken before the roots; the spectral ratio is the init-mean member power summed over l >= 8
over the init-mean analysis power.

    python benchmarks/demo_science.py --out demo-output [--json FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import xarray as xr

CHANNELS = ("z500", "t850", "t2m", "u10m")
DAYS = (3, 5)


def demo_scores(out: Path) -> dict:
    from forecast.diagnostics.online import pooled_spread_skill_ratio
    from forecast.ensemble.store import open_forecast

    parts = [open_forecast(str(out / "forecast" / "forecast.zarr")), open_forecast(str(out / "hindcast.zarr"))]
    keep = ["crps", "ensemble_mean_rmse", "spread_skill_ratio", "member_mean_spectrum", "verification_spectrum"]
    ds = xr.concat([p[keep + ["member_count"]] for p in parts], dim="init_time", join="inner")
    result = {"init_times": [str(np.datetime64(t, "h")) for t in ds.init_time.values]}
    for day in DAYS:
        s = ds.sel(lead_time=24 * day, channel=list(CHANNELS)).load()
        ssr = pooled_spread_skill_ratio(s)
        high = s.l >= 8
        power = s.member_mean_spectrum.where(high).sum("l").mean("init_time")
        truth = s.verification_spectrum.where(high).sum("l").mean("init_time")
        result[day] = {
            c: {
                "ssr": float(ssr.sel(channel=c)),
                "spectral_ratio": float((power / truth).sel(channel=c)),
                "crps": float(s.crps.sel(channel=c).mean()),
            }
            for c in CHANNELS
        }
    result["targets"] = {
        "ssr_0.7_1.3_days_3_5": all(0.7 <= result[d][c]["ssr"] <= 1.3 for d in DAYS for c in CHANNELS),
        "spectral_ratio_day5_ge_0.6": all(result[5][c]["spectral_ratio"] >= 0.6 for c in CHANNELS),
    }
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo-output", help="the demo's output directory")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    result = demo_scores(Path(args.out))
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
