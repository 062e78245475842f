"""D1's second baseline: the work a post-processing change calls for, timed alone in one plain process.

After an `nms_iou` (or threshold, or cap) change nothing needs a forward pass: the stored candidates of
the clean images and of every grid cell are post-processed again and scored again. This script does
exactly that with evalstack's own functions, in memory, one process, no cache, no DVC, no files
written:

- the clean candidates → post-processing → the full COCO evaluation the evaluate stage reports
  (12 stats, per-class AP, PR curve, per-image counts);
- every cell's candidates → post-processing → mAP and mAP@.5 (pycocotools) and the consistency
  against the clean detections, as the robustness stage reports them.

Reading the candidates (h5py, each image's checksum) happens before the clock starts: a user's own
script would have its arrays already, or read them with np.load. The figures are printed and written
to the JSON so the caller can check them against the project's outputs (the same work, the same numbers).

    python bench/_rescore_detection.py <detection dir> <model> <out.json>
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import h5py

from evalstack.config import load_params, model_spec
from evalstack.core.layers import Layer
from evalstack.detection.candidates import read_candidate_shard
from evalstack.detection.decoding import CandidateBound, PostProcess
from evalstack.detection.evaluation import Scoring, coco_results, split_rows
from evalstack.detection.grid import GridConfig
from evalstack.detection.labels import checked_label_map, scored_document
from evalstack.detection.layer import join_tables
from evalstack.detection.metrics import coco_from_document, evaluate_detections, map_and_map50, results_from_arrays
from evalstack.detection.postprocess import postprocess_table
from evalstack.detection.robustness import consistency, result_arrays
from evalstack.detection.styles import StyleRecord
from evalstack.sources.coco import coco_document, read_ground_truth


def candidate_tables(layer_dir: Path) -> tuple[list, dict]:
    layer = Layer.open(layer_dir)
    tables = []
    for shard in layer.shards:
        path = layer.path(shard)
        with h5py.File(path, "r") as handle:
            tables.append(read_candidate_shard(handle, path, layer_dir))
    return tables, layer.index.stats


def main() -> None:
    detection, model, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    params = load_params(detection / "params.yaml")
    spec = model_spec(params, model, root=detection)
    post = PostProcess.from_options(spec.options)
    config, scoring = GridConfig.from_params(params["grid"]), Scoring.from_params(params["evaluate"])
    split = params["evaluate"]["split"]
    dataset = read_ground_truth(detection / "data/raw")
    labels = checked_label_map(spec, dataset.categories, scoring.categories)
    categories = labels.category_ids
    sets = {"clean": candidate_tables(detection / "data/candidates" / model)}
    for cell in config.cells():
        sets[cell.name] = candidate_tables(detection / "data/grid" / model / cell.name)

    started = time.perf_counter()
    detections = {}
    for name, (tables, stats) in sets.items():
        style, bound = StyleRecord.from_stats(stats), CandidateBound(**stats["candidates"])
        detections[name] = join_tables([postprocess_table(t, post, style, model, bound) for t in tables])
    postprocessed = time.perf_counter()
    clean = detections["clean"]
    clean_rows = split_rows(clean, dataset, split, model)
    document = scored_document(coco_document(dataset, split), labels, scoring.categories)
    report = evaluate_detections(document, coco_results(clean, clean_rows, categories), scoring.count_threshold,
                                 scoring.ap)
    grid_document = scored_document(coco_document(dataset, config.split), labels, scoring.categories)
    grid_rows = split_rows(clean, dataset, config.split, model)
    cells = {}
    for name, table in detections.items():
        if name == "clean":
            continue
        rows = split_rows(table, dataset, config.split, model)
        found = map_and_map50(coco_from_document(grid_document),
                              results_from_arrays(*result_arrays(table, rows, categories)), owned=True, ap=scoring.ap)
        cells[name] = {"mAP": found[0], "mAP50": found[1],
                       "consistency": consistency(clean, grid_rows, table, rows, scoring.count_threshold)}
    seconds = time.perf_counter() - started
    out.write_text(json.dumps({"seconds": seconds, "postprocess_seconds": postprocessed - started,
                               "scoring_seconds": seconds - (postprocessed - started), "sets": len(detections),
                               "images": int(sum(len(t) for t in detections.values())),
                               "clean": {"mAP": report.stats["mAP"], "mAP50": report.stats["mAP50"]},
                               "cells": cells}, indent=1))
    print(f"post-processing + scoring of {len(detections)} sets alone: {seconds:.1f} s "
          f"(post-processing {postprocessed - started:.1f} s)")


if __name__ == "__main__":
    main()
