"""Train one SFNO checkpoint on the archive, resumably: from scratch, from a package's weights
(`init_weights`), or in two stages (`pretrain`: a first config trained into OUT/.pretrain, whose
weights start this one; the default stochastic checkpoint is an MSE one fine-tuned on the CRPS).

AdamW with linear warm-up and cosine decay (a pure function of the step, so nothing but the
step count needs saving), gradient clipping, an area-weighted loss in units of each channel's
one-step difference std (`diff_std`) with per-channel weights, validation each epoch on a held-out period,
then multi-step rollout fine-tuning. bf16 autocast on GPU. With `loss: crps` a stochastic
checkpoint (model noise, `forecast.model.stochastic`) is trained on the almost-fair CRPS of
`ensemble_members` members stepped from each initial state, each with its own model noise.

Resume: after every epoch the weights, the optimizer moments and the progress are written
(safetensors + JSON, never pickle) under `OUT/.train/`. Batch order is a function of
(seed, epoch), so a resumed run on the CPU reaches the same weights as an uninterrupted one.

Data-parallel under `torchrun` with torch's DistributedDataParallel (gloo on CPU, NCCL on
GPUs; see `forecast.training.distributed`); the checkpoint scores itself on its training
device.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from forecast.archive import Archive
from forecast.model import ForecastModel, ModelConfig, save_package
from forecast.model.package import warm_start
from forecast.training import distributed
from forecast.training.crps import CRPSLoss, loss_weights
from forecast.training.data import ArchiveWindows, model_from_archive
from forecast.training.skill import LEADS_HOURS, climatology_map, lead_steps, score

log = logging.getLogger(__name__)
_INIT_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = ModelConfig()
    epochs: int = 3
    finetune_epochs: int = 1
    finetune_rollout_steps: int = 4
    batch_size: int = 8
    lr: float = 2e-3
    min_lr: float = 1e-5
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    grad_clip: float = 1.0
    train_start: str | None = None
    train_end: str | None = None
    valid_start: str | None = None
    valid_end: str | None = None
    channel_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    max_batches_per_epoch: int | None = 120  # bounds an epoch: the 2-core budget is 3 minutes
    # bounds a rollout fine-tuning epoch (None: max_batches_per_epoch): a 16-step batch costs
    # ~16 one-step batches, so this is what keeps a long fine-tuning within a time budget
    finetune_max_batches: int | None = None
    skill_inits: int = 32  # validation initial times scored for skill.json
    # the epoch's validation loss over at most this many batches, a seeded shuffle of the whole
    # validation period (the same every epoch; None: all of it). It never touches the weights;
    # over a year of validation, all of it took 15-40 s an epoch on 2 cores.
    max_valid_batches: int | None = 32
    input_noise: float = 1.0  # training inputs get N(0, (input_noise x one-step difference std)²) noise
    # "mse", or "crps": the almost-fair CRPS (forecast.training.crps) of `ensemble_members`
    # members stepped from each initial state with their own model noise (a stochastic
    # checkpoint: model.noise_length_scales_km given)
    loss: str = "mse"
    ensemble_members: int = 2
    crps_alpha: float = 0.95
    spectral_crps_weight: float = 0.0  # > 0: add this x the spectral CRPS (forecast.training.crps)
    # a model package whose network weights start this training (forecast.model.package.warm_start),
    # e.g. an MSE checkpoint of the same architecture for a CRPS one; None: a fresh initialisation
    init_weights: str | None = None
    # a training config (a path, or the name of a shipped one) trained first, with this seed and
    # these periods, into OUT/.pretrain, whose weights then start this training: the default
    # stochastic checkpoint is an MSE checkpoint fine-tuned on the CRPS (issue #13). The first
    # stage is validated with this config and kept beside the package for a resumed run.
    pretrain: str | None = None

    def __post_init__(self):
        if self.loss not in ("mse", "crps"):
            raise ValueError(f"loss must be 'mse' or 'crps', got {self.loss!r}")
        if self.loss == "crps" and not self.model.stochastic:
            raise ValueError("loss 'crps' trains a stochastic checkpoint: give model.noise_length_scales_km")
        if self.loss == "crps" and not 2 <= self.ensemble_members <= 16:
            raise ValueError(f"ensemble_members must be 2..16 for the CRPS, got {self.ensemble_members}")
        if not 0.0 <= self.crps_alpha <= 1.0:
            raise ValueError(f"crps_alpha must be in [0, 1], got {self.crps_alpha}")
        if self.spectral_crps_weight < 0 or (self.spectral_crps_weight > 0 and self.loss != "crps"):
            raise ValueError(f"spectral_crps_weight must be >= 0, and > 0 needs loss crps: {self.spectral_crps_weight}")
        if not 2 <= self.finetune_rollout_steps <= 16 and self.finetune_epochs:
            raise ValueError(f"finetune_rollout_steps must be 2..16, got {self.finetune_rollout_steps}")
        for key in ("max_batches_per_epoch", "finetune_max_batches", "max_valid_batches"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1 or null (no bound), got {getattr(self, key)}")
        if self.pretrain is not None:
            if self.init_weights is not None:
                raise ValueError("pretrain and init_weights both choose the starting weights: give one")
            from forecast.config import load

            first = load(TrainConfig, self.pretrain)  # validated now, not after an hour of training
            if first.pretrain is not None or first.init_weights is not None:
                raise ValueError(f"pretrain {self.pretrain!r} must start from scratch: it has pretrain or init_weights")
            noise = ("noise_length_scales_km", "noise_correlation_hours")
            ours, theirs = (
                {k: v for k, v in dataclasses.asdict(m).items() if k not in noise} for m in (self.model, first.model)
            )
            if ours != theirs:  # found now, not by warm_start after the first stage has trained
                differ = {k: (theirs[k], ours[k]) for k in ours if ours[k] != theirs[k]}
                raise ValueError(f"pretrain {self.pretrain!r} has another architecture (its, this): {differ}")
        if not 0 <= self.input_noise < 5:
            raise ValueError(
                f"input_noise is in units of the one-step difference std: 0 <= it < 5, got {self.input_noise}"
            )

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.finetune_epochs

    def rollout_steps(self, epoch: int) -> int:
        return 1 if epoch < self.epochs else self.finetune_rollout_steps

    def max_batches(self, epoch: int) -> int | None:
        """The bound on one epoch's batches (None: the whole training period)."""
        if epoch >= self.epochs and self.finetune_max_batches is not None:
            return self.finetune_max_batches
        return self.max_batches_per_epoch


HOLDOUT_FRACTION = 0.1


def resolve_periods(cfg: TrainConfig, times: np.ndarray) -> TrainConfig:
    """Explicit training and validation periods. When neither boundary between them is given,
    the last 10 % of the archive is held out for validation, so validation never sees training
    data by default."""
    if len(times) < 20:
        raise ValueError(f"the archive has {len(times)} time steps; training needs at least 20")
    train_end, valid_start = cfg.train_end, cfg.valid_start
    if train_end is None and valid_start is None:
        cut = int(len(times) * (1 - HOLDOUT_FRACTION))
        train_end, valid_start = str(times[cut - 1]), str(times[cut])
    return dataclasses.replace(
        cfg,
        train_start=cfg.train_start or str(times[0]),
        train_end=train_end or str(times[-1]),
        valid_start=valid_start or str(times[0]),
        valid_end=cfg.valid_end or str(times[-1]),
    )


def learning_rate(cfg: TrainConfig, step: int, total_steps: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


class WeightedLoss(torch.nn.Module):
    """Mean over batch, steps and grid of area weight x channel weight x (error / diff_std)²."""

    def __init__(self, model: ForecastModel, channel_weights: dict[str, float]):
        super().__init__()
        weights, scale = loss_weights(model, channel_weights)
        self.register_buffer("weights", weights)
        self.register_buffer("scale", scale)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        err = (prediction - target) / self.scale
        return (self.weights * err.square()).mean()


def _rollout_loss(
    model,
    loss_fn,
    batch,
    device,
    autocast: bool,
    step_hours: int,
    noise: float = 0.0,
    noise_seed: int = 0,
    forward=None,
    members: int = 1,
) -> torch.Tensor:
    """Mean loss over the batch's targets, stepping `step_hours` (the archive's time step) per
    model call: the zenith angle of step k is that of the input time + k steps. `forward` is
    what steps the state (the DDP-wrapped model in data-parallel training; default `model`).
    A stochastic model steps `members` copies of each initial state, each with its own model
    noise (seeds from `noise_seed`); the loss then takes (batch, members, ...) predictions
    (the CRPS), or one member's (batch, ...) when `members` is 1."""
    forward = forward or model
    state = batch.state.to(device)
    if noise > 0:
        # Noisy inputs, clean targets: the model learns to pull perturbed states back towards
        # the data rather than amplify them, which keeps long autoregressive rollouts stable.
        # The noise is a function of (seed, step), so a resumed run draws the same noise.
        g = torch.Generator().manual_seed(noise_seed)
        eps = torch.randn(state.shape, generator=g).to(device)
        state = state + noise * model.diff_std * eps
    hours = batch.time_hours.to(device)
    targets = batch.targets.to(device)
    b = state.shape[0]
    if members > 1:  # member j of sample i at row i * members + j
        state, hours = state.repeat_interleave(members, 0), hours.repeat_interleave(members, 0)
    stream = model.noise_stream([noise_seed * 4096 + i for i in range(state.shape[0])], step_hours)
    total = 0.0
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
        for k in range(targets.shape[1]):
            state = forward(state, hours + float(step_hours * k), stream.current)
            stream.advance()
            prediction = state.float()
            if members > 1:
                prediction = prediction.view(b, members, *prediction.shape[1:])
            total = total + loss_fn(prediction, targets[:, k])
    return total / targets.shape[1]


# -- resumable state ---------------------------------------------------------------------------


def _save_state(work: Path, model: ForecastModel, optimizer: torch.optim.Optimizer, progress: dict) -> None:
    """Weights, optimizer moments and progress in one safetensors file (progress and the
    optimizer's hyper-parameters as its JSON metadata), replaced atomically."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / "state.safetensors.partial"
    metadata = {"progress": json.dumps(progress), "param_groups": json.dumps(opt["param_groups"])}
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(work / "state.safetensors")


def _load_state(work: Path, model: ForecastModel, optimizer: torch.optim.Optimizer) -> dict | None:
    path = work / "state.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    model.net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    return json.loads(metadata["progress"])


# -- the loop ----------------------------------------------------------------------------------


PRETRAIN_DIR = ".pretrain"


def _pretrain(
    archive: str, out: Path, seed: int, cfg: TrainConfig, device: str | None, progress_bar: bool
) -> tuple[str, dict]:
    """Train `cfg.pretrain` (same seed, same periods) into OUT/.pretrain unless a complete
    package is there; return its path and what the package records of it. Its skill.json is
    written last, so it marks a complete first stage: an interrupted one resumes from its own
    .train state. Under torchrun every rank trains it in the process group the next stage keeps
    using; the ranks other than 0 return before rank 0 has scored and saved it and wait, outside
    any collective (no NCCL timeout however long the scoring), for its skill.json. Why not leave
    the group and join a new one for the next stage, as this did before: two-process CPU
    training failed so in 3 runs of 4 on 2026-12-06 ("Connection reset by peer" in the next
    stage's first barrier), 0 of 4 with one group. The likely cause: torch resets its group
    counter when the default group is destroyed, so the new group has the old one's name and
    keys in torchrun's store, and a rank that joins first can read its peer's stale entries."""
    from forecast.config import load

    first = load(TrainConfig, cfg.pretrain)
    periods = ("train_start", "train_end", "valid_start", "valid_end")
    first = dataclasses.replace(first, **{k: getattr(cfg, k) for k in periods})
    path = out / PRETRAIN_DIR
    if not (path / "skill.json").is_file():
        log.info("%s: first stage, %s, into %s", out, cfg.pretrain, path)
        # no 15-day stability rollout for these weights: only the final package is run
        train(archive, path, seed, first, device, progress_bar=progress_bar, score_stability=False, keep_group=True)
        _wait_for_file(path / "skill.json")  # rank 0 wrote it already; the others wait for it
    return str(path), {"config": cfg.pretrain, "package": str(path)}


def _wait_for_file(path: Path, timeout_s: float = 24 * 3600.0, poll_s: float = 1.0) -> None:
    """Until `path` exists. If rank 0 fails instead, torchrun stops every rank; the timeout
    only ends a wait that nothing else would."""
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: not written by rank 0 within {timeout_s:.0f} s")
        time.sleep(poll_s)


def train(
    archive: str,
    out: str | Path,
    seed: int,
    cfg: TrainConfig = TrainConfig(),
    device: str | None = None,
    stop_after_epoch: int | None = None,
    progress_bar: bool = False,
    score_stability: bool = True,
    keep_group: bool = False,
) -> dict:
    """Train (or resume) one checkpoint; write the model package to `out`. Returns the history.

    `stop_after_epoch` ends the run early after that epoch (its state saved), as an
    interruption would; a second call resumes. `progress_bar` shows the optimizer steps of
    all epochs with the running loss (on the main rank). `score_stability=False` leaves the
    15-day stability rollout out of skill.json (a first stage's). `keep_group` leaves the process
    group (under torchrun) initialised at the end, for a next stage to train in (`_pretrain`)."""
    out = Path(out)
    work = out / ".train"
    start_from, pretraining = cfg.init_weights, None
    if cfg.pretrain is not None:
        start_from, pretraining = _pretrain(archive, out, seed, cfg, device, progress_bar)
    source = Archive.open(str(archive))
    step_hours = source.time_step_hours  # the model steps as the archive does
    lead_steps(LEADS_HOURS, step_hours)  # a step that skill.json cannot be scored at fails now, not after training
    ranks, dev = distributed.setup(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    if cfg.pretrain is not None:  # every rank has seen the first stage's package (`_pretrain`)
        distributed.barrier(ranks)
    with _INIT_LOCK:  # the global RNG: checkpoints trained in threads must not interleave here
        torch.manual_seed(seed)
        model, static = model_from_archive(archive, cfg.model)
    if start_from is not None:
        fresh = warm_start(model, start_from)
        log.info("%s starts from the weights of %s (fresh: %d FiLM tensors)", out, start_from, len(fresh))
    model.to(dev)
    if cfg.loss == "crps":
        loss_fn = CRPSLoss(model, cfg.channel_weights, cfg.crps_alpha, cfg.spectral_crps_weight, cfg.model.grid)
        loss_fn, members = loss_fn.to(dev), cfg.ensemble_members
    else:
        loss_fn, members = WeightedLoss(model, cfg.channel_weights).to(dev), 1
    optimizer = torch.optim.AdamW(model.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    cfg = resolve_periods(cfg, source.times)
    train_sets = {
        k: ArchiveWindows(archive, cfg.train_start, cfg.train_end, k)
        for k in sorted({cfg.rollout_steps(e) for e in range(cfg.total_epochs)})
    }
    valid = ArchiveWindows(archive, cfg.valid_start, cfg.valid_end, 1)

    def batches_in(epoch: int) -> int:
        n = len(train_sets[cfg.rollout_steps(epoch)]) // ranks.world_size // cfg.batch_size
        bound = cfg.max_batches(epoch)
        return min(n, bound) if bound else n

    total_steps = sum(batches_in(e) for e in range(cfg.total_epochs))
    valid_bound = -(-cfg.max_valid_batches // ranks.world_size) if cfg.max_valid_batches else len(valid)
    progress = _load_state(work, model, optimizer) or {"epoch": -1, "step": 0, "history": []}
    # Several ranks: DDP broadcasts rank 0's weights now and averages gradients in backward.
    # `model` stays the unwrapped module (checkpoints, validation, scoring).
    stepper = distributed.wrap(model, ranks)
    if progress["epoch"] >= 0:
        log.info("resuming %s after epoch %d (step %d)", out, progress["epoch"], progress["step"])
    autocast = dev.type == "cuda"
    bar = tqdm(
        total=total_steps, initial=progress["step"], desc=f"train seed {seed}", unit="step",
        disable=not (progress_bar and ranks.is_main),
    )  # fmt: skip
    for epoch in range(progress["epoch"] + 1, cfg.total_epochs):
        start = time.perf_counter()
        model.train()
        losses = []
        data = train_sets[cfg.rollout_steps(epoch)]
        batches = data.batches(cfg.batch_size, seed=seed, epoch=epoch, rank=ranks.rank, world_size=ranks.world_size)
        for i, batch in enumerate(batches):
            if i >= batches_in(epoch):
                break
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, progress["step"], total_steps)
            noise_seed = (seed * 1_000_003 + progress["step"]) * 64 + ranks.rank
            loss = _rollout_loss(
                model, loss_fn, batch, dev, autocast, step_hours, cfg.input_noise, noise_seed, stepper, members
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # under DDP, the gradients arrive averaged over the ranks
            torch.nn.utils.clip_grad_norm_(model.net.parameters(), cfg.grad_clip)
            optimizer.step()
            losses.append(loss.detach().item())
            progress["step"] += 1
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.3f}", refresh=False)
        batches.close()  # a capped epoch leaves early: stop its reader thread now
        model.eval()
        with torch.no_grad():
            vb = valid.batches(cfg.batch_size, seed=0, rank=ranks.rank, world_size=ranks.world_size)
            vl = [
                float(_rollout_loss(model, loss_fn, b, dev, autocast, step_hours, noise_seed=i, members=members))
                for i, b in zip(range(valid_bound), vb, strict=False)
            ]
            vb.close()
        record = {
            "epoch": epoch,
            "rollout_steps": data.rollout_steps,
            "batches": len(losses),
            "train_loss": distributed.global_mean(float(np.sum(losses)), len(losses), ranks),
            "valid_loss": distributed.global_mean(float(np.sum(vl)), len(vl), ranks),
            "valid_batches": len(vl),  # on this rank
            "seconds": round(time.perf_counter() - start, 2),
        }
        progress["history"].append(record)
        progress["epoch"] = epoch
        log.info("epoch %d: %s", epoch, record)
        if ranks.is_main:
            _save_state(work, model, optimizer, progress)
        distributed.barrier(ranks)
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < cfg.total_epochs - 1:
            bar.close()
            distributed.teardown(ranks)
            return progress
    bar.close()
    training = {
        "archive": str(archive),
        "train_period": [cfg.train_start, cfg.train_end],
        "valid_period": [cfg.valid_start, cfg.valid_end],
        "config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
        "history": progress["history"],
        "pretraining": pretraining,
        "ranks": ranks.world_size,
        # Identical on every rank, or data-parallel training went wrong.
        "rank_weight_digests": distributed.weight_digests(model.net, ranks),
    }
    # The digests were the last collective: leave the process group now, so the other ranks
    # do not wait in a barrier (and trip a NCCL timeout) while rank 0 scores the checkpoint.
    # A first stage keeps it for the next; its other ranks wait outside it (`_pretrain`).
    if not keep_group:
        distributed.teardown(ranks, wait=False)
    if not ranks.is_main:
        return progress
    climatology = climatology_map(archive, cfg.train_start, cfg.train_end)
    skill = score(
        model,
        archive,
        cfg.valid_start,
        cfg.valid_end,
        climatology,
        max_inits=cfg.skill_inits,
        step_hours=step_hours,
        stability=score_stability,
    )
    save_package(
        model,
        out,
        static_raw=static,
        seed=seed,
        time_step_hours=step_hours,
        training=training,
        skill=skill,
    )
    return progress
