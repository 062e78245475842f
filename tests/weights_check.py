"""A model file replaced right after the adapter hashed it: the adapter must run the bytes it hashed.

The signature every result is keyed by names the sha256 of the bytes read; a framework that opened the path
again (or memory-mapped it, as LiteRT does with `model_path`) would run whatever a `dvc checkout` put there in
between, under the first bytes' signature (models/weights.py)."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from evalstack.config import ModelSpec
from evalstack.core.keys import sha256_bytes


def assert_runs_the_bytes_it_hashed(spec: ModelSpec, load: Callable[[ModelSpec], Any],
                                    outputs: Callable[[Any], list[np.ndarray]], replacement: bytes, monkeypatch,
                                    folder: Path) -> None:
    """`load` the model from a copy of `spec.file` whose bytes become `replacement` right after they are hashed;
    its `outputs` must be those of the model loaded from the intact file, and its sha256 the intact file's."""
    from evalstack.models import weights

    file = folder / f"replaced{spec.file.suffix}"
    shutil.copyfile(spec.file, file)
    spec = replace(spec, file=file)
    original = file.read_bytes()
    reference = load(spec)
    expected = outputs(reference)  # before anything is replaced
    hash_first = weights.sha256_bytes

    def hash_then_replace(data: bytes) -> str:
        digest = hash_first(data)
        file.write_bytes(replacement)  # in place, as a copy would: a mapped file sees the new bytes
        return digest

    with monkeypatch.context() as patch:
        patch.setattr(weights, "sha256_bytes", hash_then_replace)
        adapter = load(spec)
    assert file.read_bytes() == replacement  # the file was replaced while it loaded
    assert adapter.weights_sha256 == reference.weights_sha256 == sha256_bytes(original)
    found = outputs(adapter)
    assert len(found) == len(expected) and sum(np.size(array) for array in expected) > 0
    for a, b in zip(expected, found):
        np.testing.assert_array_equal(b, a)
