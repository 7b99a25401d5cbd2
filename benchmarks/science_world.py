"""The science table of the README (issue #5): on the built-in world, fair CRPS, spread-skill
and spectra at days 1, 3, 5 and 10 for the ML ensemble, the physics ensemble and the
deterministic ML control, over several init times of the held-out period.

- ML ensemble: `run_ensemble` with the given packages (one per seed) x bred vectors x (+, -);
- physics ensemble: the world's own model from bred perturbed states (`physics_ensemble`),
  the same member count, written in the store layout (`physics_to_store`);
- control: the first package run once from the unperturbed analysis (its CRPS is its MAE).

Both ensembles are scored by `diagnose` against the archive; the summary averages the area-mean
CRPS over init times and forms the spread-skill ratio from init-mean variance and squared
error (means before roots). The spectral column is the member-mean power at l >= 8 over the
verification's: 1 for an ensemble as sharp as the analysis, below 1 for a blurred one.

    python benchmarks/science_world.py --archive A --world W --packages P0 P1 P2 --out DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

DAYS = (1, 3, 5, 10)
CHANNELS = ("z500", "t850", "t2m", "u10m")


def control_scores(archive: str, package: str, init: str, leads: list[int]) -> dict:
    from forecast.archive import Archive, to_hours
    from forecast.diagnostics.scores import area_weights
    from forecast.diagnostics.verify import verification
    from forecast.ensemble.engine import load_model

    a = Archive.open(archive)
    model = load_model(package, archive, "cpu")
    i = int(np.searchsorted(a.times, np.datetime64(init, "h")))
    state = torch.from_numpy(np.asarray(a.fields[i]))[None]
    hours0 = float(to_hours(np.asarray([np.datetime64(init, "h")]))[0])
    w = area_weights(a.grid.lat).values[:, None]
    truth = verification(
        archive,
        np.datetime64(init, "h") + np.asarray(leads).astype("timedelta64[h]"),
        a.channels,
        a.grid.lat,
        a.grid.lon,
    )
    out = {}
    step = a.time_step_hours
    with torch.no_grad():
        for k in range(max(leads) // step + 1):
            if k * step in leads:
                err = np.abs(state[0].numpy().astype(np.float64) - truth[leads.index(k * step)])
                out[k * step] = {
                    c: float((err[j] * w).sum() / (w.sum() * err.shape[-1])) for j, c in enumerate(a.channels)
                }
            state = model(state, torch.tensor([hours0 + k * step], dtype=torch.float64))
    return out


def summarise(scores_paths: list[str]) -> dict:
    import xarray as xr

    from forecast.diagnostics.scores_store import open_scores

    parts = [open_scores(p).load() for p in scores_paths]
    ds = xr.concat(parts, dim="init_time", data_vars="all", coords="minimal", compat="override").assign_attrs(
        parts[0].attrs
    )
    out = {}
    for day in DAYS:
        s = ds.sel(lead_time=24 * day)
        m = int(ds.attrs["members"])
        ssr = (
            np.sqrt((m + 1) / m)
            * np.sqrt(s.ensemble_variance.mean("init_time"))
            / np.sqrt(s.ensemble_mean_mse.mean("init_time"))
        )
        high = s.l >= 8
        spec = s.member_mean_spectrum.where(high).sum("l") / s.verification_spectrum.where(high).sum("l")
        out[day] = {
            c: {
                "crps": float(s.crps.sel(channel=c).mean()),
                "ssr": float(ssr.sel(channel=c)),
                "spectrum_ratio": float(spec.sel(channel=c).mean()),
                "rmse": float(np.sqrt(s.ensemble_mean_mse.sel(channel=c).mean())),
            }
            for c in CHANNELS
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--archive", required=True)
    p.add_argument("--world", required=True, help="the world directory (restart states) the archive came from")
    p.add_argument("--packages", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--inits", nargs="+", default=["2001-11-01T00", "2001-11-08T00", "2001-11-15T00", "2001-11-22T00"])
    p.add_argument("--perturbations", type=int, default=8)
    args = p.parse_args()
    from forecast.diagnostics.verify import diagnose
    from forecast.ensemble.engine import RunSettings, run_ensemble
    from forecast.world.ensemble import physics_ensemble, physics_to_store
    from forecast.world.generate import OUTPUT_HOURS

    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    leads = [0] + [24 * d for d in DAYS]
    members = len(args.packages) * args.perturbations * 2
    timing = {}
    t = time.perf_counter()
    settings = RunSettings(perturbations=args.perturbations, lead_hours=240, output_leads=tuple(leads))
    for init in args.inits:
        run_ensemble(args.archive, args.packages, init, str(out / "ml.zarr"), settings, progress=False)
    timing["ml_ensemble_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for init in args.inits:
        store = out / f"physics-{init}.zarr"
        if not store.exists():
            ds = physics_ensemble(args.world, init, members=members, lead_hours=240, progress=False)
            physics_to_store(ds.isel(valid_time=[h // OUTPUT_HOURS for h in leads]), store)
    timing["physics_ensemble_s"] = time.perf_counter() - t
    t = time.perf_counter()
    diagnose(str(out / "ml.zarr"), args.archive, str(out / "ml-scores.zarr"), progress=False)
    for init in args.inits:
        diagnose(
            str(out / f"physics-{init}.zarr"), args.archive, str(out / f"physics-scores-{init}.zarr"), progress=False
        )
    timing["diagnose_s"] = time.perf_counter() - t
    control = [control_scores(args.archive, args.packages[0], init, leads) for init in args.inits]
    result = {
        "members": members,
        "inits": args.inits,
        "ml": summarise([str(out / "ml-scores.zarr")]),
        "physics": summarise([str(out / f"physics-scores-{init}.zarr") for init in args.inits]),
        "control_mae": {d: {c: float(np.mean([r[24 * d][c] for r in control])) for c in CHANNELS} for d in DAYS},
        "timing": timing,
    }
    (out / "science.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
