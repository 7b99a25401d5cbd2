"""The `forecast` command line: demo, world, ingest, train, run, calibrate, regenerate, mclimate, diagnose,
backfill, serve, stats, info. User errors (bad input, bad config) print one line and exit 2;
-v shows the traceback."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

from forecast.config import CONFIG_DIR, ConfigError, DemoConfig, DiagnoseConfig, IngestConfig, WorldConfig, load

log = logging.getLogger("forecast")


def _time(value: str, option: str) -> str:
    """An hourly time given on the command line, checked here so that the error names the option."""
    import numpy as np

    try:
        return str(np.datetime64(value, "h"))
    except ValueError:
        raise ValueError(f"{option} {value!r}: not a time; write e.g. 2001-12-01T00") from None


def _check_inputs(archive: str, packages: list[str]) -> None:
    """The archive opens and every package has a readable config: checked before a flow starts,
    so that a typo fails in one line instead of inside every task."""
    from forecast.archive import Archive
    from forecast.model.package import read_config

    Archive.open(archive)
    for package in packages:
        read_config(package)


def _world_config(args: argparse.Namespace) -> WorldConfig:
    """The config file with the options given on the command line over it."""
    cfg = load(WorldConfig, args.config)
    given = {"years": args.years, "seed": args.seed, "start_year": args.start_year, "months": args.months}
    return WorldConfig(**{**dataclasses.asdict(cfg), **{k: v for k, v in given.items() if v is not None}})


def _cmd_world(args: argparse.Namespace) -> int:
    from forecast.world import WorldRun, generate_world

    cfg = _world_config(args)
    start = time.perf_counter()
    run = WorldRun(years=cfg.years, seed=cfg.seed, start_year=cfg.start_year, months=cfg.months)
    paths = generate_world(args.out, run, progress=not args.quiet)
    print(f"wrote {len(paths)} files to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


def _ingest_config(args: argparse.Namespace) -> IngestConfig:
    cfg = load(IngestConfig, args.config) if args.config else IngestConfig()
    overrides = {
        k: v
        for k, v in (
            ("grid", args.grid),
            ("channels", args.channels),
            ("time_step_hours", args.time_step),
            ("member", args.member),
        )
        if v is not None
    }
    return IngestConfig(**{**cfg.__dict__, **overrides})


def _cmd_ingest(args: argparse.Namespace) -> int:
    from forecast.ingest import ingest

    cfg = _ingest_config(args)
    report = ingest(
        args.sources,
        args.archive,
        grid=cfg.grid,
        channels=cfg.channels,
        time_step_hours=cfg.time_step_hours,
        member=cfg.member,
        progress=not args.quiet,
    )
    print(report.summary())
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from forecast.training.loop import TrainConfig, train

    cfg = load(TrainConfig, args.config)
    result = train(args.archive, args.out, seed=args.seed, cfg=cfg, device=args.device, progress_bar=not args.quiet)
    history = result["history"]
    last = history[-1]
    print(
        f"trained {args.out}: {len(history)} epochs, final train loss {last['train_loss']:.4f}, "
        f"validation loss {last['valid_loss']:.4f}"
    )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from forecast.diagnostics.online_scores import hindcast_scores
    from forecast.ensemble.engine import RunSettings, run_ensemble

    crop = tuple(args.crop) if args.crop else None
    thresholds: dict[str, list[float]] = {}
    for spec in args.threshold or []:
        channel, _, value = spec.partition(">")
        if not value:
            raise ValueError(f"--threshold {spec!r}: write CHANNEL>VALUE, e.g. t2m>303.15")
        thresholds.setdefault(channel.strip(), []).append(float(value))
    base = load(RunSettings, args.config)
    overrides = {
        "perturbations": args.perturbations,
        "perturbation": args.perturbation,
        "lead_hours": args.lead_hours,
        "output_leads": tuple(args.output_leads) if args.output_leads else None,
        "channels": tuple(args.channels) if args.channels else None,
        "crop": crop,
        "base_seed": args.seed,
        "block_size": args.block_size,
        "store_members": False if args.no_members else None,
        "score": True if args.score else None,
        "thresholds": {k: tuple(v) for k, v in thresholds.items()} or None,
        "model_noise": False if args.no_model_noise else None,
        "noise_scale": args.noise_scale,
    }
    settings = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if args.calibration:
        from forecast.calibration import apply_calibration

        settings = apply_calibration(settings, args.calibration, args.packages)
    start = time.perf_counter()
    init = _time(args.init_time, "--init-time")
    summary = run_ensemble(
        args.archive,
        args.packages,
        init,
        args.out,
        settings,
        device=args.device,
        progress=not args.quiet,
        low_memory=args.low_memory,
        scores=hindcast_scores,  # used with --score
    )
    print(
        f"{summary['store']}: {summary['members']} members from {summary['init_time']}, "
        f"{summary['blocks_run']} blocks of {summary['block_size']} run in {time.perf_counter() - start:.1f} s"
    )
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from forecast.archive import Archive
    from forecast.calibration import DEFAULT_CANDIDATES, DEFAULT_DAYS, calibrate
    from forecast.ensemble.engine import RunSettings

    _check_inputs(args.archive, args.packages)
    settings = load(RunSettings, args.config)
    overrides = {"perturbations": args.perturbations, "perturbation": args.perturbation, "base_seed": args.seed}
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    if args.no_model_noise:
        settings = dataclasses.replace(settings, model_noise=False)
    inits = [_time(t, "--init-times") for t in args.init_times or []]
    if args.valid_start or args.valid_end:
        if not (args.valid_start and args.valid_end) or inits:
            raise ValueError("give --valid-start and --valid-end (with --every-days), or --init-times")
        from flows.hindcast import init_times

        first, last = _time(args.valid_start, "--valid-start"), _time(args.valid_end, "--valid-end")
        inits = init_times(first, last, 24 * args.every_days, Archive.open(args.archive).time_step_hours)
    start = time.perf_counter()
    result = calibrate(
        args.archive,
        args.packages,
        inits,
        args.out,
        settings,
        candidates=args.candidates or DEFAULT_CANDIDATES,
        days=args.days or DEFAULT_DAYS,
        channels=args.channels,
        device=args.device,
        progress=not args.quiet,
        noise_scales=args.noise_scales,
        objective=args.objective,
        tolerance=args.tolerance,
    )
    took = time.perf_counter() - start
    print(f"{args.out}: {len(inits)} init times, {len(result['candidates'])} amplitudes, {took:.0f} s")
    if len(result["noise_scales"]) > 1:
        print(f"  noise scale {result['settings']['noise_scale']:.3g} (of {result['noise_scales']})")
    if not result["per_channel"]["kept"]:
        print("  the per-channel amplitudes were refused beside the best single one: every channel gets it")
    print(
        f"  common amplitude {result['amplitude']:.3g}; per channel (CRPS beside the best single candidate, "
        f"{result['common_candidate']:.3g}; SSR pooled over the init times):"
    )
    for c, a in result["channel_amplitudes"].items():
        chosen, common = result["chosen"][c], result["common"][c]
        ssr = chosen["ssr_pooled"]
        print(f"    {c:>8} {a:6.3g}  CRPS {chosen['crps']:.4g} (common {common['crps']:.4g})  SSR {ssr:.2f}")
    return 0


def _cmd_regenerate(args: argparse.Namespace) -> int:
    import numpy as np

    from forecast.ensemble.engine import regenerate
    from forecast.ensemble.store import ForecastStore

    store = ForecastStore.open(args.store)
    init = _time(args.init_time, "--init-time") if args.init_time else str(store.init_times[0])
    i = store.init_index(np.datetime64(init, "h"))
    worst = 0
    for member in args.member:
        fresh = regenerate(args.store, init, member, device=args.device)
        if store.store_members and store.complete(i)[member]:
            stored = store.read_member(i, member)
            same = np.array_equal(fresh, stored, equal_nan=True)
            diff = float(np.nanmax(np.abs(fresh - stored)))
            print(
                f"member {member}: {'identical to' if same else 'differs from'} the stored one (max |diff| {diff:.3g})"
            )
            worst = max(worst, 0 if same else 1)
        else:
            print(f"member {member}: recomputed ({args.store} does not hold it to compare with)")
        if args.out:
            np.save(Path(args.out) / f"member_{member}.npy", fresh)
    return worst


def _cmd_mclimate(args: argparse.Namespace) -> int:
    from forecast.diagnostics.mclimate import build_mclimate, load_mclimate

    for date in [_time(d, "--date") for d in args.date]:
        path = build_mclimate(
            args.archive, args.hindcasts, date, window_days=args.window_days, min_samples=args.min_samples
        )
        clim = load_mclimate(args.archive, date)
        used = len(clim.attrs["inits"])
        print(f"M-climate {clim.attrs['target']}: {clim.attrs['samples']} members, {used} hindcast inits -> {path}")
    return 0


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from forecast.diagnostics.verify import diagnose

    cfg = load(DiagnoseConfig, args.config)  # a bad config fails before any scoring
    start = time.perf_counter()
    summary = diagnose(
        args.store, args.archive, args.out, rescore=args.rescore, progress=not args.quiet, extremes=not args.no_extremes
    )
    if not summary:
        print(f"{args.out}: nothing new to score in {args.store} (scored up to the archive's last analysis)")
    for init, leads in summary.items():
        print(f"{args.out}: init {init} scored, {leads} lead times verified")
    if args.plots:
        from forecast.diagnostics.plots import plot_scores

        paths = plot_scores(
            args.out,
            args.plots,
            forecast_store=args.store,
            archive=args.archive,
            channels=cfg.plot_channels,
            point=tuple(cfg.plume_point),
        )
        print(f"{len(paths)} plots in {args.plots}")
    print(f"diagnose: {time.perf_counter() - start:.1f} s")
    return 0


def _cmd_backfill(args: argparse.Namespace) -> int:
    import dataclasses as dc

    from forecast.ensemble.engine import RunSettings

    settings = load(RunSettings, args.config)
    if args.perturbations:
        settings = dc.replace(settings, perturbations=args.perturbations)
    if args.lead_hours is not None:
        settings = dc.replace(settings, lead_hours=args.lead_hours)
    from flows.hindcast import hindcast_flow, init_times
    from forecast.archive import Archive

    start, end = _time(args.start, "--start"), _time(args.end, "--end")
    init_times(start, end, args.every_hours)  # bad ranges, archives and packages fail before the flow
    for date in args.mclimate or []:
        _time(date, "--mclimate")
    _check_inputs(args.archive, args.packages)
    init_times(start, end, args.every_hours, Archive.open(args.archive).time_step_hours)  # on the archive's step
    result = hindcast_flow(
        args.archive,
        args.packages,
        args.out,
        start,
        end,
        every_hours=args.every_hours,
        settings=json.loads(json.dumps(dc.asdict(settings))),
        max_concurrent=args.max_concurrent,
        mclimate_dates=args.mclimate,
        mclimate_window_days=args.window_days,
    )
    print(f"{result['store']}: {len(result['ran'])} init times run, {len(result['skipped'])} already complete")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from forecast.config import OperationsConfig

    load(OperationsConfig, args.config)  # a bad config fails here, in one line
    from flows.serve import serve_operations

    serve_operations(args.config, cron=args.cron)
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from forecast.archive import Archive

    stats = Archive.open(args.archive, mode="r+").compute_statistics(args.start, args.end)
    print(f"statistics over {stats['period_start']} .. {stats['period_end']} ({stats['time_steps']} steps)")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from forecast.archive import describe

    print(describe(args.archive))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import os

    out = Path(args.out).resolve()
    load(DemoConfig, args.config)  # a bad config fails here, in one line, before anything runs
    if not os.environ.get("PREFECT_API_URL"):
        # no server configured: Prefect's local ephemeral API, its database under the demo's
        # directory, so the completed flow run is kept with everything else the demo made
        os.environ.setdefault("PREFECT_HOME", str(out / "prefect"))
        Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # Prefect makes only the leaf
    from flows.demo import demo_flow

    start = time.perf_counter()
    state = demo_flow(str(out), args.config, progress=not args.quiet, return_state=True)
    result = state.result()
    print(f"demo: {state.name} in {time.perf_counter() - start:.0f} s under {out}")
    print(f"  archive   {result['archive']}")
    print(f"  packages  {', '.join(result['packages'])}")
    if result.get("calibration"):
        print(f"  calibration {result['calibration']}")
    print(f"  forecast  {result['store']} ({result['members']} members from {result['init_time']})")
    print(f"  scores    {result['scores']}")
    print(f"  report    {result['report']}")
    if os.environ.get("PREFECT_HOME") == str(out / "prefect"):
        print(f"  flow runs PREFECT_HOME={out / 'prefect'} prefect flow-run ls")
    return 0


EPILOG = """\
the chain, step by step:
  forecast world --out world/                      # or your ERA5 files
  forecast ingest world/ --archive archive.zarr
  forecast train --archive archive.zarr --seed 0 --out packages/seed000
  forecast calibrate --archive archive.zarr --packages packages/seed* --init-times 2000-11-26T00 --out cal.json
  forecast run --archive archive.zarr --packages packages/seed* --init-time 2000-12-10T00 --out fc.zarr
      [--calibration cal.json]
  forecast diagnose --store fc.zarr --archive archive.zarr --out scores.zarr --plots plots/
or all of it at once: forecast demo --out demo-output
daily operation: forecast serve --config ops.yaml (a copy of the shipped operations.yaml; see the README)
--config takes a path, or the name of a config shipped with the package (e.g. train-demo.yaml)
"""
CONFIG_HELP = "; a path, or a shipped config's name (default: %(default)s)"


def _shipped(name: str) -> str:
    return str(CONFIG_DIR / name)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="forecast",
        description="Huge-ensemble weather forecasting: ingest reanalysis, train SFNO checkpoints, run "
        "ensembles of checkpoints x bred vectors, score them, and operate it all daily with Prefect.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True)

    w = sub.add_parser("world", help="simulate the built-in world into monthly ERA5-like NetCDF files")
    w.add_argument("--out", required=True, help="output directory")
    w.add_argument("--config", default=_shipped("world.yaml"), help="world config (options override)" + CONFIG_HELP)
    w.add_argument("--years", type=int, help="simulated years (config default 1)")
    w.add_argument("--months", type=int, help="simulate this many months instead of whole years")
    w.add_argument("--seed", type=int, help="world seed: another seed is other weather, the same climate")
    w.add_argument("--start-year", type=int, help="first simulated year (config default 2000)")
    w.set_defaults(func=_cmd_world)

    i = sub.add_parser("ingest", help="ingest NetCDF/GRIB/Zarr sources (paths or fsspec URLs) into an archive")
    i.add_argument("sources", nargs="+", help="files, directories of files, Zarr stores or URLs")
    i.add_argument("--archive", required=True, help="archive Zarr store (created if missing)")
    i.add_argument("--config", help="ingest config: a path, or a shipped config's name, e.g. ingest-era5-1deg.yaml")
    i.add_argument("--grid", help="target grid: NLATxNLON (e.g. 33x64) or degrees (e.g. 1.0)")
    i.add_argument("--channels", nargs="+", help="channels to keep (default: all found)")
    i.add_argument("--time-step", type=int, help="archive time step in hours, dividing 24 (default 6)")
    i.add_argument("--member", type=int, help="ensemble member to take from ensemble files (default 0)")
    i.set_defaults(func=_cmd_ingest)

    t = sub.add_parser(
        "train", help="train one SFNO checkpoint (default: stochastic, MSE first then CRPS; resumes if interrupted)"
    )
    t.add_argument("--archive", required=True, help="archive to train on (its last 10%% is held out by default)")
    t.add_argument("--seed", type=int, required=True, help="the seed: each seed is a model perturbation")
    t.add_argument("--out", required=True, help="model package directory (safetensors + JSON)")
    t.add_argument("--config", default=_shipped("train.yaml"), help="training config" + CONFIG_HELP)
    t.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    t.set_defaults(func=_cmd_train)

    s = sub.add_parser("stats", help="recompute an archive's statistics")
    s.add_argument("archive")
    s.add_argument("--start", help="first time of the statistics period (default: first in archive)")
    s.add_argument("--end", help="last time of the statistics period (default: last in archive)")
    s.set_defaults(func=_cmd_stats)

    r = sub.add_parser("run", help="run a huge ensemble: packages x bred vectors x (+, -) from one init time")
    r.add_argument(
        "--archive", required=True, help="archive with the analyses (init time and, for bred vectors, 3 steps before)"
    )
    r.add_argument("--packages", nargs="+", required=True, help="model package directories (one per checkpoint)")
    r.add_argument("--init-time", required=True, help="e.g. 2001-12-01T00")
    r.add_argument("--config", default=_shipped("ensemble.yaml"), help="run settings (options override)" + CONFIG_HELP)
    r.add_argument("--perturbations", type=int, help="perturbations per checkpoint, each used +/- (default 16)")
    r.add_argument(
        "--perturbation", choices=["bred", "noise", "grf", "none"], help="default bred; none: the analysis for all"
    )
    r.add_argument("--no-model-noise", action="store_true", help="hold a stochastic checkpoint's model noise at zero")
    r.add_argument(
        "--noise-scale", type=float, help="x a stochastic checkpoint's model-noise standard deviation (default 1)"
    )
    r.add_argument("--lead-hours", type=int, help="default 360; a multiple of the archive's time step")
    r.add_argument(
        "--output-leads", type=int, nargs="+", help="lead hours to store (default: every step of the archive's)"
    )
    r.add_argument("--channels", nargs="+", help="channels to store (default: all)")
    r.add_argument("--crop", type=float, nargs=4, metavar=("LAT_MIN", "LAT_MAX", "LON_MIN", "LON_MAX"))
    r.add_argument("--threshold", action="append", help="CHANNEL>VALUE: count members above it (repeatable)")
    r.add_argument("--seed", type=int, help="base seed of the member seeds (default 0)")
    r.add_argument("--block-size", type=int, help="members per batch (default: from free memory)")
    r.add_argument("--no-members", action="store_true", help="keep statistics only, not the members")
    r.add_argument("--score", action="store_true", help="score online against the archive (hindcasts)")
    r.add_argument("--out", required=True, help="forecast store (created, or resumed if it exists)")
    r.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    r.add_argument(
        "--low-memory",
        action="store_true",
        help="on a CPU, compute the statistics between model steps, not beside them: a lower, steadier "
        "peak (1.6 GB less at 0.25 degrees) for more time (about 1.5x for 15 days there)",
    )
    r.add_argument(
        "--calibration", help="a forecast calibrate file: its per-channel amplitudes (for these packages only)"
    )
    r.set_defaults(func=_cmd_run)

    c = sub.add_parser(
        "calibrate",
        help="choose the perturbation amplitude per channel (and the noise scale) on validation hindcasts",
    )
    c.add_argument("--archive", required=True, help="archive with the analyses of the validation period")
    c.add_argument("--packages", nargs="+", required=True, help="the model packages the runs will use")
    c.add_argument("--init-times", nargs="+", help="validation init times (never the test period)")
    c.add_argument("--valid-start", help="or: validation init times from here ...")
    c.add_argument("--valid-end", help="... to here ...")
    c.add_argument("--every-days", type=int, default=7, help="... every this many days (default 7)")
    c.add_argument("--config", default=_shipped("ensemble.yaml"), help="run settings (options override)" + CONFIG_HELP)
    c.add_argument("--perturbations", type=int, help="perturbations per checkpoint, each used +/-")
    c.add_argument("--perturbation", choices=["bred", "noise", "grf"], help="default: the config's")
    c.add_argument("--no-model-noise", action="store_true", help="calibrate with the model noise held at zero")
    c.add_argument("--seed", type=int, help="base seed of the member seeds")
    c.add_argument("--candidates", type=float, nargs="+", help="amplitudes to try (x the 48-hour RMSE)")
    c.add_argument("--days", type=int, nargs="+", help="lead days whose objective is minimised (default 3..10)")
    c.add_argument("--channels", nargs="+", help="channels given their own amplitude (default: all)")
    c.add_argument(
        "--noise-scales", type=float, nargs="+", help="model-noise scales to choose from too (default: the config's)"
    )
    c.add_argument(
        "--objective", choices=["crps", "ssr"], default="crps",
        help="minimise the fair CRPS (default) or (log spread-skill ratio)^2 over the lead days",
    )  # fmt: skip
    c.add_argument(
        "--tolerance", type=float, default=0.01,
        help="per-channel amplitudes are refused if a channel does worse than under the best single one by more",
    )  # fmt: skip
    c.add_argument("--out", required=True, help="the calibration file (JSON) to write")
    c.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    c.set_defaults(func=_cmd_calibrate)

    g = sub.add_parser(
        "regenerate",
        help="recompute members of a stored run and compare with the store",
        description="Recompute members bit for bit from the run's record in the store (packages, archive, "
        "settings, seeds). It takes no --config: the settings are the store's, and any other would "
        "compute other members.",
    )
    g.add_argument("--store", required=True, help="forecast store")
    g.add_argument("--member", type=int, nargs="+", required=True, help="member indices")
    g.add_argument("--init-time", help="default: the store's first")
    g.add_argument("--out", help="directory to save the recomputed members as .npy")
    g.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    g.set_defaults(func=_cmd_regenerate)

    mc = sub.add_parser("mclimate", help="build the M-climate (EFI/SOT) from hindcast stores into the side store")
    mc.add_argument("--archive", required=True, help="the archive whose side store keeps the M-climate")
    mc.add_argument("--hindcasts", nargs="+", required=True, help="hindcast forecast stores (with members)")
    mc.add_argument("--date", nargs="+", required=True, help="target dates (their calendar day), e.g. 2001-12-01")
    mc.add_argument("--window-days", type=int, default=15, help="hindcast inits within this many days (default 15)")
    mc.add_argument("--min-samples", type=int, default=20, help="refuse an M-climate of fewer members (default 20)")
    mc.set_defaults(func=_cmd_mclimate)

    v = sub.add_parser("diagnose", help="score a forecast store against the archive into a scores store")
    v.add_argument("--store", required=True, help="forecast store (members kept)")
    v.add_argument("--archive", required=True, help="archive with the verifying analyses")
    v.add_argument("--out", required=True, help="scores store (created, or extended if it exists)")
    v.add_argument("--plots", help="directory for PNG plots of the scores")
    v.add_argument("--config", default=_shipped("diagnose.yaml"), help="what the plots show" + CONFIG_HELP)
    v.add_argument("--rescore", action="store_true", help="score everything again (new analyses are scored without it)")
    v.add_argument(
        "--no-extremes",
        action="store_true",
        help="leave out the tails, q99 event scores and ensemble-size curves (about 0.7 x the time at 128 members)",
    )
    v.set_defaults(func=_cmd_diagnose)

    b = sub.add_parser("backfill", help="hindcasts over a date range (skips complete init times), then the M-climate")
    b.add_argument("--archive", required=True, help="archive with the analyses")
    b.add_argument("--packages", nargs="+", required=True, help="model package directories")
    b.add_argument("--start", required=True, help="first init time, e.g. 2001-01-01T00")
    b.add_argument("--end", required=True, help="last init time")
    b.add_argument(
        "--every-hours", type=int, default=24, help="hours between init times, a multiple of the archive's step (24)"
    )
    b.add_argument("--out", required=True, help="directory of the hindcast store (hindcast.zarr)")
    b.add_argument("--config", default=_shipped("ensemble.yaml"), help="run settings" + CONFIG_HELP)
    b.add_argument("--perturbations", type=int, help="override the config's")
    b.add_argument("--lead-hours", type=int, help="override the config's")
    b.add_argument("--max-concurrent", type=int, default=2, help="init times run at once (default 2)")
    b.add_argument("--mclimate", nargs="+", help="then build the M-climate for these dates")
    b.add_argument("--window-days", type=int, default=15, help="M-climate window, +/- days (default 15)")
    b.set_defaults(func=_cmd_backfill)

    sv = sub.add_parser("serve", help="serve the daily forecast (cron) and hindcast deployments until stopped")
    sv.add_argument("--config", default=_shipped("operations.yaml"), help="operations config" + CONFIG_HELP)
    sv.add_argument("--cron", help="override the config's schedule, e.g. '0 6 * * *'")
    sv.set_defaults(func=_cmd_serve)

    n = sub.add_parser("info", help="describe an archive")
    n.add_argument("archive")
    n.set_defaults(func=_cmd_info)

    d = sub.add_parser(
        "demo", help="the whole chain on the built-in world: world, ingest, train, ensemble, scores, report"
    )
    d.add_argument("--out", default="demo-output", help="everything the demo makes goes here (default demo-output)")
    d.add_argument(
        "--config", default=_shipped("demo.yaml"), help="demo config: world, training, ensemble" + CONFIG_HELP
    )
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network at run time
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")  # see flows/__init__.py
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("httpx", "httpcore", "jax._src.xla_bridge"):  # one line per HTTP call to Prefect's API
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from forecast.archive import ArchiveError
    from forecast.ensemble.store import StoreError
    from forecast.ingest.sources import IngestError
    from forecast.model import PackageError

    try:
        return args.func(args)
    except (IngestError, ArchiveError, ConfigError, StoreError, PackageError, ValueError) as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
