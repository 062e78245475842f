from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evalstack.preprocess.pipelines import CropResizePipeline, PipelineError, build_pipeline
from evalstack.sources.images import decode_image
from tests.conftest import png_bytes


def upstream_nn_input(path: Path) -> np.ndarray:
    """PAD nn_predict's preprocessing, written out with the upstream Pillow calls, extended to RGBA and grey.

    nn_predict itself reshapes to (454, 454, 3) and so reads RGB cards only; tests/test_pad_analytics.py
    compares pad_nn with nn_predict's own input tensor on RGB cards.
    """
    img = Image.open(path)
    img = img.crop((71, 359, 707, 849))
    img = img.resize((454, 454), Image.BICUBIC)
    array = np.asarray(img, dtype=np.float32)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return array[..., :3]


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_pad_nn_equals_upstream_reference(tmp_path: Path, mode: str):
    path = tmp_path / f"card_{mode}.png"
    path.write_bytes(png_bytes(mode=mode, seed=3))
    pipeline = build_pipeline({"kind": "crop_resize", "crop": [71, 359, 707, 849], "resize": 454, "resample": "bicubic"})
    ours = pipeline.process_image(decode_image(path.read_bytes()))
    assert ours.shape == (454, 454, 3) and ours.dtype == np.uint8
    # Stored as uint8 because it is exact: read back as float32 it equals upstream bit for bit.
    np.testing.assert_array_equal(ours.astype(np.float32), upstream_nn_input(path))


def test_cache_key_depends_on_params_but_not_on_entry_order():
    a = build_pipeline({"kind": "crop_resize", "resize": 64, "resample": "bilinear"})
    b = build_pipeline({"resample": "bilinear", "resize": 64, "kind": "crop_resize"})
    c = build_pipeline({"kind": "crop_resize", "resize": 96, "resample": "bilinear"})
    assert a.cache_key().hex == b.cache_key().hex != c.cache_key().hex
    assert a.cache_key().parts["params"]["resize"] == 64


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"kind": "nope"}, "pipeline kind 'nope' unknown"),
        ({"kind": "crop_resize", "resample": "cubic"}, "resample 'cubic' unknown"),
        ({"kind": "crop_resize", "crop": [10, 10, 5, 20]}, "is empty"),
        ({"kind": "crop_resize", "sise": 3}, "unexpected keyword"),
    ],
)
def test_bad_pipeline_params_are_clear_errors(spec, message):
    with pytest.raises(PipelineError, match=message):
        build_pipeline(spec)


def test_small_pipeline_output_shape():
    pipeline = CropResizePipeline(resize=64, resample="bilinear")
    out = pipeline.process_image(decode_image(png_bytes()))
    assert out.shape == pipeline.output_shape() == (64, 64, 3)


def test_a_pipeline_field_left_out_of_its_parameters_is_refused_not_left_out_of_the_key(tmp_path: Path, monkeypatch):
    """Your own pipeline with a setting that parameters() forgets: its output changes, its key would not, and a
    layer computed under one value would be reused for another. Refused by name; a field marked as changing
    nothing is accepted."""
    import importlib
    import sys

    (tmp_path / "gamma_pipelines.py").write_text(
        "from dataclasses import InitVar, dataclass, field\n"
        "from evalstack.preprocess.pipelines import CropResizePipeline\n\n\n"
        "@dataclass(frozen=True)\nclass Gamma(CropResizePipeline):\n    gamma: float = 1.0\n\n\n"
        "@dataclass(frozen=True)\nclass Boost(CropResizePipeline):  # set from params.yaml, used in __post_init__\n"
        "    boost: InitVar[float] = 1.0\n\n"
        "    def __post_init__(self, boost):\n        super().__post_init__()\n\n\n"
        "@dataclass(frozen=True)\nclass Quiet(CropResizePipeline):\n"
        "    verbose: bool = field(default=False, metadata={'outside_key': True})\n"
        "    table: tuple = field(default=(), init=False)  # derived, not a setting\n"
        "    side: int = field(default=0, metadata={'key': 'shape'})\n\n"
        "    def parameters(self):\n        return {**super().parameters(), 'shape': [self.side, self.side]}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "gamma_pipelines", raising=False)
    module = importlib.import_module("gamma_pipelines")
    with pytest.raises(PipelineError, match=r"Gamma.parameters\(\) leaves out gamma"):
        module.Gamma(gamma=2.2).cache_key()
    with pytest.raises(PipelineError, match=r"Boost.parameters\(\) leaves out boost"):
        module.Boost(boost=2.0).cache_key()
    assert module.Quiet(verbose=True, side=3).cache_key().parts["params"] == {
        **CropResizePipeline().parameters(), "shape": [3, 3]}
