"""One variable vocabulary: every source name we know, mapped to our channel names and units.

Channel names follow ERA5 short names plus the pressure level (`z500`, `t850`), and the
earth2studio/SFNO names for single-level fields (`u10m`, `t2m`, `msl`, `tcwv`).
"""

from __future__ import annotations

import dataclasses

GRAVITY = 9.80665


@dataclasses.dataclass(frozen=True)
class Variable:
    short: str  # ERA5 short name as the CDS NetCDF names it
    long_name: str  # ARCO-ERA5 / WeatherBench2 name
    units: str  # canonical units (ERA5's)
    standard_name: str
    kind: str  # "pressure", "surface" or "static"
    channel: str  # channel name (surface) or prefix (pressure levels)
    aliases: tuple[str, ...] = ()  # other names used by GRIB, NCEP, WB2, ...
    non_negative: bool = False


VARIABLES: tuple[Variable, ...] = (
    Variable("z", "geopotential", "m**2 s**-2", "geopotential", "pressure", "z", ("geopotential",)),
    Variable("t", "temperature", "K", "air_temperature", "pressure", "t", ("air", "air_temperature")),
    Variable("u", "u_component_of_wind", "m s**-1", "eastward_wind", "pressure", "u", ("uwnd", "eastward_wind")),
    Variable("v", "v_component_of_wind", "m s**-1", "northward_wind", "pressure", "v", ("vwnd", "northward_wind")),
    Variable("q", "specific_humidity", "kg kg**-1", "specific_humidity", "pressure", "q", ("shum",), True),
    Variable("r", "relative_humidity", "%", "relative_humidity", "pressure", "r", ("rhum",), True),
    Variable("w", "vertical_velocity", "Pa s**-1", "lagrangian_tendency_of_air_pressure", "pressure", "w", ("omega",)),
    Variable("t2m", "2m_temperature", "K", "air_temperature", "surface", "t2m", ("2t",)),
    Variable("d2m", "2m_dewpoint_temperature", "K", "dew_point_temperature", "surface", "d2m", ("2d",)),
    Variable("skt", "skin_temperature", "K", "surface_temperature", "surface", "skt"),
    Variable("u10", "10m_u_component_of_wind", "m s**-1", "eastward_wind", "surface", "u10m", ("10u",)),
    Variable("v10", "10m_v_component_of_wind", "m s**-1", "northward_wind", "surface", "v10m", ("10v",)),
    Variable("u100", "100m_u_component_of_wind", "m s**-1", "eastward_wind", "surface", "u100m", ("100u",)),
    Variable("v100", "100m_v_component_of_wind", "m s**-1", "northward_wind", "surface", "v100m", ("100v",)),
    Variable(
        "msl", "mean_sea_level_pressure", "Pa", "air_pressure_at_mean_sea_level", "surface", "msl", ("prmsl", "slp")
    ),
    Variable("sp", "surface_pressure", "Pa", "surface_air_pressure", "surface", "sp", ("pres",)),
    Variable(
        "tcwv",
        "total_column_water_vapour",
        "kg m**-2",
        "lwe_thickness_of_atmosphere_mass_content_of_water_vapor",
        "surface",
        "tcwv",
        ("pwat",),
        True,
    ),
    Variable("tp", "total_precipitation", "m", "precipitation_amount", "surface", "tp", (), True),
    Variable("z_surface", "geopotential_at_surface", "m**2 s**-2", "surface_geopotential", "static", "orography"),
    Variable("lsm", "land_sea_mask", "1", "land_binary_mask", "static", "land_sea_mask", ("land_sea_mask",)),
)

# Names that mean geopotential *height* (metres), converted to geopotential on ingest.
GEOPOTENTIAL_HEIGHT_NAMES = ("gh", "hgt", "geopotential_height")

_BY_NAME: dict[str, Variable] = {}
for _v in VARIABLES:
    for _name in (_v.short, _v.long_name, *_v.aliases):
        _BY_NAME.setdefault(_name.lower(), _v)
STATIC_CHANNELS = tuple(v.channel for v in VARIABLES if v.kind == "static")


def lookup(name: str) -> Variable | None:
    """The vocabulary entry for a source variable name, or None if we do not know it."""
    return _BY_NAME.get(name.lower())


def by_short(short: str) -> Variable:
    for v in VARIABLES:
        if v.short == short:
            return v
    raise KeyError(short)


def channel_name(variable: Variable, level_hpa: float | None) -> str:
    if variable.kind == "pressure":
        if level_hpa is None:
            raise ValueError(f"{variable.short} is a pressure-level variable and needs a level")
        return f"{variable.channel}{int(round(level_hpa))}"
    return variable.channel


def parse_channel(channel: str) -> tuple[Variable, int | None]:
    """Inverse of `channel_name`: 'z500' -> (z, 500), 'u10m' -> (u10, None)."""
    for v in VARIABLES:
        if v.kind != "pressure" and v.channel == channel:
            return v, None
    head = channel.rstrip("0123456789")
    tail = channel[len(head) :]
    for v in VARIABLES:
        if v.kind == "pressure" and v.channel == head and tail:
            return v, int(tail)
    raise KeyError(f"unknown channel name {channel!r}")


def is_non_negative(channel: str) -> bool:
    return parse_channel(channel)[0].non_negative
