"""The bytes a model is loaded from: read once, hashed, and handed to the framework as they are.

A model's signature names the sha256 of its file, and every result computed with it is keyed by that
signature. Hashing the file and then letting the framework open the path again leaves a window: a file
replaced in between (a `dvc checkout`, a copy still being written) would be loaded under the first bytes'
sha256, and a later run with the first file would reuse results those weights never gave. So an adapter reads
the file once, here, and its framework loads these very bytes: onnxruntime and LiteRT take bytes, torch's
loaders a BytesIO, and Keras, which takes only a path, a private copy (`private_copy`).
"""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from evalstack.config import ModelError
from evalstack.core.keys import sha256_bytes


@dataclass(frozen=True, repr=False)  # repr=False: a traceback should not print the weights
class WeightFile:
    path: Path  # where the bytes were read from: for messages, never read again
    data: bytes
    sha256: str


def read_weights(file: Path) -> WeightFile:
    data = Path(file).read_bytes()
    return WeightFile(Path(file), data, sha256_bytes(data))


def check_pin(name: str, weights: WeightFile, pinned: str | None) -> None:
    """A `sha256:` pinned in the model entry must be the bytes' own."""
    if pinned and pinned.lower() != weights.sha256:
        raise ModelError(f"model {name}: {weights.path} has sha256 {weights.sha256}, params.yaml expects {pinned}")


@contextmanager
def private_copy(weights: WeightFile, suffix: str) -> Iterator[Path]:
    """The bytes in a file of a fresh temporary folder, for a framework that loads only from a path: no other
    process writes there, so what it loads is what was hashed."""
    with tempfile.TemporaryDirectory(prefix="evalstack-model-") as folder:
        path = Path(folder) / f"model{suffix}"
        path.write_bytes(weights.data)
        yield path
