"""The report of one forecast run: `report.md` with its PNG plots, beside the forecast store.

The markdown has a headline table (CRPS, ensemble-mean RMSE, spread-skill ratio and outlier
fraction against its calibrated value, per channel at a few lead times), the largest EFI per
channel where an M-climate exists, one line on what the largest ensemble bought over the
smallest (outliers, best member, missed extremes: `plots_extremes.size_summary`), and the
plots. The same markdown is what a Prefect flow publishes as its artifact, so the report on
disk and the one in the UI never differ.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from forecast.diagnostics.scores_store import open_scores

log = logging.getLogger(__name__)
HEADLINE = ("z500", "t850", "t2m", "u10m", "msl")


def score_table(scores: str, init_time: str, channels: Sequence[str] = HEADLINE, days=(1, 3, 5, 10)) -> list[dict]:
    """Rows {channel, lead_days, crps, rmse, ssr, outliers, outliers_expected} of one init time
    (leads the run has; NaN where the archive cannot verify them yet)."""
    ds = open_scores(scores)
    ds = ds.sel(init_time=np.datetime64(init_time, "ns")).load()
    have = [str(c) for c in ds.channel.values]
    rows = []
    for c in [c for c in channels if c in have]:
        for d in days:
            if 24 * d not in ds.lead_time.values:
                continue
            s = ds.sel(channel=c, lead_time=24 * d)
            rows.append(
                {
                    "channel": c,
                    "lead_days": d,
                    "crps": float(s.crps),
                    "rmse": float(s.ensemble_mean_rmse),
                    "ssr": float(s.spread_skill_ratio),
                    "outliers": float(s.outlier_fraction),
                    "outliers_expected": float(s.outlier_expected),
                }
            )
    return rows


def _fmt(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:.3g}"


def report_markdown(
    store: str, scores: str, init_time: str, plots: Sequence[Path], base: Path, rows: Sequence[dict]
) -> str:
    """The report of `init_time`, its headline table from `rows` (`score_table`)."""
    lines = [
        f"# Ensemble forecast from {init_time}",
        "",
        f"Forecast store `{store}`; scores `{scores}`.",
        "",
        "| channel | lead (days) | CRPS (fair) | ens-mean RMSE | spread-skill | outliers (calibrated) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['channel']} | {r['lead_days']} | {_fmt(r['crps'])} | {_fmt(r['rmse'])} | {_fmt(r['ssr'])} | "
            f"{_fmt(r['outliers'])} ({_fmt(r['outliers_expected'])}) |"
        )
    if not rows:
        lines.append("| (no lead at whole days) | | | | | |")
    ds = open_scores(scores).sel(init_time=np.datetime64(init_time, "ns"))
    if "efi" in ds:
        lines += ["", "Largest |EFI| per channel (M-climate from the hindcasts):", ""]
        for c in [c for c in HEADLINE if c in ds.channel.values]:
            efi = ds.efi.sel(channel=c).where(ds.lead_time > 0).load()  # lead 0 is the analysis itself
            if np.isfinite(efi).any():
                where = np.unravel_index(int(np.nanargmax(np.abs(efi.values))), efi.shape)
                point = efi.isel(lead_time=where[0], lat=where[1], lon=where[2])
                lines.append(
                    f"- {c}: {float(point):+.2f} at {float(point.lat):.1f}N {float(point.lon):.1f}E, "
                    f"+{int(point.lead_time) / 24:g} d"
                )
    from forecast.diagnostics.plots_extremes import size_summary

    line = size_summary(ds.load(), [c for c in HEADLINE if c in ds.channel.values])
    if line:
        lines += ["", line]
    lines += ["", "## Plots", ""]
    lines += [f"![{p.stem}]({p.relative_to(base)})" for p in plots]
    return "\n".join(lines) + "\n"


def write_report(
    store: str, scores: str, archive: str, init_time: str, out_dir: str | Path
) -> tuple[Path, str, list[dict]]:
    """Plots under `out_dir/plots-INIT/` and `out_dir/report-INIT.md`; returns (path, markdown,
    the headline score rows)."""
    from forecast.diagnostics.plots import plot_scores

    out = Path(out_dir)
    tag = str(np.datetime64(init_time, "h"))
    plots = plot_scores(scores, out / f"plots-{tag}", forecast_store=store, archive=archive, init_time=tag)
    rows = score_table(scores, tag)
    markdown = report_markdown(store, scores, tag, plots, out, rows)
    path = out / f"report-{tag}.md"
    tmp = path.with_suffix(".md.partial")
    tmp.write_text(markdown)
    tmp.replace(path)  # a reader never sees half a report
    log.info("report %s with %d plots", path, len(plots))
    return path, markdown, rows
