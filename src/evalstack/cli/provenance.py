"""Where a layer or an item came from, and why its last build recomputed what it did.

`why` reads the build record the store keeps for each layer directory. `provenance`
walks a layer's shards upstream by sha256 (predictions → preprocessed → raw) through
the layers in the workspace, so it needs no paths recorded in the layers themselves.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evalstack.cache.dvcfiles import LOCK_NAME, workspace_layers
from evalstack.cache.shardstore import ShardStore
from evalstack.core.keys import Key, canonical_json, sha256_file
from evalstack.core.layers import INDEX_NAME, ITEM_KEY, Layer, ShardInfo, StoreError, read_column


def why_report(layer_dir: Path, store: ShardStore | None) -> list[str]:
    """What the last build of `layer_dir` computed, what it reused, and which key part changed."""
    layer_dir = Path(layer_dir)
    record = store.load_build(layer_dir) if store else None
    if record is None:
        where = store.directory if store else "(no store configured)"
        return [f"{layer_dir}: no build of it is recorded in the store {where} "
                "(built elsewhere and pulled, or the store was cleared); nothing to explain"]
    index = layer_dir / INDEX_NAME
    if not index.exists() or sha256_file(index) != record["index_sha256"]:
        return [
            f"{layer_dir}: not the output of its last local build — DVC restored it (run-cache, checkout "
            "or pull), so nothing was recomputed for it.",
            f"  last local build: {record['finished_at']}, {_counts_line(record['counts'])}",
        ]
    lines = [f"{layer_dir} — {record['label']}, built {record['finished_at']} ({_code_line(record['code'])})",
             f"  {_counts_line(record['counts'])}"]
    since = _PREVIOUS.get(record["previous_build"])
    if since is None:
        lines.append("  no earlier version of this layer was found (first build here)")
    elif record["key_changes"]:
        lines.append(f"  key changed since {since}:")
        lines.extend(f"    {change}" for change in record["key_changes"])
    else:
        lines.append(f"  key unchanged since {since}")
    lines.extend(_computed_lines([shard for shard in record["shards"] if shard["computed"]]))
    return lines


def _computed_lines(shards: list[dict[str, Any]]) -> list[str]:
    """One line per run of consecutive shards computed for the same reason."""
    runs: list[tuple[str, list[str]]] = []
    for shard in shards:
        verb = "fetched" if shard["upstream"] is None else "computed"
        reason = f"{verb} {{names}}: {'; '.join(shard['reasons'])}"
        if runs and runs[-1][0] == reason:
            runs[-1][1].append(shard["name"])
        else:
            runs.append((reason, [shard["name"]]))
    return [
        "  " + reason.format(names=names[0] if len(names) == 1 else f"{names[0]} … {names[-1]} ({len(names)} shards)")
        for reason, names in runs
    ]


_PREVIOUS = {
    "store": "the previous build here",
    "layer": "the version that was in place",
    "dvc.lock": "the version dvc.lock records",
}


def _counts_line(counts: dict[str, int]) -> str:
    line = (f"{counts['shards']} shards: {counts['shards_computed']} computed ({counts['items_computed']} items), "
            f"{counts['shards_reused']} reused from the store")
    return line + (f", {counts['shards_seeded']} seeded from DVC-tracked outputs" if counts.get("shards_seeded") else "")


def _code_line(code: dict[str, Any]) -> str:
    text = f"evalstack {code.get('evalstack', '?')}"
    if code.get("git_commit"):
        text += f", git {code['git_commit'][:12]}{' with uncommitted edits' if code.get('git_dirty') else ''}"
    return text


@dataclass(frozen=True)
class Located:
    layer: Layer
    shard: ShardInfo


def provenance_report(layer_dir: Path, root: Path, store: ShardStore | None, item: str | None = None) -> list[str]:
    """The chain source → raw → pipeline → model → code for a layer, or for one of its items."""
    chain = _chain(Layer.open(layer_dir), root)
    raw = chain[-1]
    lines = []
    row_of: dict[str, tuple[Located, int]] = {}
    if item is not None:
        key = _find_item(raw, item)
        row_of = {str(layer.directory): _locate(layer, key) for layer in chain}
        located, row = row_of[str(raw.directory)]
        with raw.open_shard(located.shard) as handle:
            meta = {name: read_column(handle, name, slice(row, row + 1))[0] for name in ("id", "image_name", "split", "url", "hashlib_md5")}
        lines.append(f"item {meta['image_name']} (id {meta['id']}, split {meta['split']})")
        registry = raw.key.parts.get("registries", {}).get(meta["split"], "the registry")
        lines.append(f"  source    {meta['url']} (listed in {registry})  md5 {meta['hashlib_md5']} (checked when fetched)")
        lines.append(f"  raw       {_shown(raw.path(located.shard), root)} row {row}; item key (sha256 of the image bytes) {key}")
    else:
        lines.append(f"{_shown(layer_dir, root)} ({chain[0].index.kind}, {len(chain[0])} items in {len(chain[0].shards)} shards)")
        parts = raw.key.parts
        lines.append(f"  source    {canonical_json(parts.get('registries', {}))}")
        lines.append(f"  raw       {_shown(raw.directory, root)}: shard_bytes {parts.get('shard_bytes')}, key {raw.key.hex[:12]}")
    for layer in reversed(chain[:-1]):
        where = _shown(layer.directory, root)
        if item is not None:
            located, row = row_of[str(layer.directory)]
            where = f"{_shown(layer.path(located.shard), root)} row {row}"
        lines.append(_layer_line(layer, where, row_of.get(str(layer.directory))))
    lines.append(f"  code      {_layer_code(chain[0], root, store)}")
    return lines


def _layer_line(layer: Layer, where: str, located: tuple[Located, int] | None) -> str:
    parts = layer.key.parts
    if layer.index.kind == "predictions":
        model = parts["model"]
        text = (f"  model     {where}: {model.get('framework')} weights sha256 {model.get('weights_sha256', '')[:12]}, "
                f"input {model.get('input_shape')} {model.get('input_dtype')}, {len(model.get('labels', []))} labels; "
                f"signature {Key('model', model).hex[:12]}")
        if located is not None:
            with layer.open_shard(located[0].shard) as handle:
                label = int(read_column(handle, "label", slice(located[1], located[1] + 1))[0])
                probability = float(read_column(handle, "probability", slice(located[1], located[1] + 1))[0])
            text += f"; predicted {model['labels'][label]} (p={probability:.3f})"
        return text
    code = parts.get("code") or {}
    return (f"  pipeline  {where}: {parts.get('kind')} {canonical_json(parts.get('params', {}))}; "
            f"code {Key('code', code).hex[:12]} ({len(code)} modules); key {layer.key.hex[:12]}")


def _shown(path: Path, root: Path) -> str:
    """A path relative to the project root when it lies inside it."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _chain(layer: Layer, root: Path) -> list[Layer]:
    """The layer and its upstream layers down to the raw layer, matched by shard sha256."""
    by_sha: dict[str, Layer] = {}
    for directory in workspace_layers(root):
        try:
            candidate = Layer.open(directory)
        except StoreError:
            continue
        by_sha.update({shard.sha256: candidate for shard in candidate.shards})
    chain = [layer]
    while chain[-1].index.kind != "raw":
        upstream = next((s.upstream for s in chain[-1].shards if s.upstream), None)
        if upstream not in by_sha:
            raise StoreError(f"the layer {chain[-1].directory} was derived from is not in the workspace "
                             "(`dvc pull` or `dvc repro` it)")
        chain.append(by_sha[upstream])
    return chain


def _find_item(raw: Layer, item: str) -> str:
    """An item key from a key prefix, a source id or an image name."""
    keys = raw.item_keys()
    matches = [k for k in keys if k.startswith(item.lower())] if len(item) >= 8 else []
    if not matches:
        for column in ("id", "image_name"):
            values = raw.column(column).astype(str)
            matches = [str(k) for k, v in zip(keys, values) if v == item]
            if matches:
                break
    if len(set(matches)) != 1:
        raise StoreError(f"item {item!r}: {'ambiguous' if matches else 'not found'} in {raw.directory} "
                         "(give an item key prefix of 8+ hex digits, a source id or an image name)")
    return matches[0]


def _locate(layer: Layer, key: str) -> tuple[Located, int]:
    for shard in layer.shards:
        with layer.open_shard(shard) as handle:
            rows = np.flatnonzero(read_column(handle, ITEM_KEY).astype(str) == key)
        if len(rows):
            return Located(layer, shard), int(rows[0])
    raise StoreError(f"item {key[:12]} is not in {layer.directory}")


def _layer_code(layer: Layer, root: Path, store: ShardStore | None) -> str:
    record = store.load_build(layer.directory) if store else None
    if record and record["index_sha256"] == sha256_file(layer.directory / INDEX_NAME):
        return f"{_code_line(record['code'])} (this layer's build here, {record['finished_at']})"
    commit = subprocess.run(["git", "log", "-1", "--format=%h %cs", "--", LOCK_NAME], cwd=root,
                            capture_output=True, text=True).stdout.strip()
    where = f"; {LOCK_NAME} last committed in git {commit}" if commit else ""
    return f"built elsewhere (DVC restored or pulled it){where}"
