"""From the model's spectral state to ERA5-like fields on an equiangular grid with poles.

Everything is evaluated spectrally on the output grid (exact for the model's truncation), then
turned into the quantities ERA5 publishes: pressure-level z/t/u/v/q by interpolation in log σ,
and the single-level t2m, msl, u10, v10, tcwv and sp.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from dinosaur import spherical_harmonic

from forecast.world.dynamics import HUMIDITY, UNITS, Core, idealised_continents

GRAVITY = 9.80665
R_DRY = 287.05
LAPSE_RATE = 0.0065
PRESSURE_LEVELS_HPA = (250, 500, 850)
PRESSURE_VARIABLES = ("z", "t", "u", "v", "q")
SURFACE_VARIABLES = ("t2m", "msl", "u10", "v10", "tcwv", "sp")
# Ratio of 10 m wind to the lowest model layer's wind (about 60 hPa above ground).
SURFACE_WIND_FACTOR = 0.8


class Diagnoser:
    """Turns batches of modal states into ERA5-named physical fields, (time, ..., lat, lon)."""

    def __init__(self, core: Core, nlat: int = 33, nlon: int = 64):
        self.core = core
        model_grid = core.coords.horizontal
        self.grid = spherical_harmonic.Grid(
            longitude_wavenumbers=model_grid.longitude_wavenumbers,
            total_wavenumbers=model_grid.total_wavenumbers,
            longitude_nodes=nlon,
            latitude_nodes=nlat,
            latitude_spacing="equiangular_with_poles",
        )
        lon, sin_lat = self.grid.nodal_axes
        # Output convention: latitude 90 -> -90, longitude 0 -> 360 (ERA5).
        self.lat = np.rad2deg(np.arcsin(np.clip(sin_lat, -1, 1)))[::-1].copy()
        self.lat[0], self.lat[-1] = 90.0, -90.0
        self.lon = np.rad2deg(lon)
        self.sigma = np.asarray(core.coords.vertical.centers, np.float64)
        self.sigma_bounds = np.asarray(core.coords.vertical.boundaries, np.float64)
        specs = core.specs
        self._velocity = float(specs.dimensionalize(1.0, UNITS.m / UNITS.s).magnitude)
        self._pressure = float(specs.dimensionalize(1.0, UNITS.pascal).magnitude)
        self._kelvin = float(specs.dimensionalize(1.0, UNITS.degK).magnitude)
        self._metre = float(specs.dimensionalize(1.0, UNITS.meter).magnitude)
        self.orography_m = np.asarray(self._to_grid(core.modal_orography)) * self._metre
        lon2d, lat2d = np.meshgrid(np.deg2rad(self.lon), np.deg2rad(self.lat))
        self.land_sea_mask, _ = idealised_continents(lon2d, lat2d)

    def _to_grid(self, modal):
        """Spectral evaluation on the output grid, returned as (..., lat, lon) north first."""
        nodal = self.grid.to_nodal(modal)
        return jnp.swapaxes(nodal, -1, -2)[..., ::-1, :]

    def _winds(self, vorticity, divergence):
        u_cos, v_cos = spherical_harmonic.get_cos_lat_vector(vorticity, divergence, self.grid, clip=False)
        u_cos, v_cos = self._to_grid(u_cos), self._to_grid(v_cos)
        cos_lat = np.cos(np.deg2rad(self.lat))[:, None]
        interior = cos_lat > 1e-6
        safe = np.where(interior, cos_lat, 1.0)
        u = jnp.where(interior, u_cos / safe, 0.0) * self._velocity
        v = jnp.where(interior, v_cos / safe, 0.0) * self._velocity
        return self._pole_winds(u, v)

    def _pole_winds(self, u, v):
        """At a pole the wind is one vector: average the next ring's wind as a 3-D vector,
        then express it in each pole longitude's local east/north frame."""
        lam = np.deg2rad(self.lon)
        sin_l, cos_l = np.sin(lam), np.cos(lam)
        for pole, ring, sign in ((0, 1, 1.0), (-1, -2, -1.0)):
            ur, vr = u[..., ring, :], v[..., ring, :]
            # Horizontal Cartesian components near the pole (the vertical one vanishes there).
            # east = (-sin λ, cos λ); north = -sign * (cos λ, sin λ) in the polar tangent plane.
            wx = -ur * sin_l - sign * vr * cos_l
            wy = ur * cos_l - sign * vr * sin_l
            mx, my = wx.mean(-1, keepdims=True), wy.mean(-1, keepdims=True)
            u = u.at[..., pole, :].set(-mx * sin_l + my * cos_l)
            v = v.at[..., pole, :].set(-sign * (mx * cos_l + my * sin_l))
        return u, v

    def _to_pressure(self, field, sigma_target):
        """Linear interpolation in log σ (and extrapolation beyond the end layers)."""
        x = np.log(self.sigma)
        xt = jnp.log(sigma_target)
        k = jnp.clip(jnp.sum(x[:, None, None] < xt[None], axis=0), 1, len(x) - 1)
        x0, x1 = jnp.asarray(x)[k - 1], jnp.asarray(x)[k]
        f0 = jnp.take_along_axis(field, (k - 1)[None], axis=0)[0]
        f1 = jnp.take_along_axis(field, k[None], axis=0)[0]
        w = (xt - x0) / (x1 - x0)
        return f0 + w * (f1 - f0)

    @functools.cached_property
    def fields(self):
        """Jitted: batched modal state -> dict of physical fields (float32)."""

        def one(vorticity, divergence, temperature_variation, log_surface_pressure, humidity):
            ref = self.core.reference_temperature[:, None, None]
            temperature = (self._to_grid(temperature_variation) + ref) * self._kelvin
            ps = jnp.exp(self._to_grid(log_surface_pressure))[0] * self._pressure
            u, v = self._winds(vorticity, divergence)
            q = jnp.maximum(self._to_grid(humidity), 0.0)
            # Hydrostatic geopotential at layer centres, integrating up from the surface.
            phi_surface = GRAVITY * self.orography_m
            log_b = np.log(np.maximum(self.sigma_bounds, 1e-12))
            log_c = np.log(self.sigma)
            phi_interface = phi_surface
            phi_layers = [None] * len(self.sigma)
            for k in range(len(self.sigma) - 1, -1, -1):
                phi_layers[k] = phi_interface + R_DRY * temperature[k] * (log_b[k + 1] - log_c[k])
                if k > 0:  # the top interface is σ = 0, never needed
                    phi_interface = phi_interface + R_DRY * temperature[k] * (log_b[k + 1] - log_b[k])
            phi = jnp.stack(phi_layers)
            out = {}
            for level in PRESSURE_LEVELS_HPA:
                sigma_target = level * 100.0 / ps
                for name, f in (("z", phi), ("t", temperature), ("u", u), ("v", v), ("q", q)):
                    out[f"{name}{level}"] = self._to_pressure(f, sigma_target)
            # Surface temperature: extrapolate the lowest two layers to σ = 1 in log σ.
            slope = (temperature[-1] - temperature[-2]) / (log_c[-1] - log_c[-2])
            t_surface = temperature[-1] - slope * log_c[-1]
            t_mean = t_surface + 0.5 * LAPSE_RATE * self.orography_m
            out["t2m"] = t_surface
            out["msl"] = ps * jnp.exp(phi_surface / (R_DRY * t_mean))
            out["u10"] = SURFACE_WIND_FACTOR * u[-1]
            out["v10"] = SURFACE_WIND_FACTOR * v[-1]
            dsigma = np.diff(self.sigma_bounds)[:, None, None]
            out["tcwv"] = jnp.sum(q * dsigma, axis=0) * ps / GRAVITY
            out["sp"] = ps
            for level in PRESSURE_LEVELS_HPA:
                out[f"q{level}"] = jnp.maximum(out[f"q{level}"], 0.0)
            return {k: v.astype(jnp.float32) for k, v in out.items()}

        return jax.jit(jax.vmap(one))

    def __call__(self, states: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """states: stacked modal arrays with a leading time axis (see `stack_states`)."""
        out = self.fields(
            states["vorticity"],
            states["divergence"],
            states["temperature_variation"],
            states["log_surface_pressure"],
            states[f"tracer_{HUMIDITY}"],
        )
        return {k: np.asarray(v) for k, v in out.items()}
