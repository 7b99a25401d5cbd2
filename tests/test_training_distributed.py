"""`forecast.training.distributed` under torchrun with two CPU processes (gloo): the model is
wrapped in torch's DistributedDataParallel, which starts both ranks from rank 0's weights and
gives each the gradient of the loss averaged over both ranks' batches (checked against that
gradient computed here in one process); the unwrapped module's keys carry no `module.` prefix,
and `global_mean` reduces on the process group's device."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from forecast.grid import equiangular
from forecast.model import ForecastModel, ModelConfig
from forecast.training.data import Batch
from forecast.training.loop import WeightedLoss, _rollout_loss

ROOT = Path(__file__).resolve().parents[1]
CHANNELS = ["z500", "t850", "q850", "msl"]


def tiny_model(seed: int) -> ForecastModel:
    torch.manual_seed(seed)
    g = equiangular(9, 16)
    return ForecastModel(
        ModelConfig(embed_dim=8, num_layers=1),
        CHANNELS,
        torch.tensor(g.lat),
        torch.tensor(g.lon),
        mean=torch.tensor([5.5e4, 270.0, 5e-3, 1.01e5]),
        std=torch.tensor([3e3, 15.0, 4e-3, 1.2e3]),
        diff_std=torch.tensor([300.0, 1.5, 1e-3, 150.0]),
        static=torch.randn(2, 9, 16),
        non_negative=[False, False, True, False],
    )


def batch_of(rank: int) -> Batch:
    """Each rank's own data: 3 states and 2 rollout targets (a 2-step rollout through DDP)."""
    g = torch.Generator().manual_seed(100 + rank)
    base = torch.tensor([5.5e4, 270.0, 5e-3, 1.01e5]).view(1, 1, 4, 1, 1)
    scale = torch.tensor([3e3, 15.0, 4e-3, 1.2e3]).view(1, 1, 4, 1, 1)
    x = (base + scale * torch.randn(3, 3, 4, 9, 16, generator=g)).float()
    hours = torch.tensor([420_000.0, 420_006.0, 420_012.0], dtype=torch.float64) + 24 * rank
    return Batch(state=x[:, 0], time_hours=hours, targets=x[:, 1:])


RANK_SCRIPT = """
import json, sys, torch
from pathlib import Path
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel
sys.path.insert(0, {tests!r})
from test_training_distributed import batch_of, tiny_model
from forecast.training import distributed
from forecast.training.loop import WeightedLoss, _rollout_loss

torch.set_num_threads(1)
ranks, dev = distributed.setup(torch.device("cpu"))
model = tiny_model(seed=ranks.rank)  # other weights and static fields on each rank until wrapped
before = distributed.weight_digests(model.net, ranks)
stepper = distributed.wrap(model, ranks)
after = distributed.weight_digests(model.net, ranks)
loss = _rollout_loss(model, WeightedLoss(model, {{}}), batch_of(ranks.rank), dev, False, 6, forward=stepper)
loss.backward()
out = Path(sys.argv[1])
grads = {{k: p.grad.contiguous() for k, p in model.net.named_parameters()}}
save_file(grads, str(out / f"grad{{ranks.rank}}.safetensors"))
(out / f"rank{{ranks.rank}}.json").write_text(json.dumps({{
    "ddp": isinstance(stepper, DistributedDataParallel),
    "ranks": [ranks.rank, ranks.world_size, str(ranks.device)],
    "digests_before": before, "digests_after": after,
    "keys": sorted(model.net.state_dict()),
    "mean": distributed.global_mean(float(ranks.rank + 1), ranks.rank + 1, ranks),
    "loss": float(loss),
}}))
distributed.teardown(ranks)
"""


def test_ddp_averages_the_ranks_gradients_from_rank_0s_weights(tmp_path):
    import json

    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT.format(tests=str(ROOT / "tests"))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env["OMP_NUM_THREADS"] = "1"
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*run, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["ranks"] for i in info] == [[0, 2, "cpu"], [1, 2, "cpu"]] and all(i["ddp"] for i in info)
    before, after = info[0]["digests_before"], info[0]["digests_after"]
    assert before[0] != before[1] and after[0] == after[1] == before[0]  # DDP started both from rank 0's
    # ... and its buffers: rank 1's loss is that of rank 0's model (static fields included) below
    # global_mean: (1 + 2) / (1 + 2) over the ranks' (sum, count)
    assert info[0]["mean"] == info[1]["mean"] == 1.0
    reference = tiny_model(seed=0)
    assert info[0]["keys"] == sorted(reference.net.state_dict())  # no "module." prefixes
    # The gradient both ranks hold is that of the mean of the two ranks' losses, computed here.
    losses = [_rollout_loss(reference, WeightedLoss(reference, {}), batch_of(r), torch.device("cpu"), False, 6)
              for r in (0, 1)]  # fmt: skip
    assert [i["loss"] for i in info] == pytest.approx([float(v.detach()) for v in losses], rel=1e-6)
    (0.5 * (losses[0] + losses[1])).backward()
    grads = [load_file(str(tmp_path / f"grad{r}.safetensors")) for r in (0, 1)]
    assert all(torch.equal(grads[0][k], grads[1][k]) for k in grads[0])
    for name, p in reference.net.named_parameters():
        torch.testing.assert_close(grads[0][name], p.grad, rtol=1e-4, atol=1e-6 * float(p.grad.abs().max()))
