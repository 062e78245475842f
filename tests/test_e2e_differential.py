"""The proof of trustworthy reuse: after any edit, a warm `dvc repro` gives what a from-scratch run gives.

A project with a warm DVC cache, run-cache and shard store goes through a sequence of edits
(params of every kind, code, cards added/removed/modified/duplicated, a replaced model file, a
toggle A → B → A, `dvc exp run -S`, a run-cache pulled from a remote). After each step the
warm project runs `dvc repro`; the same commit is then built in a fresh clone with empty caches
(no DVC cache, no shard store, no run-cache: only the model files a user adds are pulled), and
every output is compared file by file, declared measurements excepted (latency). The first build, itself
one from nothing, is the reference for its own commit. Each step also records what recomputed, so
"only what the edit affects" is checked, not assumed.

`make differential` runs it at a larger scale (EVALSTACK_DIFFERENTIAL=large) and writes
bench/out/differential.json.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml

from tests.e2e import build_record, make_project, run, stages_run, write_params

pytestmark = pytest.mark.slow

LARGE = os.environ.get("EVALSTACK_DIFFERENTIAL") == "large"
N_POOL, N_START = (90, 60) if LARGE else (30, 20)
CARD_BYTES = 1_370_000
# Declared measurements: infer's latency (compare no longer carries it, so its summary is compared too).
MEASUREMENTS = ("data/latency/*",)
LAYERS = ("data/raw", "data/preprocessed/thumb64", "data/preprocessed/thumb32", "data/preprocessed/pad_regions",
          "data/predictions/mine", "data/predictions/pls")

_OWN_MODEL = """
import sys, numpy as np, onnx
from onnx import TensorProto, helper, numpy_helper
# The user's own model: logits = flatten(x) @ w + b on a 32×32 thumbnail, in ONNX (onnxruntime loads it in
# ~0.1 s, where a stage that runs a .pt2 pays ~3 s of torch imports and a Keras one ~4.5 s of TensorFlow's).
rng = np.random.default_rng(int(sys.argv[1]))
w = (rng.normal(size=(32 * 32 * 3, 23)) / 255).astype(np.float32)
b = rng.normal(size=23).astype(np.float32)
graph = helper.make_graph(
    [helper.make_node("Reshape", ["x", "shape"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["xw"]),
     helper.make_node("Add", ["xw", "b"], ["logits"])],
    "mine", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32, 32, 3])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 23])],
    [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
     numpy_helper.from_array(np.array([-1, 32 * 32 * 3], np.int64), "shape")])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
model.ir_version = 8
onnx.save(model, "models/mine.onnx")
"""


@dataclass
class Step:
    name: str
    edits: list[str]
    ran: set[str] = field(default_factory=set)
    restored: set[str] = field(default_factory=set)  # stages DVC's run-cache answered
    computed: dict[str, int] = field(default_factory=dict)  # layer → shards computed in this step
    divergences: list[str] = field(default_factory=list)
    reference: str = ""  # which scratch build it was compared with


class Differential:
    """The warm project, its git/DVC remotes, and scratch builds keyed by the inputs they were built from."""

    def __init__(self, root: Path, pool: Path):
        self.root, self.pool = root, pool
        self.origin = root / "origin"
        self.scratch: dict[str, dict[str, str]] = {}  # tree → output digests of a build from nothing
        self.steps: list[Step] = []

    # -- the project ---------------------------------------------------------------------------
    def create(self) -> None:
        overrides = {
            "fetch": {"source": {"kind": "registry", "registries": {
                "dev": "registry/metadata_dev.csv", "test": "registry/metadata_test.csv"},
                # the pool's images are outside the registry's folder: a local registry reads only roots it lists
                "roots": [str(self.pool)]},
                "shard_bytes": 5 * CARD_BYTES},
            "robustness": {"types": ["gaussian_noise"], "severities": [1], "reference": "pls"},
        }
        origin = make_project(self.origin, overrides)
        params = yaml.safe_load((origin / "params.yaml").read_text())
        pipelines = params["preprocess"]["pipelines"]
        params["preprocess"]["pipelines"] = {"thumb64": pipelines["thumb64"], "pad_regions": pipelines["pad_regions"],
                                             "thumb32": {**pipelines["thumb64"], "resize": 32}}
        # The model the pipeline trains is pls (fit_pls, from the raw layer's dev cards); the demo's torch and
        # Keras trainings are left out (until 2026-12-07 torch_cnn was in: its train, infer and robustness
        # stages paid ~10 s of torch imports in each build from nothing). What it added is covered where cheaper:
        # every key is adapter-blind (a model's bytes, whatever loads them: `mine` is replaced below), and the
        # demo trainings' determinism across clones is test_adapters_formats' and test_e2e_repro's.
        params["train"] = {}
        params["export"] = {}
        params["models"] = {"pls": params["models"]["pls"],
                            "mine": {"file": "models/mine.onnx", "adapter": "onnx", "pipeline": "thumb32",
                                     "labels": "fhi2020", "task": "classify"}}
        write_params(origin, params)
        pipeline = yaml.safe_load((origin / "dvc.yaml").read_text())
        for unused in ("synth", "train", "export_onnx"):
            pipeline["stages"].pop(unused)
        fetch = pipeline["stages"]["fetch"]
        fetch["deps"] = [dep for dep in fetch["deps"] if dep != "data/source"] + ["registry"]
        (origin / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
        self.write_registry(range(N_START))
        run(origin, sys.executable, "-c", _OWN_MODEL, "1")
        run(origin, "dvc", "remote", "add", "-d", "shared", str(self.root / "remote"))
        run(origin, "dvc", "add", "-q", "models/mine.onnx")
        self.commit("the project: a registry in git, images on a server, a trained model and one of the user's")

    def write_registry(self, positions, edit: Callable[[list[dict]], list[dict]] | None = None) -> None:
        """registry/metadata_<split>.csv: the pool's cards at `positions` (image URLs point into the pool)."""
        import csv

        rows = []
        for split in ("dev", "test"):
            with open(self.pool / f"metadata_{split}.csv", newline="") as handle:
                rows += [dict(row, _split=split) for row in csv.DictReader(handle)]
        rows.sort(key=lambda row: int(row["id"]))
        chosen = [rows[i] for i in positions]
        chosen = edit(chosen) if edit else chosen
        folder = self.origin / "registry"
        folder.mkdir(exist_ok=True)
        for split in ("dev", "test"):
            with open(folder / f"metadata_{split}.csv", "w", newline="") as handle:
                writer = csv.DictWriter(handle, [k for k in rows[0] if k != "_split"], lineterminator="\n",
                                        extrasaction="ignore")
                writer.writeheader()
                writer.writerows(row for row in chosen if row["_split"] == split)

    def commit(self, message: str) -> None:
        run(self.origin, "git", "add", "-A")
        run(self.origin, "git", "commit", "-qm", message, "--allow-empty")
        # The scratch clones pull the user's model file; every commit's outputs go to the remote once,
        # before the colleague's pull (`dvc push --all-commits`), not after each step.
        changed = run(self.origin, "git", "diff", "--name-only", "HEAD~1", "HEAD").stdout.split()
        if "models/mine.onnx.dvc" in changed:
            run(self.origin, "dvc", "push", "-q", "models/mine.onnx.dvc")

    # -- a step --------------------------------------------------------------------------------
    def step(self, name: str, edits: list[str], apply: Callable[[], None] | None = None,
             command: tuple[str, ...] = ("dvc", "repro"), where: Path | None = None,
             from_nothing: bool = False) -> Step:
        step = Step(name, edits)
        if apply is not None:
            apply()
        project = where or self.origin
        finished = _now_ns()
        result = run(project, *command)
        step.ran = stages_run(result.stdout)
        step.restored = {line.split("'")[1] for line in result.stdout.splitlines() if "is cached - skipping run" in line}
        step.computed = computed_since(project, finished)
        if where is None:
            self.commit(name)
        inputs, built = input_digest(project), outputs(project)
        if from_nothing:  # this build is itself one from nothing: the reference for its inputs
            self.scratch[inputs] = built
            step.reference = "itself (a build from nothing)"
        else:
            step.reference = "an earlier scratch build of the same inputs" if inputs in self.scratch else "a new scratch build"
        reference = self.scratch.get(inputs) or self.build_scratch(inputs, project)
        step.divergences = compare(built, reference)
        self.steps.append(step)
        print(f"[differential] {name}: {len(step.ran)} stages ran, {len(step.restored)} restored, shards computed {step.computed}, compared with "
              f"{step.reference}: {len(step.divergences)} divergences {step.divergences[:5]}", file=sys.stderr, flush=True)
        return step

    def build_scratch(self, inputs: str, project: Path) -> dict[str, str]:
        """The same commit in a fresh clone: no DVC cache, no shard store, no run-cache."""
        clone = self.root / f"scratch-{len(self.scratch)}"
        run(self.root, "git", "clone", "-q", str(project), str(clone))
        run(clone, "dvc", "pull", "-q", "models/mine.onnx.dvc")  # an input: the user's own model file
        run(clone, "dvc", "repro")
        assert input_digest(clone) == inputs, "the scratch clone does not hold the warm project's inputs"
        self.scratch[inputs] = outputs(clone)
        shutil.rmtree(clone)
        return self.scratch[inputs]

    def report(self) -> list[dict]:
        return [{"step": s.name, "edits": s.edits, "stages_run": sorted(s.ran), "restored_from_run_cache":
                 sorted(s.restored), "shards_computed": s.computed,
                 "divergences": s.divergences, "compared_with": s.reference} for s in self.steps]


def _now_ns() -> int:
    import time

    return time.time_ns()


def computed_since(project: Path, started_ns: int) -> dict[str, int]:
    """Shards each layer computed in builds that finished after `started_ns` (from the store's records)."""
    from datetime import datetime

    counts = {}
    for layer in LAYERS:
        try:
            record = build_record(project, layer)
        except AssertionError:
            continue
        finished = datetime.fromisoformat(record["finished_at"]).timestamp() * 1e9
        if finished >= started_ns - 1e9:  # finished_at has one-second resolution
            counts[layer] = record["counts"]["shards_computed"]
    return counts


def input_digest(project: Path) -> str:
    """A digest of everything git tracks that is not a pipeline output: code, params, registry, .dvc files."""
    lock = yaml.safe_load((project / "dvc.lock").read_text()) if (project / "dvc.lock").exists() else {"stages": {}}
    outs = {out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])}
    digest = hashlib.sha256()
    for name in sorted(filter(None, run(project, "git", "ls-files", "-z").stdout.split("\0"))):
        if name == "dvc.lock" or any(name == out or name.startswith(out.rstrip("/") + "/") for out in outs):
            continue
        digest.update(name.encode() + b"\0" + (project / name).read_bytes() + b"\0")
    return digest.hexdigest()


def outputs(project: Path) -> dict[str, str]:
    """md5 of every file of every output dvc.lock records, declared measurements left out."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    digests = {}
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            path = project / out["path"]
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for file in files:
                name = str(file.relative_to(project))
                if not any(fnmatch.fnmatch(name, pattern) for pattern in MEASUREMENTS):
                    digests[name] = hashlib.md5(file.read_bytes()).hexdigest()
    return digests


def compare(warm: dict[str, str], scratch: dict[str, str]) -> list[str]:
    return [f"{name}: {'missing' if name not in warm else 'extra' if name not in scratch else 'differs'}"
            for name in sorted(warm.keys() | scratch.keys()) if warm.get(name) != scratch.get(name)]


def set_params(project: Path, changes: dict[str, object]) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = params
        for name in parents:
            node = node[name]
        node[leaf] = value
    write_params(project, params)


def edit_source(project: Path, relative: str, old: str, new: str) -> None:
    path = project / "src/evalstack" / relative
    text = path.read_text()
    assert old in text, f"{relative} no longer contains {old!r}: update the differential test's edit"
    path.write_text(text.replace(old, new, 1))


@pytest.fixture(scope="module")
def differential(tmp_path_factory) -> Differential:
    from evalstack.demo.cards import write_dataset

    root = tmp_path_factory.mktemp("differential")
    pool = root / "pool"  # the card server: images a registry points at, outside both clones
    write_dataset(pool, n_cards=N_POOL, seed=0, test_fraction=0.3, url_prefix=f"{(pool / 'images').as_uri()}/",
                  workers=2)
    diff = Differential(root, pool)
    diff.create()
    return diff


def test_warm_rebuilds_equal_scratch_builds_after_every_edit(differential: Differential):
    d, origin = differential, differential.origin
    try:
        _edit_sequence(d, origin)
    finally:
        _write_report(d)
    diverged = [f"{s.name}: {line}" for s in d.steps for line in s.divergences]
    assert diverged == [], "warm builds that differ from a build from nothing:\n" + "\n".join(diverged)


def _write_report(d: Differential) -> None:
    report = d.report()
    if LARGE:
        out = Path(__file__).resolve().parents[1] / "bench/out/differential.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


def _edit_sequence(d: Differential, origin: Path) -> None:

    # The first build is from nothing (no DVC cache, shard store or run-cache yet), so it is the reference for its
    # own inputs. Until 2026-12-07 a clone built the same commit again (~24 s) to compare: that checked only that
    # two builds from nothing at two paths agree, which every later step checks for what it computes: every layer
    # is computed again in the origin in a later step (the code edits compute them all) and compared with a
    # clone's build at another path, and the raw layer this build leaves is compared so in the next step.
    cold = d.step("cold build", ["nothing: the first build, from nothing"], from_nothing=True)
    assert all(n > 0 for n in cold.computed.values()) and len(cold.computed) == len(LAYERS)
    assert all(build_record(origin, layer)["counts"]["shards_reused"] == 0 for layer in LAYERS)

    d.step("pipeline params", ["thumb64.resize 64 → 48 (a key DVC's run-cache would ignore if named size)",
                                "thumb64.crop moved", "thumb32.resample bilinear → bicubic", "pad_regions.regions 10 → 8",
                                "preprocess.compression none → lz4"],
           lambda: set_params(origin, {"preprocess.pipelines.thumb64.resize": 48,
                                       "preprocess.pipelines.thumb64.crop": [81, 369, 697, 839],
                                       "preprocess.pipelines.thumb32.resample": "bicubic",
                                       "preprocess.pipelines.pad_regions.regions": 8,
                                       "preprocess.compression": "lz4"}))

    d.step("model params", ["labels.fhi2020: two drugs swap places",
                             "fit_pls.n_components 5 → 3"],
           lambda: _swap_labels_and_train(origin))

    robust_a = {"robustness.types": ["gaussian_noise"], "robustness.severities": [1], "robustness.seed": 0,
                "robustness.reference": "pls", "evaluate.split": "test", "compare.seed": 0, "compare.level": 0.95}
    robust_b = {"robustness.types": ["gaussian_noise", "contrast"], "robustness.severities": [1, 2],
                "robustness.seed": 1, "robustness.reference": "mine", "evaluate.split": "all", "compare.seed": 1,
                "compare.level": 0.9}
    d.step("evaluation and robustness params (A → B)", [f"{k}: {robust_a[k]} → {v}" for k, v in robust_b.items()],
           lambda: set_params(origin, robust_b))
    back = d.step("... and back (B → A)", ["every evaluation and robustness param back to A"],
                  lambda: set_params(origin, robust_a))
    assert back.reference.startswith("an earlier") and sum(back.computed.values()) == 0

    code = d.step("code edits in every stage's closure", [
        "core/raw.py: MIN_SHARE 0.25 → 0.2 (fetch: the raw shard format)",
        "preprocess/regions.py: ZONE_TOP 359 → 379 (preprocess@pad_regions)",
        "models/predictions.py: energy = logsumexp → max logit (infer, every model)",
        "preprocess/perturbations.py: gaussian noise severity 1 0.08 → 0.10 (robustness)",
        "evaluation/classification.py: per-class CSV to 5 decimals (evaluate)",
        "evaluation/comparison.py: per-class table's support column moved (compare)",
        "reporting/robustness_report.py: a plot column renamed (robustness_report)"],
        lambda: _edit_code(origin))
    assert all(n > 0 for n in code.computed.values()) and len(code.computed) == len(LAYERS)

    # One step, one scratch build, for two edits (they were two steps until 2026-12-06; the scratch build of
    # the comment-only step cost ~30 s): comments and a docstring in every stage's closure, and one code edit.
    # DVC reruns every stage (each one's code deps changed); only pad_regions' key changed, so every other layer
    # computes nothing: the store answers every shard whose code changed only in comments.
    regions = d.step("comment and docstring edits everywhere, one code edit in one stage's closure", [
        "a comment in every stage's closure, a docstring reworded", "preprocess/regions.py: ZONE_HEIGHT 273 → 253"],
        lambda: (_edit_comments(origin),
                 edit_source(origin, "preprocess/regions.py", "ZONE_HEIGHT = 273", "ZONE_HEIGHT = 253")))
    assert {"fetch", "preprocess@thumb64", "infer@mine"} <= regions.ran  # their deps changed: comments only
    assert {layer for layer, n in regions.computed.items() if n} == {"data/preprocessed/pad_regions",
                                                                     "data/predictions/pls"}
    why = run(origin, "evalstack", "why", "data/preprocessed/pad_regions").stdout
    assert "code: src/evalstack/preprocess/regions.py changed" in why

    # One step, one scratch build, for two edits that reach different layers (two steps until 2026-12-06). The
    # cards reach every layer, but only the shards they land in; the model file reaches infer@mine's every
    # shard. A key that left out the model's bytes would still serve the shards no card edit touched, from the
    # old weights, and the scratch comparison would see them.
    grown = d.step("cards added, removed, modified, duplicated; a model file replaced", [
        f"{N_POOL - N_START} cards appended", "2 cards removed", "one card relabelled (another drug)",
        "one card listed again under a new id (same image bytes, another label and split)",
        "models/mine.onnx: other weights (dvc add)"],
        lambda: (d.write_registry([i for i in range(N_POOL) if i not in (3, 11)], _relabel_and_duplicate),
                 run(origin, sys.executable, "-c", _OWN_MODEL, "2"), run(origin, "dvc", "add", "-q", "models/mine.onnx")))
    shards = {layer: len(json.loads((origin / layer / "index.json").read_text())["shards"]) for layer in LAYERS}
    assert grown.computed["data/preprocessed/thumb32"] < shards["data/preprocessed/thumb32"]  # some untouched
    assert grown.computed["data/predictions/mine"] == shards["data/predictions/mine"]  # ... yet all recomputed

    d.step("dvc exp run -S", ["dvc exp run -S preprocess.pipelines.thumb32.resample=lanczos"],
           command=("dvc", "exp", "run", "-S", "preprocess.pipelines.thumb32.resample=lanczos"))

    run(origin, "dvc", "push", "-q", "--all-commits", "--run-cache")
    colleague = d.root / "colleague"
    run(d.root, "git", "clone", "-q", str(origin), str(colleague))
    # The run records, and the outputs of every commit they point to (run records alone restore nothing).
    run(colleague, "dvc", "pull", "-q", "--run-cache", "--all-commits")
    pulled = d.step("a run-cache pulled from the remote", [
        "a colleague's clone: dvc pull --run-cache; thumb32.resample back to bicubic (computed before, on the origin); "
        "dvc repro"], lambda: set_params(colleague, {"preprocess.pipelines.thumb32.resample": "bicubic"}), where=colleague)
    assert pulled.reference.startswith("an earlier")  # the inputs of the "model file replaced" step
    # restored from the pulled run-cache: its store is empty, and nothing was computed
    assert {"preprocess@thumb32", "infer@mine"} <= pulled.restored and sum(pulled.computed.values()) == 0



def _swap_labels_and_train(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    labels = params["labels"]["fhi2020"]
    labels[0], labels[1] = labels[1], labels[0]
    params["fit_pls"]["n_components"] = 3
    write_params(project, params)


def _edit_code(project: Path) -> None:
    edit_source(project, "core/raw.py", "MIN_SHARE, MAX_FACTOR = 0.25, 4.0", "MIN_SHARE, MAX_FACTOR = 0.2, 4.0")
    edit_source(project, "preprocess/regions.py", "ZONE_TOP = 359", "ZONE_TOP = 379")
    edit_source(project, "models/predictions.py", '"energy": logsumexp(logits.astype(np.float64), axis=1)',
                '"energy": np.max(logits.astype(np.float64), axis=1)')
    edit_source(project, "preprocess/perturbations.py", "GAUSSIAN_NOISE = (0.08,", "GAUSSIAN_NOISE = (0.10,")
    edit_source(project, "evaluation/classification.py", 'f"{report.per_class_accuracy[name]:.6f}"',
                'f"{report.per_class_accuracy[name]:.5f}"')
    edit_source(project, "evaluation/comparison.py", 'table.insert(0, "support", grouped.size())',
                'table.insert(len(table.columns), "support", grouped.size())')
    edit_source(project, "reporting/robustness_report.py", '("severity", "accuracy", "flip_rate")',
                '("severity", "accuracy", "flipped")')


def _edit_comments(project: Path) -> None:
    for relative in ("core/layers.py", "core/raw.py", "preprocess/pipelines.py", "models/inference.py",
                     "evaluation/classification.py", "evaluation/robustness.py", "reporting/robustness_report.py",
                     "fetch/raw_layer.py", "cache/incremental.py"):
        path = project / "src/evalstack" / relative
        path.write_text(path.read_text().replace("\nfrom __future__ import annotations\n",
                                                 "\n# Reviewed: nothing to change.\nfrom __future__ import annotations\n", 1))
    edit_source(project, "core/keys.py", '"""Hashing and cache keys.', '"""Hashing, cache keys and their parts.')


def _relabel_and_duplicate(rows: list[dict]) -> list[dict]:
    rows[5] = dict(rows[5], sample_name="lactose" if rows[5]["sample_name"] != "lactose" else "blank")
    # the same image (url, md5, image name) listed again: identical bytes under a new id, another label
    twin = dict(rows[7], id=str(int(rows[-1]["id"]) + 1000), sample_name="blank", quantity="0",
                _split="dev" if rows[7]["_split"] == "test" else "test")
    return rows + [twin]
