"""Model files that can run code when loaded are loaded only when params.yaml vouches for them.

`torch.export.load` reads parts of a `.pt2` archive with `torch.load(weights_only=False)`
(legacy weight files, pickled constants, a fallback when the safe loader fails), and a
TorchScript archive carries code that runs on load. A model file from a shared remote
(`dvc pull`) or from `dvc import-url https://…` is someone else's file, so such a file is
loaded only when its model entry either pins its bytes (`sha256:`, checked before
loading) or says `trust: true` (you built it, e.g. the train stage's output). TFLite,
ONNX, Keras (`safe_mode`) and PLS CSV files are data and need neither.
"""
from __future__ import annotations

from pathlib import Path

from evalstack.config import ModelError
from evalstack.core.keys import sha256_file

# suffix → what the format is, for files whose loader unpickles or runs code
PICKLE_BACKED = {
    ".pt2": "torch.export archive (.pt2; torch.export.load unpickles parts of it)",
    ".pt": "TorchScript archive (code and pickles that run on load)",
    ".pth": "PyTorch pickle (.pth)",
    ".pkl": "Python pickle",
}


def pickle_format(file: Path) -> str | None:
    """What makes `file` unsafe to load from an unknown source (None: its format is plain data)."""
    return PICKLE_BACKED.get(Path(file).suffix.lower())


def require_trusted(name: str, file: Path, sha256: str | None, trust: bool, where: str = "models") -> None:
    """Refuse to load a pickle-backed `file` unless its entry `where.name` pins its sha256 (and the
    bytes match) or says `trust: true`."""
    fmt = pickle_format(file)
    if fmt is not None:
        require_trusted_format(name, file, fmt, sha256, trust, where)


def require_trusted_format(name: str, file: Path, fmt: str, sha256: str | None, trust: bool,
                           where: str = "models") -> None:
    """`require_trusted` for a file whose format an adapter found from its content (`fmt` says what it is),
    whatever its name: a pickle renamed `.bin` is still a pickle."""
    if trust:
        return
    actual = sha256_file(file)
    if sha256:
        if sha256.lower() != actual:
            raise ModelError(f"{where}.{name}: {file} has sha256 {actual}, params.yaml pins {sha256}; "
                             "not loading it (a changed or substituted file)")
        return
    raise ModelError(
        f"{where}.{name}: not loading {file}: it is a {fmt}, which can run arbitrary code when loaded, "
        f"and {where}.{name} in params.yaml neither pins its `sha256:` nor says `trust: true`. "
        f"If it comes from a publisher, compare its sha256 ({actual}) with theirs and add `sha256: {actual}`; "
        "if you built it yourself, add `trust: true`. Prefer ONNX or TFLite files from others: they hold no code."
    )
