"""Model noise for stochastic checkpoints (issue #13): a few isotropic Gaussian random fields on
the sphere, each at its own length scale, evolving in time as an AR(1) (a discretised
Ornstein–Uhlenbeck process) on its spherical harmonic coefficients.

Field f has the amplitude spectrum σ_l ∝ exp(−k l(l+1)/2), k = (L_f / R_earth)² / 2 (the
heat-kernel form of DESIGN §3.1's seed spectrum and of makani's diffusion noise), scaled so
that its variance at every point is 1 in expectation: with torch-harmonics' orthonormal
harmonics, Var f(x) = Σ_l (2l + 1)/(4π) σ_l² (the addition theorem), whatever x is. One step
of Δt hours maps the coefficients a to φ a + √(1 − φ²) σ ξ, φ = exp(−Δt / τ_f), ξ white: the
process starts stationary and stays so, with correlation φ^n between steps n apart.

Each member's stream comes from its own `torch.Generator`, seeded once, on the device the
module lives on, so a member's noise never depends on the other members of its batch and a
member can be regenerated alone (`tests/test_model_noise.py`). The state is the coefficient
tensor; the module keeps none (torch-harmonics style: buffers only). The network synthesises
the fields itself (`forecast.model.stochastic`), on the grids its blocks work on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch

EARTH_RADIUS_M = 6_371_000.0


@dataclasses.dataclass(frozen=True)
class NoiseSpec:
    """What a package's `config.json` records of its model noise: one field per length scale,
    each with its correlation time (one value: the same for all)."""

    length_scales_km: tuple[float, ...] = (250.0, 500.0, 1000.0, 2000.0, 4000.0)
    correlation_hours: tuple[float, ...] = (6.0,)

    def __post_init__(self):
        scales, times = tuple(map(float, self.length_scales_km)), tuple(map(float, self.correlation_hours))
        object.__setattr__(self, "length_scales_km", scales)
        object.__setattr__(self, "correlation_hours", times * len(scales) if len(times) == 1 else times)
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"noise length scales must be positive km, got {scales}")
        if len(self.correlation_hours) != len(scales) or any(t <= 0 for t in self.correlation_hours):
            raise ValueError(
                f"noise correlation times must be positive hours, one or one per length scale, got {times}"
            )

    @property
    def fields(self) -> int:
        return len(self.length_scales_km)


def heat_kernel_spectrum(length_scale_m: float, ell: np.ndarray) -> np.ndarray:
    """σ_l = exp(−k l(l+1)/2), k = (L/R_earth)²/2: the form of the model noise and of the
    bred-vector seed (`forecast.ensemble.perturbation.SeedSpectrum`)."""
    k = (length_scale_m / EARTH_RADIUS_M) ** 2 / 2
    return np.exp(-k * ell * (ell + 1) / 2)


def unit_variance_spectrum(length_scale_m: float, lmax: int) -> np.ndarray:
    """σ_l (l < lmax) of the heat-kernel form, scaled to Σ_l (2l + 1)/(4π) σ_l² = 1."""
    ell = np.arange(lmax, dtype=np.float64)
    sigma = heat_kernel_spectrum(length_scale_m, ell)
    return sigma / math.sqrt(((2 * ell + 1) / (4 * math.pi) * sigma**2).sum())


def member_generator(seed: int, device: torch.device) -> torch.Generator:
    """One member's own random stream on `device` (a 63-bit seed)."""
    return torch.Generator(device=device).manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)


def standard_normal(
    generators: Sequence[torch.Generator], shape: Sequence[int], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """(len(generators), *shape) standard normal numbers, row i drawn from generator i alone:
    a member's numbers never depend on the other members of its batch."""
    out = torch.empty((len(generators), *shape), dtype=dtype, device=device)
    for i, g in enumerate(generators):
        torch.randn(out.shape[1:], generator=g, out=out[i])
    return out


class SphericalARNoise(torch.nn.Module):
    """The coefficient process of the model noise, up to degree `lmax` (l, m < lmax):
    `start(generators)` -> coefficients (batch, field, lmax, lmax) complex, stationary;
    `advance(coeffs, generators, step_hours)` -> those one step later. Synthesised with an
    orthonormal inverse SHT (torch-harmonics' `norm="ortho"`, its default) on any grid that
    resolves `lmax`, each field has variance 1 at every point. `generators`: one per batch
    member (`generators(seeds)`), advanced in place as it draws."""

    def __init__(self, lmax: int, spec: NoiseSpec, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.spec, self.lmax, self.dtype = spec, int(lmax), dtype
        sigma = np.stack([unit_variance_spectrum(s * 1e3, self.lmax) for s in spec.length_scales_km])  # (field, l)
        amp = np.tril(np.repeat(sigma[:, :, None], self.lmax, axis=2))  # (field, l, m), m <= l
        amp[:, :, 1:] /= math.sqrt(2.0)  # re and im of m >= 1 share σ_l² (isotropy)
        self.register_buffer("amplitude", torch.from_numpy(amp).to(dtype), persistent=False)
        self.register_buffer("has_imaginary", (torch.arange(self.lmax) > 0).to(dtype), persistent=False)
        hours = torch.tensor(spec.correlation_hours, dtype=torch.float64)
        self.register_buffer("correlation_hours", hours.view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.amplitude.device

    def generators(self, seeds: Sequence[int]) -> list[torch.Generator]:
        return [member_generator(s, self.device) for s in seeds]

    def _white(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """(batch, field, lmax, lmax) complex coefficients of variance σ_l², member i from generator i."""
        out = standard_normal(generators, (*self.amplitude.shape, 2), self.dtype, self.device)
        return torch.complex(out[..., 0], out[..., 1] * self.has_imaginary) * self.amplitude

    def start(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        return self._white(generators)

    def advance(self, coeffs: torch.Tensor, generators: Sequence[torch.Generator], step_hours: float) -> torch.Tensor:
        phi = torch.exp(-float(step_hours) / self.correlation_hours).to(self.dtype)
        return phi * coeffs + torch.sqrt(1 - phi.square()) * self._white(generators)


class NoiseStream:
    """The model noise of a batch of members over a rollout: `current` is this step's
    coefficients, `advance()` moves to the next step. For a deterministic checkpoint
    (`process` None) `current` is None and `advance` does nothing; `enabled` False holds a
    stochastic checkpoint's noise at zero. `scale` multiplies the noise's standard deviation
    (a run's `noise_scale`, chosen by `forecast calibrate`); the process itself stays at unit
    variance, so a member's stream at any scale is the same draws, scaled."""

    def __init__(
        self,
        process: SphericalARNoise | None,
        seeds: Sequence[int],
        step_hours: float,
        enabled: bool = True,
        scale: float = 1.0,
    ):
        if not scale >= 0:
            raise ValueError(f"the model-noise scale multiplies its standard deviation: >= 0, got {scale}")
        self.process, self.step_hours, self.scale = (process if enabled else None), float(step_hours), float(scale)
        self.generators = self.process.generators(seeds) if self.process is not None else []
        self._coeffs = self.process.start(self.generators) if self.process is not None else None
        if process is not None and not enabled:  # the stochastic network's input, held at zero
            f, lmax, mmax = process.amplitude.shape
            dtype = torch.complex64 if process.dtype == torch.float32 else torch.complex128
            self._coeffs = torch.zeros((len(seeds), f, lmax, mmax), dtype=dtype, device=process.device)

    @property
    def current(self) -> torch.Tensor | None:
        if self._coeffs is None or self.scale == 1.0:
            return self._coeffs
        return self._coeffs * self.scale

    def advance(self) -> None:
        if self.process is not None:
            self._coeffs = self.process.advance(self._coeffs, self.generators, self.step_hours)
