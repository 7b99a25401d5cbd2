"""Throughput of one ensemble block on the device: members x steps per second (issue #12).

Needs only torch, torch-harmonics (and numpy) and this package's model and perturbation code
(`forecast.model.network`, `forecast.ensemble.perturbation`, `forecast.grid`): no zarr,
prefect, dask, xarray or safetensors, so it runs on a bare GPU box
(`PYTHONPATH=. python benchmarks/gpu_throughput.py`).
The model has random weights (speed does not depend on them) and the grid's shape.

For each grid (default 5.625 deg = 33x64 and 0.25 deg = 721x1440) it builds the model, steps a
block of `--members` members `--warmup` times, then times `--steps` steps and prints
members*steps/s, seconds per member-step and the peak CUDA memory of the block. Then it times
the block's bred vectors (3 cycles, DESIGN 3.1: the seed fields in one batched draw, the
control once per cycle, the rescaling on the device) and prints their cost against the 15-day
forecast of the same members (60 steps), the cost contract being <= 5 %.

    PYTHONPATH=. python benchmarks/gpu_throughput.py [--device cuda] [--grids 33x64,721x1440]
        [--members 8] [--channels 21] [--steps 10] [--warmup 2] [--model default|tiny]

Building the model at 0.25 deg computes its spherical-harmonic tables on the CPU (about a
minute per table on a small CPU; they are cached per process).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from forecast.ensemble.perturbation import BredVectors, SphericalNoise, seed_spectrum


def _model_module():
    """forecast.model.network: torch and torch-harmonics only (safetensors is imported by the
    package functions that need it), so it loads on a bare GPU box."""
    from forecast.model import network

    return network


_network = _model_module()
ForecastModel, ModelConfig = _network.ForecastModel, _network.ModelConfig

FORECAST_STEPS = 60  # 15 days of 6-hour steps


def build_model(nlat: int, nlon: int, channels: int, config: ModelConfig) -> ForecastModel:
    names = ["z500"] + [f"c{i:02d}" for i in range(1, channels)]
    torch.manual_seed(0)
    return ForecastModel(
        config,
        names,
        torch.linspace(90, -90, nlat),
        torch.arange(nlon) * 360.0 / nlon,
        mean=torch.zeros(channels),
        std=torch.ones(channels),
        diff_std=torch.full((channels,), 0.1),
        static=torch.zeros(2, nlat, nlon),
        non_negative=[False] * channels,
    ).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device, fn):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def run_steps(model: ForecastModel, state: torch.Tensor, hours: torch.Tensor, n: int) -> torch.Tensor:
    for _ in range(n):
        state = model(state, hours)
    return state


@torch.no_grad()
def measure(nlat: int, nlon: int, args, device: torch.device) -> dict:
    config = ModelConfig() if args.model == "default" else ModelConfig(embed_dim=8, num_layers=1)
    t_build, model = clock(torch.device("cpu"), lambda: build_model(nlat, nlon, args.channels, config))
    model = model.to(device)
    k = args.members
    g = torch.Generator(device=device).manual_seed(0)
    state = torch.randn((k, args.channels, nlat, nlon), generator=g, device=device)
    hours = torch.zeros(k, dtype=torch.float64, device=device)
    for _ in range(args.warmup):
        state = model(state, hours)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)

    t_steps, _ = clock(device, lambda: run_steps(model, state, hours, args.steps))
    out = {
        "grid": f"{nlat}x{nlon}",
        "model": args.model,
        "block_members": k,
        "channels": args.channels,
        "model_build_s": round(t_build, 2),
        "member_steps_per_s": round(k * args.steps / t_steps, 2),
        "s_per_member_step": t_steps / (k * args.steps),
    }
    if device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        out["block_cuda_mb_above_model"] = round((torch.cuda.max_memory_allocated(device) - base) / 2**20, 1)

    # bred vectors for the block's pairs, against the same members' 15-day forecast
    pairs = max(1, k // 2)
    analyses = torch.randn((4, args.channels, nlat, nlon), generator=torch.Generator().manual_seed(1))
    rmse = torch.ones(args.channels, dtype=torch.float64)
    seeds = list(range(pairs))
    bred = BredVectors(model, analyses, 0.0, rmse)
    bred(analyses[-1], seeds)  # warm-up (builds the shared seed generator)
    t_bred, _ = clock(device, lambda: bred(analyses[-1], seeds))
    seeder = SphericalNoise(np.linspace(90, -90, nlat), nlon, seed_spectrum()).to(device)
    seeder.fields(seeds)
    t_seed, _ = clock(device, lambda: seeder.fields(seeds))
    forecast = 2 * pairs * FORECAST_STEPS * out["s_per_member_step"]
    out["breeding"] = {
        "pairs": pairs,
        "seconds": round(t_bred, 4),
        "of_which_seed_draw_s": round(t_seed, 4),
        "forecast_15d_same_members_s": round(forecast, 3),
        "cost_fraction": round(t_bred / forecast, 4),
        "model_steps_fraction": round(3 * (pairs + 1) / (2 * pairs * FORECAST_STEPS), 4),  # 3 cycles, control + pairs
        "contract": "<= 0.05",
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--grids", default="33x64,721x1440")
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--channels", type=int, default=21)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--model", choices=["default", "tiny"], default="default")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device (pass --device cpu to try the script on the CPU)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(json.dumps({"device": name, "torch": torch.__version__}), flush=True)
    for grid in args.grids.split(","):
        nlat, nlon = (int(x) for x in grid.split("x"))
        print(json.dumps(measure(nlat, nlon, args, device)), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the last grid's model and block are gone


if __name__ == "__main__":
    main()
