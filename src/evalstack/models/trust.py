"""Model files that can run code when loaded are loaded only when params.yaml vouches for them.

`torch.export.load` reads parts of a `.pt2` archive with `torch.load(weights_only=False)`
(legacy weight files, pickled constants, a fallback when the safe loader fails), and a
TorchScript archive carries code that runs on load. A model file from a shared remote
(`dvc pull`) or from `dvc import-url https://…` is someone else's file, so such a file is
loaded only when its model entry either pins its bytes (`sha256:`, checked before
loading) or says `trust: true` (you built it, e.g. the train stage's output). TFLite,
ONNX, Keras (`safe_mode`) and PLS CSV files are data and need neither. What a file is
comes from its bytes, never its name: a pickle called `model.onnx` or `evil.bin` is a
pickle (`pickle_format`), and the data adapters refuse one before their loader sees it.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

from evalstack.config import ModelError
from evalstack.models.weights import WeightFile

# What a file is, told by its bytes: a name says nothing (a pickle renamed `evil.bin` or `model.onnx`
# is still a pickle). Zip members that mark each torch archive (torch 2.x layouts):
_TORCH_ZIP_KINDS = (
    ("archive_format", "torch.export archive (.pt2; torch.export.load unpickles parts of it)"),
    ("/code/", "TorchScript archive (code and pickles that run on load)"),
    ("data.pkl", "PyTorch pickle archive (torch.save; unpickled on load)"),
)
_PICKLE_PROTOCOLS = range(2, 6)  # b"\x80" + protocol byte starts every pickle of protocol 2 and later
UNPICKLING_LOADER = "file handed to torch's loader (torch.load / torch.jit.load / torch.export.load unpickle)"


def pickle_format(source: Path | bytes) -> str | None:
    """What makes a file unsafe to load from an unknown source, judged by its bytes whatever its name
    (None: it holds no pickle: ONNX, TFLite, Keras, HDF5, CSV and other data formats)."""
    if isinstance(source, bytes):
        data = source
    else:
        try:
            data = Path(source).read_bytes()
        except OSError:
            return None
    head = data[:4]
    if len(head) >= 2 and head[0] == 0x80 and head[1] in _PICKLE_PROTOCOLS:
        return "Python pickle (raw; unpickled on load)"
    if head == b"PK\x03\x04" and zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
        for marker, description in _TORCH_ZIP_KINDS:
            if any(marker in name for name in names):
                return description
        if any(name.endswith(".pkl") for name in names):
            return "zip archive holding pickles"
    return None


def refuse_pickle_for_data_adapter(name: str, weights: WeightFile, adapter: str) -> None:
    """A data adapter (onnx, tflite, keras, pls) never unpickles, but a pickle handed to it is a mix-up or a
    trap: say what the file is, by its bytes, instead of a parser error from deep in a framework."""
    fmt = pickle_format(weights.data)
    if fmt is not None:
        raise ModelError(f"models.{name}: {weights.path} is a {fmt} by its bytes, not a {adapter} model file; "
                         "if it is a torch model, declare it with a torch adapter (and `sha256:` or `trust: true`)")


def require_trusted(name: str, weights: WeightFile, sha256: str | None, trust: bool, where: str = "models") -> None:
    """Called by every loader that unpickles (torch's) with the bytes it is about to load: refuse them unless
    the entry `where.name` pins their sha256 (and it matches) or says `trust: true`. Whatever the bytes look
    like, such a loader would unpickle them, so a file that is no recognised archive needs the same pin or
    trust."""
    if trust:
        return
    file, actual = weights.path, weights.sha256
    fmt = pickle_format(weights.data) or UNPICKLING_LOADER
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
