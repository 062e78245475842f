"""Derived shards computed by Dask workers that share nothing but the object store (`store.url`).

With `executor: dask` and a `store.url`, a task carries keys and the store's url, never a project
path: the upstream shard's ShardInfo (its sha256 names the blob to read), the output shard's name
and address, the output format, the compute, and the files the compute reads besides its upstream
shard (model weights) as content-addressed blobs. A worker opens the store itself, with credentials
from its own environment (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `~/.aws`, a profile): no
secret travels in a task, which Dask pickles and any scheduler can read. It downloads the upstream
blob into its own temp directory (sha256-checked), computes, writes the output shard there and
publishes it (`put_shard`: blob, then a create-only record). The client uploads every upstream
shard it submits first, and afterwards places each output from the store into the layer through
its local read-through cache (checked), so the layer is assembled exactly as on one machine and
is byte-identical to the local executor's.

A worker needs the store: one it cannot reach is an error naming the url (`required=True`), never a
shard computed from something else.
"""
from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

from evalstack.cache.objectstore import ObjectStore, ObjectStoreConfig, ObjectStoreUnavailable
from evalstack.cache.shardstore import ShardStore, StoreEntry
from evalstack.core.keys import sha256_file
from evalstack.core.layers import ShardInfo

BLOB_CACHE = "evalstack-blobs"  # under the worker's local directory: files by sha256, kept between tasks


class StoreJobError(RuntimeError):
    """A shard could not be computed through the object store (a missing input, an unreachable store)."""


class UpstreamUnreadable(StoreJobError):
    """The worker could not read its input from the store (gone, or bytes that do not match): the client,
    which holds the checked file, uploads it again and retries once."""


@dataclass(frozen=True)
class FileBlob:
    """A file a compute reads besides its upstream shard (a model's weights), by content."""

    sha256: str
    name: str  # the file's own name, no directory: adapters may go by its suffix (.pt2, .keras)


@dataclass(frozen=True)
class StoreJob:
    """One derived shard as a worker sees it: keys, no paths."""

    upstream: ShardInfo  # its sha256 is the blob to download
    name: str  # the output shard's file name in the layer (shard-00003.h5)
    address: str  # the derivation key: the record the worker publishes


@dataclass(frozen=True)
class StoreResult:
    info: ShardInfo  # the shard as the worker wrote it
    held_sha256: str  # what the store holds for the address: the first writer's bytes
    requests: dict[str, int]  # the worker's requests and bytes (ObjectStore.counters)


@runtime_checkable
class NeedsFiles(Protocol):
    """A compute that reads files besides its upstream shard (infer: the model's weights). They travel
    as blobs: the client uploads `files()`, a worker calls `with_files` with its own copies."""

    def files(self) -> dict[str, Path]: ...

    def with_files(self, files: Mapping[str, Path]) -> Any: ...


def worker_config(config: ObjectStoreConfig) -> ObjectStoreConfig:
    """What a task carries: url, endpoint, region, profile; never credentials (the worker has its own).
    `required`: a worker has no local store to fall back on."""
    return replace(config, required=True, credentials={})


def output_entry(kind: str, key_json: dict[str, Any], address: str, upstream: ShardInfo, info: ShardInfo,
                 size: int) -> StoreEntry:
    """The store's record of a derived shard, the same wherever it was computed."""
    return StoreEntry(address, info.sha256, size, info.n_items, kind, key_json, upstream.sha256)


# -- on the worker -------------------------------------------------------------------------------
def derive_via_store(compute: Callable, job: StoreJob, fmt: Any, config: ObjectStoreConfig,
                     blobs: Mapping[str, FileBlob]) -> StoreResult:
    """Download the upstream shard and the compute's files, compute, publish the output; on a worker."""
    from evalstack.cache.executors import ShardJob, derive_shard  # executors imports this module

    store = ObjectStore(config)
    root = worker_directory()
    if blobs:
        compute = compute.with_files({role: cached_blob(store, blob, root / BLOB_CACHE) for role, blob in blobs.items()})
    with tempfile.TemporaryDirectory(prefix="evalstack-shard-", dir=root) as scratch:
        upstream = Path(scratch) / "in" / job.upstream.name
        if not store.get_blob(job.upstream.sha256, upstream):
            raise UpstreamUnreadable(f"{config.url}: upstream shard {job.upstream.name} (blob {job.upstream.sha256[:12]}…) "
                                "is missing from the store or its bytes do not match; the client uploads every "
                                "upstream shard before submitting: was the prefix cleared meanwhile?")
        out = Path(scratch) / "out" / job.name
        out.parent.mkdir()
        info = derive_shard(compute, ShardJob(job.upstream, upstream, out, job.address), fmt)
        entry = output_entry(fmt.kind, key_json(fmt.key), job.address, job.upstream, info, out.stat().st_size)
        # repair=True: the worker has just computed these bytes, so it uploads them even when a blob of that size
        # is there (a damaged one would otherwise stay, and every later run fail to read it back)
        held = store.put_shard(entry, out, repair=True)
    return StoreResult(info, held.sha256, store.counters.as_dict())


def cached_blob(store: ObjectStore, blob: FileBlob, cache: Path) -> Path:
    """The blob in this worker's cache (downloaded once, sha256-checked, read-only), under its own name."""
    path = cache / blob.sha256[:2] / blob.sha256 / blob.name
    # checked on every use: a model file damaged on the worker's disk must not load silently
    if path.is_file() and sha256_file(path) == blob.sha256:
        return path
    path.unlink(missing_ok=True)
    if not store.get_blob(blob.sha256, path):
        raise StoreJobError(f"{store.url}: file {blob.name} (blob {blob.sha256[:12]}…) is missing from the store "
                            "or its bytes do not match")
    os.chmod(path, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    return path


def worker_directory() -> Path:
    """The Dask worker's own local directory (its scratch space), or the system's temp directory."""
    with contextlib.suppress(ImportError, ValueError):
        from distributed import get_worker

        return Path(get_worker().local_directory)
    return Path(tempfile.gettempdir())


def key_json(key: Any) -> dict[str, Any]:
    return {"kind": key.kind, "parts": key.parts}


# -- on the client -------------------------------------------------------------------------------
def upload_files(remote: ObjectStore, compute: Callable) -> tuple[Callable, dict[str, FileBlob]]:
    """The compute as it travels (its files named by their base name only) and its files as blobs, uploaded."""
    if not isinstance(compute, NeedsFiles):
        return compute, {}
    files = compute.files()
    blobs = {role: FileBlob(remote.put_blob(path), path.name) for role, path in files.items()}
    return compute.with_files({role: Path(blob.name) for role, blob in blobs.items()}), blobs


def place_output(store: ShardStore, address: str, out_path: Path, result: StoreResult) -> ShardInfo:
    """The worker's output, from the store into the layer directory (through the local cache, checked)."""
    assert store.remote is not None
    entry = store.materialise(address, out_path)
    if entry is None:
        raise StoreJobError(f"{store.remote.url}: shard {out_path.name} (address {address[:12]}…) was computed by a "
                            "worker but cannot be read back from the store (see the warning above)")
    if entry.sha256 != result.info.sha256:
        print(f"WARNING {store.remote.url}: shard {out_path.name} was stored first by another writer with different "
              f"bytes (sha256 {entry.sha256[:12]}…, this run's worker {result.info.sha256[:12]}…): its compute is not "
              "deterministic. The layer takes the stored one.", file=sys.stderr)
    return replace(result.info, name=out_path.name, sha256=entry.sha256)


def store_unreachable(error: ObjectStoreUnavailable) -> StoreJobError:
    return StoreJobError(f"{error}: the Dask workers share nothing but this store, so the stage cannot go on "
                         "without it (check store.url/endpointurl and the network)")


__all__ = ["FileBlob", "NeedsFiles", "StoreJob", "StoreJobError", "StoreResult", "UpstreamUnreadable", "cached_blob", "derive_via_store",
           "output_entry", "place_output", "store_unreachable", "upload_files", "worker_config"]
