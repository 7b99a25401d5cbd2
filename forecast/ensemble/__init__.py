"""Huge ensembles: checkpoints × perturbations × sign, batched, streamed, resumable.

- `perturbation`: the `Perturbation` protocol and its kinds (torch and torch-harmonics only);
- `members`: member layout, seeds and blocks (torch only);
- `online`: the `Accumulator` protocol and the shipped statistics (torch only);
- `engine`: planning, the batched block loop, the writer thread, `run_ensemble`, `regenerate`;
- `store`, `state`: the forecast store (Zarr) and the accumulators' resumable state in it.

Nothing here is imported eagerly, so the compute modules run on a bare GPU box.
"""
