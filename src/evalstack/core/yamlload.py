"""YAML read through libyaml's parser when PyYAML was built with it (the PyPI wheels are).

`yaml.safe_load` parses in pure Python: 0.09 s for the tiny project's dvc.lock, paid by every stage
process that looks at it, against 0.011 s through libyaml. Only the parser differs: the C loader keeps
PyYAML's SafeConstructor and Resolver, so a text gives the same objects (YAML 1.1 booleans, ints,
timestamps, merge keys), which tests/test_yamlload.py checks on the files evalstack reads.
"""
from __future__ import annotations

from typing import Any

import yaml

SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    return yaml.load(text, Loader=SafeLoader)
