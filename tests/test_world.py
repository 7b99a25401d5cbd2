"""The built-in world: layout, determinism, stationarity, seasons, chaos and mass."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from forecast.grid import cell_area_weights
from forecast.world import WorldPhysics, WorldRun, generate_world
from forecast.world.dynamics import UNITS, Core, area_mean, state_from_numpy
from forecast.world.generate import SPUNUP_STATE, World


def _area_mean(da: xr.DataArray) -> xr.DataArray:
    w = xr.DataArray(cell_area_weights(da["latitude"].values), dims="latitude")
    return da.weighted(w).mean(["latitude", "longitude"])


def _open_all(world_dir, kind: str) -> xr.Dataset:
    return xr.open_mfdataset(sorted(world_dir.glob(f"era5_world_{kind}_*.nc")), combine="by_coords")


def test_files_follow_the_2024_cds_layout(world_two_years):
    files = sorted(world_two_years.glob("era5_world_*.nc"))
    assert len(files) == 2 * 24 + 1  # pl + sfc per month, one static file
    pl = xr.open_dataset(world_two_years / "era5_world_pl_200003.nc")
    assert list(pl.z.dims) == ["valid_time", "pressure_level", "latitude", "longitude"]
    assert pl.sizes["latitude"] == 33 and pl.sizes["longitude"] == 64
    assert pl.latitude.values[0] == 90.0 and pl.latitude.values[-1] == -90.0
    assert pl.longitude.values[0] == 0.0 and np.all(np.diff(pl.longitude.values) > 0)
    assert pl.z.attrs["units"] == "m**2 s**-2" and pl.t.attrs["units"] == "K"
    assert "expver" in pl.coords
    assert np.all(np.diff(pl.valid_time.values) == np.timedelta64(6, "h"))
    raw = xr.open_dataset(world_two_years / "era5_world_pl_200003.nc", decode_times=False)
    assert raw.valid_time.attrs["units"] == "seconds since 1970-01-01"
    sfc = xr.open_dataset(world_two_years / "era5_world_sfc_200003.nc")
    channels = 5 * pl.sizes["pressure_level"] + len(sfc.data_vars)
    assert channels >= 8
    assert float(sfc.tcwv.min()) >= 0.0 and float(pl.q.min()) >= 0.0
    static = xr.open_dataset(world_two_years / "era5_world_static.nc")
    assert set(static.data_vars) == {"z", "lsm"}
    assert 0.0 <= float(static.lsm.min()) and float(static.lsm.max()) <= 1.0
    assert float(static.z.max()) > 9.8 * 1500  # real mountains


def test_same_seed_same_bytes_other_seed_other_weather(world_two_years, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        generate_world(d, WorldRun(months=1, seed=7, start_year=2000), progress=False)
    names = sorted(p.name for p in a.glob("*.nc"))
    assert names == sorted(p.name for p in b.glob("*.nc"))
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    # the other seed: the session's world (seed 0) over the same month
    za = xr.open_dataset(a / "era5_world_pl_200001.nc").z.sel(pressure_level=500)
    zc = xr.open_dataset(world_two_years / "era5_world_pl_200001.nc").z.sel(pressure_level=500)
    # A different seed is different weather, not a copy: differences of synoptic size.
    assert float(np.sqrt(((za - zc) ** 2).mean())) > 100.0


def test_climate_is_stationary(world_two_years):
    """Consecutive years' global channel means agree within 5 % of the channel's variability."""
    ds = xr.merge([_open_all(world_two_years, "pl"), _open_all(world_two_years, "sfc")]).drop_vars("expver")
    years = ds.valid_time.dt.year
    for name in ds.data_vars:
        da = ds[name]
        means = _area_mean(da.groupby(years).mean()).compute()
        spread = float(da.std().compute())
        diff = np.abs(means.sel(year=2000) - means.sel(year=2001)).max().item()
        assert diff <= 0.05 * spread, f"{name}: year means differ by {diff:.4g}, 5 % of std is {0.05 * spread:.4g}"


def test_seasonal_cycle_is_there(world_two_years):
    t850 = _open_all(world_two_years, "pl").t.sel(pressure_level=850)
    month = t850.valid_time.dt.month
    north = _area_mean(t850.sel(latitude=slice(70, 30)))
    south = _area_mean(t850.sel(latitude=slice(-30, -70)))
    july_minus_january_n = float(north.where(month == 7).mean() - north.where(month == 1).mean())
    july_minus_january_s = float(south.where(month == 7).mean() - south.where(month == 1).mean())
    assert july_minus_january_n > 5.0, july_minus_january_n
    assert july_minus_january_s < -3.0, july_minus_january_s


def _spunup():
    with np.load(SPUNUP_STATE, allow_pickle=False) as f:
        return state_from_numpy(dict(f))


def test_twin_experiment_errors_grow_tenfold_in_five_days():
    world = World()
    core = world.core
    grid = core.coords.horizontal
    state = _spunup()
    target = core.mean_surface_pressure(state)
    kelvin = core.specs.nondimensionalize(1 * UNITS.degK)
    noise = jax.random.normal(jax.random.PRNGKey(42), state.temperature_variation.shape)
    twin = dataclasses.replace(state, temperature_variation=state.temperature_variation + 1e-3 * kelvin * noise)

    def rms(a, b):  # global RMS temperature difference at the mid-level layer, kelvin
        d = grid.to_nodal(a.temperature_variation - b.temperature_variation)[4] / kelvin
        return float(jnp.sqrt(area_mean(grid, d**2)))

    when = np.datetime64("2001-11-01T00")
    errors = [rms(state, twin)]
    for _ in range(4 * 6):
        state, twin = world.step(state, when, target), world.step(twin, when, target)
        when = when + np.timedelta64(6, "h")
        errors.append(rms(state, twin))
    errors = np.array(errors)
    days = np.arange(len(errors)) / 4
    growth = errors[days == 5][0] / errors[0]
    fit = (days >= 1) & (days <= 6)
    doubling = np.log(2) / np.polyfit(days[fit], np.log(errors[fit]), 1)[0]
    print(f"twin experiment: growth x{growth:.1f} in 5 days, error-doubling time {doubling:.2f} days")
    assert growth >= 10.0
    assert 0.3 < doubling < 3.0


def _mass_drift(physics: WorldPhysics, days: int = 10) -> tuple[float, float]:
    core = Core(physics)
    state = _spunup()
    target = core.mean_surface_pressure(state)
    masses = []
    for _ in range(4 * days):
        state = core.advance(state, core.steps_per(6), target)
        masses.append(float(core.mean_surface_pressure(state)[0] / target[0]))
    assert np.isfinite(np.asarray(state.vorticity)).all()
    return float(np.abs(np.array(masses) - 1.0).max()), core.mass_quantum(state)


def test_unforced_dynamics_conserve_mass_to_rounding():
    drift, quantum = _mass_drift(WorldPhysics(forced=False))
    raw, _ = _mass_drift(WorldPhysics(forced=False, mass_fixer=False))
    print(
        f"unforced 10-day relative mass drift: {drift:.2e} with the fixer (one ulp of log ps = {quantum:.2e}),"
        f" {raw:.2e} without"
    )
    # To rounding: within two ulps of the l=0 log-surface-pressure coefficient (float32).
    assert drift <= 2 * quantum
    assert raw > drift


@pytest.mark.parametrize("members", [4])
def test_physics_ensemble_centred_pairs_and_growing_spread(world_two_years, tmp_path, members):
    from forecast.world.ensemble import physics_ensemble

    out = tmp_path / "ens.nc"
    ds = physics_ensemble(
        world_two_years, "2000-03-10T00", members=members, lead_hours=96, amplitude_kelvin=0.3, progress=False, out=out
    )
    assert out.exists()
    assert ds.sizes["number"] == members and ds.lead_time.values[-1] == 96
    z = ds.z.sel(pressure_level=500)
    # Centred pairs: at lead 0 the pair mean is the same for every pair (the control), up to
    # the second-order effect of the nonlinear diagnostics (geopotential, pressure levels).
    z0 = z.isel(valid_time=0)
    pair_means = [(z0.sel(number=2 * k) + z0.sel(number=2 * k + 1)) / 2 for k in range(members // 2)]
    half_difference = float(np.abs(z0.sel(number=0) - z0.sel(number=1)).max()) / 2
    assert half_difference > 5.0
    assert float(np.abs(pair_means[0] - pair_means[1]).max()) < 0.1 * half_difference
    spread = _area_mean(z.std("number")).values
    assert spread[-1] > 3 * spread[0]
    # The control trajectory matches the history run: the ensemble mean at lead 0 is the analysis.
    analysis = xr.open_dataset(world_two_years / "era5_world_pl_200003.nc").z.sel(
        pressure_level=500, valid_time="2000-03-10T00"
    )
    assert float(np.abs(pair_means[0] - analysis).max()) < 0.1 * half_difference


def test_physics_ensemble_uses_hemispheric_bred_vectors_and_the_forecast_store_layout(world_two_years, tmp_path):
    from forecast.ensemble.store import open_forecast
    from forecast.world.ensemble import (
        _scale_to,
        band_temperature_rms,
        physics_ensemble,
        physics_to_store,
        restart_before,
    )
    from forecast.world.generate import World

    # the rescaling: both 20-90 degree bands at the amplitude (to the modal round trip)
    world = World()
    ds = physics_ensemble(
        world_two_years, "2000-05-02T00", members=4, lead_hours=24, amplitude_kelvin=0.5, progress=False
    )
    _, arrays = restart_before(world_two_years, np.datetime64("2000-05-01T00", "h"))
    arrays.pop("target_mass")
    control = state_from_numpy(arrays)
    rng = np.random.default_rng(0)
    noisy = control.temperature_variation[None] * (
        1 + 0.01 * jnp.asarray(rng.standard_normal((3, *control.temperature_variation.shape)))
    )
    batch = jax.tree.map(lambda x: jnp.broadcast_to(x, (3, *jnp.shape(x))), control)
    perturbed = dataclasses.replace(batch, temperature_variation=noisy)
    bred = _scale_to(world, batch, perturbed, 0.5)
    north, south = band_temperature_rms(world, bred.temperature_variation)
    assert np.allclose(np.asarray(north), 0.5, rtol=0.03) and np.allclose(np.asarray(south), 0.5, rtol=0.03)

    out = physics_to_store(ds, tmp_path / "physics.zarr")
    store = open_forecast(str(out))
    assert store.fields.dims == ("init_time", "member", "lead_time", "channel", "lat", "lon")
    assert store.fields.shape[:3] == (1, 4, 5) and (store.checkpoint.values == "world").all()
    assert list(store.sign.values) == [1, -1, 1, -1] and list(store.perturbation.values) == [0, 0, 1, 1]
    assert store.complete.values.all() and {"z500", "t850", "t2m"} <= set(store.channel.values)
    x = store.fields.values[0]
    assert np.allclose(store.ensemble_mean.values[0], x.mean(0), rtol=1e-6, atol=1e-3)
    # the members are the CDS dataset's, converted to channels (z in m2 s-2 like the archive)
    z500 = ds.z.sel(pressure_level=500).isel(number=1, valid_time=4).values
    got = store.fields.sel(channel="z500").values[0, 1, 4]
    assert np.allclose(got, z500[:: 1 if ds.latitude[0] > ds.latitude[-1] else -1], rtol=1e-6)
