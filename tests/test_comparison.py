"""The comparison on hand-made predictions layers: pairing, accuracy, McNemar, per class, RMSE, parity, report."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evalstack.config import ModelError, ModelSpec
from evalstack.core.keys import Key, sha256_file
from evalstack.core.kinds import PREDICTIONS_KIND
from evalstack.core.layers import CacheStaleError, LayerWriter, shard_name
from evalstack.evaluation.comparison import ModelRun, compare_runs, open_fresh
from evalstack.models.predictions import prediction_columns
from evalstack.reporting.comparison_report import ReportOutputs, write_report

DRUGS = ["amoxicillin", "lactose"]
KEYS = [f"{i:064x}" for i in range(8)]
PIPELINE = Key("pipeline", {"kind": "crop_resize", "version": "1", "params": {"size": 8}})


def truth() -> pd.DataFrame:
    frame = pd.DataFrame({
        "item_key": KEYS,
        "sample_name": ["amoxicillin", "lactose"] * 4,
        "quantity": [20, 50, 80, 100, 20, 50, 80, 100],
        "split": ["test"] * 6 + ["dev"] * 2,
    })
    frame.index = pd.Index(range(100, 108), name="id")  # tables join on the source's id
    return frame


def write_layer(directory: Path, keys: list[str], logits: np.ndarray, model_parts: dict) -> Path:
    key = Key("predictions", {"model": model_parts, "pipeline": dict(PIPELINE.parts)})
    writer = LayerWriter(directory, PREDICTIONS_KIND, key)
    writer.add_shard(shard_name(0), prediction_columns(np.asarray(keys, dtype="S64"), logits.astype(np.float32)))
    writer.finish()
    return directory


def classifier(tmp_path: Path, name: str, predicted: list[int], keys=KEYS, noise: float = 0.0, **extra) -> ModelRun:
    logits = np.full((len(keys), 2), -2.0)
    logits[np.arange(len(keys)), predicted] = 2.0
    logits += noise
    layer = write_layer(tmp_path / name, keys, logits, {"labels": DRUGS, "task": "classify", "weights_sha256": "0"})
    return ModelRun(name, "classify", "torch", "p", layer, latency={"ms_per_item": 1.5}, **extra)


def test_models_are_paired_by_id_and_scored(tmp_path):
    truths = [0, 1, 0, 1, 0, 1]  # test items
    good = classifier(tmp_path, "good", truths + [0, 0])
    worse = classifier(tmp_path, "worse", [0, 1, 1, 1, 0, 1, 0, 0])
    comparison = compare_runs([good, worse], truth())
    assert comparison.n_items == 6 and comparison.notes == []
    summary = comparison.summary.set_index("model")
    assert summary.loc["good", "accuracy"] == 1.0
    assert summary.loc["worse", "accuracy"] == pytest.approx(5 / 6)
    assert summary.loc["good", "latency_ms_per_item"] == 1.5
    row = comparison.mcnemar.iloc[0]
    assert (row["only_a_correct"], row["only_b_correct"], row["method"]) == (1, 0, "exact")
    per_class = comparison.per_class.set_index("class")
    assert per_class.loc["amoxicillin", "worse"] == pytest.approx(2 / 3)
    assert per_class.loc["amoxicillin", "support"] == 3


def test_a_layer_whose_rows_are_not_the_raw_layers_is_refused(tmp_path):
    order = [5, 3, 1, 0, 2, 6, 7, 4]  # the same items in another order: not built from this raw layer
    shuffled = classifier(tmp_path, "shuffled", [0] * 8, keys=[KEYS[i] for i in order])
    with pytest.raises(CacheStaleError, match="shuffled was not built from the raw layer.*row 0 holds another item"):
        compare_runs([shuffled], truth())



def test_a_true_class_outside_a_models_labels_is_refused_as_evaluate_refuses_it(tmp_path):
    """An ad-hoc model whose labels are spelled otherwise than the data's (`Amoxicillin`) scored 0.0 in
    compare_models, exit 0, where the evaluate stage refuses the same model (found by a hunt)."""
    logits = np.zeros((len(KEYS), 2))
    layer = write_layer(tmp_path / "titled", KEYS, logits, {"labels": ["Amoxicillin", "Lactose"], "task": "classify",
                                                            "weights_sha256": "0"})
    titled = ModelRun("titled", "classify", "torch", "p", layer, latency=None)
    with pytest.raises(ModelError, match=r"model titled: true classes \['amoxicillin', 'lactose'\] are not in its"):
        compare_runs([titled], truth())

def test_identical_bytes_under_two_ids_keep_their_own_truth(tmp_path):
    facts = truth()
    facts["item_key"] = [KEYS[0], KEYS[0], *KEYS[2:]]  # ids 100 and 101: the same image, two labels
    predicted = classifier(tmp_path, "m", [0, 0, 0, 1, 0, 1, 0, 0], keys=list(facts["item_key"]))
    per_class = compare_runs([predicted], facts).per_class.set_index("class")
    # id 100 is amoxicillin (right), id 101 lactose (wrong): joining on the image hash would give both one label
    assert per_class.loc["lactose", "m"] == pytest.approx(2 / 3) and per_class.loc["amoxicillin", "m"] == 1.0


def test_parity_of_an_export(tmp_path):
    source = classifier(tmp_path, "torch", [0] * 8)
    export = classifier(tmp_path, "onnx", [0] * 7 + [1], noise=1e-3, parity_of="torch")
    parity = compare_runs([source, export], truth()).parity.iloc[0]
    assert parity["reference"] == "torch" and parity["n_items"] == 8
    assert parity["argmax_agreement"] == pytest.approx(7 / 8)
    assert parity["max_abs_probability_diff"] == pytest.approx(1 / (1 + np.exp(-4)) - 1 / (1 + np.exp(4)), rel=1e-5)


def test_concentration_rmse_per_class_with_a_per_drug_model(tmp_path):
    # PLS-like: one output per drug; amoxicillin's column is off by +10, lactose has no row.
    logits = np.stack([truth()["quantity"].to_numpy() + 10.0], axis=1)
    parts = {"labels": DRUGS, "task": "concentration", "drugs": ["amoxicillin"], "weights_sha256": "0"}
    run = ModelRun("pls", "concentration", "pls", "f", write_layer(tmp_path / "pls", KEYS, logits, parts))
    comparison = compare_runs([run], truth())
    summary = comparison.summary.iloc[0]
    assert summary["rmse"] == pytest.approx(10.0) and summary["n_unscored"] == 3
    table = comparison.concentration_per_class.set_index("class")
    assert table.loc["amoxicillin", "pls"] == pytest.approx(10.0) and np.isnan(table.loc["lactose", "pls"])


def test_stale_layer_is_refused_with_the_reason(tmp_path):
    weights = tmp_path / "m.bin"
    weights.write_bytes(b"weights")
    parts = {"labels": DRUGS, "task": "classify", "layout": "NHWC", "weights_sha256": sha256_file(weights)}
    layer = write_layer(tmp_path / "m", KEYS, np.zeros((8, 2)), parts)
    run = ModelRun("m", "classify", "torch", "p", layer)
    spec = ModelSpec(name="m", file=weights, adapter="torch", pipeline="p", labels=tuple(DRUGS))
    open_fresh(run, spec, PIPELINE)  # fresh: no error
    with pytest.raises(CacheStaleError, match=r"model.labels.*\n.*dvc repro infer@m"):
        open_fresh(run, ModelSpec(**{**spec.__dict__, "labels": ("a", "b")}), PIPELINE)
    weights.write_bytes(b"new weights")
    with pytest.raises(CacheStaleError, match="model.weights_sha256"):
        open_fresh(run, spec, PIPELINE)


def test_report_files(tmp_path):
    runs = [classifier(tmp_path, "a", [0, 1, 0, 1, 0, 0, 0, 0]), classifier(tmp_path, "b", [0] * 8)]
    comparison = compare_runs(runs, truth())
    outputs = ReportOutputs(tmp_path / "comparison", tmp_path / "plots" / "accuracy.csv")
    write_report(comparison, outputs, "test", 0.95)
    summary = pd.read_csv(outputs.directory / "summary.csv")
    assert summary.loc[summary.model == "a", "accuracy"].round(4).tolist() == [0.8333]
    mcnemar = pd.read_csv(outputs.directory / "mcnemar.csv")
    assert mcnemar[["model_a", "model_b", "only_a_correct", "only_b_correct", "method"]].values.tolist() == [
        ["a", "b", 2, 0, "exact"]]
    assert not (outputs.directory / "report.md").exists()  # the one report is reports/index.html
    assert pd.read_csv(outputs.plot_data).columns.tolist() == ["model", "accuracy", "accuracy_ci_low", "accuracy_ci_high"]
    assert pd.read_csv(outputs.directory / "summary.csv").shape[0] == 2
