"""Demo models: Keras/TFLite and PyTorch networks, the PLS fit, ONNX export, the demo detector.

Training pins the CPU kernels the frameworks dispatch to (`portable_kernels`, called by the train stages
before torch or TensorFlow loads), so that a demo model has the same bytes on other x86-64 machines with
AVX2: checked here by capping an AVX-512 machine. The cap was not enough for torch, whose oneDNN
convolutions also choose blockings by cache size: torch demo training runs without oneDNN
(`portable_torch_kernels`). Eigen, under TensorFlow, also reads cache sizes; no difference was seen
between two CPUs there. It also trains on one thread (`one_thread_torch`, `one_thread_tensorflow`), so
that the machine's core count does not change a demo model's bytes either.
"""
from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# Each library picks its kernels from the CPU it runs on, and the float sums differ between, e.g., AVX-512
# and AVX2. Measured here (Zen 5, AVX-512): each one of these, alone, changed the bytes of a trained demo
# model, and together they changed the README's figures (tflite_cnn accuracy 0.744 → 0.769), so figures
# built on one CPU were not a fresh build's on another. Capping every dispatcher at AVX2 removes that
# difference between CPUs made since 2013 that support AVX2.
_X86_AVX2_KERNELS = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN, in both TensorFlow and torch (convolutions)
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own vectorised kernels
    # MKL's conditional numerical reproducibility (torch's BLAS). COMPATIBLE, MKL's SSE2 branch without the
    # approximation instructions (rcpps/rsqrtps) that differ between makes, is the one branch MKL honours on
    # every x86-64 CPU: on others than Intel's it ignores any other branch, AVX2 included, silently, and runs
    # its AUTO branch (MKL's docs; seen on 2026-12-08 on an AMD Zen 5: `CNR:AUTO,STRICT` under AVX2,STRICT,
    # and a torch_cnn scoring 0.833 where the Intel machine that made the README's figures scored 0.756).
    # STRICT: the same bits whatever the arrays' alignment; without it a tensor view that starts off a
    # 64-byte boundary may take another code path.
    "MKL_CBWR": "COMPATIBLE,STRICT",
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


@contextmanager
def portable_torch_kernels() -> Iterator[None]:
    """Train torch's convolutions without oneDNN (and without NNPACK): with them off, a convolution is im2col
    and MKL's GEMM, whose CNR mode (MKL_CBWR above) fixes its code path and blocking for the branch named,
    whatever the CPU's caches. oneDNN fixes neither: capped at AVX2 it still picks its kernels (brgemm) and
    their blocks by the CPU's caches. Measured on 2026-12-07: the same commit, params and data, capped at
    AVX2 and on one thread, trained other torch_cnn bytes on an Intel Xeon with AMX (Sapphire Rapids or later,
    2 MB of L2 per core) than on the AVX-512 machine that had made the README's figures (torch_cnn macro-F1 0.824
    against 0.822, mCE 196.1 % against 178.3 %), while the Keras models' figures were equal. The cost:
    13.1 s against 11.2 s to train the default torch_cnn. Flags, not a process-wide switch: a test process
    that trains and then runs models gets its backends back."""
    import torch

    with torch.backends.mkldnn.flags(enabled=False), torch.backends.nnpack.flags(enabled=False):
        yield


def one_thread_tensorflow() -> None:
    """The same for TensorFlow, whose pools are sized once, when its first operation runs."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(TRAINING_THREADS)
        tf.config.threading.set_inter_op_parallelism_threads(TRAINING_THREADS)
    except RuntimeError:  # TensorFlow already ran in this process (a test process): its pools stay as they are
        pass
