"""PNG plots of what more members buy (issue #14), from a scores store's ensemble-size curves,
tail distributions and q99 event weights (`forecast.diagnostics.verify`, or a hindcast's
online scores: the names are the same). Averaged over the init times given, as `plots`.

- `plot_ensemble_size_curves`: against the ensemble size m' (log axis), the outlier fraction
  beside 2/(m'+1), the best member's error, the fair CRPS (flat for exchangeable members) and
  the fraction of the globe with a missed 99th-percentile extreme;
- `plot_tails`: the area-weighted distribution of the verification's standardised anomaly
  (y − x̄)/s beside that of the largest member anomaly, per channel at one lead;
- `plot_roc`: ROC curves of the q99 exceedance probability at a few leads and of the EFI, from
  the binned event weights pooled over init times, with their areas, and the reliability
  diagrams of that probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from forecast.diagnostics.tails import roc_area_from_bins, roc_points  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mid_lead(ds: xr.Dataset, days: float = 5.0) -> int:
    """The lead (hours) nearest `days` among those > 0."""
    leads = ds.lead_time.values[ds.lead_time.values > 0]
    return int(leads[np.argmin(np.abs(leads - 24 * days))]) if len(leads) else int(ds.lead_time.values[0])


def plot_ensemble_size_curves(ds: xr.Dataset, channels: Sequence[str], path: Path, days: float = 5.0) -> Path:
    lead = _mid_lead(ds, days)
    s = ds.sel(lead_time=lead).mean("init_time")
    sizes = ds.ensemble_size.values
    panels = [
        ("subset_outlier_fraction", "outlier fraction"),
        ("subset_best_member_error", "best-member error / m'=2"),
        ("subset_crps", "fair CRPS / m'=2"),
        ("subset_missed_extreme_fraction", "missed q99 extremes (area)"),
    ]
    panels = [(k, t) for k, t in panels if k in s]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.2), squeeze=False)
    for ax, (name, title) in zip(axes[0], panels, strict=True):
        for c in channels:
            v = s[name].sel(channel=c).values
            if "/ m'=2" in title:
                v = v / v[0]
            ax.plot(sizes, v, "o-", ms=3, label=c)
        if name == "subset_outlier_fraction":
            ax.plot(sizes, 2.0 / (sizes + 1.0), "k--", lw=1, label="2/(m'+1)")
            ax.set_yscale("log")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("ensemble size m'")
        ax.set_title(f"{title}, +{lead / 24:g} d", fontsize=9)
    axes[0, 0].legend(fontsize=7)
    return _save(fig, path)


def plot_tails(ds: xr.Dataset, channels: Sequence[str], path: Path, days: float = 5.0) -> Path:
    lead = _mid_lead(ds, days)
    s = ds.sel(lead_time=lead).mean("init_time")
    fig, axes = plt.subplots(1, len(channels), figsize=(3.2 * len(channels), 3.0), squeeze=False)
    z = ds.anomaly.values
    for ax, c in zip(axes[0], channels, strict=True):
        ax.semilogy(z, s.verification_anomaly_distribution.sel(channel=c), "o-", ms=2, label="verification")
        ax.semilogy(z, s.largest_member_anomaly_distribution.sel(channel=c), "s-", ms=2, label="largest member")
        ax.set_title(f"{c}, +{lead / 24:g} d", fontsize=9)
        ax.set_xlabel("ensemble standard deviations")
    axes[0, 0].set_ylabel("fraction of the globe")
    axes[0, 0].legend(fontsize=6)
    return _save(fig, path)


def plot_roc(ds: xr.Dataset, channels: Sequence[str], path: Path, days: Sequence[float] = (1, 3, 5, 10)) -> Path:
    """ROC curves (top) and reliability diagrams (bottom) of P(> the M-climate's q99)."""
    fig, axes = plt.subplots(2, len(channels), figsize=(3.2 * len(channels), 6.2), squeeze=False)
    leads = sorted({_mid_lead(ds, d) for d in days})
    for j, c in enumerate(channels):
        ax, rel = axes[0, j], axes[1, j]
        for lead in leads:
            s = ds.sel(lead_time=lead, channel=c).sum("init_time")
            e, n = s.q99_event_weight.values, s.q99_other_weight.values
            if e.sum() <= 0:
                continue
            area = float(roc_area_from_bins(s.q99_event_weight, s.q99_other_weight, "probability"))
            ax.plot(*roc_points(e, n), "-", label=f"P(>q99) +{lead / 24:g} d: {area:.2f}")
            # ten probability bins for the diagram (the stored 1 % bins are too fine to read)
            which = np.minimum((ds.probability.values * 10).astype(int), 9)
            e10, n10 = np.bincount(which, e, minlength=10), np.bincount(which, n, minlength=10)
            p10 = np.bincount(which, ds.probability.values * (e + n), minlength=10)
            used, total = (e10 + n10) > 0, e10 + n10
            rel.plot(p10[used] / total[used], e10[used] / total[used], "o-", ms=3, label=f"+{lead / 24:g} d")
        if "efi_q99_event_weight" in ds:
            lead = _mid_lead(ds, 5.0)
            s = ds.sel(lead_time=lead, channel=c).sum("init_time")
            if s.efi_q99_event_weight.sum() > 0:
                area = float(roc_area_from_bins(s.efi_q99_event_weight, s.efi_q99_other_weight, "efi_bin"))
                ax.plot(*roc_points(s.efi_q99_event_weight.values, s.efi_q99_other_weight.values), "k--",
                        label=f"EFI +{lead / 24:g} d: {area:.2f}")  # fmt: skip
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8)
        rel.plot([0, 1], [0, 1], color="0.6", lw=0.8)
        ax.set_title(f"{c}: q99 events", fontsize=9)
        ax.set_xlabel("false-alarm rate")
        rel.set_xlabel("forecast probability")
        for a in (ax, rel):
            if a.get_legend_handles_labels()[0]:  # a channel with no q99 event has no curve
                a.legend(fontsize=6)
    axes[0, 0].set_ylabel("hit rate")
    axes[1, 0].set_ylabel("observed frequency")
    return _save(fig, path)


def size_summary(ds: xr.Dataset, channels: Sequence[str], days: float = 5.0) -> str | None:
    """One line: what the largest ensemble bought over the smallest (outliers, best member,
    missed extremes) at the lead nearest `days`, over `channels`; None without the curves."""
    if "subset_outlier_fraction" not in ds or ds.sizes.get("ensemble_size", 0) < 2:
        return None
    lead = _mid_lead(ds, days)
    s = ds.sel(lead_time=lead, channel=list(channels))
    s = s.mean("init_time") if "init_time" in s.dims else s  # one init time (a report) or several
    first, last = s.isel(ensemble_size=0), s.isel(ensemble_size=-1)
    small, large = int(ds.ensemble_size[0]), int(ds.ensemble_size[-1])
    outliers = (float(first.subset_outlier_fraction.mean()), float(last.subset_outlier_fraction.mean()))
    best = float((1 - last.subset_best_member_error / first.subset_best_member_error).mean())
    line = (
        f"From {small} to {large} members (+{lead / 24:g} d, mean over {', '.join(channels)}): outliers "
        f"{outliers[0]:.3f} -> {outliers[1]:.3f} (calibrated {2 / (small + 1):.3f} -> {2 / (large + 1):.3f}), "
        f"best-member error {-100 * best:+.0f} %"
    )
    if "subset_missed_extreme_fraction" in s:
        missed = (float(first.subset_missed_extreme_fraction.mean()), float(last.subset_missed_extreme_fraction.mean()))
        if np.isfinite(missed).all():
            line += f", missed q99 extremes {100 * missed[0]:.2f} % -> {100 * missed[1]:.2f} % of the globe"
    return line + "."
