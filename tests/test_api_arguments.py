"""What the notebook API refuses before it runs anything."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from evalstack.api import Dataset
from tests.e2e import REPO


def test_a_batch_size_for_a_declared_model_other_than_infer_batch_size_is_refused(tmp_path: Path):
    """`dvc repro` infers a declared model at infer.batch_size, which is in its predictions key; another
    batch_size given to apply_model was dropped without a word, and the layer of the declared size returned
    (found by a hunt)."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    dataset = Dataset(tmp_path)
    declared = dataset.params["infer"]["batch_size"]
    with pytest.raises(ValueError, match=rf"batch_size={declared + 1}\): a declared model is inferred by `dvc repro` "
                                         rf"at infer.batch_size \({declared}\)"):
        dataset.apply_model("tflite_cnn", batch_size=declared + 1)
    assert dataset.stages_run == []


def test_a_params_file_other_than_the_one_the_stages_read_is_refused(tmp_path: Path):
    """The API ran `dvc repro`, whose stages read params.yaml, and checked and keyed the results with the file it
    was given: an answer computed under params.yaml came back as another file's, exit 0 (found by a hunt)."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copy(REPO / "params.yaml", tmp_path / "params_alt.yaml")
    with pytest.raises(ValueError, match=r"params_file='params_alt.yaml'\): the stages this API runs read"):
        Dataset(tmp_path, params_file="params_alt.yaml")
    assert Dataset(tmp_path, params_file="./params.yaml").params == Dataset(tmp_path).params


@pytest.mark.parametrize("size", [0, -1, True, 2.5, "8"])
def test_a_batch_size_that_is_not_a_positive_integer_is_refused_before_anything_runs(tmp_path: Path, size):
    """`batch_size or infer.batch_size` took 0 for the default (the layer's key said 32), and -1 yielded no batch
    at all from preprocessed_batches, exit 0 (found by a hunt)."""
    from tests.layers import numpy_model

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    dataset = Dataset(tmp_path)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        dataset.apply_model(numpy_model(tmp_path / "models"), batch_size=size)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        next(dataset.preprocessed_batches("thumb64", batch_size=size))
    assert dataset.stages_run == []


def test_any_integer_type_is_a_batch_size():
    import numpy as np

    from evalstack.api import _check_batch_size

    for size in (np.int64(8), np.int32(1), 8):  # a loop over np.arange gives numpy's integers
        _check_batch_size(size)


def test_two_adapter_classes_of_one_module_have_their_own_keys(tmp_path: Path, monkeypatch):
    """A key's code part is a module's import closure, the same for two classes defined in one module: the
    first class's predictions were served for the second's, in either order (found by a hunt)."""
    import importlib
    import sys

    from evalstack.models.inference import inference_code
    from evalstack.models.predictions import predictions_key
    from evalstack.preprocess.pipelines import CropResizePipeline

    (tmp_path / "two_adapters.py").write_text(
        "from tests.layers import NumpyAdapter\n\n\nclass Plain(NumpyAdapter):\n    pass\n\n\n"
        "class Flipped(NumpyAdapter):\n    def _forward(self, batch):\n        return super()._forward(batch[:, :, ::-1])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("two_adapters")
    try:
        from tests.layers import numpy_model

        spec = numpy_model(tmp_path / "models").spec
        pipeline_key = CropResizePipeline(crop=(0, 0, 40, 30), resize=8, resample="bilinear").cache_key()
        keys = {predictions_key(adapter.signature(), pipeline_key, inference_code(type(adapter)), 32).hex
                for adapter in (module.Plain(spec), module.Flipped(spec))}
        assert len(keys) == 2
    finally:
        sys.modules.pop("two_adapters", None)


def test_a_method_replaced_after_the_class_was_defined_is_refused(tmp_path: Path, monkeypatch):
    """A function set on an adapter class (or object) in a notebook is code no key names: the class's own results
    were served for it from the store, and its results reached `dvc repro`'s layer (found by a hunt)."""
    import functools
    import types

    from evalstack.models.inference import inference_code
    from tests.layers import NumpyAdapter, numpy_model

    adapter = numpy_model(tmp_path / "models")
    adapter.signature()  # as defined: accepted

    def flipped(self, batch):
        return batch[:, :1]

    with monkeypatch.context() as patched:
        patched.setattr(NumpyAdapter, "_forward", flipped)
        # a function from a module the class's module does not import (this test's) is refused as well
        refused = "NumpyAdapter._forward is a function from module tests.test_api_arguments, set on class"
        with pytest.raises(ValueError, match=refused):
            inference_code(NumpyAdapter)
        with pytest.raises(ValueError, match=refused):
            adapter.signature()
    adapter._forward = types.MethodType(flipped, adapter)  # on the object only
    with pytest.raises(ValueError, match="NumpyAdapter object's _forward is a function from module tests.test_api"):
        adapter.signature()
    adapter._forward = functools.partial(flipped, adapter)
    with pytest.raises(ValueError, match="NumpyAdapter object's _forward is a function from module tests.test_api"):
        adapter.signature()
    del adapter._forward

    # functools.wraps copies the wrapped method's __module__ onto the wrapper: the wrapper's own code is still seen
    # (a review found this idiom passing)
    @functools.wraps(NumpyAdapter._forward)
    def augmented(self, batch):
        return batch * 2
    with monkeypatch.context() as patched:
        patched.setattr(NumpyAdapter, "_forward", augmented)
        with pytest.raises(ValueError, match="NumpyAdapter._forward is a function from module tests.test_api_arguments"):
            inference_code(NumpyAdapter)
    adapter.signature()  # as defined again: accepted


@pytest.mark.slow
def test_force_refresh_brings_what_fetch_reads_up_to_date_first(tmp_path: Path, monkeypatch):
    """force_refresh forced fetch alone: after an edit upstream of it (synth.n_cards here; your stage that writes a
    registry), it fetched what was there before, older data than a plain call returns (found by a hunt)."""
    import time

    import yaml

    from tests.e2e import build_record, env, make_project, set_param

    project = make_project(tmp_path / "project", {"synth": {"n_cards": 12}})
    for name in ("PATH", "PYTHONPATH"):  # DVC runs the stages from this process: the project's python and code
        monkeypatch.setenv(name, env(project)[name])
    monkeypatch.chdir(project)  # as a notebook in the project runs
    pipeline = yaml.safe_load((project / "dvc.yaml").read_text())
    pipeline["stages"] = {name: pipeline["stages"][name] for name in ("synth", "fetch")}
    (project / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    dataset = Dataset(project)
    assert len(dataset.download_and_cache()) == 12
    set_param(project, "synth.n_cards", 16)
    assert len(dataset.download_and_cache(force_refresh=True)) == 16
    assert dataset.stages_run == ["synth", "fetch"]
    # Params back to a combination fetch ran with: a plain call restores it from DVC's run-cache, and so did
    # force_refresh after its first fix (the old copy of a source that changed with no dep changing, a server's:
    # found by a review). Forced, fetch runs: the store records a build of the raw layer.
    set_param(project, "fetch.shrink_warning", 0.3)
    dataset.download_and_cache()
    set_param(project, "fetch.shrink_warning", 0.2)
    built = build_record(project, "data/raw")["finished_at"]
    time.sleep(1.1)  # finished_at has one-second resolution
    assert len(dataset.download_and_cache(force_refresh=True)) == 16 and dataset.stages_run == ["fetch"]
    assert build_record(project, "data/raw")["finished_at"] > built
