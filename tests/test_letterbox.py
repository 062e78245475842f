from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evalstack.core.layers import Layer, read_column
from evalstack.preprocess.letterbox import LetterboxPipeline, build_letterbox, letterbox_layer, placements
from evalstack.preprocess.pipelines import PipelineError
from evalstack.sources.coco import CocoFetchConfig, fetch_coco_layer
from tests.coco_fixture import write_coco


@pytest.mark.parametrize("width, height", [(200, 100), (90, 160), (128, 128), (257, 131)])
def test_boxes_map_forward_and_back_exactly(width, height):
    place = LetterboxPipeline(resize=128).placement(width, height)
    boxes = np.asarray([[0.0, 0.0, width, height], [10.5, 3.0, 20.0, 7.25]])
    forward = place.to_input(boxes)
    xyxy = np.concatenate([forward[:, :2], forward[:, :2] + forward[:, 2:]], axis=1)
    back = place.to_original(xyxy)
    np.testing.assert_allclose(back[:, 2:] - back[:, :2], boxes[:, 2:], atol=1e-9)
    np.testing.assert_allclose(back[:, :2], boxes[:, :2], atol=1e-9)
    # The whole image fills the input along its long side and sits centred along the short one.
    assert max(forward[0, 2], forward[0, 3]) == pytest.approx(128)
    assert forward[0, 0] == place.pad_x and forward[0, 1] == place.pad_y


def test_image_lands_where_its_placement_says():
    image = Image.new("RGB", (200, 100), (250, 10, 10))
    pipeline = LetterboxPipeline(resize=64, fill=114)
    out = pipeline.process_image(image)
    place = pipeline.placement(200, 100)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert (place.pad_x, place.pad_y) == (0, 16)
    assert (out[:16] == 114).all() and (out[48:] == 114).all()
    assert (out[16:48, :, 0] == 250).all()


def test_boxes_outside_the_image_are_clipped_on_the_way_back():
    place = LetterboxPipeline(resize=64).placement(200, 100)
    back = place.to_original(np.asarray([[-5.0, 0.0, 70.0, 10.0]]))
    np.testing.assert_allclose(back, [[0.0, 0.0, 200.0, 0.0]])


def test_letterbox_layer_keeps_order_ids_and_placements(tmp_path: Path):
    split = write_coco(tmp_path / "src")
    fetch_coco_layer(CocoFetchConfig({"val": split}, shard_size=2), tmp_path / "raw")
    pipeline = LetterboxPipeline(resize=32)
    index = letterbox_layer(tmp_path / "raw", tmp_path / "pre", pipeline).index
    layer = Layer.open(tmp_path / "pre")
    assert index.n_items == 3 and layer.key == pipeline.cache_key()
    assert list(layer.column("id")) == [1, 2, 3]
    raw = Layer.open(tmp_path / "raw")
    assert [s.upstream for s in layer.shards] == [s.sha256 for s in raw.shards]
    with layer.open_shard(layer.shards[0]) as handle:
        columns = {name: read_column(handle, name) for name in ("width", "height", "scale_x", "scale_y", "pad_x", "pad_y")}
        assert handle["x"].shape == (2, 32, 32, 3)
    assert placements(columns)[0] == pipeline.placement(64, 48)


def test_bad_letterbox_params_are_refused():
    with pytest.raises(PipelineError, match="resample"):
        build_letterbox({"kind": "letterbox", "resample": "cubic-ish"})
    with pytest.raises(PipelineError, match="letterbox pipelines"):
        build_letterbox({"kind": "crop_resize"})
    with pytest.raises(PipelineError, match="unexpected keyword"):
        build_letterbox({"kind": "letterbox", "sise": 3})
