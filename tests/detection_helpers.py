"""Shared pieces of the detection tests: a tiny untrained detector, a small COCO project, infer + postprocess."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from evalstack.config import ModelSpec
from evalstack.demo.training.detector import ShapesDetector, export_detector
from evalstack.detection.adapter import DetectionAdapter, PostProcess
from evalstack.detection.boxes import Candidates
from evalstack.detection.candidates import infer_candidates_layer
from evalstack.detection.postprocess import postprocess_layer
from evalstack.preprocess.letterbox import LetterboxPipeline, letterbox_layer
from evalstack.sources.coco import CocoFetchConfig, fetch_coco_layer
from tests.coco_fixture import write_coco

LABELS = ("circle", "square")
SIZE = 32


def export_tiny_detector(path: Path, n_classes: int = len(LABELS), seed: int = 0) -> Path:
    """An untrained detector (random weights, fixed by `seed`): outputs are arbitrary but deterministic."""
    torch.manual_seed(seed)
    export_detector(ShapesDetector(n_classes, width=8).eval(), SIZE, path)
    return path


def spec(file: Path, labels: tuple[str, ...] = LABELS, **options) -> ModelSpec:
    return ModelSpec(name="det", file=file, adapter="torch_detection", pipeline="lb32", labels=labels, task="detect",
                     options=options, trust=True)  # the tests export it themselves


def coco_project(root: Path, doc: dict | None = None, shard_size: int = 2, split: str = "val") -> Path:
    """root/raw (COCO raw layer) and root/pre (letterboxed to SIZE) from the hand-made fixture (or `doc`)."""
    entry = write_coco(root / "src", doc, split=split)
    fetch_coco_layer(CocoFetchConfig({split: entry}, shard_size=shard_size), root / "raw")
    letterbox_layer(root / "raw", root / "pre", LetterboxPipeline(resize=SIZE))
    return root


def infer_and_postprocess(root: Path, adapter: DetectionAdapter, out: str = "det", store=None,
                          post: PostProcess | None = None, splits: tuple[str, ...] = ("val",)):
    """(candidates build, detections build): root/<out>.cand and root/<out>."""
    candidates = infer_candidates_layer(root / "pre", root / f"{out}.cand", adapter, list(splits), batch_size=2,
                                        store=store)
    detections = postprocess_layer(root / f"{out}.cand", root / out, post or adapter.postprocess, store)
    return candidates, detections


def assert_same_candidates(a: Candidates, b: Candidates, atol: float = 1e-4) -> None:
    """The same candidates within `atol` (two runtimes' floats): equal counts and sorted scores, and each of `a`
    has its own partner in `b` with the same label and box. Candidates whose scores differ by less than the
    runtimes' rounding may come in either order, so the order is not compared beyond the scores."""
    assert len(a) == len(b), f"{len(a)} candidates against {len(b)}"
    np.testing.assert_allclose(a.scores, b.scores, atol=atol)
    close = ((a.labels[:, None] == b.labels[None, :]) & (np.abs(a.scores[:, None] - b.scores[None, :]) <= atol)
             & (np.abs(a.boxes[:, None, :] - b.boxes[None, :, :]) <= atol).all(axis=2))
    taken = np.zeros(len(b), dtype=bool)
    for row in range(len(a)):
        free = np.flatnonzero(close[row] & ~taken)
        assert len(free), f"candidate {row} ({a.labels[row]}, {a.boxes[row]}, {a.scores[row]}) has no partner"
        taken[free[0]] = True
