"""A noise-conditioned SFNO for stochastic checkpoints (issue #13).

torch-harmonics' `SphericalFourierNeuralOperator` has no hook for a conditioning input, so
this module is ours: it subclasses it to keep its construction (encoder, spectral blocks,
decoder, transforms, initialisation and parameter names, so a deterministic checkpoint's
weights load into it), and runs the blocks itself from torch-harmonics' own layers, with a
FiLM of each block's normalised output after its spectral convolution:

    x̂ = norm(x) · (1 + γ_i(z)) + β_i(z),   (γ_i, β_i) = 1×1 conv of the noise fields z,

zero-initialised, so training starts from the deterministic network. The noise z is the
model noise of `forecast.model.noise` (a few AR(1) spherical fields), given as spherical
harmonic coefficients and synthesised here on the grid of each block's output (the internal
grid, and the data grid for the last block), truncated at the network's own spectral modes:
the network cannot represent finer noise anyway.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_harmonics import InverseRealSHT
from torch_harmonics.examples.models.sfno import SphericalFourierNeuralOperator


class StochasticSFNO(SphericalFourierNeuralOperator):
    """`net(x, noise)`: x (batch, in_chans, lat, lon), noise (batch, noise_fields, lmax, mmax)
    complex coefficients at the network's modes (`noise_modes`)."""

    def __init__(self, *, noise_fields: int, **sfno_kwargs):
        super().__init__(**sfno_kwargs)
        if noise_fields < 1:
            raise ValueError(f"a stochastic SFNO needs at least one noise field, got {noise_fields}")
        self.noise_fields = int(noise_fields)
        lmax, mmax = self.trans.lmax, self.trans.mmax
        self._noise_modes = (lmax, mmax)  # kept: a wrapper may replace the transforms (ForecastModel's Float32)
        self.noise_itrans = InverseRealSHT(self.h, self.w, lmax=lmax, mmax=mmax, grid=self.grid_internal).float()
        self.noise_itrans_up = InverseRealSHT(*self.img_size, lmax=lmax, mmax=mmax, grid=self.grid).float()
        self.films = nn.ModuleList([nn.Conv2d(noise_fields, 2 * self.embed_dim, 1) for _ in self.blocks])
        for film in self.films:
            nn.init.zeros_(film.weight)
            nn.init.zeros_(film.bias)

    @property
    def noise_modes(self) -> tuple[int, int]:
        return self._noise_modes

    def _block(self, i: int, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """torch-harmonics' `SphericalFourierNeuralOperatorBlock.forward` with the FiLM after its norm."""
        blk = self.blocks[i]
        x, residual = blk.global_conv(x)
        x = blk.norm(x)
        gamma, beta = self.films[i](z.to(x.dtype)).chunk(2, dim=1)
        x = x * (1 + gamma) + beta
        if hasattr(blk, "inner_skip"):
            x = x + blk.inner_skip(residual)
        if hasattr(blk, "mlp"):
            x = blk.mlp(x)
        x = blk.drop_path(x)
        if hasattr(blk, "outer_skip"):
            x = x + blk.outer_skip(residual)
        return x

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        lmax, mmax = self.noise_modes
        if noise.shape != (x.shape[0], self.noise_fields, lmax, mmax):
            raise ValueError(
                f"noise has shape {tuple(noise.shape)}, expected ({x.shape[0]}, {self.noise_fields}, {lmax}, {mmax})"
            )
        residual = x
        x = self.encoder(x)
        x = self.pos_embed(x) if self.pos_embed is not None else x
        x = self.pos_drop(x)
        z_internal = self.noise_itrans(noise) if len(self.blocks) > 1 else None
        z_data = self.noise_itrans_up(noise)
        for i in range(len(self.blocks)):
            x = self._block(i, x, z_data if i == len(self.blocks) - 1 else z_internal)
        x = self.decoder(x)
        if self.residual_prediction:
            x = x + self.residual_projection(residual)
        return x
