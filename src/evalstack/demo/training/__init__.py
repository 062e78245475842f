"""Demo models: Keras/TFLite and PyTorch networks, the PLS fit, ONNX export, the demo detector.

Importing this package pins the CPU kernels the frameworks dispatch to (see `portable_kernels`), before
any submodule imports torch or TensorFlow, so a demo model trained here has the same bytes on any x86-64
machine with AVX2 — CI's included.
"""
from __future__ import annotations

import os
import platform

# Each library picks its kernels from the CPU it runs on, and the float sums differ between, e.g., AVX-512
# and AVX2. Measured here (Zen 5, AVX-512): each one of these, alone, changed the bytes of a trained demo
# model, and together they changed the README's figures (tflite_cnn accuracy 0.744 → 0.769), so figures
# built on one CPU were not a fresh build's on another. Capping every dispatcher at AVX2 makes training a
# function of its inputs on any x86-64 CPU made since 2013.
_X86_AVX2_KERNELS = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN, in both TensorFlow and torch (convolutions)
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own vectorised kernels
    "MKL_CBWR": "AVX2",  # MKL's conditional numerical reproducibility (torch's BLAS)
}


def portable_kernels() -> None:
    """Cap the frameworks' kernel dispatch at AVX2; must run before torch/TensorFlow load (no-op off x86)."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        os.environ.update(_X86_AVX2_KERNELS)


portable_kernels()
