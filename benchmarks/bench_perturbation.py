"""Benchmark: perturbation noise for one block, the old way against the new (issue #12, point 2).

Old (kept below as the baseline, the implementation before this change): one float64 inverse
SHT on the CPU per member and channel, in a Python loop, with every degree the grid resolves.
New (`forecast.ensemble.perturbation`): white noise per member from that member's own
generator on the device, then ONE batched float32 inverse SHT over (members x channels),
stopped at the degree beyond which the spectrum holds 1e-8 of the RMS (l = 110 for the 500 km
seed spectrum).

It prints, in one run on the CPU, for each grid (default 33x64 and 721x1440):
- precision: float32 against float64 synthesis of the same white coefficients (500 km seed
  spectrum and the Matérn one): the largest error of the raw field over its largest value,
  the relative error of its RMS, and the largest error of the rescaled (unit-RMS)
  perturbation in units of its RMS; and, where the grid resolves more degrees than are kept,
  the full-degree float64 synthesis against the truncated one of the same coefficients;
- speed: `CorrelatedNoise` for a block of `--members` x `--channels` fields (building the
  generator, then drawing), old and new and the ratio old/new; and the bred-vector seed draw
  (z500 only) for 64 members, old and new.

    python benchmarks/bench_perturbation.py [--grids 33x64,721x1440] [--members 8] [--channels 21]
        [--old-fields N] [--json out.json]

`--old-fields N` times the old loop on its first N fields only and scales its time to the
block (the loop costs the same per field; the output says when it did). The old generator at
721x1440 holds a 3 GB float64 Legendre table and takes minutes to build and to draw.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch_harmonics import InverseRealSHT

from forecast.ensemble.perturbation import CorrelatedNoise, SphericalNoise, area_rms, matern_spectrum, seed_spectrum
from forecast.grid import cell_area_weights

# -- the old implementation (the baseline) ----------------------------------------------------


class OldSphericalNoise(torch.nn.Module):
    """As before: complex normal coefficients for m >= 1 (real for m = 0) times sigma(l), one
    float64 inverse SHT per field on the CPU, all degrees the grid resolves."""

    def __init__(self, lat_deg, nlon, sigma, grid="equiangular"):
        super().__init__()
        nlat = len(lat_deg)
        modes = min(nlat, nlon // 2)
        self.isht = InverseRealSHT(nlat, nlon, lmax=modes, mmax=modes, grid=grid, norm="ortho")
        lmax, mmax = self.isht.lmax, self.isht.mmax
        ell = np.arange(lmax, dtype=np.float64)
        amp = np.tril(np.repeat(sigma(ell)[:, None], mmax, axis=1))
        amp[0, 0] = 0.0
        self.register_buffer("amplitude", torch.from_numpy(amp).to(torch.float64))
        self.register_buffer("weights", torch.from_numpy(cell_area_weights(np.asarray(lat_deg))).to(torch.float64))

    def draw(self, seed):
        g = torch.Generator().manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
        re = torch.randn(self.amplitude.shape, generator=g, dtype=torch.float64)
        im = torch.randn(self.amplitude.shape, generator=g, dtype=torch.float64)
        im[:, 0] = 0.0
        coeffs = torch.complex(re, im) * self.amplitude.cpu()
        field = self.isht.to(torch.float64).cpu()(coeffs)
        return field / area_rms(field, self.weights.cpu())


def _mix(seed, salt):
    z = (int(seed) + 0x9E3779B97F4A7C15 * (salt + 1)) & 0xFFFF_FFFF_FFFF_FFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFF_FFFF_FFFF_FFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFF_FFFF_FFFF_FFFF
    return (z ^ (z >> 31)) & 0x7FFF_FFFF_FFFF_FFFF


def old_correlated_noise(noise, analysis, seeds, channels, amplitudes, limit=None):
    """The old `_ScaledNoise.__call__`: a field per (member, channel) in a Python loop. With
    `limit`, only the first `limit` fields are drawn; returns (deltas, fields drawn)."""
    out = torch.zeros((len(seeds), *analysis.shape), dtype=analysis.dtype, device=analysis.device)
    drawn = 0
    for i, seed in enumerate(seeds):
        for j, (name, amp) in enumerate(sorted(amplitudes.items())):
            if limit is not None and drawn >= limit:
                return out, drawn
            out[i, channels.index(name)] = (amp * noise.draw(_mix(seed, j))).to(out)
            drawn += 1
    return out, drawn


# -- measurements -----------------------------------------------------------------------------


def timed(fn, repeat: int = 1):
    """Best of `repeat` runs: (seconds, the last result)."""
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def precision(lat, nlon, full_isht=None) -> dict:
    """float32 against float64 synthesis of the same white coefficients."""
    out = {}
    for name, spectrum in (("seed_500km", seed_spectrum()), ("matern", matern_spectrum())):
        lo = SphericalNoise(lat, nlon, spectrum)
        hi = SphericalNoise(lat, nlon, spectrum, dtype=torch.float64)
        white = lo.white(range(8))  # float32 normal numbers, exact in float64 too
        w64 = white.double()
        c32 = torch.complex(white[..., 0], white[..., 1] * lo._imaginary) * lo.amplitude
        c64 = torch.complex(w64[..., 0], w64[..., 1] * hi._imaginary) * hi.amplitude
        raw32, raw64 = lo.isht(c32[:, 0]).double(), hi.isht(c64[:, 0])
        rms32, rms64 = area_rms(raw32, lo.weights), area_rms(raw64, hi.weights)
        p32, p64 = lo.synthesize(white).double()[:, 0], hi.synthesize(w64)[:, 0]
        out[name] = {
            "lmax": lo.amplitude.shape[0],
            "field_max_err_over_max": float(((raw32 - raw64).abs().amax((-2, -1)) / raw64.abs().amax((-2, -1))).max()),
            "rms_rel_err": float(((rms32 - rms64).abs() / rms64).max()),
            "rescaled_max_err_over_rms": float((p32 - p64).abs().max()),  # p has unit RMS
            "rescaled_max_err_over_max": float(((p32 - p64).abs().amax((-2, -1)) / p64.abs().amax((-2, -1))).max()),
        }
        L = hi.amplitude.shape[0]
        if name == "seed_500km" and full_isht is not None and L < full_isht.lmax:
            # the tail not synthesised: the same coefficients below L, the rest drawn too
            full = SphericalNoise(lat, nlon, spectrum, dtype=torch.float64, tail=0.0)  # amplitudes only
            assert full.amplitude.shape[0] == full_isht.lmax
            g = torch.Generator().manual_seed(99)
            wf = torch.randn((8, *full.amplitude.shape, 2), generator=g, dtype=torch.float64)
            wf[:, :L, :L] = w64[:, 0]
            cf = torch.complex(wf[..., 0], wf[..., 1] * full._imaginary) * full.amplitude
            rawf = full_isht.to(torch.float64)(cf)
            out[name]["truncated_vs_full_max_err_over_rms"] = float(
                ((raw64 - rawf).abs().amax((-2, -1)) / area_rms(rawf, hi.weights)).max()
            )
    return out


def speed(lat, nlon, members, n_channels, old_fields) -> dict:
    channels = [f"c{i:02d}" for i in range(n_channels)]
    amplitudes = {c: 1.0 + i for i, c in enumerate(channels)}
    analysis = torch.zeros((n_channels, len(lat), nlon))
    seeds = list(range(1000, 1000 + members))
    res = {"block": f"{members} members x {n_channels} channels", "threads": torch.get_num_threads()}
    res["timing"] = (
        "best of 3 (the old loop at grids above 181x360: one run); build: the first in the process, and where "
        "old and new truncate at the same degree (coarse grids) torch-harmonics' own cache serves the old one"
    )

    t_build_new, _ = timed(lambda: SphericalNoise(lat, nlon, seed_spectrum()))  # what the cache saves per block
    new = CorrelatedNoise(channels, lat, nlon, amplitudes)
    new(analysis, seeds[:1])  # builds the shared generator
    t_new, d_new = timed(lambda: new(analysis, seeds), 3)
    repeat_old = 3 if len(lat) * nlon <= 181 * 360 else 1  # the old loop at 0.25 deg takes minutes
    t_build_old, old = timed(lambda: OldSphericalNoise(lat, nlon, seed_spectrum()))
    total = members * n_channels
    limit = None if old_fields is None or old_fields >= total else old_fields
    t_old, (d_old, drawn) = timed(
        lambda: old_correlated_noise(old, analysis, seeds, channels, amplitudes, limit), repeat_old
    )
    t_old_block = t_old * total / drawn
    res["new"] = {"build_s": round(t_build_new, 3), "draw_s": round(t_new, 3)}
    res["old"] = {"build_s": round(t_build_old, 3), "draw_s": round(t_old_block, 3)}
    if drawn < total:
        res["old"]["draw_s_note"] = f"timed on {drawn} of {total} fields, scaled to the block"
    res["ratio_old_over_new_draw"] = round(t_old_block / t_new, 1)
    res["ratio_old_over_new_build_and_draw"] = round((t_build_old + t_old_block) / (t_build_new + t_new), 1)
    # both give fields of the asked amplitudes (different random numbers: a different stream)
    w = torch.from_numpy(cell_area_weights(lat))
    res["new_rms_over_amplitude"] = float((area_rms(d_new, w)[:, 0] / amplitudes[channels[0]]).mean())
    res["old_rms_over_amplitude"] = float((area_rms(d_old[:1], w)[:, 0] / amplitudes[channels[0]]).mean())

    # the bred-vector seed: one z500 field for each of 64 members
    seeder = SphericalNoise(lat, nlon, seed_spectrum())
    t_seed_new, _ = timed(lambda: seeder.fields(range(64)), 3)
    n_old = 64 if limit is None else max(1, min(64, limit))
    t_seed_old, _ = timed(lambda: [old.draw(s) for s in range(n_old)], repeat_old)
    res["bred_seed_64"] = {
        "new_s": round(t_seed_new, 3),
        "old_s": round(t_seed_old * 64 / n_old, 3),
        "ratio_old_over_new": round(t_seed_old * 64 / n_old / t_seed_new, 1),
    }
    return res, old.isht


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--grids", default="33x64,721x1440")
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--channels", type=int, default=21)
    p.add_argument("--old-fields", type=int, default=None, help="time the old loop on this many fields only")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    results = {"torch": torch.__version__, "device": "cpu"}
    for grid in args.grids.split(","):
        nlat, nlon = (int(x) for x in grid.split("x"))
        lat = np.linspace(90, -90, nlat)
        s, full_isht = speed(lat, nlon, args.members, args.channels, args.old_fields)
        results[grid] = {"speed": s, "precision": precision(lat, nlon, full_isht)}
        print(grid, json.dumps(results[grid], indent=1), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
