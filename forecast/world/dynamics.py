"""The dynamical core of the built-in world: dry primitive equations on sigma levels.

We use `dinosaur` (the JAX spectral core behind NeuralGCM) with a Held-Suarez-like forcing
that is stronger and seasonal, a sharp exponential spectral filter, a passive moisture tracer
with a source and condensation, a global mass fixer, and fixed idealised continents.

Why these choices (measured on 2 cores, see DESIGN §4): stock Held-Suarez with ∇⁸ diffusion at
T21 is barely chaotic (errors double every 4.5-17 days); a sharper filter with an equator-pole
contrast of ~95 K, weak static stability and a 15-20 day relaxation doubles errors in
about 1.3-1.4 days, which is what bred vectors and ensembles need.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from dinosaur import (
    coordinate_systems,
    primitive_equations,
    scales,
    sigma_coordinates,
    spherical_harmonic,
    time_integration,
)

UNITS = scales.units
HUMIDITY = "specific_humidity"
SECONDS_PER_YEAR = 365.2425 * 86400.0
# Day of year of the northern summer solstice: the seasonal forcing peaks then.
SOLSTICE_DAY = 172.0


@dataclasses.dataclass(frozen=True)
class WorldPhysics:
    """Every physical knob of the world; defaults are the tuned, chaotic configuration."""

    max_wavenumber: int = 21
    layers: int = 8
    dt_minutes: float = 60.0
    equator_pole_kelvin: float = 95.0
    static_stability_kelvin: float = 5.0
    seasonal_kelvin: float = 15.0
    land_seasonal_kelvin: float = 6.0
    relaxation_days: float = 18.0
    surface_relaxation_days: float = 4.0
    friction_days: float = 1.0
    filter_cutoff: float = 0.9
    filter_order: int = 3
    filter_timescale_hours: float = 2.0
    humidity_fraction: float = 0.8
    evaporation_hours: float = 24.0
    condensation_hours: float = 2.0
    forced: bool = True
    mass_fixer: bool = True


def idealised_continents(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Land-sea mask (0..1) and orography (m) of fixed, smooth idealised continents.

    `lon`, `lat` in radians, any matching shape. The geography is the same for every seed:
    it is part of the world, not of its weather.
    """

    def blob(lon0: float, lat0: float, dlon: float, dlat: float) -> np.ndarray:
        dl = np.mod(lon - np.deg2rad(lon0) + np.pi, 2 * np.pi) - np.pi
        return np.exp(-((dl / np.deg2rad(dlon)) ** 2) - ((lat - np.deg2rad(lat0)) / np.deg2rad(dlat)) ** 2)

    # Two northern continents, one southern, one polar cap, loosely Earth-like.
    land = (
        blob(260.0, 45.0, 35.0, 22.0)
        + blob(80.0, 45.0, 60.0, 20.0)
        + blob(20.0, 5.0, 22.0, 25.0)
        + blob(295.0, -15.0, 18.0, 25.0)
        + blob(0.0, -90.0, 360.0, 18.0)
    )
    mask = np.clip(1.6 * land - 0.3, 0.0, 1.0)
    mountains = (
        2500.0 * blob(250.0, 42.0, 8.0, 18.0)
        + 4000.0 * blob(88.0, 33.0, 18.0, 7.0)
        + 2000.0 * blob(290.0, -20.0, 5.0, 20.0)
        + 2500.0 * blob(0.0, -90.0, 360.0, 12.0)
    )
    orography = mountains * mask + 200.0 * mask
    return mask.astype(np.float32), orography.astype(np.float32)


class SeasonalForcing(time_integration.ExplicitODE):
    """Held-Suarez relaxation with a seasonal, land-aware radiative equilibrium, plus moisture.

    Time enters through `state.sim_time`, so the forcing is a pure function of the state.
    """

    def __init__(self, coords, specs, reference_temperature, land_mask, physics: WorldPhysics, year_phase0: float):
        self.coords = coords
        self.specs = specs
        self.physics = physics
        self.reference_temperature = reference_temperature
        self.p0 = specs.nondimensionalize(1e5 * UNITS.pascal)
        self.sigma = coords.vertical.centers
        _, sin_lat = coords.horizontal.nodal_mesh
        self.lat = np.arcsin(sin_lat)
        self.land = land_mask
        days = UNITS.day
        self.kf = specs.nondimensionalize(1 / (physics.friction_days * days))
        self.ka = specs.nondimensionalize(1 / (physics.relaxation_days * days))
        self.ks = specs.nondimensionalize(1 / (physics.surface_relaxation_days * days))
        self.k_evap = specs.nondimensionalize(1 / (physics.evaporation_hours * UNITS.hour))
        self.k_cond = specs.nondimensionalize(1 / (physics.condensation_hours * UNITS.hour))
        self.kelvin = specs.nondimensionalize(1 * UNITS.degK)
        self.year = specs.nondimensionalize(SECONDS_PER_YEAR * UNITS.s)
        self.year_phase0 = year_phase0
        boundary = np.maximum(0.0, (self.sigma - 0.7) / 0.3)
        self.boundary = boundary[:, None, None]

    def season(self, sim_time):
        """+1 at the northern summer solstice, -1 at the winter one."""
        phase = 2 * jnp.pi * (sim_time / self.year + self.year_phase0 - SOLSTICE_DAY / 365.2425)
        return jnp.cos(phase)

    def equilibrium_temperature(self, surface_pressure, sim_time):
        p = self.physics
        k = self.kelvin
        p_over_p0 = self.sigma[:, None, None] * surface_pressure / self.p0
        season = self.season(sim_time)
        sin_lat, cos_lat = np.sin(self.lat), np.cos(self.lat)
        surface_t = (
            315.0 * k
            - p.equator_pole_kelvin * k * sin_lat**2
            + p.seasonal_kelvin * k * season * sin_lat
            + p.land_seasonal_kelvin * k * season * np.sign(sin_lat) * self.land
        )
        temperature = p_over_p0**self.specs.kappa * (
            surface_t - p.static_stability_kelvin * k * jnp.log(p_over_p0) * cos_lat**2
        )
        return jnp.maximum(200.0 * k, temperature)

    def explicit_terms(self, state):
        aux = primitive_equations.compute_diagnostic_state_sigma(state=state, coords=self.coords)
        grid = self.coords.horizontal
        kv = self.kf * self.boundary
        velocity_tendency = jax.tree.map(lambda x: -kv * x / grid.cos_lat**2, aux.cos_lat_u)
        temperature = self.reference_temperature[:, None, None] + aux.temperature_variation
        surface_pressure = jnp.exp(grid.to_nodal(state.log_surface_pressure))
        kt = self.ka + (self.ks - self.ka) * self.boundary * np.cos(self.lat) ** 4
        teq = self.equilibrium_temperature(surface_pressure, state.sim_time)
        temperature_tendency = -kt * (temperature - teq)
        if not self.physics.forced:
            temperature_tendency = jnp.zeros_like(temperature_tendency)
            velocity_tendency = jax.tree.map(jnp.zeros_like, velocity_tendency)
        tracers = {}
        if HUMIDITY in state.tracers:
            q = grid.to_nodal(state.tracers[HUMIDITY])
            pressure = self.sigma[:, None, None] * surface_pressure
            q_sat = saturation_specific_humidity(temperature / self.kelvin, pressure / self.p0 * 1e5)
            source = self.k_evap * self.boundary * jnp.maximum(self.physics.humidity_fraction * q_sat - q, 0.0)
            sink = self.k_cond * jnp.maximum(q - q_sat, 0.0) + self.k_cond * jnp.minimum(q, 0.0)
            tracers[HUMIDITY] = grid.to_modal(source - sink)
        velocity_modal = grid.to_modal(velocity_tendency)
        return primitive_equations.State(
            vorticity=grid.curl_cos_lat(velocity_modal),
            divergence=grid.div_cos_lat(velocity_modal),
            temperature_variation=grid.to_modal(temperature_tendency),
            log_surface_pressure=jnp.zeros_like(state.log_surface_pressure),
            tracers=tracers,
            sim_time=None,
        )


def saturation_specific_humidity(temperature_k, pressure_pa):
    """Tetens/Bolton saturation specific humidity over water, kg/kg."""
    es = 611.2 * jnp.exp(17.67 * (temperature_k - 273.15) / (temperature_k - 29.65))
    return 0.622 * es / jnp.maximum(pressure_pa - 0.378 * es, 1.0)


class Core:
    """Set-up of the spectral model: coordinates, equations and a jitted stepper."""

    def __init__(self, physics: WorldPhysics = WorldPhysics(), year_phase0: float = 0.0):
        self.physics = physics
        grid = spherical_harmonic.Grid.construct(
            max_wavenumber=physics.max_wavenumber,
            gaussian_nodes=(physics.max_wavenumber + 1) * 3 // 4,
        )
        self.coords = coordinate_systems.CoordinateSystem(
            horizontal=grid, vertical=sigma_coordinates.SigmaCoordinates.equidistant(physics.layers)
        )
        self.specs = primitive_equations.PrimitiveEquationsSpecs.from_si()
        lon, sin_lat = grid.nodal_mesh
        self.land_mask, orography_m = idealised_continents(lon, np.arcsin(sin_lat))
        self.orography_m = orography_m
        self.modal_orography = primitive_equations.truncated_modal_orography(
            self.specs.nondimensionalize(orography_m * UNITS.meter), self.coords
        )
        self.reference_temperature = np.full((physics.layers,), 288.0, np.float32) * self.specs.nondimensionalize(
            1 * UNITS.degK
        )
        self.dt = self.specs.nondimensionalize(physics.dt_minutes * UNITS.minute)
        equations = primitive_equations.PrimitiveEquationsSigma(
            self.reference_temperature, self.modal_orography, self.coords, self.specs
        )
        forcing = SeasonalForcing(
            self.coords, self.specs, self.reference_temperature, self.land_mask, physics, year_phase0
        )
        self.forcing = forcing
        step = time_integration.imex_rk_sil3(time_integration.compose_equations([equations, forcing]), self.dt)
        tau = self.specs.nondimensionalize(physics.filter_timescale_hours * UNITS.hour)
        filters = [
            time_integration.exponential_step_filter(
                grid, self.dt, tau=tau, order=physics.filter_order, cutoff=physics.filter_cutoff
            )
        ]
        self._step = time_integration.step_with_filters(step, filters)
        # Nodal value of the (l=0, m=0) basis function, a constant on the sphere.
        unit = np.zeros(self.coords.surface_modal_shape, np.float32)
        unit[..., 0, 0] = 1.0
        self._l0_nodal_value = float(np.asarray(grid.to_nodal(unit)).ravel()[0])

    def steps_per(self, hours: float) -> int:
        n = hours * 60.0 / self.physics.dt_minutes
        if abs(n - round(n)) > 1e-9:
            raise ValueError(f"{hours} h is not a whole number of {self.physics.dt_minutes}-minute steps")
        return int(round(n))

    def fix_mass(self, state, target_mean_pressure):
        """Rescale surface pressure so its area mean equals the target (a global mass fixer).

        Shifting the l=0 coefficient of log(ps) multiplies ps everywhere by one factor,
        which changes no pressure gradient and so no dynamics beyond the drift it removes.
        """
        grid = self.coords.horizontal
        ps = jnp.exp(grid.to_nodal(state.log_surface_pressure))
        mean = area_mean(grid, ps)
        shift = jnp.log(target_mean_pressure / mean)
        lsp = state.log_surface_pressure
        lsp = lsp.at[..., 0, 0].add(shift / self._l0_nodal_value)
        return dataclasses.replace(state, log_surface_pressure=lsp)

    def mass_quantum(self, state) -> float:
        """Relative change of global mass from one float32 ulp of the (l=0) log(ps) coefficient:
        the finest mass adjustment the state can represent, i.e. 'rounding' for mass."""
        c00 = np.float32(np.asarray(state.log_surface_pressure)[..., 0, 0].ravel()[0])
        return float(np.spacing(c00) * abs(self._l0_nodal_value))

    def mean_surface_pressure(self, state) -> jax.Array:
        grid = self.coords.horizontal
        return area_mean(grid, jnp.exp(grid.to_nodal(state.log_surface_pressure)))

    def _run(self, state, n_steps: int, target):
        state = jax.lax.fori_loop(0, n_steps, lambda _, s: self._step(s), state)
        return self.fix_mass(state, target) if self.physics.mass_fixer else state

    @functools.cached_property
    def advance(self):
        """advance(state, n_steps, target_mass) -> state: n steps then the mass fixer, jitted."""
        return jax.jit(self._run, static_argnums=1)

    @functools.cached_property
    def advance_batch(self):
        """Like `advance` for a batch of states stacked on a leading axis (members)."""
        return jax.jit(jax.vmap(self._run, in_axes=(0, None, None)), static_argnums=1)


def area_mean(grid: spherical_harmonic.Grid, nodal: jax.Array) -> jax.Array:
    """Gaussian-quadrature area mean over the last two (lon, lat) axes."""
    w = jnp.asarray(grid.quadrature_weights)
    return jnp.sum(nodal * w, axis=(-2, -1)) / jnp.sum(w)


def as_numpy_state(state) -> dict[str, Any]:
    out = {
        "vorticity": np.asarray(state.vorticity),
        "divergence": np.asarray(state.divergence),
        "temperature_variation": np.asarray(state.temperature_variation),
        "log_surface_pressure": np.asarray(state.log_surface_pressure),
        "sim_time": np.asarray(state.sim_time, dtype=np.float64),
    }
    for k, v in state.tracers.items():
        out[f"tracer_{k}"] = np.asarray(v)
    return out


def state_from_numpy(arrays: dict[str, np.ndarray]):
    tracers = {k[len("tracer_") :]: jnp.asarray(v) for k, v in arrays.items() if k.startswith("tracer_")}
    return primitive_equations.State(
        vorticity=jnp.asarray(arrays["vorticity"]),
        divergence=jnp.asarray(arrays["divergence"]),
        temperature_variation=jnp.asarray(arrays["temperature_variation"]),
        log_surface_pressure=jnp.asarray(arrays["log_surface_pressure"]),
        tracers=tracers,
        sim_time=jnp.asarray(arrays["sim_time"], dtype=jnp.float32),
    )
