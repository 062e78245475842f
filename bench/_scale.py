"""P1 and P2 at the real FHI2020 scale: one project, measured side by side in one run.

The project is what a PAD user with a growing card registry has: their own two models
(`dvc add`-ed, no train stage), a registry of cards on a disk outside the repo (here the
generator writes it; growing it only adds cards, as the PAD registry does), and
`store.link: hardlink` + DVC `cache.type hardlink`, the documented setting for datasets of
this size (a copy mode project at 8,001 cards needs ~3× the disk).

  * cold: `dvc repro` of fetch → preprocess → infer → evaluate, with an empty store;
  * P1: `evaluate.split` changed, `dvc repro` again, vs `bench/_naive.py` redoing fetch,
    preprocess, infer and evaluate over the same registry;
  * P2: the registry grows by 5 %, `dvc repro` again: time / cold time, and what DVC's
    cache gained / what it gained cold (what `dvc push` uploads to a remote kept in sync).
Writing the registry's PNGs is the source's job, not the pipeline's, and is not timed.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from incremental import counts_line, pushed_bytes, stage_times, timed_repro  # noqa: E402

from tests.e2e import make_project, run, set_param, use_own_models  # noqa: E402

MODELS = ("tflite_cnn", "torch_cnn")


@dataclass
class ScaleRun:
    cards: int
    grown: int
    cold: dict[str, float]
    cold_bytes: int
    eval_only: float
    naive: float
    rerun: dict[str, float]
    rerun_bytes: int
    recomputed: str
    log: list[str]


def write_registry(pool: Path, cards: int) -> float:
    """The registry at `cards` cards (PNGs already in the pool are kept; only new ones are rendered)."""
    from evalstack.demo.cards import write_dataset

    started = time.monotonic()
    write_dataset(pool, n_cards=cards, seed=0, test_fraction=0.2)
    return time.monotonic() - started


def registry_project(root: Path, pool: Path, shard_size: int) -> Path:
    registries = {"dev": str(pool / "metadata_dev.csv"), "test": str(pool / "metadata_test.csv")}
    project = make_project(root, {"fetch": {"shard_size": shard_size, "source": {"kind": "registry", "registries": registries}},
                                  "store": {"link": "hardlink"}})
    run(project, "dvc", "config", "cache.type", "hardlink")
    use_own_models(project, MODELS)
    pipeline = yaml.safe_load((project / "dvc.yaml").read_text())
    pipeline["stages"].pop("synth")
    deps = pipeline["stages"]["fetch"]["deps"]  # the registry files replace the embedded dataset as fetch's source
    deps[deps.index("data/source")] = registries["dev"]
    deps.append(registries["test"])
    (project / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "cards from the registry on disk")
    return project


def measure(scratch: Path, pool: Path, cards: int, shard_size: int, growth: float = 0.05) -> ScaleRun:
    log = []
    say = lambda line: (log.append(line), print("    " + line, flush=True))  # noqa: E731
    grown = round(cards * (1 + growth))
    say(f"registry of {cards} cards written in {write_registry(pool, cards):.0f} s (not timed: the source)")
    project = registry_project(scratch / f"scale{cards}", pool, shard_size)
    targets = [f"evaluate@{model}" for model in MODELS]

    cold = timed_repro(project, *targets)
    cold_bytes = pushed_bytes(project, None)  # no remote: DVC's cache size, what a first push uploads
    say(f"cold `dvc repro`: {stage_times(cold)}")

    set_param(project, "evaluate.split", "dev")
    started = time.monotonic()
    run(project, "dvc", "repro", *targets)
    eval_only = time.monotonic() - started
    started = time.monotonic()
    naive_out = run(project, sys.executable, str(BENCH / "_naive.py"), str(project)).stdout.strip()
    naive = time.monotonic() - started
    say(f"P1: evaluate.split → dev: `dvc repro` {eval_only:.2f} s; naive script {naive:.1f} s ({naive_out})")
    set_param(project, "evaluate.split", "test")
    run(project, "dvc", "repro", *targets)  # back to test (restored from the run-cache), not timed
    cache = pushed_bytes(project, None)

    say(f"registry grown to {grown} cards in {write_registry(pool, grown):.0f} s (not timed)")
    rerun = timed_repro(project, *targets)
    rerun_bytes = pushed_bytes(project, None) - cache
    recomputed = counts_line(project)
    say(f"rerun `dvc repro`: {stage_times(rerun)}")
    say(f"recomputed: {recomputed}")
    return ScaleRun(cards, grown, cold, cold_bytes, eval_only, naive, rerun, rerun_bytes, recomputed, log)
