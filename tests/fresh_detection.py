"""A detection profile's predictions and grid computed from nothing, in a fresh process (what a stage does):
infer → postprocess → grid → scoring, without the shard store. The e2e tests compare its bytes with what
`dvc repro` left in the project. A fresh process, because the test process has imported other frameworks
(TensorFlow sets the CPU's flush-to-zero mode for its threads), which can change a float's last bit.

    python tests/fresh_detection.py <detection dir> <model> <out dir>   → <out dir>/{cand,det,grid,gridpp,summary.json}
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from evalstack.config import load_params, model_spec
from evalstack.detection.adapter import load_detector
from evalstack.detection.candidates import infer_candidates_layer
from evalstack.detection.evaluation import Scoring
from evalstack.detection.grid import GridConfig, build_grid
from evalstack.detection.postprocess import postprocess_layer
from evalstack.detection.robustness import score_grid
from evalstack.preprocess.letterbox import build_letterbox


def main() -> None:
    det, name, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    params = load_params(det / "params.yaml")
    spec = model_spec(params, name, root=det)
    adapter = load_detector(spec)
    preprocessed = det / "data/preprocessed" / spec.pipeline
    batch_size = int((params.get("infer") or {}).get("batch_size", 32))  # the stages' own
    infer_candidates_layer(preprocessed, out / "cand", adapter, ["val"], batch_size)
    postprocess_layer(out / "cand", out / "det", adapter.postprocess)
    config = GridConfig.from_params(params["grid"])
    pipeline = build_letterbox(params["preprocess"]["pipelines"][spec.pipeline])
    build_grid(det / "data/raw", preprocessed, out / "cand", out / "grid", adapter, pipeline, config,
               batch_size=batch_size)
    fresh = score_grid(det / "data/raw", out / "det", out / "grid", out / "gridpp", spec, adapter.postprocess, config,
                       Scoring.from_params(params["evaluate"]))
    (out / "summary.json").write_text(json.dumps(fresh.summary()))


if __name__ == "__main__":
    main()
