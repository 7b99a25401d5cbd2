#!/usr/bin/env bash
# Builds .gpu_kit/: torch-harmonics for a GPU box whose Python cannot load this machine's build of
# it (the lent H200's image has Python 3.12 and its own torch, no torch-harmonics; ours is a
# cp311 wheel whose compiled parts are DISCO convolutions and neighbourhood attention, which our
# SFNO does not use). The kit is torch-harmonics' Python sources from .venv without the compiled
# modules: two stand-ins for its compiled helper modules say "no optimized kernels", and the
# imports of the attention, DISCO and non-SFNO example models, which need those kernels, are
# made optional. Spherical harmonic transforms, the SFNO and the spectral convolutions are
# pure torch and unchanged.
#
#   benchmarks/gpu_kit.sh            # then, on the device (the `run` tool, carry .gpu_kit):
#   PYTHONPATH=$PWD/.gpu_kit bash benchmarks/gpu_check.sh python3
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$(.venv/bin/python -c "import os, torch_harmonics; print(os.path.dirname(torch_harmonics.__file__))")
KIT=.gpu_kit
rm -rf "$KIT" && mkdir -p "$KIT"
cp -r "$SRC" "$KIT/"
find "$KIT" -name "*.so" -delete
find "$KIT" -name "__pycache__" -type d -prune -exec rm -rf {} +
for helper in disco_helpers attention_helpers; do
    cat > "$KIT/$helper.py" <<PY
"""Stand-in for torch-harmonics' compiled $helper (benchmarks/gpu_kit.sh): no optimized kernels."""


def optimized_kernels_is_available() -> bool:
    return False


def cuda_kernels_is_available() -> bool:
    return False


def pack_psi_dense(*args, **kwargs):
    raise NotImplementedError("not in the device check's torch-harmonics (benchmarks/gpu_kit.sh)")


def preprocess_psi(*args, **kwargs):
    raise NotImplementedError("not in the device check's torch-harmonics (benchmarks/gpu_kit.sh)")
PY
done
.venv/bin/python - "$KIT" <<'PY'
import sys
from pathlib import Path

kit = Path(sys.argv[1]) / "torch_harmonics"


def optional(path: Path, lines: list[str]) -> None:
    text = path.read_text()
    for line in lines:
        assert line + "\n" in text, (path, line)  # another torch-harmonics: look again
        text = text.replace(line + "\n", f"try:  # benchmarks/gpu_kit.sh\n    {line}\nexcept ImportError:\n    pass\n")
    path.write_text(text)


optional(kit / "__init__.py", [
    "from .attention import AttentionS2, NeighborhoodAttentionS2",
    "from .disco import DiscreteContinuousConvS2, DiscreteContinuousConvTransposeS2",
])
optional(kit / "examples" / "models" / "__init__.py", [
    "from .lsno import LocalSphericalNeuralOperator",
    "from .s2segformer import SphericalSegformer",
    "from .s2transformer import SphericalTransformer",
    "from .s2unet import SphericalUNet",
])
PY
echo "$KIT: $(du -sh "$KIT" | cut -f1) (git ignores it: carry it to the device)"
