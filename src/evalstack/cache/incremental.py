"""Derived layers built shard by shard through the shard store: compute only what is new.

A derived shard depends on exactly one upstream shard. Before computing it the
stage looks up (upstream sha256, layer key, format) in the store and copies a hit
into place. Every build leaves a record in the store — per shard: computed or
reused, and why — which `evalstack why` prints. The record stays out of the layer
on purpose: a layer is a pure function of its inputs, so an incremental build and
a from-scratch build are byte-identical and DVC sees no change between them.
"""
from __future__ import annotations

import os
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
from tqdm import tqdm

from evalstack.cache.dvcfiles import locked_layer_for, shard_files
from evalstack.cache.executors import Executor, LocalExecutor, OutputFormat, ShardJob, derive_shard, key_code
from evalstack.cache.shardstore import ShardStore, derivation_key
from evalstack.cache.storejobs import key_json, output_entry
from evalstack.cache.tracked import check_code_tracked
from evalstack.core.keys import Key, explain_change, sha256_file
from evalstack.core.layers import INDEX_NAME, Layer, LayerIndex, LayerWriter, ShardInfo, StoreError, remembered_checks


@dataclass(frozen=True)
class ShardContent:
    """What computing one derived shard yields; `checksum_of` names the columns hashed per item."""

    columns: dict[str, np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)
    checksum_of: tuple[str, ...] = ()
    flat: dict[str, np.ndarray] = field(default_factory=dict)  # ragged data addressed by offset columns


@dataclass(frozen=True)
class DerivedLayerSpec:
    kind: str
    key: Key
    label: str  # how `why` names the stage: "pipeline pad_nn", "model torch_cnn"
    key_labels: Mapping[str, str]  # key part → label ("" = the whole key), for explanations
    work: str  # what computing one item costs, recorded as a count: items_preprocessed, forward_passes
    compression: str = "none"
    stats: Mapping[str, Any] = field(default_factory=dict)  # more index stats the layer kind records


@dataclass(frozen=True)
class LayerBuild:
    index: LayerIndex
    record: dict[str, Any]

    @property
    def counts(self) -> dict[str, int]:
        return self.record["counts"]

    def summary(self) -> str:
        counts = self.counts
        return (
            f"{self.record['label']}: {self.index.n_items} items in {counts['shards']} shards; computed "
            f"{counts['shards_computed']} ({counts['items_computed']} items), reused {counts['shards_reused']} from the store"
        )


ComputeShard = Callable[[ShardInfo, Path, tqdm], ShardContent]
SelectItems = Callable[[ShardInfo], str]  # digest of the upstream shard's items a shard is built from


def build_derived_layer(
    upstream: Layer,
    out_dir: Path,
    spec: DerivedLayerSpec,
    compute: ComputeShard,
    store: ShardStore | None,
    executor: Executor | None = None,
    selection: SelectItems | None = None,
) -> LayerBuild:
    """One shard per upstream shard, same names; each reused from the store or computed (by
    `executor`, in this process by default) and put there. The index lists shards in upstream order.

    A shard built from a subset of its upstream's items (one split) names that subset
    through `selection`, so its address changes when the subset does."""
    out_dir = Path(out_dir)
    check_code_tracked(key_code(spec.key.parts))  # under dvc repro: the stage's deps cover its code
    previous, seeded = start_build(store, out_dir, spec.kind)
    log = BuildLog(spec.kind, spec.key, spec.label, spec.key_labels, spec.work, previous)
    log.seeded = seeded
    writer = LayerWriter(out_dir, spec.kind, spec.key, spec.compression)
    fmt = OutputFormat(spec.kind, spec.key, spec.compression)
    checks = remembered_checks(store.stamps if store is not None else None)
    with tqdm(total=len(upstream), desc=spec.label, unit="item") as progress:
        jobs, hits = [], {}
        for shard in upstream.shards:
            # a damaged input is refused, even when its result is stored
            path = upstream.check_shard(shard, **checks)
            subset = selection(shard) if selection is not None else None
            address = derivation_key(shard.sha256, spec.key, spec.compression, subset).hex
            # absolute: a worker of an existing cluster runs in its own directory (same filesystem, same paths)
            job = ShardJob(shard, path.absolute(), writer.path(shard.name).absolute(), address)
            if store is not None and store.materialise(job.address, job.out_path) is not None:
                hits[shard.name] = job
                progress.update(shard.n_items)
            jobs.append(job)
        misses = [job for job in jobs if job.upstream.name not in hits]
        executor = executor or LocalExecutor()
        # an executor whose workers share only the object store puts what it yields there itself
        put_by_executor = bool(getattr(executor, "puts_outputs", False))
        if put_by_executor and getattr(executor, "store", None) is not store:
            raise ValueError("the executor publishes shards to another store than the one this layer is built with")
        with _UpstreamReads(upstream, store, checks) as reads:
            if put_by_executor:  # its workers publish what they compute: every input is read before they start
                for job in misses:
                    _read_before_computing(upstream, job, store, checks)
            else:  # read beside the computation; a result is kept only once its input was read (`next_checked`)
                reads.start(misses)
            reads.computing(executor.run(compute, misses, fmt, progress))
            for job in jobs:
                reused = _register_reused(store, job, writer) if job.upstream.name in hits else None
                if reused is not None:
                    log.add(reused, job.upstream, computed=False)
                    continue
                # a miss, in order; or a stored entry that did not describe itself as this shard (or was removed
                # meanwhile)
                if job.upstream.name in hits:
                    _read_before_computing(upstream, job, store, checks)
                    info = derive_shard(compute, job, fmt, progress)
                else:
                    info = reads.next_checked(job)
                writer.add_existing(info.name, info.sha256, upstream=job.upstream.sha256)
                if store is not None and not (put_by_executor and job.upstream.name not in hits):
                    store.stamps.remember(job.out_path, info.sha256)
                    entry = output_entry(spec.kind, key_json(spec.key), job.address, job.upstream, info,
                                         job.out_path.stat().st_size)
                    store.put(entry, job.out_path)
                log.add(info, job.upstream, computed=True)
    writer.stats = {**spec.stats, spec.work: sum(shard.n_items for shard in writer.shards)}
    index = writer.finish()
    if store is not None:  # with a remote: upload what is pending, trim the local cache (never these shards)
        store.finish_stage({s.sha256 for s in index.shards} | {s.sha256 for s in upstream.shards})
    return LayerBuild(index, log.finish(out_dir, store))


def _read_before_computing(upstream: Layer, job: ShardJob, store: ShardStore | None,
                           checks: Mapping[str, Callable[[Path], Any]]) -> None:
    """Check the upstream shard a result is about to be computed from by its bytes, not by its remembered stamp:
    the result is stored under the sha256 the index records, so one computed from a damaged file whose size and
    mtime were kept would be taken by every checkout sharing the store (without a store, `check_shard` read
    every byte already)."""
    if store is not None:
        upstream.check_shard(job.upstream, store.stamps.sha256_read_here, checks.get("item_count"))


class _UpstreamReads:
    """The upstream shards of the shards to compute, read in full (`_read_before_computing`) in a thread beside
    the computation, in job order: at 8,001 cards a preprocess stage reads 11 GB of raw shards, ~9 s when it was
    done before the computation started. The result of a shard is written into the layer and the store only
    once its input was read and matched the index, so nothing computed from a damaged input is kept; a
    computation that fails reports the damage of an input rather than what the damaged bytes made it raise."""

    def __init__(self, upstream: Layer, store: ShardStore | None, checks: Mapping[str, Callable[[Path], Any]]):
        self.upstream, self.store, self.checks = upstream, store, checks
        self.pending: dict[str, Future] = {}
        self.results: Iterator[ShardInfo] | None = None

    def __enter__(self) -> "_UpstreamReads":
        return self

    def __exit__(self, *exc_info) -> None:
        # A build that stopped (a damaged input, a failed write) ends the computation now, not at exit: an
        # executor stops its workers when its results are closed, else they compute on until the interpreter ends.
        if self.results is not None:
            self.results.close()
        for read in self.pending.values():
            read.cancel()

    def start(self, jobs: list[ShardJob]) -> None:
        if self.store is None or not jobs:
            return  # without a store `check_shard` read every byte already
        # One thread: reading and hashing (~1.2 GB/s, the GIL released) outpaces any shard computation here.
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evalstack-upstream-read")
        self.pending = {job.upstream.name: pool.submit(_read_before_computing, self.upstream, job, self.store,
                                                       self.checks) for job in jobs}
        pool.shutdown(wait=False)

    def computing(self, results: Iterator[ShardInfo]) -> None:
        self.results = results

    def next_checked(self, job: ShardJob) -> ShardInfo:
        """The next computed result, once `job`'s input was read and found to be what the index records."""
        assert self.results is not None
        try:
            info = next(self.results)
        except Exception:
            self._raise_damaged_input()
            raise
        read = self.pending.pop(job.upstream.name, None)
        if read is not None:
            read.result()
        return info

    def _raise_damaged_input(self) -> None:
        """The first damaged input in job order, if any: a pool reports a failed shard when it fails, which need
        not be the turn of the job whose input is damaged, so every read is waited for (they outpace the
        computation: most are done)."""
        for read in self.pending.values():
            error = read.exception()
            if error is not None:
                raise error


def _register_reused(store: ShardStore | None, job: ShardJob, writer: LayerWriter) -> ShardInfo | None:
    entry = store.get(job.address) if store is not None else None
    if entry is None:
        return None
    try:
        return writer.add_existing(job.out_path.name, entry.sha256, upstream=job.upstream.sha256)
    except StoreError:  # an entry that does not describe itself as this shard: drop it, compute instead
        store.remove(entry)
        job.out_path.unlink(missing_ok=True)
        return None


def start_build(store: ShardStore | None, out_dir: Path, kind: str) -> tuple[dict[str, Any] | None, int]:
    """Before a layer is (re)built: the previous version to explain changes against, and how
    many of its shards were put into the store.

    The previous version is the store's record of the last build here or, failing that
    (a fresh clone), the layer itself — still in `out_dir` when nothing removed it, else
    the version `dvc.lock` records, read from DVC's cache. Seeding the store from those
    shards is what lets a fresh clone that pulled its outputs reuse them.
    """
    previous = store.load_build(out_dir) if store else None
    seeded = 0
    for index, shards, immutable, source in previous_versions(out_dir, kind):
        if store is not None:
            seeded += store.seed(shards, kind, immutable)
        if previous is None:
            previous = _record_from_index(index, source)
    return previous, seeded


def previous_versions(out_dir: Path, kind: str) -> Iterator[tuple[LayerIndex, list[tuple[ShardInfo, Path]], bool, str]]:
    if (out_dir / INDEX_NAME).exists():
        try:
            layer = Layer.open(out_dir, kind=kind)
            yield layer.index, [(s, layer.path(s)) for s in layer.shards if layer.path(s).exists()], False, "layer"
        except StoreError:
            pass
    locked = locked_layer_for(out_dir)
    if locked is not None and locked.index.kind == kind:
        yield locked.index, shard_files(locked), locked.from_cache, "dvc.lock"


def _record_from_index(index: LayerIndex, source: str) -> dict[str, Any]:
    """A build record reconstructed from a layer index (derived shards have their upstream's item count)."""
    return {
        "source": source,
        "key": key_json(index.key) | {"hex": index.key.hex},
        "shards": [
            {"name": s.name, "sha256": s.sha256, "n_items": s.n_items, "upstream": s.upstream, "upstream_items": s.n_items}
            for s in index.shards
        ],
    }


class BuildLog:
    """What one build of a layer computed and reused, and why; saved in the store for `evalstack why`."""

    def __init__(self, kind: str, key: Key, label: str, key_labels: Mapping[str, str], work: str,
                 previous: dict[str, Any] | None):
        self.kind, self.key, self.label, self.work = kind, key, label, work
        self.previous = previous
        self.previous_shards = {s["name"]: s for s in (previous or {}).get("shards", [])}
        previous_key = (previous or {}).get("key")
        self.key_changes = (
            describe_key_change(previous_key["parts"], key.parts, key_labels)
            if previous_key and previous_key["hex"] != key.hex
            else []
        )
        self.shards: list[dict[str, Any]] = []
        self.seeded = 0

    def add(self, info: ShardInfo, upstream: ShardInfo | None, computed: bool) -> None:
        self.shards.append({
            "name": info.name,
            "sha256": info.sha256,
            "n_items": info.n_items,
            "upstream": upstream.sha256 if upstream else None,
            "upstream_items": upstream.n_items if upstream else None,
            "computed": computed,
            "reasons": self._reasons(info, upstream) if computed else [],
        })

    def _reasons(self, info: ShardInfo, upstream: ShardInfo | None) -> list[str]:
        if upstream is None:  # a source layer: say how the shard compares with the last build's
            before = self.previous_shards.get(info.name)
            if before is None:
                return ["read from the source: a new shard"]
            if before["sha256"] == info.sha256:
                return ["read from the source: same bytes as the last build"]
            return [f"read from the source: changed ({before['n_items']} → {_items(info.n_items)})"]
        if self.previous is None:
            return ["no earlier version of this layer was found (first build here)"]
        reasons = ["key changed (see above)"] if self.key_changes else []
        before = self.previous_shards.get(info.name)
        if before is None:
            reasons.append(f"new upstream shard ({_items(upstream.n_items)})")
        elif before["upstream"] != upstream.sha256:
            reasons.append(f"upstream shard changed ({before['upstream_items']} → {_items(upstream.n_items)})")
        return reasons or ["same inputs as the last build, but the store no longer holds the result "
                           "(removed by `evalstack gc`, or the store was cleared)"]

    def finish(self, out_dir: Path, store: ShardStore | None) -> dict[str, Any]:
        computed = [s for s in self.shards if s["computed"]]
        reused = [s for s in self.shards if not s["computed"]]
        record = {
            "layer": str(Path(out_dir).resolve()),
            "label": self.label,
            "kind": self.kind,
            "key": key_json(self.key) | {"hex": self.key.hex},
            "index_sha256": sha256_file(Path(out_dir) / INDEX_NAME),
            # what changes are explained against: the last build here ("store"), the layer that was
            # in place ("layer"), the version dvc.lock records ("dvc.lock"), or nothing (None)
            "previous_build": (self.previous.get("source", "store")) if self.previous else None,
            "key_changes": self.key_changes,
            "counts": {
                "shards": len(self.shards),
                "shards_computed": len(computed),
                "shards_reused": len(reused),
                "items_computed": sum(s["n_items"] for s in computed),
                "items_reused": sum(s["n_items"] for s in reused),
                self.work: sum(s["n_items"] for s in computed),
                "shards_seeded": self.seeded,
            },
            "shards": self.shards,
            "code": code_version(),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if store is not None:
            store.save_build(out_dir, record)
        return record


def describe_key_change(old: Mapping[str, Any], new: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    """`pipeline pad_nn: params.size: 454 → 384`, `model torch_cnn: weights changed (3f2a… → 9b1d…)`."""
    lines = []
    for part, label in labels.items():
        if part == "code":  # the stage's own code: "code: src/evalstack/models/inference.py changed"
            lines += explain_change({"code": old.get("code", {})}, {"code": new.get("code", {})})
            continue
        before = old if not part else old.get(part)
        after = new if not part else new.get(part)
        if not isinstance(before, (Mapping, type(None))) or not isinstance(after, (Mapping, type(None))):
            if before != after:  # a single value, e.g. the batch size: `infer.batch_size: 32 → 16`
                lines.append(f"{label}: {'none' if before is None else before} → {'none' if after is None else after}")
            continue
        for change in explain_change(before or {}, after or {}):
            if change.startswith("weights_sha256: "):
                change = f"weights changed ({change.removeprefix('weights_sha256: ')})"
            lines.append(f"{label}: {change}")
    return lines or ["key changed: " + "; ".join(explain_change(old, new))]


def code_version() -> dict[str, Any]:
    """evalstack's version and, when run inside a git checkout, its commit and whether it has edits."""
    return dict(_code_version(os.getcwd()))


@lru_cache(maxsize=8)
def _code_version(cwd: str) -> dict[str, Any]:
    # Once per process and folder: two git commands per layer cost ~20 ms each, and the robustness stage
    # builds a layer per grid cell. The build record is what a user reads back; it is in no key.
    version: dict[str, Any] = {"evalstack": _installed_version()}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=cwd)
        if commit.returncode == 0:
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10, cwd=cwd)
            version["git_commit"] = commit.stdout.strip()
            version["git_dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def _installed_version() -> str:
    try:
        return metadata.version("evalstack")
    except metadata.PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


def _items(n: int) -> str:
    return f"{n} item" if n == 1 else f"{n} items"

