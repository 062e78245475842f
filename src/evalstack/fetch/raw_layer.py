"""The fetch stage: a source's items → the raw layer (encoded image bytes + metadata).

The item key is the sha256 of the image bytes; the md5 the source states is
checked, never trusted as a key. The layer is a pure function of the listing: items
in id order, cut into shards at content-defined boundaries (`core.raw.shard_ends`),
so the same items give the same files however the project got there. Fetch is
incremental all the same (see `plan`): a re-fetch downloads only images the last raw
layer lacks and reuses every shard whose rows did not change, so after an append only
the last shard and the new ones are written. It never loses data: downloads wait in the
fetch history until they are in a recorded shard, removed items' bytes are kept there
too, a listing of 0 items is refused, and whenever fetch stops short (failed items under
`on_error: fail`, the source gone) the output directory gets back the last raw layer it had.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from evalstack.cache.incremental import BuildLog, start_build
from evalstack.cache.shardstore import ShardStore
from evalstack.core.atomic import atomic_write_bytes
from evalstack.core.fingerprint import code_part
from evalstack.core.keys import Key, sha256_bytes
from evalstack.core.kinds import RAW_KIND
from evalstack.core.layers import (
    INDEX_NAME,
    ITEM_KEY,
    LayerIndex,
    LayerWriter,
    ShardColumns,
    ShardInfo,
    StoreError,
    shard_name,
)
from evalstack.core.raw import RAW_COMPRESSION, FetchedItem, ShardCutter, raw_shard, read_blobs
from evalstack.fetch.distributed import ClusterFetch, download_on_cluster
from evalstack.fetch.downloads import AREA, SOURCE, DownloadOutcome, Failure, download_items, warn_skipped
from evalstack.fetch.history import PreviousLayer, RawHistory
from evalstack.fetch.listing import ListedItem, Listing
from evalstack.fetch.plan import CHECKED_BY, ItemCaps, OldShard, RawPlan, item_checks, items_refused, plan_layer
from evalstack.fetch.revalidate import record_validators, revalidate
from evalstack.sources.catalog import SourceConfig, iter_items, registry_origins
from evalstack.sources.images import DEFAULT_MAX_PIXELS, image_pixels
from evalstack.sources.registry import RegistryRow, SourceError
from evalstack.sources.registry_prefix import ParseCounts
from evalstack.sources.transport import SourceUnreachable, Transport, TransportConfig

ON_ERROR = ("fail", "skip")


class FetchFailed(SourceError):
    """Fetch stopped short; the message says why and where the report is."""


@dataclass(frozen=True)
class FetchConfig:
    source: SourceConfig  # (a mapping split → registry CSV is taken as a registry source)
    shard_bytes: int = 48_000_000  # target bytes per raw shard (content-defined cuts; ¼× to 4× of it)
    max_pixels: int = DEFAULT_MAX_PIXELS
    workers: int = 8
    on_error: str = "fail"  # fail | skip; either way the report lists every failed id
    transport: TransportConfig = field(default_factory=TransportConfig)
    report: Path | None = None
    shrink_warning: float = 0.2  # warn when the listing lost more than this share of the last layer's items
    # on_error: skip may leave out at most this many items: a count (7) or a share of the listing ("10%")
    max_skipped: int | str = "10%"

    def __post_init__(self) -> None:
        if isinstance(self.source, Mapping):  # split → registry CSV, the older way to name a source
            object.__setattr__(self, "source", SourceConfig(kind="registry", registries=dict(self.source)))
        if self.on_error not in ON_ERROR:
            raise SourceError(f"fetch.on_error {self.on_error!r} unknown; choose fail or skip")
        if self.shard_bytes < 1:
            raise SourceError(f"fetch.shard_bytes must be >= 1, got {self.shard_bytes}")
        self.skip_limit(1)  # a bad max_skipped is an error before anything is listed

    def skip_limit(self, listed: int) -> int:
        """How many of `listed` items `on_error: skip` may leave out: never all of them."""
        value = self.max_skipped
        if isinstance(value, str) and value.strip().endswith("%"):
            try:
                share = float(value.strip()[:-1]) / 100
            except ValueError:
                share = -1.0
            if not 0 <= share < 1:
                raise SourceError(f"fetch.max_skipped {value!r}: a share must be 0% or more and below 100%")
            return min(int(share * listed), listed - 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SourceError(f"fetch.max_skipped {value!r}: give a count of items (7) or a share of the listing "
                              "('10%')")
        return min(value, listed - 1)

    def caps(self) -> ItemCaps:
        return ItemCaps(self.max_pixels, self.transport.max_bytes)

    def layer_key(self) -> Key:
        # Only what shapes the shard files: the target size and the format's code (core/raw.py and
        # what it imports). Where the source lives does not, so moving a registry from disk to a
        # server keeps every shard (the source goes in the report); what the source says is content.
        return Key(RAW_KIND, {"shard_bytes": self.shard_bytes, "code": code_part("evalstack.core.raw")})


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


def fetch_raw_layer(config: FetchConfig, out_dir: Path, store: ShardStore | None = None,
                    cluster: ClusterFetch | None = None) -> FetchResult:
    """Build the raw layer in `out_dir`; `store` (the shard store) keeps what the next fetch reuses.
    With `cluster` (fetch/distributed.py) the downloads run on Dask workers; the layer is the same."""
    out_dir = Path(out_dir)
    build_record, seeded = start_build(store, out_dir, RAW_KIND)  # also seeds the store from dvc.lock's layer
    with RawHistory(store, out_dir) as history:
        history.clear_stale_temp_files()
        previous = history.previous(out_dir, RAW_KIND)
        try:
            return _fetch(config, out_dir, store, history, previous, build_record, seeded, cluster)
        except SourceError:
            _restore_if_gone(_own(previous), out_dir, history)  # a failure never leaves the workspace without its layer
            raise


def _fetch(config: FetchConfig, out_dir: Path, store: ShardStore | None, history: RawHistory,
           previous: PreviousLayer | None, build_record: dict[str, Any] | None, seeded: int,
           cluster: ClusterFetch | None = None) -> FetchResult:
    report = FetchReport(config.source.describe(), config.on_error)
    parsing = ParseCounts()
    with Transport(config.transport) as transport, Listing(history.work_directory()) as listing:
        try:
            listing.add_rows(iter_items(config.source, transport, history.registry_parses(), parsing),
                             registry_origins(config.source))
        except SourceUnreachable as error:
            return _keep_previous(_own(previous), out_dir, report, str(error), history, config)
        if not len(listing):
            raise FetchFailed(f"the source lists no items ({_describe(config)}): an empty registry or listing never "
                              f"replaces a raw layer; {out_dir} was left as it was")
        plan = plan_layer(previous, config.layer_key(), listing, config.caps(), item_checks())
        revalidated = revalidate(listing, transport, history, config.workers)
        if cluster is not None:
            outcome = download_on_cluster(listing, transport, history, cluster, config.max_pixels, config.workers,
                                          config.shard_bytes)
        else:
            outcome = download_items(listing.needing_bytes(), listing.count_needing_bytes(), transport, history,
                                     config.max_pixels, config.workers, listing.add_arrivals)
        record_validators(history, outcome.validators)
        transfer = {"http_gets": transport.gets, "http_retries": transport.retries, "bytes_read": transport.bytes,
                    "http_heads": transport.heads, **revalidated,
                    "registry_rows_parsed": parsing.parsed, "registry_rows_reused": parsing.reused,
                    "checked_again": plan.rechecked} | outcome.activity
        report.failed = outcome.failures
        report.counts = {"listed": len(listing), "failed": len(outcome.failures),
                         "without_md5": listing.count_without_md5()}  # none stated: nothing checked
        too_many = len(outcome.failures) > config.skip_limit(len(listing))
        if outcome.unreachable or (outcome.failures and (config.on_error == "fail" or too_many)):
            report.activity = {"downloaded": outcome.downloaded} | transfer
            return _stop(_own(previous), out_dir, report, outcome, config, history)
        removed = _keep_removed(listing, plan, history) if _own(previous) else 0
        _warn_if_shrunk(_own(previous), len(listing) - len(outcome.failures), removed, config, report)
        log = BuildLog(RAW_KIND, config.layer_key(), "fetch", {"": "fetch"}, "items_fetched", build_record)
        log.seeded = seeded
        failed = {failure.id for failure in outcome.failures}
        index, activity = _write_layer(out_dir, config, plan, listing, history, transport, log, failed)
        report.activity = activity | {"downloaded": outcome.downloaded, "removed": removed} | transfer
        history.record(out_dir, index)
        log.finish(out_dir, store)
        history.drop_downloads(listing.arrived_in_area())
    report.counts["in_layer"] = index.n_items
    if outcome.failures:
        report.message = f"skipped {len(outcome.failures)} items that failed (on_error: skip)"
        warn_skipped(outcome.failures, config.report)
    report.write(config.report)
    return FetchResult(index, report)


def _own(previous: PreviousLayer | None) -> PreviousLayer | None:
    """The previous layer when it is this output's own (see PreviousLayer.own), else None."""
    return previous if previous is not None and previous.own else None


def _describe(config: FetchConfig) -> str:
    return ", ".join(f"{name}: {value}" for name, value in config.source.describe().items() if value)


def _keep_removed(listing: Listing, plan: RawPlan, history: RawHistory) -> int:
    """Removed items keep their bytes in the fetch history (listing them again downloads nothing).
    Returns how many the listing lost."""
    removed = 0
    with OldBytes(plan) as old:
        for row, number, position in listing.removed():
            history.save_download(row, old.read(number, position, row))
            removed += 1
    return removed


def _warn_if_shrunk(previous: PreviousLayer | None, kept: int, removed: int, config: FetchConfig,
                    report: FetchReport) -> None:
    """A listing that lost more than `fetch.shrink_warning` of the last layer is said loudly."""
    if previous is None or not removed:
        return
    before = previous.index.n_items
    if before and (before - kept) / before > config.shrink_warning:
        report.message = (f"the source lists {kept} items where the last raw layer had {before} "
                          f"({removed} removed, more than fetch.shrink_warning = {config.shrink_warning:.0%}); "
                          "the layer follows the source, and the removed items' bytes are kept in the fetch "
                          "history, so listing them again downloads nothing. Check the source if this is a mistake.")
        print(f"WARNING {report.message}")


class OldBytes:
    """Image bytes of items in previous shard files, read through one open shard at a time (items come
    in id order, so consecutive reads hit the same shard) and checked against the recorded item key."""

    def __init__(self, plan: RawPlan):
        self.plan = plan
        self.number: int | None = None
        self.reader: ShardColumns | None = None

    def read(self, number: int, position: int, row: RegistryRow, item_key: str | None = None) -> bytes:
        if number != self.number:
            self.close()
            old = self.plan.old_shards[number]
            self.number, self.reader = number, ShardColumns(old.path, old.info)
        data = read_blobs(self.reader, slice(position, position + 1))[0]
        if item_key is not None and sha256_bytes(data) != item_key:
            raise FetchFailed(f"{row.what}: its bytes in {self.reader.path} differ from what the last raw layer "
                              "recorded (a damaged file); delete it, or `dvc checkout --relink --force` the raw layer, and fetch again")
        return data

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
        self.number, self.reader = None, None

    def __enter__(self) -> "OldBytes":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _write_layer(out_dir: Path, config: FetchConfig, plan: RawPlan, listing: Listing, history: RawHistory,
                 transport: Transport, log: BuildLog, failed: set[int]) -> tuple[LayerIndex, dict[str, int]]:
    """Shards at content-defined boundaries (core.raw.ShardCutter) over the items in id order, streamed
    from the listing: one shard's rows in memory at a time. The same listing gives the same files."""
    writer = LayerWriter(out_dir, RAW_KIND, config.layer_key(), RAW_COMPRESSION)
    activity = {"kept_in_place": 0, "new_shard_items": 0, "bytes_from_old_shards": 0, "from_download_area": 0,
                "read_from_source": 0}
    cutter = ShardCutter(config.shard_bytes)
    chunk: list[ListedItem] = []
    with OldBytes(plan) as old:
        for item in listing.items():
            if not item.origin:  # failed under on_error: skip
                if item.row.id not in failed:  # never silently: a row is in the layer or in the report
                    raise FetchFailed(f"{item.row.what}: neither fetched nor reported as failed (an internal "
                                      f"error); the new raw layer was not finished. Fetch again, and report this")
                continue
            chunk.append(item)
            if cutter.add(_cut_identity(item.row), item.length):
                _write_shard(writer, shard_name(len(writer.shards)), chunk, plan, old, history, transport, activity, log)
                chunk = []
        if chunk:
            _write_shard(writer, shard_name(len(writer.shards)), chunk, plan, old, history, transport, activity, log)
    writer.stats = {"items": sum(shard.n_items for shard in writer.shards), CHECKED_BY: plan.checks}
    return writer.finish(), activity


def _write_shard(writer: LayerWriter, name: str, chunk: list[ListedItem], plan: RawPlan, old: OldBytes,
                 history: RawHistory, transport: Transport, activity: dict[str, int], log: BuildLog) -> None:
    """One shard: a previous shard file when its rows are exactly these, else written from the items' bytes."""
    located = [item.old for item in chunk]
    same = all(where is not None for where in located) and all(item.old_meta_equal for item in chunk)
    previous = plan.reusable(located[0][0], located, same) if same else None
    if previous is not None and _place(writer, name, previous, history) is not None:
        log.add(writer.shards[-1], None, computed=False)
        activity["kept_in_place"] += len(chunk)
        return
    items = [_fetched(item, _bytes_of(item, old, history, transport, activity)) for item in chunk]
    columns, options = raw_shard(items)
    del items  # the only other reference to the items' bytes: freed once joined (memory: one shard ×3)
    for item, key in zip(chunk, columns[ITEM_KEY]):
        if key.decode() != item.item_key:  # the bytes changed since they were checked (or recorded)
            raise FetchFailed(f"{item.row.what}: its bytes changed while fetching ({_where(item, history)}); fetch again")
    info = writer.add_shard(name, columns, **options)
    log.add(info, None, computed=True)
    activity["new_shard_items"] += len(chunk)


def _fetched(item: ListedItem, data: bytes) -> FetchedItem:
    # Every item here passed today's checks (downloaded in this run, or checked again by plan_layer), so its
    # header reads; ~10–20 µs, against the ms its check took.
    pixels = image_pixels(data)
    if pixels is None:
        raise FetchFailed(f"{item.row.what}: its bytes no longer open as an image; fetch again, and report this")
    return FetchedItem(item.row, data, pixels)


def _cut_identity(row: RegistryRow) -> str:
    return f"{row.id}:{row.hashlib_md5 or row.url}"


def _where(item: ListedItem, history: RawHistory) -> str:
    if item.origin == AREA:
        return str(history.download_path(item.row))
    return item.row.resolved_url if item.origin == SOURCE else "a previous raw shard"


def _place(writer: LayerWriter, name: str, old: OldShard, history: RawHistory) -> ShardInfo | None:
    """List a previous shard under `name`, its bytes unchanged (checked against the recorded sha256)."""
    dest = writer.path(name)
    if not history.place(old.info, old.path, dest):
        return None  # gone or damaged: its rows are written anew from their bytes
    try:
        return writer.add_existing(name, old.info.sha256)
    except (StoreError, KeyError):
        dest.unlink(missing_ok=True)
        return None


def _bytes_of(item: ListedItem, old: OldBytes, history: RawHistory, transport: Transport,
              activity: dict[str, int]) -> bytes:
    row = item.row
    if item.old is not None:
        activity["bytes_from_old_shards"] += 1
        return old.read(*item.old, row, item.item_key)
    if item.origin == SOURCE:
        # A local file, md5-checked when it arrived; read again. Its md5 is not checked again: the
        # sha256 of what is read is compared with the item key taken from the checked bytes (_write_shard).
        activity["read_from_source"] += 1
        return transport.get(row.resolved_url, row.what)
    data = history.load_download(row, check_md5=False)  # checked in this run; its sha256 is compared
    if data is None:
        # Another checkout sharing store.dir took it into its layer and dropped it from the download area (the
        # area is shared by rows whose source states an md5). Downloaded again: its sha256 is compared with
        # the bytes checked in this run, so other bytes stop the fetch.
        activity["downloaded_again"] = activity.get("downloaded_again", 0) + 1
        return transport.get(row.resolved_url, row.what, row.hashlib_md5)
    activity["from_download_area"] += 1
    return data


def _keep_previous(previous: PreviousLayer | None, out_dir: Path, report: FetchReport, reason: str,
                   history: RawHistory, config: FetchConfig) -> FetchResult:
    """The source cannot be reached: keep the raw layer there is, and say so."""
    report.offline = True
    if previous is None:
        report.message = f"{reason}. No earlier raw layer is recorded for {out_dir}, so there is nothing to keep."
        raise FetchFailed(report.message)
    refused = items_refused(previous, config.caps(), item_checks())
    if refused:  # a fetch from nothing would refuse them, and DVC would record today's params and code as applied
        shown = ", ".join(map(str, refused[:5])) + (f" and {len(refused) - 5} more" if len(refused) > 5 else "")
        raise FetchFailed(f"OFFLINE: {reason}. The last raw layer holds {len(refused)} items that fetch.max_pixels, "
                          f"fetch.max_bytes or the image checks (sources/images.py, Pillow) now refuse (ids {shown}), "
                          "so it is not kept as it is: fetch again when the source is reachable")
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
    failed, listed = len(outcome.failures), report.counts.get("listed", 0)
    if outcome.unreachable:
        why = f"the source became unreachable: {outcome.unreachable}"
    elif config.on_error == "fail":
        why = f"{failed} items failed (on_error: fail; `skip` builds the layer without them)"
    else:  # skip, but a layer without them would have lost too much: never shrink silently
        why = (f"{failed} of {listed} items failed, more than on_error: skip may leave out (fetch.max_skipped "
               f"{config.max_skipped!r}: at most {config.skip_limit(listed)}"
               f"{'; a layer is never built from nothing' if failed == listed else ''})")
    where = f" (full list in {config.report})" if config.report else ""
    keeping = f"kept the previous raw layer ({kept.n_items} items) in {out_dir}" if kept else "no previous raw layer to keep"
    report.offline = bool(outcome.unreachable)
    report.message = (f"fetch stopped: {why}{where}; {report.activity['downloaded']} downloaded items are kept for "
                      f"the next fetch; {keeping}.")
    report.write(config.report)
    raise FetchFailed(report.message + "\n" + "\n".join(lines) + (f"\n  … and {more} more" if more > 0 else ""))


def _restore(previous: PreviousLayer, out_dir: Path, history: RawHistory) -> LayerIndex:
    """Rebuild the previous layer in `out_dir` from wherever its shards are (byte-identical index)."""
    writer = LayerWriter(out_dir, RAW_KIND, previous.index.key, RAW_COMPRESSION)
    for shard in previous.index.shards:
        if _place(writer, shard.name, OldShard(shard, previous.shard_paths.get(shard.sha256)), history) is None:
            raise FetchFailed(f"shard {shard.name} of the last raw layer cannot be found with its recorded bytes "
                              f"(sha256 {shard.sha256[:12]}); `dvc checkout` the layer, or delete it to fetch anew")
    writer.stats = dict(previous.index.stats)
    return writer.finish()


def _restore_if_gone(previous: PreviousLayer | None, out_dir: Path, history: RawHistory) -> None:
    if previous is None or (out_dir / INDEX_NAME).exists():
        return
    try:
        _restore(previous, out_dir, history)
    except SourceError:
        pass  # the error being raised says more than this one


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
        source=SourceConfig.from_params(fetch), shard_bytes=int(fetch["shard_bytes"]),
        shrink_warning=float(fetch.get("shrink_warning", 0.2)),
        max_pixels=int(fetch["max_pixels"]), workers=int(fetch.get("workers", 8)),
        on_error=str(fetch.get("on_error", "fail")), transport=transport, report=report,
        max_skipped=fetch.get("max_skipped", FetchConfig.max_skipped),
    )
