"""The candidates layer: each image's raw detector candidates, what the detection infer stage
(and every corruption-grid cell) writes.

It holds everything post-processing needs and nothing that post-processing decides:
per image (one row) `item_key`, `id`, `split_code`, `cand_offset`, the letterbox
placement (to map boxes back to the original image) and a `checksum`; flat
`cand_boxes` (M, 4) float64 xyxy in model-input pixels, `cand_scores` (M,) float64
(descending per image) and `cand_labels` (M,) int64. Its key is the model signature
(weights, contract, candidate bound) + pipeline + code, without `confidence_threshold`,
`nms_iou` or `max_detections`: changing those reruns only detection/postprocess.py,
with no forward pass.

Only the splits that are evaluated (`evaluate.split`, `grid.split`) are inferred:
a shard keeps the rows of those splits, and the splits name the shard's address in
the store; training needs no predictions. The index records the forward passes per split.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import h5py
import numpy as np
from tqdm import tqdm

from evalstack.cache.incremental import DerivedLayerSpec, LayerBuild, ShardContent, build_derived_layer
from evalstack.cache.shardstore import ShardStore
from evalstack.core.fingerprint import code_part, defining_module
from evalstack.core.keys import Key, sha256_file
from evalstack.core.kinds import CANDIDATES_KIND, PREPROCESSED_KIND
from evalstack.core.layers import (
    CHECKSUM,
    ITEM_KEY,
    CacheStaleError,
    Layer,
    LayerCorruptError,
    ShardInfo,
    read_attr,
    read_column,
    repair_hint,
)
from evalstack.core.ragged import check_offsets, pack, ragged_checksums
from evalstack.detection.boxes import Candidates
from evalstack.detection.layer import Sha256, check_checksums, checksum_attr, split_codes
from evalstack.preprocess.letterbox import PLACEMENT_COLUMNS, Placement, placements

if TYPE_CHECKING:  # the stage loads the adapter (a framework); this module only calls it
    from evalstack.detection.adapter import DetectionAdapter

LAYOUT_VERSION = 1
FLAT = ("cand_boxes", "cand_scores", "cand_labels")



class GridInputError(ValueError):
    """The layers a detection stage reads do not fit together (another split, model or pipeline)."""


@dataclass(frozen=True)
class CandidateTable:
    """One shard's rows: image identity, placement, and the flat candidates they index."""

    item_keys: np.ndarray  # S64
    ids: np.ndarray  # int64
    splits: np.ndarray  # str
    placement: dict[str, np.ndarray]  # PLACEMENT_COLUMNS → float64 per row
    offsets: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def candidates(self, row: int) -> Candidates:
        start = int(self.offsets[row])
        stop = int(self.offsets[row + 1]) if row + 1 < len(self.offsets) else len(self.labels)
        return Candidates(self.boxes[start:stop], self.labels[start:stop], self.scores[start:stop])

    def placements(self) -> list[Placement]:
        return placements(self.placement)

    @classmethod
    def build(cls, rows: Mapping[str, np.ndarray], found: Sequence[Candidates]) -> "CandidateTable":
        """From a letterboxed shard's rows (item_key, id, split, placement columns) and one Candidates per row."""
        boxes, offsets = pack([c.boxes for c in found], np.float64, (4,))
        return cls(
            item_keys=np.asarray(rows[ITEM_KEY], dtype="S64"), ids=np.asarray(rows["id"], dtype=np.int64),
            splits=np.asarray(rows["split"], dtype=str),
            placement={name: np.asarray(rows[name], dtype=np.float64) for name in PLACEMENT_COLUMNS},
            offsets=offsets, boxes=boxes, scores=pack([c.scores for c in found], np.float64)[0],
            labels=pack([c.labels for c in found], np.int64)[0],
        )


def candidates_key(model_signature: Key, pipeline_key: Key, code: dict[str, str], batch_size: int | None = None) -> Key:
    """Weights + contract (candidate bound included, post-processing excluded) + pipeline + `candidates_code` + the
    batch size (a framework's CPU kernels may round differently at another one: models/predictions.py)."""
    parts: dict = {"model": dict(model_signature.parts), "pipeline": dict(pipeline_key.parts), "code": code}
    if batch_size is not None:
        parts["batch_size"] = int(batch_size)
    return Key("detection_candidates", parts)


def candidates_code(adapter_class: type) -> dict[str, str]:
    """The code that turns tensors into candidates: this stage and the adapter's module (a user's own too)."""
    return module_candidates_code(defining_module(adapter_class))


def module_candidates_code(adapter_module: str) -> dict[str, str]:
    """`candidates_code` of the adapter class defined in `adapter_module`, without importing it."""
    return code_part(adapter_module, __name__)


def candidate_shard(table: CandidateTable, attrs: Mapping[str, Any]) -> ShardContent:
    codes, names = split_codes(table.splits)
    flat = {"cand_boxes": table.boxes, "cand_scores": table.scores, "cand_labels": table.labels}
    columns = {ITEM_KEY: table.item_keys, "id": table.ids, "split_code": codes, "cand_offset": table.offsets,
               **table.placement, CHECKSUM: ragged_checksums(table.offsets, [flat[name] for name in FLAT])}
    attrs = {**attrs, "split_names": names, "item_checksum": checksum_attr(FLAT, "cand_offset")}
    return ShardContent(columns, attrs, flat=flat)


def read_candidate_shard(handle: h5py.File, path: Path, layer_dir: Path) -> CandidateTable:
    """One shard's table, every image's checksum checked."""
    data = {name: read_column(handle, name) for name in ("id", "split_code", "cand_offset", CHECKSUM, *FLAT)}
    try:
        check_offsets(data["cand_offset"], len(data["cand_labels"]), str(path))
    except ValueError as error:
        raise LayerCorruptError(f"{error}; {repair_hint(layer_dir)}") from None
    check_checksums(path, layer_dir, data["id"], data["cand_offset"], [data[name] for name in FLAT], data[CHECKSUM])
    names = np.asarray(read_attr(handle, "split_names") or [""], dtype=str)
    return CandidateTable(
        item_keys=handle[ITEM_KEY][()], ids=data["id"], splits=names[data["split_code"]],
        placement={name: read_column(handle, name) for name in PLACEMENT_COLUMNS}, offsets=data["cand_offset"],
        boxes=data["cand_boxes"], scores=data["cand_scores"], labels=data["cand_labels"],
    )


def open_candidates(directory: Path | str, expected: Key | None = None, rebuild_hint: str = "dvc repro") -> Layer:
    layer = Layer.open(directory, kind=CANDIDATES_KIND)
    if layer.index.stats.get("layout") != LAYOUT_VERSION:
        raise CacheStaleError(f"{directory} has candidates layout {layer.index.stats.get('layout')}, this evalstack "
                              f"reads {LAYOUT_VERSION}; rebuild it with `{rebuild_hint}`")
    if expected is not None:
        layer.expect_key(expected, rebuild_hint)
    return layer


class SplitRows:
    """Which rows of each letterboxed shard belong to the wanted splits (read once per shard)."""

    def __init__(self, source: Layer, splits: Sequence[str]):
        self.source, self.splits = source, tuple(sorted(set(splits)))
        self._rows: dict[str, np.ndarray] = {}
        self.counts = {split: 0 for split in self.splits}
        present = set()
        for shard in source.shards:
            with source.open_shard(shard) as handle:
                names = read_column(handle, "split").astype(str)
            present.update(names.tolist())
            self._rows[shard.name] = np.flatnonzero(np.isin(names, self.splits))
            for split in self.splits:
                self.counts[split] += int(np.count_nonzero(names == split))
        missing = [split for split in self.splits if not self.counts[split]]
        if missing:
            raise GridInputError(f"{source.directory} has no images of split(s) {missing}; splits present: "
                                 f"{sorted(present)}")

    def rows(self, shard: ShardInfo) -> np.ndarray:
        return self._rows[shard.name]

    def selection(self, shard: ShardInfo) -> str:
        """What names the subset in a shard's address: the shard's content (in the address already) + the splits."""
        return "splits:" + ",".join(self.splits)


def evaluated_splits(params: Mapping[str, Any]) -> list[str]:
    """The splits anything downstream scores: evaluate.split and grid.split (training needs no predictions)."""
    splits = {str(params["evaluate"]["split"])}
    if params.get("grid"):
        splits.add(str(params["grid"].get("split", "val")))
    return sorted(splits)


def letterboxed_rows(handle: h5py.File, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Identity, split and placement of the given rows of an open letterboxed shard."""
    return {name: read_column(handle, name)[rows] for name in (ITEM_KEY, "id", "split", *PLACEMENT_COLUMNS)}


def infer_rows(adapter: DetectionAdapter, batches: Sequence[np.ndarray] | Any, rows: Mapping[str, np.ndarray],
               attrs: Mapping[str, Any]) -> ShardContent:
    """A candidates shard from model-ready batches (N, H, W, 3) covering `rows` in order."""
    found: list[Candidates] = []
    for batch in batches:
        found.extend(adapter.candidates_batch(batch))
    if len(found) != len(rows["id"]):
        raise ValueError(f"{len(found)} candidate lists for {len(rows['id'])} images")
    table = CandidateTable.build(rows, found)
    return candidate_shard(table, {**attrs, "model_signature": adapter.signature().hex, "forward_passes": len(found)})


def input_size(source: Layer) -> tuple[int, int]:
    """(H, W) of the model-ready arrays of a letterboxed layer (every item has the pipeline's size)."""
    for shard in source.shards:
        with source.open_shard(shard) as handle:
            return tuple(int(n) for n in handle["x"].shape[1:3])  # type: ignore[return-value]
    raise GridInputError(f"{source.directory} holds no shards")


def candidates_stats(adapter: DetectionAdapter, selected: SplitRows) -> dict[str, Any]:
    """The layer's metadata, with its post-processing style (detection/styles.py): postprocess follows it."""
    style = adapter.postprocess_style(input_size(selected.source))
    return {"layout": LAYOUT_VERSION, "model_name": adapter.spec.name, "model_hash": adapter.weights_sha256,
            "candidates": asdict(adapter.bound), "postprocess": style.to_stats(), "splits": list(selected.splits),
            "num_images": sum(selected.counts.values()),
            "forward_passes_by_split": dict(selected.counts)}


def infer_candidates_layer(
    preprocessed_dir: Path, out_dir: Path, adapter: DetectionAdapter, splits: Sequence[str], batch_size: int = 32,
    store: ShardStore | None = None,
) -> LayerBuild:
    """One candidates shard per letterboxed shard, holding the rows of `splits`; stored shards are reused.
    Batches start at each shard's first row, so a shard does not depend on what else ran."""
    source = Layer.open(preprocessed_dir, kind=PREPROCESSED_KIND)
    selected = SplitRows(source, splits)
    key = candidates_key(adapter.signature(), source.key, candidates_code(type(adapter)), batch_size)
    labels = {"model": f"model {adapter.spec.name}", "pipeline": f"pipeline {adapter.spec.pipeline}", "code": "code",
              "batch_size": "infer.batch_size"}
    spec = DerivedLayerSpec(CANDIDATES_KIND, key, f"model {adapter.spec.name}", labels, "forward_passes",
                            stats=candidates_stats(adapter, selected))

    def compute(shard: ShardInfo, path: Path, progress: tqdm) -> ShardContent:
        rows = selected.rows(shard)
        with h5py.File(path, "r") as handle:
            meta = letterboxed_rows(handle, rows)

            def batches():
                for start in range(0, len(rows), batch_size):
                    chunk = rows[start : start + batch_size]
                    # one contiguous read per batch, then the split's rows of it
                    yield read_column(handle, "x", slice(chunk[0], chunk[-1] + 1))[chunk - chunk[0]]
                    progress.update(len(chunk))

            content = infer_rows(adapter, batches(), meta, {})
        progress.update(shard.n_items - len(rows))
        return content

    return build_derived_layer(source, out_dir, spec, compute, store, selection=selected.selection)


def read_candidates_shard_checked(layer: Layer, shard: ShardInfo, sha256: Sha256 = sha256_file) -> CandidateTable:
    path = layer.check_shard(shard, sha256)
    with h5py.File(path, "r") as handle:
        return read_candidate_shard(handle, path, layer.directory)
