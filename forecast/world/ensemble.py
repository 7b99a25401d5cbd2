"""The physics ensemble: the world's own model run from bred perturbed states.

This is the reference the ML ensemble is compared with (as HENS compared with the IFS
ensemble). The perturbations are the ML engine's hemispheric-centred bred vectors (DESIGN
§3.1) bred with the world's own solver in its own state space, as operational centres perturb
their own models: starting 3 cycles (18 h) before the init time from a seed field with the
HENS 500 km spectrum on temperature (one seed per pair, hashed from (base seed, "world",
init time, pair) as the ML members' are), each 6-hour cycle advances the control once and the
perturbed states together, takes their difference and rescales it so the area-weighted RMS
temperature over 20–90°N and over 20–90°S equals the amplitude (tropical rows divided by a
norm interpolated linearly between the two). Temperature is the norm because the solver's
state has no pressure-level channels to rescale one by one. Members are the control at the
init time plus and minus each bred vector (centred pairs). All members advance together as
one batch (jax.vmap), not one by one. `physics_to_store` writes them in the forecast-store
layout, statistics included, so the two ensembles are compared with the same code.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr
from tqdm.auto import tqdm

from forecast.ensemble.members import member_seed
from forecast.ensemble.perturbation import HEMISPHERE_EDGE_DEG, seed_spectrum
from forecast.world.dynamics import UNITS, WorldPhysics, as_numpy_state, state_from_numpy
from forecast.world.generate import OUTPUT_HOURS, World, fields_to_datasets, write_netcdf_atomic

log = logging.getLogger(__name__)
BREEDING_CYCLES = 3
SPECTRAL_FIELDS = ("vorticity", "divergence", "temperature_variation", "log_surface_pressure")


def restart_before(world_dir: Path, when: np.datetime64) -> tuple[np.datetime64, dict]:
    """The latest restart state written by `generate_world` at or before `when`."""
    candidates = []
    for p in sorted((Path(world_dir) / "restart").glob("state_*.npz")):
        stamp = np.datetime64(pd.Timestamp(p.stem.removeprefix("state_")).to_datetime64(), "h")
        if stamp <= when:
            candidates.append((stamp, p))
    if not candidates:
        raise FileNotFoundError(
            f"{world_dir}/restart: no restart state at or before {when}; generate the world over that period first"
        )
    stamp, path = candidates[-1]
    with np.load(path, allow_pickle=False) as f:
        return stamp, dict(f)


def band_temperature_rms(world: World, temperature_variation) -> tuple[jax.Array, jax.Array]:
    """(north, south): area-weighted RMS in kelvin of a batch of modal temperature
    perturbations over all levels and 20–90°N / 20–90°S."""
    grid = world.core.coords.horizontal
    kelvin = world.core.specs.nondimensionalize(1 * UNITS.degK)
    sq = jnp.mean(jax.vmap(grid.to_nodal)(temperature_variation) ** 2, axis=(1, 2))  # (batch, lat)
    lat = np.rad2deg(np.arcsin(grid.nodal_axes[1]))
    w = np.asarray(grid.quadrature_weights).mean(axis=0)  # per latitude (the same at every longitude)

    def band(rows):
        return jnp.sqrt(jnp.sum(sq[:, rows] * w[rows], axis=-1) / np.sum(w[rows])) / kelvin

    return band(lat >= HEMISPHERE_EDGE_DEG), band(lat <= -HEMISPHERE_EDGE_DEG)


def _scale_to(world: World, control, perturbed, amplitude: float):
    """control + (perturbed - control) rescaled hemispherically (DESIGN §3.1, temperature as
    the norm), for a batch of perturbed states."""
    grid = world.core.coords.horizontal
    diff = jax.tree.map(lambda p, c: p - c, perturbed, control)
    north, south = band_temperature_rms(world, diff.temperature_variation)
    lat = np.rad2deg(np.arcsin(grid.nodal_axes[1]))
    a = jnp.asarray(np.clip((lat + HEMISPHERE_EDGE_DEG) / (2 * HEMISPHERE_EDGE_DEG), 0, 1))
    north = jnp.where(north > 0, north, amplitude)  # a zero norm is left alone
    south = jnp.where(south > 0, south, amplitude)
    factor = amplitude / (north[:, None] * a + south[:, None] * (1 - a))  # (batch, lat)

    def scale(d):
        nodal = jax.vmap(grid.to_nodal)(d)  # (batch, ..., lon, lat)
        f = factor.reshape((factor.shape[0],) + (1,) * (nodal.ndim - 2) + (factor.shape[1],))
        return jax.vmap(grid.to_modal)(nodal * f)

    scaled = {f: scale(getattr(diff, f)) for f in SPECTRAL_FIELDS}
    tracers = {k: scale(v) for k, v in diff.tracers.items()}
    return dataclasses.replace(diff, **scaled, tracers=tracers, sim_time=perturbed.sim_time)


def _seed_field(world: World, control, seed: int) -> np.ndarray:
    """A modal temperature seed with the HENS 500 km amplitude spectrum, from its own seed."""
    grid = world.core.coords.horizontal
    ell = np.asarray(grid.modal_axes[1], np.float64)
    sigma = seed_spectrum()(ell)  # per total wavenumber, along the last modal axis
    shape = control.temperature_variation.shape
    values = np.random.default_rng(seed).standard_normal(shape) * sigma
    return values * np.asarray(grid.mask, np.float64)


def _add(control, diff, sign: float):
    out = {f: getattr(control, f)[None] + sign * getattr(diff, f) for f in SPECTRAL_FIELDS}
    tracers = {k: control.tracers[k][None] + sign * diff.tracers[k] for k in control.tracers}
    return dataclasses.replace(diff, **out, tracers=tracers)


def _broadcast(state, n: int):
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))), state)


def _concat(a, b):
    return jax.tree.map(lambda x, y: jnp.concatenate([x, y]), a, b)


def physics_ensemble(
    world_dir: str | Path,
    init_time: str | np.datetime64,
    members: int = 10,
    lead_hours: int = 240,
    seed: int = 0,
    amplitude_kelvin: float = 0.3,
    physics: WorldPhysics = WorldPhysics(),
    out: str | Path | None = None,
    progress: bool = True,
) -> xr.Dataset:
    """Run `members` (even) members from `init_time` for `lead_hours`; return (and write) them.

    The dataset has dims (number, valid_time, [pressure_level,] latitude, longitude) in the
    world's CDS layout, with `init_time` and `lead_time` coordinates.
    """
    if members < 2 or members % 2:
        raise ValueError(f"members must be an even number >= 2 (centred pairs), got {members}")
    if lead_hours % OUTPUT_HOURS:
        raise ValueError(f"lead_hours must be a multiple of {OUTPUT_HOURS}")
    init = np.datetime64(init_time, "h")
    world = World(physics)
    core = world.core
    start = init - np.timedelta64(BREEDING_CYCLES * OUTPUT_HOURS, "h")
    when, arrays = restart_before(Path(world_dir), start)
    target = jnp.asarray(arrays.pop("target_mass"))
    control = state_from_numpy(arrays)
    while when < start:  # the same 6-hour calls as the history run: the same trajectory
        control = world.step(control, when, target)
        when = when + np.timedelta64(OUTPUT_HOURS, "h")

    pairs = members // 2
    kelvin = core.specs.nondimensionalize(1 * UNITS.degK)
    seeds = [member_seed(seed, "world", init, k) for k in range(pairs)]  # independent, regenerable
    noise = jnp.asarray(np.stack([_seed_field(world, control, s) for s in seeds])) * kelvin
    perturbed = _broadcast(world.at(control, start), pairs)
    perturbed = dataclasses.replace(perturbed, temperature_variation=perturbed.temperature_variation + noise)
    perturbed = _scale_to(world, _broadcast(control, pairs), perturbed, amplitude_kelvin)
    perturbed = _add(control, perturbed, 1.0)
    when = start
    for _ in range(BREEDING_CYCLES):
        # The control is advanced once per cycle for all pairs (not once per pair).
        control = world.step(control, when, target)
        stepped = core.advance_batch(world.at(perturbed, when), world.steps_per_output, target)
        bred = _scale_to(world, _broadcast(control, pairs), stepped, amplitude_kelvin)
        perturbed = _add(control, bred, 1.0)
        when = when + np.timedelta64(OUTPUT_HOURS, "h")
    assert when == init
    ensemble = _concat(_add(control, bred, 1.0), _add(control, bred, -1.0))
    numbers = np.concatenate([np.arange(pairs) * 2, np.arange(pairs) * 2 + 1])

    steps = lead_hours // OUTPUT_HOURS
    outputs = []
    for k in tqdm(range(steps + 1), desc="physics ensemble", unit="step", disable=not progress):
        outputs.append(as_numpy_state(ensemble))  # already stacked along the member axis
        if k < steps:
            now = init + np.timedelta64(k * OUTPUT_HOURS, "h")
            ensemble = core.advance_batch(world.at(ensemble, now), world.steps_per_output, target)
    flat = {key: np.concatenate([o[key] for o in outputs]) for key in outputs[0]}
    fields = world.diagnoser(flat)  # (lead * member, ...)
    times = init + np.arange(steps + 1) * np.timedelta64(OUTPUT_HOURS, "h")
    per_lead = []
    for k in range(steps + 1):
        sl = slice(k * members, (k + 1) * members)
        pl, sfc = fields_to_datasets(
            world.diagnoser,
            np.repeat(times[k : k + 1], members).astype("datetime64[s]"),
            {n: v[sl] for n, v in fields.items()},
        )
        ds = xr.merge([pl, sfc]).rename({"valid_time": "number"}).assign_coords(number=numbers)
        per_lead.append(ds.drop_vars("expver"))
    ds = xr.concat(per_lead, dim="valid_time").sortby("number")
    ds = ds.assign_coords(
        valid_time=("valid_time", times.astype("datetime64[ns]")),
        lead_time=("valid_time", (times - init).astype("timedelta64[h]").astype("int64"), {"units": "hours"}),
        init_time=init.astype("datetime64[ns]"),
    )
    ds.attrs.update(
        {
            "title": "built-in world physics ensemble",
            "perturbation": f"hemispheric-centred bred vectors in the solver's state space: {BREEDING_CYCLES} "
            f"cycles of {OUTPUT_HOURS} h, RMS temperature {amplitude_kelvin} K over 20-90N and 20-90S, centred pairs",
            "members": members,
            "seed": seed,
        }
    )
    ds = ds.transpose("number", "valid_time", ...)
    if out is not None:
        write_netcdf_atomic(ds, Path(out))
    return ds


def physics_to_store(ds: xr.Dataset, out: str | Path, channels: list[str] | None = None) -> str:
    """Write a `physics_ensemble` dataset in the forecast-store layout (DESIGN §2.3): dims
    (init_time, member, lead_time, channel, lat, lon), checkpoint "world", perturbation and
    sign per member, completeness, and the same online statistics as the ML engine's."""
    import torch

    from forecast.ensemble.members import Layout
    from forecast.ensemble.online import EnsembleMoments
    from forecast.ensemble.state import OnlineState
    from forecast.ensemble.store import ForecastStore
    from forecast.ingest.sources import canonical, read_values
    from forecast.vocabulary import parse_channel

    members = int(ds.sizes["number"])
    layout = Layout(("world",), members // 2)
    init = np.datetime64(pd.Timestamp(ds.init_time.values).to_datetime64(), "h")
    leads = [int(h) for h in ds.lead_time.values]
    converted = [canonical(ds, "physics ensemble", member=n) for n in range(members)]
    available = []
    for name in channels or [str(c) for c in _all_channels(converted[0])]:
        variable, level = parse_channel(name)
        if variable.short in converted[0]:
            available.append(name)
    lat, lon = converted[0].lat.values, converted[0].lon.values

    def member_fields(c: xr.Dataset) -> np.ndarray:
        out = []
        for name in available:
            variable, level = parse_channel(name)
            da = c[variable.short]
            out.append(read_values(da.sel(level=level) if level is not None else da))
        return np.stack(out, axis=1).astype(np.float32)  # (lead, channel, lat, lon)

    run = {"source": "built-in world physics ensemble", "attrs": {k: str(v) for k, v in ds.attrs.items()}}
    store = ForecastStore.create(str(out), layout, [init], leads, available, lat, lon, run=run)
    block = layout.blocks(members)[0]
    fields = np.stack([member_fields(c) for c in converted])  # (member, lead, channel, lat, lon)
    state = OnlineState(store, 0, 1, len(leads), [EnsembleMoments(fields.shape[2:])])
    for k in range(len(leads)):
        store.write_lead(0, block, k, fields[:, k])
        state.add(k, block, torch.from_numpy(fields[:, k]))
    store.mark_complete(0, block)
    state.finish()
    return str(out)


def _all_channels(c: xr.Dataset) -> list[str]:
    from forecast.vocabulary import by_short, channel_name

    names = []
    for short, da in c.data_vars.items():
        v = by_short(short)
        if "level" in da.dims:
            names += [channel_name(v, float(level)) for level in da.level.values]
        else:
            names.append(channel_name(v, None))
    return names
