"""Issue #3's skill bar, on the built-in world with the MSE configuration (train-mse.yaml, the
first stage of the default stochastic checkpoint, whose own table is benchmarks/science_world.py):
every checkpoint beats persistence and climatology in RMSE of z500 and t850 at 24 h and 72 h on
the validation period, and a 15-day rollout stays below 1.5 x climatology's RMSE. One seed in CI
(about 4 minutes on its 2 cores): the CI budget holds one such training; seeds 1 and 2 are checked by
`benchmarks/science_world.py` (their figures are in the README)."""

from __future__ import annotations

import json

import pytest

from forecast.config import CONFIG_DIR, load
from forecast.training.loop import TrainConfig, train

SEEDS = (0,)


@pytest.mark.parametrize("seed", SEEDS)
def test_an_mse_checkpoint_beats_the_baselines(world_archive, tmp_path, seed):
    cfg = load(TrainConfig, CONFIG_DIR / "train-mse.yaml")
    train(world_archive, tmp_path / "pkg", seed=seed, cfg=cfg, device="cpu")
    skill = json.loads((tmp_path / "pkg" / "skill.json").read_text())
    for channel in ("z500", "t850"):
        for lead in ("24", "72"):
            model = skill["rmse"][channel][lead]
            persistence = skill["persistence"][channel][lead]
            climatology = skill["climatology"][channel][lead]
            print(f"| {seed} | {channel} | {lead} h | {model:.4g} | {persistence:.4g} | {climatology:.4g} |")
            assert model < persistence and model < climatology, (seed, channel, lead)
    rollout = skill["rollout_15d"]
    ratios = rollout["max_ratio_to_climatology"]
    print(
        f"seed {seed}: 15-day rollout, max RMSE / climatology: z500 {ratios['z500']:.3f}, t850 {ratios['t850']:.3f},"
        f" worst channel {max(ratios, key=ratios.get)} {max(ratios.values()):.3f}"
    )
    assert rollout["finite"] and rollout["inits"] >= 4
    # The bar, on every lead time up to 15 days: RMSE below 1.5 x climatology's. A
    # forecast with a perfect climate but no skill left sits at sqrt(2) = 1.41; one that drifts or
    # amplifies goes past 1.5 (without the default input noise, seed 1 reached 1.64 for z500 and
    # 2.33 for sp). Every channel is held to it, not only the two the issue names.
    assert ratios["z500"] < 1.5 and ratios["t850"] < 1.5
    assert max(ratios.values()) < 1.5, ratios
