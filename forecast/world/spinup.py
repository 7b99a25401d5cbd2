"""Make the shipped spun-up state (`data/spunup_state.npz`): run once by a developer.

    python -m forecast.world.spinup [--years 2]

Starts from an isothermal atmosphere at rest with a little noise on 1 November and runs whole
years, so the state ends on 1 November in statistical equilibrium with the seasonal forcing.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
from dinosaur import primitive_equations_states

from forecast.world.dynamics import HUMIDITY, UNITS, as_numpy_state
from forecast.world.generate import SPUNUP_STATE, World

log = logging.getLogger(__name__)


def spin_up(years: int = 2) -> dict[str, np.ndarray]:
    world = World()
    core = world.core
    init, _ = primitive_equations_states.isothermal_rest_atmosphere(
        core.coords,
        core.specs,
        p0=1e5 * UNITS.pascal,
        p1=5e3 * UNITS.pascal,
        surface_height=core.orography_m * UNITS.meter,
    )
    state = init(jax.random.PRNGKey(0))
    state = dataclasses.replace(state, tracers={HUMIDITY: jnp.zeros_like(state.temperature_variation)})
    target = core.mean_surface_pressure(state)
    start = np.datetime64("1998-11-01T00:00")
    end = np.datetime64(f"{1998 + years}-11-01T00:00")
    _, _, state = world.trajectory(state, start, end, target)
    return as_numpy_state(world.at(state, end))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--years", type=int, default=2)
    args = parser.parse_args()
    arrays = spin_up(args.years)
    np.savez_compressed(SPUNUP_STATE, **arrays)
    print(f"wrote {SPUNUP_STATE}")


if __name__ == "__main__":
    main()
