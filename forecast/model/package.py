"""Model packages (DESIGN §2.2): one directory per trained checkpoint.

    weights.safetensors   network weights (float32)
    buffers.safetensors   normalisation statistics and static inputs, as the model holds them
    config.json           format, architecture, channels, grid, time step, seed, training
                          period, spectral lmax/mmax, library versions
    skill.json            {"rmse": {channel: {lead_hours: value}}, "persistence": ..., "climatology": ...}

Loading reads only safetensors and JSON: it never executes code from the package. It checks
the package against the grid and channels it is about to run on and refuses a mismatch.
"""

from __future__ import annotations

import contextlib
import json
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from forecast.model.network import ForecastModel, ModelConfig

FORMAT = "forecast-model/1"
BUFFERS = ("lat", "lon", "mean", "std", "diff_std", "static_raw", "non_negative")


class PackageError(ValueError):
    """A package that is incomplete, of another format, or made for other data."""


def _versions() -> dict[str, str]:
    out = {}
    for name in ("forecast", "torch", "torch-harmonics", "safetensors", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def save_package(
    model: ForecastModel,
    path: str | Path,
    *,
    static_raw: torch.Tensor,
    seed: int,
    time_step_hours: int,
    training: dict,
    skill: dict | None = None,
) -> Path:
    """Write `model` as a package directory; files are written whole, then renamed."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    c = len(model.channels)
    buffers = {
        "lat": model.lat.cpu(),
        "lon": model.lon.cpu(),
        "mean": model.mean.view(c).cpu(),
        "std": model.std.view(c).cpu(),
        "diff_std": model.diff_std.view(c).cpu(),
        "static_raw": static_raw.to(torch.float32).cpu().contiguous(),
        "non_negative": model.non_negative.view(c).to(torch.uint8).cpu(),
    }
    lmax, mmax = model.config.spectral_modes(len(model.lat), len(model.lon))
    config = {
        "format": FORMAT,
        "architecture": {"name": "torch-harmonics SFNO", **model.config.__dict__},
        "channels": model.channels,
        "grid": {
            "type": model.config.grid,
            "nlat": len(model.lat),
            "nlon": len(model.lon),
            "lat_first": float(model.lat[0]),
            "lat_last": float(model.lat[-1]),
        },
        "spectral": {"lmax": lmax, "mmax": mmax},
        "time_step_hours": int(time_step_hours),
        "seed": int(seed),
        "training": training,
        "library_versions": _versions(),
    }
    from safetensors.torch import save_file  # here, not at import: a bare GPU box runs the network without it

    _write(path / "weights.safetensors", lambda p: save_file(weights, p))
    _write(path / "buffers.safetensors", lambda p: save_file(buffers, p))
    _write(path / "config.json", lambda p: Path(p).write_text(json.dumps(config, indent=1)))
    if skill is not None:
        _write(path / "skill.json", lambda p: Path(p).write_text(json.dumps(skill, indent=1)))
    return path


def _write(final: Path, writer) -> None:
    tmp = final.with_name(final.name + ".partial")
    writer(str(tmp))
    tmp.replace(final)


def read_config(path: str | Path) -> dict:
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise PackageError(f"{path}: no config.json: not a model package") from None
    except json.JSONDecodeError as e:
        raise PackageError(f"{path}/config.json: not valid JSON ({e})") from None
    if config.get("format") != FORMAT:
        raise PackageError(f"{path}: package format {config.get('format')!r}, this software reads {FORMAT!r}")
    return config


def check_compatible(
    path: str | Path,
    config: dict,
    *,
    channels: list[str] | None = None,
    lat: np.ndarray | None = None,
    lon: np.ndarray | None = None,
    time_step_hours: int | None = None,
) -> None:
    """Refuse, with the reason, a package made for other channels, grid or time step."""
    if channels is not None and list(channels) != config["channels"]:
        missing = sorted(set(config["channels"]) - set(channels))
        extra = sorted(set(channels) - set(config["channels"]))
        raise PackageError(
            f"{path}: package channels differ from the data's (package-only: {missing}, data-only: {extra}"
            + (", or the order differs" if not missing and not extra else "")
            + ")"
        )
    g = config["grid"]
    if lat is not None and lon is not None:
        if (
            (len(lat), len(lon)) != (g["nlat"], g["nlon"])
            or not np.isclose(lat[0], g["lat_first"])
            or not np.isclose(lat[-1], g["lat_last"])
        ):
            raise PackageError(
                f"{path}: package grid is {g['nlat']}x{g['nlon']} (lat {g['lat_first']}..{g['lat_last']}), "
                f"the data's is {len(lat)}x{len(lon)} (lat {lat[0]}..{lat[-1]})"
            )
    if time_step_hours is not None and int(time_step_hours) != config["time_step_hours"]:
        raise PackageError(
            f"{path}: package steps {config['time_step_hours']} h, the data are every {time_step_hours} h"
        )


def _require(path: Path, name: str) -> None:
    if not (path / name).is_file():
        raise PackageError(f"{path}: {name} is missing")


def load_package(path: str | Path, map_location: str = "cpu", **expect) -> tuple[ForecastModel, dict]:
    """(model in eval mode, config). `expect` may give channels, lat, lon, time_step_hours
    of the data the model will run on; a mismatch raises PackageError."""
    path = Path(path)
    config = read_config(path)
    check_compatible(path, config, **expect)
    for name in ("weights.safetensors", "buffers.safetensors"):
        _require(path, name)
    from safetensors.torch import load_file

    buffers = load_file(str(path / "buffers.safetensors"), device=map_location)
    absent = [b for b in BUFFERS if b not in buffers]
    if absent:
        raise PackageError(f"{path}/buffers.safetensors: missing {absent}")
    arch = {k: v for k, v in config["architecture"].items() if k != "name"}
    model = ForecastModel(
        ModelConfig(**arch),
        config["channels"],
        buffers["lat"],
        buffers["lon"],
        buffers["mean"],
        buffers["std"],
        buffers["diff_std"],
        buffers["static_raw"],
        buffers["non_negative"].bool().tolist(),
    ).to(map_location)
    state = load_file(str(path / "weights.safetensors"), device=map_location)
    try:
        model.net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise PackageError(f"{path}/weights.safetensors: does not fit the architecture in config.json: {e}") from e
    model.eval()
    return model, config


def warm_start(model: ForecastModel, path: str | Path) -> list[str]:
    """Start `model`'s network from the weights of the package at `path`, e.g. a stochastic
    checkpoint from a deterministic one of the same architecture. Returns the parameters the
    package lacks, which keep their initialisation: only a stochastic network's FiLM layers may
    be missing, and they start at zero, so the warm-started network is the package's at first.
    A package for other channels or another grid, another architecture (a shape that differs)
    or a stochastic package into a deterministic model raises PackageError."""
    path = Path(path)
    config = read_config(path)
    check_compatible(path, config, channels=model.channels, lat=model.lat.cpu().numpy(), lon=model.lon.cpu().numpy())
    _require(path, "weights.safetensors")
    from safetensors.torch import load_file

    state = load_file(str(path / "weights.safetensors"), device=str(next(model.net.parameters()).device))
    try:
        missing, unexpected = model.net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a shape that differs: another embed_dim, depth, grid or modes
        raise PackageError(f"{path}/weights.safetensors: does not fit this model's architecture: {e}") from e
    others = [k for k in missing if not k.startswith("films.")]
    if unexpected or others:
        raise PackageError(
            f"{path}/weights.safetensors: does not fit this model's architecture "
            f"(missing {others[:4]}, unexpected {list(unexpected)[:4]})"
        )
    return list(missing)
