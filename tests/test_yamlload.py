"""evalstack reads params.yaml, dvc.yaml and dvc.lock through libyaml's parser: the objects must be the ones
`yaml.safe_load` builds, or a stage would read other params than DVC and the keys record."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from evalstack.config import parse_params_text
from evalstack.core import yamlload

REPO = Path(__file__).resolve().parents[1]

# YAML 1.1 scalars whose type depends on the resolver (a YAML 1.2 or JSON-schema loader reads several as
# strings or other numbers), merge keys, anchors, block and flow styles, quoting and escapes.
TRICKY = """
booleans: [yes, no, on, off, y, n, True, FALSE]
numbers: [012, 0o17, 0x1f, 1e3, 1.5e-3, .inf, -.Inf, .nan, 1_000, 190:20:30, +12]
strings: ['012', "tab\\there", "\\u00e9", plain text, '', ~, null, Null]
dates: [2026-12-06, 2026-12-06 10:00:00, 2001-12-14t21:59:43.10-05:00]
base: &base {resize: 64, crop: [81, 369, 697, 839]}
derived: {<<: *base, resize: 32}
folded: >
  one
  two
literal: |
  kept
   indented
"""


@pytest.mark.parametrize("name", ["params.yaml", "dvc.yaml", "detection/params.yaml", "detection/dvc.yaml", "tricky"])
def test_the_fast_loader_builds_what_safe_load_builds(name):
    text = TRICKY if name == "tricky" else (REPO / name).read_text()
    expected = yaml.safe_load(text)
    loaded = yamlload.safe_load(text)
    # repr, not ==: the types must agree too (1 == 1.0 == True), and nan is not equal to itself
    assert repr(loaded) == repr(expected)
    assert parse_params_text(text, name) == loaded or name == "tricky"


def test_the_fast_loader_is_libyaml_here():
    # the speed is the point: a PyYAML without libyaml falls back silently, so the install is checked
    assert yamlload.SafeLoader is yaml.CSafeLoader



def test_a_text_nested_deeper_than_libyaml_survives_is_an_error_not_a_crash(tmp_path):
    """libyaml recurses on the C stack: 30,000 nested flow sequences ended the process with SIGSEGV (found by a
    review); such a text is read by the pure loader, which raises."""
    import subprocess
    import sys

    (tmp_path / "params.yaml").write_text("a: " + "[" * 30_000 + "]" * 30_000 + "\n")
    probe = ("from pathlib import Path; from evalstack.config import load_params\n"
             "try:\n    load_params(Path('params.yaml'))\nexcept (RecursionError, Exception) as error:\n"
             "    print(type(error).__name__)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() in ("RecursionError", "ConfigError"), (done.returncode,
                                                                                                done.stderr[-500:])
