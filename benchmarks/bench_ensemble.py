"""Benchmark: the ensemble engine on this machine (issue #4).

1. Member-steps per second of the engine's batched step against a one-member-at-a-time loop,
   same model and same states, in the same process.
2. Wall time of `run_ensemble` with member writing on against off (statistics only), both with
   the online statistics (target: at most 1.15x).
3. Memory per member: peak resident memory of a block step at two block sizes, in fresh
   subprocesses, divided by the difference in members.
4. With --full: the issue's run, 4 checkpoints x 16 bred vectors x (+, -) = 128 members x
   15 days through `forecast run` (target: at most 10 minutes on 2 cores).

    python benchmarks/bench_ensemble.py --archive A --packages P1 P2 P3 P4 [--init-time T] [--full]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def member_steps_per_second(archive: str, package: str, init: str, members: int, steps: int) -> dict:
    from forecast.ensemble.engine import load_model

    model = load_model(package, archive, "cpu")
    from forecast.archive import Archive, to_hours

    a = Archive.open(archive)
    i = int(np.searchsorted(a.times, np.datetime64(init, "h")))
    state0 = torch.from_numpy(np.asarray(a.fields[i]))[None].repeat(members, 1, 1, 1)
    state0 = state0 + 0.01 * torch.randn(state0.shape, generator=torch.Generator().manual_seed(0)) * model.diff_std
    hours = float(to_hours(a.times[i : i + 1])[0])
    out = {}
    with torch.no_grad():
        model(state0[:2], torch.full((2,), hours, dtype=torch.float64))  # warm-up
        t = time.perf_counter()
        s = state0
        for k in range(steps):
            s = model(s, torch.full((members,), hours + 6 * k, dtype=torch.float64))
        out["batched"] = members * steps / (time.perf_counter() - t)
        batched = s
        t = time.perf_counter()
        singles = []
        for m in range(members):
            s = state0[m : m + 1]
            for k in range(steps):
                s = model(s, torch.full((1,), hours + 6 * k, dtype=torch.float64))
            singles.append(s)
        out["one_at_a_time"] = members * steps / (time.perf_counter() - t)
    out["max_rel_diff"] = float((torch.cat(singles) - batched).abs().max() / batched.abs().max())
    out["speedup"] = out["batched"] / out["one_at_a_time"]
    return out


def write_overhead(archive: str, packages: list[str], init: str, perturbations: int, lead_hours: int) -> dict:
    from forecast.ensemble.engine import RunSettings, run_ensemble

    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, store in (("stats_only", False), ("members_written", True), ("stats_only_again", False)):
            settings = RunSettings(perturbations=perturbations, lead_hours=lead_hours, store_members=store)
            t = time.perf_counter()
            run_ensemble(archive, packages, init, f"{tmp}/{label}.zarr", settings, progress=False)
            times[label] = time.perf_counter() - t
    off = min(times["stats_only"], times["stats_only_again"])
    return {**{k: round(v, 2) for k, v in times.items()}, "ratio_on_off": round(times["members_written"] / off, 3)}


PROBE = """
import sys, torch, numpy as np
from forecast.ensemble.engine import load_model
from forecast.archive import Archive

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

archive, package, b = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = load_model(package, archive, "cpu")
x0 = torch.from_numpy(np.asarray(Archive.open(archive).fields[0]))[None]
with torch.no_grad():
    model(x0, torch.zeros(1, dtype=torch.float64))  # warm-up: allocator pools, plans
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
    before = status("VmRSS")
    x = x0.repeat(b, 1, 1, 1)
    for k in range(3):
        x = model(x, torch.zeros(b, dtype=torch.float64))
print(status("VmHWM") - before)
"""


def memory_per_member(archive: str, package: str, small: int = 2, large: int = 130) -> dict:
    """Peak resident memory of 3 steps above the loaded model, at two batch sizes (Linux)."""

    def peak(b):
        out = subprocess.run(
            [sys.executable, "-c", PROBE, archive, package, str(b)], capture_output=True, text=True, check=True
        )
        return int(out.stdout.strip().splitlines()[-1])

    lo, hi = peak(small), peak(large)
    return {
        "step_peak_above_model_mb": {small: round(lo / 2**20, 1), large: round(hi / 2**20, 1)},
        "mb_per_member": round((hi - lo) / (large - small) / 2**20, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--archive", required=True)
    p.add_argument("--packages", nargs="+", required=True)
    p.add_argument("--init-time", default=None)
    p.add_argument("--full", action="store_true", help="also the 128-member, 15-day run through `forecast run`")
    args = p.parse_args()
    from forecast.archive import Archive

    torch.set_num_threads(torch.get_num_threads())
    times = Archive.open(args.archive).times
    init = args.init_time or str(times[len(times) - 120])
    results = {"init_time": init, "threads": torch.get_num_threads()}
    results["member_steps_per_second"] = member_steps_per_second(
        args.archive, args.packages[0], init, members=16, steps=8
    )
    print(json.dumps(results, indent=1), flush=True)
    results["write_on_vs_off"] = write_overhead(args.archive, args.packages[:2], init, perturbations=8, lead_hours=120)
    print(json.dumps(results["write_on_vs_off"], indent=1), flush=True)
    results["memory"] = memory_per_member(args.archive, args.packages[0])
    print(json.dumps(results["memory"], indent=1), flush=True)
    if args.full:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                sys.executable,
                "-m",
                "forecast.cli",
                "-q",
                "run",
                "--archive",
                args.archive,
                "--packages",
                *args.packages,
            ]
            cmd += ["--init-time", init, "--perturbations", "16", "--lead-hours", "360", "--out", f"{tmp}/run.zarr"]
            t = time.perf_counter()
            subprocess.run(cmd, check=True)
            elapsed = time.perf_counter() - t
            size = sum(f.stat().st_size for f in Path(tmp, "run.zarr").rglob("*") if f.is_file())
        results["full_run"] = {
            "members": 16 * 2 * len(args.packages),
            "lead_hours": 360,
            "seconds": round(elapsed, 1),
            "store_gb": round(size / 1e9, 2),
        }
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
