"""Is the demo's ensemble calibrated and sharp? Issue #13's demo targets, from the online
scores of the demo's forecast and its four hindcasts (five init times, none of them the
calibration's): spread-skill ratio within 0.7-1.3 at days 3 and 5 and member power at l >= 8
at least 0.6 of the analysis's at day 5, for z500, t850, t2m and u10m.

The spread-skill ratio is sqrt((m+1)/m) sqrt(<s²>) / sqrt(<e²>) with the means over init times
taken before the roots; the spectral ratio is the init-mean member power summed over l >= 8
over the init-mean analysis power. Each comes with a 90 % bootstrap interval over the init
times (`interval`: the 5 % and 95 % quantiles of 1000 resamplings of the init times, with
replacement): over five init times a pass or a miss by a few hundredths can be sampling noise,
and the interval says how much of it there is.

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
BOOTSTRAP = 1000


def ratios(s: xr.Dataset) -> tuple[xr.DataArray, xr.DataArray]:
    """(pooled spread-skill ratio, member over analysis power at l >= 8) per channel, over the
    init times of `s` (one lead)."""
    from forecast.diagnostics.online import pooled_spread_skill_ratio

    high = s.l >= 8
    power = s.member_mean_spectrum.where(high).sum("l").mean("init_time")
    truth = s.verification_spectrum.where(high).sum("l").mean("init_time")
    return pooled_spread_skill_ratio(s), power / truth


def interval(s: xr.Dataset, rng: np.random.Generator) -> dict[str, dict[str, list[float]]]:
    """{channel: {"ssr": [lo, hi], "spectral_ratio": [lo, hi]}}: 90 % bootstrap intervals,
    the init times resampled with replacement (the same draws for both quantities)."""
    n = s.sizes["init_time"]
    draws = [ratios(s.isel(init_time=rng.integers(0, n, n))) for _ in range(BOOTSTRAP)]
    out: dict = {}
    for k, key in enumerate(("ssr", "spectral_ratio")):
        q = np.quantile(np.stack([d[k].values for d in draws]), [0.05, 0.95], axis=0)
        for j, c in enumerate(s.channel.values):
            out.setdefault(str(c), {})[key] = [float(q[0, j]), float(q[1, j])]
    return out


def demo_scores(out: Path, seed: int = 0) -> dict:
    from forecast.ensemble.store import open_forecast

    parts = [open_forecast(str(out / "forecast" / "forecast.zarr")), open_forecast(str(out / "hindcast.zarr"))]
    keep = ["crps", "ensemble_mean_rmse", "spread_skill_ratio", "member_mean_spectrum", "verification_spectrum"]
    ds = xr.concat([p[keep + ["member_count"]] for p in parts], dim="init_time", join="inner")
    result = {"init_times": [str(np.datetime64(t, "h")) for t in ds.init_time.values]}
    rng = np.random.default_rng(seed)
    for day in DAYS:
        s = ds.sel(lead_time=24 * day, channel=list(CHANNELS)).load()
        ssr, spectral = ratios(s)
        bounds = interval(s, rng)
        result[day] = {
            c: {
                "ssr": float(ssr.sel(channel=c)),
                "spectral_ratio": float(spectral.sel(channel=c)),
                "crps": float(s.crps.sel(channel=c).mean()),
                "interval": bounds[c],
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
