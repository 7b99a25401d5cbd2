"""A training variant of the stochastic CRPS checkpoint, scored on the science world's
validation year (issue #13, the README's "Tried since" table): nothing here looks at the test
year.

Trains one checkpoint (seed 0 by default) on 2000-2001 with `configs/train.yaml` (both stages)
and the overrides given, runs it from the 4 validation init times of `science_world.py`
(16 members of model noise only, no bred vectors: what the training alone gives), and prints
the area-mean fair CRPS, the spread-skill ratio, the ensemble-mean RMSE and the member power at
l >= 8 over the analysis's per channel at days 1, 3, 5, 10, 15, and the training time. A package already
trained under --work is reused.

    python benchmarks/validation_probe.py --archive ARCHIVE --work DIR --name roll16 \
        --set finetune_rollout_steps=16 [--set ensemble_members=4 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

LEADS = (24, 72, 120, 240, 360)
CHANNELS = ("z500", "t850", "t2m", "u10m")


def main() -> None:
    from science_world import PERIODS, VALID_INITS

    from forecast.calibration import _sweep_scores
    from forecast.config import load
    from forecast.diagnostics.online_scores import hindcast_scores
    from forecast.ensemble.engine import RunSettings, run_ensemble
    from forecast.ensemble.store import open_forecast
    from forecast.training.loop import TrainConfig, train

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archive", required=True, help="the science world's archive (science_world.py builds it)")
    p.add_argument("--work", required=True)
    p.add_argument("--name", required=True, help="the variant's name: its package and store under --work")
    p.add_argument("--config", default="train.yaml")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE (JSON value) over the config")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(2)
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    (lo, hi), (vlo, vhi) = PERIODS["train"], PERIODS["valid"]
    cfg = dataclasses.replace(
        load(TrainConfig, args.config), train_start=lo, train_end=hi, valid_start=vlo, valid_end=vhi, **overrides
    )
    work = Path(args.work)
    package = work / f"pk-{args.name}"
    seconds = None
    if not (package / "config.json").exists():
        start = time.perf_counter()
        train(args.archive, package, seed=args.seed, cfg=cfg, device="cpu")
        seconds = round(time.perf_counter() - start, 1)
    settings = RunSettings(
        perturbations=8, perturbation="none", lead_hours=max(LEADS), output_leads=LEADS, score=True, store_members=False
    )
    store = str(work / f"val-{args.name}.zarr")
    for t in VALID_INITS:
        run_ensemble(args.archive, [str(package)], t, store, settings, progress=False, scores=hindcast_scores)
    scores = _sweep_scores(store, list(CHANNELS), list(LEADS))
    # member power at l >= 8 over the analysis's, powers averaged over init times first (the
    # science table's "member power l >= 8")
    spectra = open_forecast(store).sel(channel=list(CHANNELS), lead_time=list(LEADS), l=slice(8, None))
    power = spectra.member_mean_spectrum.sum("l").mean("init_time") / spectra.verification_spectrum.sum("l").mean(
        "init_time"
    )
    # ensemble-mean RMSE, squares averaged over init times before the root (the table's)
    rmse = np.sqrt(
        (open_forecast(store).sel(channel=list(CHANNELS), lead_time=list(LEADS)).ensemble_mean_rmse ** 2).mean(
            "init_time"
        )
    )
    result = {
        "name": args.name,
        "overrides": overrides,
        "train_s": seconds,
        "days": [h // 24 for h in LEADS],
        **{
            c: {
                **{k: np.nanmean(scores[c][k], 0).round(3).tolist() for k in ("crps", "ssr")},  # mean over inits
                "power_l8": power.sel(channel=c).values.round(3).tolist(),
                "rmse": rmse.sel(channel=c).values.round(3).tolist(),
            }
            for c in CHANNELS
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
