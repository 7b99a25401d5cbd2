"""Prefect flow: choose the perturbation amplitude per channel on validation hindcasts and
write the calibration file that the forecast and hindcast flows read (`forecast.calibration`).

The flow is the library's `calibrate` as one task (its hindcasts resume when retried) and a
markdown artifact of the choice beside the best single amplitude.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from forecast.calibration import DEFAULT_CANDIDATES, DEFAULT_DAYS, calibrate
from forecast.ensemble.engine import RunSettings


def calibration_markdown(result: dict) -> str:
    lines = [
        f"# Calibration on {len(result['init_times'])} validation init times",
        "",
        f"Objective: {result['objective']}, lead days {result['lead_days']}. "
        f"Noise scale {result['settings']['noise_scale']:.3g} (of {result.get('noise_scales', [1.0])}). "
        f"Best common amplitude {result['amplitude']:.3g} x the 48-hour RMSE; the CRPS (common) column is "
        f"the sweep's run at the best single candidate, {result['common_candidate']:.3g}. "
        + (
            ""
            if result["per_channel"]["kept"]
            else "The per-channel amplitudes were refused (a worse mean, or a channel worse than the tolerance "
            "beside the best single amplitude): every channel gets the best single candidate."
        ),
        "",
        "| channel | amplitude | CRPS (chosen) | CRPS (common) | SSR (chosen) |",
        "|---|---|---|---|---|",
    ]
    for c, a in result["channel_amplitudes"].items():
        chosen, common = result["chosen"][c], result["common"][c]
        ssr = chosen["ssr_pooled"]
        lines.append(f"| {c} | {a:.3g} | {chosen['crps']:.4g} | {common['crps']:.4g} | {ssr:.2f} |")
    return "\n".join(lines) + "\n"


@task(retries=1, retry_delay_seconds=10, task_run_name="calibrate on {inits}")
def calibrate_task(
    archive: str, packages: list[str], inits: list[str], out: str, settings: dict, candidates: list[float],
    days: list[int], progress: bool, noise_scales: list[float] | None = None, objective: str = "crps",
    tolerance: float = 0.01,
) -> dict:  # fmt: skip
    return calibrate(
        archive, packages, inits, out, RunSettings.from_dict(settings), candidates=candidates, days=days,
        progress=progress, noise_scales=noise_scales, objective=objective, tolerance=tolerance,
    )  # fmt: skip


@flow(name="calibrate")
def calibrate_flow(
    archive: str,
    packages: list[str],
    inits: list[str],
    out: str,
    settings: dict | None = None,
    candidates: list[float] | None = None,
    days: list[int] | None = None,
    progress: bool = False,
    noise_scales: list[float] | None = None,
    objective: str = "crps",
    tolerance: float = 0.01,
) -> dict:
    """Write the calibration for `packages` from validation init times `inits` to `out`;
    `noise_scales` (more than one) calibrates the model noise's scale as well."""
    result = calibrate_task(
        archive, packages, list(inits), out, settings or {}, list(candidates or DEFAULT_CANDIDATES),
        list(days or DEFAULT_DAYS), progress, noise_scales, objective, tolerance,
    )  # fmt: skip
    markdown = calibration_markdown(result)
    create_markdown_artifact(key="calibration", markdown=markdown, description=f"calibration {out}")
    get_run_logger().info("calibration written to %s: %s", out, result["channel_amplitudes"])
    return result
