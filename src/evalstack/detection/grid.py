"""The detection corruption grid, in the protocol of COCO-C (Michaelis et al. 2019, "Benchmarking
Robustness in Object Detection"): ImageNet-C corruption types at severities 1–5, applied to the
**original** image before letterboxing, ground truth unchanged.

One cell = one (type, severity) = a candidates layer `<out>/<type>-<severity>`, one shard per
letterboxed shard, holding the grid split's images. A cell shard is computed from the original
images of the raw shard its letterboxed shard came from: decode → perturb (deterministic per
image content, type, severity and seed) → letterbox with the same pipeline → forward pass →
candidates. It is addressed in the shard store by (letterboxed shard, split, model signature,
pipeline, perturbation type, severity, seed, code — the corruption's own code included), so adding a type or a
severity computes only the new cells and a forced rerun computes nothing.

The clean baseline is never recomputed: the clean candidates come from the infer stage's layer
(checked to be this model's, with this pipeline, covering the grid split), and the letterboxed
layer gives every image's placement and position. Clean forward passes stay N (recorded by infer),
perturbed forward passes are N·P·I; every cell's index records its own count.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import h5py
import numpy as np
from tqdm import tqdm

from evalstack.cache.incremental import DerivedLayerSpec, LayerBuild, ShardContent, build_derived_layer
from evalstack.cache.shardstore import ShardStore
from evalstack.core.fingerprint import code_part, defining_module, runtime_part
from evalstack.core.keys import Key, sha256_file
from evalstack.core.kinds import CANDIDATES_KIND, PREPROCESSED_KIND, RAW_KIND
from evalstack.core.layers import ITEM_KEY, CacheStaleError, Layer, ShardInfo, read_column, remove_other_layers
from evalstack.core.raw import read_blobs
from evalstack.detection.candidates import (
    GridInputError,
    SplitRows,
    candidates_code,
    candidates_key,
    candidates_stats,
    infer_rows,
    letterboxed_rows,
    open_candidates,
)
from evalstack.preprocess import perturbations as perturb
from evalstack.preprocess.letterbox import LetterboxPipeline
from evalstack.preprocess.modes import decode_rgb
from evalstack.preprocess.perturbations import PERTURBATION_RUNTIME, Cell
from evalstack.sources.images import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:  # the stage loads the adapter (a framework); this module only calls it
    from evalstack.detection.adapter import DetectionAdapter


@dataclass(frozen=True)
class GridConfig:
    types: tuple[str, ...]
    severities: tuple[int, ...]
    seed: int = 0
    split: str = "val"

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> "GridConfig":
        config = cls(
            types=tuple(str(t) for t in section.get("types") or ()),
            severities=tuple(int(s) for s in section.get("severities") or ()),
            seed=int(section.get("seed", 0)),
            split=str(section.get("split", "val")),
        )
        if not config.types or not config.severities:
            raise GridInputError("grid.types and grid.severities must not be empty")
        if len(set(config.types)) != len(config.types) or len(set(config.severities)) != len(config.severities):
            raise GridInputError("grid.types and grid.severities must not repeat an entry")
        for kind in config.types:
            for severity in config.severities:
                perturb.check(kind, severity)
        return config

    def cells(self) -> list[Cell]:
        return [Cell(kind, severity) for kind in self.types for severity in self.severities]


def perturbation_parts(cell: Cell, seed: int) -> dict[str, Any]:
    # No version to bump: the perturbation's code is in the cell key's code fingerprint (perturbations.py is in
    # this module's import closure).
    return {"type": cell.kind, "severity": cell.severity, "seed": seed}


def cell_key(clean: Key, cell: Cell, seed: int, code: dict[str, str]) -> Key:
    """The clean candidates' key (model, candidate bound, pipeline, infer code) + the perturbation + `grid_code`."""
    return Key("detection_grid_cell", {"clean": dict(clean.parts), "perturbation": perturbation_parts(cell, seed),
                                       "code": code, "runtime": runtime_part(*PERTURBATION_RUNTIME)})


def grid_code(adapter_class: type) -> dict[str, str]:
    """This stage's closure (the corruptions and the letterbox included) and the adapter's module."""
    return code_part(defining_module(adapter_class), __name__)


@dataclass(frozen=True)
class GridBuild:
    model: str
    split: str
    cells: dict[str, LayerBuild]
    clean_forward_passes: int  # behind the clean baseline of the split: run once, by infer, recorded in its index
    forward_passes: int  # run by this build: all of them perturbed


def build_grid(
    raw_dir: Path, preprocessed_dir: Path, clean_dir: Path, out_dir: Path, adapter: DetectionAdapter,
    pipeline: LetterboxPipeline, config: GridConfig, store: ShardStore | None = None, batch_size: int = 32,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> GridBuild:
    """Every cell of the grid for one model, as candidates layers under `out_dir/<type>-<severity>`."""
    source = Layer.open(preprocessed_dir, kind=PREPROCESSED_KIND)
    name = adapter.spec.name
    if pipeline.cache_key().hex != source.key.hex:
        raise CacheStaleError(f"{preprocessed_dir} was letterboxed with other settings than pipeline "
                              f"{adapter.spec.pipeline} now has; rebuild it with `dvc repro`")
    clean_key = candidates_key(adapter.signature(), source.key, candidates_code(type(adapter)), batch_size)
    clean = open_candidates(clean_dir, clean_key, f"dvc repro infer@{name}")
    by_split = clean.index.stats.get("forward_passes_by_split", {})
    if config.split not in by_split:
        raise GridInputError(f"{clean_dir} holds splits {sorted(by_split)}, not the grid's {config.split!r}; "
                             f"infer covers grid.split once it reruns: `dvc repro`")
    raw = Layer.open(raw_dir, kind=RAW_KIND)
    selected = SplitRows(source, [config.split])
    sha256 = store.stamps.sha256 if store is not None else sha256_file
    passes_before, code = adapter.forward_passes, grid_code(type(adapter))
    builds = {}
    for cell in config.cells():
        stats = {**candidates_stats(adapter, selected), "perturbation": perturbation_parts(cell, config.seed)}
        labels = {"clean": f"model {name} (clean candidates)", "perturbation": "perturbation", "code": "code"}
        spec = DerivedLayerSpec(CANDIDATES_KIND, cell_key(clean.key, cell, config.seed, code),
                                f"model {name} under {cell.kind} severity {cell.severity}", labels, "forward_passes",
                                stats=stats)
        compute = _cell_compute(adapter, pipeline, cell, config.seed, selected, raw, sha256, batch_size, max_pixels)
        builds[cell.name] = build_derived_layer(source, out_dir / cell.name, spec, compute, store,
                                                selection=selected.selection)
    remove_other_layers(out_dir, set(builds))
    return GridBuild(name, config.split, builds, int(by_split[config.split]), adapter.forward_passes - passes_before)


def _cell_compute(adapter: DetectionAdapter, pipeline: LetterboxPipeline, cell: Cell, seed: int, selected: SplitRows,
                  raw: Layer, sha256, batch_size: int, max_pixels: int):
    raw_shards = {shard.sha256: shard for shard in raw.shards}
    attrs = {"perturbation": perturbation_parts(cell, seed)}

    def compute(shard: ShardInfo, path: Path, progress: tqdm) -> ShardContent:
        rows = selected.rows(shard)
        with h5py.File(path, "r") as handle:
            meta = letterboxed_rows(handle, rows)
        raw_shard = raw_shards.get(shard.upstream or "")
        if raw_shard is None:
            raise CacheStaleError(f"{path} was letterboxed from a raw shard that {raw.directory} no longer holds; "
                                  "rebuild it with `dvc repro`")
        with h5py.File(raw.check_shard(raw_shard, sha256), "r") as handle:
            keys = read_column(handle, ITEM_KEY)[rows]
            blobs = read_blobs(handle, slice(0, raw_shard.n_items))
        if [_text(k) for k in keys] != [_text(k) for k in meta[ITEM_KEY]]:
            raise CacheStaleError(f"{path} and its raw shard list different images; rebuild it with `dvc repro`")

        def batches() -> Iterator[np.ndarray]:
            for start in range(0, len(rows), batch_size):
                chunk = range(start, min(start + batch_size, len(rows)))
                yield np.stack([_perturbed_input(blobs[rows[i]], _text(meta[ITEM_KEY][i]), cell, seed,
                                                 pipeline, max_pixels, f"{meta['split'][i]} image {meta['id'][i]}")
                                for i in chunk])
                progress.update(len(chunk))

        content = infer_rows(adapter, batches(), meta, attrs)
        progress.update(shard.n_items - len(rows))
        return content

    return compute


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _perturbed_input(blob: bytes, item_key: str, cell: Cell | None, seed: int, pipeline: LetterboxPipeline,
                     max_pixels: int, what: str) -> np.ndarray:
    """Decode the original, corrupt it (COCO-C: before any resizing), letterbox it like the clean image.
    The decode is the clean path's (`decode_rgb`), so `cell=None` (no corruption) gives the clean input."""
    original = decode_rgb(blob, max_pixels, what)
    corrupted = original if cell is None else perturb.perturb(original, cell.kind, cell.severity, item_key, seed)
    return pipeline.letterbox(corrupted)

