from pathlib import Path

import numpy as np

from evalstack.cli import main
from evalstack.keys import Key
from evalstack.store import LayerWriter, shard_name


def _layer(directory: Path) -> Path:
    writer = LayerWriter(directory, "preprocessed", Key("pipeline", {"size": 4}))
    writer.add_shard(shard_name(0), {"item_key": np.asarray([b"a" * 64], dtype="S64"), "x": np.zeros((1, 4, 4, 3), np.uint8)})
    writer.stats = {"items_preprocessed": 1}
    writer.finish()
    return directory


def test_show_prints_kind_count_and_stats(tmp_path, capsys):
    assert main(["show", str(_layer(tmp_path / "l"))]) == 0
    out = capsys.readouterr().out
    assert "preprocessed layer" in out and "1 items" in out and "items_preprocessed: 1" in out


def test_verify_exit_code_tells_intact_from_corrupt(tmp_path, capsys):
    layer = _layer(tmp_path / "l")
    assert main(["verify", str(layer)]) == 0
    shard = layer / "00000.h5"
    data = bytearray(shard.read_bytes())
    data[100] ^= 1
    shard.write_bytes(bytes(data))
    assert main(["verify", str(layer)]) == 1
    assert f"CORRUPT {shard}" in capsys.readouterr().out


def test_missing_layer_is_exit_1_with_message(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nope")]) == 1
    assert "not a finished layer" in capsys.readouterr().out
