"""The online scores of a hindcast: the `ScoreFactory` a scored run hands the engine
(`run_ensemble(..., scores=hindcast_scores)` with `RunSettings(score=True)`).

The engine (a lower layer) keeps moments and exceedances itself and never imports the
diagnostics; everything verified against the archive is made here, for one run and init time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from forecast.archive import Archive
from forecast.diagnostics.ensemble_size import ensemble_sizes, subset_ranks
from forecast.diagnostics.mclimate import load_mclimate
from forecast.diagnostics.online import EFIWeights, LeadVerification, MeanSkill, RankCounts, SpectraSums, TiledCRPS
from forecast.diagnostics.online_extremes import SubsetExtremes, TailScores
from forecast.diagnostics.scores import area_weights
from forecast.ensemble.online import Accumulator

if TYPE_CHECKING:
    from forecast.ensemble.engine import Plan


def hindcast_scores(plan: Plan, channels: list[str], store_location: str) -> list[Accumulator]:
    """The scores kept while a hindcast runs, against the archive's analyses at the valid
    times (NaN where the archive ends), read lead by lead; the EFI where the side store has an
    M-climate (read lead by lead and tile by tile); the tails, q99 event scores and
    ensemble-size curves (`forecast.diagnostics.online_extremes`)."""
    grid = Archive.open(plan.archive).grid
    lat, lon = grid.lat[plan.lat_index], grid.lon[plan.lon_index]
    valid = plan.init_time + plan.output_leads.astype("timedelta64[h]")
    truth = LeadVerification(plan.archive, valid, channels, lat, lon)
    weights = area_weights(lat).values
    per_checkpoint = plan.layout.per_checkpoint
    accs: list[Accumulator] = [
        RankCounts(truth),
        MeanSkill(truth, weights),
        SpectraSums(truth),
        TiledCRPS(
            truth,
            weights,
            plan.layout.size,
            scratch=f"{str(store_location).rstrip('/')}.crps-scratch-{plan.init_time}",
            member_chunk=int(np.gcd(plan.block_size, per_checkpoint)),
        ),
    ]
    climate = load_mclimate(plan.archive, plan.init_time)
    lead_map, clim, efi = {}, None, None
    if climate is not None:
        have = {int(h): i for i, h in enumerate(climate.lead_time.values)}
        lead_map = {k: have[int(h)] for k, h in enumerate(plan.output_leads) if int(h) in have}
        if lead_map:
            clim = climate.sel(channel=channels).isel(lat=plan.lat_index, lon=plan.lon_index)
            efi = EFIWeights(clim, lead_map)
            accs.append(efi)
    cache: dict[int, np.ndarray] = {}

    def q99(k: int) -> np.ndarray | None:
        """The M-climate's 99th percentile at lead k (the extreme of missed extremes and of the
        q99 event scores), read once per lead: every block and accumulator of the lead share it."""
        if k not in lead_map:
            return None
        if k not in cache:
            cache.clear()
            cache[k] = np.asarray(clim.isel(lead_time=lead_map[k]).sel(quantile=0.99, method="nearest"))
        return cache[k]

    threshold = q99 if clim is not None else None
    accs.append(TailScores(truth, weights, threshold, efi))
    if plan.layout.size >= 4:  # ensemble-size curves need two sizes at least
        coords = plan.layout.coords()
        # one draw of nested subsets, fixed by the run's base seed (offline curves may average more)
        ranks = subset_ranks(coords["checkpoint"], coords["perturbation"], seed=plan.settings.base_seed)
        accs.append(SubsetExtremes(truth, weights, ranks, ensemble_sizes(plan.layout.size), threshold))
    return accs
