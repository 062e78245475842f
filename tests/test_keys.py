from pathlib import Path

import pytest

from evalstack.core.keys import Key, canonical_json, explain_change, sha256_bytes, sha256_file


def test_key_hex_ignores_dict_order():
    assert Key("pipeline", {"a": 1, "b": [1, 2]}).hex == Key("pipeline", {"b": [1, 2], "a": 1}).hex


def test_key_hex_changes_with_any_part_and_kind():
    base = Key("pipeline", {"size": 454})
    assert base.hex != Key("pipeline", {"size": 384}).hex
    assert base.hex != Key("model", {"size": 454}).hex


def test_key_round_trips_through_json():
    key = Key("model", {"weights_sha256": "ab" * 32, "labels": ["x", "y"]})
    assert Key.from_json(key.to_json()) == key


def test_explain_change_names_the_leaf_that_changed():
    old = {"kind": "crop_resize", "params": {"size": 454, "crop": [71, 359, 707, 849]}}
    new = {"kind": "crop_resize", "params": {"size": 384, "crop": [71, 359, 707, 849]}}
    assert explain_change(old, new) == ["params.size: 454 → 384"]


def test_explain_change_reports_added_and_removed_and_shortens_hashes():
    lines = explain_change({"w": "a" * 64, "old": 1}, {"w": "b" * 64, "new": 2})
    assert "new: added (2)" in lines
    assert "old: removed (was 1)" in lines
    assert "w: aaaaaaaaaaaa → bbbbbbbbbbbb" in lines


def test_canonical_json_rejects_unhashable_objects():
    with pytest.raises(TypeError, match="cannot put object"):
        canonical_json({"x": object()})


def test_sha256_file_matches_bytes(tmp_path: Path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 3_000_000)
    assert sha256_file(path) == sha256_bytes(b"x" * 3_000_000)
