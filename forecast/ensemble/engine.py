"""The huge-ensemble engine: every checkpoint from many perturbed initial states, members
folded into the batch dimension, written on a background thread, resumable per block.

One block = the members [start, stop) of one checkpoint = one batch on the device. For each
block the engine draws the block's perturbations (seeds hashed per member), composes ± pairs,
steps the batch to the last lead time and hands every output lead to a writer thread through a
bounded queue, so compute and I/O overlap. The writer cuts the output (channels, box), writes
the block's own chunks, feeds the online accumulators, and when the block's last lead is
written saves the accumulators' state and marks the block's members complete. A rerun skips
complete blocks, so a killed run resumes where it stopped and ends bit-identical on the CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import queue
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from forecast import vocabulary
from forecast.archive import Archive, to_hours
from forecast.ensemble.members import Block, Layout, compose
from forecast.ensemble.online import Accumulator, EnsembleMoments, ExceedanceCounts, ScoreFactory
from forecast.ensemble.perturbation import BREEDING_CYCLES, BredVectors, CorrelatedNoise, GaussianRandomField
from forecast.ensemble.progress import catch_up, pending
from forecast.ensemble.state import OnlineState
from forecast.ensemble.store import ForecastStore, StoreError
from forecast.locks import store_lock

log = logging.getLogger(__name__)
PERTURBATIONS = ("bred", "noise", "grf", "none")  # none: every member starts from the analysis


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Everything besides the init time, the archive and the packages that decides a run."""

    perturbations: int = 16  # per checkpoint; each used with both signs
    perturbation: str = "bred"  # bred | noise | grf
    lead_hours: int = 360
    output_leads: tuple[int, ...] | None = None  # None: every step from 0
    channels: tuple[str, ...] | None = None  # None: all of the archive's
    crop: tuple[float, float, float, float] | None = None  # lat_min, lat_max, lon_min, lon_max
    base_seed: int = 0
    amplitude: float = 0.35  # x the package's 48-hour RMSE (bred vectors and noise)
    block_size: int | None = None  # members per batch; None: from free memory
    store_members: bool = True
    thresholds: dict[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)
    score: bool = False  # hindcasts: score online against the archive's analyses (CRPS, ranks, spectra, EFI)
    # Per-channel amplitudes (x the 48-hour RMSE) over `amplitude`, e.g. from `forecast calibrate`
    channel_amplitudes: dict[str, float] = dataclasses.field(default_factory=dict)
    model_noise: bool = True  # a stochastic checkpoint's own noise; False: its noise held at zero
    # x the model noise's standard deviation (1: as trained; below 1 cost skill on validation,
    # README "The science"); the breeding cycles keep the trained noise (they measure the dynamics' growth)
    noise_scale: float = 1.0

    @classmethod
    def from_dict(cls, params: dict | None) -> RunSettings:
        """From JSON-like values (a Prefect parameter, a store's run record): lists become tuples."""
        params = dict(params or {})
        for key in ("output_leads", "channels", "crop"):
            if params.get(key) is not None:
                params[key] = tuple(params[key])
        params["thresholds"] = {k: tuple(v) for k, v in params.get("thresholds", {}).items()}
        params["channel_amplitudes"] = {k: float(v) for k, v in params.get("channel_amplitudes", {}).items()}
        return cls(**params)

    def __post_init__(self):
        if self.perturbation not in PERTURBATIONS:
            raise ValueError(f"perturbation must be one of {PERTURBATIONS}, got {self.perturbation!r}")
        if self.perturbations < 1:
            raise ValueError(f"perturbations must be >= 1, got {self.perturbations}")
        if self.lead_hours < 0:
            raise ValueError(f"lead_hours must be >= 0, got {self.lead_hours}")
        if self.block_size is not None and self.block_size < 2:
            raise ValueError(f"block_size must be >= 2 (one ± pair), got {self.block_size}")
        bad = {c: a for c, a in self.channel_amplitudes.items() if not a >= 0}
        if bad or not self.amplitude >= 0:
            raise ValueError(f"amplitudes are fractions of the 48-hour RMSE, >= 0: got {self.amplitude}, {bad}")
        if not self.noise_scale >= 0:
            raise ValueError(f"noise_scale multiplies the model noise's std: >= 0, got {self.noise_scale}")
        if self.crop is not None and (len(self.crop) != 4 or self.crop[0] > self.crop[1]):
            raise ValueError(f"crop is (lat_min, lat_max, lon_min, lon_max) with lat_min <= lat_max, got {self.crop}")


# -- planning -------------------------------------------------------------------------------


@dataclasses.dataclass
class Plan:
    """A run resolved against its archive and packages: what every block needs."""

    archive: str
    packages: list[str]
    init_time: np.datetime64
    settings: RunSettings
    layout: Layout
    block_size: int
    step_hours: int
    output_leads: np.ndarray  # hours
    channel_index: np.ndarray
    lat_index: np.ndarray
    lon_index: np.ndarray
    analyses: torch.Tensor  # (cycles + 1, channel, lat, lon): t - 3 steps ... t (bred) or (1, ...)
    non_negative: torch.Tensor

    @property
    def steps(self) -> int:
        return int(self.output_leads.max()) // self.step_hours if len(self.output_leads) else 0

    def run_record(self) -> dict:
        """What the store records about the run (and what a rerun must match)."""
        s = dataclasses.asdict(self.settings)
        s["block_size"] = self.block_size
        s["thresholds"] = {k: list(v) for k, v in sorted(self.settings.thresholds.items())}
        # settings added later are recorded only when they differ from their default, so a
        # store made before them still matches its own rerun
        for key, default in (("channel_amplitudes", {}), ("model_noise", True), ("noise_scale", 1.0)):
            if s[key] == default:
                del s[key]
        return {
            "archive": str(Path(self.archive).resolve()),
            "packages": [str(Path(p).resolve()) for p in self.packages],
            "checkpoints": list(self.layout.checkpoints),
            "settings": json.loads(json.dumps(s)),
            "step_hours": self.step_hours,
        }


def _index_range(values: np.ndarray, lo: float, hi: float, what: str) -> np.ndarray:
    idx = np.flatnonzero((values >= lo) & (values <= hi))
    if not len(idx):
        raise ValueError(f"the crop box selects no {what}: {lo}..{hi} against {values.min()}..{values.max()}")
    return idx


def plan_run(archive: str, packages: Sequence[str], init_time: str | np.datetime64, settings: RunSettings) -> Plan:
    a = Archive.open(str(archive))
    init = np.datetime64(init_time, "h")
    step = a.time_step_hours
    times = a.times[: a.committed]
    cycles = BREEDING_CYCLES if settings.perturbation == "bred" else 0
    wanted = init - np.arange(cycles, -1, -1) * np.timedelta64(step, "h")
    where = np.searchsorted(times, wanted)
    missing = [str(w) for w, i in zip(wanted, where, strict=True) if i >= len(times) or times[i] != w]
    if missing:
        raise ValueError(
            f"{archive}: the run from {init} needs the analyses at {[str(w) for w in wanted]}; missing {missing}"
        )
    analyses = torch.from_numpy(np.asarray(a.fields.get_orthogonal_selection((where,)), np.float32))
    from forecast.model.package import check_compatible, read_config

    for p in packages:  # before any store exists: a package for other data is refused here
        check_compatible(p, read_config(p), channels=a.channels, lat=a.grid.lat, lon=a.grid.lon, time_step_hours=step)
    names = [Path(p).resolve().name for p in packages]
    layout = Layout(tuple(names), settings.perturbations)
    if settings.lead_hours % step:
        raise ValueError(f"lead_hours {settings.lead_hours} is not a multiple of the archive's {step}-hour step")
    leads = (
        np.arange(0, settings.lead_hours + 1, step)
        if settings.output_leads is None
        else np.asarray(settings.output_leads)
    )
    bad = [int(h) for h in leads if h % step or not 0 <= h <= settings.lead_hours]
    if bad or not len(leads) or len(set(leads.tolist())) != len(leads):
        raise ValueError(
            f"output_leads must be distinct multiples of {step} h within 0..{settings.lead_hours}; bad: {bad}"
        )
    channels = a.channels
    chosen = list(settings.channels or channels)
    unknown = [c for c in chosen if c not in channels]
    if unknown:
        raise ValueError(f"{archive}: channels {unknown} are not in the archive (it has {channels})")
    grid = a.grid
    if settings.crop is None:
        lat_index, lon_index = np.arange(len(grid.lat)), np.arange(len(grid.lon))
    else:
        lat_min, lat_max, lon_min, lon_max = settings.crop
        lat_index = _index_range(grid.lat, lat_min, lat_max, "latitudes")
        lon = np.mod(grid.lon, 360.0)
        if lon_min % 360 <= lon_max % 360:
            lon_index = _index_range(lon, lon_min % 360, lon_max % 360, "longitudes")
        else:  # the box crosses the prime meridian
            lon_index = np.concatenate([np.flatnonzero(lon >= lon_min % 360), np.flatnonzero(lon <= lon_max % 360)])
    model_batch = settings.block_size or choose_block_size(archive, packages[0], layout.per_checkpoint)
    return Plan(
        archive=str(archive),
        packages=[str(p) for p in packages],
        init_time=init,
        settings=settings,
        layout=layout,
        block_size=min(model_batch, layout.per_checkpoint),
        step_hours=step,
        output_leads=np.sort(leads.astype(np.int64)),
        channel_index=np.asarray([channels.index(c) for c in chosen]),
        lat_index=lat_index,
        lon_index=lon_index,
        analyses=analyses,
        non_negative=torch.tensor([vocabulary.is_non_negative(c) for c in channels]),
    )


def choose_block_size(archive: str, package: str, cap: int, device: torch.device | None = None) -> int:
    """Members per batch from free memory: the device's free memory on CUDA (measured peak of
    a probe step), the machine's available memory on the CPU (an estimate of the SFNO's
    activations), keeping half of it free. Always an even number, at least 2."""
    device = device or _default_device()
    model = load_model(package, archive, str(device))
    c, nlat, nlon = len(model.channels), len(model.lat), len(model.lon)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        x = torch.zeros((2, c, nlat, nlon), device=device)
        with torch.no_grad():
            model(x, torch.zeros(2, device=device, dtype=torch.float64), model.noise_stream([0, 1], 6).current)
        per_member = max(1, (torch.cuda.max_memory_allocated(device) - base) // 2)
        free, _ = torch.cuda.mem_get_info(device)
    else:
        embed = model.config.embed_dim
        per_member = 4 * nlat * nlon * (4 * c + 8 * embed * (1 + model.config.mlp_ratio))
        free = _available_memory()
    n = int(0.5 * free // per_member)
    return max(2, min(cap, n) // 2 * 2)


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 4 * 2**30


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=8)
def load_model(package: str, archive: str, device: str):
    """Each package is loaded once per process (and checked against the archive)."""
    from forecast.training.data import load_for_archive

    model, config = load_for_archive(package, archive, map_location=device)
    return model.eval()


@functools.lru_cache(maxsize=8)
def package_rmse_48h(package: str, channels: tuple[str, ...]) -> torch.Tensor:
    path = Path(package) / "skill.json"
    try:
        rmse = json.loads(path.read_text())["rmse"]
        return torch.tensor([float(rmse[c]["48"]) for c in channels], dtype=torch.float64)
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: no 48-hour RMSE per channel to scale the perturbations from ({e})") from e


# -- one block ------------------------------------------------------------------------------


def perturbation_for(plan: Plan, block: Block, model) -> object:
    package = plan.packages[block.checkpoint]
    rmse = package_rmse_48h(package, tuple(model.channels))
    kind, settings = plan.settings.perturbation, plan.settings
    unknown = sorted(set(settings.channel_amplitudes) - set(model.channels))
    if unknown:
        raise ValueError(f"channel_amplitudes name channels the model does not have: {unknown}")
    fractions = [settings.channel_amplitudes.get(c, settings.amplitude) for c in model.channels]
    lat, nlon = model.lat.cpu().numpy(), len(model.lon)
    if kind == "none":
        return lambda analysis, seeds: analysis.new_zeros((len(seeds), *analysis.shape))
    if kind == "bred":
        start = float(to_hours(np.asarray([plan.init_time]))[0]) - BREEDING_CYCLES * plan.step_hours
        noise_seed = plan.layout.breeding_noise_seed(block, plan.settings.base_seed, plan.init_time)
        frac = torch.tensor(fractions, dtype=torch.float64)
        return BredVectors(
            model, plan.analyses, start, rmse, fraction=frac, step_hours=plan.step_hours, noise_seed=noise_seed
        )
    amplitudes = {c: fractions[i] * float(rmse[i]) for i, c in enumerate(model.channels)}
    device = next(model.parameters()).device  # noise drawn where the model runs
    if kind == "noise":
        return CorrelatedNoise(model.channels, lat, nlon, amplitudes, device=device)
    return GaussianRandomField(model.channels, lat, nlon, amplitudes, device=device)


@torch.no_grad()
def initial_members(plan: Plan, block: Block, model) -> torch.Tensor:
    """The block's perturbed initial states (block members, channel, lat, lon)."""
    seeds = plan.layout.seeds(block, plan.settings.base_seed, plan.init_time)
    analysis = plan.analyses[-1].to(next(model.parameters()).device)
    deltas = perturbation_for(plan, block, model)(analysis, seeds)
    return compose(analysis, deltas, plan.non_negative)


@torch.no_grad()
def run_block(plan: Plan, block: Block, emit, device: torch.device, compute_lock=None) -> None:
    """Step one block to the last lead; `emit(lead_index, tensor)` for every output lead.
    `compute_lock` (held for the breeding and each step) keeps the model from running beside
    the writer's statistics where both would share the same processor (`Writer`)."""
    lock = compute_lock or contextlib.nullcontext()
    model = load_model(plan.packages[block.checkpoint], plan.archive, str(device))
    with lock:
        state = initial_members(plan, block, model).to(device)
    hours0 = float(to_hours(np.asarray([plan.init_time]))[0])
    wanted = {int(h) // plan.step_hours: i for i, h in enumerate(plan.output_leads)}
    # a stochastic checkpoint's members each step with their own model noise (None otherwise)
    noise = model.noise_stream(
        plan.layout.noise_seeds(block, plan.settings.base_seed, plan.init_time),
        plan.step_hours,
        enabled=plan.settings.model_noise,
        scale=plan.settings.noise_scale,
    )
    for k in range(plan.steps + 1):
        if k in wanted:
            emit(wanted[k], state)
        if k < plan.steps:
            hours = torch.full((block.size,), hours0 + k * plan.step_hours, dtype=torch.float64, device=device)
            with lock:
                state = model(state, hours, noise.current)
                noise.advance()


# -- writing --------------------------------------------------------------------------------


class Writer:
    """The background writer: a bounded queue of (work, lead, members) from the compute loop.
    For each lead it writes the block's members where they are not complete and folds them
    into that lead's stored statistics where those lack the block, so it holds one lead.

    `compute_lock` (`run_ensemble(low_memory=True)` on a CPU): the model's steps and the
    statistics then take turns instead of running side by side. Side by side, the peak memory
    is a step's activations plus a lead's statistics temporaries, more or less of both as the
    two threads happen to meet (at 0.25° the same run's peak varied by ±0.3 GB); taking turns,
    it is the larger of the two (1.6 GB less at 0.25°) but the CPU's cores are no longer shared
    between them (55 % more time for a 15-day run there: README, bench_scale). The member
    writes (I/O) overlap the steps either way. On a GPU the step runs on the device and the
    statistics on the host: no lock."""

    def __init__(
        self, plan: Plan, store: ForecastStore, init_index: int, state: OnlineState, depth: int = 2, compute_lock=None
    ):
        self.plan, self.store, self.init_index, self.state = plan, store, init_index, state
        self.compute_lock = compute_lock or contextlib.nullcontext()
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="forecast-writer", daemon=True)
        self.thread.start()

    @staticmethod
    def cut_values(plan: Plan, members: torch.Tensor) -> np.ndarray:
        """The output part of (members, channel, lat, lon): chosen channels, the crop box."""
        x = members.detach().to("cpu", torch.float32).numpy()
        # each fancy index copies the block's fields: cut only the axes that are cut
        for axis, index in ((1, plan.channel_index), (2, plan.lat_index), (3, plan.lon_index)):
            if not np.array_equal(index, np.arange(x.shape[axis])):
                x = np.take(x, index, axis=axis)
        return x

    def put(self, item) -> None:
        while True:
            if self.error is not None:
                raise RuntimeError("the writer thread failed") from self.error
            try:
                self.queue.put(item, timeout=1.0)
                return
            except queue.Full:
                continue

    def _loop(self) -> None:
        try:
            while (item := self.queue.get()) is not None:
                kind, work, payload = item
                if kind == "lead":
                    lead_index, members = payload
                    values = self.cut_values(self.plan, members)
                    del members, payload, item  # the device copy is not needed past this point
                    if work.write_members:
                        self.store.write_lead(self.init_index, work.block, lead_index, values)
                    if lead_index in work.stat_leads:
                        with self.compute_lock:
                            self.state.add(lead_index, work.block, torch.from_numpy(values))
                elif work.write_members:  # the block's last lead is written: record it
                    self.store.mark_complete(self.init_index, work.block)
        except BaseException as e:  # noqa: BLE001 (re-raised in the compute thread)
            self.error = e
            while True:  # drain so the producer never blocks on a dead writer
                try:
                    self.queue.get_nowait()
                except queue.Empty:
                    break

    def close(self) -> None:
        self.put(None)
        self.thread.join()
        if self.error is not None:
            raise RuntimeError("the writer thread failed") from self.error


# -- the run --------------------------------------------------------------------------------


def check_scores(settings: RunSettings, scores: ScoreFactory | None) -> None:
    """A scored run needs its score accumulators given: the engine does not import the
    diagnostics (a lower layer), the caller injects them."""
    if settings.score and scores is None:
        raise ValueError(
            "RunSettings.score is set but no score accumulators were given: pass "
            "scores=forecast.diagnostics.online_scores.hindcast_scores (or another ScoreFactory)"
        )


def accumulators_for(plan: Plan, store_location: str, scores: ScoreFactory | None = None) -> list[Accumulator]:
    """The recipes of one lead's statistics: moments and exceedances, plus, with `score`, the
    accumulators `scores` makes for the run (`forecast.diagnostics.online_scores`)."""
    check_scores(plan.settings, scores)
    shape = (len(plan.channel_index), len(plan.lat_index), len(plan.lon_index))
    a = Archive.open(plan.archive)
    channels = [a.channels[i] for i in plan.channel_index]
    accs: list[Accumulator] = [
        EnsembleMoments(shape),
        ExceedanceCounts(channels, shape, dict(plan.settings.thresholds)),
    ]
    if plan.settings.score:
        accs += scores(plan, channels, store_location)
    return accs


def open_or_create_store(plan: Plan, out: str) -> tuple[ForecastStore, int]:
    """Open (checking the run record) or create the store and add the init time: serialised
    across processes, so runs for several init times may share one store (hindcasts)."""
    with store_lock(out):
        return _open_or_create_store(plan, out)


def _open_or_create_store(plan: Plan, out: str) -> tuple[ForecastStore, int]:
    record = plan.run_record()
    try:
        store = ForecastStore.open(out, mode="r+")
    except StoreError:
        if Path(out).exists() and any(Path(out).iterdir()):
            raise
        a = Archive.open(plan.archive)
        channels = [a.channels[i] for i in plan.channel_index]
        store = ForecastStore.create(
            out,
            plan.layout,
            [plan.init_time],
            plan.output_leads.tolist(),
            channels,
            a.grid.lat[plan.lat_index],
            a.grid.lon[plan.lon_index],
            run=record,
            store_members=plan.settings.store_members,
        )
        return store, 0
    if store.run != json.loads(json.dumps(record)):
        raise StoreError(
            f"{out}: the store was made by a different run; refusing to mix members. "
            f"stored: {json.dumps(store.run, sort_keys=True)}; this run: {json.dumps(record, sort_keys=True)}"
        )
    return store, store.add_init_time(plan.init_time)


def online_state(
    plan: Plan, store: ForecastStore, init_index: int, out: str, scores: ScoreFactory | None = None
) -> OnlineState:
    """The run's statistics of one init time, kept in the store lead by lead."""
    n_blocks = len(plan.layout.blocks(plan.block_size))
    return OnlineState(store, init_index, n_blocks, len(plan.output_leads), accumulators_for(plan, out, scores))


def run_ensemble(
    archive: str,
    packages: Sequence[str],
    init_time: str | np.datetime64,
    out: str,
    settings: RunSettings = RunSettings(),
    device: str | None = None,
    progress: bool = True,
    blocks: Sequence[int] | None = None,
    low_memory: bool = False,
    scores: ScoreFactory | None = None,
) -> dict:
    """Run (or resume) the ensemble from `init_time` into the store at `out`. Returns a summary.

    `scores` makes the score accumulators of a run with `settings.score` (hindcasts:
    `forecast.diagnostics.online_scores.hindcast_scores`); it is required then, and unused
    otherwise.

    `blocks` limits the run to those block indices (a worker's share); None runs all. Several
    processes may run disjoint (or even the same) blocks of one init time at once: each folds
    its blocks into the store's per-lead statistics under that lead's lock. `low_memory` (a
    CPU run): the statistics run between the model's steps, not beside them (`Writer`); the
    results are the same."""
    check_scores(settings, scores)  # before the store is touched
    dev = torch.device(device) if device else _default_device()
    plan = plan_run(archive, packages, init_time, settings)
    store, init_index = open_or_create_store(plan, out)
    all_blocks = plan.layout.blocks(plan.block_size)
    mine = all_blocks if blocks is None else [all_blocks[i] for i in blocks]
    state = online_state(plan, store, init_index, out, scores)
    work = pending(store, init_index, state, mine)
    if work:
        state.prepare()
    todo = catch_up(store, init_index, state, work)
    log.info(
        "%s: %d members (%d checkpoints x %d perturbations x 2) in %d blocks of %d; %d blocks to run",
        out,
        plan.layout.size,
        len(plan.layout.checkpoints),
        plan.layout.perturbations,
        len(all_blocks),
        plan.block_size,
        len(todo),
    )
    # before the first write: what killed writes left in the chunks these blocks rewrite
    store.remove_stray_temp_files(init_index, [w.block for w in todo if w.write_members])
    compute_lock = threading.Lock() if low_memory and dev.type == "cpu" else None  # see Writer
    writer = Writer(plan, store, init_index, state, compute_lock=compute_lock)
    bar = tqdm(total=len(todo) * (plan.steps + 1) * plan.block_size, desc="member-steps", unit="", disable=not progress)
    try:
        for work in todo:

            def emit(lead_index, members, work=work):
                # No copy: each step makes a new state tensor, none is changed in place.
                writer.put(("lead", work, (lead_index, members.detach().cpu())))

            run_block(plan, work.block, emit, dev, compute_lock)
            writer.put(("done", work, None))
            bar.update((plan.steps + 1) * work.block.size)
    finally:
        writer.close()
        bar.close()
    finished = state.finish()
    return {
        "store": str(out),
        "init_time": str(plan.init_time),
        "members": plan.layout.size,
        "blocks_run": len(todo),
        "block_size": plan.block_size,
        "statistics_complete": finished,
    }


@torch.no_grad()
def regenerate(store_path: str, init_time: str | np.datetime64, member: int, device: str | None = None) -> np.ndarray:
    """Recompute one member of a stored run from its recorded settings: (lead, channel, lat,
    lon) cut as the store is. The member's block is recomputed with the block size the run
    used, so on the same hardware the result equals the stored member bit for bit."""
    store = ForecastStore.open(store_path)
    record = store.run
    plan = plan_run(record["archive"], record["packages"], init_time, RunSettings.from_dict(record["settings"]))
    if [Path(p).resolve().name for p in record["packages"]] != record["checkpoints"]:
        raise StoreError(f"{store_path}: the packages recorded no longer match the checkpoint names")
    block = plan.layout.block_of(member, plan.block_size)
    dev = torch.device(device) if device else _default_device()
    out = np.full(
        (len(plan.output_leads), len(plan.channel_index), len(plan.lat_index), len(plan.lon_index)), np.nan, np.float32
    )
    cut = Writer.cut_values

    def emit(lead_index, state):
        out[lead_index] = cut(plan, state)[member - block.start]

    run_block(plan, block, emit, dev)
    return out
