"""The README's "Bad input catalogue": at least 40 rows, and every row names tests that exist."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(?:\[([^\]]+)\])?`")


def catalogue_rows() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Bad input catalogue\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if re.match(r"^\| \d+ \|", line)]


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_the_catalogue_has_at_least_40_rows_each_with_a_test_that_exists():
    rows = catalogue_rows()
    assert len(rows) >= 40
    numbers = [int(row.split("|")[1]) for row in rows]
    assert numbers == list(range(1, len(rows) + 1)), "rows are numbered 1, 2, … without gaps"
    missing = []
    for row in rows:
        references = TEST_REF.findall(row.split("|")[-2])  # the last column names the tests
        if not references:
            missing.append(f"row {row.split('|')[1].strip()}: names no test")
        for file, name, case in references:
            path = REPO / file
            if not path.exists() or name not in defined_tests(path):
                missing.append(f"row {row.split('|')[1].strip()}: {file}::{name} does not exist")
            elif case and case not in path.read_text():
                missing.append(f"row {row.split('|')[1].strip()}: {file}::{name} has no case {case!r}")
    assert not missing, "\n".join(missing)


def test_the_check_above_can_fail(tmp_path: Path):
    """A reference to a test that does not exist is caught (the check is not vacuous)."""
    row = "| 1 | x | y | z | `tests/test_catalogue.py::test_that_does_not_exist` |"
    (file, name, _), = TEST_REF.findall(row.split("|")[-2])
    assert name not in defined_tests(REPO / file)
