"""Another calibration on a demo's own checkpoints, judged like the demo: `forecast calibrate`
on the demo's four validation init times with the options given here, then the demo's four
hindcasts and its forecast (16 members, 5 days, scored online) with that calibration, then
`demo_science.py`'s targets over those five init times. The demo's output is only read.

It is how the README's table of calibrations on one host's demo checkpoints was made
(2026-12-06: about 2 min for the calibration and 1 min 40 s for the runs on 2 cores):

    python benchmarks/demo_recalibrate.py --out demo-output --work DIR \
        [--noise-scales 0.5 1.0] [--candidates 0.35 0.7 1.4] [--objective crps] [--tolerance 0.01]

`--tolerance inf` keeps the per-channel amplitudes whenever their mean objective is no worse
(the guard before its per-channel bound). The result is printed and written to DIR/result.json.
A DIR that already holds a calibration.json reuses it as it is: give a new DIR per variant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo_science import demo_scores  # noqa: E402

from forecast.config import CONFIG_DIR, DemoConfig, load  # noqa: E402


def main() -> None:
    from forecast.calibration import apply_calibration, calibrate
    from forecast.diagnostics.online_scores import hindcast_scores
    from forecast.ensemble.engine import RunSettings, run_ensemble

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo-output", help="the demo's output directory (read only)")
    p.add_argument("--work", required=True, help="where the calibration, the runs and result.json go")
    p.add_argument("--config", default=str(CONFIG_DIR / "demo.yaml"), help="the demo config (init times, members)")
    p.add_argument("--noise-scales", type=float, nargs="+", help="default: the demo config's")
    p.add_argument("--candidates", type=float, nargs="+", help="default: the demo config's")
    p.add_argument("--objective", choices=["crps", "ssr"], help="default: the demo config's")
    p.add_argument("--tolerance", type=float, help="the per-channel guard's bound (default: the demo config's)")
    args = p.parse_args()

    cfg = load(DemoConfig, args.config)
    c, e = cfg.calibration, cfg.ensemble
    root, work = Path(args.out).resolve(), Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    archive = str(root / "archive.zarr")
    packages = sorted(str(q) for q in (root / "packages").iterdir() if (q / "weights.safetensors").exists())
    cal = work / "calibration.json"
    if not cal.exists():
        calibrate(
            archive, packages, c.inits, cal, RunSettings(perturbations=c.perturbations),
            candidates=args.candidates or c.candidates, days=c.days, progress=False,
            noise_scales=args.noise_scales or c.noise_scales, objective=args.objective or c.objective,
            tolerance=c.tolerance if args.tolerance is None else args.tolerance,
        )  # fmt: skip
    run = RunSettings(perturbations=e.perturbations, lead_hours=e.lead_hours, score=True)
    run = apply_calibration(run, cal, packages)
    (work / "forecast").mkdir(exist_ok=True)
    for t in e.hindcasts:
        run_ensemble(archive, packages, t, str(work / "hindcast.zarr"), run, progress=False, scores=hindcast_scores)
    forecast = str(work / "forecast" / "forecast.zarr")
    run_ensemble(archive, packages, e.init_time, forecast, run, progress=False, scores=hindcast_scores)
    data = json.loads(cal.read_text())
    result = {
        "calibration": {
            "noise_scale": data["settings"]["noise_scale"],
            "per_channel_kept": data["per_channel"]["kept"],
            "channel_amplitudes": data["channel_amplitudes"],
        },
        **demo_scores(work),
    }
    text = json.dumps(result, indent=1)
    (work / "result.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
