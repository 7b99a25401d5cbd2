"""The SFNO forecast model and its on-disk package (safetensors + JSON, never pickle).

Imports torch and torch-harmonics only (no Zarr, no Prefect), so it runs on a bare GPU box.
"""

from forecast.model.network import ForecastModel, ModelConfig, cos_zenith
from forecast.model.package import PackageError, load_package, save_package

__all__ = ["ForecastModel", "ModelConfig", "PackageError", "cos_zenith", "load_package", "save_package"]
