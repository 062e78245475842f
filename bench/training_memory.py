"""Peak memory of demo training by dataset size: rows streamed from the layer vs the in-memory path it replaced.

    python bench/training_memory.py [--cards 1000 8001] [--epochs 1] [--scratch DIR]

Per framework and dataset size, the train stage's work (`train_demo_model`, what stages/train.py runs) in
a fresh process, once with this checkout's src (streaming) and once with the src of the last in-memory
revision (a2f8b01, extracted with `git archive`). Peak RSS is the process's VmHWM, sampled every 50 ms
(bench/_monitor.py says why not ru_maxrss). Both read the same layers, with the template's train params
(`max_items` 4000, batch 16) except the epochs: memory does not grow with epochs, so one is enough.

The layers are written directly (random tensors, the template's shapes: pad_nn 454×454×3 for tflite_cnn,
thumb64 64×64×3 for torch_cnn; ~35 cards a shard, as `fetch.shard_bytes` gives; every card in the dev split),
not synthesised, fetched and preprocessed: the training stage's memory depends on the shapes, not the pixels,
and building 8,001 real cards takes ~20 min here. The issue's goal (P10m): peak RSS at 8,001 / 1,000 cards ≤ 1.2.
"""
from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO / "src"))

from _monitor import _hwm  # noqa: E402

from evalstack.core.keys import Key  # noqa: E402
from evalstack.core.kinds import PREPROCESSED_KIND, RAW_KIND  # noqa: E402
from evalstack.core.layers import ITEM_KEY, LayerWriter, shard_name  # noqa: E402

IN_MEMORY_REVISION = "a2f8b01"  # the last commit whose demo training concatenated the split in memory
CARDS_PER_SHARD = 35  # what the template's fetch.shard_bytes (48 MB) gives on PAD cards
MODELS = {"tflite_cnn": ("keras_tflite", "pad_nn", 454), "torch_cnn": ("torch_export", "thumb64", 64)}
N_CLASSES = 23

_TRAIN = """
import sys
from pathlib import Path
from evalstack.demo.training.networks import TrainConfig, train_demo_model
root, framework, pipeline, epochs, n_classes = Path(sys.argv[1]), sys.argv[2], sys.argv[3], *map(int, sys.argv[4:6])
labels = tuple(f"drug{i}" for i in range(n_classes))
config = TrainConfig(framework, epochs=epochs, batch_size=16, learning_rate=0.002, seed=0, max_items=4000)
train_demo_model(root / "preprocessed" / pipeline, root / "raw", labels, config, root / f"model.{framework}", "m")
"""


def write_layers(root: Path, cards: int) -> None:
    """A raw layer of `cards` dev items and, per pipeline, a preprocessed layer of random uint8 tensors."""
    ids = np.arange(cards, dtype=np.int64)
    keys = np.asarray([hashlib.sha256(str(i).encode()).hexdigest() for i in ids], dtype="S64")
    bounds = list(range(0, cards, CARDS_PER_SHARD)) + [cards]
    raw = LayerWriter(root / "raw", RAW_KIND, Key("bench-raw", {"cards": cards}))
    for number, (start, stop) in enumerate(zip(bounds, bounds[1:])):
        raw.add_shard(shard_name(number), {
            "id": ids[start:stop], ITEM_KEY: keys[start:stop],
            "sample_name": np.asarray([f"drug{i % N_CLASSES}" for i in ids[start:stop]], dtype=object),
            "quantity": np.full(stop - start, 100, dtype=np.int64),
            "split": np.asarray(["dev"] * (stop - start), dtype=object)})
    raw.finish()
    rng = np.random.default_rng(0)
    for _, pipeline, size in MODELS.values():
        layer = LayerWriter(root / "preprocessed" / pipeline, PREPROCESSED_KIND, Key("bench-pre", {"p": pipeline}))
        for number, (start, stop) in enumerate(zip(bounds, bounds[1:])):
            x = rng.integers(0, 256, size=(stop - start, size, size, 3), dtype=np.uint8)
            layer.add_shard(shard_name(number), {"x": x, ITEM_KEY: keys[start:stop]})
        layer.finish()


def peak_rss(command: list[str], src: Path, cwd: Path) -> tuple[int, float]:
    """Peak VmHWM (bytes) over the process and its children, and its wall time."""
    environment = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "PYTHONPATH": str(src),
                   "TF_CPP_MIN_LOG_LEVEL": "2", "HOME": str(cwd)}
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak, done = [0], threading.Event()

    def sample() -> None:
        process = psutil.Process(child.pid)
        while not done.is_set():
            try:
                pids = [child.pid, *(p.pid for p in process.children(recursive=True))]
            except psutil.Error:
                pids = [child.pid]
            peak[0] = max(peak[0], *(_hwm(pid) for pid in pids))
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = child.communicate()[0]
    done.set()
    sampler.join()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}):\n{output.decode()[-3000:]}")
    return peak[0], time.perf_counter() - started


def in_memory_src(scratch: Path) -> Path:
    """This repository's src as of IN_MEMORY_REVISION."""
    target = scratch / f"src-{IN_MEMORY_REVISION}"
    if not target.exists():
        target.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", IN_MEMORY_REVISION, "src"], cwd=REPO, capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target / "src"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cards", type=int, nargs=2, default=(1000, 8001))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--scratch", type=Path, default=None, help="keeps the layers between runs")
    args = parser.parse_args()
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="training_memory-"))
    sources = {"streaming": REPO / "src", "in memory": in_memory_src(scratch)}
    for cards in args.cards:
        if not (scratch / f"cards{cards}" / "raw" / "index.json").exists():
            started = time.perf_counter()
            write_layers(scratch / f"cards{cards}", cards)
            print(f"(layers of {cards} cards written in {time.perf_counter() - started:.0f} s)", flush=True)
    print(f"\n| model | path | {args.cards[0]} cards: peak RSS MB (s) | {args.cards[1]} cards: peak RSS MB (s) "
          f"| ratio {args.cards[1]} / {args.cards[0]} |")
    print("|---|---|---|---|---|")
    for model in args.models:
        framework, pipeline, _ = MODELS[model]
        for path, src in sources.items():
            cells = []
            for cards in args.cards:
                root = scratch / f"cards{cards}"
                command = [sys.executable, "-c", _TRAIN, str(root), framework, pipeline, str(args.epochs), str(N_CLASSES)]
                cells.append(peak_rss(command, src, root))
            (small, small_s), (large, large_s) = cells
            print(f"| {model} ({framework}, {pipeline}) | {path} | {small / 2**20:,.0f} ({small_s:.0f}) | "
                  f"{large / 2**20:,.0f} ({large_s:.0f}) | {large / small:.2f} |", flush=True)
    print(f"\ntrain params as the template's (batch 16, max_items 4000, every card in dev: {min(args.cards[0], 4000)} "
          f"and {min(args.cards[1], 4000)} items trained), epochs {args.epochs}; in memory = src of {IN_MEMORY_REVISION}")


if __name__ == "__main__":
    main()
