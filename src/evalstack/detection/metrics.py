"""Detection metrics through pycocotools (no I/O): COCO mAP/AR, per-class AP, per-image TP/FP/FN.

Every figure comes from one `COCOeval` run, so it is pycocotools' number, not a
re-implementation: `mAP` is `stats[0]` (AP@[.5:.95]), `mAP50` `stats[1]`,
`AR100` `stats[8]`, and so on. Per-class AP averages `eval['precision']` of a
class the way `summarize()` averages all classes. Per-image TP/FP/FN are read
from `evalImgs` at IoU 0.5 (area "all", 100 detections): pycocotools' own
matching, greedy in score order, crowd matches ignored. Counting only the
detections scoring at least `count_threshold` is exact on that matching,
because a lower-scored detection can never take a match from a higher one.

`ap` picks how AP is interpolated (params `evaluate.ap`). `coco` is pycocotools'
own: 101 recall points, IoU 0.50:0.05:0.95. `coco11` is PerceptionMetrics' AP
(`perceptionmetrics.utils.detection_metrics`): VOC 11-point interpolation, mAP@[.5:.95]
the mean of the 11-point APs, no crowd handling. pycocotools' precision at recall r
is already VOC's interpolation (the maximum precision at any recall >= r), so coco11
is pycocotools with PerceptionMetrics' thresholds, placed where it puts them:
PerceptionMetrics computes recall in float32 and compares it with
`np.linspace(0, 1, 11)`, so a recall of exactly 3/10 (0.30000001 in float32) reaches
the 0.30000000000000004 point, which pycocotools' float64 3/10 does not; and its IoU
thresholds are `np.arange(0.5, 1.0, 0.05)` (0.6000000000000001, …), which an IoU of
exactly 0.6 does not reach. Plain 11 points differed from PerceptionMetrics by up to
0.04 mAP@.5 on 8 of 24 random crowd-free sets (tests/test_detection_ap.py); with these thresholds the figures equal
its own to float32 precision (it accumulates in float32). With crowd annotations they
differ: pycocotools ignores detections matched to a crowd region, PerceptionMetrics
counts the crowd box as an object.
"""
from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

AP_METHODS = ("coco", "coco11")  # evaluate.ap


def _float32_reach(points: np.ndarray) -> np.ndarray:
    """Where float64 x must be for float32(x) >= each point: the midpoint below the smallest float32 >= it.
    (A quotient k/n exactly on a midpoint rounds half to even in float32; small counts never land there.)"""
    ceiling = points.astype(np.float32)
    ceiling = np.where(ceiling.astype(np.float64) < points, np.nextafter(ceiling, np.float32(np.inf)), ceiling)
    below = np.nextafter(ceiling, np.float32(-np.inf))
    return (ceiling.astype(np.float64) + below.astype(np.float64)) / 2


# PerceptionMetrics' thresholds (see the module docstring); AP at recall 0 is reached by every recall, as in it.
COCO11_RECALL = np.maximum(_float32_reach(np.linspace(0, 1, 11)), 0.0)
COCO11_IOU = np.arange(0.5, 1.0, 0.05)

STAT_NAMES = (
    "mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)


@dataclass(frozen=True)
class ImageCounts:
    image_id: int
    n_gt: int  # non-crowd ground-truth boxes
    n_det: int  # detections scoring >= the count threshold (not matched to a crowd)
    tp: int
    fp: int
    fn: int


@dataclass(frozen=True)
class DetectionReport:
    stats: dict[str, float]  # STAT_NAMES → pycocotools' value (-1 where undefined, as pycocotools says)
    per_class_ap: dict[str, float | None]  # None: the class has no ground truth in this split
    per_class_ap50: dict[str, float | None]
    pr_curve: list[tuple[float, float]]  # (recall point, precision) at IoU 0.5, mean over classes with ground truth
    per_image: list[ImageCounts]
    count_threshold: float
    ap: str = "coco"

    def summary(self) -> dict[str, Any]:
        totals = {name: sum(getattr(c, name) for c in self.per_image) for name in ("tp", "fp", "fn")}
        return {
            **self.stats,
            "ap": self.ap,
            "per_class_AP": self.per_class_ap,
            "per_class_AP50": self.per_class_ap50,
            **totals,
            "count_threshold": self.count_threshold,
            "n_images": len(self.per_image),
            "n_images_without_gt": sum(1 for c in self.per_image if c.n_gt == 0),
            # named for what it counts: a detection under count_threshold does not count here
            "n_images_without_detections_above_count_threshold": sum(1 for c in self.per_image if c.n_det == 0),
        }


def coco_from_document(document: dict[str, Any]) -> COCO:
    """A pycocotools COCO object over an in-memory document (a copy: COCOeval annotates its dicts)."""
    coco = COCO()
    coco.dataset = copy.deepcopy(document)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _load_results(gt: COCO, results: list[dict[str, Any]], owned: bool = False) -> COCO:
    """loadRes annotates the dicts it is given: a copy, unless the caller hands them over (`owned`).
    A copy of each dict is enough: for boxes, loadRes (pycocotools 2.0) only adds keys (segmentation, area,
    id, iscrowd) and COCOeval reads the values, so the caller's dicts and lists stay as they were; a deep
    copy of every box list cost ~0.5 s per 100,000 detections."""
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            return gt.loadRes(results if owned else [dict(result) for result in results])
    # loadRes cannot take an empty list (it inspects results[0]); no detections is a valid result.
    return coco_from_document({"images": gt.dataset["images"], "categories": gt.dataset["categories"],
                               "annotations": []})


def check_ap(ap: str) -> str:
    if ap not in AP_METHODS:
        raise ValueError(f"evaluate.ap {ap!r}: choose {' or '.join(AP_METHODS)}")
    return ap


def _evaluator(gt: COCO, results: list[dict[str, Any]], ap: str, owned: bool = False) -> COCOeval:
    evaluator = COCOeval(gt, _load_results(gt, results, owned), iouType="bbox")
    if check_ap(ap) == "coco11":
        evaluator.params.recThrs, evaluator.params.iouThrs = COCO11_RECALL.copy(), COCO11_IOU.copy()
    return evaluator


def run_cocoeval(gt: COCO, results: list[dict[str, Any]], ap: str = "coco") -> COCOeval:
    evaluator = _evaluator(gt, results, ap)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def map_and_map50(gt: COCO, results: list[dict[str, Any]], owned: bool = False, ap: str = "coco") -> tuple[float, float]:
    """pycocotools' `stats[0]` and `stats[1]` (mAP@[.5:.95], mAP@.5; area all, 100 detections), computed
    with only that area range and detection cap evaluated: each (area, cap) is evaluated independently,
    so these two figures are the same numbers a full `summarize()` prints, for a quarter of the work.
    A corruption grid needs these two per cell, a few dozen times; `owned` results (built for this call)
    are annotated in place instead of copied."""
    evaluator = _evaluator(gt, results, ap, owned)
    params = evaluator.params
    params.areaRng, params.areaRngLbl, params.maxDets = [params.areaRng[0]], ["all"], [params.maxDets[-1]]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, 0]  # [IoU, recall, class]
    return _summarised(precision), _summarised(precision[params.iouThrs == 0.5])


def _summarised(precision: np.ndarray) -> float:
    """What COCOeval.summarize() reports for a precision slice: the mean of defined entries, else -1."""
    valid = precision[precision > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def _class_ap(precision: np.ndarray) -> float | None:
    valid = precision[precision > -1]
    return float(np.mean(valid)) if valid.size else None


def per_image_counts(evaluator: COCOeval, count_threshold: float) -> list[ImageCounts]:
    """TP/FP/FN at IoU 0.5 per image, every ground-truth image included (zero rows too)."""
    params = evaluator.params
    if params.iouThrs[0] != 0.5:
        raise ValueError("per-image counts need IoU 0.5 as the first COCOeval threshold")
    counts = {image_id: [0, 0, 0, 0] for image_id in params.imgIds}  # n_gt, tp, fp, fn
    for entry in evaluator.evalImgs:
        if entry is None or entry["aRng"] != params.areaRng[0]:
            continue
        row = counts[entry["image_id"]]
        n_gt = int(np.sum(np.asarray(entry["gtIgnore"]) == 0))
        scored = np.asarray(entry["dtScores"], dtype=np.float64) >= count_threshold
        valid = ~np.asarray(entry["dtIgnore"], dtype=bool)[0] & scored
        matched = np.asarray(entry["dtMatches"])[0] > 0
        tp = int(np.sum(matched & valid))
        row[0] += n_gt
        row[1] += tp
        row[2] += int(np.sum(~matched & valid))
        row[3] += n_gt - tp
    return [ImageCounts(int(image_id), n_gt, tp + fp, tp, fp, fn) for image_id, (n_gt, tp, fp, fn) in counts.items()]


def evaluate_detections(
    gt_document: dict[str, Any], results: list[dict[str, Any]], count_threshold: float = 0.5, ap: str = "coco"
) -> DetectionReport:
    """COCO bbox evaluation of `results` (COCO results format) against one ground-truth document."""
    gt = coco_from_document(gt_document)
    evaluator = run_cocoeval(gt, results, ap)
    precision = evaluator.eval["precision"]  # [IoU, recall, class, area, maxDets]
    names = {c["id"]: c["name"] for c in gt_document["categories"]}
    per_class, per_class50 = {}, {}
    for k, category_id in enumerate(evaluator.params.catIds):
        per_class[names[category_id]] = _class_ap(precision[:, :, k, 0, -1])
        per_class50[names[category_id]] = _class_ap(precision[0, :, k, 0, -1])
    at50 = precision[0, :, :, 0, -1]  # [recall, class]
    with_gt = [k for k in range(at50.shape[1]) if np.all(at50[:, k] > -1)]
    curve_precision = at50[:, with_gt].mean(axis=1) if with_gt else np.zeros(len(evaluator.params.recThrs))
    stats = {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats)}
    if ap == "coco11":  # summarize() looks up IoU .75 exactly; PerceptionMetrics' sixth threshold is 0.7500000000000002
        stats["mAP75"] = _summarised(precision[5, :, :, 0, -1])
    return DetectionReport(
        stats=stats,
        per_class_ap=per_class,
        per_class_ap50=per_class50,
        pr_curve=[(float(r), float(p)) for r, p in zip(evaluator.params.recThrs, curve_precision)],
        per_image=per_image_counts(evaluator, count_threshold),
        count_threshold=count_threshold,
        ap=ap,
    )


ResultArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # image ids, category ids, xywh boxes, scores


def results_from_arrays(image_ids: np.ndarray, category_ids: np.ndarray, boxes: np.ndarray,
                        scores: np.ndarray) -> list[dict[str, Any]]:
    """COCO results format from flat arrays (one row per detection, in order)."""
    return [{"image_id": image, "category_id": category, "bbox": box, "score": score}
            for image, category, box, score in zip(image_ids.tolist(), category_ids.tolist(), boxes.tolist(),
                                                   scores.tolist())]


_WORKER: tuple[dict[str, Any], str] | None = None  # (ground-truth document, ap)


def _start_worker(document: dict[str, Any], ap: str) -> None:
    global _WORKER
    _WORKER = (document, ap)


def _score_in_worker(arrays: ResultArrays) -> tuple[float, float]:
    document, ap = _WORKER
    return map_and_map50(coco_from_document(document), results_from_arrays(*arrays), owned=True, ap=ap)


class CellScorer:
    """`map_and_map50` of many result sets against one ground-truth document, in `workers` processes.

    A grid's cells are independent and pycocotools is single-threaded Python, so on a 2-core machine
    two processes score two cells at once while the stage post-processes the next. Each worker
    receives the document once; results travel as flat numpy arrays. workers=1 scores in-process.
    """

    def __init__(self, document: dict[str, Any], workers: int = 1, ap: str = "coco"):
        self.document, self.workers, self.ap = document, max(1, int(workers)), check_ap(ap)
        self._pool = None

    def __enter__(self) -> "CellScorer":
        if self.workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start_worker, initargs=(self.document, self.ap))
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def submit(self, arrays: ResultArrays):
        """A future of (mAP, mAP@.5)."""
        from concurrent.futures import Future

        if self._pool is not None:
            return self._pool.submit(_score_in_worker, arrays)
        done: Future = Future()
        done.set_result(map_and_map50(coco_from_document(self.document), results_from_arrays(*arrays), owned=True,
                                      ap=self.ap))
        return done
