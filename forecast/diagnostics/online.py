"""Scores kept while the ensemble runs (the engine's `Accumulator` protocol, forecast.ensemble.online).

Each accumulator holds the verification for its leads, (lead, channel, lat, lon), and sees
the members block by block. What it keeps does not grow with the member count:

- `RankCounts`: per point, how many members fell below the verification and how many tied
  with it; the rank histogram (ties split evenly, as `rank_histogram`) and the outlier
  fraction follow exactly at the end.
- `MeanSkill`: member sums and sums of squares per point (float64, Chan's pairwise merge, as
  `EnsembleMoments`); the ensemble-mean RMSE and the spread-skill ratio follow with area
  weights at the end, equal to the offline functions on the same members.

- `SpectraSums`: the member sum of every field and of every member's power spectrum; the
  member-mean, ensemble-mean and perturbation spectra follow (the last by DESIGN §3.3's identity).
- `EFICounts`: per point and M-climate level, how many members are ≤ the quantile; the EFI
  follows with the same exact integral as `efi`.
- `TiledCRPS`: exact CRPS. Its spread term Σ_i Σ_j |x_i − x_j| pairs members of different
  blocks, and no summary smaller than the members themselves gives it exactly, so each
  block's members are spilled, cut in spatial tiles (bands of latitude rows), to a scratch
  Zarr array; at the end each tile's members are read together (memory: members × one tile)
  and scored with the sorted form, and the scratch is deleted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
import zarr

from forecast.diagnostics.extremes import efi_from_counts
from forecast.diagnostics.scores import _crps_sorted
from forecast.diagnostics.spectra import _power, default_lmax
from forecast.ensemble.online import EnsembleMoments


class RankCounts:
    name = "rank_counts"

    def __init__(self, verification: np.ndarray):
        self.verification = torch.as_tensor(np.asarray(verification, np.float32))
        shape = self.verification.shape
        self.below = torch.zeros(shape, dtype=torch.int64)
        self.ties = torch.zeros(shape, dtype=torch.int64)
        self.members = torch.zeros(shape[0], dtype=torch.int64)

    def update(self, lead_index: int, members: torch.Tensor) -> None:
        x = members.detach().cpu().float()
        y = self.verification[lead_index][None]
        self.below[lead_index] += (x < y).sum(0)
        self.ties[lead_index] += (x == y).sum(0)
        self.members[lead_index] += x.shape[0]

    def merge(self, other: RankCounts) -> None:
        self.below += other.below
        self.ties += other.ties
        self.members += other.members

    def state(self) -> dict[str, torch.Tensor]:
        return {"below": self.below, "ties": self.ties, "members": self.members}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            setattr(self, key, value.clone())

    def histogram(self) -> np.ndarray:
        """(lead, channel, rank) counts over the grid, ties split evenly; m + 1 ranks."""
        m = int(self.members.max())
        if not (self.members == m).all():
            raise ValueError(f"leads saw different member counts {self.members.tolist()}: the run is not complete")
        below, ties = self.below.numpy(), self.ties.numpy()
        ok = ~np.isnan(self.verification.numpy())
        share = np.where(ok, 1.0 / (ties + 1.0), 0.0)
        # a difference array over ranks: +share at `below`, -share after `below + ties`
        diff = np.zeros((*below.shape, m + 2))
        np.put_along_axis(diff, below[..., None], share[..., None], axis=-1)
        idx = (below + ties + 1)[..., None]
        np.put_along_axis(diff, idx, np.take_along_axis(diff, idx, -1) - share[..., None], axis=-1)
        per_point = np.cumsum(diff, axis=-1)[..., : m + 1]
        return per_point.sum(axis=(-3, -2))

    def result(self) -> dict:
        hist = self.histogram()
        m = hist.shape[-1] - 1
        outliers = (hist[..., 0] + hist[..., -1]) / hist.sum(-1)
        return {
            "rank_histogram": (("lead_time", "channel", "rank"), hist, {"ties": "split evenly", "bins": m + 1}),
            "outlier_fraction": (("lead_time", "channel"), outliers, {"expected": 2.0 / (m + 1)}),
        }


class MeanSkill:
    name = "mean_skill"

    def __init__(self, verification: np.ndarray, area_weights: np.ndarray):
        self.verification = np.asarray(verification, np.float64)
        self.weights = np.asarray(area_weights, np.float64)  # per latitude row
        leads, *shape = self.verification.shape
        self.moments = EnsembleMoments(leads, shape)

    def update(self, lead_index: int, members: torch.Tensor) -> None:
        self.moments.update(lead_index, members)

    def merge(self, other: MeanSkill) -> None:
        self.moments.merge(other.moments)

    def state(self) -> dict[str, torch.Tensor]:
        return self.moments.state()

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.moments.load_state(state)

    def result(self) -> dict:
        mean = self.moments.mean.numpy()
        n = self.moments.count.numpy()[:, None, None, None]
        variance = self.moments.m2.numpy() / (n - 1)
        err2 = (mean - self.verification) ** 2
        rmse = np.sqrt(_area_mean(err2, self.weights))
        m = n[:, 0, 0, 0][:, None]
        spread = np.sqrt(_area_mean(np.where(np.isnan(err2), np.nan, variance), self.weights))
        with np.errstate(divide="ignore", invalid="ignore"):  # a perfect mean (lead 0 of centred pairs): inf
            ratio = np.sqrt((m + 1) / m) * spread / rmse
        return {
            "ensemble_mean_rmse": (("lead_time", "channel"), rmse, {"estimator": "sqrt of the area-weighted mean"}),
            "spread_skill_ratio": (
                ("lead_time", "channel"),
                ratio,
                {"estimator": "sqrt((m+1)/m) sqrt(<s2>)/sqrt(<err2>)"},
            ),
        }


def _area_mean(field: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(..., lat, lon) -> (...), cell-area weighted, NaN skipped."""
    w = np.broadcast_to(weights[:, None], field.shape[-2:])
    ok = ~np.isnan(field)
    return (np.where(ok, field, 0.0) * w).sum((-2, -1)) / (ok * w).sum((-2, -1))


class SpectraSums:
    """Member sums of fields and of spectra, per lead: the HENS spectra without the members."""

    name = "spectra"

    def __init__(self, verification: np.ndarray, grid: str = "equiangular", lmax: int | None = None):
        self.verification = np.asarray(verification, np.float64)
        leads, channels, nlat, nlon = self.verification.shape
        self.grid, self.lmax = grid, lmax or default_lmax(nlat, grid)
        self.field_sum = torch.zeros((leads, channels, nlat, nlon), dtype=torch.float64)
        self.power_sum = torch.zeros((leads, channels, self.lmax), dtype=torch.float64)
        self.count = torch.zeros(leads, dtype=torch.float64)

    def update(self, lead_index: int, members: torch.Tensor) -> None:
        x = members.detach().to("cpu", torch.float64)
        self.field_sum[lead_index] += x.sum(0)
        self.power_sum[lead_index] += torch.from_numpy(_power(x.numpy(), self.lmax, self.grid).sum(0))
        self.count[lead_index] += x.shape[0]

    def merge(self, other: SpectraSums) -> None:
        self.field_sum += other.field_sum
        self.power_sum += other.power_sum
        self.count += other.count

    def state(self) -> dict[str, torch.Tensor]:
        return {"field_sum": self.field_sum, "power_sum": self.power_sum, "count": self.count}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            setattr(self, key, value.clone())

    def result(self) -> dict:
        n = self.count.numpy()[:, None, None]
        member_mean = self.power_sum.numpy() / n
        mean_field = self.field_sum.numpy() / n[..., None]
        ensemble_mean = _power(mean_field, self.lmax, self.grid)
        dims = ("lead_time", "channel", "l")
        verification = _power(np.nan_to_num(self.verification), self.lmax, self.grid)
        verification[np.isnan(self.verification).any((-2, -1))] = np.nan
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


class EFICounts:
    """Members ≤ each M-climate quantile, per lead with a climate, channel and point."""

    name = "efi_counts"

    def __init__(self, climate: np.ndarray, lead_map: dict[int, int], eps: float = -0.1):
        """climate (climate lead, channel, quantile, lat, lon); lead_map: output lead index ->
        climate lead index (leads without an M-climate are skipped)."""
        self.climate = torch.as_tensor(np.asarray(climate, np.float32))
        self.lead_map, self.eps = dict(lead_map), eps
        self.below = torch.zeros(self.climate.shape, dtype=torch.int32)
        self.count = torch.zeros(self.climate.shape[0], dtype=torch.int64)

    def update(self, lead_index: int, members: torch.Tensor) -> None:
        if lead_index not in self.lead_map:
            return
        k = self.lead_map[lead_index]
        x = members.detach().cpu().float()  # (m, channel, lat, lon)
        q = self.climate[k]  # (channel, quantile, lat, lon)
        self.below[k] += (x[:, :, None] <= q[None]).sum(0, dtype=torch.int32)
        self.count[k] += x.shape[0]

    def merge(self, other: EFICounts) -> None:
        self.below += other.below
        self.count += other.count

    def state(self) -> dict[str, torch.Tensor]:
        return {"below": self.below, "count": self.count}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            setattr(self, key, value.clone())

    def result(self) -> dict:
        n_out = max(self.lead_map) + 1 if self.lead_map else 0
        clim = np.moveaxis(self.climate.numpy(), 2, -1)  # (lead, channel, lat, lon, quantile)
        below = np.moveaxis(self.below.numpy(), 2, -1)
        m = np.broadcast_to(self.count.numpy()[:, None, None, None], below.shape[:-1])
        values = efi_from_counts(clim, below, m, self.eps)
        out = np.full((n_out, *values.shape[1:]), np.nan)
        for lead_index, k in self.lead_map.items():
            out[lead_index] = values[k]
        return {"efi": (("lead_time", "channel", "lat", "lon"), out, {"estimator": "exact integral", "eps": self.eps})}


class TiledCRPS:
    """Exact CRPS of a run that may not keep its members (see the module's docstring)."""

    name = "crps"

    def __init__(
        self,
        verification: np.ndarray,
        area_weights: np.ndarray,
        members: int,
        scratch: str,
        member_chunk: int,
        tile_rows: int = 8,
        estimator: str = "fair",
    ):
        """`member_chunk` divides every block's start and size (the gcd of the block size and
        the members per checkpoint)."""
        self.verification = np.asarray(verification, np.float64)
        self.weights = np.asarray(area_weights, np.float64)
        self.members, self.scratch, self.estimator = members, str(scratch), estimator
        self.member_chunk, self.tile_rows = member_chunk, tile_rows
        self.first = 0  # the block's first member, set by `begin_block`
        self.count = torch.zeros(self.verification.shape[0], dtype=torch.float64)
        self._array = None

    def array(self) -> zarr.Array:
        if self._array is None:
            leads, channels, nlat, nlon = self.verification.shape
            try:
                self._array = zarr.open_array(self.scratch, mode="r+")
                return self._array
            except (FileNotFoundError, zarr.errors.ArrayNotFoundError):
                pass
            self._array = zarr.create_array(
                self.scratch,
                shape=(leads, self.members, channels, nlat, nlon),
                # one chunk per (lead, member group, tile): every block starts and ends on a
                # group boundary, so each block writes only its own objects
                chunks=(1, self.member_chunk, channels, self.tile_rows, nlon),
                dtype="float32",
                fill_value=np.nan,
                compressors=None,
            )
        return self._array

    def begin_block(self, first_member: int) -> None:
        if first_member % self.member_chunk:
            raise ValueError(f"a block starts at member {first_member}, not on a {self.member_chunk}-member boundary")
        self.first = first_member

    def update(self, lead_index: int, members: torch.Tensor) -> None:
        x = members.detach().cpu().float().numpy()
        self.array()[lead_index, self.first : self.first + x.shape[0]] = x
        self.count[lead_index] += x.shape[0]

    def merge(self, other: TiledCRPS) -> None:
        self.count += other.count

    def state(self) -> dict[str, torch.Tensor]:
        return {"count": self.count}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            setattr(self, key, value.clone())

    def result(self) -> dict:
        leads, channels, nlat, nlon = self.verification.shape
        if not (self.count == self.members).all():  # the scratch holds exactly the members counted in
            raise ValueError(f"CRPS: members spilled per lead {self.count.tolist()}, expected {self.members} each")
        arr = self.array()
        crps_map = np.full(self.verification.shape, np.nan)
        for k in range(leads):
            for lo in range(0, nlat, self.tile_rows):
                hi = min(lo + self.tile_rows, nlat)
                tile = np.asarray(arr[k, :, :, lo:hi])  # all members of the tile together
                crps_map[k, :, lo:hi] = _crps_sorted(
                    np.moveaxis(tile, 0, -1), self.verification[k, :, lo:hi], self.estimator, 0.95
                )
        return {
            "crps_map": (("lead_time", "channel", "lat", "lon"), crps_map, {"crps_estimator": self.estimator}),
            "crps": (("lead_time", "channel"), _area_mean(crps_map, self.weights), {"crps_estimator": self.estimator}),
        }

    def close(self) -> None:
        """Delete the scratch members (after the results are written)."""
        shutil.rmtree(self.scratch, ignore_errors=True)
        if Path(self.scratch).exists():
            raise OSError(f"{self.scratch}: could not remove the CRPS scratch members")
