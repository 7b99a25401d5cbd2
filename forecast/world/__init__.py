"""The built-in world: a forced, dissipative, chaotic atmosphere that writes ERA5-like files."""

from forecast.world.dynamics import WorldPhysics
from forecast.world.generate import WorldRun, generate_world

__all__ = ["WorldPhysics", "WorldRun", "generate_world"]
