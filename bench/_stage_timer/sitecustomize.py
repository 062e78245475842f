"""Bench-only: where the time of a detection stage goes, without touching the product.

`bench/detection_grid.py` puts this folder on PYTHONPATH and sets BENCH_STAGE_TIMINGS=<file>;
Python imports `sitecustomize` at start-up, so in the stage processes DVC starts (infer, grid,
postprocess, robustness) the functions below are wrapped with a clock before the stage imports
them, and at exit one JSON line (stage, wall seconds, seconds per part) is appended to the file.
Every other process (dvc itself, git) is left alone.
"""
import atexit
import json
import os
import sys
import time

_STAGES = ("infer", "grid", "postprocess", "robustness")
_script = os.path.basename(sys.argv[0]) if sys.argv else ""
_target = os.environ.get("BENCH_STAGE_TIMINGS")

if _target and _script.removesuffix(".py") in _STAGES and "detection" in sys.argv[0]:
    _started = time.perf_counter()
    _seconds: dict = {}

    def _timed(owner, name: str, part: str) -> None:
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            begin = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                _seconds[part] = _seconds.get(part, 0.0) + time.perf_counter() - begin

        setattr(owner, name, wrapper)

    import evalstack.cache.executors as executors
    import evalstack.cache.shardstore as shardstore
    import evalstack.core.layers as layers
    import evalstack.detection.adapter as adapter
    import evalstack.detection.grid as grid
    import evalstack.models.adapters.torch_export as torch_export
    import evalstack.preprocess.perturbations as perturbations

    # the cache: writing shards (hash + fsync), listing them, the store, checking inputs, the index
    _timed(executors, "write_layer_shard", "cache: write shards")  # imported by name there, already bound
    _timed(layers.LayerWriter, "add_existing", "cache: list shards")
    _timed(layers.LayerWriter, "finish", "cache: write index")
    _timed(layers.Layer, "check_shard", "cache: check inputs")
    _timed(shardstore.ShardStore, "put", "cache: store put")
    _timed(shardstore.ShardStore, "materialise", "cache: store reuse")
    # the work
    _timed(torch_export.TorchAdapter, "_forward", "model forward")
    _timed(adapter, "centernet_candidates", "decode candidates")
    _timed(perturbations, "perturb", "perturb")
    _timed(grid, "_perturbed_input", "corrupted input (decode + perturb + letterbox)")

    def _report() -> None:
        line = {"stage": " ".join(sys.argv[1:4]), "script": _script, "wall": time.perf_counter() - _started,
                "seconds": _seconds}
        with open(_target, "a") as handle:
            handle.write(json.dumps(line) + "\n")

    atexit.register(_report)
