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

Every perturbation's noise comes from its own `torch.Generator` (on the device the noise is
drawn on) seeded with that perturbation's seed, so members of one batch are independent (a
known fault of public versions is one generator for the whole batch) and any member can be
redrawn alone; the noise of a whole block is then synthesised in one batched inverse SHT on
that device, in float32 (measured to be enough: benchmarks/bench_perturbation.py).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch_harmonics import InverseRealSHT

from forecast.grid import cell_area_weights
from forecast.harmonics import build
from forecast.model.noise import heat_kernel_spectrum, member_generator, standard_normal

SEED_LENGTH_SCALE_M = 500_000.0
BRED_FRACTION = 0.35  # of the package's 48-hour RMSE
BREEDING_CYCLES = 3
HEMISPHERE_EDGE_DEG = 20.0


@runtime_checkable
class Perturbation(Protocol):
    """`perturbation(analysis, seeds) -> deltas`: analysis (channel, lat, lon) at the init
    time; one int seed per perturbation; deltas (len(seeds), channel, lat, lon), on the
    device and in the dtype of `analysis`."""

    def __call__(self, analysis: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor: ...


def area_rms(field: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Area-weighted RMS over the last two dims (lat, lon), float64 (squares summed in float64
    whatever the field's dtype); `weights` per latitude row."""
    w = weights.to(device=field.device, dtype=torch.float64)
    return torch.sqrt((field.square().mean(-1, dtype=torch.float64) * w).sum(-1) / w.sum())


def spectral_truncation(sigma: np.ndarray, tail: float) -> int:
    """The fewest degrees L (l < L kept) whose dropped tail l >= L carries at most `tail` of
    the field's RMS in expectation: sum_{l>=L} (2l+1) sigma_l^2 <= tail^2 sum_l (2l+1) sigma_l^2."""
    ell = np.arange(len(sigma), dtype=np.float64)
    var = (2 * ell + 1) * np.asarray(sigma, np.float64) ** 2
    var[0] = 0.0  # the global mean is never drawn
    beyond = np.cumsum(var[::-1])[::-1]  # beyond[L] = sum over l >= L
    keep = np.flatnonzero(beyond <= tail**2 * var.sum())
    return int(max(2, keep[0])) if len(keep) else len(sigma)


class SphericalNoise(torch.nn.Module):
    """Isotropic Gaussian fields on the sphere with the amplitude spectrum `sigma(l)`, drawn
    for a whole block at once on the device the module lives on (`.to(device)`).

    Each seed has its own `torch.Generator` on that device and draws white spectral
    coefficients for all of that seed's fields (`count` per seed) in one call; so a seed's
    noise never depends on the other seeds of the block, and any member can be redrawn alone.
    The coefficients of all seeds and fields are then synthesised in ONE inverse SHT.
    Isotropy: E|a_lm|^2 = sigma_l^2 for every m, so a real coefficient of variance sigma_l^2
    for m = 0 and a complex one with real and imaginary parts of variance sigma_l^2 / 2 for m >= 1.

    Degrees whose power is negligible are not synthesised: the transform stops at the smallest
    degree beyond which the spectrum holds at most `tail` (1e-8) of the RMS, below float32
    resolution (the 500 km seed spectrum ends near l = 110 whatever the grid; a Matérn
    spectrum keeps every degree the grid resolves). `dtype` is the synthesis precision:
    float32 (benchmarks/bench_perturbation.py measures it against float64: the unit-RMS field
    agrees to ~1e-6 of its RMS at 721 × 1440 and 33 × 64).
    """

    MIN_BATCH = 8  # fields per transform, padded with zeros below: see `synthesize`

    def __init__(
        self,
        lat_deg: np.ndarray,
        nlon: int,
        sigma: Callable[[np.ndarray], np.ndarray],
        grid: str = "equiangular",
        dtype: torch.dtype = torch.float32,
        tail: float = 1e-8,
    ):
        super().__init__()
        nlat = len(lat_deg)
        # Every degree the grid resolves (the default changed in torch-harmonics 0.9 to
        # (nlat + 1) // 2, which would drop half of them), less the negligible tail.
        modes = min(nlat, nlon // 2)
        ell = np.arange(modes, dtype=np.float64)
        s = np.asarray(sigma(ell), np.float64)
        lmax = spectral_truncation(s, tail) if tail > 0 else modes
        self.isht = build(InverseRealSHT, nlat, nlon, lmax=lmax, mmax=lmax, grid=grid, norm="ortho").to(dtype)
        amp = np.tril(np.repeat(s[:lmax, None], lmax, axis=1))
        amp[:, 1:] /= np.sqrt(2.0)  # re and im of m >= 1 share sigma_l^2 (isotropy)
        amp[0, 0] = 0.0  # no global-mean offset: a perturbation, not a bias
        self.register_buffer("amplitude", torch.from_numpy(amp).to(dtype))
        self.register_buffer("weights", torch.from_numpy(cell_area_weights(np.asarray(lat_deg))).to(torch.float64))
        self.shape = (nlat, nlon)
        self.dtype = dtype

    @property
    def device(self) -> torch.device:
        return self.amplitude.device

    def white(self, seeds: Sequence[int], count: int = 1) -> torch.Tensor:
        """(len(seeds), count, lmax, mmax, 2) standard normal numbers on the module's device:
        row i from seed i's own generator, drawn in one call."""
        generators = [member_generator(seed, self.device) for seed in seeds]
        return standard_normal(generators, (count, *self.amplitude.shape, 2), self.dtype, self.device)

    def synthesize(self, white: torch.Tensor) -> torch.Tensor:
        """Fields (..., lat, lon) of unit area-weighted RMS from white coefficients
        (..., lmax, mmax, 2), all in one inverse SHT. Batches of fewer than MIN_BATCH fields
        are padded with zeros: BLAS libraries switch kernels (and rounding) for tiny batches,
        and the padding keeps a member drawn alone bit-identical to the same member in a
        block (tests/test_ensemble_perturbation.py checks it on the CPU)."""
        lead = white.shape[:-3]
        coeffs = torch.complex(white[..., 0], white[..., 1] * self._imaginary) * self.amplitude
        coeffs = coeffs.reshape(-1, *coeffs.shape[-2:])
        n = coeffs.shape[0]
        if n < self.MIN_BATCH:
            coeffs = torch.cat([coeffs, coeffs.new_zeros((self.MIN_BATCH - n, *coeffs.shape[1:]))])
        field = self.isht(coeffs)[:n].reshape(*lead, *self.shape)
        return field / area_rms(field, self.weights).to(field.dtype)[..., None, None]

    @property
    def _imaginary(self) -> torch.Tensor:
        """1 where a coefficient has an imaginary part (m >= 1), 0 for m = 0."""
        m = torch.arange(self.amplitude.shape[1], device=self.device)
        return (m > 0).to(self.dtype)

    def fields(self, seeds: Sequence[int], count: int = 1) -> torch.Tensor:
        """(len(seeds), count, lat, lon) unit-RMS fields, `count` independent ones per seed."""
        return self.synthesize(self.white(seeds, count))

    def draw(self, seed: int) -> torch.Tensor:
        """One field, (lat, lon), unit area-weighted RMS (the first field of `fields([seed])`)."""
        return self.fields([seed])[0, 0]


@dataclasses.dataclass(frozen=True)
class SeedSpectrum:
    """σ_l = exp(−k_T l(l+1)/2), k_T = (L/R_earth)²/2 (DESIGN §3.1). A value (hashable), so
    noise generators built from it can be shared (`spherical_noise`)."""

    length_scale_m: float = SEED_LENGTH_SCALE_M

    def __call__(self, ell: np.ndarray) -> np.ndarray:
        return heat_kernel_spectrum(self.length_scale_m, ell)


@dataclasses.dataclass(frozen=True)
class MaternSpectrum:
    """σ_l = (l(l+1) + τ²)^(−α/2) on the unit sphere (torch-harmonics' convention)."""

    alpha: float = 2.0
    tau: float = 3.0

    def __post_init__(self):
        if self.alpha <= 1.0:
            raise ValueError(f"alpha must be > 1 for a field of finite variance, got {self.alpha}")

    def __call__(self, ell: np.ndarray) -> np.ndarray:
        return (ell * (ell + 1) + self.tau**2) ** (-self.alpha / 2)


def seed_spectrum(length_scale_m: float = SEED_LENGTH_SCALE_M) -> SeedSpectrum:
    """σ_l = exp(−k_T l(l+1)/2), k_T = (L/R_earth)²/2 (DESIGN §3.1)."""
    return SeedSpectrum(float(length_scale_m))


def matern_spectrum(alpha: float = 2.0, tau: float = 3.0) -> MaternSpectrum:
    """σ_l = (l(l+1) + τ²)^(−α/2) on the unit sphere (torch-harmonics' convention)."""
    return MaternSpectrum(float(alpha), float(tau))


@functools.lru_cache(maxsize=4)
def _shared_noise(lat: tuple[float, ...], nlon: int, spectrum, grid: str, device: str) -> SphericalNoise:
    return SphericalNoise(np.asarray(lat), nlon, spectrum, grid).to(device)


def spherical_noise(
    lat_deg: np.ndarray, nlon: int, spectrum, device: torch.device | str, grid: str = "equiangular"
) -> SphericalNoise:
    """A `SphericalNoise` on `device`, shared by every caller with the same grid and spectrum
    (a hashable spectrum such as `seed_spectrum()`; otherwise a new one). The engine asks for
    one per block, and building one costs a Legendre table: about 1 s at 721 × 1440 for the
    seed spectrum and about 100 s for a full-degree one on a CPU. Treat it as read-only."""
    lat = tuple(float(x) for x in np.asarray(lat_deg, np.float64))
    try:
        hash(spectrum)
    except TypeError:
        return SphericalNoise(np.asarray(lat), nlon, spectrum, grid).to(device)
    return _shared_noise(lat, int(nlon), spectrum, grid, str(torch.device(device)))


class _ScaledNoise:
    """Noise fields of a given spectrum on chosen channels, each scaled to that channel's
    amplitude (area-weighted RMS, physical units); other channels untouched.

    All fields of a call (seeds × channels) are drawn in one batched synthesis on `device`
    (None: the device of the analysis passed in); seed i's fields come from seed i's own
    generator, one independent field per channel (channels in sorted order of name)."""

    def __init__(
        self,
        channels: Sequence[str],
        lat_deg: np.ndarray,
        nlon: int,
        amplitudes: dict[str, float],
        spectrum,
        device: torch.device | str | None = None,
    ):
        unknown = set(amplitudes) - set(channels)
        if unknown:
            raise ValueError(f"perturbation amplitudes name channels that are not in the data: {sorted(unknown)}")
        self.channels = list(channels)
        self.amplitudes = dict(amplitudes)
        names = sorted(self.amplitudes)
        self.index = [self.channels.index(n) for n in names]
        self.scale = torch.tensor([self.amplitudes[n] for n in names], dtype=torch.float64)
        self.device = None if device is None else torch.device(device)
        self.lat, self.nlon, self.spectrum = np.asarray(lat_deg, np.float64), int(nlon), spectrum

    def __call__(self, analysis: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        device = self.device or analysis.device
        noise = spherical_noise(self.lat, self.nlon, self.spectrum, device)
        out = torch.zeros((len(seeds), *analysis.shape), dtype=analysis.dtype, device=device)
        if self.index:
            fields = noise.fields(seeds, len(self.index))  # (seeds, channels with an amplitude, lat, lon)
            scale = self.scale.to(device=device, dtype=fields.dtype).view(1, -1, 1, 1)
            out[:, self.index] = (fields * scale).to(out.dtype)
        return out.to(analysis.device)


class CorrelatedNoise(_ScaledNoise):
    """The HENS seed field (500 km correlation) on the given channels."""

    def __init__(
        self,
        channels,
        lat_deg,
        nlon,
        amplitudes: dict[str, float],
        length_scale_m: float = SEED_LENGTH_SCALE_M,
        device: torch.device | str | None = None,
    ):
        super().__init__(channels, lat_deg, nlon, amplitudes, seed_spectrum(length_scale_m), device)


class GaussianRandomField(_ScaledNoise):
    """Matérn-like Gaussian random fields on the given channels."""

    def __init__(
        self,
        channels,
        lat_deg,
        nlon,
        amplitudes: dict[str, float],
        alpha: float = 2.0,
        tau: float = 3.0,
        device: torch.device | str | None = None,
    ):
        super().__init__(channels, lat_deg, nlon, amplitudes, matern_spectrum(alpha, tau), device)


def band_rms(
    field: torch.Tensor, lat_deg: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(north, south): area-weighted RMS over 20–90°N and 20–90°S of (..., lat, lon), float64,
    on the field's device. `weights` per latitude row (default: cell-area weights of `lat_deg`)."""
    if weights is None:
        weights = torch.from_numpy(cell_area_weights(lat_deg.detach().cpu().to(torch.float64).numpy()))
    lat = lat_deg.to(field.device)
    weights = weights.to(field.device)
    north, south = lat >= HEMISPHERE_EDGE_DEG, lat <= -HEMISPHERE_EDGE_DEG
    return area_rms(field[..., north, :], weights[north]), area_rms(field[..., south, :], weights[south])


def hemispheric_rescale(
    diff: torch.Tensor, lat_deg: torch.Tensor, weights: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Rescale (batch, channel, lat, lon) so each channel's area-weighted RMS over 20–90°N and
    over 20–90°S equals `target` (channel,). Rows between ±20° are divided by a norm
    interpolated linearly in latitude between the two band norms. A band whose norm is zero
    is left alone (its norm is taken as the target, a factor of 1). Norms and factors in
    float64 on diff's device; the result in diff's dtype (one multiplication per value)."""
    device = diff.device
    t = target.to(device=device, dtype=torch.float64).view(1, -1)
    nn_, ns = (torch.where(rms > 0, rms, t.expand_as(rms)) for rms in band_rms(diff, lat_deg, weights))
    # weight of the northern norm per row: 1 from 20N poleward, 0 from 20S poleward, linear between
    a = ((lat_deg.to(device=device, dtype=torch.float64) + HEMISPHERE_EDGE_DEG) / (2 * HEMISPHERE_EDGE_DEG)).clamp(0, 1)
    norm = nn_[..., None] * a + ns[..., None] * (1 - a)  # (batch, channel, lat)
    factor = torch.where(norm > 0, t[..., None] / torch.where(norm > 0, norm, 1.0), torch.ones_like(norm))
    return diff * factor[..., None].to(diff.dtype)


class BredVectors:
    """Hemispheric-centred bred vectors (HENS, DESIGN §3.1) for one model.

    `analyses`: (cycles + 1, channel, lat, lon), the analyses at t − cycles·step, ..., t − step, t
    (the last is the init-time analysis); `time_hours`: hours since 1970 of analyses[0];
    `rmse_48h`: (channel,) the package's 48-hour RMSE; `noise_seed`: a stochastic model's noise
    stream for the breeding, the same for the control and every perturbed state (so the bred
    vector is the dynamics' growth, and the same in any block). The control trajectory is advanced
    once per cycle for all perturbations (not once per pair), and the bred vector returned is
    the one valid at t: it is made by the step that lands on t. Everything runs on the model's
    device: the seed fields of all perturbations in one batched draw (`SphericalNoise`), the
    steps, the rescaling; the result comes back on the device of `analysis`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        analyses: torch.Tensor,
        time_hours: float,
        rmse_48h: torch.Tensor,
        fraction: float | torch.Tensor = BRED_FRACTION,
        seed_channel: str = "z500",
        step_hours: int = 6,
        noise_seed: int = 0,
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
        self.target = torch.as_tensor(fraction, dtype=torch.float64) * rmse_48h.to(torch.float64)  # per channel
        self.seed_index = model.channels.index(seed_channel)
        self.step_hours = step_hours
        self.noise_seed = int(noise_seed)  # a stochastic model's noise, shared by control and perturbed states
        self.lat_deg = model.lat.detach().cpu().numpy().astype(np.float64)
        self.lat = model.lat.detach().to(torch.float64)
        self.weights = torch.from_numpy(cell_area_weights(self.lat_deg))

    @property
    def cycles(self) -> int:
        return self.analyses.shape[0] - 1

    @property
    def _stochastic(self) -> bool:
        return bool(getattr(self.model, "stochastic", False))

    @torch.no_grad()
    def __call__(self, analysis: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        if not torch.equal(analysis.to(self.analyses.device), self.analyses[-1]):
            raise ValueError("BredVectors: `analysis` must be the init-time analysis its breeding window ends on")
        device = next(self.model.parameters()).device
        a = self.analyses.to(device)
        lat, weights, target = (x.to(device) for x in (self.lat, self.weights, self.target))
        k, s = len(seeds), self.seed_index
        seeder = spherical_noise(self.lat_deg, len(self.model.lon), seed_spectrum(), device)
        seed = seeder.fields(seeds)[:, 0]  # (k, lat, lon), unit RMS, one batched draw
        perturbed = a[0][None].repeat(k, 1, 1, 1)
        perturbed[:, s] += (target[s] * seed).to(a.dtype)
        # A stochastic model steps the control and every perturbed state with the same noise:
        # the difference then grows by the dynamics alone.
        noise = self.model.noise_stream([self.noise_seed], self.step_hours) if self._stochastic else None
        for cycle in range(self.cycles):
            hours = torch.full((1,), self.time_hours + cycle * self.step_hours, dtype=torch.float64, device=device)
            if noise is None:
                control = self.model(a[cycle][None], hours)  # once per cycle, shared by all pairs
                stepped = self.model(perturbed, hours.expand(k))
            else:
                control = self.model(a[cycle][None], hours, noise.current)
                stepped = self.model(perturbed, hours.expand(k), noise.current.expand(k, -1, -1, -1))
                noise.advance()
            bred = hemispheric_rescale(stepped - control, lat, weights, target)
            perturbed = a[cycle + 1][None] + bred
        return bred.to(device=analysis.device, dtype=analysis.dtype)


__all__ = [
    "BREEDING_CYCLES",
    "BredVectors",
    "CorrelatedNoise",
    "GaussianRandomField",
    "MaternSpectrum",
    "Perturbation",
    "SeedSpectrum",
    "SphericalNoise",
    "area_rms",
    "band_rms",
    "hemispheric_rescale",
    "matern_spectrum",
    "seed_spectrum",
    "spectral_truncation",
    "spherical_noise",
]
