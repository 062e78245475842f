"""SIGKILL at random points of preprocess and infer: every rerun completes, verifies, and gives the same bytes."""
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evalstack.cli.verify import verify_layer
from tests.e2e import REPO
from tests.layers import Project, digests, store_at

pytestmark = pytest.mark.slow

SIZES = (8, 16, 24)  # the pipeline size changes between trials, so some trials compute and some reuse

# The child runs preprocess then infer. With a step number it SIGKILLs itself just before that
# durable step (fsync, rename, link): every window between two steps of the shard writer and the
# store can be hit, not only the long ones a timer tends to land in.
CHILD = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from tests.layers import Project, store_at
project, store, size, kill_at = Project(Path(sys.argv[1])), store_at(Path(sys.argv[2])), int(sys.argv[3]), int(sys.argv[4])
steps = 0
def counted(call):
    def step(*args, **kwargs):
        global steps
        steps += 1
        if steps == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return call(*args, **kwargs)
    return step
os.fsync, os.replace, os.link = counted(os.fsync), counted(os.replace), counted(os.link)
print("ready", flush=True)
project.preprocess(store, size=size)
project.infer(store, size=size)
print(steps, flush=True)
"""


def _start(root: Path, store: Path, size: int, kill_at: int = 0) -> subprocess.Popen:
    script = CHILD.format(repo=str(REPO))
    child = subprocess.Popen([sys.executable, "-c", script, str(root), str(store), str(size), str(kill_at)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert child.stdout.readline().strip() == "ready"
    return child


def _calibrate(root: Path, store: Path, size: int) -> tuple[int, float]:
    """Durable steps and seconds of a complete run from an empty store (after imports)."""
    child = _start(root, store, size)
    started = time.monotonic()
    steps = int(child.stdout.read())
    assert child.wait() == 0
    return steps, time.monotonic() - started


def test_sigkill_at_random_points_never_leaves_a_bad_layer(tmp_path: Path):
    project = Project(tmp_path / "project")
    project.grow(48)
    project.fetch(None)  # 19 shards: many shard and store writes to land in
    expected = {}
    for size in SIZES:  # what each size must give, built without a store
        reference = Project(tmp_path / f"reference{size}")
        shutil.copytree(project.raw, reference.raw)
        reference.preprocess(None, size=size), reference.infer(None, size=size)
        expected[size] = digests(reference.pre, reference.pred)
    store = tmp_path / "store"
    steps, seconds = _calibrate(project.root, store, SIZES[-1])
    rng = random.Random(5)
    # 16 trials killed before a random durable step, 2 by a timer from outside.
    trials = [("step", rng.randint(1, steps)) for _ in range(16)] + [("timer", rng.uniform(0, seconds)) for _ in range(2)]
    killed = 0
    for number, (how, point) in enumerate(trials):
        size = rng.choice(SIZES)
        if rng.random() < 0.5:
            shutil.rmtree(store, ignore_errors=True)
        child = _start(project.root, store, size, kill_at=point if how == "step" else 0)
        if how == "timer":
            time.sleep(point)
            child.kill()
        killed += child.wait() == -9
        # The rerun, in this process (no import cost): it must finish and give the expected bytes.
        project.preprocess(store_at(store), size=size)
        project.infer(store_at(store), size=size)
        trial = f"trial {number}: kill by {how} at {point}"
        assert verify_layer(project.pre) == [] and verify_layer(project.pred) == [], trial
        assert store_at(store).verify() == [], trial
        assert digests(project.pre, project.pred) == expected[size], trial
    assert killed >= 12  # a run from a warm store takes fewer steps than the calibration, so a few may finish
