"""Hashing and cache keys.

Every cached artefact is addressed by a key whose *parts* are recorded next to it,
so the tool can say which part changed ("pipeline pad_nn: size 454 → 384")
instead of only that a hash differs.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

_CHUNK = 1 << 20


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the same value always gives the same text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_jsonable)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, Path):
        return obj.as_posix()
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    raise TypeError(f"cannot put {type(obj).__name__} into a cache key")


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def md5_bytes(data: bytes | memoryview) -> str:
    # md5 only checks what a source states; it is never used as a key.
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class Key:
    """A named cache key: `kind` says what it addresses, `parts` what it is made of."""

    kind: str
    parts: Mapping[str, Any] = field(default_factory=dict)

    @property
    def hex(self) -> str:
        return sha256_bytes(canonical_json({"kind": self.kind, "parts": self.parts}).encode())

    def to_json(self) -> str:
        return canonical_json({"kind": self.kind, "parts": self.parts})

    @classmethod
    def from_json(cls, text: str) -> "Key":
        data = json.loads(text)
        return cls(kind=data["kind"], parts=data["parts"])


def flatten(parts: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping → {"a.b.c": value} so two keys can be compared leaf by leaf."""
    flat: dict[str, Any] = {}
    for name, value in parts.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def explain_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two key part mappings, e.g. ``size: 454 → 384``."""
    before, after = flatten(old), flatten(new)
    lines = []
    for name in sorted(before.keys() | after.keys()):
        code = _CODE_PART.match(name)
        if code is not None and before.get(name) != after.get(name):
            # {"code": {module: digest}}: name the file, not two digests
            what = "added" if name not in before else "removed" if name not in after else "changed"
            lines.append(f"{code.group(1) or ''}code: {_module_file(code.group(2))} {what}")
        elif name not in before:
            lines.append(f"{name}: added ({_short(after[name])})")
        elif name not in after:
            lines.append(f"{name}: removed (was {_short(before[name])})")
        elif before[name] != after[name]:
            lines.append(f"{name}: {_short(before[name])} → {_short(after[name])}")
    return lines


_CODE_PART = re.compile(r"^((?:[^.]+\.)*?)code\.(.+)$")


def _module_file(module: str) -> str:
    from evalstack.core.modules import module_path

    return module_path(module)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else canonical_json(value)
    # Hashes are long; twelve characters are enough to tell them apart in a message.
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]
    return text if len(text) <= 60 else text[:57] + "..."
