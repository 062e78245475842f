"""YAML read through libyaml's parser when PyYAML was built with it (the PyPI wheels are).

`yaml.safe_load` parses in pure Python: 0.09 s for the tiny project's dvc.lock, paid by every stage
process that looks at it, against 0.011 s through libyaml. Only the parser differs: the C loader keeps
PyYAML's SafeConstructor and Resolver, so a text both parsers accept gives the same objects (YAML 1.1
booleans, ints, timestamps, merge keys), which tests/test_yamlload.py checks on the files evalstack reads.
libyaml also accepts a few tabs the pure parser refuses (`a:\t1`), as DVC's own parser does, and its error
messages quote no source line.
"""
from __future__ import annotations

from typing import Any

import yaml

SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# libyaml composes nested collections by recursing on the C stack: 30,000 nested `[` crash the process
# (SIGSEGV), where the pure loader raises RecursionError. A text that could nest that deep is read by the pure
# loader; params.yaml and a dvc.lock hold a few dozen flow collections.
MAX_FLOW_OPENERS = 5_000


def loader_for(text: str) -> type:
    """The loader class for `text`: libyaml's unless the text could nest deeper than it survives."""
    return SafeLoader if text.count("[") + text.count("{") < MAX_FLOW_OPENERS else yaml.SafeLoader


def safe_load(text: str) -> Any:
    return yaml.load(text, Loader=loader_for(text))
