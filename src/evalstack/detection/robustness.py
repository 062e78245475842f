"""Robustness figures of a detection corruption grid (COCO-C's measures) from cached layers only.

Per cell: the cell's candidates are post-processed with the model's current params
(detection/postprocess.py: no forward pass, shards from the store when seen before) and
scored by pycocotools like the clean evaluation — mAP@[.5:.95] and mAP@.5 — against the
unchanged ground truth. Per model, as Michaelis et al. define them:

- P_clean: mAP on the clean images (the clean detections layer, never recomputed);
- mPC: the mean of the cells' mAP over every corruption type and severity;
- rPC = mPC / P_clean (None when P_clean is 0);
- per type: the mean over its severities;
- consistency: the share of clean detections (score >= evaluate.count_threshold) that the
  corrupted image still yields — same label, IoU >= 0.5, matched one-to-one.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from evalstack.cache.shardstore import ShardStore
from evalstack.config import ModelSpec
from evalstack.core.keys import Key, sha256_file
from evalstack.core.layers import CacheStaleError
from evalstack.detection.boxes import Detections, matched_count
from evalstack.detection.candidates import open_candidates
from evalstack.detection.decoding import PostProcess
from evalstack.detection.evaluation import Scoring, split_rows
from evalstack.detection.grid import GridConfig
from evalstack.detection.labels import NOT_SCORED, checked_label_map, scored_document
from evalstack.detection.layer import DetectionTable, open_detections, read_table
from evalstack.detection.metrics import CellScorer, ResultArrays
from evalstack.detection.postprocess import detections_key, postprocess_layer
from evalstack.sources.coco import coco_document, read_ground_truth

CONSISTENCY_IOU = 0.5


@dataclass(frozen=True)
class CellScore:
    kind: str
    severity: int
    mAP: float
    mAP50: float
    consistency: float | None
    forward_passes: int  # recorded in the cell's candidates layer


@dataclass
class GridScores:
    model: str
    split: str
    n_images: int
    P_clean: float
    P50_clean: float
    cells: list[CellScore]
    clean_forward_passes: int
    ap: str = "coco"  # evaluate.ap: the recall points AP is interpolated at (metrics.py)
    categories: dict[str, Any] | None = None  # which categories were scored (LabelMap.summary)
    # What this run post-processed (0: every shard came from the store). Printed, never written to an
    # output: outputs are a function of the inputs, identical however much was reused.
    images_postprocessed: int = 0

    def _mean(self, values: list[float]) -> float:
        return float(np.mean(values)) if values else float("nan")

    def types(self) -> dict[str, dict[str, float | None]]:
        kinds = list(dict.fromkeys(cell.kind for cell in self.cells))
        out = {}
        for kind in kinds:
            cells = [cell for cell in self.cells if cell.kind == kind]
            consistent = [c.consistency for c in cells if c.consistency is not None]
            out[kind] = {"mAP": self._mean([c.mAP for c in cells]), "mAP50": self._mean([c.mAP50 for c in cells]),
                         "consistency": self._mean(consistent) if consistent else None}
        return out

    def summary(self) -> dict[str, Any]:
        mpc, mpc50 = self._mean([c.mAP for c in self.cells]), self._mean([c.mAP50 for c in self.cells])
        consistent = [c.consistency for c in self.cells if c.consistency is not None]
        return {
            "model": self.model, "split": self.split, "n_images": self.n_images, "ap": self.ap,
            "categories": self.categories or {},
            "P_clean": self.P_clean, "mPC": mpc, "rPC": mpc / self.P_clean if self.P_clean > 0 else None,
            "P50_clean": self.P50_clean, "mPC50": mpc50,
            "rPC50": mpc50 / self.P50_clean if self.P50_clean > 0 else None,
            "consistency": self._mean(consistent) if consistent else None,
            "types": self.types(), "cells": [asdict(cell) for cell in self.cells],
            "counts": {"clean_forward_passes": self.clean_forward_passes,
                       "perturbed_forward_passes": sum(c.forward_passes for c in self.cells),
                       "cells": len(self.cells)},
        }


def consistency(clean: DetectionTable, clean_rows: list[int], cell: DetectionTable, cell_rows: list[int],
                count_threshold: float) -> float | None:
    """Share of clean detections scoring >= count_threshold matched under corruption (None: none to match)."""
    def above(table: DetectionTable, row: int) -> Detections:
        found = table.detections(row)
        keep = found.scores >= count_threshold
        return Detections(found.boxes[keep], found.labels[keep], found.scores[keep])

    a_rows, b_rows = np.asarray(clean_rows, np.int64), np.asarray(cell_rows, np.int64)
    clean_counts, cell_counts = counts_above(clean, count_threshold)[a_rows], counts_above(cell, count_threshold)[b_rows]
    # A pair with nothing above the threshold on either side matches nothing (matched_count's 0): only pairs
    # with boxes on both sides are matched box by box. Under strong corruptions that is a small share of them.
    both = (clean_counts > 0) & (cell_counts > 0)
    matched = sum(matched_count(above(clean, a), above(cell, b), CONSISTENCY_IOU)
                  for a, b in zip(a_rows[both].tolist(), b_rows[both].tolist()))
    total = int(clean_counts.sum())
    return matched / total if total else None


def counts_above(table: DetectionTable, threshold: float) -> np.ndarray:
    """Per row of the table, how many of its detections score >= threshold."""
    running = np.concatenate([[0], np.cumsum(table.scores >= threshold)])
    return running[table.offsets + table.counts] - running[table.offsets]


def result_arrays(table: DetectionTable, rows: list[int], categories: np.ndarray) -> ResultArrays:
    """The detections of `rows` as flat arrays in COCO results order (what `coco_results` lists, classes that
    are no dataset category left out)."""
    counts = table.counts[rows]
    starts = table.offsets[rows]
    index = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
    image_ids, category_ids = np.repeat(table.ids[rows].astype(np.int64), counts), categories[table.labels[index]]
    keep = category_ids != NOT_SCORED
    return (image_ids[keep], category_ids[keep].astype(np.int64), table.bboxes[index][keep], table.scores[index][keep])


def _check_clean_postprocessing(clean: Key, post: PostProcess, clean_dir: Path, model: str) -> None:
    """The clean detections must be post-processed as the cells are (`post`, this code): rPC set against
    P_clean at another threshold would be a ratio of two settings. The stage knows the candidates only through
    the layer, so what is checked is the post-processing its key names."""
    candidates = Key("candidates", dict(clean.parts.get("candidates") or {}))
    if clean != detections_key(candidates, post):
        raise CacheStaleError(f"{clean_dir} was post-processed with other settings or code than the grid's cells "
                              f"({post}); run `dvc repro postprocess@{model}`")


def score_grid(
    raw_dir: Path, clean_dir: Path, cells_dir: Path, out_dir: Path, spec: ModelSpec, post: PostProcess,
    config: GridConfig, scoring: Scoring = Scoring(), store: ShardStore | None = None,
    expected_clean: Key | None = None, workers: int = 1,
) -> GridScores:
    """Post-process every cell (into `out_dir/<cell>`), score it, and compare it with the clean detections.
    pycocotools runs in `workers` processes (it does not change a figure), overlapping the post-processing."""
    sha256: Callable[[Path], str] = store.stamps.sha256 if store is not None else sha256_file
    dataset = read_ground_truth(raw_dir)
    labels = checked_label_map(spec, dataset.categories, scoring.categories)
    categories, count_threshold = labels.category_ids, scoring.count_threshold
    clean_layer = open_detections(clean_dir, expected_clean, f"dvc repro postprocess@{spec.name}")
    _check_clean_postprocessing(clean_layer.key, post, clean_dir, spec.name)
    clean = read_table(clean_layer, sha256)
    clean_rows = split_rows(clean, dataset, config.split, spec.name)
    by_split = clean_layer.index.stats.get("forward_passes_by_split", {})
    pending, postprocessed = [], 0
    document = scored_document(coco_document(dataset, config.split), labels, scoring.categories)
    with CellScorer(document, workers, scoring.ap) as scorer:
        clean_score = scorer.submit(result_arrays(clean, clean_rows, categories))
        for cell in config.cells():
            source = open_candidates(cells_dir / cell.name)
            if source.key.parts.get("clean") != clean_layer.key.parts.get("candidates"):
                raise CacheStaleError(f"{cells_dir / cell.name} was computed for another model or pipeline than "
                                      f"{clean_dir}; rebuild the grid with `dvc repro grid@{spec.name}`")
            build = postprocess_layer(cells_dir / cell.name, out_dir / cell.name, post, store,
                                      f"model {spec.name} under {cell.kind} severity {cell.severity}: postprocess")
            table = read_table(open_detections(out_dir / cell.name, detections_key(source.key, post)), sha256)
            rows = split_rows(table, dataset, config.split, spec.name)
            pending.append((cell, scorer.submit(result_arrays(table, rows, categories)),
                            consistency(clean, clean_rows, table, rows, count_threshold),
                            int(source.index.stats.get("forward_passes", 0))))
            postprocessed += build.counts["items_computed"]
        cells = [CellScore(cell.kind, cell.severity, *score.result(), agree, passes)
                 for cell, score, agree, passes in pending]
        p_clean, p50_clean = clean_score.result()
    return GridScores(spec.name, config.split, len(clean_rows), p_clean, p50_clean, cells,
                      int(by_split.get(config.split, 0)), scoring.ap, labels.summary(scoring.categories), postprocessed)
