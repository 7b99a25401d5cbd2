"""Run the built-in world and write its history as monthly CDS-style ERA5 NetCDF files.

Layout (as a 2024 CDS download): one pressure-level and one single-level file per month,
`era5_world_pl_YYYYMM.nc` and `era5_world_sfc_YYYYMM.nc`, plus `era5_world_static.nc` with
surface geopotential `z` and land-sea mask `lsm`. Dims `valid_time` (int64 seconds since
1970-01-01), `pressure_level` (hPa), `latitude` 90 -> -90, `longitude` 0 -> 360.

Determinism: the run is a pure function of (seed, years, start year, physics); JAX on the CPU
is deterministic and the files carry no timestamps, so the same arguments give the same bytes.
Every file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr
from tqdm.auto import tqdm

from forecast import __version__
from forecast.vocabulary import by_short
from forecast.world.diagnose import PRESSURE_LEVELS_HPA, PRESSURE_VARIABLES, SURFACE_VARIABLES, Diagnoser
from forecast.world.dynamics import UNITS, Core, WorldPhysics, as_numpy_state, state_from_numpy

log = logging.getLogger(__name__)

SPUNUP_STATE = Path(__file__).parent / "data" / "spunup_state.npz"
# The shipped spun-up state is valid on 1 November; every run integrates from there to
# 1 January of its start year, so the seed's perturbation has grown to full-size weather.
SPUNUP_MONTH_DAY = (11, 1)
SEED_PERTURBATION_KELVIN = 0.01
OUTPUT_HOURS = 6
EPOCH = np.datetime64("2000-01-01T00:00")


@dataclasses.dataclass(frozen=True)
class WorldRun:
    """What to generate. Everything that changes the output bytes is in here."""

    years: int = 1
    seed: int = 0
    start_year: int = 2000
    physics: WorldPhysics = WorldPhysics()
    months: int | None = None  # overrides `years` for runs shorter than a year (tests)

    @property
    def total_months(self) -> int:
        return self.months if self.months is not None else 12 * self.years


class World:
    """The model, its output grid and time bookkeeping, shared by history runs and ensembles."""

    def __init__(self, physics: WorldPhysics = WorldPhysics()):
        self.physics = physics
        self.core = Core(physics)
        self.diagnoser = Diagnoser(self.core)
        self.steps_per_output = self.core.steps_per(OUTPUT_HOURS)
        self._year = self.core.specs.nondimensionalize(365.2425 * 86400 * UNITS.s)

    def sim_time(self, when: np.datetime64) -> float:
        """Model clock: seconds since 2000-01-01 modulo one mean year (only the season matters)."""
        seconds = (np.datetime64(when, "s") - EPOCH).astype("int64")
        return float(np.mod(self.core.specs.nondimensionalize(float(seconds) * UNITS.s), self._year))

    def at(self, state, when: np.datetime64):
        """The state with its clock set to `when` (one clock per member for batched states)."""
        shape = () if state.sim_time is None else jnp.shape(state.sim_time)
        return dataclasses.replace(state, sim_time=jnp.full(shape, self.sim_time(when), jnp.float32))

    def step(self, state, when: np.datetime64, target_mass):
        """Advance one output interval starting at `when`."""
        return self.core.advance(self.at(state, when), self.steps_per_output, target_mass)

    def spunup_state(self, seed: int, start: np.datetime64):
        """The shipped spun-up state plus the seed's perturbation, integrated up to `start`."""
        with np.load(SPUNUP_STATE, allow_pickle=False) as f:
            state = state_from_numpy(dict(f))
        year = pd.Timestamp(start).year
        month, day = SPUNUP_MONTH_DAY
        when = np.datetime64(f"{year - 1}-{month:02d}-{day:02d}T00:00")
        kelvin = self.core.specs.nondimensionalize(1 * UNITS.degK)
        noise = jax.random.normal(jax.random.PRNGKey(seed), state.temperature_variation.shape, jnp.float32)
        state = dataclasses.replace(
            state, temperature_variation=state.temperature_variation + SEED_PERTURBATION_KELVIN * kelvin * noise
        )
        target = self.core.mean_surface_pressure(state)
        while when < start:
            state = self.step(state, when, target)
            when = when + np.timedelta64(OUTPUT_HOURS, "h")
        return state, target

    def trajectory(self, state, start: np.datetime64, end: np.datetime64, target):
        """States every output interval in [start, end): (times, states, state at `end`)."""
        times, states = [], []
        when = start
        while when < end:
            times.append(when)
            states.append(state)
            state = self.step(state, when, target)
            when = when + np.timedelta64(OUTPUT_HOURS, "h")
        return np.array(times, dtype="datetime64[s]"), states, state


def stack_states(states: list) -> dict[str, np.ndarray]:
    arrays = [as_numpy_state(s) for s in states]
    return {k: np.stack([a[k] for a in arrays]) for k in arrays[0]}


def _coords(diagnoser: Diagnoser, times: np.ndarray) -> dict:
    seconds = (times.astype("datetime64[s]") - np.datetime64("1970-01-01T00:00:00")).astype("int64")
    return {
        "valid_time": (
            "valid_time",
            seconds,
            {
                "standard_name": "time",
                "long_name": "time",
                "units": "seconds since 1970-01-01",
                "calendar": "proleptic_gregorian",
            },
        ),
        "latitude": (
            "latitude",
            diagnoser.lat.astype("float64"),
            {
                "units": "degrees_north",
                "standard_name": "latitude",
                "long_name": "latitude",
                "stored_direction": "decreasing",
            },
        ),
        "longitude": (
            "longitude",
            diagnoser.lon.astype("float64"),
            {
                "units": "degrees_east",
                "standard_name": "longitude",
                "long_name": "longitude",
            },
        ),
        "expver": ("valid_time", np.array(["0001"] * len(times)), {"long_name": "experiment version"}),
    }


def _attrs(var_short: str) -> dict:
    v = by_short(var_short)
    return {
        "units": v.units,
        "long_name": v.long_name.replace("_", " ").capitalize(),
        "standard_name": v.standard_name,
        "GRIB_shortName": v.short,
    }


GLOBAL_ATTRS = {
    "Conventions": "CF-1.7",
    "institution": "forecast built-in world (a simulated reanalysis; not ECMWF data)",
}


def fields_to_datasets(diagnoser: Diagnoser, times: np.ndarray, fields: dict[str, np.ndarray]):
    """Physical fields keyed by channel -> (pressure-level dataset, single-level dataset)."""
    coords = _coords(diagnoser, times)
    levels = np.array(PRESSURE_LEVELS_HPA, dtype="float64")
    pl_coords = dict(
        coords,
        pressure_level=(
            "pressure_level",
            levels,
            {"long_name": "pressure", "units": "hPa", "positive": "down", "standard_name": "air_pressure"},
        ),
    )
    pl = xr.Dataset(
        {
            name: (
                ("valid_time", "pressure_level", "latitude", "longitude"),
                np.stack([fields[f"{name}{lev}"] for lev in PRESSURE_LEVELS_HPA], axis=1),
                _attrs(name),
            )
            for name in PRESSURE_VARIABLES
        },
        coords=pl_coords,
        attrs=GLOBAL_ATTRS,
    )
    sfc = xr.Dataset(
        {name: (("valid_time", "latitude", "longitude"), fields[name], _attrs(name)) for name in SURFACE_VARIABLES},
        coords=coords,
        attrs=GLOBAL_ATTRS,
    )
    return pl, sfc


def static_dataset(diagnoser: Diagnoser, time: np.datetime64) -> xr.Dataset:
    coords = _coords(diagnoser, np.array([time], dtype="datetime64[s]"))
    z = (9.80665 * diagnoser.orography_m).astype(np.float32)[None]
    lsm = diagnoser.land_sea_mask.astype(np.float32)[None]
    z_attrs = dict(_attrs("z"), long_name="Geopotential (at the surface)")
    return xr.Dataset(
        {
            "z": (("valid_time", "latitude", "longitude"), z, z_attrs),
            "lsm": (("valid_time", "latitude", "longitude"), lsm, _attrs("lsm")),
        },
        coords=coords,
        attrs=GLOBAL_ATTRS,
    )


def write_netcdf_atomic(ds: xr.Dataset, path: Path) -> None:
    """Write under a temporary name, then rename: a file with the final name is complete."""
    tmp = path.with_name(path.name + ".partial")
    encoding = {name: {"zlib": True, "complevel": 1, "dtype": "float32"} for name in ds.data_vars}
    ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)
    os.replace(tmp, path)


def month_starts(start_year: int, months: int) -> list[np.datetime64]:
    """The first instants of `months` consecutive months, and of the month after them."""
    return [np.datetime64(f"{start_year + i // 12}-{i % 12 + 1:02d}-01T00:00") for i in range(months + 1)]


def generate_world(out_dir: str | Path, run: WorldRun = WorldRun(), progress: bool = True) -> list[Path]:
    """Simulate `run.total_months` months and write monthly CDS-layout NetCDF files into `out_dir`.

    Also writes `restart/state_YYYYMMDDTHH.npz` (the spectral model state at each month start)
    so that a physics ensemble can start from any date without rerunning the history.
    Returns the paths written.
    """
    out = Path(out_dir)
    (out / "restart").mkdir(parents=True, exist_ok=True)
    world = World(run.physics)
    months = month_starts(run.start_year, run.total_months)
    state, target = world.spunup_state(run.seed, months[0])
    written = [out / "era5_world_static.nc"]
    write_netcdf_atomic(static_dataset(world.diagnoser, months[0]), written[0])
    total_steps = int((months[-1] - months[0]) / np.timedelta64(OUTPUT_HOURS, "h"))
    bar = tqdm(total=total_steps, desc="world", unit="step", disable=not progress)
    for begin, end in zip(months[:-1], months[1:], strict=True):
        stamp = pd.Timestamp(begin)
        restart = out / "restart" / f"state_{stamp:%Y%m%dT%H}.npz"
        tmp = restart.with_name(restart.name + ".partial.npz")
        np.savez(tmp, **as_numpy_state(world.at(state, begin)), target_mass=np.asarray(target))
        os.replace(tmp, restart)
        times, states, state = world.trajectory(state, begin, end, target)
        bar.update(len(times))
        fields = world.diagnoser(stack_states(states))
        pl, sfc = fields_to_datasets(world.diagnoser, times, fields)
        for kind, ds in (("pl", pl), ("sfc", sfc)):
            path = out / f"era5_world_{kind}_{stamp:%Y%m}.nc"
            ds.attrs["history"] = f"forecast {__version__} built-in world, seed={run.seed}, start_year={run.start_year}"
            write_netcdf_atomic(ds, path)
            written.append(path)
    bar.close()
    log.info("world: wrote %d files to %s", len(written), out)
    return written
