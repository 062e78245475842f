"""Names and addresses that come from data, checked before any path is built from them.

Layers, shards and registries travel between people (`dvc pull` from a shared remote, a
registry CSV from a server), so whatever they say is untrusted. A shard name read from
an index.json, a store address read from a shard's own attribute, an md5 in a DVC `.dir`
listing: each is joined to a directory somewhere. A crafted value (`../x.h5`, `/etc/x`)
would make that join point outside the directory, so every one is checked here first
and refused with an error naming the value. The checks are allow-lists: a name is what
evalstack itself writes, or it is refused.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

# A shard file name: what `shard_name` writes (00000.h5) and any plain name a future layout may
# use, but never a path: no separator, no leading dot, nothing but letters, digits, '.', '_', '-'.
_SHARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\.h5$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")  # shard digests and store addresses (sha256 / Key.hex)
_DVC_MD5 = re.compile(r"^[0-9a-f]{32}(\.dir)?$")  # how DVC names its cache objects


class UnsafeName(ValueError):
    """A name or address from data would leave the directory it is meant for."""


def check_shard_name(name: Any, what: str = "shard name") -> str:
    """A shard file name from an index: a plain `*.h5` file name, never a path."""
    if not isinstance(name, str) or not _SHARD_NAME.match(name) or ".." in name:
        raise UnsafeName(f"{what} {name!r} is not a plain shard file name (like 00000.h5): "
                         "a path in it would leave the layer's folder")
    return name


def check_sha256(value: Any, what: str = "sha256") -> str:
    """A sha256 hex digest (a shard's checksum, a store address)."""
    if not isinstance(value, str) or not _SHA256.match(value):
        raise UnsafeName(f"{what} {value!r} is not a sha256 hex digest (64 lowercase hex digits)")
    return value


def check_address(value: Any, what: str = "store address") -> str:
    """A shard-store address: a sha256 hex digest, so it names one file under the store and nothing else."""
    return check_sha256(value, what)


def is_address(value: Any) -> bool:
    return isinstance(value, str) and bool(_SHA256.match(value))


def check_dvc_md5(value: Any, what: str = "DVC cache md5") -> str:
    """An md5 from dvc.lock or a DVC `.dir` listing: it names a file in DVC's cache."""
    if not isinstance(value, str) or not _DVC_MD5.match(value):
        raise UnsafeName(f"{what} {value!r} is not an md5 hex digest (32 lowercase hex digits, optionally .dir)")
    return value


def project_output(text: str, cwd: Path | None = None) -> Path:
    """An output path a stage takes from params (`train.*.file`, `export.*.file`, `fit_pls.file`), checked
    before anything is written: it must stay inside the DVC project the stage runs in, also after its
    folders' symlinks are resolved. DVC refuses an output outside the project only after the stage ran,
    by which time an existing file there (`../../victim.txt`) would have been overwritten.
    Usable as an argparse `type=`: a refusal is one line naming the path, the project and the param."""
    cwd = (cwd or Path.cwd()).resolve()
    root = next((folder for folder in (cwd, *cwd.parents) if (folder / ".dvc").is_dir()), cwd)
    path = Path(text)
    # the folder is resolved, not the file: DVC may link an output into its cache (a symlink is fine there)
    resolved = (cwd / path).parent.resolve() / path.name
    if path.name in ("", ".", "..") or not resolved.is_relative_to(root):
        raise argparse.ArgumentTypeError(
            f"output {text!r} resolves to {resolved}, outside the project {root}; model and export files named "
            "in params must stay inside the project (change the `file:` param)")
    return path
