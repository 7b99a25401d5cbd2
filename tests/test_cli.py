"""The command line: user errors are one clear line on stderr (no traceback) with exit code 2,
configs are read and options override them."""

from __future__ import annotations

import pytest

from forecast.cli import main


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["run", "--archive", "{tmp}/none.zarr", "--packages", "p", "--init-time", "2001-01-01T00", "--out", "o"],
         "none.zarr: no archive there"),
        (["run", "--archive", "a", "--packages", "p", "--init-time", "2001-13-01T00", "--out", "o"],
         "--init-time '2001-13-01T00': not a time"),
        (["diagnose", "--store", "{tmp}/fc.zarr", "--archive", "a", "--out", "s"], "fc.zarr: no forecast store there"),
        (["diagnose", "--store", "s", "--archive", "a", "--out", "o", "--config", "{cfg}"],
         "plume_point must be [lat, lon]"),
        (["world", "--out", "{tmp}/w", "--config", "{cfg}"], "unknown keys ['plume_point']"),
        (["world", "--out", "{tmp}/w", "--config", "wrld.yaml"], "wrld.yaml: no such file, nor a shipped config"),
        (["regenerate", "--store", "{tmp}/fc.zarr", "--member", "0"], "fc.zarr: no forecast store there"),
        (["backfill", "--archive", "a", "--packages", "p", "--start", "2001-01-05T00", "--end", "2001-01-01T00",
          "--out", "{tmp}/b"], "need start <= end"),
        (["backfill", "--archive", "{tmp}/none.zarr", "--packages", "p", "--start", "2001-01-01T00", "--end",
          "2001-01-02T00", "--out", "{tmp}/b"], "none.zarr: no archive there"),
        (["serve", "--config", "{tmp}/ops.yaml"], "ops.yaml: cannot read config"),
        (["train", "--archive", "{tmp}/none.zarr", "--seed", "0", "--out", "{tmp}/p"], "none.zarr: no archive there"),
        (["ingest", "{tmp}/none.nc", "--archive", "{tmp}/a.zarr"], "none.nc: no such file or store"),
        (["mclimate", "--archive", "a", "--hindcasts", "h", "--date", "2001-02-30"], "--date '2001-02-30': not a time"),
        (["demo", "--out", "{tmp}/d", "--config", "{cfg}"], "unknown keys ['plume_point']"),
    ],
)  # fmt: skip
def test_user_errors_are_one_line_and_exit_2(argv, names, tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("plume_point: [95.0, 0.0]\n")
    argv = [a.format(tmp=tmp_path, cfg=cfg) for a in argv]
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and names in err[0], err
    assert not (tmp_path / "b" / "hindcast.zarr").exists() and not (tmp_path / "d").exists()


def test_world_options_override_its_config(tmp_path):
    from forecast.cli import _world_config, build_parser
    from forecast.config import WorldConfig

    cfg = tmp_path / "world.yaml"
    cfg.write_text("months: 1\nstart_year: 2003\nseed: 4\n")
    args = build_parser().parse_args(["world", "--out", "w", "--config", str(cfg), "--start-year", "2005"])
    assert _world_config(args) == WorldConfig(years=1, seed=4, start_year=2005, months=1)
    args = build_parser().parse_args(["world", "--out", "w", "--seed", "7"])  # configs/world.yaml
    assert _world_config(args) == WorldConfig(seed=7)
