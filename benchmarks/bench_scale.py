"""Benchmark: `forecast run` at 0.25° (721 × 1440, 21 channels) with a tiny SFNO, memory bounded
by one block and one lead (issue #12).

Data: a month of the built-in world, its first `--days` days bilinearly interpolated to 0.25°
in the CDS-2024 layout (`forecast.world.upsample`), ingested; a tiny checkpoint (embed 16,
2 layers, scale factor 4) trained for a few batches. Then, each in a fresh process:

1. peak resident memory of `forecast run --score --no-members` (online statistics and scores,
   members not kept: the HENS mode; the CRPS scratch spills members lead by lead) for
   (2 members, 1 day), (2 members, 15 days) and (8 members, 15 days), in blocks of 2 members
   (the block fixes the memory; more members are more blocks), statistics at every 24 h
   (`--output-leads`: the per-lead state on disk is about 1.2 GB per output lead at 0.25°
   with scores, so every 6 h over 15 days would need ~73 GB of scratch disk here);
   target: all three finish, peaks within 15 % of each other, each at most 8 GB;
   then the runs of `--low-memory-runs` again with `forecast run --low-memory` (the
   statistics computed between the model's steps instead of beside them: a lower, steadier
   peak for more time);
2. the cost of breeding 64 pairs against those 128 members' 15-day forecast: the breeding
   time of a block, and the time of a forecast step of the same block, both measured here,
   scaled to 64 pairs and 128 members x 60 steps (target: at most 5 %).

    python benchmarks/bench_scale.py [--work DIR] [--days 8] [--out benchmarks/results/bench_scale.json]

Takes about 30-40 minutes on 2 cores; `--work` keeps the data for a rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INIT = "2000-01-02T00"
TINY = """\
model: {embed_dim: 16, num_layers: 2, scale_factor: 4, mlp_ratio: 2.0, grid: equiangular,
        grid_internal: legendre-gauss, residual_prediction: true}
epochs: 1
finetune_epochs: 0
batch_size: 1
max_batches_per_epoch: 2
warmup_steps: 1
skill_inits: 1
train_start: 2000-01-01T00
train_end: 2000-01-05T00
valid_start: 2000-01-05T06   # window starts; 72-h skill windows reach the last step (8 days)
valid_end: 2000-01-06T00
"""


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "forecast.cli", "-q", *args]


def peak_rss(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(peak resident GB, seconds) of a command, measured by a fresh wrapper process that has
    it as its only child."""
    wrapper = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "r = subprocess.run(sys.argv[1:]); dt = time.perf_counter() - t; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, dt, r.returncode)"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, env=env)
    kb, seconds, code = out.stdout.split()[-3:]
    if int(code) != 0:
        raise RuntimeError(f"{cmd[3:6]} failed ({code}): {out.stderr[-2000:]}")
    return int(kb) / 2**20, float(seconds)


def prepare(work: Path, days: int) -> tuple[str, str]:
    from forecast.world.upsample import upsample_world

    archive, package = work / "archive.zarr", work / "tiny"
    if not (work / "world").exists():
        subprocess.run(_cli("world", "--out", str(work / "world"), "--months", "1"), check=True)
    if not (work / "era5-025").exists():
        t = time.perf_counter()
        upsample_world(work / "world", work / "era5-025.partial", days=days)
        (work / "era5-025.partial").rename(work / "era5-025")
        print(f"upsampled to 0.25 degrees in {time.perf_counter() - t:.0f} s", flush=True)
    if not archive.exists():
        gb, s = peak_rss(_cli("ingest", str(work / "era5-025"), "--archive", str(archive)))
        print(f"ingest: {s:.0f} s, peak {gb:.1f} GB", flush=True)
    if not (package / "skill.json").exists():
        (work / "tiny.yaml").write_text(TINY)
        args = ["train", "--archive", str(archive), "--seed", "0", "--out", str(package)]
        gb, s = peak_rss(_cli(*args, "--config", str(work / "tiny.yaml"), "--device", "cpu"))
        print(f"train (tiny, 2 batches): {s:.0f} s, peak {gb:.1f} GB", flush=True)
    return str(archive), str(package)


def breeding_cost(archive: str, package: str, pairs: int) -> dict:
    """Seconds to breed one block of `pairs` pairs and to step that block once (2 x pairs members)."""
    import torch

    from forecast.ensemble.engine import RunSettings, initial_members, load_model, plan_run

    settings = RunSettings(perturbations=pairs, lead_hours=6, block_size=2 * pairs, score=False)
    plan = plan_run(archive, [package], INIT, settings)
    block = plan.layout.blocks(plan.block_size)[0]
    model = load_model(package, archive, "cpu")
    initial_members(plan, block, model)  # warm-up (transform set-up, caches)
    t = time.perf_counter()
    state = initial_members(plan, block, model)
    breed = time.perf_counter() - t
    hours = torch.full((block.size,), 0.0, dtype=torch.float64)
    with torch.no_grad():
        model(state, hours)
        t = time.perf_counter()
        model(state, hours)
        step = time.perf_counter() - t
    return {"pairs": pairs, "breed_s": breed, "step_s": step}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(ROOT / ".bench-scale"))
    p.add_argument("--days", type=int, default=8)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_scale.json"))
    p.add_argument("--runs", default="2x24,2x360,8x360", help="members x lead hours, comma separated")
    p.add_argument("--block-size", type=int, default=2)
    p.add_argument(
        "--low-memory-runs",
        default="2x24,2x360",
        help="runs repeated with `forecast run --low-memory` (statistics between the steps); empty: none",
    )
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    archive, package = prepare(work, args.days)
    results: dict = {"grid": "721x1440", "channels": 21, "init_time": INIT, "runs": [], "low_memory_runs": []}
    specs = [(s, False) for s in args.runs.split(",")] + [(s, True) for s in args.low_memory_runs.split(",") if s]
    for spec, low_memory in specs:
        members, hours = map(int, spec.split("x"))
        store = work / f"run-{members}x{hours}{'-low' if low_memory else ''}.zarr"
        subprocess.run(["rm", "-rf", str(store), f"{store}.lock", f"{store}.locks"], check=True)
        cmd = _cli(
            "run", "--archive", archive, "--packages", package, "--init-time", INIT,
            "--perturbations", str(members // 2), "--lead-hours", str(hours), "--block-size", str(args.block_size),
            "--output-leads", *[str(h) for h in range(0, hours + 1, 24)],
            "--score", "--no-members", "--device", "cpu", "--out", str(store),
        )  # fmt: skip
        gb, seconds = peak_rss(cmd + (["--low-memory"] if low_memory else []))
        size = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**30
        row = {"members": members, "lead_hours": hours, "block_size": args.block_size,
               "peak_rss_gb": round(gb, 2), "seconds": round(seconds, 1), "store_gb": round(size, 2)}  # fmt: skip
        results["low_memory_runs" if low_memory else "runs"].append(row)
        subprocess.run(["rm", "-rf", str(store), f"{store}.lock", f"{store}.locks"], check=True)  # disk
        print(json.dumps({**row, "low_memory": low_memory}), flush=True)
    for key in ("runs", "low_memory_runs"):
        peaks = [r["peak_rss_gb"] for r in results[key]]
        if peaks:
            results[f"{key}_peak_spread"] = round(max(peaks) / min(peaks) - 1, 3)
    cost = breeding_cost(archive, package, pairs=4)
    # 64 pairs breed in 16 such blocks; 128 members x 60 steps are 16 blocks x 60 steps
    cost["ratio_64_pairs"] = round(cost["breed_s"] / (60 * cost["step_s"]), 4)
    results["breeding"] = cost
    print(json.dumps(results, indent=1))
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
