"""Helpers for end-to-end tests: a temp copy of the template driven by the real dvc CLI."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
TEMPLATE_FILES = (
    "dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", "Makefile", "pyproject.toml",
    "models/.gitignore", "robustness/.gitignore",  # what DVC would append, shipped (git status stays clean)
)
TEMPLATE_DIRS = ("stages", "src")
OUTPUT_DIRS = ("data", "models", "metrics", "plots", "comparison")  # everything `dvc repro` writes

TINY_PARAMS: dict[str, Any] = {
    "synth": {"n_cards": 60, "test_fraction": 0.3},
    "fetch": {"shard_bytes": 16 * 1_370_000},  # ~16 embedded cards per raw shard
    "train": {"tflite_cnn": {"epochs": 3}, "torch_cnn": {"epochs": 3}, "conc_keras": {"epochs": 3}},
    "robustness": {"types": ["gaussian_noise"], "severities": [1]},  # one cell: the grid has its own e2e test
}


THREAD_CAPS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")  # tests/conftest.py caps them at one


def env(cwd: Path | None = None) -> dict[str, str]:
    environment = dict(os.environ)
    project = _project_of(cwd) if cwd is not None else None
    if project is not None:  # stages run the project's own library (the code DVC tracks), not the installed one
        environment["PYTHONPATH"] = str(project / "src")
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment['PATH']}"
    environment["DVC_NO_ANALYTICS"] = "1"
    environment["TF_CPP_MIN_LOG_LEVEL"] = "2"
    environment.setdefault("GIT_AUTHOR_NAME", "evalstack-test")
    environment.setdefault("GIT_AUTHOR_EMAIL", "test@example.invalid")
    environment.setdefault("GIT_COMMITTER_NAME", "evalstack-test")
    environment.setdefault("GIT_COMMITTER_EMAIL", "test@example.invalid")
    return environment


def _project_of(cwd: Path) -> Path | None:
    for directory in (Path(cwd), *Path(cwd).parents):
        if (directory / "src/evalstack").is_dir() and (directory / "dvc.yaml").exists():
            return directory
    return None


def run(cwd: Path, *args: str, check: bool = True, env_columns: int | None = None) -> subprocess.CompletedProcess:
    environment = env(cwd)
    if env_columns:
        environment["COLUMNS"] = str(env_columns)  # the terminal width rich lays DVC's tables out for
    result = subprocess.run(args, cwd=cwd, env=environment, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def deep_update(target: dict, changes: dict) -> dict:
    for name, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(name), dict):
            deep_update(target[name], value)
        else:
            target[name] = value
    return target


def make_project(root: Path, overrides: dict[str, Any] | None = None, tiny: bool = True) -> Path:
    """Copy the template into `root`, shrink its params (unless `tiny` is False), and make it a git + DVC repo."""
    root.mkdir(parents=True, exist_ok=True)
    for name in TEMPLATE_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    for name in TEMPLATE_DIRS:
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "models/.gitkeep").touch()
    params = yaml.safe_load((root / "params.yaml").read_text())
    if tiny:
        deep_update(params, TINY_PARAMS)
    deep_update(params, overrides or {})
    write_params(root, params)
    run(root, "git", "init", "-q", "-b", "main")
    run(root, "dvc", "init", "-q")
    run(root, "dvc", "config", "core.analytics", "false")
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "template")
    return root


@dataclass(frozen=True)
class FirstBuild:
    """The tiny default project right after its first `dvc repro`, committed. Tests copy it (`copy_build`)."""
    root: Path
    stages_run: set[str]  # what that first `dvc repro` ran
    git_status: set[str]  # `git status --porcelain` right after it, before the commit


def first_build(shared: Path) -> FirstBuild:
    """Build the tiny default project once in `shared` for every test process that asks (a file lock
    serialises pytest-xdist's workers; the second one finds the build done). Two test files used to build
    this same project each, ~50 s of the suite's CPU apiece."""
    shared.mkdir(parents=True, exist_ok=True)
    done = shared / "first_build.json"
    with open(shared / "first_build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            root = make_project(shared / "project")
            ran = stages_run(run(root, "dvc", "repro").stdout)
            status = run(root, "git", "status", "--porcelain").stdout.splitlines()
            run(root, "git", "add", "-A")
            run(root, "git", "commit", "-qm", "first repro")
            done.write_text(json.dumps({"stages_run": sorted(ran), "git_status": status}))
    recorded = json.loads(done.read_text())
    return FirstBuild(shared / "project", set(recorded["stages_run"]), set(recorded["git_status"]))


def copy_build(build: FirstBuild, destination: Path) -> Path:
    """A private copy of the built project (workspace, git, DVC cache, run-cache and shard store) at
    another path, as if it had been built there: nothing in a project names its own absolute path."""
    shutil.copytree(build.root, destination, symlinks=True)
    return destination


def make_detection_project(root: Path, overrides: dict[str, Any]) -> Path:
    """`make_project` with the detection profile copied in (no data, no model files) and its params.yaml
    deep-updated with `overrides`; returns the project root (the profile is root/detection)."""
    root = make_project(root)
    shutil.copytree(REPO / "detection", root / "detection", symlinks=True,  # detection/src → ../src
                    ignore=shutil.ignore_patterns("data", "*.pt2", "tmp", "cache", "config.local"))
    params = deep_update(yaml.safe_load((root / "detection/params.yaml").read_text()), overrides)
    (root / "detection/params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def write_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def set_param(root: Path, dotted: str, value: Any) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    *parents, leaf = dotted.split(".")
    node = params
    for name in parents:
        node = node[name]
    node[leaf] = value
    write_params(root, params)


def stages_run(output: str) -> set[str]:
    """Stage names dvc actually executed, from `dvc repro` output."""
    ran = set()
    for line in output.splitlines():
        if line.startswith("Running stage '"):
            ran.add(line.split("'")[1])
    return ran


def output_digests(root: Path) -> dict[str, str]:
    """md5 of every file the pipeline produced."""
    digests = {}
    for top in OUTPUT_DIRS:
        for path in sorted((root / top).rglob("*")):
            if path.is_file() and path.name != ".gitkeep":
                digests[str(path.relative_to(root))] = hashlib.md5(path.read_bytes()).hexdigest()
    return digests


def mtimes(root: Path) -> dict[str, int]:
    stamps = {}
    for top in OUTPUT_DIRS:
        for path in (root / top).rglob("*"):
            stamps[str(path.relative_to(root))] = path.stat().st_mtime_ns
    stamps["dvc.lock"] = (root / "dvc.lock").stat().st_mtime_ns
    return stamps


def clone(origin: Path, destination: Path) -> Path:
    """A colleague's fresh clone of the git remote `origin` (code, params, dvc.lock; no data)."""
    run(destination.parent, "git", "clone", "-q", str(origin), str(destination))
    return destination


def commit_and_push(root: Path, message: str) -> None:
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", message)
    run(root, "git", "push", "-q", "origin", "HEAD")

_USER_MODELS = """
import numpy as np, yaml
from pathlib import Path
from evalstack.demo.training.networks import TRAINERS, TrainConfig
from evalstack.demo.training.rows import ArrayRows

params = yaml.safe_load(open("params.yaml"))
for name, entry in params["train"].items():
    size = params["preprocess"]["pipelines"][entry["pipeline"]]["resize"]
    n_classes = len(params["labels"][entry["labels"]])
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(4, size, size, 3), dtype=np.uint8)
    config = TrainConfig(entry["framework"], epochs=1, batch_size=4)
    TRAINERS[entry["framework"]](ArrayRows(x, rng.integers(0, n_classes, 4)), n_classes, config, Path(entry["file"]))
"""


def use_own_models(root: Path, models: tuple[str, ...] = ("tflite_cnn", "torch_cnn")) -> None:
    """Replace the train stage by model files added with `dvc add`, as a user with their own models has.

    The models are fitted once on random data (fast); with no train stage, growing the
    dataset changes no model, so infer's reuse can be measured. Models not named, and
    pipelines no kept model reads, are removed from params.yaml.
    """
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["models"] = {name: params["models"][name] for name in models}
    params["train"] = {name: params["train"][name] for name in models}
    used = {entry["pipeline"] for entry in params["models"].values()}
    params["preprocess"]["pipelines"] = {k: v for k, v in params["preprocess"]["pipelines"].items() if k in used}
    write_params(root, params)
    run(root, sys.executable, "-c", _USER_MODELS)
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    for producer in ("train", "fit_pls", "export_onnx"):  # the stages that build demo model files
        pipeline["stages"].pop(producer, None)
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    run(root, "dvc", "add", *(entry["file"] for entry in params["models"].values()))
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "own models instead of the train stage")


def build_record(root: Path, layer: str) -> dict:
    """The store's record of the last build of `layer` (what was computed, reused, seeded)."""
    from evalstack.cache.shardstore import ShardStore, StoreConfig

    record = ShardStore(StoreConfig(root / ".evalstack/store", 0)).load_build(root / layer)
    assert record is not None, f"no build of {layer} recorded"
    return record


def tree_size(directory: Path) -> tuple[int, set[str]]:
    """Total bytes and relative file names under a directory (a local DVC remote)."""
    files = {str(p.relative_to(directory)): p.stat().st_size for p in directory.rglob("*") if p.is_file()}
    return sum(files.values()), set(files)
