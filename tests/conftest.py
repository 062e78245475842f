import io
import os
from pathlib import Path

from tests.e2e import THREAD_CAPS, first_build

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# `make test` runs two test processes on two cores, each driving stage subprocesses; torch's OpenMP pool
# and OpenBLAS then spin on a core the other process needs. Measured: two tiny `dvc repro` side by side
# took 56.0 s each with the default pools, 51.7 s with one thread each. Every build in a run has the same
# setting, so builds compared with each other are unaffected. The README's figures come from `make repro`
# with the default pools, so test_readme_figures, built under this cap, also shows they do not depend on it.
for _name in THREAD_CAPS:  # before numpy loads OpenBLAS in this process
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# The longest test files first (measured, `--durations`), so that `make test`'s workers, which take one
# file at a time in collection order (pytest-xdist --dist loadfile --no-loadscope-reorder), do not end with
# one worker still on the 10-minute differential file while the other waits: the longest job first is the
# classic greedy schedule. xdist hands each worker two files at the start, so the third is a tiny one: it
# is what waits behind the differential test.
LONGEST_FIRST = (
    "test_e2e_differential.py", "test_readme_figures.py", "test_catalogue.py", "test_e2e_repro.py",
    "test_e2e_template.py", "test_e2e_detection_torchvision.py", "test_e2e_detection.py",
    "test_e2e_detection_yolo.py", "test_e2e_models.py", "test_e2e_robustness.py",
    # after test_e2e_repro by a few files: both start from one shared build, which test_e2e_repro's
    # worker makes while the other one runs other files instead of waiting on the lock
    "test_e2e_share.py", "test_e2e_incremental.py", "test_e2e_objectstore.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def png_bytes(width: int = 730, height: int = 1220, mode: str = "RGB", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": None, "LA": 2}[mode]
    shape = (height, width) if channels is None else (height, width, channels)
    image = Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode=mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@pytest.fixture
def card_png(tmp_path: Path) -> Path:
    path = tmp_path / "card.png"
    path.write_bytes(png_bytes())
    return path


@pytest.fixture(scope="session")
def pad_dataset_master(tmp_path_factory) -> Path:
    """The embedded dataset (20 cards), rendered once per test session; copy it before changing it."""
    from evalstack.demo.cards import write_dataset

    root = tmp_path_factory.mktemp("pad") / "source"
    write_dataset(root, n_cards=20, seed=0, workers=1)
    return root


@pytest.fixture
def pad_dataset(pad_dataset_master: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(pad_dataset_master, tmp_path / "source"))


@pytest.fixture(scope="session")
def tiny_first_build(tmp_path_factory):
    """The tiny default project after its first `dvc repro`, built once per test run (shared by xdist
    workers through their common temp parent); copy it with `tests.e2e.copy_build` before changing it."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    return first_build(shared / "tiny_first_build")


def store_in(directory: Path):
    """A shard store in `directory` with no size pressure (fetch keeps its history there)."""
    from evalstack.cache.shardstore import ShardStore, StoreConfig

    return ShardStore(StoreConfig(Path(directory), max_bytes=1 << 40))
