"""P10, P1 and P2 at the real FHI2020 scale (8,001 cards), on one project, side by side in one run.

* P10: the whole template cold — every stage of the root dvc.yaml (synth, fetch, preprocess, train,
  fit_pls, export_onnx, infer, evaluate, compare, robustness, robustness_report) at 8,001 cards, with
  `store.link: hardlink` and DVC `cache.type hardlink` (the documented setting at this size; copy mode
  needs ~3× the disk). Time and peak memory per stage.
* Then the demo models it trained become the user's own (`dvc add`, train stages removed), so growing
  the dataset changes no model — what a PAD user with their own networks has — and:
* P1: `evaluate.split` changed, `dvc repro evaluate` (one stage, every model: the template's five), vs
  bench/_naive.py redoing fetch, preprocess, infer and evaluate of the two classifiers from the same
  registry: evalstack's side evaluates three models more. The naive script's accuracies must equal
  evalstack's on the same items before the times are compared. A no-op `dvc repro evaluate` (median
  of 3) is timed right after: DVC's own floor, reported beside P1 (its proposed restatement: naive /
  (rerun − no-op)).
* P2: the registry grows by 5 % (synth, the source: not timed), `dvc repro evaluate` (fetch and every
  preprocess and infer stage the evaluate stage reads), then `dvc repro -f -s` of the same stages with
  nothing new (their fixed cost: the proposed restatement is (rerun − that) / cold):
  rerun time / their cold time in the P10 run, and what DVC's cache gained / the bytes of those
  stages' outputs (what `dvc push` uploads to a remote kept in sync). Content-defined shard ends
  rewrite the last, partial shard on an append: the items recomputed beyond the new ones are counted.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from _monitor import StageRun, monitored, stage_line  # noqa: E402

from tests.e2e import REPO, TINY_PARAMS, build_record, make_project, run, set_param, tree_size  # noqa: E402

MODELS = ("tflite_cnn", "torch_cnn")  # what the naive script evaluates (its accuracies are checked against ours)
TARGETS = ("evaluate",)  # one stage evaluates every declared model
_PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
_PIPELINES = tuple(dict.fromkeys(entry["pipeline"] for entry in _PARAMS["models"].values()))
LAYERS = {"fetch": "data/raw", **{f"preprocess@{p}": f"data/preprocessed/{p}" for p in _PIPELINES},
          **{f"infer@{m}": f"data/predictions/{m}" for m in _PARAMS["models"]}}
P2_STAGES = (*LAYERS, *TARGETS)  # what `dvc repro evaluate` runs after the registry grew
P2_OUTPUTS = (*LAYERS.values(), "data/fetch_report.json", "data/evaluation", "plots/classify", "plots/concentration")


@dataclass
class FullRun:
    cards: int
    grown: int
    cold: StageRun  # P10: every stage
    eval_only: float  # P1
    eval_noop: float  # a no-op `dvc repro` of the same targets, median of 3
    naive: float
    accuracies: dict[str, float]  # evalstack's on the dev split (== the naive script's)
    rerun: StageRun  # P2
    rerun_noop: float  # a no-op `dvc repro` of the P2 targets right after the rerun
    forced: StageRun  # `dvc repro -f -s` of the P2 stages right after: each runs, the store answers every shard
    rerun_bytes: int
    cold_bytes: int  # bytes of the P2 stages' outputs after the cold run
    recomputed: dict[str, dict[str, int]]  # layer → counts of the rerun
    log: list[str]

    @property
    def p2_cold(self) -> float:
        return sum(self.cold.seconds[stage] for stage in P2_STAGES)


def full_project(root: Path, cards: int, tiny: bool) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    overrides = {} if tiny else {section: params[section] for section in TINY_PARAMS}  # undo the test shrinking
    overrides = {**overrides, "synth": {**overrides.get("synth", {}), "n_cards": cards}, "store": {"link": "hardlink"}}
    project = make_project(root, overrides)
    run(project, "dvc", "config", "cache.type", "hardlink")
    return project


def own_models(project: Path) -> None:
    """The models the train stages wrote become files the user added (`dvc add`); no stage trains any more."""
    pipeline = yaml.safe_load((project / "dvc.yaml").read_text())
    for producer in ("train", "fit_pls", "export_onnx"):
        pipeline["stages"].pop(producer, None)
    (project / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    lock["stages"] = {name: stage for name, stage in lock["stages"].items()
                      if not name.startswith(("train@", "fit_pls", "export_onnx@"))}
    (project / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    params = yaml.safe_load((project / "params.yaml").read_text())
    files = [entry["file"] for entry in params["models"].values()]
    run(project, "dvc", "add", *files)
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "the trained models, now the user's own")


def accuracy_of(project: Path, model: str) -> float:
    return float(json.loads((project / f"data/evaluation/{model}.json").read_text())["accuracy"])


def output_bytes(project: Path) -> int:
    total = 0
    for name in P2_OUTPUTS:
        path = project / name
        total += tree_size(path)[0] if path.is_dir() else path.stat().st_size
    return total


def measure(scratch: Path, cards: int, tiny: bool, growth: float = 0.05) -> FullRun:
    log: list[str] = []
    say = lambda line: (log.append(line), print("    " + line, flush=True))  # noqa: E731
    grown = round(cards * (1 + growth))
    project = full_project(scratch / f"full{cards}", cards, tiny)

    cold = monitored(["dvc", "repro"], project)
    say(f"P10 cold `dvc repro` at {cards} cards, every stage: {stage_line(cold)}")
    cold_bytes = output_bytes(project)

    own_models(project)
    set_param(project, "evaluate.split", "dev")
    started = time.monotonic()
    run(project, "dvc", "repro", *TARGETS)
    eval_only = time.monotonic() - started
    eval_noop = noop_seconds(project)
    accuracies = {model: accuracy_of(project, model) for model in MODELS}
    started = time.monotonic()
    naive_out = run(project, sys.executable, str(BENCH / "_naive.py"), str(project), "--models", *MODELS).stdout
    naive = time.monotonic() - started
    naive_accuracies = json.loads(naive_out.strip().splitlines()[-1])
    say(f"P1: evaluate.split → dev: `dvc repro` {eval_only:.2f} s (no-op {eval_noop:.2f} s); naive script {naive:.1f} s; dev accuracy "
        + ", ".join(f"{m} {accuracies[m]:.6f} (naive {naive_accuracies[m]:.6f})" for m in MODELS))
    differ = {m: (accuracies[m], naive_accuracies[m]) for m in MODELS if round(naive_accuracies[m], 6) != accuracies[m]}
    if differ:
        raise AssertionError(f"evalstack and the naive script disagree on the same items: {differ}")
    set_param(project, "evaluate.split", "test")
    run(project, "dvc", "repro", *TARGETS)  # back to test (restored from the run-cache), not timed

    set_param(project, "synth.n_cards", grown)
    started = time.monotonic()
    run(project, "dvc", "repro", "synth")  # the source grows: not timed
    say(f"the source grew to {grown} cards in {time.monotonic() - started:.0f} s (synth; not timed)")
    cache_before = tree_size(project / ".dvc/cache")[0]
    rerun = monitored(["dvc", "repro", *TARGETS], project)
    rerun_bytes = tree_size(project / ".dvc/cache")[0] - cache_before
    recomputed = {stage: build_record(project, layer)["counts"] for stage, layer in LAYERS.items()}
    rerun_noop = noop_seconds(project)
    say(f"P2 rerun `dvc repro` after +{growth:.0%}: {stage_line(rerun)}; a no-op rerun {rerun_noop:.2f} s")
    # the same stages with nothing to compute; -s, each alone: forced targets would also run synth upstream of fetch
    forced = monitored(["dvc", "repro", "-f", "-s", *P2_STAGES], project)
    say(f"P2's fixed cost, `dvc repro -f -s` of the same stages right after (the store answers every shard): "
        f"{stage_line(forced)}")
    say("recomputed: " + "; ".join(f"{s} {c['shards_computed']}/{c['shards']} shards ({c['items_computed']} items)"
                                   for s, c in recomputed.items()))
    return FullRun(cards, grown, cold, eval_only, eval_noop, naive, accuracies, rerun, rerun_noop, forced, rerun_bytes,
                   cold_bytes, recomputed, log)


def noop_seconds(project: Path) -> float:
    """Median of 3 `dvc repro` of the timed targets with nothing to do: what DVC itself costs a rerun."""
    def once() -> float:
        started = time.monotonic()
        ran = run(project, "dvc", "repro", *TARGETS).stdout
        assert "Running stage" not in ran, f"a no-op `dvc repro` ran a stage:\n{ran}"
        return time.monotonic() - started

    return statistics.median(once() for _ in range(3))


def stage_table(run_: StageRun) -> list[str]:
    """Markdown rows: stage, seconds, share, peak RSS; longest first."""
    total = run_.total
    rows = []
    for stage, seconds in sorted(run_.seconds.items(), key=lambda item: -item[1]):
        rss = run_.peak_rss.get(stage)
        rows.append(f"| {stage} | {seconds:.1f} | {100 * seconds / total:.0f} % | "
                    f"{'' if rss is None else f'{rss / 2**20:.0f} MB'} |")
    return rows


def git_clean(path: Path) -> bool:
    return subprocess.run(["git", "status", "--porcelain"], cwd=path, capture_output=True, text=True).stdout == ""
