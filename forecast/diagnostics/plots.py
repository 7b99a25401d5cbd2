"""PNG plots of a scores store (and, for the plume, of a forecast store).

`plot_scores` draws, per channel where it applies: CRPS and spread-skill against lead time,
the member-mean and ensemble-mean spectra over the verification's by lead, rank histograms
with the flat line of a calibrated ensemble, a reliability diagram, EFI maps, an ensemble
plume at one point, and what more members buy (`forecast.diagnostics.plots_extremes`:
ensemble-size curves, tails, ROC curves of 99th-percentile events). Scores are averaged over
the init times scored (spread-skill from the mean variance and the mean squared error: means
before roots).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a scheduled run
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from forecast.diagnostics.scores_store import open_scores  # noqa: E402

log = logging.getLogger(__name__)
DEFAULT_CHANNELS = ("z500", "t850", "t2m", "u10m", "msl", "tcwv")


def _days(ds: xr.Dataset) -> np.ndarray:
    return ds.lead_time.values / 24.0


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_crps_and_spread_skill(ds: xr.Dataset, channels: Sequence[str], path: Path) -> Path:
    fig, axes = plt.subplots(2, len(channels), figsize=(3.2 * len(channels), 5.6), squeeze=False)
    m = int(ds.attrs.get("members", 0)) or 1
    ratio = (
        np.sqrt((m + 1) / m)
        * np.sqrt(ds.ensemble_variance.mean("init_time"))
        / np.sqrt(ds.ensemble_mean_mse.mean("init_time"))
    )
    for j, c in enumerate(channels):
        axes[0, j].plot(_days(ds), ds.crps.sel(channel=c).mean("init_time"), "o-", label="CRPS (fair)")
        axes[0, j].plot(_days(ds), ds.ensemble_mean_rmse.sel(channel=c).mean("init_time"), "s--", label="ens-mean RMSE")
        axes[0, j].set_title(c)
        axes[0, j].set_xlabel("lead (days)")
        axes[1, j].plot(_days(ds)[1:], ratio.sel(channel=c)[1:], "o-")
        axes[1, j].axhline(1.0, color="k", lw=0.8)
        axes[1, j].set_ylabel("spread-skill ratio")
        axes[1, j].set_xlabel("lead (days)")
    axes[0, 0].legend(fontsize=7)
    return _save(fig, path)


def plot_spectra(ds: xr.Dataset, channel: str, path: Path) -> Path:
    leads = ds.lead_time.values[ds.lead_time.values > 0]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colours = plt.cm.viridis(np.linspace(0, 1, len(leads)))
    l_axis = ds.l.values[1:]
    for colour, h in zip(colours, leads, strict=True):
        s = ds.sel(channel=channel, lead_time=h).mean("init_time")
        ver = s.verification_spectrum.values[1:]
        axes[0].semilogy(l_axis, s.member_mean_spectrum.values[1:] / ver, color=colour, label=f"{h / 24:g} d")
        axes[1].semilogy(l_axis, s.ensemble_mean_spectrum.values[1:] / ver, color=colour)
    for ax, title in zip(axes, ("member-mean / verification", "ensemble-mean / verification"), strict=True):
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xlabel("total wavenumber l")
        ax.set_title(f"{channel}: {title}")
    axes[0].legend(fontsize=7, ncol=2)
    return _save(fig, path)


def plot_rank_histograms(ds: xr.Dataset, channels: Sequence[str], path: Path) -> Path:
    leads = [h for h in ds.lead_time.values if h > 0]
    pick = sorted({leads[0], leads[len(leads) // 2], leads[-1]}) if leads else []
    fig, axes = plt.subplots(len(pick), len(channels), figsize=(3 * len(channels), 2.4 * len(pick)), squeeze=False)
    for i, h in enumerate(pick):
        for j, c in enumerate(channels):
            hist = ds.rank_histogram.sel(channel=c, lead_time=h).sum("init_time")
            density = hist.values / hist.values.sum() * hist.sizes["rank"]  # 1 where calibrated
            axes[i, j].bar(hist["rank"].values, density, width=1.0 / hist.sizes["rank"], color="tab:blue")
            axes[i, j].axhline(1.0, color="k", lw=0.8)  # calibrated: flat
            out = ds.outlier_fraction.sel(channel=c, lead_time=h)
            expected = out.attrs.get("expected")  # 2/(m+1), written with it online and offline
            label = f" (exp. {expected:.2f})" if expected is not None else ""
            axes[i, j].set_title(f"{c} {h / 24:g} d, outliers {out.mean().item():.2f}{label}", fontsize=8)
            axes[i, j].set_xlim(0, 1)
        axes[i, 0].set_ylabel("density")
    for ax in axes[-1]:
        ax.set_xlabel("normalised rank of the verification")
    return _save(fig, path)


def plot_efi_maps(ds: xr.Dataset, channels: Sequence[str], path: Path) -> Path:
    last = ds.init_time.values[-1]
    leads = [h for h in ds.lead_time.values if h > 0]
    h = leads[min(len(leads) - 1, 2)] if leads else ds.lead_time.values[0]
    fig, axes = plt.subplots(1, len(channels), figsize=(4.2 * len(channels), 2.8), squeeze=False)
    for j, c in enumerate(channels):
        field = ds.efi.sel(init_time=last, lead_time=h, channel=c)
        im = axes[0, j].pcolormesh(ds.lon, ds.lat, field, cmap="RdBu_r", vmin=-1, vmax=1, shading="nearest")
        axes[0, j].set_title(f"EFI {c}, {str(last)[:13]} +{h / 24:g} d", fontsize=9)
    fig.colorbar(im, ax=axes[0, -1])
    return _save(fig, path)


def plot_reliability(store: str, archive: str, channel: str, threshold: float, lead: int, path: Path) -> Path:
    """Reliability diagram of `channel > threshold` at `lead` hours over the store's init times."""
    from forecast.diagnostics.scores import reliability
    from forecast.diagnostics.verify import verification
    from forecast.ensemble.store import ForecastStore

    fs = ForecastStore.open(store)
    k = int(np.flatnonzero(fs.lead_hours == lead)[0])
    c = fs.channels.index(channel)
    lat, lon = fs.group["lat"][:], fs.group["lon"][:]
    xs, ys = [], []
    for i, init in enumerate(fs.init_times):
        xs.append(fs.group["fields"][i, :, k, c])
        ys.append(verification(archive, np.asarray([init + np.timedelta64(int(lead), "h")]), [channel], lat, lon)[0, 0])
    x = xr.DataArray(np.stack(xs), dims=("init_time", "member", "lat", "lon"))
    y = xr.DataArray(np.stack(ys), dims=("init_time", "lat", "lon"))
    rel = reliability(x, y, threshold, bins=10)
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], "k", lw=0.8)
    ax.plot(rel.forecast_probability, rel.observed_frequency, "o-")
    ax.set_xlabel("forecast probability")
    ax.set_ylabel("observed frequency")
    ax.set_title(f"{channel} > {threshold:g}, +{lead / 24:g} d", fontsize=9)
    return _save(fig, path)


def plot_plume(
    store: str, archive: str, channel: str, lat: float, lon: float, path: Path, init_time: str | None = None
) -> Path:
    """Every member's trajectory at the grid point nearest (lat, lon) from `init_time` (default
    the store's first), with the ensemble mean and the verifying analysis."""
    from forecast.diagnostics.verify import verification
    from forecast.ensemble.store import ForecastStore

    fs = ForecastStore.open(store)
    lats, lons = fs.group["lat"][:], fs.group["lon"][:]
    i, j = int(np.argmin(np.abs(lats - lat))), int(np.argmin(np.abs(lons - lon % 360)))
    c = fs.channels.index(channel)
    n = 0 if init_time is None else fs.init_index(np.datetime64(init_time, "h"))
    x = fs.group["fields"][n, :, :, c, i, j]  # (member, lead)
    init = fs.init_times[n]
    truth = verification(
        archive, init + fs.lead_hours.astype("timedelta64[h]"), [channel], lats[i : i + 1], lons[j : j + 1]
    )
    days = fs.lead_hours / 24.0
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(days, x.T, color="tab:blue", alpha=max(0.02, min(0.4, 8.0 / x.shape[0])), lw=0.7)
    ax.plot(days, x.mean(0), color="navy", lw=2, label="ensemble mean")
    ax.plot(days, truth[:, 0, 0, 0], "k--", lw=1.5, label="analysis")
    ax.set_xlabel("lead (days)")
    ax.set_ylabel(channel)
    ax.set_title(f"{channel} at {lats[i]:.1f}N {lons[j]:.1f}E from {str(init)[:13]}: {x.shape[0]} members", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_scores(
    scores: str,
    out: str,
    forecast_store: str | None = None,
    archive: str | None = None,
    channels: Sequence[str] | None = None,
    point: tuple[float, float] = (50.0, 10.0),
    init_time: str | None = None,
) -> list[Path]:
    """Every plot of a scores store into directory `out`; the plume and the reliability
    diagram also need the forecast store and the archive. With `init_time`, the plots are of
    that init time alone; otherwise scores are averaged over all scored init times. Returns
    the files written."""
    ds = open_scores(scores)
    if init_time is not None:
        ds = ds.sel(init_time=[np.datetime64(init_time, "ns")])
    ds = ds.load()
    if not ds.sizes.get("init_time"):
        raise ValueError(f"{scores}: no init time is scored yet; nothing to plot")
    have = [str(c) for c in ds.channel.values]
    channels = [c for c in (channels or DEFAULT_CHANNELS) if c in have] or have[:4]
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [
        plot_crps_and_spread_skill(ds, channels, folder / "crps_spread_skill.png"),
        plot_rank_histograms(ds, channels, folder / "rank_histograms.png"),
    ]
    paths += [plot_spectra(ds, c, folder / f"spectra_{c}.png") for c in channels[:2]]
    if "efi" in ds:
        paths.append(plot_efi_maps(ds, channels[:3], folder / "efi_maps.png"))
    from forecast.diagnostics.plots_extremes import plot_ensemble_size_curves, plot_roc, plot_tails

    if "subset_outlier_fraction" in ds and "ensemble_size" in ds.coords:
        paths.append(plot_ensemble_size_curves(ds, channels, folder / "ensemble_size_curves.png"))
    if "verification_anomaly_distribution" in ds and "anomaly" in ds.coords:
        paths.append(plot_tails(ds, channels[:4], folder / "tails.png"))
    if "q99_event_weight" in ds and float(ds.q99_event_weight.sum()) > 0:
        paths.append(plot_roc(ds, channels[:4], folder / "roc_q99.png"))
    if forecast_store and archive:
        from forecast.ensemble.store import ForecastStore

        fs = ForecastStore.open(forecast_store)
        if fs.store_members:
            c = channels[0]
            paths.append(plot_plume(forecast_store, archive, c, *point, folder / f"plume_{c}.png", init_time))
            leads = [int(h) for h in fs.lead_hours if h > 0]
            if leads:
                lead = leads[len(leads) // 2]
                k = int(np.flatnonzero(fs.lead_hours == lead)[0])
                sample = fs.group["fields"][0, :, k, fs.channels.index(c)]
                threshold = float(np.quantile(sample, 0.9))  # a 1-in-10 event of this forecast's range
                paths.append(
                    plot_reliability(forecast_store, archive, c, threshold, lead, folder / f"reliability_{c}.png")
                )
    log.info("%d plots in %s", len(paths), folder)
    return paths
