"""Scores kept while the ensemble runs (the engine's `Accumulator` protocol, forecast.ensemble.online).

Each accumulator is a recipe for the state of one lead, fed block by block; the verification
of a lead (the archive's analysis at its valid time) is read when that lead is updated or
scored (`LeadVerification`), never for all leads at once. What a state holds does not grow
with the member count:

- `RankCounts`: per point, how many members fell below the verification and how many tied
  with it; the rank histogram (ties split evenly, as `rank_histogram`, stored on the
  normalised rank as `normalised_rank_histogram`) and the outlier fraction follow exactly.
- `MeanSkill`: no state of its own; it reads the run's `EnsembleMoments` (count, mean and
  M2 per point, float64, Chan's pairwise update), and the ensemble-mean RMSE and the
  spread-skill ratio follow with area weights, equal to the offline functions on the same
  members.
- `SpectraSums`: the member sum of every member's power spectrum, and the ensemble mean read
  from the moments; the member-mean, ensemble-mean and perturbation spectra follow (the last
  by DESIGN §3.3's identity).
- `EFIWeights`: the EFI is linear in F(p_k), the fraction of members ≤ each M-climate
  quantile (F linear between levels), so EFI = (2/π)(Σ_j J1_j + Σ_k c_k·below_k / m) with
  constant c_k: one float64 sum per point replaces 101 counts per point. The climate is read
  one latitude tile of one lead at a time.
- `TiledCRPS`: exact CRPS. Its spread term Σ_i Σ_j |x_i − x_j| pairs members of different
  blocks, and no summary smaller than the members themselves gives it exactly, so each
  block's members are spilled, cut in spatial tiles (bands of latitude rows), to a scratch
  Zarr array per lead; when a lead has every block, each tile's members are read together
  (memory: members × one tile) and scored with the sorted form, and that lead's scratch is
  deleted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
import xarray as xr
import zarr

from forecast.diagnostics.extremes import interval_integrals
from forecast.diagnostics.scores import (
    RANK_BINS,
    RANK_COORD_ATTRS,
    _crps_sorted,
    _rank_sums,
    normalised_rank_histogram,
)
from forecast.diagnostics.spectra import _power, _transform, default_lmax
from forecast.ensemble.online import EnsembleMoments, Result


class LeadVerification:
    """The archive's analysis (channel, lat, lon) at one lead's valid time, cut to the
    forecast's channels and box, NaN where the archive does not reach; the last lead read is
    kept, so every accumulator of one (block, lead) shares one read."""

    def __init__(self, archive: str, valid_times: np.ndarray, channels: list[str], lat: np.ndarray, lon: np.ndarray):
        self.archive, self.valid_times = str(archive), np.asarray(valid_times)
        self.channels, self.lat, self.lon = list(channels), np.asarray(lat), np.asarray(lon)
        self._cached: tuple[int, np.ndarray] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.channels), len(self.lat), len(self.lon)

    def __call__(self, lead_index: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != lead_index:
            from forecast.diagnostics.verify import verification

            truth = verification(self.archive, self.valid_times[[lead_index]], self.channels, self.lat, self.lon)
            self._cached = (lead_index, truth[0])
        return self._cached[1]


class ArrayVerification:
    """A verification already in memory, (lead, channel, lat, lon): small grids, notebooks, tests."""

    def __init__(self, values: np.ndarray):
        self.values = np.asarray(values)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.values.shape[1:])

    def __call__(self, lead_index: int) -> np.ndarray:
        return self.values[lead_index]


def _scalar(value: float, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(value, dtype=dtype)


class RankCounts:
    name = "rank_counts"

    def __init__(self, truth: LeadVerification):
        self.truth = truth

    def empty(self) -> dict[str, torch.Tensor]:
        shape = self.truth.shape
        return {
            "below": torch.zeros(shape, dtype=torch.int32),
            "ties": torch.zeros(shape, dtype=torch.int32),
            "members": _scalar(0, torch.int64),
        }

    def update(self, state, lead_index: int, members: torch.Tensor, first: int = 0) -> None:
        x = members.detach().cpu().float()
        y = torch.from_numpy(self.truth(lead_index))[None]
        state["below"] += (x < y).sum(0, dtype=torch.int32)
        state["ties"] += (x == y).sum(0, dtype=torch.int32)
        state["members"] += x.shape[0]

    def histogram(self, state, lead_index: int) -> np.ndarray:
        """(channel, rank) counts over the grid, ties split evenly; m + 1 ranks. The same sum
        as `rank_histogram` (`_rank_sums`: a bincount, tied points in batches), so no
        (points, m + 1) array."""
        m = int(state["members"])
        ok = ~np.isnan(self.truth(lead_index))
        ties = np.where(ok, state["ties"].numpy(), np.nan)
        return _rank_sums(state["below"].numpy(), ties, m, n_dims=2)

    def result(self, state, lead_index: int) -> Result:
        hist = self.histogram(state, lead_index)
        m = hist.shape[-1] - 1
        with np.errstate(invalid="ignore"):  # a lead with no verification at all: NaN
            outliers = (hist[..., 0] + hist[..., -1]) / hist.sum(-1)
        normalised = normalised_rank_histogram(xr.DataArray(hist, dims=("channel", "rank")))
        return {
            "rank_histogram": (("channel", "rank"), normalised.values, dict(normalised.attrs)),
            "outlier_fraction": (("channel",), outliers, {"expected": 2.0 / (m + 1)}),
        }

    def fixed(self) -> Result:
        return {"rank": (("rank",), (np.arange(RANK_BINS) + 0.5) / RANK_BINS, dict(RANK_COORD_ATTRS))}


def _area_mean(field: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(..., lat, lon) -> (...), cell-area weighted, NaN skipped; one field at a time, so the
    temporaries are one field's (at 0.25°, a lead's 21 float64 fields are 0.17 GB)."""
    w = np.broadcast_to(weights[:, None], field.shape[-2:])
    flat = field.reshape(-1, *field.shape[-2:])
    out = np.empty(len(flat))
    for i, f in enumerate(flat):
        ok = ~np.isnan(f)
        with np.errstate(invalid="ignore"):  # no valid point: NaN
            out[i] = (np.where(ok, f, 0.0) * w).sum((-2, -1)) / (ok * w).sum((-2, -1))
    return out.reshape(field.shape[:-2])


class MeanSkill:
    """The ensemble-mean RMSE and the spread-skill ratio from the run's ensemble moments
    (`reads` them: no state of its own)."""

    name = "mean_skill"
    reads = (EnsembleMoments.name,)

    def __init__(self, truth: LeadVerification, area_weights: np.ndarray):
        self.truth = truth
        self.weights = np.asarray(area_weights, np.float64)  # per latitude row

    def empty(self) -> dict[str, torch.Tensor]:
        return {}

    def update(self, state, lead_index: int, members: torch.Tensor, first: int = 0) -> None:
        pass  # the moments it reads are updated by their own accumulator

    def result(self, state, lead_index: int) -> Result:
        truth = self.truth(lead_index)
        m = float(state["moments.count"])
        mean, m2 = state["moments.mean"], state["moments.m2"]
        rmse, spread = np.empty(len(truth)), np.empty(len(truth))
        for c in range(len(truth)):  # a channel at a time: a few fields in memory, not a few leads
            y = truth[c].astype(np.float64)
            err2 = (mean[c].numpy() - y) ** 2
            variance = np.where(np.isnan(err2), np.nan, m2[c].numpy() / (m - 1))
            rmse[c] = np.sqrt(_area_mean(err2, self.weights))
            spread[c] = np.sqrt(_area_mean(variance, self.weights))
        with np.errstate(divide="ignore", invalid="ignore"):  # a perfect mean (lead 0 of centred pairs): inf
            ratio = np.sqrt((m + 1) / m) * spread / rmse
        return {
            "ensemble_mean_rmse": (("channel",), rmse, {"estimator": "sqrt of the area-weighted mean"}),
            "spread_skill_ratio": (("channel",), ratio, {"estimator": "sqrt((m+1)/m) sqrt(<s2>)/sqrt(<err2>)"}),
        }


def ensemble_spread(ds: xr.Dataset) -> xr.DataArray:
    """The spread s (root of the area-mean ensemble variance) that `MeanSkill` stored as its
    ratio, recovered per init time: s = ratio · e · sqrt(m/(m+1)) from `spread_skill_ratio`,
    `ensemble_mean_rmse` (e) and `member_count` (m)."""
    m = ds.member_count.astype(np.float64)
    return ds.spread_skill_ratio * ds.ensemble_mean_rmse * np.sqrt(m / (m + 1))


def pooled_spread_skill_ratio(ds: xr.Dataset, dim: str = "init_time") -> xr.DataArray:
    """`MeanSkill`'s ratio pooled over `dim` (the init times) from its stored per-init results:
    sqrt((m̄+1)/m̄) sqrt(<s²>) / sqrt(<e²>) with the means over `dim` taken before the roots
    (NaN skipped), s from `ensemble_spread`. The calibration's "ssr" objective, the demo's
    spread target and the science benchmark's inflation factors use it."""
    m_bar = ds.member_count.astype(np.float64).mean(dim)
    variance, mse = ensemble_spread(ds) ** 2, ds.ensemble_mean_rmse**2
    return np.sqrt((m_bar + 1) / m_bar) * np.sqrt(variance.mean(dim) / mse.mean(dim))


class SpectraSums:
    """The member sum of spectra, and the ensemble mean it `reads` from the run's moments:
    the HENS spectra without the members."""

    name = "spectra"
    reads = (EnsembleMoments.name,)

    def __init__(self, truth: LeadVerification, grid: str = "equiangular", lmax: int | None = None):
        self.truth = truth
        self.grid, self.lmax = grid, lmax or default_lmax(truth.shape[1], grid)

    def prepare(self) -> None:
        """Build the transform's Legendre tables (0.7 GB at 0.25°, twice that while they are
        built) before a run's fields are in memory rather than at the first update; the engine
        calls it only when it has blocks to run, so a finished run's rerun never builds them."""
        _transform(self.truth.shape[1], self.truth.shape[2], self.lmax, self.grid)

    def empty(self) -> dict[str, torch.Tensor]:
        return {"power_sum": torch.zeros((self.truth.shape[0], self.lmax), dtype=torch.float64)}

    def update(self, state, lead_index: int, members: torch.Tensor, first: int = 0) -> None:
        x = members.detach().cpu().numpy()  # `_power` takes float64 a batch of fields at a time
        state["power_sum"] += torch.from_numpy(_power(x, self.lmax, self.grid).sum(0))

    def result(self, state, lead_index: int) -> Result:
        n = float(state["moments.count"])
        member_mean = state["power_sum"].numpy() / n
        ensemble_mean = _power(state["moments.mean"].numpy(), self.lmax, self.grid)
        y = self.truth(lead_index).astype(np.float64)
        verification = _power(np.nan_to_num(y), self.lmax, self.grid)
        verification[np.isnan(y).any((-2, -1))] = np.nan
        dims = ("channel", "l")
        return {
            "member_mean_spectrum": (dims, member_mean, {"estimator": "mean over members of P(x_k)"}),
            "ensemble_mean_spectrum": (dims, ensemble_mean, {"estimator": "P(mean over members)"}),
            "perturbation_spectrum": (
                dims,
                member_mean - ensemble_mean,
                {"estimator": "mean_k P(x_k) - P(x_mean) = mean_k P(x_k - x_mean) (DESIGN 3.3)"},
            ),
            "verification_spectrum": (dims, verification, {"estimator": "P(analysis)"}),
        }


def efi_coefficients(levels: int) -> tuple[np.ndarray, float]:
    """(c_k, Σ_j J1_j) with EFI = (2/π)(Σ_j J1_j + Σ_k c_k F(p_k)) for F linear between the
    `levels` equally spaced quantile levels 0..1: the same integral as `efi_from_counts`
    (eps ≤ 0), rearranged by the F(p_k) it is linear in."""
    p, j0, j1 = interval_integrals(levels)
    g = (p[:-1] * j0 - j1) / np.diff(p)  # the slope's coefficient on each interval
    c = np.zeros(levels)
    c[1:] += g
    c[:-1] -= g + j0
    return c, float(j1.sum())


class EFIWeights:
    """The EFI (eps ≤ 0, as `efi`'s default) without per-quantile counts: per point the float64
    sum Σ_k c_k · (members ≤ the M-climate's k-th quantile), the climate read per tile."""

    name = "efi"

    def __init__(self, climate: xr.DataArray, lead_map: dict[int, int], tile_rows: int = 32):
        """climate (climate lead, channel, quantile, lat, lon), lazy or not, cut to the
        output's channels and box; lead_map: output lead index -> climate lead index (leads
        without an M-climate give NaN)."""
        self.climate, self.lead_map, self.tile_rows = climate, dict(lead_map), tile_rows
        _, channels, levels, nlat, nlon = climate.shape
        self.shape = (channels, nlat, nlon)
        self.c, self.j1 = efi_coefficients(levels)

    def empty(self) -> dict[str, torch.Tensor]:
        return {"weighted": torch.zeros(self.shape, dtype=torch.float64), "count": _scalar(0.0)}

    def update(self, state, lead_index: int, members: torch.Tensor, first: int = 0) -> None:
        if lead_index not in self.lead_map:
            return
        k = self.lead_map[lead_index]
        x = members.detach().cpu().float().numpy()  # (m, channel, lat, lon)
        c = self.c[:, None, None]
        out = state["weighted"].numpy()
        for lo in range(0, self.shape[1], self.tile_rows):
            hi = min(lo + self.tile_rows, self.shape[1])
            q = np.asarray(self.climate[k, :, :, lo:hi], np.float32)  # (channel, quantile, rows, lon)
            below = (x[:, :, None, lo:hi] <= q[None]).sum(0)  # (channel, quantile, rows, lon)
            w = (below * c).sum(1)
            w[np.isnan(q).any(1)] = np.nan  # no climate at the point: NaN, as `efi`
            out[:, lo:hi] += w
        state["count"] += x.shape[0]

    def result(self, state, lead_index: int) -> Result:
        m = float(state["count"])
        if lead_index not in self.lead_map or m == 0:
            values = np.full(self.shape, np.nan)
        else:
            values = (2.0 / np.pi) * (self.j1 + state["weighted"].numpy() / m)
        return {"efi": (("channel", "lat", "lon"), values, {"estimator": "exact integral", "eps": -0.1})}


class TiledCRPS:
    """Exact CRPS of a run that may not keep its members (see the module's docstring)."""

    name = "crps"

    def __init__(
        self,
        truth: LeadVerification,
        area_weights: np.ndarray,
        members: int,
        scratch: str,
        member_chunk: int,
        tile_rows: int = 8,
        estimator: str = "fair",
    ):
        """`member_chunk` divides every block's start and size (the gcd of the block size and
        the members per checkpoint)."""
        self.truth = truth
        self.weights = np.asarray(area_weights, np.float64)
        self.members, self.scratch, self.estimator = members, str(scratch).rstrip("/"), estimator
        self.member_chunk, self.tile_rows = member_chunk, tile_rows

    def _lead_path(self, lead_index: int) -> str:
        return f"{self.scratch}/lead{lead_index:04d}"

    def _array(self, lead_index: int) -> zarr.Array:
        """The lead's scratch members; called under the lead's lock, so one process creates it."""
        path = self._lead_path(lead_index)
        try:
            return zarr.open_array(path, mode="r+")
        except (FileNotFoundError, zarr.errors.ArrayNotFoundError, zarr.errors.NodeTypeValidationError):
            pass
        channels, nlat, nlon = self.truth.shape
        return zarr.create_array(
            path,
            shape=(self.members, channels, nlat, nlon),
            # one chunk per (member group, tile): every block starts and ends on a group
            # boundary, so each block writes only its own objects
            chunks=(self.member_chunk, channels, self.tile_rows, nlon),
            dtype="float32",
            fill_value=np.nan,
            compressors=None,
            overwrite=True,
        )

    def empty(self) -> dict[str, torch.Tensor]:
        return {"count": _scalar(0.0)}

    def update(self, state, lead_index: int, members: torch.Tensor, first: int = 0) -> None:
        if first % self.member_chunk:
            raise ValueError(f"a block starts at member {first}, not on a {self.member_chunk}-member boundary")
        x = members.detach().cpu().float().numpy()
        self._array(lead_index)[first : first + x.shape[0]] = x
        state["count"] += x.shape[0]

    def result(self, state, lead_index: int) -> Result:
        if int(state["count"]) != self.members:  # the scratch holds exactly the members counted in
            spilled = int(state["count"])
            raise ValueError(f"CRPS: {spilled} members spilled at lead {lead_index}, expected {self.members}")
        arr = self._array(lead_index)
        y = self.truth(lead_index).astype(np.float64)
        crps_map = np.full(y.shape, np.nan)
        for lo in range(0, y.shape[1], self.tile_rows):
            hi = min(lo + self.tile_rows, y.shape[1])
            tile = np.asarray(arr[:, :, lo:hi])  # all members of the tile together
            crps_map[:, lo:hi] = _crps_sorted(np.moveaxis(tile, 0, -1), y[:, lo:hi], self.estimator, 0.95)
        return {
            "crps_map": (("channel", "lat", "lon"), crps_map, {"crps_estimator": self.estimator}),
            "crps": (("channel",), _area_mean(crps_map, self.weights), {"crps_estimator": self.estimator}),
        }

    def release(self, lead_index: int) -> None:
        """The lead's results are on disk: its scratch members are no longer needed."""
        shutil.rmtree(self._lead_path(lead_index), ignore_errors=True)

    def close(self) -> None:
        """Every lead is scored: remove the (now empty) scratch group."""
        shutil.rmtree(self.scratch, ignore_errors=True)
        if Path(self.scratch).exists():
            raise OSError(f"{self.scratch}: could not remove the CRPS scratch members")
