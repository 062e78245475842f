"""Every model family end to end with the real dvc CLI: shared preprocessing, adding a model,
the comparison, and the README's Python API example sharing caches with `dvc repro`."""
import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.e2e import REPO, env, make_project, run, stages_run

pytestmark = pytest.mark.slow

N_ITEMS = 60  # tests/e2e.py TINY_PARAMS
DONE_BY_API = {"synth", "fetch", "preprocess@thumb64", "train@torch_cnn", "export_onnx@torch_cnn_onnx",
               "infer@torch_cnn", "infer@torch_cnn_onnx"}


def readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    blocks = [block for block in blocks if "compare_models" in block]
    assert len(blocks) == 1, "the README has exactly one notebook-API example, and this test runs it"
    return blocks[0]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("models") / "project")
    params = yaml.safe_load((root / "params.yaml").read_text())
    del params["train"]["tflite_cnn"], params["models"]["tflite_cnn"]  # the TFLite path is covered elsewhere
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(root, "git", "commit", "-qam", "without tflite")
    return root


@pytest.fixture(scope="module")
def api_run(project, tmp_path_factory) -> dict:
    """The README example, run as is in the project directory before any `dvc repro`."""
    namespace: dict = {}
    mp = pytest.MonkeyPatch()
    mp.chdir(project)
    mp.setenv("PATH", env()["PATH"])
    try:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            exec(compile(readme_example(), "README.md", "exec"), namespace)
        namespace["printed"] = printed.getvalue()
        dataset, mine = namespace["dataset"], namespace["mine"]
        namespace["again"] = dataset.apply_model(mine)
        namespace["again_stages"] = list(dataset.stages_run)
    finally:
        mp.undo()
    return namespace


def test_readme_api_example_runs(api_run):
    assert len(api_run["cards"]) == N_ITEMS
    assert api_run["torch_cnn"].attrs["forward_passes"] == N_ITEMS  # infer@torch_cnn ran for it: every card
    # `mine` is torch_cnn's own file, so its signature equals the declared model's and the
    # shard store may serve shards infer@torch_cnn computed: never more passes than items.
    assert len(api_run["my_predictions"]) == N_ITEMS
    assert api_run["my_predictions"].attrs["forward_passes"] <= N_ITEMS
    assert "torch_cnn_onnx" in api_run["printed"] and "p_value" in api_run["printed"]
    parity = api_run["table"].parity.iloc[0]
    assert parity["argmax_agreement"] == 1.0 and parity["max_abs_probability_diff"] < 1e-4
    # Asking again computes nothing: the ad-hoc layer is keyed by the model signature.
    assert api_run["again"].attrs["forward_passes"] == 0 and api_run["again_stages"] == []


def test_dvc_repro_does_not_redo_what_the_api_did_and_back(project, api_run):
    result = run(project, "dvc", "repro")
    ran = stages_run(result.stdout)
    assert ran and not ran & DONE_BY_API
    assert {"preprocess@pad_nn", "infer@conc_keras", "fit_pls", "infer@pls", "compare"} <= ran
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "repro")
    from evalstack.api import Dataset

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", env()["PATH"])
        dataset = Dataset(project)
        pls = dataset.apply_model("pls")
    assert dataset.stages_run == [] and pls.attrs["forward_passes"] == 0
    assert pls["prediction"].notna().any() or pls["split"].eq("test").all()


def test_models_on_one_pipeline_share_one_preprocessing(project, api_run):
    preprocessed = {p.name: json.loads((p / "index.json").read_text())
                    for p in (project / "data/preprocessed").iterdir()}
    assert set(preprocessed) == {"pad_nn", "thumb64", "pad_regions"}
    # Four models on three pipelines: three preprocessing passes over the items, not four.
    assert sum(index["stats"]["items_preprocessed"] for index in preprocessed.values()) == 3 * N_ITEMS
    thumb64_key = preprocessed["thumb64"]["key"]["parts"]
    for model in ("torch_cnn", "torch_cnn_onnx"):
        index = json.loads((project / f"data/predictions/{model}/index.json").read_text())
        assert index["stats"]["forward_passes"] == N_ITEMS
        assert index["key"]["parts"]["pipeline"] == thumb64_key


def test_comparison_report(project, api_run):
    summary = pd.read_csv(project / "comparison/summary.csv").set_index("model")
    assert set(summary.index) == {"torch_cnn", "torch_cnn_onnx", "conc_keras", "pls"}
    assert summary.loc["torch_cnn", "accuracy_ci_low"] <= summary.loc["torch_cnn", "accuracy"]
    assert summary.loc["conc_keras", "rmse"] >= 0 and "latency_ms_per_item" not in summary  # no measurement cached
    assert all(json.loads((project / f"data/latency/{m}.json").read_text())["ms_per_item"] > 0 for m in summary.index)
    assert len(pd.read_csv(project / "comparison/mcnemar.csv")) == 1
    assert pd.read_csv(project / "comparison/parity.csv")["model"].tolist() == ["torch_cnn_onnx"]
    metrics = json.loads((project / "data/evaluation/conc_keras.json").read_text())
    assert {"rmse", "mae", "n_items"} <= set(metrics)
    assert set(json.loads((project / "metrics/conc_keras.json").read_text())["conc_keras"]) == {"rmse"}  # headline


def test_adding_a_model_reruns_only_its_stages_and_the_comparison(project, api_run):
    before = (project / "data/preprocessed/thumb64/index.json").read_bytes()
    shutil.copy(project / "models/torch_cnn.onnx", project / "models/extra.onnx")
    run(project, "dvc", "add", "models/extra.onnx")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["models"]["extra"] = {"file": "models/extra.onnx", "adapter": "onnx", "pipeline": "thumb64",
                                 "labels": "fhi2020", "task": "classify"}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run(project, "dvc", "repro")
    # its own stages, the comparison, and the reports that tabulate every model (they rerun only on new content)
    assert stages_run(result.stdout) - {"report", "robustness_report"} == {
        "infer@extra", "evaluate", "robustness@extra", "compare",
    }
    assert "evaluated 1 of 5 models; 4 written from the store" in result.stdout  # only the new one is computed
    assert (project / "data/preprocessed/thumb64/index.json").read_bytes() == before
    assert json.loads((project / "data/predictions/extra/index.json").read_text())["stats"]["forward_passes"] == N_ITEMS
    assert "extra" in set(pd.read_csv(project / "comparison/summary.csv")["model"])


USERS_SESSION = """
import json
from evalstack.api import Dataset
from evalstack.config import ModelSpec
from my_lab.adapter import Arranged

dataset = Dataset(".")
mine = Arranged(ModelSpec(name="arranged", file="models/torch_cnn.pt2", adapter="torch", pipeline="thumb64",
                          labels=dataset.labels("fhi2020"), trust=True))
first, again = dataset.apply_model(mine), dataset.apply_model(mine)
print(json.dumps({"passes": [first.attrs["forward_passes"], again.attrs["forward_passes"]],
                  "predictions": first["prediction"].tolist()}))
"""


def test_an_edit_of_a_helper_a_users_adapter_imports_is_computed_not_served_from_the_cache(project, api_run):
    """A notebook's own adapter, outside evalstack, takes its output order from a helper module beside it.
    Edit the helper, open a new session: the predictions are the edited helper's, not the stored ones."""
    lab = project / "my_lab"
    lab.mkdir()
    (lab / "__init__.py").write_text("")
    (lab / "adapter.py").write_text(
        "from evalstack.models.adapters.torch_export import TorchAdapter\nfrom my_lab.order import arrange\n\n\n"
        "class Arranged(TorchAdapter):\n    def _forward(self, batch):\n        return arrange(super()._forward(batch))\n")
    helper = lab / "order.py"
    helper.write_text("def arrange(outputs):\n    return outputs\n")
    session = lambda: json.loads(run(project, "python", "-c", USERS_SESSION).stdout.splitlines()[-1])  # noqa: E731
    first = session()
    assert first["passes"] == [N_ITEMS, 0]  # computed once, then served by key
    helper.write_text("def arrange(outputs):\n    return outputs[:, ::-1].copy()  # the labels in reverse\n")
    edited = session()
    assert edited["passes"] == [N_ITEMS, 0]
    changed = sum(a != b for a, b in zip(first["predictions"], edited["predictions"]))
    assert changed > N_ITEMS // 2, "the edited helper's predictions, not the first session's from the cache"


def test_compare_models_refuses_two_models_under_one_name_or_one_folder(project, api_run):
    """The comparison pairs models by name, and an ad-hoc model keeps its predictions in a folder named after it:
    two under one name would both be reported with one model's predictions."""
    from dataclasses import replace

    from evalstack.api import Dataset
    from evalstack.models.adapters import load_adapter

    dataset, mine = api_run["dataset"], api_run["mine"]  # an ad-hoc model named "my_model"
    assert isinstance(dataset, Dataset)
    file = project / mine.spec.file
    spaced = load_adapter(replace(mine.spec, name="my model", file=file))  # the folder my_model too
    declared_name = load_adapter(replace(mine.spec, name="torch_cnn", file=file))
    with pytest.raises(ValueError, match="'torch_cnn' given twice"):
        dataset.compare_models(["torch_cnn", declared_name])
    with pytest.raises(ValueError, match="'my_model' given twice"):
        dataset.compare_models([mine, mine])
    with pytest.raises(ValueError, match="would both keep their predictions in data/adhoc/my_model"):
        dataset.compare_models([mine, spaced])
    assert dataset.stages_run == []  # refused before anything ran


def test_new_cards_after_an_ad_hoc_run_compute_only_the_changed_shards(project, api_run):
    """Cards added between two `apply_model` calls of an ad-hoc model: the second call gives predictions for every
    card now (was: `CacheStaleError … rebuild it with dvc repro`, which DVC cannot do for data/adhoc). Last in this
    module on purpose: the project has more cards afterwards."""
    from evalstack.api import Dataset
    from evalstack.core.layers import Layer

    dataset, mine = api_run["dataset"], api_run["mine"]
    assert isinstance(dataset, Dataset)
    shards_before = {s.sha256 for s in Layer.open(project / "data/adhoc/my_model").shards}
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["synth"]["n_cards"] = N_ITEMS + 6
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        mp.setenv("PATH", env()["PATH"])
        grown = dataset.apply_model(mine)
    assert len(grown) == N_ITEMS + 6 and grown["prediction"].notna().all()
    assert 0 < grown.attrs["forward_passes"] < N_ITEMS  # the shards that changed, not every card again
    after = Layer.open(project / "data/adhoc/my_model")
    assert [s.upstream for s in after.shards] == [s.sha256 for s in Layer.open(project / "data/preprocessed/thumb64").shards]
    assert shards_before & {s.sha256 for s in after.shards}  # the unchanged shards are the same files
