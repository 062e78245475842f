"""The evaluate stage evaluates every model in one process and reuses a model's outputs from the shard store
only while everything they are computed from is unchanged."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from evalstack.config import ModelSpec
from evalstack.core.layers import Layer, LayerCorruptError
from evalstack.evaluation.all_models import EVALUATION_KIND, EvaluateLayout, evaluate_models
from evalstack.evaluation.classification import EvaluationOutputs, evaluate_classifier, write_outputs
from evalstack.models.inference import infer_layer
from tests.layers import NumpyAdapter, Project, store_at, tiny_pipeline

LABELS = ("lactose", "b", "c")  # the test registry's cards are all lactose
WEIGHTS = {"m": b"weights1", "n": b"weights2"}


def _infer(project: Project, name: str, weights: bytes, store) -> None:
    file = project.root / f"models/{name}.npy"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(weights)
    spec = ModelSpec(name=name, file=file, adapter="numpy", pipeline="tiny", labels=LABELS, options={"size": 8})
    infer_layer(project.pre, project.root / f"data/predictions/{name}", NumpyAdapter(spec), batch_size=3, store=store)


def _params(project: Project, split: str = "dev") -> dict:
    pipeline = tiny_pipeline()
    return {
        "models": {name: {"file": str(project.root / f"models/{name}.npy"), "adapter": "numpy", "pipeline": "tiny",
                          "labels": list(LABELS), "size": 8} for name in WEIGHTS},
        "preprocess": {"pipelines": {"tiny": {"kind": pipeline.kind, **pipeline.parameters()}}},
        "evaluate": {"split": split},
    }


def _layout(project: Project) -> EvaluateLayout:
    root = project.root
    return EvaluateLayout(project.raw, root / "data/predictions", root / "metrics", root / "data/evaluation",
                          root / "plots")


def _outputs(project: Project) -> dict[str, bytes]:
    folders = [project.root / "metrics", project.root / "data/evaluation", project.root / "plots"]
    return {str(path.relative_to(project.root)): path.read_bytes()
            for folder in folders for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture
def built(tmp_path: Path):
    project = Project(tmp_path / "p")
    store = store_at(tmp_path / "store")
    project.grow(9)
    project.fetch(store)
    project.preprocess(store)
    for name, weights in WEIGHTS.items():
        _infer(project, name, weights, store)
    return project, store


def test_each_model_gets_the_files_evaluating_it_alone_gives_and_an_unchanged_one_comes_from_the_store(built, tmp_path):
    project, store = built
    first = evaluate_models(_params(project), _layout(project), store)
    assert [(r.name, r.reused) for r in first] == [("m", False), ("n", False)]
    written = _outputs(project)
    assert sorted(written) == sorted(
        [f"metrics/{m}.json" for m in WEIGHTS] + [f"data/evaluation/{m}.json" for m in WEIGHTS]
        + [f"plots/classify/{part}/{m}.csv" for part in ("pairs", "per_class") for m in WEIGHTS])
    assert json.loads(written["metrics/m.json"]) == {"m": {"accuracy": first[0].headline["accuracy"]}}
    for name in WEIGHTS:  # the per-model evaluation the stage ran before, into another folder
        alone = EvaluationOutputs(tmp_path / "alone/metrics.json", tmp_path / "alone/pairs.csv",
                                  tmp_path / "alone/per_class.csv", tmp_path / "alone/details.json", name, "classify")
        spec = ModelSpec(name=name, file=project.root / f"models/{name}.npy", adapter="numpy", pipeline="tiny",
                         labels=LABELS, options={"size": 8})
        signature = Layer.open(project.root / f"data/predictions/{name}").key.parts["model"]
        from evalstack.core.keys import Key

        write_outputs(*evaluate_classifier(project.raw, project.root / f"data/predictions/{name}", spec,
                                           Key("model", signature), tiny_pipeline().cache_key(), "dev"), alone)
        assert written[f"metrics/{name}.json"] == alone.metrics.read_bytes()
        assert written[f"data/evaluation/{name}.json"] == alone.details.read_bytes()
        assert written[f"plots/classify/pairs/{name}.csv"] == alone.pairs.read_bytes()
        assert written[f"plots/classify/per_class/{name}.csv"] == alone.per_class.read_bytes()

    for folder in ("metrics", "data/evaluation", "plots"):  # as DVC leaves them before it runs the stage
        for path in (project.root / folder).rglob("*.*"):
            path.unlink()
    again = evaluate_models(_params(project), _layout(project), store)
    assert [(r.name, r.reused) for r in again] == [("m", True), ("n", True)]
    assert _outputs(project) == written
    assert sum(1 for entry in store.entries() if entry.kind == EVALUATION_KIND) == 2


def test_what_an_evaluation_is_computed_from_decides_what_is_recomputed(built):
    project, store = built
    evaluate_models(_params(project), _layout(project), store)

    _infer(project, "n", b"other weights", store)  # n's predictions change; m's do not
    rerun = evaluate_models(_params(project), _layout(project), store)
    assert [(r.name, r.reused) for r in rerun] == [("m", True), ("n", False)]

    assert not any(r.reused for r in evaluate_models(_params(project, "all"), _layout(project), store))

    project.grow(12)  # three more cards: the truth every model is scored against changed
    project.fetch(store)
    project.preprocess(store)
    for name, weights in (("m", WEIGHTS["m"]), ("n", b"other weights")):
        _infer(project, name, weights, store)
    grown = evaluate_models(_params(project), _layout(project), store)
    assert [(r.name, r.reused) for r in grown] == [("m", False), ("n", False)]
    assert json.loads((project.root / "data/evaluation/m.json").read_text())["n_items"] == 12


def test_the_key_covers_the_evaluation_code_and_what_names_the_outputs():
    from evalstack.evaluation.all_models import evaluation_key

    spec = ModelSpec(name="m", file=Path("m.npy"), adapter="numpy", pipeline="tiny", labels=LABELS)
    key = evaluation_key(spec, "dev", "a" * 64, "b" * 64)
    for module in ("evalstack.evaluation.metrics", "evalstack.evaluation.classification",
                   "evalstack.evaluation.concentration", "evalstack.evaluation.items", "evalstack.evaluation.all_models"):
        assert module in key.parts["code"]
    from dataclasses import replace

    others = [evaluation_key(replace(spec, name="m2"), "dev", "a" * 64, "b" * 64),
              evaluation_key(replace(spec, labels=("lactose", "c", "b")), "dev", "a" * 64, "b" * 64),
              evaluation_key(replace(spec, task="concentration"), "dev", "a" * 64, "b" * 64),
              evaluation_key(spec, "test", "a" * 64, "b" * 64),
              evaluation_key(spec, "dev", "c" * 64, "b" * 64),
              evaluation_key(spec, "dev", "a" * 64, "c" * 64)]
    assert len({key.hex, *(other.hex for other in others)}) == 7


def test_a_stored_result_does_not_hide_a_damaged_input_and_a_damaged_entry_is_recomputed(built):
    project, store = built
    evaluate_models(_params(project), _layout(project), store)
    expected = _outputs(project)

    entry = next(e for e in store.entries() if e.kind == EVALUATION_KIND and e.layer_key["parts"]["model"] == "m")
    stored = store.shard_path(entry.address)
    os.chmod(stored, 0o644)
    data = bytearray(stored.read_bytes())
    middle = len(data) // 2
    data[middle] = ord("A") if data[middle] != ord("A") else ord("B")
    stored.write_bytes(bytes(data))  # same size, other bytes
    rerun = evaluate_models(_params(project), _layout(project), store)
    assert [(r.name, r.reused) for r in rerun] == [("m", False), ("n", True)]
    assert _outputs(project) == expected

    layer = Layer.open(project.root / "data/predictions/n")
    shard = layer.path(layer.shards[0])
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(LayerCorruptError, match="does not match the sha256"):
        evaluate_models(_params(project), _layout(project), store)


def test_a_damaged_predictions_shard_with_its_stat_kept_is_read_before_a_result_is_stored(built, tmp_path):
    """A predictions shard damaged with its size and mtime kept passed the stat-based check; evaluated after a
    split change, its figures went into the store under the undamaged layer's key, and a clean clone sharing the
    store took them, exit 0 (found by a hunt). A model that is evaluated now reads its predictions in full first."""
    project, store = built
    evaluate_models(_params(project), _layout(project), store)
    layer = Layer.open(project.root / "data/predictions/n")
    shard = layer.path(layer.shards[0])
    status = shard.stat()
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    os.chmod(shard, 0o644)
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(status.st_atime_ns, status.st_mtime_ns))
    with pytest.raises(LayerCorruptError, match="does not match the sha256"):
        evaluate_models(_params(project, split="all"), _layout(project), store_at(tmp_path / "store"))
    stored = {split: sorted(e.layer_key["parts"]["model"] for e in store.entries()
                            if e.kind == EVALUATION_KIND and e.layer_key["parts"]["split"] == split)
              for split in ("dev", "all")}
    # every model's inputs are read before any model is computed (one pass over the raw layer feeds them all), so
    # n's damage stops the stage before m's figures too; the first run shows that computed figures are stored
    assert stored == {"dev": ["m", "n"], "all": []}


def test_outputs_of_a_model_no_longer_declared_are_removed(built):
    project, store = built
    evaluate_models(_params(project), _layout(project), store)
    params = _params(project)
    del params["models"]["n"]
    evaluate_models(params, _layout(project), store)
    assert sorted(_outputs(project)) == ["data/evaluation/m.json", "metrics/m.json", "plots/classify/pairs/m.csv",
                                         "plots/classify/per_class/m.csv"]


def test_without_a_store_every_model_is_computed(built):
    project, _ = built
    for _ in range(2):
        assert not any(r.reused for r in evaluate_models(_params(project), _layout(project), None))


def test_the_store_gives_back_the_exact_bytes_whatever_they_hold(tmp_path: Path):
    """A reuse writes what was computed, byte for byte: no locale decoding, no newline translation (a label with
    "\\r\\n" or "ácido" in a CSV), and nothing is left behind in an output folder."""
    from evalstack.evaluation.all_models import _keep, _restore, evaluation_key

    store = store_at(tmp_path / "store")
    layout = EvaluateLayout(tmp_path / "raw", tmp_path / "pred", tmp_path / "metrics", tmp_path / "details",
                            tmp_path / "plots")
    outputs = layout.outputs("m", "classify")
    contents = {outputs.metrics: b'{"m": {"accuracy": 0.5}}\n', outputs.details: b'{"n_items": 2}\n',
                outputs.pairs: 'actual,predicted\n"a\r\nb",ácido\n'.encode(), outputs.per_class: b"\xe1\xff\r\n"}
    for path, data in contents.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    spec = ModelSpec(name="m", file=Path("m.npy"), adapter="numpy", pipeline="tiny", labels=LABELS)
    key = evaluation_key(spec, "dev", "a" * 64, "b" * 64)
    _keep(store, key, outputs)
    for path in contents:
        path.write_bytes(b"stale")
    assert _restore(store, key, outputs)
    assert {path: path.read_bytes() for path in contents} == contents
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file() and "store" not in p.parts) == sorted(
        p.name for p in contents)


def test_models_of_both_tasks_share_one_read_of_the_raw_layer_and_equal_each_evaluated_alone(built, tmp_path,
                                                                                              monkeypatch):
    """The evaluate stage feeds every model it computes from one pass over the raw layer (it read the truth
    once a model: five times in the template); each model's files are still what evaluating it alone gives."""
    from evalstack.core.keys import Key
    from evalstack.evaluation.concentration import evaluate_concentration, write_concentration_outputs

    project, store = built
    levels = ("0", "20", "50", "80", "100")
    file = project.root / "models/q.npy"
    file.write_bytes(b"weights3")
    concentration = ModelSpec(name="q", file=file, adapter="numpy", pipeline="tiny", labels=levels,
                              task="concentration", options={"size": 8})
    infer_layer(project.pre, project.root / "data/predictions/q", NumpyAdapter(concentration), batch_size=3,
                store=store)
    params = _params(project, split="all")
    params["models"]["q"] = {"file": str(file), "adapter": "numpy", "pipeline": "tiny", "labels": list(levels),
                             "task": "concentration", "size": 8}
    reads: list[Path] = []
    columns = Layer.columns
    monkeypatch.setattr(Layer, "columns", lambda layer, shard: (reads.append(layer.directory), columns(layer, shard))[1])
    results = evaluate_models(params, _layout(project), store)
    monkeypatch.undo()

    assert [(r.name, r.task, r.reused) for r in results] == [("m", "classify", False), ("n", "classify", False),
                                                              ("q", "concentration", False)]
    raw_shards = len(Layer.open(project.raw).shards)
    assert raw_shards > 1
    assert reads.count(Path(project.raw)) == raw_shards  # once, not once per model
    for name in ("m", "n", "q"):
        assert reads.count(project.root / f"data/predictions/{name}") == raw_shards
    written = _outputs(project)
    for name, spec in {"m": None, "n": None, "q": concentration}.items():
        spec = spec or ModelSpec(name=name, file=project.root / f"models/{name}.npy", adapter="numpy",
                                 pipeline="tiny", labels=LABELS, options={"size": 8})
        task = "concentration" if name == "q" else "classify"
        alone = EvaluationOutputs(tmp_path / f"alone/{name}/metrics.json", tmp_path / f"alone/{name}/pairs.csv",
                                  tmp_path / f"alone/{name}/per_class.csv", tmp_path / f"alone/{name}/details.json",
                                  name, task)
        signature = Key("model", Layer.open(project.root / f"data/predictions/{name}").key.parts["model"])
        evaluate, write = ((evaluate_concentration, write_concentration_outputs) if name == "q"
                           else (evaluate_classifier, write_outputs))
        write(*evaluate(project.raw, project.root / f"data/predictions/{name}", spec, signature,
                        tiny_pipeline().cache_key(), "all"), alone)
        assert written[f"metrics/{name}.json"] == alone.metrics.read_bytes()
        assert written[f"data/evaluation/{name}.json"] == alone.details.read_bytes()
        assert written[f"plots/{task}/pairs/{name}.csv"] == alone.pairs.read_bytes()
        assert written[f"plots/{task}/per_class/{name}.csv"] == alone.per_class.read_bytes()
