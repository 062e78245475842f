"""The detection corruption grid: the clean baseline once, perturbed passes N·P·I, only new cells computed,
post-processing from cache, COCO-C's order of operations, and pycocotools' exact figures per cell."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from evalstack.core.layers import CacheStaleError, Layer, StoreError, read_column
from evalstack.core.raw import read_blobs
from evalstack.demo.shapes.dataset import ShapesConfig, write_shapes_dataset
from evalstack.detection import grid as grid_module
from evalstack.detection.adapter import PostProcess, load_detector
from evalstack.detection.boxes import Detections, matched_count
from evalstack.detection.candidates import infer_candidates_layer, open_candidates, read_candidates_shard_checked
from evalstack.detection.evaluation import coco_results, split_rows
from evalstack.detection.grid import GridConfig, build_grid
from evalstack.detection.layer import DetectionTable, open_detections, read_table
from evalstack.detection.metrics import coco_from_document, map_and_map50
from evalstack.detection.perceptionmetrics import CacheReader, is_cache_valid
from evalstack.detection.postprocess import postprocess_layer
from evalstack.detection.robustness import consistency, score_grid
from evalstack.preprocess import perturbations as perturb
from evalstack.preprocess.letterbox import LetterboxPipeline, letterbox_layer
from evalstack.sources.coco import CocoFetchConfig, CocoSplit, coco_document, fetch_coco_layer, read_ground_truth
from evalstack.sources.images import decode_image
from tests.conftest import store_in
from tests.detection_helpers import SIZE, coco_project, export_tiny_detector, spec

N_VAL, N_TRAIN = 6, 4
PIPELINE = LetterboxPipeline(resize=SIZE)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return export_tiny_detector(tmp_path_factory.mktemp("grid_model") / "det.pt2", n_classes=3)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """A tiny shapes-in-COCO project: raw + letterboxed layers, train and val images mixed in one shard."""
    root = tmp_path_factory.mktemp("grid_shapes")
    config = ShapesConfig(n_train=N_TRAIN, n_val=N_VAL, min_side=48, max_side=72, min_object=10, max_object=40)
    paths = write_shapes_dataset(root / "src", config)
    splits = {split: CocoSplit(str(path), str(root / "src/images" / split)) for split, path in paths.items()}
    fetch_coco_layer(CocoFetchConfig(splits, shard_size=4), root / "raw")
    letterbox_layer(root / "raw", root / "pre", PIPELINE)
    return root


def _detector(model_file: Path, **options):
    return load_detector(spec(model_file, labels=("circle", "square", "triangle"), **options))


def _grid(types: tuple[str, ...], severities: tuple[int, ...], seed: int = 0) -> GridConfig:
    return GridConfig.from_params({"types": list(types), "severities": list(severities), "seed": seed, "split": "val"})


def _digests(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _infer(root: Path, out: Path, model_file: Path, store=None, **options):
    adapter = _detector(model_file, **options)
    build = infer_candidates_layer(root / "pre", out, adapter, ["val"], store=store)  # build_grid's batch size
    return adapter, build


@pytest.mark.parametrize("types, severities", [
    (("gaussian_noise", "jpeg"), (1, 3)),  # 2 × 2
    (("gaussian_noise", "jpeg", "contrast"), (1, 2, 3, 4, 5)),  # 3 × 5
], ids=["2x2", "3x5"])
@pytest.mark.slow
def test_clean_passes_stay_n_and_perturbed_passes_are_npi(shapes, model_file, tmp_path, types, severities):
    clean_adapter, clean = _infer(shapes, tmp_path / "cand", model_file)
    assert clean_adapter.forward_passes == N_VAL  # only the split that is scored: the 4 train images need none
    assert clean.index.stats["forward_passes"] == N_VAL and clean.index.stats["forward_passes_by_split"] == {"val": N_VAL}
    adapter = _detector(model_file)
    config = _grid(types, severities)
    build = build_grid(shapes / "raw", shapes / "pre", tmp_path / "cand", tmp_path / "grid", adapter, PIPELINE, config)
    cells = len(types) * len(severities)
    assert build.clean_forward_passes == N_VAL and clean_adapter.forward_passes == N_VAL  # the grid ran no clean pass
    assert build.forward_passes == adapter.forward_passes == N_VAL * cells  # every pass of the grid is perturbed
    recorded = [open_candidates(tmp_path / "grid" / cell.name).index.stats["forward_passes"] for cell in config.cells()]
    assert recorded == [N_VAL] * cells and sum(recorded) == N_VAL * cells
    scores = score_grid(shapes / "raw", _postprocessed(tmp_path), tmp_path / "grid", tmp_path / "gridpp",
                        clean_adapter.spec, clean_adapter.postprocess, config)
    counts = scores.summary()["counts"]
    assert (counts["clean_forward_passes"], counts["perturbed_forward_passes"]) == (N_VAL, N_VAL * cells)
    assert clean_adapter.forward_passes == N_VAL and adapter.forward_passes == N_VAL * cells  # scoring: 0 passes


def _postprocessed(root: Path, post: PostProcess = PostProcess(), store=None, name: str = "det") -> Path:
    postprocess_layer(root / "cand", root / name, post, store)
    return root / name


@pytest.mark.slow
def test_a_new_type_or_severity_computes_only_its_cells(shapes, model_file, tmp_path):
    store = store_in(tmp_path / "store")
    _infer(shapes, tmp_path / "cand", model_file, store)
    first = _detector(model_file)
    build_grid(shapes / "raw", shapes / "pre", tmp_path / "cand", tmp_path / "grid", first, PIPELINE,
               _grid(("gaussian_noise", "jpeg"), (1, 2)), store)
    assert first.forward_passes == N_VAL * 4
    adapter = _detector(model_file)
    grown = build_grid(shapes / "raw", shapes / "pre", tmp_path / "cand", tmp_path / "grid2", adapter, PIPELINE,
                       _grid(("gaussian_noise", "jpeg", "fog"), (1, 2, 3)), store)
    computed = {name for name, cell in grown.cells.items() if cell.counts["forward_passes"]}
    assert computed == {"fog-1", "fog-2", "fog-3", "gaussian_noise-3", "jpeg-3"}
    assert adapter.forward_passes == grown.forward_passes == N_VAL * len(computed)
    for name in ("gaussian_noise-1", "jpeg-2"):  # reused cells are the same bytes as before
        assert _digests(tmp_path / "grid2" / name) == _digests(tmp_path / "grid" / name)


@pytest.mark.slow
def test_postprocessing_change_reruns_no_forward_pass_and_equals_a_fresh_run(shapes, model_file, tmp_path):
    config = _grid(("gaussian_noise", "jpeg"), (2, 4))
    store = store_in(tmp_path / "store")
    infer_adapter, _ = _infer(shapes, tmp_path / "cand", model_file, store)
    grid_adapter = _detector(model_file)
    build_grid(shapes / "raw", shapes / "pre", tmp_path / "cand", tmp_path / "grid", grid_adapter, PIPELINE, config, store)
    before = (infer_adapter.forward_passes, grid_adapter.forward_passes)
    default = score_grid(shapes / "raw", _postprocessed(tmp_path, store=store), tmp_path / "grid", tmp_path / "gridpp",
                         infer_adapter.spec, PostProcess(), config, store=store)
    changed_post = PostProcess(confidence_threshold=0.3, nms_iou=0.3, max_detections=20)
    changed = score_grid(shapes / "raw", _postprocessed(tmp_path, changed_post, store, "det_b"), tmp_path / "grid",
                         tmp_path / "gridpp_b", infer_adapter.spec, changed_post, config, store=store)
    assert (infer_adapter.forward_passes, grid_adapter.forward_passes) == before  # no model ran
    assert changed.images_postprocessed == N_VAL * 4
    assert _digests(tmp_path / "gridpp") != _digests(tmp_path / "gridpp_b")  # the change mattered
    # The clean detections at another post-processing than the cells': refused, not set against them in rPC.
    with pytest.raises(CacheStaleError, match=r"det_b was post-processed with other settings or code than the "
                                              r"grid's cells .*run `dvc repro postprocess@"):
        score_grid(shapes / "raw", tmp_path / "det_b", tmp_path / "grid", tmp_path / "gridpp_x", infer_adapter.spec,
                   PostProcess(), config, store=store)
    # A fresh run at the new value: new store, a model loaded with the new params, every layer from scratch.
    fresh = tmp_path / "fresh"
    fresh_store = store_in(fresh / "store")
    adapter, _ = _infer(shapes, fresh / "cand", model_file, fresh_store, confidence_threshold=0.3, nms_iou=0.3,
                        max_detections=20)
    build_grid(shapes / "raw", shapes / "pre", fresh / "cand", fresh / "grid", adapter, PIPELINE, config, fresh_store)
    again = score_grid(shapes / "raw", _postprocessed(fresh, adapter.postprocess, fresh_store), fresh / "grid",
                       fresh / "gridpp", adapter.spec, adapter.postprocess, config, store=fresh_store)
    assert _digests(fresh / "det") == _digests(tmp_path / "det_b")
    assert _digests(fresh / "gridpp") == _digests(tmp_path / "gridpp_b")
    assert again.summary() == changed.summary()
    # Toggling back: every post-processed shard comes from the store.
    back = score_grid(shapes / "raw", _postprocessed(tmp_path, store=store, name="det_c"), tmp_path / "grid",
                      tmp_path / "gridpp_c", infer_adapter.spec, PostProcess(), config, store=store)
    assert back.images_postprocessed == 0 and back.summary() == default.summary()


@pytest.mark.slow
def test_cells_corrupt_the_original_image_before_letterboxing(shapes, model_file, tmp_path, monkeypatch):
    _infer(shapes, tmp_path / "cand", model_file)
    adapter = _detector(model_file)
    inputs, real, infer_rows = [], adapter.candidates_batch, grid_module.infer_rows

    def recording(adapter, batches, rows, attrs):  # what the model is given (evalstack refuses a function set on
        batches = list(batches)                    # the adapter itself: no key would name its code)
        inputs.extend(item for batch in batches for item in batch)
        return infer_rows(adapter, batches, rows, attrs)

    monkeypatch.setattr(grid_module, "infer_rows", recording)
    build_grid(shapes / "raw", shapes / "pre", tmp_path / "cand", tmp_path / "grid", adapter, PIPELINE,
               _grid(("motion_blur",), (3,)))
    raw = Layer.open(shapes / "raw")
    with raw.open_shard(raw.shards[-1]) as handle:  # the last shard holds val images only
        keys, splits = read_column(handle, "item_key"), read_column(handle, "split")
        blob, key = read_blobs(handle, slice(0, 1))[0], str(keys[0])
    assert splits[0] == "val" and len(inputs) == N_VAL
    original = np.asarray(decode_image(blob).convert("RGB"))
    expected = PIPELINE.process_image(Image.fromarray(perturb.perturb(original, "motion_blur", 3, key, 0)))
    assert np.array_equal(inputs[N_VAL - len(keys)], expected)  # that image, corrupted first, then letterboxed
    # … which is not the letterboxed clean tensor corrupted afterwards:
    assert not np.array_equal(perturb.perturb(PIPELINE.process_image(Image.fromarray(original)), "motion_blur", 3,
                                              key, 0), expected)
    cell = open_candidates(tmp_path / "grid/motion_blur-3")
    found = read_candidates_shard_checked(cell, cell.shards[-1]).candidates(0)
    reference = real(expected[None])[0]  # alone in its batch: equal up to the framework's batch-size rounding
    np.testing.assert_allclose(found.boxes, reference.boxes, rtol=1e-6)
    np.testing.assert_allclose(found.scores, reference.scores, rtol=1e-6)


@pytest.mark.slow
def test_cells_are_deterministic_per_seed_and_refuse_a_missing_split(shapes, model_file, tmp_path):
    _infer(shapes, tmp_path / "cand", model_file)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        build_grid(shapes / "raw", shapes / "pre", tmp_path / "cand", tmp_path / name, _detector(model_file), PIPELINE,
                   _grid(("gaussian_noise",), (5,), seed))
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert _digests(tmp_path / "a") != _digests(tmp_path / "c")
    train_grid = GridConfig(("jpeg",), (1,), 0, "train")
    with pytest.raises(ValueError, match="not the grid's 'train'"):
        build_grid(shapes / "raw", shapes / "pre", tmp_path / "cand", tmp_path / "d", _detector(model_file), PIPELINE,
                   train_grid)
    with pytest.raises(ValueError, match="unknown"):
        _grid(("no_such_corruption",), (1,))


@pytest.mark.slow
def test_the_seed_api_reads_a_grid_cell(shapes, model_file, tmp_path):
    adapter, _ = _infer(shapes, tmp_path / "cand", model_file)
    config = _grid(("jpeg",), (5,))
    build_grid(shapes / "raw", shapes / "pre", tmp_path / "cand", tmp_path / "grid", _detector(model_file), PIPELINE, config)
    score_grid(shapes / "raw", _postprocessed(tmp_path), tmp_path / "grid", tmp_path / "gridpp", adapter.spec,
               PostProcess(), config)
    cell = tmp_path / "gridpp/jpeg-5"
    assert is_cache_valid(cell, adapter.weights_sha256) and not is_cache_valid(cell, "0" * 64)
    reader = CacheReader(cell, adapter.weights_sha256)
    assert len(reader) == N_VAL and reader.metadata()["perturbation"]["type"] == "jpeg"
    table = read_table(open_detections(cell))
    first = reader.image_ids()[0]
    np.testing.assert_array_equal(reader.read_preds(first)["bboxes"], table.detections(0).boxes)
    with pytest.raises(StoreError, match="corruption-grid cell"):
        CacheReader(cell, adapter.weights_sha256, tensors=shapes / "pre")


# --- pycocotools' exact figures per cell, on a COCO document with its awkward parts ----------------------------

AWKWARD = {
    "categories": [{"id": 7, "name": "square", "supercategory": "shape"},
                   {"id": 3, "name": "circle", "supercategory": "shape"}],  # ids neither contiguous nor sorted
    "images": [{"id": 11, "file_name": "a.png", "width": 64, "height": 48},
               {"id": 5, "file_name": "b.png", "width": 40, "height": 40},
               {"id": 42, "file_name": "empty.png", "width": 48, "height": 32}],  # no annotations
    "annotations": [
        {"id": 1, "image_id": 11, "category_id": 3, "bbox": [10.0, 10.0, 20.0, 20.0], "area": 400.0, "iscrowd": 0},
        {"id": 2, "image_id": 11, "category_id": 7, "bbox": [36.0, 20.0, 20.0, 20.0], "area": 400.0, "iscrowd": 0},
        {"id": 3, "image_id": 11, "category_id": 3, "bbox": [0.0, 30.0, 30.0, 18.0], "area": 540.0, "iscrowd": 1},
        {"id": 4, "image_id": 5, "category_id": 7, "bbox": [0.0, 0.0, 30.0, 30.0], "area": 900.0, "iscrowd": 0},
        {"id": 5, "image_id": 5, "category_id": 3, "bbox": [5.0, 5.0, 30.0, 30.0], "area": 900.0, "iscrowd": 1},
    ],
}


def _pycocotools_from_files(tmp_path: Path, document: dict, results: list[dict]) -> list[float]:
    """The reference: pycocotools on JSON files, nothing of evalstack involved."""
    (tmp_path / "gt.json").write_text(json.dumps(document))
    (tmp_path / "dt.json").write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "gt.json"))
        evaluator = COCOeval(gt, gt.loadRes(str(tmp_path / "dt.json")), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]


def test_map_and_map50_equal_full_pycocotools_with_crowds_gaps_empty_images_and_duplicates(tmp_path):
    det = lambda image, category, box, score: {"image_id": image, "category_id": category, "bbox": box, "score": score}  # noqa: E731
    results = [
        det(11, 3, [10.0, 10.0, 20.0, 20.0], 0.9), det(11, 3, [10.0, 10.0, 20.0, 20.0], 0.9),  # an exact duplicate
        det(11, 3, [1.0, 31.0, 28.0, 16.0], 0.8),  # inside the crowd region: ignored, neither TP nor FP
        det(11, 7, [36.0, 21.0, 20.0, 19.0], 0.7), det(5, 7, [0.0, 0.0, 30.0, 25.0], 0.6),
        det(5, 3, [6.0, 6.0, 28.0, 28.0], 0.5), det(42, 7, [0.0, 0.0, 10.0, 10.0], 0.95),  # FP on the empty image
    ]
    full = _pycocotools_from_files(tmp_path, AWKWARD, results)
    assert map_and_map50(coco_from_document(AWKWARD), results) == (full[0], full[1])
    assert map_and_map50(coco_from_document(AWKWARD), []) == (0.0, 0.0)


@pytest.mark.slow
def test_every_cell_scores_exactly_what_pycocotools_says(tmp_path):
    coco_project(tmp_path, AWKWARD)
    model = export_tiny_detector(tmp_path / "det.pt2")
    # nms_iou 1.0 keeps overlapping near-duplicate boxes of an untrained model: the hard case for matching
    adapter = load_detector(spec(model, nms_iou=1.0))
    infer_candidates_layer(tmp_path / "pre", tmp_path / "cand", adapter, ["val"], batch_size=2)
    config = _grid(("gaussian_noise", "defocus_blur"), (1, 5))
    build_grid(tmp_path / "raw", tmp_path / "pre", tmp_path / "cand", tmp_path / "grid", adapter, PIPELINE, config,
               batch_size=2)
    scores = score_grid(tmp_path / "raw", _postprocessed(tmp_path, adapter.postprocess), tmp_path / "grid",
                        tmp_path / "gridpp", adapter.spec, adapter.postprocess, config)
    dataset = read_ground_truth(tmp_path / "raw")
    document = coco_document(dataset, "val")
    categories = dataset.category_ids(adapter.spec.labels, "det")
    assert categories.tolist() == [3, 7]  # matched by name, not by position
    layers = {"clean": tmp_path / "det", **{c.name: tmp_path / "gridpp" / c.name for c in config.cells()}}
    figures = {}
    for name, layer in layers.items():
        table = read_table(open_detections(layer))
        results = coco_results(table, split_rows(table, dataset, "val", "det"), categories)
        assert len(results) > len(table)  # several boxes per image
        reference = _pycocotools_from_files(tmp_path, document, results)
        figures[name] = (reference[0], reference[1])
    assert (scores.P_clean, scores.P50_clean) == figures["clean"]
    for cell in scores.cells:
        assert (cell.mAP, cell.mAP50) == figures[f"{cell.kind}-{cell.severity}"]
    summary = scores.summary()
    assert summary["mPC"] == pytest.approx(np.mean([figures[c.name][0] for c in config.cells()]), abs=1e-15)
    in_two_processes = score_grid(tmp_path / "raw", tmp_path / "det", tmp_path / "grid", tmp_path / "gridpp2",
                                  adapter.spec, adapter.postprocess, config, workers=2)
    assert in_two_processes.summary() == summary
    if summary["P_clean"] > 0:
        assert summary["rPC"] == summary["mPC"] / summary["P_clean"]


def test_consistency_is_the_sum_over_every_image_pair():
    # consistency skips pairs with nothing above the threshold on one side: the figure must be what matching
    # every pair gives, on tables with empty images, images with nothing above it, and rows out of order
    rng = np.random.default_rng(3)

    clean_found, cell_found = [], []
    for image in range(60):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 40, (n, 2))
        boxes = np.concatenate([xy, rng.uniform(4, 20, (n, 2))], 1).astype(np.float32)
        labels, scores = rng.integers(0, 2, n), rng.uniform(0, 1, n).astype(np.float32)
        clean_found.append(Detections(boxes, labels, scores))
        kept = rng.uniform(0, 1, n) < 0.7  # the corruption loses some boxes, moves and rescores the rest
        cell_found.append(Detections(boxes[kept] + np.float32(1.5), labels[kept],
                                     rng.uniform(0, 1, int(kept.sum())).astype(np.float32)))
    make = lambda found: DetectionTable.from_detections(["a" * 64] * 60, list(range(60)), ["val"] * 60, found)  # noqa: E731
    clean, cell = make(clean_found), make(cell_found)
    clean_rows = cell_rows = list(rng.permutation(60))
    for threshold in (0.0, 0.5, 0.9):
        def above(t: DetectionTable, row: int) -> Detections:
            found = t.detections(row)
            keep = found.scores >= threshold
            return Detections(found.boxes[keep], found.labels[keep], found.scores[keep])

        pairs = [(above(clean, a), above(cell, b)) for a, b in zip(clean_rows, cell_rows)]
        total, matched = sum(len(r) for r, _ in pairs), sum(matched_count(r, o, 0.5) for r, o in pairs)
        assert matched > 0 or threshold == 0.9
        assert consistency(clean, clean_rows, cell, cell_rows, threshold) == (matched / total if total else None)


def test_consistency_counts_clean_detections_found_again():
    boxes = np.asarray([[0, 0, 10, 10], [20, 20, 10, 10], [40, 40, 10, 10]], np.float32)  # xywh
    clean = Detections(boxes, np.asarray([0, 1, 0]), np.asarray([0.9, 0.8, 0.7], np.float32))
    shifted = Detections(boxes + [2, 0, 0, 0], np.asarray([0, 0, 0]), np.asarray([0.9, 0.8, 0.3], np.float32))
    # box 0: IoU 8·10/(2·100 − 80) = 0.67, same label → matched; box 1: other label; box 2: matched too
    assert matched_count(clean, shifted, 0.5) == 2
    twice = Detections(np.asarray([[0, 0, 10, 10]], np.float32), np.asarray([0]), np.asarray([0.9], np.float32))
    assert matched_count(Detections(boxes[[0, 0]], np.asarray([0, 0]), np.asarray([0.9, 0.8], np.float32)), twice) == 1
    clean_table = DetectionTable.from_detections(["a" * 64], [1], ["val"], [clean])
    cell_table = DetectionTable.from_detections(["a" * 64], [1], ["val"], [shifted])
    # count_threshold 0.5 drops the cell's third box: only box 0 is found again among 3 clean ones
    assert consistency(clean_table, [0], cell_table, [0], 0.5) == pytest.approx(1 / 3)
    assert consistency(clean_table, [0], cell_table, [0], 0.95) is None  # no clean detection to find
