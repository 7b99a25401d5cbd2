"""Benchmark: fair CRPS at HENS scale, m = 7,424 members over a 33 x 64 grid (issue #5).

Ours (`forecast.diagnostics.crps`) against `scores` (xarray, sorted form) and properscoring
(`crps_ensemble`, the ensemble/ecdf estimator; numba's compiled kernel if numba is installed,
its numpy fallback otherwise), the same inputs in the same process. Reports seconds (best of
`--repeat`), the speed ratio against the fastest peer, the largest relative disagreement and
the peak memory each allocates (tracemalloc, which numpy reports to; our compiled kernel's
per-thread buffers are numba's and are reported beside it).

    python benchmarks/bench_crps.py [--members 7424] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc

import numpy as np
import xarray as xr


def timed(fn, repeat: int):
    best, out = np.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return best, peak, out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--members", type=int, default=7424)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    from forecast.diagnostics import crps

    rng = np.random.default_rng(0)
    m, shape = args.members, (33, 64)
    x = (rng.normal(0, 30, (m, *shape)) + 55_000).astype(np.float32)  # z500-like, as stored
    y = (rng.normal(0, 30, shape) + 55_000).astype(np.float64)
    fx = xr.DataArray(x, dims=("member", "lat", "lon"))
    fy = xr.DataArray(y, dims=("lat", "lon"))
    results = {"members": m, "grid": list(shape)}

    t, peak, ours_fair = timed(lambda: crps(fx, fy, estimator="fair").values, args.repeat)
    results["ours_fair"] = {"seconds": round(t, 3), "peak_mb": round(peak / 2**20, 1)}
    t, peak, ours_ecdf = timed(lambda: crps(fx, fy, estimator="ensemble").values, args.repeat)
    results["ours_ensemble"] = {"seconds": round(t, 3), "peak_mb": round(peak / 2**20, 1)}

    import scores.probability

    def run_scores():
        return scores.probability.crps_for_ensemble(
            fx.astype(np.float64), fy, "member", method="fair", preserve_dims=["lat", "lon"]
        ).values

    t, peak, peer = timed(run_scores, args.repeat)
    results["scores_fair"] = {
        "seconds": round(t, 3),
        "peak_mb": round(peak / 2**20, 1),
        "max_rel_diff": float(np.max(np.abs(peer - ours_fair) / np.abs(peer))),
    }
    try:
        import numba  # noqa: F401

        kernel = "numba"
    except ImportError:
        kernel = "numpy fallback"
    import properscoring

    xs = np.moveaxis(x.astype(np.float64), 0, -1)
    t, peak, ps = timed(lambda: properscoring.crps_ensemble(y, xs), args.repeat)
    results["properscoring_ensemble"] = {
        "kernel": kernel,
        "seconds": round(t, 3),
        "peak_mb": round(peak / 2**20, 1),
        "max_rel_diff": float(np.max(np.abs(ps - ours_ecdf) / np.abs(ps))),
    }
    fastest = min(results["scores_fair"]["seconds"], results["properscoring_ensemble"]["seconds"])
    results["speedup_vs_fastest_peer"] = round(fastest / results["ours_fair"]["seconds"], 2)
    try:  # the compiled kernel's own buffers (numba's allocator, invisible to tracemalloc)
        import numba

        per_thread = (16 * m + 2 * m + m // 2 * 2) * 8
        results["ours_kernel_buffers_mb"] = round(numba.get_num_threads() * per_thread / 2**20, 1)
    except ImportError:
        results["ours_kernel_buffers_mb"] = 0.0
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
