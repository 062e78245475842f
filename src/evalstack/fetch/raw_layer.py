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
from typing import Any, Callable, Mapping

from evalstack.cache.incremental import BuildLog, start_build
from evalstack.cache.shardstore import ShardStore
from evalstack.core.atomic import atomic_write_bytes
from evalstack.core.fingerprint import code_part
from evalstack.core.keys import Key
from evalstack.core.kinds import RAW_KIND
from evalstack.core.layers import (
    INDEX_NAME,
    LayerIndex,
    LayerWriter,
)
from evalstack.core.raw import RAW_COMPRESSION
from evalstack.fetch.distributed import ClusterFetch, download_on_cluster
from evalstack.fetch.downloads import Arrival, DownloadOutcome, Failure, download_items, warn_skipped
from evalstack.fetch.history import PreviousLayer, RawHistory
from evalstack.fetch.listing import Listing
from evalstack.fetch.plan import ItemCaps, OldShard, RawPlan, item_checks, items_refused, plan_layer
from evalstack.fetch.revalidate import record_validators, revalidate
from evalstack.fetch.shard_stream import FetchFailed, OldBytes, ShardStream, place_shard
from evalstack.sources.catalog import SourceConfig, iter_items, registry_origins
from evalstack.sources.images import DEFAULT_MAX_PIXELS
from evalstack.sources.registry import SourceError
from evalstack.sources.registry_prefix import ParseCounts
from evalstack.sources.transport import SourceUnreachable, Transport, TransportConfig

ON_ERROR = ("fail", "skip")


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
        log = BuildLog(RAW_KIND, config.layer_key(), "fetch", {"": "fetch"}, "items_fetched", build_record)
        log.seeded = seeded
        stream = ShardStream(out_dir, config.layer_key(), config.shard_bytes, plan, listing, history, transport, log)
        try:
            outcome = _download(listing, transport, history, cluster, config, stream.record)
        except BaseException:
            stream.abandon()
            raise
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
            stream.abandon()
            report.activity = {"downloaded": outcome.downloaded} | transfer
            return _stop(_own(previous), out_dir, report, outcome, config, history)
        try:
            removed = _keep_removed(listing, plan, history) if _own(previous) else 0
            index, activity = stream.finish({failure.id for failure in outcome.failures})
        except BaseException:
            stream.abandon()
            raise
        _warn_if_shrunk(_own(previous), len(listing) - len(outcome.failures), removed, config, report)
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


def _download(listing: Listing, transport: Transport, history: RawHistory, cluster: ClusterFetch | None,
              config: FetchConfig, record: Callable[[list[Arrival]], None]) -> DownloadOutcome:
    """The bytes of every item no previous shard holds; `record` hears of each batch that arrives."""
    if cluster is not None:
        return download_on_cluster(listing, transport, history, cluster, config.max_pixels, config.workers,
                                   config.shard_bytes, record)
    return download_items(listing.needing_bytes(), listing.count_needing_bytes(), transport, history,
                          config.max_pixels, config.workers, record)


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
        if place_shard(writer, shard.name, OldShard(shard, previous.shard_paths.get(shard.sha256)), history) is None:
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
