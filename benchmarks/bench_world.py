"""Benchmark: generating the default world (3 years, 33x64, 6-hourly) on this machine.

Target (issue #2): 3 years in at most 3 minutes on 2 cores. Also reports the ratio to a bare
integration of the same model over the same period in the same process (the cost of
diagnosing and writing the output).

    python benchmarks/bench_world.py [--years 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--years", type=int, default=3)
    args = parser.parse_args()

    from forecast.world import WorldRun, generate_world
    from forecast.world.generate import World, month_starts

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        generate_world(tmp, WorldRun(years=args.years), progress=False)
        generate_s = time.perf_counter() - start

    world = World()
    months = month_starts(2000, 12 * args.years)
    start = time.perf_counter()
    state, target = world.spunup_state(0, months[0])
    when = months[0]
    while when < months[-1]:
        state = world.step(state, when, target)
        when = when + np.timedelta64(6, "h")
    np.asarray(state.vorticity)
    bare_s = time.perf_counter() - start

    days = float((months[-1] - months[0]) / np.timedelta64(1, "D"))
    result = {
        "years": args.years,
        "generate_seconds": round(generate_s, 1),
        "bare_integration_seconds": round(bare_s, 1),
        "generate_over_bare": round(generate_s / bare_s, 2),
        "simulated_days_per_second": round(days / generate_s, 2),
        "target_met": generate_s <= 180.0 * args.years / 3,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
