"""Which run records `evalstack push-run-cache` finds in a DVC cache."""
from pathlib import Path

from evalstack.cli.sharing import run_cache_records


def test_run_records_are_the_files_three_levels_below_runs(tmp_path: Path):
    runs = tmp_path / "runs"
    for stage_key, run_key in (("ab12", "r1"), ("ab12", "r2"), ("cd34", "r3")):
        (runs / stage_key[:2] / stage_key).mkdir(parents=True, exist_ok=True)
        (runs / stage_key[:2] / stage_key / run_key).write_text("cmd: python stages/x.py\n")
    (runs / "ab" / "stray.tmp").write_text("")  # not a record: wrong depth
    assert run_cache_records(runs) == [("ab12", "r1"), ("ab12", "r2"), ("cd34", "r3")]
    assert run_cache_records(tmp_path / "missing") == []
