"""The `yolo` adapter: raw [B, 4+C, A] and end-to-end [B, N, 6] outputs, torch and ONNX files, Ultralytics'
letterbox, boxes mapped back to the original image, and the frozen NMS of an end-to-end model."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageDraw
from torch import nn

from evalstack.config import ModelError, ModelSpec
from evalstack.core.keys import Key
from evalstack.demo.cards import encode_png
from evalstack.demo.training.torch_program import save_program
from evalstack.demo.yolo_layout import export_yolo_layout
from evalstack.detection.adapter import load_detector
from evalstack.detection.candidates import infer_candidates_layer
from evalstack.detection.decoding import PostProcess
from evalstack.detection.layer import open_detections, read_table
from evalstack.detection.postprocess import postprocess_layer
from evalstack.detection.styles import nms_then_cap_rows
from evalstack.detection.yolo_adapter import yolo_layout
from evalstack.preprocess.letterbox import LetterboxPipeline, letterbox_layer
from evalstack.preprocess.pipelines import PipelineError
from evalstack.sources.coco import CocoFetchConfig, fetch_coco_layer
from tests.coco_fixture import write_coco
from tests.detection_helpers import assert_same_candidates, coco_project
from tests.weights_check import assert_runs_the_bytes_it_hashed

LABELS = ("circle", "square", "triangle")
SIZE = 64  # strides 8, 16, 32: 8×8 + 4×4 + 2×2 = 84 anchors


def yolo_spec(file: Path, labels: tuple[str, ...] = LABELS, **options) -> ModelSpec:
    return ModelSpec(name="yolo", file=file, adapter="yolo", pipeline="lb", labels=labels, task="detect",
                     options={"confidence_threshold": 0.25, "max_detections": 50, **options},
                     trust=True)  # the tests export them themselves


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """TinyYolo (random weights, seed 0) raw and end-to-end, each as .pt2 and its ONNX export."""
    root = tmp_path_factory.mktemp("yolo")
    raw = export_yolo_layout(root / "raw.pt2", len(LABELS), SIZE, seed=0)
    e2e = export_yolo_layout(root / "e2e.pt2", len(LABELS), SIZE, seed=0, end2end_rows=20)
    return {"raw": raw, "raw_onnx": raw.with_suffix(".onnx"), "e2e": e2e, "e2e_onnx": e2e.with_suffix(".onnx")}


def _images(n: int = 3, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(n, size, size, 3)).astype(np.float32)


BOUND = {"min_score": 0.2, "top_k": 60}


@pytest.mark.parametrize("layout", ["raw", "e2e"])
def test_a_torch_file_and_its_onnx_export_give_the_same_candidates(models, layout):
    frozen = {"nms_iou": 1.0} if layout == "e2e" else {}
    torch_model = load_detector(yolo_spec(models[layout], candidates=BOUND, **frozen))
    onnx_model = load_detector(yolo_spec(models[f"{layout}_onnx"], candidates=BOUND, **frozen))
    assert torch_model.output == onnx_model.output == ("raw" if layout == "raw" else "end2end")
    assert torch_model.contract()["framework"] == "torch" and onnx_model.contract()["framework"] == "onnx"
    batch = _images()
    ours, theirs = torch_model.candidates_batch(batch), onnx_model.candidates_batch(batch)
    assert torch_model.forward_passes == onnx_model.forward_passes == 3  # the load-time probe is not counted
    for a, b in zip(ours, theirs):
        assert len(a) > 0
        assert_same_candidates(a, b, atol=1e-4)
        assert (np.diff(a.scores) <= 0).all() and (a.scores >= BOUND["min_score"]).all()
    assert max(len(found) for found in ours) <= BOUND["top_k"]


@pytest.mark.parametrize("file", ["raw", "raw_onnx"])
def test_the_detector_runs_the_bytes_its_signature_hashed(models, file, tmp_path, monkeypatch):
    batch = _images(2)
    assert_runs_the_bytes_it_hashed(yolo_spec(models[file], candidates=BOUND), load_detector,
                                    lambda model: [column for found in model.candidates_batch(batch)
                                                   for column in (found.boxes, found.labels, found.scores)],
                                    bytes(range(256)) * 16, monkeypatch, tmp_path)


def test_raw_candidates_are_the_anchors_best_class_decoded_as_ultralytics_does(models):
    """Against the module's own tensor: one class per anchor (its max), xywh → xyxy in float32, best first."""
    adapter = load_detector(yolo_spec(models["raw"], candidates={"min_score": 0.0, "top_k": 100}))
    batch = _images(1)
    found = adapter.candidates_batch(batch)[0]
    out = _run_program(models["raw"], batch)[0]  # (4 + C, A)
    assert out.shape == (4 + len(LABELS), 84) and len(found) == 84  # every anchor reaches a floor of 0
    conf, label = out[4:].max(0)
    order = torch.sort(conf, descending=True, stable=True).indices
    xywh = out[:4].T[order]
    xyxy = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], dim=1)
    np.testing.assert_array_equal(found.boxes, xyxy.numpy().astype(np.float64))
    np.testing.assert_array_equal(found.scores, conf[order].numpy().astype(np.float64))
    assert found.labels.tolist() == label[order].tolist()


def _run_program(file: Path, batch: np.ndarray) -> torch.Tensor:
    """The exported module's own output for letterboxed pixels (N, H, W, 3), fed as Ultralytics does."""
    with torch.inference_mode():
        return torch.export.load(str(file)).module()(torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous() / 255)


def _ultralytics_nms(out: torch.Tensor, conf: float, iou: float, max_det: int, max_nms: int) -> tuple[np.ndarray, ...]:
    """Ultralytics' `non_max_suppression` for one image (multi_label=False): best class per anchor above conf,
    the best max_nms of them, class-wise NMS (batched_nms for its class-offset trick), the first max_det."""
    scores, labels = out[4:].max(0)
    keep = torch.nonzero(scores > conf).flatten()
    keep = keep[torch.sort(scores[keep], descending=True, stable=True).indices[:max_nms]]
    xywh = out[:4].T[keep]
    boxes = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], dim=1)
    kept = torchvision.ops.batched_nms(boxes, scores[keep], labels[keep], iou)[:max_det]
    return boxes[kept].numpy(), scores[keep][kept].numpy(), labels[keep][kept].numpy()


@pytest.mark.parametrize("conf, iou, max_det", [(0.25, 0.7, 30), (0.4, 0.5, 10), (0.3, 0.3, 50)])
def test_nms_of_the_cached_candidates_equals_batched_nms_on_the_raw_output(models, conf, iou, max_det):
    """Candidates floored at 0.2 and bounded at top_k 60, then threshold → class-wise NMS → cap: what
    Ultralytics' NMS gives straight from the raw tensor with max_nms = 60 (the stored bound plays its part).
    The post-processing is the adapter's own style (nms_then_cap_rows, what postprocess_layer runs)."""
    adapter = load_detector(yolo_spec(models["raw"], candidates=BOUND))
    style = adapter.postprocess_style(None)
    batch = _images()
    for found, out in zip(adapter.candidates_batch(batch), _run_program(models["raw"], batch)):
        kept = nms_then_cap_rows(found, PostProcess(conf, iou, max_det), style)
        ref_boxes, ref_scores, ref_labels = _ultralytics_nms(out, conf, iou, max_det, BOUND["top_k"])
        assert 0 < len(kept) and len(kept) == len(ref_boxes)
        np.testing.assert_array_equal(found.boxes[kept], ref_boxes.astype(np.float64))
        np.testing.assert_array_equal(found.scores[kept], ref_scores.astype(np.float64))
        assert found.labels[kept].tolist() == ref_labels.tolist()


class Rows(nn.Module):
    """An end-to-end head that always answers the same rows (x1, y1, x2, y2, score, class)."""

    def __init__(self, rows: list[list[float]]):
        super().__init__()
        self.register_buffer("rows", torch.tensor(rows, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rows.expand(x.shape[0], -1, -1) + 0 * x.mean()


def _export(module: nn.Module, path: Path, size: int) -> Path:
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(module.eval(), (torch.zeros(2, 3, size, size),), dynamic_shapes=({0: batch},))
    save_program(program, path)
    return path


E2E_ROWS = [[2, 2, 20, 20, 0.9, 0], [3, 3, 21, 21, 0.8, 0], [10, 10, 30, 30, 0.7, 1], [0, 0, 0, 0, 0.0, 0]]


def test_an_end_to_end_output_is_read_without_nms_and_its_nms_is_frozen(tmp_path: Path):
    file = _export(Rows(E2E_ROWS), tmp_path / "e2e.pt2", 32)
    adapter = load_detector(yolo_spec(file, LABELS[:2], nms_iou=1.0, candidates={"min_score": 0.01, "top_k": 100}))
    assert adapter.output == "end2end" and adapter.postprocess_style(None).style == "frozen"
    found = adapter.candidates_batch(np.zeros((2, 32, 32, 3), np.float32))[0]
    # The two class-0 boxes overlap at IoU 0.81: both are kept (the model's rows, not ours to suppress);
    # the padding row (score 0) is under the floor.
    np.testing.assert_array_equal(found.boxes, np.asarray(E2E_ROWS, np.float64)[:3, :4])
    assert found.labels.tolist() == [0, 0, 1] and found.scores.tolist() == pytest.approx([0.9, 0.8, 0.7])
    with pytest.raises(ModelError, match=r"its post-processing is frozen \(its output is end-to-end.*nms_iou 0.5"):
        load_detector(yolo_spec(file, LABELS[:2], nms_iou=0.5))
    with pytest.raises(ModelError, match="class values"):
        load_detector(yolo_spec(_export(Rows([[0, 0, 9, 9, 0.9, 2.5]]), tmp_path / "bad.pt2", 32), LABELS[:2],
                                nms_iou=1.0)).candidates_batch(np.zeros((1, 32, 32, 3), np.float32))


def test_post_processing_an_end_to_end_layer_filters_and_caps_its_rows_and_refuses_an_nms_change(tmp_path: Path):
    """Ultralytics reads end-to-end output as pred[pred[:, 4] > conf][:max_det]; from the cache, the same rows."""
    root = coco_project(tmp_path)  # letterboxed to 32 px
    file = _export(Rows(E2E_ROWS), tmp_path / "e2e.pt2", 32)
    adapter = load_detector(yolo_spec(file, ("circle", "square"), nms_iou=1.0))
    infer_candidates_layer(root / "pre", root / "cand", adapter, ["val"], batch_size=2)
    for conf, max_det, expected in [(0.05, 100, [0.9, 0.8, 0.7]), (0.75, 100, [0.9, 0.8]), (0.05, 2, [0.9, 0.8])]:
        postprocess_layer(root / "cand", root / "det", PostProcess(conf, 1.0, max_det))
        table = read_table(open_detections(root / "det"))
        per_image = np.split(table.scores, table.offsets[1:])
        assert [s.tolist() for s in per_image[:2]] == [pytest.approx(expected)] * 2  # images 1 and 2 keep all rows
    with pytest.raises(ModelError, match=r"its post-processing is frozen \(its output is end-to-end"):
        postprocess_layer(root / "cand", root / "det2", PostProcess(0.05, 0.5, 100))


def test_the_layout_comes_from_the_shape_and_a_mismatch_names_the_contract():
    assert yolo_layout((2, 7, 84), 3, None, "m") == "raw" and yolo_layout((2, 300, 6), 3, None, "m") == "end2end"
    with pytest.raises(ModelError, match=r"shape \(2, 85, 8400\) is not a YOLO layout; expected raw \(B, 7, A\)"):
        yolo_layout((2, 85, 8400), 3, None, "m")  # a YOLOv5 export (objectness): another contract
    with pytest.raises(ModelError, match="fits both YOLO layouts; say which with `output: raw`"):
        yolo_layout((1, 6, 6), 2, None, "m")
    assert yolo_layout((1, 6, 6), 2, "end2end", "m") == "end2end"
    with pytest.raises(ModelError, match="output: end2end declared, but shape"):
        yolo_layout((2, 7, 84), 3, "end2end", "m")


def test_a_label_count_that_does_not_fit_the_output_is_refused(models):
    with pytest.raises(ModelError, match=r"expected raw \(B, 6, A\) for 2 labels"):
        load_detector(yolo_spec(models["raw_onnx"], LABELS[:2]))


# --- Ultralytics' letterbox -------------------------------------------------------------------------------------


def _ultralytics_letterbox(pixels: np.ndarray, new: int) -> np.ndarray:
    """Ultralytics' LetterBox (auto=False, scaleup=True, center=True), transcribed: cv2.resize INTER_LINEAR,
    then cv2.copyMakeBorder with its rounding of the two halves of the padding."""
    import cv2

    h, w = pixels.shape[:2]
    r = min(new / h, new / w)
    new_unpad = int(round(w * r)), int(round(h * r))
    dw, dh = (new - new_unpad[0]) / 2, (new - new_unpad[1]) / 2
    if (w, h) != new_unpad:
        pixels = cv2.resize(pixels, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    return cv2.copyMakeBorder(pixels, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))


@pytest.mark.parametrize("width, height", [(200, 120), (120, 200), (257, 131), (64, 64), (50, 90)])
def test_the_opencv_letterbox_is_ultralytics_pixel_for_pixel(width, height):
    pixels = np.random.default_rng(width).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    pipeline = LetterboxPipeline(resize=128, resample="opencv_linear", stride=32)
    np.testing.assert_array_equal(pipeline.process_image(Image.fromarray(pixels)), _ultralytics_letterbox(pixels, 128))


def test_stride_is_checked_and_is_not_part_of_the_key():
    with pytest.raises(PipelineError, match="resize 100 is not a multiple of stride 32.*use resize 96"):
        LetterboxPipeline(resize=100, stride=32)
    assert LetterboxPipeline(resize=128, stride=32).cache_key() == LetterboxPipeline(resize=128).cache_key()
    assert LetterboxPipeline(resample="opencv_linear").cache_key() != LetterboxPipeline().cache_key()


class RedBox(nn.Module):
    """Finds the pure-red rectangle in its input and answers its box in raw layout (1 anchor, 1 class)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = (x[:, 0] > 0.75) & (x[:, 1] < 0.25) & (x[:, 2] < 0.25)  # (B, H, W)
        cols, rows = mask.any(dim=1).float(), mask.any(dim=2).float()
        x1, x2 = cols.argmax(dim=1).float(), x.shape[3] - cols.flip(1).argmax(dim=1).float()
        y1, y2 = rows.argmax(dim=1).float(), x.shape[2] - rows.flip(1).argmax(dim=1).float()
        out = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, torch.full_like(x1, 0.9)], dim=1)
        return out.unsqueeze(2)  # (B, 5, 1)


# (width, height) → a rectangle drawn at even pixels (xywh): at scale 0.5 its edges stay sharp
DRAWN = {(256, 170): [40, 30, 160, 120], (170, 256): [30, 50, 110, 160]}


def test_boxes_on_non_square_letterboxed_images_map_back_to_the_drawn_pixels(tmp_path: Path):
    """Through the real layers: raw → letterbox (padding 43 px: 21 before, 22 after) → yolo → postprocess."""
    images = [{"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h} for i, (w, h) in enumerate(DRAWN)]
    doc = {"images": images,
           "annotations": [], "categories": [{"id": 1, "name": "red", "supercategory": "shape"}]}
    split = write_coco(tmp_path / "src", doc)
    for i, ((width, height), (x, y, w, h)) in enumerate(DRAWN.items()):
        image = Image.new("RGB", (width, height), (0, 0, 200))
        ImageDraw.Draw(image).rectangle([x, y, x + w - 1, y + h - 1], fill=(255, 0, 0))
        (Path(split.images) / f"{i}.png").write_bytes(encode_png(np.asarray(image)))
    fetch_coco_layer(CocoFetchConfig({"val": split}, shard_size=2), tmp_path / "raw")
    pipeline = LetterboxPipeline(resize=128, resample="opencv_linear", stride=32)
    letterbox_layer(tmp_path / "raw", tmp_path / "pre", pipeline)
    assert [pipeline.placement(*size) for size in DRAWN][0].pad_y == 21  # 128 - 85 = 43 rows of padding
    adapter = load_detector(yolo_spec(_export(RedBox(), tmp_path / "red.pt2", 128), ("red",)))
    infer_candidates_layer(tmp_path / "pre", tmp_path / "cand", adapter, ["val"])
    postprocess_layer(tmp_path / "cand", tmp_path / "det", adapter.postprocess)
    table = read_table(open_detections(tmp_path / "det"))
    assert table.ids.tolist() == [1, 2]
    np.testing.assert_array_equal(table.bboxes, np.asarray(list(DRAWN.values()), np.float32))


@pytest.mark.parametrize("file", ["raw", "raw_onnx"])
def test_a_post_processing_change_leaves_the_detectors_signature_as_it_is(models, file):
    """Post-processing runs on the stored candidates under its own key: a threshold, NMS or cap change must not
    change the signature infer's candidates are stored under (DVC does not rerun infer for them)."""
    signature = load_detector(yolo_spec(models[file])).signature()
    for change in ({"confidence_threshold": 0.5}, {"nms_iou": 0.3}, {"max_detections": 10}, {"parity_of": "x"}):
        assert load_detector(yolo_spec(models[file], **change)).signature() == signature, change
    assert load_detector(yolo_spec(models[file], candidates=BOUND)).signature() != signature  # the bound is in it


@pytest.mark.parametrize("file", ["raw", "raw_onnx", "e2e_onnx"])
def test_a_remembered_signature_gives_the_key_a_load_gives_and_refuses_what_a_load_refuses(models, file, tmp_path):
    """evaluate's memo (detection/signatures.py): an NMS or threshold change re-runs evaluate without loading the
    detector, and gets the key and the refusals a load gives."""
    from evalstack.detection.signatures import expected_detections_key, remembered_signature
    from tests.conftest import store_in

    store, pipeline = store_in(tmp_path / "store"), Key("pipeline", {"size": SIZE})
    spec = yolo_spec(models[file], nms_iou=1.0 if file.startswith("e2e") else 0.5, candidates=BOUND)
    first = expected_detections_key(spec, pipeline, store)  # loads, then remembers
    assert remembered_signature(store, spec) == load_detector(spec).signature()
    changed = replace(spec, options={**spec.options, "confidence_threshold": 0.3, "max_detections": 40})
    assert remembered_signature(store, changed) is not None
    assert expected_detections_key(changed, pipeline, store) == expected_detections_key(changed, pipeline, None) != first
    refusals = [{"max_detections": 61}]  # above candidates.top_k
    if file.startswith("e2e"):
        refusals.append({"nms_iou": 0.5})  # its NMS is frozen
    for change in refusals:
        refused = replace(spec, options={**spec.options, **change})
        with pytest.raises(ModelError) as loading:
            expected_detections_key(refused, pipeline, None)
        with pytest.raises(ModelError) as remembered:
            expected_detections_key(refused, pipeline, store)
        assert str(remembered.value) == str(loading.value), change
