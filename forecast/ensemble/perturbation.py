"""Initial-condition perturbations behind one small protocol (DESIGN §3.1).

A perturbation maps the analysis at the init time and one seed per perturbation index to
perturbation fields (deltas) valid at the init time; `members.compose` turns them into
centred ± pairs. Imports torch and torch-harmonics only: it runs on a bare GPU box.

Three kinds:
- `CorrelatedNoise`: spherical noise with the HENS seed spectrum σ_l ∝ exp(−k_T l(l+1)/2),
  k_T = (L/R)²/2, L = 500 km, on chosen channels;
- `GaussianRandomField`: Matérn-like spectrum σ_l ∝ (l(l+1)/R² + τ²)^(−α/2) (the form of
  torch-harmonics' `GaussianRandomFieldS2`, which assumes nlon = 2·nlat and so does not fit the
  ERA5 grid with poles);
- `BredVectors`: hemispheric-centred bred vectors, exactly DESIGN §3.1.

Every field is drawn from its own `torch.Generator` seeded with that perturbation's seed, so
members of one batch are independent (a known fault of public versions is one generator for
the whole batch) and any member can be redrawn alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch_harmonics import InverseRealSHT

from forecast.grid import cell_area_weights

EARTH_RADIUS_M = 6_371_000.0
SEED_LENGTH_SCALE_M = 500_000.0
BRED_FRACTION = 0.35  # of the package's 48-hour RMSE
BREEDING_CYCLES = 3
HEMISPHERE_EDGE_DEG = 20.0


@runtime_checkable
class Perturbation(Protocol):
    """`perturbation(analysis, seeds) -> deltas`: analysis (channel, lat, lon) at the init
    time; one int seed per perturbation; deltas (len(seeds), channel, lat, lon)."""

    def __call__(self, analysis: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor: ...


def area_rms(field: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Area-weighted RMS over the last two dims (lat, lon); `weights` per latitude row."""
    w = weights.to(field.dtype)
    return torch.sqrt((field.square().mean(-1) * w).sum(-1) / w.sum())


class SphericalNoise(torch.nn.Module):
    """Gaussian fields on the sphere with an isotropic amplitude spectrum `sigma(l)`: i.i.d.
    complex normal coefficients for m ≥ 1 (real for m = 0) times sigma(l), inverse SHT."""

    def __init__(
        self, lat_deg: np.ndarray, nlon: int, sigma: Callable[[np.ndarray], np.ndarray], grid: str = "equiangular"
    ):
        super().__init__()
        nlat = len(lat_deg)
        # Explicit truncation (the default changed in torch-harmonics 0.9 to (nlat + 1) // 2,
        # which would drop half the degrees): every degree the grid resolves, as the model's.
        modes = min(nlat, nlon // 2)
        self.isht = InverseRealSHT(nlat, nlon, lmax=modes, mmax=modes, grid=grid, norm="ortho")
        lmax, mmax = self.isht.lmax, self.isht.mmax
        ell = np.arange(lmax, dtype=np.float64)
        amp = np.tril(np.repeat(sigma(ell)[:, None], mmax, axis=1))
        amp[0, 0] = 0.0  # no global-mean offset: a perturbation, not a bias
        self.register_buffer("amplitude", torch.from_numpy(amp).to(torch.float64))
        self.register_buffer("weights", torch.from_numpy(cell_area_weights(np.asarray(lat_deg))).to(torch.float64))
        self.shape = (nlat, nlon)

    def draw(self, seed: int) -> torch.Tensor:
        """One field, (lat, lon) float64, unit area-weighted RMS."""
        g = torch.Generator().manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
        re = torch.randn(self.amplitude.shape, generator=g, dtype=torch.float64)
        im = torch.randn(self.amplitude.shape, generator=g, dtype=torch.float64)
        im[:, 0] = 0.0
        coeffs = torch.complex(re, im) * self.amplitude.cpu()
        field = self.isht.to(torch.float64).cpu()(coeffs)
        return field / area_rms(field, self.weights.cpu())


def seed_spectrum(length_scale_m: float = SEED_LENGTH_SCALE_M) -> Callable[[np.ndarray], np.ndarray]:
    """σ_l = exp(−k_T l(l+1)/2), k_T = (L/R_earth)²/2 (DESIGN §3.1)."""
    k_t = (length_scale_m / EARTH_RADIUS_M) ** 2 / 2
    return lambda ell: np.exp(-k_t * ell * (ell + 1) / 2)


def matern_spectrum(alpha: float = 2.0, tau: float = 3.0) -> Callable[[np.ndarray], np.ndarray]:
    """σ_l = (l(l+1) + τ²)^(−α/2) on the unit sphere (torch-harmonics' convention)."""
    if alpha <= 1.0:
        raise ValueError(f"alpha must be > 1 for a field of finite variance, got {alpha}")
    return lambda ell: (ell * (ell + 1) + tau**2) ** (-alpha / 2)


class _ScaledNoise:
    """Noise fields of a given spectrum on chosen channels, each scaled to that channel's
    amplitude (area-weighted RMS, physical units); other channels untouched."""

    def __init__(self, channels: Sequence[str], lat_deg: np.ndarray, nlon: int, amplitudes: dict[str, float], spectrum):
        unknown = set(amplitudes) - set(channels)
        if unknown:
            raise ValueError(f"perturbation amplitudes name channels that are not in the data: {sorted(unknown)}")
        self.channels = list(channels)
        self.amplitudes = dict(amplitudes)
        self.noise = SphericalNoise(lat_deg, nlon, spectrum)

    def __call__(self, analysis: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        out = torch.zeros((len(seeds), *analysis.shape), dtype=analysis.dtype, device=analysis.device)
        for i, seed in enumerate(seeds):
            for j, (name, amp) in enumerate(sorted(self.amplitudes.items())):
                # A distinct stream per (perturbation, channel): independent channels.
                field = self.noise.draw(_mix(seed, j))
                out[i, self.channels.index(name)] = (amp * field).to(out)
        return out


class CorrelatedNoise(_ScaledNoise):
    """The HENS seed field (500 km correlation) on the given channels."""

    def __init__(
        self, channels, lat_deg, nlon, amplitudes: dict[str, float], length_scale_m: float = SEED_LENGTH_SCALE_M
    ):
        super().__init__(channels, lat_deg, nlon, amplitudes, seed_spectrum(length_scale_m))


class GaussianRandomField(_ScaledNoise):
    """Matérn-like Gaussian random fields on the given channels."""

    def __init__(self, channels, lat_deg, nlon, amplitudes: dict[str, float], alpha: float = 2.0, tau: float = 3.0):
        super().__init__(channels, lat_deg, nlon, amplitudes, matern_spectrum(alpha, tau))


def _mix(seed: int, salt: int) -> int:
    """A well-separated 63-bit seed from (seed, salt) (splitmix64 finaliser)."""
    z = (int(seed) + 0x9E3779B97F4A7C15 * (salt + 1)) & 0xFFFF_FFFF_FFFF_FFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFF_FFFF_FFFF_FFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFF_FFFF_FFFF_FFFF
    return (z ^ (z >> 31)) & 0x7FFF_FFFF_FFFF_FFFF


def band_rms(
    field: torch.Tensor, lat_deg: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(north, south): area-weighted RMS over 20–90°N and 20–90°S of (..., lat, lon), float64.
    `weights` per latitude row (default: cell-area weights of `lat_deg`)."""
    if weights is None:
        weights = torch.from_numpy(cell_area_weights(lat_deg.cpu().numpy()))
    north, south = lat_deg >= HEMISPHERE_EDGE_DEG, lat_deg <= -HEMISPHERE_EDGE_DEG
    d = field.to(torch.float64)
    return area_rms(d[..., north, :], weights[north]), area_rms(d[..., south, :], weights[south])


def hemispheric_rescale(
    diff: torch.Tensor, lat_deg: torch.Tensor, weights: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Rescale (batch, channel, lat, lon) so each channel's area-weighted RMS over 20–90°N and
    over 20–90°S equals `target` (channel,). Rows between ±20° are divided by a norm
    interpolated linearly in latitude between the two band norms. A band whose norm is zero
    is left alone (its norm is taken as the target, a factor of 1)."""
    t = target.view(1, -1).to(torch.float64)
    d = diff.to(torch.float64)
    nn_, ns = (torch.where(rms > 0, rms, t.expand_as(rms)) for rms in band_rms(d, lat_deg, weights))
    # weight of the northern norm per row: 1 from 20N poleward, 0 from 20S poleward, linear between
    a = ((lat_deg.to(torch.float64) + HEMISPHERE_EDGE_DEG) / (2 * HEMISPHERE_EDGE_DEG)).clamp(0, 1)
    norm = nn_[..., None] * a + ns[..., None] * (1 - a)  # (batch, channel, lat)
    factor = torch.where(norm > 0, t[..., None] / torch.where(norm > 0, norm, 1.0), torch.ones_like(norm))
    return (d * factor[..., None]).to(diff.dtype)


class BredVectors:
    """Hemispheric-centred bred vectors (HENS, DESIGN §3.1) for one model.

    `analyses`: (cycles + 1, channel, lat, lon), the analyses at t − 6·cycles h, ..., t − 6 h, t
    (the last is the init-time analysis); `time_hours`: hours since 1970 of analyses[0];
    `rmse_48h`: (channel,) the package's 48-hour RMSE. The control trajectory is advanced
    once per cycle for all perturbations (not once per pair), and the bred vector returned is
    the one valid at t: it is made by the step that lands on t.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        analyses: torch.Tensor,
        time_hours: float,
        rmse_48h: torch.Tensor,
        fraction: float = BRED_FRACTION,
        seed_channel: str = "z500",
        step_hours: int = 6,
    ):
        if analyses.ndim != 4 or analyses.shape[1] != len(model.channels):
            raise ValueError(
                f"analyses must be (cycles + 1, {len(model.channels)}, lat, lon), got {tuple(analyses.shape)}"
            )
        if seed_channel not in model.channels:
            raise ValueError(f"the bred-vector seed goes on {seed_channel}, which the model does not have")
        self.model = model
        self.analyses = analyses
        self.time_hours = float(time_hours)
        self.target = fraction * rmse_48h.to(torch.float64)
        self.seed_index = model.channels.index(seed_channel)
        self.step_hours = step_hours
        lat = model.lat.detach().cpu().numpy()
        self.seeder = SphericalNoise(lat, len(model.lon), seed_spectrum())
        self.lat = model.lat.detach().cpu().to(torch.float64)
        self.weights = torch.from_numpy(cell_area_weights(lat))

    @property
    def cycles(self) -> int:
        return self.analyses.shape[0] - 1

    @torch.no_grad()
    def __call__(self, analysis: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        if not torch.equal(analysis, self.analyses[-1]):
            raise ValueError("BredVectors: `analysis` must be the init-time analysis its breeding window ends on")
        device = next(self.model.parameters()).device
        a = self.analyses.to(device)
        k = len(seeds)
        seed = torch.zeros((k, *a.shape[1:]), dtype=torch.float64)
        for i, s in enumerate(seeds):
            seed[i, self.seed_index] = self.target[self.seed_index] * self.seeder.draw(s)
        perturbed = a[0][None] + seed.to(a)
        for cycle in range(self.cycles):
            hours = torch.full((1,), self.time_hours + cycle * self.step_hours, dtype=torch.float64, device=device)
            control = self.model(a[cycle][None], hours)  # once per cycle, shared by all pairs
            stepped = self.model(perturbed, hours.expand(k))
            bred = hemispheric_rescale((stepped - control).cpu(), self.lat, self.weights, self.target)
            perturbed = a[cycle + 1][None] + bred.to(a)
        return bred.to(analysis.dtype)


__all__ = [
    "BREEDING_CYCLES",
    "BredVectors",
    "CorrelatedNoise",
    "GaussianRandomField",
    "Perturbation",
    "SphericalNoise",
    "band_rms",
    "hemispheric_rescale",
]
