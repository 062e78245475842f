import csv
import json
from pathlib import Path

import numpy as np
import pytest

from evalstack.config import ModelError
from evalstack.evaluation.classification import EvaluationOutputs, label_indices, write_outputs
from evalstack.evaluation.metrics import classification_report


def test_label_indices_refuse_classes_the_model_does_not_know():
    assert label_indices(["b", "a"], ("a", "b"), "m").tolist() == [1, 0]
    with pytest.raises(ModelError, match=r"model m: true classes \['z'\] are not in its label list"):
        label_indices(["z"], ("a", "b"), "m")


def test_outputs_are_dvc_metrics_and_plot_files(tmp_path: Path):
    labels = ("a", "b")
    report = classification_report(np.array([0, 1, 1]), np.array([0, 1, 0]), labels)
    outputs = EvaluationOutputs(tmp_path / "m.json", tmp_path / "c/m.csv", tmp_path / "p/m.csv")
    write_outputs(report, [("a", "a"), ("b", "b"), ("b", "a")], 3, outputs)
    metrics = json.loads(outputs.metrics.read_text())
    assert metrics == {"accuracy": pytest.approx(2 / 3, abs=1e-6), "macro_f1": pytest.approx(2 / 3, abs=1e-6),
                       "n_items": 3, "forward_passes": 3}
    rows = list(csv.DictReader(outputs.pairs.open()))
    assert rows[2] == {"actual": "b", "predicted": "a"}
    per_class = list(csv.DictReader(outputs.per_class.open()))
    assert per_class == [{"class": "a", "accuracy": "1.000000", "support": "1"},
                         {"class": "b", "accuracy": "0.500000", "support": "2"}]


def test_identical_bytes_under_two_ids_keep_their_own_label_and_split(tmp_path: Path):
    """Identity and content apart: ids 1 and 4 are the same photo with different labels and splits."""
    from evalstack.evaluation.classification import evaluate_classifier
    from evalstack.fetch.raw_layer import FetchConfig, fetch_raw_layer
    from evalstack.models.inference import infer_layer
    from evalstack.preprocess.pipelines import preprocess_layer
    from evalstack.sources.registry import REGISTRY_COLUMNS
    from tests.conftest import png_bytes
    from tests.layers import numpy_model, tiny_pipeline

    images = tmp_path / "src/images"
    images.mkdir(parents=True)
    rows = {"dev": [], "test": []}
    for image_id, seed, name, split in [(1, 1, "a", "test"), (2, 2, "b", "test"), (3, 3, "c", "dev"), (4, 1, "b", "dev")]:
        data = png_bytes(40, 30, seed=seed)
        (images / f"{image_id}.png").write_bytes(data)
        rows[split].append([image_id, image_id, name, 50, "cam", f"images/{image_id}.png",
                            __import__("hashlib").md5(data).hexdigest(), f"{image_id}.png"])
    registries = {}
    for split, entries in rows.items():
        path = tmp_path / f"src/metadata_{split}.csv"
        with open(path, "w", newline="") as handle:
            csv.writer(handle).writerows([REGISTRY_COLUMNS, *entries])
        registries[split] = str(path)
    fetch_raw_layer(FetchConfig(registries), tmp_path / "raw")
    preprocess_layer(tmp_path / "raw", tmp_path / "pre", tiny_pipeline(), name="tiny")
    model = numpy_model(tmp_path / "models")
    infer_layer(tmp_path / "pre", tmp_path / "pred", model)
    outcome = {}
    for split in ("test", "dev"):
        report, pairs, _ = evaluate_classifier(tmp_path / "raw", tmp_path / "pred", model.spec, model.signature(),
                                               tiny_pipeline().cache_key(), split)
        outcome[split] = [actual for actual, _ in pairs]
    # Joined on the image hash, ids 1 and 4 would share one label and one split.
    assert outcome == {"test": ["a", "b"], "dev": ["c", "b"]}


def test_evaluate_reads_shard_by_shard_and_refuses_predictions_of_other_items(tmp_path: Path):
    """Truth and predictions are paired shard by shard; a predictions layer built from other raw data is
    refused naming the first row that differs, never scored against the wrong labels."""
    from dataclasses import replace

    from evalstack.core.layers import CacheStaleError, Layer
    from evalstack.evaluation.classification import evaluate_classifier
    from tests.layers import Project, numpy_model, store_at, tiny_pipeline

    one, other = Project(tmp_path / "one"), Project(tmp_path / "other")
    for project, n in ((one, 9), (other, 10)):
        project.grow(n)
        project.fetch(store_at(project.root / "store"))
        project.preprocess(None)
        project.infer(None)
    model = numpy_model(one.root / "models")
    spec = replace(model.spec, labels=("lactose", "b", "c"))  # the registry's cards are all lactose
    key = tiny_pipeline().cache_key()
    report, pairs, passes = evaluate_classifier(one.raw, one.pred, spec, model.signature(), key, "dev")
    assert report.n_items == len(pairs) == passes == 9 and len(Layer.open(one.raw).shards) > 1
    assert {actual for actual, _ in pairs} == {"lactose"}
    with pytest.raises(CacheStaleError, match="was not built from .* as it is now"):
        evaluate_classifier(one.raw, other.pred, spec, model.signature(), key, "dev")
