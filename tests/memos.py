"""Damage a remembered-signature memo file (models/signatures.py) in place, one way at a time."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator


def damaged_memos(path: Path) -> Iterator[str]:
    """Yields after each damage, saying what it did: the caller checks the memo is no longer used."""
    record = json.loads(path.read_text())
    record["signature"]["parts"]["weights_sha256"] = "0" * 64
    path.write_text(json.dumps(record))
    yield "a signature naming other weights"
    record["signature"]["parts"]["weights_sha256"] = record["memo"]["parts"]["weights_sha256"]
    record["signature"]["kind"] = "other"
    path.write_text(json.dumps(record))
    yield "a record of another kind"
    del record["signature"]
    path.write_text(json.dumps(record))
    yield "a record without its signature"
    path.write_text("{not json")
    yield "unparsable JSON"
