"""The almost-fair CRPS as a training loss for stochastic checkpoints (issue #13; AIFS-CRPS,
Lang et al. 2024).

For M members x_j of one initial state and the target y, per point:

    afCRPS_α = (1/M) Σ_j |x_j − y| − (1 − ε) / (2 M (M − 1)) Σ_{j,k} |x_j − x_k|,  ε = (1 − α) / M,

which is α · fairCRPS + (1 − α) · CRPS of the empirical CDF. α = 1 is the fair CRPS, unbiased
for the distribution the members are drawn from, but its gradient does not penalise members
that collapse onto each other while the ensemble is small; α = 0.95 (AIFS) keeps a little of
the empirical form for that. The spread term is summed over the M(M − 1)/2 pairs, one pair at
a time (M is 2–8 in training, so no (M, M, …) tensor): the loss is differentiable everywhere
but on ties, where |·| has a subgradient.

`CRPSLoss` weighs it as `WeightedLoss` weighs the squared error: per channel in units of the
one-step difference std, by cell area and channel weight, mean over batch and grid.

With `spectral_weight` > 0 it adds a spectral term (FourCastNet 3 weighs its own 0.1): the same
afCRPS of the moduli |f̂_lm| / sqrt(4π) of the members' spherical harmonic coefficients against
the target's, summed over (l, m) with weight 2 for m > 0 (each stands for ±m of a real field),
so by Parseval a field's Σ w_m |f̂_lm|² / 4π is its area mean square. A moduli score ignores
phase: it rewards members whose power at every scale is the analysis's, which the gridpoint
CRPS alone does not (a blurred member scores well there while its small scales are lost).
"""

from __future__ import annotations

import math

import torch
from torch_harmonics import RealSHT

from forecast.grid import cell_area_weights
from forecast.harmonics import build, default_lmax


def almost_fair_crps(members: torch.Tensor, target: torch.Tensor, alpha: float = 0.95, dim: int = 1) -> torch.Tensor:
    """Pointwise afCRPS_α over the members along `dim` (at least 2); `target` has the
    members' shape without `dim`. Returns the target's shape, in the members' dtype."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    x = members.movedim(dim, 0)
    m = x.shape[0]
    if m < 2:
        raise ValueError(f"the almost-fair CRPS needs at least 2 members along dim {dim}, got {m}")
    if x.shape[1:] != target.shape:
        raise ValueError(f"members {tuple(members.shape)} without dim {dim} do not match target {tuple(target.shape)}")
    skill = (x - target).abs().mean(0)
    pairs = torch.zeros_like(skill)
    for j in range(m - 1):
        pairs = pairs + (x[j + 1 :] - x[j]).abs().sum(0)  # Σ_{k>j} |x_k − x_j|
    eps = (1.0 - alpha) / m
    return skill - (1.0 - eps) * pairs / (m * (m - 1))  # Σ_{j,k} = 2 Σ_{j<k}


def loss_weights(model, channel_weights: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights (1, channel, lat, 1): channel weight normalised to mean 1 × cell area of mean 1,
    scale (1, channel, 1, 1): the one-step difference std), beside the model's buffers, so a
    loss works whether the model is on the CPU or a GPU (the weights are built on the CPU)."""
    area = torch.from_numpy(cell_area_weights(model.lat.detach().cpu().numpy())).float()
    weights = normalised_channel_weights(model, channel_weights).view(1, -1, 1, 1) * area.view(1, 1, -1, 1)
    return weights.to(model.diff_std.device), model.diff_std.detach().clone()


def normalised_channel_weights(model, channel_weights: dict[str, float]) -> torch.Tensor:
    """(channel,) the given weights (1 for channels not named) over their mean, on the CPU."""
    unknown = set(channel_weights) - set(model.channels)
    if unknown:
        raise ValueError(f"channel_weights name channels not in the model: {sorted(unknown)}")
    cw = torch.tensor([channel_weights.get(c, 1.0) for c in model.channels])
    return cw / cw.mean()


class SpectralCRPS(torch.nn.Module):
    """Per (batch, channel): Σ_lm w_m afCRPS_α(|x̂_lm| / sqrt(4π)) of the members (batch, member,
    channel, lat, lon) against the target's moduli, w_m = 1 at m = 0 and 2 above."""

    def __init__(self, nlat: int, nlon: int, grid: str = "equiangular", alpha: float = 0.95):
        super().__init__()
        lmax = default_lmax(nlat, grid)  # the truncation of the spectra diagnostics
        self.sht = build(RealSHT, nlat, nlon, lmax=lmax, mmax=min(lmax, nlon // 2 + 1), grid=grid).float()
        w = torch.full((self.sht.mmax,), 2.0)
        w[0] = 1.0
        self.register_buffer("m_weights", w)
        self.alpha = float(alpha)

    def forward(self, members: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        norm = 1.0 / math.sqrt(4.0 * math.pi)
        with torch.autocast(device_type=members.device.type, enabled=False):  # the SHT in float32
            x = self.sht(members.float()).abs() * norm  # (batch, member, channel, l, m)
            y = self.sht(target.float()).abs() * norm
        score = almost_fair_crps(x, y, self.alpha, dim=1)  # (batch, channel, l, m)
        return (score * self.m_weights).sum((-2, -1))


class CRPSLoss(torch.nn.Module):
    """Mean over batch, channel and grid of area weight × channel weight × afCRPS_α of the
    members (batch, member, channel, lat, lon) against the target (batch, channel, lat, lon),
    both divided by the channel's one-step difference std; plus `spectral_weight` × the mean
    over batch and channel (channel-weighted) of `SpectralCRPS` of the same scaled fields."""

    def __init__(
        self,
        model,
        channel_weights: dict[str, float],
        alpha: float = 0.95,
        spectral_weight: float = 0.0,
        grid: str = "equiangular",
    ):
        super().__init__()
        weights, scale = loss_weights(model, channel_weights)
        self.register_buffer("weights", weights)
        self.register_buffer("scale", scale)
        self.alpha = float(alpha)
        self.spectral_weight = float(spectral_weight)
        self.spectral = None
        if self.spectral_weight > 0:
            self.spectral = SpectralCRPS(len(model.lat), len(model.lon), grid, alpha).to(weights.device)
            cw = normalised_channel_weights(model, channel_weights)
            self.register_buffer("channel_weights", cw.view(1, -1).to(weights.device))

    def forward(self, members: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if members.ndim != 5:
            raise ValueError(f"members must be (batch, member, channel, lat, lon), got {tuple(members.shape)}")
        x, y = members / self.scale[:, None], target / self.scale
        loss = (self.weights * almost_fair_crps(x, y, self.alpha, dim=1)).mean()
        if self.spectral is not None:
            loss = loss + self.spectral_weight * (self.channel_weights * self.spectral(x, y)).mean()
        return loss
