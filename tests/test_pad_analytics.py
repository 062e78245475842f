"""`pad_regions` and `pad_nn` against pad-analytics 0.2.2 itself (the test extra installs it), on card PNG files.

Upstream reads the files its own way (`cv.imread` for the PLS features, Pillow behind `read_img` for
`nn_predict`); ours go through `decode_image` and the pipelines as the preprocess stage runs them.
"""
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from evalstack.preprocess.pipelines import build_pipeline
from evalstack.preprocess.regions import feature_names
from evalstack.sources.images import decode_image

pytestmark = pytest.mark.slow  # upstream's per-pixel Python loop: ~1 s per card

UPSTREAM_VERSION = "0.2.2"
PAD_NN = {"kind": "crop_resize", "crop": [71, 359, 707, 849], "resize": 454, "resample": "bicubic"}


@pytest.fixture(scope="module")
def pad_analytics():
    """pad_analytics.padanalytics, imported without leaving its global side effects behind.

    Its module imports ipywidgets and IPython.display for notebook widgets that neither
    fullRoutine nor nn_predict touches; where they are not installed, empty stand-ins
    let the import through (the test extra does not pull in Jupyter). On import it also
    sets Pillow's LOAD_TRUNCATED_IMAGES and adds warning filters: both are undone, so
    other tests still see truncated PNGs fail.
    """
    from importlib.metadata import PackageNotFoundError, version
    from importlib.util import find_spec

    try:
        installed = version("pad-analytics")
    except PackageNotFoundError:
        installed = "not installed"
    if installed != UPSTREAM_VERSION:  # a failure, not a skip: these tests are the proof of equality
        pytest.fail(f"pad-analytics is {installed}; these tests compare with {UPSTREAM_VERSION}: "
                    f"pip install --no-deps pad-analytics=={UPSTREAM_VERSION} (make install does)")
    stand_ins = {}
    if find_spec("ipywidgets") is None:
        stand_ins["ipywidgets"] = types.ModuleType("ipywidgets")
    if find_spec("IPython") is None:
        display = types.ModuleType("IPython.display")
        display.display, display.HTML = print, str
        stand_ins |= {"IPython": types.ModuleType("IPython"), "IPython.display": display}
    truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    sys.modules.update(stand_ins)
    try:
        with warnings.catch_warnings():
            import pad_analytics.padanalytics as module
    finally:
        for name in stand_ins:
            del sys.modules[name]
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated
    return module


@pytest.fixture(scope="module")
def card_files(pad_dataset_master: Path, tmp_path_factory) -> list[Path]:
    """The 20 generated cards, plus a noise card with dark grey boxes (every pixel dark: feature 0) and light
    grey ones (S = 0 but V high: kept, feature 200)."""
    cards = sorted((pad_dataset_master / "images").glob("*.png"))
    assert len(cards) == 20
    rng = np.random.default_rng(5)
    card = rng.integers(0, 256, size=(1220, 730, 3), dtype=np.uint8)
    card[359:500, 82:400] = 30
    card[500:632, 400:694] = 200
    edge = tmp_path_factory.mktemp("edge") / "edge.png"
    Image.fromarray(card).save(edge)
    return [*cards, edge]


def upstream_features(pad_analytics, path: Path) -> np.ndarray:
    """pad-analytics' PLS input: fullRoutine on the BGR card cv.imread gives, as its `pls.quantity` calls it."""
    img = pad_analytics.cv.imread(str(path))
    routine = pad_analytics.regionRoutine
    features = routine.fullRoutine(img, routine.intFind.findMaxIntensitiesFiltered, {}, True, 10)
    assert list(features) == feature_names()
    return np.asarray(list(features.values()), dtype=np.float32)


def test_pad_regions_equals_pad_analytics(pad_analytics, card_files):
    pipeline = build_pipeline({"kind": "pad_regions", "regions": 10})
    ours = np.stack([pipeline.process_image(decode_image(path.read_bytes())) for path in card_files])
    upstream = np.stack([upstream_features(pad_analytics, path) for path in card_files])
    np.testing.assert_array_equal(ours, upstream)  # integers 0–255 on both sides: no tolerance
    assert (upstream[-1] == 0).any() and (upstream[-1] == 200).any()  # the empty and the grey boxes


@pytest.mark.parametrize("mode", ["RGBA", "L"])
def test_pad_regions_reads_other_modes_as_cv_imread_does(pad_analytics, card_files, tmp_path, mode):
    """cv.imread drops alpha and copies grey to B, G, R; pad_regions does the same."""
    path = tmp_path / f"card_{mode}.png"
    Image.open(card_files[0]).convert(mode).save(path)
    ours = build_pipeline({"kind": "pad_regions"}).process_image(decode_image(path.read_bytes()))
    np.testing.assert_array_equal(ours, upstream_features(pad_analytics, path))


class _TinyModel:
    """A parameter-free TFLite network for nn_predict to run: logits = mean R, G, B of its input."""

    labels = ["red", "green", "blue"]

    @staticmethod
    def write(path: Path) -> Path:
        import tensorflow as tf

        @tf.function(input_signature=[tf.TensorSpec((1, 454, 454, 3), tf.float32)])
        def channel_means(images):
            return tf.reduce_mean(images, axis=(1, 2))

        converter = tf.lite.TFLiteConverter.from_concrete_functions([channel_means.get_concrete_function()],
                                                                   channel_means)
        path.write_bytes(converter.convert())
        return path


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")  # upstream's choice
def test_pad_nn_equals_nn_predict_input(pad_analytics, card_files, tmp_path, monkeypatch):
    """The tensor nn_predict hands its interpreter, caught at set_tensor, equals pad_nn's output.

    nn_predict fetches the card with requests.get and builds a tf.lite.Interpreter from a
    model path; the test serves the PNG's bytes for the URL, gives it a tiny model of its
    own and records the input, so upstream's own crop → BICUBIC resize → float32 code runs
    unchanged. Upstream reshapes to (1, 454, 454, 3), so it is defined for RGB cards only
    (RGBA or grey fail there); our handling of other modes is in tests/test_pipelines.py.
    """
    model = _TinyModel.write(tmp_path / "means.tflite")
    inputs: list[np.ndarray] = []

    class RecordingInterpreter(pad_analytics.tf.lite.Interpreter):
        def set_tensor(self, index, value):
            inputs.append(np.array(value, copy=True))
            super().set_tensor(index, value)

    def serve(url, *args, **kwargs):
        response = types.SimpleNamespace(content=Path(url).read_bytes())
        response.raise_for_status = lambda: None
        return response

    monkeypatch.setattr(pad_analytics.requests, "get", serve)
    monkeypatch.setattr(pad_analytics.tf.lite, "Interpreter", RecordingInterpreter)
    pipeline = build_pipeline(PAD_NN)
    cards = [path for path in card_files if Image.open(path).mode == "RGB"]
    assert len(cards) >= 20
    for path in cards:
        label, _, _ = pad_analytics.nn_predict(str(path), str(model), _TinyModel.labels)
        ours = pipeline.process_image(decode_image(path.read_bytes())).astype(np.float32)
        upstream = inputs.pop()
        assert upstream.dtype == np.float32 and upstream.shape == (1, 454, 454, 3)
        np.testing.assert_array_equal(ours, upstream[0])
        assert label == _TinyModel.labels[int(np.argmax(ours.mean(axis=(0, 1))))]
