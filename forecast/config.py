"""YAML configuration, validated on load against typed dataclasses.

Unknown keys, wrong types and bad values are errors that name the file and the key: a typo in
a config must not silently fall back to a default.

The default configs ship inside the package (forecast/configs/*.yaml, package data), so that an
installed `forecast` finds them wherever it runs; `configs/` at the top of a checkout is a link
to that directory. A config is given by path, or by the bare name of a shipped one
("train-demo.yaml"): see `config_path`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
# Beside this module: the same directory in a checkout, an editable install and a regular one.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    years: int = 1
    seed: int = 0
    start_year: int = 2000
    months: int | None = None  # a run shorter than a year (overrides years)

    def __post_init__(self):
        if self.years < 1:
            raise ConfigError(f"world.years must be >= 1, got {self.years}")
        if self.months is not None and self.months < 1:
            raise ConfigError(f"world.months must be >= 1, got {self.months}")


@dataclasses.dataclass(frozen=True)
class DiagnoseConfig:
    """`forecast diagnose --config`: what its plots show (the scores themselves have no
    settings: every estimator is stored, each named in its array's attributes)."""

    plot_channels: list[str] | None = None  # None: z500, t850, t2m, u10m, msl and tcwv where the store has them
    plume_point: list[float] = dataclasses.field(default_factory=lambda: [50.0, 10.0])  # lat, lon of the plume

    def __post_init__(self):
        if len(self.plume_point) != 2 or not -90 <= self.plume_point[0] <= 90:
            raise ConfigError(f"plume_point must be [lat, lon] with lat in -90..90, got {self.plume_point}")


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    grid: str | None = None
    channels: list[str] | None = None
    time_step_hours: int = 6
    member: int = 0

    def __post_init__(self):
        if self.time_step_hours <= 0 or 24 % self.time_step_hours:
            raise ConfigError(f"ingest.time_step_hours must divide 24, got {self.time_step_hours}")


@dataclasses.dataclass(frozen=True)
class DemoTrainConfig:
    config: str = "train-demo.yaml"  # a training config: a path, or the name of a shipped one
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1])

    def __post_init__(self):
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"train.seeds must be distinct and non-empty, got {self.seeds}")


@dataclasses.dataclass(frozen=True)
class DemoEnsembleConfig:
    init_time: str = "2000-12-10T00"
    hindcasts: list[str] = dataclasses.field(
        default_factory=lambda: ["2000-12-03T00", "2000-12-06T00", "2000-12-14T00", "2000-12-17T00"]
    )
    mclimate_window_days: int = 10
    perturbations: int = 4
    lead_hours: int = 120
    output_leads: list[int] | None = None

    def __post_init__(self):
        if self.perturbations < 1 or self.lead_hours < 0 or self.mclimate_window_days < 0:
            raise ConfigError("ensemble: perturbations >= 1, lead_hours >= 0 and mclimate_window_days >= 0")


@dataclasses.dataclass(frozen=True)
class DemoCalibrationConfig:
    """`forecast calibrate` inside the demo: validation init times apart from the forecast's
    and the hindcasts' (the demo's scores are then not those the amplitudes were chosen on)."""

    inits: list[str] = dataclasses.field(
        default_factory=lambda: ["2000-11-26T00", "2000-11-28T00", "2000-12-23T00", "2000-12-26T00"]
    )
    candidates: list[float] = dataclasses.field(default_factory=lambda: [0.35, 0.7, 1.4])
    days: list[int] = dataclasses.field(default_factory=lambda: [3, 4, 5])
    perturbations: int = 2
    noise_scales: list[float] = dataclasses.field(default_factory=lambda: [1.0])  # more than one: chosen too
    objective: str = "crps"  # or "ssr" (forecast.calibration.OBJECTIVES)
    tolerance: float = 0.01  # how much worse than the best single amplitude any channel may do

    def __post_init__(self):
        if not self.inits or len(self.candidates) < 2 or not self.days or self.perturbations < 1:
            raise ConfigError("calibration: give init times, two or more candidates, lead days and perturbations >= 1")
        if not self.noise_scales or min(self.noise_scales) < 0:
            raise ConfigError(f"calibration: noise_scales must be one or more scales >= 0, got {self.noise_scales}")
        if not self.tolerance >= 0:
            raise ConfigError(f"calibration: tolerance must be >= 0, got {self.tolerance}")
        if self.objective not in ("crps", "ssr"):
            raise ConfigError(f"calibration: objective must be 'crps' or 'ssr', got {self.objective!r}")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    world: WorldConfig = WorldConfig()
    ingest: IngestConfig = IngestConfig()
    train: DemoTrainConfig = DemoTrainConfig()
    ensemble: DemoEnsembleConfig = DemoEnsembleConfig()
    calibration: DemoCalibrationConfig | None = None  # None: the ensemble config's amplitudes


def shipped_configs() -> list[str]:
    """The names of the configs shipped with the package."""
    return sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))


def config_path(name: str | Path) -> Path:
    """A config given by path, or by the bare name of a shipped config ("train.yaml": a file of
    that name in the working directory wins). A path with a directory in it is taken as given."""
    path = Path(name)
    if path.exists() or len(path.parts) != 1:
        return path
    return CONFIG_DIR / path


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _check_type(value, option, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[-1])
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        key_type, value_type = typing.get_args(hint)
        return {
            _check_type(k, key_type, f"{where} key"): _check_type(v, value_type, f"{where}.{k}")
            for k, v in value.items()
        }
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(hint)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:  # tuple[X, ...]: a YAML list, kept as a tuple (hashable, frozen)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        item = typing.get_args(hint)[0]
        return tuple(_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(names)}")
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (ConfigError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def load(cls: type[T], path: str | Path) -> T:
    """Read and validate a config: a path, or the name of a shipped config (`config_path`)."""
    given, path = Path(path), config_path(path)
    if path != given and not path.exists():  # a bare name, neither here nor shipped
        raise ConfigError(f"{given}: no such file, nor a shipped config ({', '.join(shipped_configs())})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read config: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return from_dict(cls, data, str(path))


@dataclasses.dataclass(frozen=True)
class OperationsConfig:
    """`forecast serve`: the daily forecast deployment and the hindcast deployment."""

    archive: str
    packages: list[str]
    out_dir: str  # forecast.zarr, scores.zarr and the reports of the daily runs
    hindcast_dir: str | None = None  # default: out_dir/hindcast
    cron: str = "0 6 * * *"  # 06:00 every day
    timezone: str = "UTC"
    cycle_hours: int = 24
    latency_hours: int = 6  # the run at 06:00 forecasts from 00 UTC
    sources: list[str] | None = None  # new analyses to ingest before each run (files, directories, URLs)
    ensemble_config: str = "ensemble.yaml"  # run settings (a path, or the name of a shipped config)
    perturbations: int | None = None  # overrides of the ensemble config
    lead_hours: int | None = None
    hindcast_max_concurrent: int = 2
    calibration: str | None = None  # a `forecast calibrate` file for these packages (read by every run)

    def __post_init__(self):
        if not self.packages:
            raise ConfigError("packages: at least one model package is needed")
        if len(self.cron.split()) != 5:
            raise ConfigError(f"cron must have 5 fields (minute hour day month weekday), got {self.cron!r}")
        if self.cycle_hours <= 0 or 24 % self.cycle_hours:
            raise ConfigError(f"cycle_hours must divide 24, got {self.cycle_hours}")
        if self.hindcast_max_concurrent < 1:
            raise ConfigError("hindcast_max_concurrent must be >= 1")
