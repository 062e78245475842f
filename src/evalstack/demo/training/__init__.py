"""Demo models: Keras/TFLite and PyTorch networks, the PLS fit, ONNX export, the demo detector.

Training pins the CPU kernels the frameworks dispatch to (`portable_kernels`, called by the train stages
before torch or TensorFlow loads), so that a demo model has the same bytes on other x86-64 machines with
AVX2: checked here by capping an AVX-512 machine, not proven elsewhere (oneDNN and Eigen also choose
blockings by cache size). It also trains on one thread (`one_thread_torch`, `one_thread_tensorflow`), so
that the machine's core count does not change a demo model's bytes either.
"""
from __future__ import annotations

import os
import platform
import sys

# Each library picks its kernels from the CPU it runs on, and the float sums differ between, e.g., AVX-512
# and AVX2. Measured here (Zen 5, AVX-512): each one of these, alone, changed the bytes of a trained demo
# model, and together they changed the README's figures (tflite_cnn accuracy 0.744 → 0.769), so figures
# built on one CPU were not a fresh build's on another. Capping every dispatcher at AVX2 removes that
# difference between CPUs made since 2013 that support AVX2.
_X86_AVX2_KERNELS = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN, in both TensorFlow and torch (convolutions)
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own vectorised kernels
    "MKL_CBWR": "AVX2",  # MKL's conditional numerical reproducibility (torch's BLAS)
}


def portable_kernels() -> None:
    """Cap the frameworks' kernel dispatch at AVX2 for this process and its children. Only before torch or
    TensorFlow loads: each reads its setting once, so a cap set later would leave a process half capped
    (a test process that already ran a model keeps its kernels). A no-op off x86."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return
    if not any(name in sys.modules for name in ("torch", "tensorflow", "keras")):
        os.environ.update(_X86_AVX2_KERNELS)


# A float sum split over two threads adds in another order than over one. Measured here (2 cores): torch_cnn
# trained with its default pool (2 threads) scored 0.846 on the README's test split, with one thread 0.808,
# so the README's figures held only on machines with as many cores as this one. One thread is the count
# every machine has.
TRAINING_THREADS = 1


def one_thread_torch() -> None:
    """Train on TRAINING_THREADS threads (torch's pool is per process: a train stage is its own process)."""
    import torch

    torch.set_num_threads(TRAINING_THREADS)


def one_thread_tensorflow() -> None:
    """The same for TensorFlow, whose pools are sized once, when its first operation runs."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(TRAINING_THREADS)
        tf.config.threading.set_inter_op_parallelism_threads(TRAINING_THREADS)
    except RuntimeError:  # TensorFlow already ran in this process (a test process): its pools stay as they are
        pass
