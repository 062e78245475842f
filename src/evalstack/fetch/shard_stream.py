"""Writing the raw layer's shards while the downloads run.

The layer is cut over the listed items in id order (`core.raw.ShardCutter`), so an item can
go into its shard once every item before it is settled. Downloads finish in about id order
(`download_items` keeps a bounded window of runs in flight), so the shards are cut a few
hundred items behind them and written by one thread of their own, while the main thread
goes on handing rows to the download threads. Fetch used to write every shard in a second
pass after the last download, on one core, reading and hashing every byte again.
Writing them in the main thread between downloads starved the download threads instead:
the main thread, which hands them their rows, spent ~90 % of a fetch writing (py-spy,
8,001 cards), waiting its turn for the GIL behind eight download threads.

What an item's shard holds is decided exactly as before: the same listing gives the same
files whatever order the downloads finished in (one writer thread, shards in cut order).
Only failures are not known until the downloads end. An item whose arrival has not been
recorded holds the stream where it is; if it failed, `finish` goes on past it (under
`on_error: skip`) and writes the rest then, as the second pass did. Nothing is published
before `finish`: shards go to the layer writer's staging directory, which `abandon`
removes when fetch stops short.
"""
from __future__ import annotations

import shutil
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from evalstack.cache.incremental import BuildLog
from evalstack.core.keys import Key, sha256_bytes
from evalstack.core.kinds import RAW_KIND
from evalstack.core.layers import ITEM_KEY, LayerIndex, LayerWriter, ShardColumns, ShardInfo, StoreError, shard_name
from evalstack.core.raw import RAW_COMPRESSION, FetchedItem, ShardCutter, raw_shard, read_blobs
from evalstack.fetch.downloads import AREA, SOURCE, Arrival
from evalstack.fetch.history import RawHistory
from evalstack.fetch.listing import ListedItem, Listing
from evalstack.fetch.plan import CHECKED_BY, OldShard, RawPlan
from evalstack.sources.images import image_pixels
from evalstack.sources.registry import RegistryRow, SourceError
from evalstack.sources.transport import Transport

_FLUSH = 2000  # arrivals written to the listing database at a time
# Shards cut and waiting for the writer thread: their rows' metadata only (the writer reads the bytes), so
# memory holds one shard's bytes whatever the queue. When the writer falls this far behind, the downloads wait.
_QUEUED = 4


class FetchFailed(SourceError):
    """Fetch stopped short; the message says why and where the report is."""


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


class ShardStream:
    """The new raw layer, shard by shard, as the items' bytes become known (see the module docstring).
    `record` is `download_items`' callback; then `finish` with the ids that failed, or `abandon`."""

    def __init__(self, out_dir: Path, key: Key, shard_bytes: int, plan: RawPlan, listing: Listing,
                 history: RawHistory, transport: Transport, log: BuildLog):
        self.plan, self.listing, self.history, self.transport, self.log = plan, listing, history, transport, log
        self.writer = LayerWriter(out_dir, RAW_KIND, key, RAW_COMPRESSION)
        self.cutter = ShardCutter(shard_bytes)
        self.old = OldBytes(plan)
        self.pending = listing.before_arrivals()
        self.held: ListedItem | None = None  # the next item in id order, its arrival not recorded yet
        self.arrived: dict[int, Arrival] = {}  # recorded, not yet reached (downloads finish out of order)
        self.unsaved: list[Arrival] = []
        self.chunk: list[ListedItem] = []
        # One thread: shards are written in the order they were cut, which names them.
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fetch-shards")
        self.writes: deque[Future] = deque()
        self.activity = {"kept_in_place": 0, "new_shard_items": 0, "bytes_from_old_shards": 0,
                         "from_download_area": 0, "read_from_source": 0}

    def record(self, arrivals: list[Arrival]) -> None:
        """Items whose bytes are now at hand (id, item key, length, AREA | SOURCE)."""
        self.unsaved += arrivals
        if len(self.unsaved) >= _FLUSH:
            self._save()
        for arrival in arrivals:
            self.arrived[arrival[0]] = arrival
        self._advance(failed=None)

    def finish(self, failed: set[int]) -> tuple[LayerIndex, dict[str, int]]:
        """Every download has ended, and `failed` are the ids that failed under on_error: skip."""
        self._save()
        self._advance(failed)
        if self.chunk:
            self._cut()
        self._settle(0)
        self.thread.shutdown()
        self.old.close()
        self.writer.stats = {"items": sum(shard.n_items for shard in self.writer.shards), CHECKED_BY: self.plan.checks}
        return self.writer.finish(), self.activity

    def abandon(self) -> None:
        """Fetch stopped short: no shard of this run stays. (The downloads stay in the fetch history; the
        arrivals not yet saved are not needed: the listing goes with this run.)"""
        for write in self.writes:
            write.cancel()
        self.thread.shutdown(wait=True)  # the shard being written, finished before its directory goes
        self.old.close()
        shutil.rmtree(self.writer.staging, ignore_errors=True)

    def _save(self) -> None:
        self.listing.add_arrivals(self.unsaved)
        self.unsaved = []

    def _advance(self, failed: set[int] | None) -> None:
        """Add items in id order while their bytes are known; with `failed` (the end), past every item."""
        while True:
            item = self.held if self.held is not None else next(self.pending, None)
            self.held = None
            if item is None:
                return
            if item.origin != "old":
                arrival = self.arrived.pop(item.row.id, None)
                if arrival is None:
                    if failed is None:
                        self.held = item  # still downloading, or failed: known at the end
                        return
                    if item.row.id not in failed:  # never silently: a row is in the layer or in the report
                        raise FetchFailed(f"{item.row.what}: neither fetched nor reported as failed (an internal "
                                          f"error); the new raw layer was not finished. Fetch again, and report this")
                    continue
                _, item_key, length, origin = arrival
                item = replace(item, item_key=item_key, length=length, origin=origin)
            self.chunk.append(item)
            if self.cutter.add(_cut_identity(item.row), item.length):
                self._cut()

    def _cut(self) -> None:
        """The rows gathered make a shard: to the writer thread."""
        chunk, self.chunk = self.chunk, []
        self._settle(_QUEUED - 1)
        self.writes.append(self.thread.submit(self._write_chunk, chunk))

    def _settle(self, queued: int) -> None:
        """Wait until at most `queued` writes are pending; a write that failed raises its error here."""
        while self.writes and (len(self.writes) > queued or self.writes[0].done()):
            self.writes.popleft().result()

    def _write_chunk(self, chunk: list[ListedItem]) -> None:
        """One shard: a previous shard file when its rows are exactly these, else written from the items' bytes.
        In the writer thread: the layer writer, the old shards and the build log are used there only."""
        writer, name = self.writer, shard_name(len(self.writer.shards))
        located = [item.old for item in chunk]
        same = all(where is not None for where in located) and all(item.old_meta_equal for item in chunk)
        previous = self.plan.reusable(located[0][0], located, same) if same else None
        if previous is not None and place_shard(writer, name, previous, self.history) is not None:
            self.log.add(writer.shards[-1], None, computed=False)
            self.activity["kept_in_place"] += len(chunk)
            return
        items = [_fetched(item, self._bytes_of(item)) for item in chunk]
        columns, options = raw_shard(items)
        del items  # the only other reference to the items' bytes: freed once joined (memory: one shard ×3)
        for item, key in zip(chunk, columns[ITEM_KEY]):
            if key.decode() != item.item_key:  # the bytes changed since they were checked (or recorded)
                raise FetchFailed(f"{item.row.what}: its bytes changed while fetching ({self._where(item)}); "
                                  "fetch again")
        info = writer.add_shard(name, columns, **options)
        self.log.add(info, None, computed=True)
        self.activity["new_shard_items"] += len(chunk)

    def _bytes_of(self, item: ListedItem) -> bytes:
        row, activity = item.row, self.activity
        if item.old is not None:
            activity["bytes_from_old_shards"] += 1
            return self.old.read(*item.old, row, item.item_key)
        if item.origin == SOURCE:
            # A local file, md5-checked when it arrived; read again (from the page cache: it arrived moments
            # ago). Its md5 is not checked again: the sha256 of what is read is compared with the item key
            # taken from the checked bytes (_write_chunk).
            activity["read_from_source"] += 1
            return self.transport.get(row.resolved_url, row.what)
        data = self.history.load_download(row, check_md5=False)  # checked in this run; its sha256 is compared
        if data is None:
            # Another checkout sharing store.dir took it into its layer and dropped it from the download area (the
            # area is shared by rows whose source states an md5). Downloaded again: its sha256 is compared with
            # the bytes checked in this run, so other bytes stop the fetch.
            activity["downloaded_again"] = activity.get("downloaded_again", 0) + 1
            return self.transport.get(row.resolved_url, row.what, row.hashlib_md5)
        activity["from_download_area"] += 1
        return data

    def _where(self, item: ListedItem) -> str:
        if item.origin == AREA:
            return str(self.history.download_path(item.row))
        return item.row.resolved_url if item.origin == SOURCE else "a previous raw shard"


def place_shard(writer: LayerWriter, name: str, old: OldShard, history: RawHistory) -> ShardInfo | None:
    """List a previous shard under `name`, its bytes unchanged (checked against the recorded sha256)."""
    dest = writer.path(name)
    if not history.place(old.info, old.path, dest):
        return None  # gone or damaged: its rows are written anew from their bytes
    try:
        return writer.add_existing(name, old.info.sha256)
    except (StoreError, KeyError):
        dest.unlink(missing_ok=True)
        return None


def _fetched(item: ListedItem, data: bytes) -> FetchedItem:
    # Every item here passed today's checks (downloaded in this run, or checked again by plan_layer), so its
    # header reads; ~10–20 µs, against the ms its check took.
    pixels = image_pixels(data)
    if pixels is None:
        raise FetchFailed(f"{item.row.what}: its bytes no longer open as an image; fetch again, and report this")
    return FetchedItem(item.row, data, pixels)


def _cut_identity(row: RegistryRow) -> str:
    return f"{row.id}:{row.hashlib_md5 or row.url}"
