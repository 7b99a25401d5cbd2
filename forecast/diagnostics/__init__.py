"""Diagnostics of huge ensembles on labelled arrays (DESIGN §3.2–§3.4)."""

from forecast.diagnostics.extremes import efi, sot
from forecast.diagnostics.scores import (
    area_weights,
    brier_score,
    crps,
    ensemble_mean_rmse,
    normalised_rank_histogram,
    outlier_fraction,
    rank_histogram,
    reliability,
    spread_skill_ratio,
)
from forecast.diagnostics.spectra import ensemble_spectra, power_spectrum

__all__ = [
    "area_weights",
    "brier_score",
    "crps",
    "efi",
    "ensemble_mean_rmse",
    "ensemble_spectra",
    "normalised_rank_histogram",
    "outlier_fraction",
    "power_spectrum",
    "rank_histogram",
    "reliability",
    "sot",
    "spread_skill_ratio",
]
