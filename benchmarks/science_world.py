"""The science table of the README (issue #13): seven ensembles on the built-in world, scored on
a test year that neither training nor calibration saw, with 90 % bootstrap intervals over
init times.

Periods (a four-year world, 2000-2003):
- training 2000-2001: every checkpoint's weights;
- validation 2002: each checkpoint's epoch losses and skill.json, the calibrated amplitudes
  (`forecast.calibration`), the post-hoc inflation factors;
- test 2003: the table only. Nothing is chosen on it.

Configurations, the same test init times, 48 members each (3 checkpoints x 8 x +/-):
  a  MSE checkpoints + bred vectors at 0.35 x the 48-h RMSE (the previous default)
  b  MSE checkpoints + bred vectors at the calibrated per-channel amplitudes
  c  stochastic CRPS checkpoints from the unperturbed analysis (model noise only)
  d  stochastic CRPS checkpoints + calibrated bred vectors (the HENS recipe + model noise)
  e  (a) inflated post hoc, x̄ + c(τ)(xᵢ − x̄), c = 1 / (a)'s validation spread-skill ratio
  f  the world's own physics ensemble (48 members, its default 0.3 K bred seed), and
     f2 the same at the initial spread of (d) (`--physics-matched`)
  g  the deterministic control: MSE checkpoint 0 from the analysis (its CRPS is its MAE)

Every configuration is scored here from its members, by the same code: area-mean fair CRPS,
ensemble variance and ensemble-mean squared error (spread-skill ratio sqrt((m+1)/m) sqrt(<s²>) /
sqrt(<e²>), means over init times before the roots), member power at l >= 8 over the
verification's, the fraction of points outside the ensemble's range (calibrated: 2/(m+1)),
spread growth day 1 -> 5 and the spread split into between- and within-checkpoint variance.

With `--size-curves` (issue #14), (d) is run once more at 2 x 3 x `--size-perturbations`
members (default 22: 132; the committed JSON used 43: 258 members, 34 minutes on 2 cores),
statistics only, scored online, and the JSON gains its ensemble-size curves (outliers beside
2/(m'+1) and the best member's error for m' = 2, 4, ..., 256, 258, from the engine's nested
subsets) and its fair CRPS beside (d)'s at 48 members. Before it, (d) is run as hindcasts
(members stored, 24 a date) on the validation year's calendar days of the test dates, 7 days
either side (2002-MM-08 and 2002-MM-22: 48 members a test date, all within the default 10-day
window), and the M-climate of the twelve test dates is built from them: the missed-extreme
curves (the verification above the M-climate's 99th percentile while no member of the subset
is) then come online with the others. The M-climate is (d)'s own climate, from validation
hindcasts only: the test year supplies none of it.
`--only-size-curves` adds them to an existing JSON without redoing the table.

Each step writes its result under --work and is skipped when it is there, so a rerun resumes.

    python benchmarks/science_world.py --work DIR [--world W --archive A] [--physics-matched]
        [--size-curves | --only-size-curves]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

log = logging.getLogger("science_world")
DAYS = (1, 3, 5, 10)
LEADS = (0, 24, 72, 120, 240, 360)
CHANNELS = ("z500", "t850", "t2m", "u10m")
PERIODS = {
    "train": ("2000-01-01T00", "2001-12-31T18"),
    "valid": ("2002-01-01T00", "2002-12-31T18"),
    "test": ("2003-01-01T00", "2003-12-31T18"),
}
VALID_INITS = [f"2002-{m:02d}-20T00" for m in (2, 5, 8, 11)]  # one a season: 2 cores bound the count
TEST_INITS = [f"2003-{m:02d}-15T00" for m in range(1, 13)]
MCLIMATE_INITS = [f"2002-{m:02d}-{d:02d}T00" for m in range(1, 13) for d in (8, 22)]  # (d)'s hindcasts
MCLIMATE_PERTURBATIONS = 4  # 3 x 4 x 2 = 24 members an init, 48 a test date
MCLIMATE_WINDOW_DAYS = 10  # the demo's: both hindcast dates, 7 days off, fall inside
SEEDS = (0, 1, 2)
PERTURBATIONS = 8
CANDIDATES = (0.0, 0.15, 0.35, 0.7)
BOOTSTRAP = 2000


def train_packages(
    work: Path, archive: str, kind: str, config: str, init_from: list[str] | None = None
) -> tuple[list[str], list[float]]:
    """Three checkpoints (SEEDS) under WORK/packages; `init_from`: the package each seed starts from."""
    from forecast.config import load
    from forecast.training.loop import TrainConfig, train

    cfg = load(TrainConfig, config)
    (lo, hi), (vlo, vhi) = PERIODS["train"], PERIODS["valid"]
    cfg = dataclasses.replace(cfg, train_start=lo, train_end=hi, valid_start=vlo, valid_end=vhi)
    out, seconds = [], []
    for i, seed in enumerate(SEEDS):
        path = work / "packages" / f"{kind}-s{seed}"
        if not (path / "config.json").exists():
            log.info("training %s seed %d", kind, seed)
            start = time.perf_counter()
            seed_cfg = dataclasses.replace(cfg, init_weights=init_from[i], pretrain=None) if init_from else cfg
            train(archive, path, seed=seed, cfg=seed_cfg, device="cpu")
            (path / "wall_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
        made = json.loads((path / "config.json").read_text())["training"]["config"].get("init_weights")
        if made != (init_from[i] if init_from else None):  # a package of another recipe is not reused
            raise SystemExit(f"{path} was trained with init_weights={made!r}: use another --work")
        seconds.append(float((path / "wall_seconds.txt").read_text()))
        out.append(str(path))
    return out, seconds


def pretrained_on(crps_config: str, mse_config: str) -> bool:
    """Whether the CRPS config's first stage (`pretrain`) is the MSE config: then its first stage
    of each seed is the MSE checkpoint of that seed bit for bit (training is deterministic here;
    tests/test_stochastic_checkpoint.py checks the equivalence), so the table starts the CRPS
    stage from the MSE packages (init_weights) instead of training each MSE network twice. A
    first stage of another config is refused: the table's (a) would not be its first stage."""
    from forecast.config import load
    from forecast.training.loop import TrainConfig

    cfg = load(TrainConfig, crps_config)
    if cfg.pretrain is None:
        return False
    if load(TrainConfig, cfg.pretrain) != load(TrainConfig, mse_config):
        raise SystemExit(f"{crps_config}: its pretrain {cfg.pretrain} is not --mse-config {mse_config}")
    return True


def calibration_for(work: Path, archive: str, packages: list[str], kind: str) -> str:
    from forecast.calibration import calibrate
    from forecast.ensemble.engine import RunSettings

    path = work / f"calibration-{kind}.json"
    if not path.exists():
        log.info("calibrating %s on %d validation init times", kind, len(VALID_INITS))
        settings = RunSettings(perturbations=4)  # fair CRPS: the choice needs no more members
        calibrate(archive, packages, VALID_INITS, path, settings, candidates=CANDIDATES, progress=False)
    return str(path)


def inflation_factors(work: Path, archive: str, packages: list[str]) -> np.ndarray:
    """(lead, channel) c(τ) = 1 / the validation spread-skill ratio of (a)."""
    from forecast.diagnostics.online import pooled_spread_skill_ratio
    from forecast.diagnostics.online_scores import hindcast_scores
    from forecast.ensemble.engine import RunSettings, run_ensemble
    from forecast.ensemble.store import open_forecast

    store = work / "valid-a.zarr"
    settings = RunSettings(
        perturbations=PERTURBATIONS, lead_hours=max(LEADS), output_leads=LEADS, score=True, store_members=False
    )
    for t in VALID_INITS:
        run_ensemble(archive, packages, t, str(store), settings, progress=False, scores=hindcast_scores)
    ssr = pooled_spread_skill_ratio(open_forecast(str(store)))
    c = (1 / ssr).where(np.isfinite(1 / ssr) & (ssr.lead_time > 0), 1.0)
    return c.transpose("lead_time", "channel").values


def run_test(work: Path, archive: str, packages: list[str], name: str, settings) -> str:
    from forecast.diagnostics.online_scores import hindcast_scores
    from forecast.ensemble.engine import run_ensemble

    store = work / f"test-{name}.zarr"
    for t in TEST_INITS:
        run_ensemble(archive, packages, t, str(store), settings, progress=False, scores=hindcast_scores)
    return str(store)


def run_physics(work: Path, world: str, name: str, amplitude_kelvin: float) -> list[str]:
    from forecast.world.ensemble import physics_ensemble, physics_to_store
    from forecast.world.generate import OUTPUT_HOURS

    out = []
    for t in TEST_INITS:
        store = work / name / f"{t}.zarr"
        if not (store / "zarr.json").exists():
            ds = physics_ensemble(
                world, t, members=2 * len(SEEDS) * PERTURBATIONS, lead_hours=240,
                amplitude_kelvin=amplitude_kelvin, progress=False,
            )  # fmt: skip
            physics_to_store(ds.isel(valid_time=[h // OUTPUT_HOURS for h in LEADS if h <= 240]), store)
        out.append(str(store))
    return out


def control_members(archive: str, package: str, init: str) -> np.ndarray:
    """(lead, 1, channel, lat, lon): the deterministic control at LEADS."""
    from forecast.archive import Archive, to_hours
    from forecast.ensemble.engine import load_model

    a = Archive.open(archive)
    model = load_model(package, archive, "cpu")
    i = int(np.searchsorted(a.times, np.datetime64(init, "h")))
    state = torch.from_numpy(np.asarray(a.fields[i]))[None]
    hours0 = float(to_hours(np.asarray([np.datetime64(init, "h")]))[0])
    out = []
    step = a.time_step_hours
    with torch.no_grad():
        for k in range(max(LEADS) // step + 1):
            if k * step in LEADS:
                out.append(state.numpy().copy())
            state = model(state, torch.tensor([hours0 + k * step], dtype=torch.float64))
    return np.stack(out)


# -- scoring ----------------------------------------------------------------------------------


def score_members(x: np.ndarray, y: np.ndarray, w: np.ndarray, checkpoint: np.ndarray, lmin: int = 8) -> dict:
    """Area means per channel of one init and lead. x (member, channel, lat, lon), y (channel,
    lat, lon), w (lat) area weights, checkpoint (member,) labels."""
    from forecast.diagnostics.scores import crps
    from forecast.diagnostics.spectra import power_spectrum

    x = x.astype(np.float64)
    y = y.astype(np.float64)
    wn = w[:, None] / (w.sum() * x.shape[-1])

    def area(field: np.ndarray) -> np.ndarray:  # (..., channel, lat, lon) -> (..., channel)
        return (field * wn).sum(axis=(-2, -1))

    m = x.shape[0]
    mean = x.mean(0)
    out = {"mse": area((mean - y) ** 2), "members": m}
    if m > 1:
        xa = xr.DataArray(x, dims=("member", "channel", "lat", "lon"))
        out["crps"] = crps(xa, xr.DataArray(y, dims=("channel", "lat", "lon"))).values
        out["crps"] = area(out["crps"])
        out["var"] = area(x.var(0, ddof=1))
        outside = (y < x.min(0)) | (y > x.max(0))
        out["outliers"] = area(outside.astype(np.float64))
        labels = np.unique(checkpoint)
        if len(labels) > 1:
            means = np.stack([x[checkpoint == k].mean(0) for k in labels])
            out["between"] = area(means.var(0, ddof=0))
            out["within"] = area(np.stack([x[checkpoint == k].var(0, ddof=0) for k in labels]).mean(0))
    else:
        out["crps"] = area(np.abs(x[0] - y))  # one member: the CRPS is the absolute error
    power = power_spectrum(xr.DataArray(x, dims=("member", "channel", "lat", "lon"))).values  # (m, c, l)
    truth = power_spectrum(xr.DataArray(y, dims=("channel", "lat", "lon"))).values
    out["power_members"] = power[..., lmin:].sum(-1).mean(0)
    out["power_truth"] = truth[..., lmin:].sum(-1)
    return out


def score_store(store: str, archive: str, climatology: np.ndarray, inflation: np.ndarray | None = None) -> dict:
    """{lead: {quantity: (init, channel)}} and the channel names, scored from the members."""
    from forecast.diagnostics.scores import area_weights
    from forecast.diagnostics.verify import verification
    from forecast.ensemble.store import open_forecast

    ds = open_forecast(store)
    channels = [str(c) for c in ds.channel.values]
    lat, lon = ds.lat.values, ds.lon.values
    w = area_weights(lat).values
    checkpoint = np.asarray(ds.checkpoint.values)
    out: dict = {}
    for i, t in enumerate(ds.init_time.values):
        init = np.datetime64(t, "h")
        for k, lead in enumerate(int(h) for h in ds.lead_time.values):
            x = np.asarray(ds.fields.isel(init_time=i, lead_time=k).values)
            y = verification(archive, np.asarray([init + np.timedelta64(lead, "h")]), channels, lat, lon)[0]
            if inflation is not None:
                c = inflation[LEADS.index(lead)][None, :, None, None]
                x = x.mean(0, keepdims=True) + c * (x - x.mean(0, keepdims=True))
            s = score_members(x, y, w, checkpoint)
            s["clim_mse"] = ((climatology - y) ** 2 * w[:, None] / (w.sum() * len(lon))).sum(axis=(-2, -1))
            for key, value in s.items():
                out.setdefault(lead, {}).setdefault(key, []).append(value)
    return {"channels": channels, "leads": {lead: {k: np.asarray(v) for k, v in q.items()} for lead, q in out.items()}}


def score_arrays(members_by_init: list[np.ndarray], archive: str, climatology: np.ndarray) -> dict:
    """The control: (lead, 1, channel, lat, lon) per init time."""
    from forecast.archive import Archive
    from forecast.diagnostics.scores import area_weights
    from forecast.diagnostics.verify import verification

    a = Archive.open(archive)
    w = area_weights(a.grid.lat).values
    out: dict = {}
    for init, members in zip(TEST_INITS, members_by_init, strict=True):
        for k, lead in enumerate(LEADS):
            valid = np.asarray([np.datetime64(init, "h") + np.timedelta64(lead, "h")])
            y = verification(archive, valid, list(a.channels), a.grid.lat, a.grid.lon)[0]
            s = score_members(members[k], y, w, np.zeros(1))
            s["clim_mse"] = ((climatology - y) ** 2 * w[:, None] / (w.sum() * len(a.grid.lon))).sum(axis=(-2, -1))
            for key, value in s.items():
                out.setdefault(lead, {}).setdefault(key, []).append(value)
    leads = {lead: {k: np.asarray(v) for k, v in q.items()} for lead, q in out.items()}
    return {"channels": list(a.channels), "leads": leads}


def table_stats(scored: dict, idx: np.ndarray) -> dict:
    """Per day and channel, the table's quantities over the init times `idx` (a bootstrap draw)."""
    ch = scored["channels"]
    out = {}
    for day in DAYS:
        q = scored["leads"].get(24 * day)
        if q is None:
            continue
        row = {}
        for c in CHANNELS:
            j = ch.index(c)
            mse = q["mse"][idx, j].mean()
            r = {"crps": q["crps"][idx, j].mean(), "rmse": np.sqrt(mse)}
            r["spectral_ratio"] = q["power_members"][idx, j].mean() / q["power_truth"][idx, j].mean()
            if "var" in q:
                m = int(q["members"][0])
                var = q["var"][idx, j].mean()
                r["ssr"] = np.sqrt((m + 1) / m) * np.sqrt(var) / np.sqrt(mse)
                r["spread"] = np.sqrt(var)
                r["outliers"] = q["outliers"][idx, j].mean()
                r["outliers_expected"] = 2 / (m + 1)
            if "between" in q:
                b, wv = q["between"][idx, j].mean(), q["within"][idx, j].mean()
                r["between_fraction"] = b / (b + wv)
            row[c] = r
        out[day] = row
    return out


def growth(scored: dict, idx: np.ndarray) -> dict:
    ch = scored["channels"]
    q1, q5 = scored["leads"].get(24), scored["leads"].get(120)
    if q1 is None or q5 is None or "var" not in q1:
        return {}
    return {
        c: float(np.sqrt(q5["var"][idx, ch.index(c)].mean() / q1["var"][idx, ch.index(c)].mean())) for c in CHANNELS
    }


def stability(scored: dict) -> dict:
    """At the longest lead: every channel's RMSE over the (time-mean) climatology's."""
    lead = max(scored["leads"])
    q = scored["leads"][lead]
    ratio = np.sqrt(q["mse"].mean(0) / q["clim_mse"].mean(0))
    return {
        "lead_hours": lead,
        "worst_channel": scored["channels"][int(np.argmax(ratio))],
        "worst_ratio": float(ratio.max()),
    }


def with_intervals(scored: dict, rng: np.random.Generator) -> dict:
    n = len(next(iter(scored["leads"].values()))["mse"])
    point = table_stats(scored, np.arange(n))
    draws = [table_stats(scored, rng.integers(0, n, n)) for _ in range(BOOTSTRAP)]
    out: dict = {}
    for day, row in point.items():
        for c, r in row.items():
            for key, value in r.items():
                samples = np.asarray([d[day][c][key] for d in draws])
                lo, hi = np.quantile(samples, [0.05, 0.95])
                out.setdefault(day, {}).setdefault(c, {})[key] = [float(value), float(lo), float(hi)]
    out["growth_day1_to_5"] = growth(scored, np.arange(n))
    if max(scored["leads"]) >= 360:
        out["stability"] = stability(scored)
    return out


def paired_ratio(a: dict, b: dict, key: str, rng: np.random.Generator) -> dict:
    """{day: {channel: [ratio, lo, hi]}}: b's mean `key` over a's, paired over init times."""
    n = len(a["leads"][24]["mse"])
    out: dict = {}
    for day in DAYS:
        for c in CHANNELS:
            ja, jb = a["channels"].index(c), b["channels"].index(c)
            qa, qb = a["leads"][24 * day][key][:, ja], b["leads"][24 * day][key][:, jb]
            draws = [(lambda i: qb[i].mean() / qa[i].mean())(rng.integers(0, n, n)) for _ in range(BOOTSTRAP)]
            lo, hi = np.quantile(draws, [0.05, 0.95])
            out.setdefault(day, {})[c] = [float(qb.mean() / qa.mean()), float(lo), float(hi)]
    return out


def targets(t: dict, ratios: dict) -> dict:
    """Issue #13's done-when points for (d), each with the measured values."""
    d = t["d"]
    checks = {}
    checks["ssr_0.8_1.2_days_3_5_10"] = {f"{c} day {day}": d[day][c]["ssr"][0] for day in (3, 5, 10) for c in CHANNELS}
    checks["spectral_ratio_day10_ge_0.7"] = {c: d[10][c]["spectral_ratio"][0] for c in CHANNELS}
    checks["crps_10pct_below_a_days_5_10"] = {
        f"{c} day {day}": ratios["d_over_a"][day][c][0] for day in (5, 10) for c in CHANNELS
    }
    checks["crps_below_e_days_5_10"] = {
        f"{c} day {day}": ratios["d_over_e"][day][c][0] for day in (5, 10) for c in CHANNELS
    }
    checks["rmse_le_1.05_a"] = {
        f"{c} day {day}": d[day][c]["rmse"][0] / t["a"][day][c]["rmse"][0] for day in DAYS for c in CHANNELS
    }
    checks["stable_15_days_rmse_le_1.5_clim"] = d.get("stability", {})
    checks["outliers_day5_le_2x_expected"] = {
        c: d[5][c]["outliers"][0] / d[5][c]["outliers_expected"][0] for c in CHANNELS
    }
    passed = {
        "ssr_0.8_1.2_days_3_5_10": all(0.8 <= v <= 1.2 for v in checks["ssr_0.8_1.2_days_3_5_10"].values()),
        "spectral_ratio_day10_ge_0.7": all(v >= 0.7 for v in checks["spectral_ratio_day10_ge_0.7"].values()),
        "crps_10pct_below_a_days_5_10": all(v <= 0.9 for v in checks["crps_10pct_below_a_days_5_10"].values()),
        "crps_below_e_days_5_10": all(v < 1 for v in checks["crps_below_e_days_5_10"].values()),
        "rmse_le_1.05_a": all(v <= 1.05 for v in checks["rmse_le_1.05_a"].values()),
        "stable_15_days_rmse_le_1.5_clim": d.get("stability", {}).get("worst_ratio", np.inf) <= 1.5,
        "outliers_day5_le_2x_expected": all(v <= 2 for v in checks["outliers_day5_le_2x_expected"].values()),
    }
    return {"values": checks, "passed": passed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True)
    p.add_argument("--world", help="default: WORK/world (simulated here if missing)")
    p.add_argument("--archive", help="default: WORK/archive.zarr (ingested here if missing)")
    p.add_argument("--mse-config", default="train-mse.yaml", help="training config of (a), (b), (g)")
    p.add_argument("--crps-config", default="train.yaml",
                   help="training config of (c), (d) (the committed JSON: the default)")  # fmt: skip
    p.add_argument(
        "--crps-from-mse", action="store_true",
        help="(c), (d): each CRPS checkpoint starts from the MSE one of its seed (init_weights); a new --work;"
        " implied by a CRPS config whose pretrain is the MSE config",
    )  # fmt: skip
    p.add_argument("--physics-matched", action="store_true", help="also (f2): physics at (d)'s initial spread")
    p.add_argument("--skip-physics", action="store_true", help="the ML table only (the physics takes longest)")
    p.add_argument("--size-curves", action="store_true", help="also (d) at many members: size curves")
    p.add_argument("--only-size-curves", action="store_true", help="add the curves to an existing --out JSON")
    p.add_argument("--size-perturbations", type=int, default=22,
                   help="bred vectors per checkpoint of the size-curve run: members = 2 x 3 x this")  # fmt: skip
    p.add_argument("--out", default="benchmarks/results/science_world.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from forecast.calibration import apply_calibration
    from forecast.ensemble.engine import RunSettings
    from forecast.training.skill import climatology_map

    torch.set_num_threads(2)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    world = args.world or str(work / "world")
    archive = args.archive or str(work / "archive.zarr")
    timing: dict = {}
    t0 = time.perf_counter()
    if not Path(archive).exists():
        from forecast.ingest import ingest

        if not Path(world).exists():
            from forecast.world import WorldRun, generate_world

            generate_world(world, WorldRun(years=4, seed=0, start_year=2000), progress=False)
        ingest([world], archive, progress=False)
    timing["world_and_archive_s"] = time.perf_counter() - t0
    mse, mse_s = train_packages(work, archive, "mse", args.mse_config)
    from_mse = args.crps_from_mse or pretrained_on(args.crps_config, args.mse_config)
    crps, crps_s = train_packages(work, archive, "crps", args.crps_config, mse if from_mse else None)
    if args.only_size_curves:
        result = json.loads(Path(args.out).read_text())
        result["size_curves"] = size_curves(work, archive, crps, args.size_perturbations)
        Path(args.out).write_text(json.dumps(result, indent=1, default=float))
        log.info("added the ensemble-size curves of (d) to %s", args.out)
        return
    timing["train_wall_s"] = {"mse": mse_s, "crps": crps_s}
    t0 = time.perf_counter()
    cal = {"mse": calibration_for(work, archive, mse, "mse"), "crps": calibration_for(work, archive, crps, "crps")}
    inflation = inflation_factors(work, archive, mse)
    timing["calibration_s"] = time.perf_counter() - t0
    base = RunSettings(perturbations=PERTURBATIONS, lead_hours=max(LEADS), output_leads=LEADS)
    settings = {
        "a": (mse, base),
        "b": (mse, apply_calibration(base, cal["mse"], mse)),
        "c": (crps, dataclasses.replace(base, perturbation="none")),
        "d": (crps, apply_calibration(base, cal["crps"], crps)),
    }
    t0 = time.perf_counter()
    stores = {name: run_test(work, archive, pk, name, s) for name, (pk, s) in settings.items()}
    timing["ml_test_runs_s"] = time.perf_counter() - t0
    climatology = climatology_map(archive, *PERIODS["train"]).astype(np.float64)
    scored = {name: score_store(s, archive, climatology) for name, s in stores.items()}
    scored["e"] = score_store(stores["a"], archive, climatology, inflation)
    control = [control_members(archive, mse[0], t) for t in TEST_INITS]
    scored["g"] = score_arrays(control, archive, climatology)
    common = {
        "periods": PERIODS,
        "valid_inits": VALID_INITS,
        "test_inits": TEST_INITS,
        "members": 2 * len(SEEDS) * PERTURBATIONS,
        "crps_from_mse": bool(from_mse),
        "calibration": {k: json.loads(Path(v).read_text())["channel_amplitudes"] for k, v in cal.items()},
        "inflation": {c: inflation[:, j].tolist() for j, c in enumerate(scored["a"]["channels"]) if c in CHANNELS},
    }
    if args.size_curves:
        common["size_curves"] = size_curves(work, archive, crps, args.size_perturbations)
    write_result(args.out, common, scored, timing)  # the ML table first: the physics takes longest
    if args.skip_physics:
        return
    t0 = time.perf_counter()
    physics = {"f": run_physics(work, world, "physics", 0.3)}
    scored["f"] = _merge([score_store(s, archive, climatology) for s in physics["f"]])
    if args.physics_matched:
        # the physics seed amplitude that gives (d)'s day-1 t850 spread. Not day 0: the calibration
        # may choose amplitude 0 for t850 (it did), so (d)'s day-0 spread there is zero and its
        # spread comes from the model noise from the first step on. Day-1 spread is close to
        # linear in the seed amplitude (the physics' perturbations are still small at day 1).
        amplitude = 0.3 * matched_ratio(scored["d"], scored["f"], "t850", 24)
        physics["f2"] = run_physics(work, world, "physics-matched", amplitude)
        common["physics_matched_amplitude_kelvin"] = amplitude
        scored["f2"] = _merge([score_store(s, archive, climatology) for s in physics["f2"]])
    timing["physics_s"] = time.perf_counter() - t0
    write_result(args.out, common, scored, timing)


def size_curves(work: Path, archive: str, packages: list[str], perturbations: int = 22) -> dict:
    """(d) at 2 x 3 x `perturbations` members, statistics only, on the test init times: the
    online ensemble-size curves (mean over init times) and the full-size fair CRPS, to set
    beside the table's (d) at 48 members (equal in expectation for exchangeable members)."""
    from forecast.calibration import apply_calibration
    from forecast.ensemble.engine import RunSettings
    from forecast.ensemble.store import open_forecast

    base = RunSettings(perturbations=perturbations, lead_hours=max(LEADS), output_leads=LEADS, score=True,
                       store_members=False)  # fmt: skip
    settings = apply_calibration(base, str(work / "calibration-crps.json"), packages)
    start = time.perf_counter()
    mclimate = mclimate_for_test(work, archive, packages)
    mclimate_s = time.perf_counter() - start
    start = time.perf_counter()
    big = run_test(work, archive, packages, f"d{2 * len(packages) * perturbations}", settings)
    seconds = time.perf_counter() - start
    ds = open_forecast(big).sel(channel=list(CHANNELS))
    out: dict = {"members": int(ds.member_count.values.flat[0]), "run_s": round(seconds, 1),
                 "mclimate": {**mclimate, "build_s": round(mclimate_s, 1)},
                 "ensemble_size": ds.ensemble_size.values.tolist(), "leads": {}}  # fmt: skip
    for d in DAYS:
        h = 24 * d
        big_d = ds.sel(lead_time=h)
        out["leads"][str(d)] = {
            c: {
                "outlier_fraction": big_d.subset_outlier_fraction.sel(channel=c).mean("init_time").values.tolist(),
                "best_member_error": big_d.subset_best_member_error.sel(channel=c).mean("init_time").values.tolist(),
                "crps_fair": float(big_d.crps.sel(channel=c).mean()),  # beside the table's (d) at 48
                # pooled over init times: the fraction of points, and the events (points above
                # the M-climate's q99) summed, with the number no member of the subset reached
                "missed_extreme_fraction": big_d.subset_missed_extreme_fraction.sel(channel=c)
                .mean("init_time")
                .values.tolist(),
                "missed_extreme_count": big_d.subset_missed_extreme_count.sel(channel=c)
                .sum("init_time")
                .values.tolist(),
                "observed_extreme_count": float(big_d.observed_extreme_count.sel(channel=c).sum()),
            }
            for c in CHANNELS
        }
    return out


def mclimate_for_test(work: Path, archive: str, packages: list[str]) -> dict:
    """(d)'s hindcasts on the validation year (members stored) and the M-climate of every test
    date from them, in the archive's side store; a date whose M-climate is there is kept."""
    from forecast.calibration import apply_calibration
    from forecast.diagnostics.mclimate import build_mclimate, load_mclimate
    from forecast.ensemble.engine import RunSettings, run_ensemble

    base = RunSettings(perturbations=MCLIMATE_PERTURBATIONS, lead_hours=max(LEADS), output_leads=LEADS)
    settings = apply_calibration(base, str(work / "calibration-crps.json"), packages)
    store = str(work / "hindcasts-d.zarr")
    # the side store belongs to the archive, which other work directories (other checkpoints)
    # share: its M-climate counts only if the last build, recorded beside the archive, was
    # from these packages' hindcasts
    marker = Path(archive).with_name(Path(archive).name + ".science-mclimate.json")
    made_for = {"packages": [str(p) for p in packages], "hindcasts": store}
    ours = marker.exists() and json.loads(marker.read_text()) == made_for
    missing = [t for t in TEST_INITS if not ours or load_mclimate(archive, t) is None]
    if missing:
        for h in MCLIMATE_INITS:  # a complete init time is skipped by the engine
            run_ensemble(archive, packages, h, store, settings, progress=False)
    for t in missing:
        build_mclimate(archive, [store], t, window_days=MCLIMATE_WINDOW_DAYS)
    marker.write_text(json.dumps(made_for))
    samples = {t: int(load_mclimate(archive, t).attrs["samples"]) for t in TEST_INITS}
    return {"hindcast_inits": MCLIMATE_INITS, "samples": samples}


def write_result(out: str, common: dict, scored: dict, timing: dict) -> None:
    rng = np.random.default_rng(0)
    table = {name: with_intervals(s, rng) for name, s in scored.items()}
    ratios = {
        "d_over_a": paired_ratio(scored["a"], scored["d"], "crps", rng),
        "d_over_e": paired_ratio(scored["e"], scored["d"], "crps", rng),
        "b_over_a": paired_ratio(scored["a"], scored["b"], "crps", rng),
        "c_over_a": paired_ratio(scored["a"], scored["c"], "crps", rng),
        "e_over_a": paired_ratio(scored["a"], scored["e"], "crps", rng),
    }
    result = {**common, "table": table, "crps_ratios": ratios, "targets": targets(table, ratios), "timing": timing}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=1, default=float))
    log.info("wrote %s: %s", out, json.dumps(result["targets"]["passed"]))


def matched_ratio(target: dict, physics: dict, channel: str, lead: int) -> float:
    """(target's spread) / (physics' spread) of `channel` at `lead` hours, rms over init times."""

    def spread(s: dict) -> float:
        return float(np.sqrt(s["leads"][lead]["var"][:, s["channels"].index(channel)].mean()))

    ratio = spread(target) / spread(physics)
    if not np.isfinite(ratio) or ratio <= 0:
        raise ValueError(f"cannot match the physics spread: {channel} spread at {lead} h is {spread(target)}")
    return ratio


def _merge(parts: list[dict]) -> dict:
    """Per-init scores of separate stores (one per init time) as one."""
    leads = {}
    for lead in parts[0]["leads"]:
        leads[lead] = {k: np.concatenate([p["leads"][lead][k] for p in parts]) for k in parts[0]["leads"][lead]}
    return {"channels": parts[0]["channels"], "leads": leads}


if __name__ == "__main__":
    main()
