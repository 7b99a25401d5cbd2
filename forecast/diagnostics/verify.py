"""`forecast diagnose`: score a forecast store against the archive's analyses (DESIGN §2.4).

For each init time of the store and each lead time, the complete members are read (one lead
at a time: memory is members x one lead's fields), the archive's analysis at the valid time is
the verification (read lead by lead too), and the scores are computed with the public functions of
`forecast.diagnostics` (so the store holds exactly what a notebook computes):

- `crps` (fair), `crps_ensemble` (the empirical-CDF estimator): area means per channel, and
  `crps_map` per grid point;
- `ensemble_mean_rmse`, `spread_skill_ratio`, and their area-mean parts `ensemble_mean_mse`
  and `ensemble_variance`, so ratios over many init times are exact (means before roots);
- `rank_histogram` (ties split) on `RANK_BINS` bins of the normalised rank
  (`normalised_rank_histogram`), `outlier_fraction` (from the m + 1 exact counts) with
  `outlier_expected` = 2/(m+1); like every other variable its size does not depend on m;
- the HENS spectra: `member_mean_spectrum`, `ensemble_mean_spectrum`,
  `perturbation_spectrum`, `verification_spectrum`;
- with an M-climate for the init's calendar day in the archive's side store: `efi` and
  `sot90` maps, computed one latitude tile at a time (the side store's chunk rows) so that
  only one tile of the lazily read M-climate is in memory;
- the ensemble-size curves (`forecast.diagnostics.ensemble_size`) of the same draw of nested
  subsets as the engine's online `SubsetExtremes` (seeded by the run's base seed), dims
  (ensemble_size, channel): `subset_outlier_fraction`, `subset_best_member_error`,
  `subset_crps` (fair) and, with an M-climate, `subset_missed_extreme_fraction` and
  `subset_missed_extreme_count` of its 99th percentile beside `observed_extreme_count`.

A valid time beyond the archive gives NaN scores for that lead (the forecast is not
verifiable yet); a rerun after the archive grows rescoring only what is missing is the
caller's choice (`rescore=True` rescored init times already marked done).
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from forecast.archive import Archive
from forecast.diagnostics.ensemble_size import ensemble_size_curves, ensemble_sizes
from forecast.diagnostics.extremes import efi, sot
from forecast.diagnostics.mclimate import load_mclimate
from forecast.diagnostics.scores import (
    RANK_BINS,
    RANK_COORD_ATTRS,
    area_weights,
    brier_score,
    crps,
    ensemble_mean_rmse,
    normalised_rank_histogram,
    outlier_fraction,
    rank_histogram,
    spread_skill_ratio,
)
from forecast.diagnostics.scores_store import ScoresStore
from forecast.diagnostics.spectra import default_lmax, ensemble_spectra
from forecast.diagnostics.tails import (
    ANOMALY_EDGES,
    EFI_EDGES,
    PROBABILITY_EDGES,
    anomaly_distribution,
    bin_centres,
    binned_event_weights,
    exceedance_probability,
    standardised_anomalies,
)
from forecast.ensemble.store import ForecastStore

log = logging.getLogger(__name__)


def verification(
    archive: str, valid_times: np.ndarray, channels: list[str], lat: np.ndarray, lon: np.ndarray
) -> np.ndarray:
    """The archive's analyses (time, channel, lat, lon) at `valid_times`, cut to the channels
    and the (possibly cropped) grid of a forecast store; NaN where a time is not in the archive."""
    a = Archive.open(archive)
    missing = [c for c in channels if c not in a.channels]
    if missing:
        raise ValueError(f"{archive}: the forecast's channels {missing} are not in the archive")
    grid = a.grid

    def where(axis, values, name):
        idx = np.array([int(np.argmin(np.abs(axis - v))) for v in values])
        if len(idx) and np.abs(axis[idx] - values).max() > 1e-6:
            raise ValueError(f"{archive}: the forecast's {name} points are not on the archive's grid")
        return idx

    lat_i, lon_i = where(grid.lat, np.asarray(lat), "latitude"), where(grid.lon, np.asarray(lon), "longitude")
    ch_i = np.array([a.channels.index(c) for c in channels])
    times = a.times[: a.committed]
    out = np.full((len(valid_times), len(channels), len(lat_i), len(lon_i)), np.nan, np.float32)
    pos = np.searchsorted(times, valid_times)
    ok = (pos < len(times)) & (times[np.minimum(pos, len(times) - 1)] == valid_times)
    if ok.any():
        values = np.asarray(a.fields.get_orthogonal_selection((pos[ok], ch_i, lat_i, lon_i)))
        out[ok] = values
    return out


def score_lead(
    members: xr.DataArray,
    truth: xr.DataArray,
    weights: xr.DataArray,
    climate: xr.DataArray | None = None,
    lmax: int | None = None,
    subset_seed: int = 0,
    extremes: bool = True,
) -> dict[str, tuple[tuple[str, ...], np.ndarray, dict]]:
    """Every score of one (init, lead): members (member, channel, lat, lon, with the store's
    `checkpoint` and `perturbation` member coordinates for the subsets), truth (channel, lat,
    lon). `extremes` False leaves out `extremes_scores`. Returns {name: (dims after
    lead_time, values, attributes)}."""
    space = ["lat", "lon"]
    out = {}
    put = functools.partial(_put, out)

    fair = crps(members, truth, estimator="fair")
    put("crps_map", fair, ("channel", "lat", "lon"))
    put("crps", fair.weighted(weights).mean(space).assign_attrs(fair.attrs), ("channel",))
    ecdf = crps(members, truth, estimator="ensemble", weights=weights, dims=space)
    put("crps_ensemble", ecdf, ("channel",))
    put("ensemble_mean_rmse", ensemble_mean_rmse(members, truth, weights=weights, dims=space), ("channel",))
    put("spread_skill_ratio", spread_skill_ratio(members, truth, weights=weights, dims=space), ("channel",))
    for name, da in _mean_square_parts(members, truth, weights).items():
        put(name, da, ("channel",))
    hist = rank_histogram(members, truth, dims=space)  # m + 1 counts: the outliers from these
    put("rank_histogram", normalised_rank_histogram(hist), ("channel", "rank"))
    outliers = outlier_fraction(hist)
    m = members.sizes["member"]
    put("outlier_fraction", outliers["outlier_fraction"].assign_attrs(expected=2.0 / (m + 1)), ("channel",))
    put("outlier_expected", outliers["outlier_expected"], ("channel",))
    spectra = ensemble_spectra(members, truth, lmax=lmax)
    for name, da in spectra.data_vars.items():
        put(name, da, ("channel", "l"))
    if climate is not None:
        for name, values, attrs in extremes_by_tile(climate, members):
            out[name] = (("channel", "lat", "lon"), values, attrs)
    if extremes:
        efi_map = out["efi"][1] if "efi" in out else None
        out.update(extremes_scores(members, truth, weights, climate, efi_map, subset_seed))
    return out


def extremes_scores(
    members: xr.DataArray,
    truth: xr.DataArray,
    weights: xr.DataArray,
    climate: xr.DataArray | None,
    efi_map: np.ndarray | None,
    subset_seed: int = 0,
) -> dict[str, tuple[tuple[str, ...], np.ndarray, dict]]:
    """What more members buy (issue #14), of one (init, lead): the tails, the q99 event scores
    (with an M-climate) and the ensemble-size curves of the draw the engine keeps online."""
    space = ["lat", "lon"]
    m = members.sizes["member"]
    out = {}
    put = functools.partial(_put, out)

    tails = standardised_anomalies(members, truth)
    for name, da in tails.data_vars.items():
        dist = anomaly_distribution(da, ANOMALY_EDGES, weights, space).rename(bin="anomaly")
        put(f"{name}_distribution", dist, ("channel", "anomaly"))
    q99 = None if climate is None else climate.sel(quantile=0.99, method="nearest").drop_vars("quantile").load()
    if q99 is not None:
        event = (truth > q99).where(truth.notnull() & q99.notnull())
        p = exceedance_probability(members, q99)
        binned = binned_event_weights(p, event, PROBABILITY_EDGES, weights, space).rename(bin="probability")
        for name, da in binned.data_vars.items():
            put(f"q99_{name}", da, ("channel", "probability"))
        put("q99_brier_score", brier_score(members, truth, q99, weights=weights, dims=space), ("channel",))
        if efi_map is not None:
            efi = xr.DataArray(efi_map, dims=("channel", "lat", "lon"), coords=truth.coords)
            binned = binned_event_weights(efi, event, EFI_EDGES, weights, space).rename(bin="efi_bin")
            for name, da in binned.data_vars.items():
                put(f"efi_q99_{name}", da, ("channel", "efi_bin"))
    if m >= 4:  # two sizes at least, as the engine's online curves
        curves = ensemble_size_curves(
            members, truth, ensemble_sizes(m), draws=1, seed=subset_seed, weights=weights, dims=space,
            extreme_threshold=q99, estimators=("fair",),
        ).isel(draw=0)  # fmt: skip
        names = {
            "outlier_fraction": "subset_outlier_fraction",
            "best_member_error": "subset_best_member_error",
            "crps_fair": "subset_crps",
            "missed_extreme_fraction": "subset_missed_extreme_fraction",
            "missed_extreme_count": "subset_missed_extreme_count",
        }
        for name, stored in names.items():
            if name in curves:
                put(stored, curves[name].astype(np.float64), ("ensemble_size", "channel"))
        if "observed_extreme_count" in curves:
            put("observed_extreme_count", curves["observed_extreme_count"].astype(np.float64), ("channel",))
    return out


def _mean_square_parts(members: xr.DataArray, truth: xr.DataArray, weights: xr.DataArray) -> dict[str, xr.DataArray]:
    """The area-mean squared error of the ensemble mean and ensemble variance (float64); a
    function of its own so the members' float64 copy is gone before the next score."""
    space = ["lat", "lon"]
    x64 = members.astype(np.float64)
    err2 = (x64.mean("member") - truth) ** 2
    variance = x64.var("member", ddof=1).where(truth.notnull())
    mse = err2.weighted(weights).mean(space)
    mean_variance = variance.weighted(weights).mean(space)
    return {
        "ensemble_mean_mse": mse.assign_attrs(long_name="area-mean squared error of the ensemble mean"),
        "ensemble_variance": mean_variance.assign_attrs(long_name="area-mean ensemble variance, ddof=1"),
    }


def extremes_by_tile(
    climate: xr.DataArray, members: xr.DataArray, rows: int | None = None
) -> list[tuple[str, np.ndarray, dict]]:
    """`efi` and `sot90` (channel, lat, lon) of one lead, computed `rows` latitude rows at a
    time (default: the climate's own chunk rows, else 8) so that only one tile of the
    M-climate (101 quantiles per point: 8.8 GB per lead at 0.25° with 21 channels) and of the
    functions' float64 temporaries is in memory. Both are per-point functions: the tiles give
    exactly what the whole lead would."""
    if rows is None:
        chunks = climate.chunksizes.get("lat")  # empty for a numpy-backed climate
        rows = int(chunks[0]) if chunks else 8
    nlat = members.sizes["lat"]
    shape = (members.sizes["channel"], nlat, members.sizes["lon"])
    values = {"efi": np.empty(shape, np.float64), "sot90": np.empty(shape, np.float64)}
    attrs: dict[str, dict] = {}
    for a in range(0, nlat, rows):
        tile = slice(a, min(a + rows, nlat))
        clim = climate.isel(lat=tile).load()  # this tile of the (lazy) M-climate only
        x = members.isel(lat=tile)
        for name, da in (("efi", efi(clim, x)), ("sot90", sot(clim, x, percentile=90))):
            values[name][:, tile] = da.transpose("channel", "lat", "lon").values
            attrs[name] = dict(da.attrs)
    return [(name, values[name], attrs[name]) for name in ("efi", "sot90")]


def diagnose(
    store: str, archive: str, out: str, rescore: bool = False, progress: bool = True, extremes: bool = True
) -> dict:
    """Score every init time of the forecast store `store` against `archive` into the scores
    store `out`. An init time scored before is skipped, except for the lead times whose
    verifying analyses have reached the archive since (a daily forecast is scored first for
    its early leads, then lead by lead as the analyses come in). `rescore` scores everything
    again. `extremes` False leaves out the tails, q99 event scores and ensemble-size curves
    (`extremes_scores`: with them, 1.38 x the time at 128 members, `benchmarks/
    bench_ensemble_size.py`). Returns {init_time: number of leads verified} for the init
    times scored now."""
    fs = ForecastStore.open(store)
    if not fs.store_members:
        raise ValueError(f"{store}: this run kept statistics only; score it online (the engine's scores) instead")
    channels, leads = fs.channels, fs.lead_hours
    lat, lon = fs.group["lat"][:], fs.group["lon"][:]
    source = {"forecast_store": str(store), "archive": str(archive)}
    scores = ScoresStore.open_or_create(out, fs.init_times, leads, channels, lat, lon, source)
    a = Archive.open(archive)
    analysed = a.times[: a.committed]
    weights = area_weights(lat)
    lmax = default_lmax(len(lat), "equiangular")
    coords = {"channel": channels, "lat": lat, "lon": lon}
    member_coords = {n: fs.group[n][:] for n in ("checkpoint", "perturbation")}
    subset_seed = int(fs.run.get("settings", {}).get("base_seed", 0))
    summary = {}
    for i, init in enumerate(fs.init_times):
        key = str(np.datetime64(init, "h"))
        valid = np.datetime64(init, "h") + leads.astype("timedelta64[h]")
        before: set[int] = set()
        todo = list(range(len(leads)))
        if key in scores.scored and not rescore:
            before = scores.verified_leads(init)
            if before is None:  # a store from before leads were recorded: leave it
                continue
            arrived = np.isin(valid, analysed)
            todo = [k for k in todo if arrived[k] and int(leads[k]) not in before]
            if not todo:
                continue
        complete = fs.complete(i)
        if not complete.all():  # a run still going (or stopped): its rank histogram has no fixed m yet
            log.warning(
                "%s: init %s has %d of %d members complete; not scored", store, key, complete.sum(), complete.size
            )
            continue
        members = np.flatnonzero(complete)
        climate = load_mclimate(archive, init)  # lazy: read lead by lead, tile by tile
        j = scores.index(init)
        scores.remove_stray_temp_files(j)  # a scoring of this init time killed mid-write
        verified = set(before)
        for k in tqdm(todo, desc=f"scoring {key}", disable=not progress):
            truth = verification(archive, valid[k : k + 1], channels, lat, lon)[0]  # one lead at a time
            x = np.asarray(fs.group["fields"].get_orthogonal_selection((i, members, k)))
            xa = xr.DataArray(x, dims=("member", "channel", "lat", "lon"), coords=coords).assign_coords(
                {n: ("member", v[members]) for n, v in member_coords.items()}
            )
            ya = xr.DataArray(truth, dims=("channel", "lat", "lon"), coords=coords)
            clim = None
            if climate is not None and int(leads[k]) in set(climate.lead_time.values.tolist()):
                clim = climate.sel(lead_time=int(leads[k]), channel=channels).assign_coords(lat=lat, lon=lon)
            if np.isfinite(truth).any():
                verified.add(int(leads[k]))
            for name, (dims, values, attrs) in score_lead(xa, ya, weights, clim, lmax, subset_seed, extremes).items():
                scores.write(name, j, k, dims, values, _plain(attrs))
        scores.coord("rank", (np.arange(RANK_BINS) + 0.5) / RANK_BINS, RANK_COORD_ATTRS)
        scores.coord("l", np.arange(lmax), {"long_name": "total wavenumber"})
        if len(members) >= 4:
            scores.coord("ensemble_size", np.asarray(ensemble_sizes(len(members))), {"nested": "by member rank"})
        centres = {"anomaly": ANOMALY_EDGES, "efi_bin": EFI_EDGES, "probability": PROBABILITY_EDGES}
        for name, edges in centres.items():
            scores.coord(name, bin_centres(edges), {"edges": edges.tolist()})
        scores.group.attrs["members"] = int(len(members))
        scores.mark_scored(init, verified)
        summary[key] = len(verified)
        log.info(
            "%s: init %s scored (%d lead times now), %d of %d leads verified",
            out, key, len(todo), len(verified), len(leads),
        )  # fmt: skip
    return summary


def _plain(attrs: dict) -> dict:
    """JSON-safe attribute values."""
    out = {}
    for k, v in attrs.items():
        if isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def _put(out: dict, name: str, da: xr.DataArray, dims: tuple[str, ...]) -> None:
    """One scores-store variable from a labelled array, in the store's dimension order."""
    out[name] = (dims, np.asarray(da.transpose(*dims).values), dict(da.attrs))
