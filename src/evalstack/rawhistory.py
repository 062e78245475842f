"""What fetch has fetched before, kept outside DVC's outputs so incremental fetch survives DVC.

DVC deletes a stage's outputs before it reruns the stage (and `persist: true` would
switch off its run-cache), so the previous raw layer is not in `data/raw` when fetch
starts. Fetch therefore keeps, under `<store.dir>/fetch/`:

- `shards/<sha256>.h5`: every raw shard it wrote, by content, read-only;
- `layers/<digest of the output path>.json`: the index it last wrote for that path;
- `downloads/`: images downloaded but not yet in a recorded shard (a killed or failed
  fetch resumes from here instead of downloading them again).

This is fetch's own minimal record; the shard store (`evalstack.shardstore`) is the
general mechanism for derived layers and can absorb it.
"""
from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from evalstack.keys import md5_bytes, sha256_bytes, sha256_file
from evalstack.sources import RegistryRow
from evalstack.store import INDEX_NAME, Layer, LayerIndex, StoreError, atomic_write_bytes

_CHUNK = 1 << 20


@dataclass(frozen=True)
class PreviousLayer:
    """The last raw layer written for an output path, and where each of its shards can be had."""

    index: LayerIndex
    shard_paths: dict[str, Path]  # sha256 → a file with those bytes (output dir or history)


class RawHistory:
    def __init__(self, store_dir: Path | str):
        self.directory = Path(store_dir) / "fetch"

    # -- shards by content ----------------------------------------------------------------
    def shard_path(self, sha256: str) -> Path:
        return self.directory / "shards" / f"{sha256}.h5"

    def put_shard(self, source: Path, sha256: str) -> None:
        target = self.shard_path(sha256)
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            if _copy_hashing(source, tmp) != sha256:
                raise StoreError(f"{source}: bytes changed while they were recorded")
            os.chmod(tmp, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def materialise(self, source: Path, sha256: str, dest: Path) -> bool:
        """Copy a shard into place (atomically) if its bytes are the expected ones."""
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            if _copy_hashing(source, tmp) != sha256:
                return False
            os.chmod(tmp, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
            os.replace(tmp, dest)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    # -- last layer per output path -------------------------------------------------------
    def record_path(self, out_dir: Path) -> Path:
        digest = sha256_bytes(str(Path(out_dir).resolve()).encode())[:32]
        return self.directory / "layers" / f"{digest}.json"

    def record(self, out_dir: Path, index: LayerIndex) -> None:
        for shard in index.shards:
            self.put_shard(Path(out_dir) / shard.name, shard.sha256)
        path = self.record_path(out_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, index.to_json().encode())

    def previous(self, out_dir: Path, kind: str) -> PreviousLayer | None:
        """The layer now in `out_dir` if it is a finished one (called outside DVC), else the last
        one recorded for it; None when neither exists. Only shards whose bytes can be had count."""
        out_dir = Path(out_dir)
        if (out_dir / INDEX_NAME).exists():
            try:
                layer = Layer.open(out_dir, kind=kind)
                paths = {s.sha256: layer.path(s) for s in layer.shards if _has_bytes(layer.path(s), s.sha256)}
                return PreviousLayer(layer.index, paths)
            except StoreError:
                pass
        try:
            index = LayerIndex.from_json(self.record_path(out_dir).read_text())
        except (OSError, ValueError, KeyError):
            return None
        if index.kind != kind:
            return None
        paths = {s.sha256: self.shard_path(s.sha256) for s in index.shards if self.shard_path(s.sha256).exists()}
        return PreviousLayer(index, paths)

    # -- downloads awaiting a shard -------------------------------------------------------
    def download_path(self, row: RegistryRow) -> Path:
        digest = hashlib.sha256(repr(row.identity).encode()).hexdigest()[:40]
        return self.directory / "downloads" / f"{digest}.img"

    def load_download(self, row: RegistryRow) -> bytes | None:
        path = self.download_path(row)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if row.hashlib_md5 and md5_bytes(data) != row.hashlib_md5:
            path.unlink(missing_ok=True)  # damaged on disk: download again
            return None
        return data

    def save_download(self, row: RegistryRow, data: bytes) -> None:
        path = self.download_path(row)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)

    def has_download(self, row: RegistryRow) -> bool:
        return self.download_path(row).exists()

    def drop_downloads(self, rows: list[RegistryRow]) -> None:
        for row in rows:
            self.download_path(row).unlink(missing_ok=True)

    def clear_stale_temp_files(self) -> None:
        """Temp files of a fetch that was killed (SIGKILL leaves them; a rename never happened)."""
        for folder in ("downloads", "shards"):
            for tmp in (self.directory / folder).glob(".*.tmp"):
                if not _pid_alive(tmp.name.rsplit(".", 2)[-2]):
                    tmp.unlink(missing_ok=True)


def _has_bytes(path: Path, sha256: str) -> bool:
    return path.is_file() and sha256_file(path) == sha256


def _copy_hashing(source: Path, target: Path) -> str:
    digest = hashlib.sha256()
    with open(source, "rb") as reader, open(target, "wb") as writer:
        for chunk in iter(lambda: reader.read(_CHUNK), b""):
            digest.update(chunk)
            writer.write(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return digest.hexdigest()


def _pid_alive(text: str) -> bool:
    try:
        os.kill(int(text), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        pass
    return True
