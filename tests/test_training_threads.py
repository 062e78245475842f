"""Demo training gives the same model bytes whatever thread pool the machine would give it, and takes
its kernels from libraries that fix their code path whatever the CPU.

torch sizes its pool by the machine's cores, and a float sum split over two threads adds in another
order than over one: before training was pinned to one thread, the README's torch_cnn scored 0.846 on
this 2-core machine and 0.808 on one thread, so its figures held only on machines with two cores.
oneDNN sizes its convolution blocks by the CPU's caches, even capped at AVX2: until 2026-12-07 torch_cnn
trained on oneDNN, and a Xeon with AMX trained other bytes than the machine that made the README.
"""
from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e import THREAD_CAPS, env

_TRAIN = """
import sys, numpy as np
from pathlib import Path
from evalstack.demo.training.networks import TRAINERS, TrainConfig
from evalstack.demo.training.rows import ArrayRows
rng = np.random.default_rng(0)
x = rng.integers(0, 256, size=(96, 64, 64, 3), dtype=np.uint8)
TRAINERS["torch_export"](ArrayRows(x, rng.integers(0, 5, 96)), 5,
                         TrainConfig("torch_export", epochs=3, batch_size=16, seed=0), Path(sys.argv[1]))
"""


def _train_with_pool(threads: int, out: Path) -> str:
    environment = env()
    for name in THREAD_CAPS:  # the pools torch would take on a machine with `threads` cores
        environment[name] = str(threads)
    subprocess.run([sys.executable, "-c", _TRAIN, str(out)], env=environment, check=True, capture_output=True)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def test_torch_demo_training_gives_the_same_bytes_on_one_core_and_on_two(tmp_path: Path):
    assert _train_with_pool(1, tmp_path / "one.pt2") == _train_with_pool(2, tmp_path / "two.pt2")


_TRAIN_DETECTOR = """
import sys, numpy as np
from pathlib import Path
from evalstack.demo.training.detector import DetectorTrainConfig, TrainingSet, train_detector
rng = np.random.default_rng(0)
images = rng.integers(0, 256, size=(16, 64, 64, 3), dtype=np.uint8)
boxes = [np.array([[8.0, 8.0, 20.0, 16.0]]) for _ in images]
train_detector(TrainingSet(images, boxes, [np.array([i % 3]) for i in range(16)]), 3,
               DetectorTrainConfig(epochs=1, batch_size=8), Path(sys.argv[1]))
"""


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the kernel caps are x86's")
@pytest.mark.parametrize("trainer", [_TRAIN, _TRAIN_DETECTOR], ids=["torch_cnn", "detector"])
def test_torch_demo_training_runs_no_onednn_convolution_and_every_gemm_in_mkls_reproducible_mode(tmp_path: Path,
                                                                                                  trainer: str):
    environment = env()
    environment.update(ONEDNN_VERBOSE="1", MKL_VERBOSE="1")  # each library prints a line per kernel it runs
    # as stages/train.py and stages/detection/train.py do, before torch loads
    script = "from evalstack.demo.training import portable_kernels\nportable_kernels()\n" + trainer
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "m.pt2")], env=environment, check=True,
                            capture_output=True, text=True)
    lines = result.stdout.splitlines()
    assert [line for line in lines if line.startswith("onednn_verbose") and ",exec,cpu,convolution," in line] == []
    gemms = [line for line in lines if line.startswith("MKL_VERBOSE SGEMM")]
    assert len(gemms) > 100  # the convolutions (im2col + GEMM) and any linear layer
    # COMPATIBLE: the branch MKL honours on every make of CPU (any other is ignored on AMD's: CNR:AUTO)
    assert all(" CNR:COMPATIBLE,STRICT " in line for line in gemms), gemms[0]
