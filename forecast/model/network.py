"""`ForecastModel`: torch-harmonics' SFNO wrapped so that callers pass and receive physical units.

Inside, the state is normalised with the archive statistics, the static fields (orography,
land-sea mask) and the cosine of the solar zenith angle at the input time are appended as
extra input channels, and the network predicts the change over one time step in units of each
channel's one-step difference std (`diff_std`; residual prediction), or the normalised next
state. All of that lives in buffers: the module has no hidden state and the same inputs give
the same outputs. The time step is the archive's (`Archive.time_step_hours`, recorded in the
package as `time_step_hours`): the module itself only sees the time of its input.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch_harmonics import InverseRealSHT, RealSHT
from torch_harmonics.examples.models.sfno import SphericalFourierNeuralOperator

from forecast.harmonics import build
from forecast.model.noise import NoiseSpec, NoiseStream, SphericalARNoise
from forecast.model.stochastic import StochasticSFNO

HOURS_PER_DAY = 24.0
DAYS_PER_YEAR = 365.2425


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture. `grid` is the data grid type (torch-harmonics name); `lmax`/`mmax` follow
    from the grid and `scale_factor` and are recorded, not guessed (the default changed between
    torch-harmonics releases)."""

    embed_dim: int = 48
    num_layers: int = 4
    scale_factor: int = 1
    mlp_ratio: float = 2.0
    grid: str = "equiangular"
    grid_internal: str = "legendre-gauss"
    residual_prediction: bool = True
    activation: str = "gelu"
    hard_thresholding_fraction: float = 1.0
    # Model noise (forecast.model.noise): none for a deterministic checkpoint; else one AR(1)
    # spherical field per length scale conditions every block (forecast.model.stochastic).
    noise_length_scales_km: tuple[float, ...] = ()
    noise_correlation_hours: tuple[float, ...] = (6.0,)

    def __post_init__(self):
        # JSON and YAML give lists: kept as tuples, so the config stays a hashable value
        object.__setattr__(self, "noise_length_scales_km", tuple(map(float, self.noise_length_scales_km)))
        object.__setattr__(self, "noise_correlation_hours", tuple(map(float, self.noise_correlation_hours)))
        if self.stochastic:
            NoiseSpec(self.noise_length_scales_km, self.noise_correlation_hours)  # validates

    @property
    def stochastic(self) -> bool:
        return bool(self.noise_length_scales_km)

    @property
    def noise_spec(self) -> NoiseSpec | None:
        if not self.stochastic:
            return None
        return NoiseSpec(self.noise_length_scales_km, self.noise_correlation_hours)

    def spectral_modes(self, nlat: int, nlon: int) -> tuple[int, int]:
        """(lmax, mmax) that torch-harmonics' SFNO uses for this grid."""
        h = (nlat - 1) // self.scale_factor + 1
        w = nlon // self.scale_factor
        modes = int(min(h, w // 2) * self.hard_thresholding_fraction)
        return modes, modes


def cos_zenith(time_hours: torch.Tensor, lat_deg: torch.Tensor, lon_deg: torch.Tensor) -> torch.Tensor:
    """Cosine of the solar zenith angle, (batch, lat, lon), from hours since 1970-01-01 UTC.

    A standard approximation (declination from the day of year, hour angle from UTC and
    longitude), not clipped at night: smooth inputs train better than kinked ones.
    """
    hours = time_hours.to(torch.float64)[:, None, None]
    day_of_year = torch.remainder(hours / HOURS_PER_DAY, DAYS_PER_YEAR)
    declination = -math.radians(23.44) * torch.cos(2 * math.pi * (day_of_year + 10.0) / DAYS_PER_YEAR)
    utc_hour = torch.remainder(hours, HOURS_PER_DAY)
    lat = torch.deg2rad(lat_deg.to(torch.float64))[None, :, None]
    lon = torch.deg2rad(lon_deg.to(torch.float64))[None, None, :]
    hour_angle = 2 * math.pi * utc_hour / HOURS_PER_DAY + lon - math.pi
    cz = torch.sin(lat) * torch.sin(declination) + torch.cos(lat) * torch.cos(declination) * torch.cos(hour_angle)
    return cz.to(torch.float32)


class Float32(nn.Module):
    """Runs the wrapped module in float32 with autocast off. torch-harmonics' spherical
    harmonic transforms do not take bfloat16 (`torch.complex` refuses it), so under bf16
    autocast the transforms stay in float32 while the pointwise layers run in bf16."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.complex64) if x.is_complex() else x.float()
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.inner(x)


def _spectral_transforms_in_float32(net: nn.Module) -> None:
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (RealSHT, InverseRealSHT)):
                setattr(parent, name, Float32(child))


class ForecastModel(nn.Module):
    """One time step (the training archive's, `time_step_hours` in the package config):
    `model(state, time_hours) -> next state`, all in physical units.

    state: (batch, channel, lat, lon) float32; time_hours: (batch,) hours since 1970 of `state`.
    """

    def __init__(
        self,
        config: ModelConfig,
        channels: list[str],
        lat: torch.Tensor,
        lon: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        diff_std: torch.Tensor,
        static: torch.Tensor,
        non_negative: list[bool],
    ):
        super().__init__()
        self.config = config
        self.channels = list(channels)
        c, nlat, nlon = len(channels), len(lat), len(lon)
        for name, t in (("mean", mean), ("std", std), ("diff_std", diff_std)):
            if t.shape != (c,):
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected ({c},) for {c} channels")
        if static.ndim != 3 or static.shape[1:] != (nlat, nlon):
            raise ValueError(f"static fields have shape {tuple(static.shape)}, expected (n, {nlat}, {nlon})")
        self.register_buffer("lat", lat.to(torch.float32))
        self.register_buffer("lon", lon.to(torch.float32))
        self.register_buffer("mean", mean.to(torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", std.to(torch.float32).clamp_min(1e-12).view(1, c, 1, 1))
        self.register_buffer("diff_std", diff_std.to(torch.float32).clamp_min(1e-12).view(1, c, 1, 1))
        # Static inputs are standardised once here, so the network sees O(1) values.
        s = static.to(torch.float32)
        s = (s - s.mean(dim=(1, 2), keepdim=True)) / s.std(dim=(1, 2), keepdim=True).clamp_min(1e-12)
        self.register_buffer("static", s[None])
        self.register_buffer("non_negative", torch.tensor(non_negative, dtype=torch.bool).view(1, c, 1, 1))
        self._clips = any(non_negative)  # known here: no device sync per step
        sfno = dict(
            img_size=(nlat, nlon),
            grid=config.grid,
            grid_internal=config.grid_internal,
            scale_factor=config.scale_factor,
            in_chans=c + s.shape[0] + 1,
            out_chans=c,
            embed_dim=config.embed_dim,
            num_layers=config.num_layers,
            activation_function=config.activation,
            mlp_ratio=config.mlp_ratio,
            hard_thresholding_fraction=config.hard_thresholding_fraction,
            residual_prediction=False,  # done here, in physical units
        )
        spec = config.noise_spec
        if spec is None:
            self.net = build(SphericalFourierNeuralOperator, **sfno)
            self.noise = None
        else:
            self.net = build(StochasticSFNO, noise_fields=spec.fields, **sfno)
            self.noise = SphericalARNoise(self.net.noise_modes[0], spec)
        lmax, mmax = config.spectral_modes(nlat, nlon)
        if (self.net.trans_down.lmax, self.net.trans_down.mmax) != (lmax, mmax):
            raise RuntimeError(
                f"torch-harmonics built lmax/mmax {(self.net.trans_down.lmax, self.net.trans_down.mmax)}, "
                f"expected {(lmax, mmax)}: the library's defaults changed"
            )
        _spectral_transforms_in_float32(self.net)

    @property
    def stochastic(self) -> bool:
        return self.noise is not None

    def noise_stream(self, seeds, step_hours: float, enabled: bool = True, scale: float = 1.0) -> NoiseStream:
        """The model noise of a batch of members (one seed each) over a rollout; for a
        deterministic checkpoint a stream whose `current` is None; `enabled` False holds a
        stochastic checkpoint's noise at zero; `scale` multiplies its standard deviation."""
        return NoiseStream(self.noise, seeds, step_hours, enabled, scale)

    def forward(self, state: torch.Tensor, time_hours: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """`noise`: the model noise of this step (`noise_stream(...).current`), required by a
        stochastic checkpoint and refused by a deterministic one."""
        if self.stochastic and noise is None:
            raise ValueError("a stochastic checkpoint steps with its model noise: pass noise_stream(seeds).current")
        if not self.stochastic and noise is not None:
            raise ValueError("a deterministic checkpoint takes no model noise")
        b = state.shape[0]
        if state.shape[1:] != (len(self.channels), len(self.lat), len(self.lon)):
            raise ValueError(
                f"state has shape {tuple(state.shape)}, expected (batch, {len(self.channels)}, "
                f"{len(self.lat)}, {len(self.lon)})"
            )
        x = (state - self.mean) / self.std
        zenith = cos_zenith(time_hours, self.lat, self.lon)[:, None].to(x.dtype)
        features = torch.cat([x, self.static.expand(b, -1, -1, -1).to(x.dtype), zenith], dim=1)
        y = self.net(features) if noise is None else self.net(features, noise)
        del x, features
        if not torch.is_grad_enabled() and y.dtype == state.dtype:
            # In place on the network's output (the same values: products and sums commute):
            # at 0.25° each temporary is a block-sized field, and the writer thread works
            # beside this step (README, bench_scale).
            y.mul_(self.diff_std if self.config.residual_prediction else self.std)
            y.add_(state if self.config.residual_prediction else self.mean)
            return torch.where(self.non_negative, y.clamp_min(0.0), y, out=y) if self._clips else y
        if self.config.residual_prediction:
            out = state + self.diff_std * y
        else:
            out = self.mean + self.std * y
        return torch.where(self.non_negative, out.clamp_min(0.0), out)

    def rollout(
        self, state: torch.Tensor, time_hours: torch.Tensor, steps: int, step_hours: int, noise_seeds=None
    ) -> torch.Tensor:
        """(batch, steps + 1, channel, lat, lon): the state and `steps` autoregressive steps of
        `step_hours` each (the model's time step: the package's `time_step_hours`); a
        stochastic checkpoint draws member i's noise from `noise_seeds[i]`."""
        if self.stochastic and noise_seeds is None:
            raise ValueError("a stochastic checkpoint's rollout needs one noise seed per member")
        stream = self.noise_stream(noise_seeds or [], step_hours)
        out = [state]
        for k in range(steps):
            state = self(state, time_hours + k * step_hours, stream.current)
            stream.advance()
            out.append(state)
        return torch.stack(out, dim=1)
