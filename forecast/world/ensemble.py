"""The physics ensemble: the world's own model run from bred perturbed states.

This is the reference the ML ensemble is compared with (as HENS compared with the IFS
ensemble). Perturbations are bred in the dynamical core's own spectral state space, as
operational centres perturb their own models: starting 3 cycles (18 h) before the init time
from independent random temperature seeds, each 6-hour cycle advances the control and the
perturbed states, takes their difference and rescales it to a fixed global RMS temperature
amplitude. Members are the control at the init time plus and minus each bred vector
(centred pairs). All members advance together as one batch (jax.vmap), not one by one.
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

from forecast.world.dynamics import UNITS, WorldPhysics, area_mean, as_numpy_state, state_from_numpy
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


def _temperature_rms(world: World, temperature_variation) -> jax.Array:
    """Global RMS (all levels, area-weighted) of a modal temperature perturbation, in kelvin."""
    grid = world.core.coords.horizontal
    nodal = grid.to_nodal(temperature_variation)
    kelvin = world.core.specs.nondimensionalize(1 * UNITS.degK)
    return jnp.sqrt(jnp.mean(area_mean(grid, nodal**2), axis=-1)) / kelvin


def _scale_to(world: World, control, perturbed, amplitude: float):
    """control + (perturbed - control) rescaled to the amplitude, for a batch of perturbed states."""
    diff = jax.tree.map(lambda p, c: p - c, perturbed, control)
    rms = jax.vmap(lambda d: _temperature_rms(world, d))(diff.temperature_variation)
    factor = amplitude / jnp.maximum(rms, 1e-12)

    def scale(d):
        return d * factor.reshape((-1,) + (1,) * (d.ndim - 1))

    scaled = {f: scale(getattr(diff, f)) for f in SPECTRAL_FIELDS}
    tracers = {k: scale(v) for k, v in diff.tracers.items()}
    return dataclasses.replace(diff, **scaled, tracers=tracers, sim_time=perturbed.sim_time)


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
    keys = jax.random.split(jax.random.PRNGKey(seed), pairs)  # independent seeds per pair
    noise = jax.vmap(lambda k: jax.random.normal(k, control.temperature_variation.shape))(keys) * kelvin
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
            "perturbation": f"bred vectors in model space: {BREEDING_CYCLES} cycles of {OUTPUT_HOURS} h, "
            f"global RMS temperature {amplitude_kelvin} K, centred pairs",
            "members": members,
            "seed": seed,
        }
    )
    ds = ds.transpose("number", "valid_time", ...)
    if out is not None:
        write_netcdf_atomic(ds, Path(out))
    return ds
