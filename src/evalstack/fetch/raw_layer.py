"""The fetch stage: a source's items → the raw layer (encoded image bytes + metadata).

The item key is the sha256 of the image bytes; the md5 the source states is
checked, never trusted as a key. Fetch is incremental (see `rawplan`): a re-fetch
downloads only items the last raw layer lacks, appends new shards and leaves old
shard files as they are. It never loses data: downloads wait in the fetch history
until they are in a recorded shard, and whenever fetch stops short (failed items
under `on_error: fail`, the source gone) the output directory gets back the last
raw layer it had.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Iterator, Mapping

import h5py

from evalstack.cache.incremental import BuildLog, start_build
from evalstack.cache.shardstore import ShardStore
from evalstack.core.atomic import atomic_write_bytes
from evalstack.core.keys import Key
from evalstack.core.kinds import RAW_KIND
from evalstack.core.layers import INDEX_NAME, ITEM_KEY, LayerIndex, LayerWriter, StoreError, shard_name
from evalstack.core.raw import FetchedItem, raw_columns, read_blobs
from evalstack.fetch.downloads import DownloadOutcome, Failure, download_items, warn_skipped
from evalstack.fetch.history import PreviousLayer, RawHistory
from evalstack.fetch.plan import RawPlan, plan_layer
from evalstack.sources.catalog import SourceConfig, list_items
from evalstack.sources.images import DEFAULT_MAX_PIXELS
from evalstack.sources.registry import RegistryRow, SourceError
from evalstack.sources.transport import SourceUnreachable, Transport, TransportConfig

ON_ERROR = ("fail", "skip")


class FetchFailed(SourceError):
    """Fetch stopped short; the message says why and where the report is."""


@dataclass(frozen=True)
class FetchConfig:
    source: SourceConfig  # (a mapping split → registry CSV is taken as a registry source)
    shard_size: int = 256
    max_pixels: int = DEFAULT_MAX_PIXELS
    workers: int = 8
    on_error: str = "fail"  # fail | skip; either way the report lists every failed id
    transport: TransportConfig = field(default_factory=TransportConfig)
    report: Path | None = None

    def __post_init__(self) -> None:
        if isinstance(self.source, Mapping):  # split → registry CSV, the older way to name a source
            object.__setattr__(self, "source", SourceConfig(kind="registry", registries=dict(self.source)))
        if self.on_error not in ON_ERROR:
            raise SourceError(f"fetch.on_error {self.on_error!r} unknown; choose fail or skip")
        if self.shard_size < 1:
            raise SourceError(f"fetch.shard_size must be >= 1, got {self.shard_size}")

    def layer_key(self) -> Key:
        # Only what shapes the shard files: where the source lives does not, so moving a
        # registry from disk to a server keeps every shard (the source goes in the report).
        return Key(RAW_KIND, {"shard_size": self.shard_size})


@dataclass
class FetchReport:
    source: dict[str, Any]
    on_error: str
    offline: bool = False
    message: str = ""
    counts: dict[str, int] = field(default_factory=dict)  # what the layer is: same source, same counts
    failed: list[Failure] = field(default_factory=list)
    # What this run did (downloads, GETs, items kept in place): printed, not written to the report
    # file, because DVC tracks that file and a re-run that builds the same layer must not change it.
    activity: dict[str, int] = field(default_factory=dict)

    def write(self, path: Path | None) -> None:
        if path is not None:
            data = asdict(self)
            del data["activity"]
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(Path(path), (json.dumps(data, indent=1) + "\n").encode())


@dataclass
class FetchResult:
    index: LayerIndex
    report: FetchReport


def fetch_raw_layer(config: FetchConfig, out_dir: Path, store: ShardStore | None = None) -> FetchResult:
    """Build the raw layer in `out_dir`; `store` (the shard store) keeps what the next fetch reuses."""
    out_dir = Path(out_dir)
    build_record, seeded = start_build(store, out_dir, RAW_KIND)  # also seeds the store from dvc.lock's layer
    with RawHistory(store) as history:
        history.clear_stale_temp_files()
        previous = history.previous(out_dir, RAW_KIND)
        try:
            return _fetch(config, out_dir, store, history, previous, build_record, seeded)
        except SourceError:
            _restore_if_gone(previous, out_dir, history)  # a failure never leaves the workspace without its layer
            raise


def _fetch(config: FetchConfig, out_dir: Path, store: ShardStore | None, history: RawHistory,
           previous: PreviousLayer | None, build_record: dict[str, Any] | None, seeded: int) -> FetchResult:
    report = FetchReport(config.source.describe(), config.on_error)
    with Transport(config.transport) as transport:
        try:
            rows = list_items(config.source, transport)
        except SourceUnreachable as error:
            return _keep_previous(previous, out_dir, report, str(error), history, config)
        plan = plan_layer(previous, rows, config.layer_key())
        missing = [r for r in plan.fresh if r.identity not in plan.old_bytes and not history.has_download(r)]
        outcome = download_items(missing, transport, history, config.max_pixels, config.workers)
        transfer = {"http_gets": transport.gets, "http_retries": transport.retries, "bytes_read": transport.bytes}
    report.failed = outcome.failures
    report.counts = {"listed": len(rows), "failed": len(outcome.failures),
                     "without_md5": sum(1 for row in rows if not row.hashlib_md5)}  # none stated: nothing checked
    failed_ids = {failure.id for failure in outcome.failures}
    fresh = [row for row in plan.fresh if row.id not in failed_ids]
    report.activity = _activity(plan, missing, outcome, fresh) | transfer
    if outcome.unreachable or (outcome.failures and config.on_error == "fail"):
        return _stop(previous, out_dir, report, outcome, config, history)
    log = BuildLog(RAW_KIND, config.layer_key(), "fetch", {"": "fetch"}, "items_fetched", build_record)
    log.seeded = seeded
    index = _write_layer(out_dir, config, plan, fresh, history, log)
    history.record(out_dir, index)
    log.finish(out_dir, store)
    history.drop_downloads(fresh)
    report.counts["in_layer"] = index.n_items
    if outcome.failures:
        report.message = f"skipped {len(outcome.failures)} items that failed (on_error: skip)"
        warn_skipped(outcome.failures, config.report)
    report.write(config.report)
    return FetchResult(index, report)


def _activity(plan: RawPlan, missing: list[RegistryRow], outcome: DownloadOutcome,
              fresh: list[RegistryRow]) -> dict[str, int]:
    """What this run did; `fresh` is what went into new shards (skipped failures left out)."""
    from_old_shards = sum(1 for row in fresh if row.identity in plan.old_bytes)
    return {
        "kept_in_place": plan.n_kept_items,
        "new_shard_items": len(fresh),
        "bytes_from_old_shards": from_old_shards,
        "from_download_area": len(plan.fresh) - len(missing) - from_old_shards,  # failed items were all in `missing`
        "downloaded": outcome.downloaded,
        "removed": plan.removed,
    }


def _write_layer(out_dir: Path, config: FetchConfig, plan: RawPlan, fresh: list[RegistryRow],
                 history: RawHistory, log: BuildLog) -> LayerIndex:
    writer = LayerWriter(out_dir, RAW_KIND, config.layer_key())
    for shard in plan.kept:
        log.add(_place(writer, shard, plan.kept_paths.get(shard.sha256), history), None, computed=False)
    for number, chunk in enumerate(_batched(fresh, config.shard_size), start=plan.next_shard):
        columns = raw_columns([FetchedItem(row, _bytes_of(row, plan, history)) for row in chunk])
        flat = {"blob": columns.pop("blob")}
        # The item key is the sha256 of the image bytes, so it doubles as the per-item checksum.
        info = writer.add_shard(shard_name(number), columns, flat=flat, checksum_of=("blob",), checksum_column=ITEM_KEY)
        log.add(info, None, computed=True)
    writer.stats = {"items": plan.n_kept_items + len(fresh)}
    return writer.finish()


def _place(writer: LayerWriter, shard, source: Path | None, history: RawHistory):
    """List an old shard in the new layer, its bytes unchanged (checked against the recorded sha256)."""
    dest = writer.directory / shard.name
    if not history.place(shard, source, dest):
        raise FetchFailed(f"shard {shard.name} of the last raw layer cannot be found with its recorded bytes "
                          f"(sha256 {shard.sha256[:12]}); `dvc checkout` the layer, or delete it to fetch anew")
    try:
        return writer.add_existing(shard.name, shard.sha256, excluded=shard.excluded)
    except (StoreError, KeyError) as error:
        raise FetchFailed(f"{dest}: not a raw shard of this layout ({error}); delete the layer to fetch anew") from None


def _bytes_of(row: RegistryRow, plan: RawPlan, history: RawHistory) -> bytes:
    old = plan.old_bytes.get(row.identity)
    if old is not None:
        with h5py.File(old.path, "r") as handle:
            return read_blobs(handle, slice(old.row, old.row + 1))[0]
    data = history.load_download(row)
    if data is None:
        raise FetchFailed(f"{row.what}: its download vanished from {history.download_path(row)}; fetch again")
    return data


def _keep_previous(previous: PreviousLayer | None, out_dir: Path, report: FetchReport, reason: str,
                   history: RawHistory, config: FetchConfig) -> FetchResult:
    """The source cannot be reached: keep the raw layer there is, and say so."""
    report.offline = True
    if previous is None:
        report.message = f"{reason}. No earlier raw layer is recorded for {out_dir}, so there is nothing to keep."
        raise FetchFailed(report.message)
    index = _restore(previous, out_dir, history)
    report.message = (f"OFFLINE: {reason}. Kept the raw layer from the last fetch ({index.n_items} items); "
                      f"nothing was deleted. Fetch again when the source is reachable.")
    report.counts = {"in_layer": index.n_items}
    report.activity = {"kept_in_place": index.n_items, "downloaded": 0}
    report.write(config.report)
    print(f"WARNING {report.message}")
    return FetchResult(index, report)


def _stop(previous: PreviousLayer | None, out_dir: Path, report: FetchReport, outcome: DownloadOutcome,
          config: FetchConfig, history: RawHistory) -> FetchResult:
    """Fetch ends without a new layer; what was downloaded stays in the history, the old layer in place."""
    kept = _restore(previous, out_dir, history) if previous is not None else None
    lines = [f"  id {f.id} ({f.image_name}): {f.cause}" for f in outcome.failures[:20]]
    more = len(outcome.failures) - len(lines)
    why = f"the source became unreachable: {outcome.unreachable}" if outcome.unreachable else \
        f"{len(outcome.failures)} items failed (on_error: fail; `skip` builds the layer without them)"
    where = f" (full list in {config.report})" if config.report else ""
    keeping = f"kept the previous raw layer ({kept.n_items} items) in {out_dir}" if kept else "no previous raw layer to keep"
    report.offline = bool(outcome.unreachable)
    report.message = (f"fetch stopped: {why}{where}; {report.activity['downloaded']} downloaded items are kept for "
                      f"the next fetch; {keeping}.")
    report.write(config.report)
    raise FetchFailed(report.message + "\n" + "\n".join(lines) + (f"\n  … and {more} more" if more > 0 else ""))


def _restore(previous: PreviousLayer, out_dir: Path, history: RawHistory) -> LayerIndex:
    """Rebuild the previous layer in `out_dir` from wherever its shards are (byte-identical index)."""
    writer = LayerWriter(out_dir, RAW_KIND, previous.index.key)
    for shard in previous.index.shards:
        _place(writer, shard, previous.shard_paths.get(shard.sha256), history)
    writer.stats = dict(previous.index.stats)
    return writer.finish()


def _restore_if_gone(previous: PreviousLayer | None, out_dir: Path, history: RawHistory) -> None:
    if previous is None or (out_dir / INDEX_NAME).exists():
        return
    try:
        _restore(previous, out_dir, history)
    except SourceError:
        pass  # the error being raised says more than this one


def _batched(rows: list[RegistryRow], size: int) -> Iterator[list[RegistryRow]]:
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        yield chunk


def fetch_config(params: Mapping[str, Any], report: Path | None = None) -> FetchConfig:
    """The `fetch:` block of params.yaml → FetchConfig."""
    fetch = params["fetch"]
    http = dict(fetch.get("http") or {})
    transport = TransportConfig(
        schemes=tuple(fetch.get("schemes", TransportConfig.schemes)),
        connect_timeout=float(http.get("connect_timeout", TransportConfig.connect_timeout)),
        read_timeout=float(http.get("read_timeout", TransportConfig.read_timeout)),
        retries=int(http.get("retries", TransportConfig.retries)),
        backoff=float(http.get("backoff", TransportConfig.backoff)),
        retry_after_max=float(http.get("retry_after_max", TransportConfig.retry_after_max)),
        max_bytes=int(fetch.get("max_bytes", TransportConfig.max_bytes)),
        pool_size=int(fetch.get("workers", 8)),
    )
    return FetchConfig(
        source=SourceConfig.from_params(fetch), shard_size=int(fetch["shard_size"]),
        max_pixels=int(fetch["max_pixels"]), workers=int(fetch.get("workers", 8)),
        on_error=str(fetch.get("on_error", "fail")), transport=transport, report=report,
    )
