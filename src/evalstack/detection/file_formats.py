"""Which serialisation a torchvision-world detector file is, from its bytes alone (no torch imported): the
torchvision adapter loads by it, and evaluate's signature memo (detection/signatures.py) reads it too."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

from evalstack.models.trust import pickle_format

ONNX = "onnx"


def file_format(source: Path | bytes) -> str:
    """torchscript | export | state_dict | onnx, from the bytes: an archive's member names; outside a zip, an ONNX
    ModelProto starts with its field 1 (ir_version, tag byte 0x08), a pickle with 0x80 (a legacy pickle is a
    state_dict, refused unless trusted)."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return ONNX if data[:1] == b"\x08" and pickle_format(data) is None else "state_dict"
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    if any(name.endswith("/archive_format") for name in names):
        return "export"
    if any(name.endswith("/constants.pkl") for name in names) or any("/code/" in name for name in names):
        return "torchscript"
    return "state_dict"
