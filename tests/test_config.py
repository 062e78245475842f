import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from evalstack.config import ConfigError, expanded_nodes, hidden_param_keys, load_params, model_spec, resolve_labels
from evalstack.preprocess.pipelines import pipeline_spec
from tests.conftest import REPO


def test_template_params_give_working_specs():
    params = load_params(REPO / "params.yaml")
    spec = model_spec(params, "tflite_cnn")
    assert spec.adapter == "tflite" and spec.pipeline == "pad_nn" and len(spec.labels) == 23
    assert pipeline_spec(params, "pad_nn").parameters() == {
        "crop": [71, 359, 707, 849], "resize": 454, "resample": "bicubic",
    }


def test_unknown_model_names_the_declared_ones():
    with pytest.raises(ConfigError, match=r"no models.nope; declared: \['a'\]"):
        model_spec({"models": {"a": {}}}, "nope")


def test_missing_model_field_is_named():
    with pytest.raises(ConfigError, match="models.a lacks 'adapter'"):
        model_spec({"models": {"a": {"file": "m", "pipeline": "p", "labels": ["x"]}}}, "a")


def test_labels_inline_or_by_name_and_no_duplicates():
    params = {"labels": {"two": ["x", "y"]}}
    assert resolve_labels(params, "two") == ("x", "y")
    assert resolve_labels(params, ["a", "b"]) == ("a", "b")
    with pytest.raises(ConfigError, match="label set 'three' is not declared"):
        resolve_labels(params, "three")
    with pytest.raises(ConfigError, match="duplicates"):
        resolve_labels(params, ["a", "a"])


def test_extra_model_fields_become_adapter_options(tmp_path: Path):
    params = {"models": {"m": {"file": "m.pt", "adapter": "torch", "pipeline": "p", "labels": ["a"], "input_shape": [8, 8, 3]}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    spec = model_spec(load_params(tmp_path / "params.yaml"), "m", root=tmp_path)
    assert spec.options == {"input_shape": [8, 8, 3]} and spec.file == tmp_path / "m.pt"


def test_a_model_field_written_under_options_is_refused_not_ignored():
    # `sha256:` under options: was ignored, so the pin a user wrote was never checked (found by an audit)
    entry = {"file": "m.pt", "adapter": "torch", "pipeline": "p", "labels": ["a"], "options": {"sha256": "0" * 64}}
    with pytest.raises(ConfigError, match=r"models.m.options: sha256 must go beside options:, as models.m.sha256: "
                                          r"'0{64}'; under options: it would be ignored"):
        model_spec({"models": {"m": entry}}, "m")
    entry["options"] = {"layout": "NCHW", "input_shape": [3, 8, 8]}  # adapter options, and the layout, belong there
    assert model_spec({"models": {"m": entry}}, "m").layout == "NCHW"


@pytest.mark.parametrize("params_file", ["params.yaml", "detection/params.yaml"])
def test_no_template_param_is_hidden_from_dvcs_run_cache(params_file: str):
    # DVC issue #10296: the run-cache drops keys named size/nfiles, so a change to one restores stale results.
    assert hidden_param_keys(yaml.safe_load((REPO / params_file).read_text())) == []
    load_params(REPO / params_file)


def test_a_param_dvc_cannot_see_is_refused_at_load(tmp_path: Path):
    params = {"preprocess": {"pipelines": {"thumb64": {"kind": "crop_resize", "size": 48}}}, "x": [{"nfiles": 2}]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r"preprocess\.pipelines\.thumb64\.size, x\.0\.nfiles: .*#10296.*resize"):
        load_params(tmp_path / "params.yaml")


def alias_bomb(depth: int = 10, width: int = 10) -> str:
    """'Billion laughs': each level lists the previous one `width` times, so it expands to width**depth nodes."""
    lines = ['a0: &a0 ["lol"]']
    for level in range(1, depth + 1):
        lines.append(f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * width)}]")
    return "\n".join(lines) + f"\nmodels: {{}}\nbomb: *a{depth}\n"


def test_an_alias_bomb_in_params_is_refused_at_once(tmp_path: Path):
    (tmp_path / "params.yaml").write_text(alias_bomb())
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=r"params\.yaml: its YAML aliases expand to [\d,]+ nodes .*alias bomb"):
        load_params(tmp_path / "params.yaml")
    assert time.perf_counter() - started < 5  # the old walk expanded every alias: minutes at depth 10


def test_aliases_that_stay_small_are_fine_and_walked_once(tmp_path: Path):
    text = "base: &base {kind: crop_resize, resize: 64}\npre: {a: *base, b: *base}\nx: {size: 3}\n"
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"x\.size: "):  # the hidden-key check still sees every key once
        load_params(tmp_path / "params.yaml")
    assert expanded_nodes(text) < 30


# -- trust round 2, item 8: a params schema names the key, the value and what is expected ------------
def test_wrong_types_and_ranges_name_the_key_the_value_and_what_is_expected(tmp_path: Path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["preprocess"]["pipelines"]["thumb64"]["resize"] = "64"
    params["fetch"]["workers"] = "eight"
    params["fetch"]["worker"] = 3
    params["compare"]["level"] = 1.5
    params["models"]["pls"]["trust"] = "yes"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError) as raised:
        load_params(tmp_path / "params.yaml")
    lines = str(raised.value).splitlines()
    assert lines[0] == f"{tmp_path / 'params.yaml'} does not fit the params schema (5 keys):"
    assert "  preprocess.pipelines.thumb64.resize: '64' (str), expected a valid integer" in lines
    assert "  fetch.workers: 'eight' (str), expected a valid integer" in lines
    assert "  fetch.worker: unknown key (a typo? the key is not one this section reads)" in lines
    assert "  compare.level: 1.5 (float), expected less than 1" in lines
    assert "  models.pls.trust: 'yes' (str), expected a valid boolean" in lines


def test_the_detection_profile_has_its_own_schema(tmp_path: Path):
    params = yaml.safe_load((REPO / "detection/params.yaml").read_text())
    params["grid"]["severities"] = [1, 6]
    params["models"]["shapes_centernet"]["nms_iou"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError) as raised:
        load_params(tmp_path / "params.yaml")
    assert "  grid.severities.1: 6 (int), expected less than or equal to 5" in str(raised.value).splitlines()
    assert "  models.shapes_centernet.nms_iou: 0 (int), expected greater than 0" in str(raised.value).splitlines()


def test_a_checked_text_is_not_checked_again(tmp_path: Path, monkeypatch):
    import evalstack.params_schema as schema

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    load_params(tmp_path / "params.yaml")
    calls = []
    monkeypatch.setattr(schema, "schema_errors", lambda params: calls.append(1) or [])
    load_params(tmp_path / "params.yaml")
    assert calls == []  # remembered by the text's hash
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text() + "\n# edited\n")
    load_params(tmp_path / "params.yaml")
    assert calls == [1]



def test_a_checked_text_costs_a_stage_no_pydantic_import(tmp_path: Path):
    """Every stage process loads params: a text checked before must not import the schema (pydantic, ~0.12 s)."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    probe = ("import sys; from pathlib import Path; from evalstack.config import load_params; "
             f"load_params(Path({str(tmp_path / 'params.yaml')!r})); print('pydantic' in sys.modules)")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    first, again = [subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
                    for _ in range(2)]
    assert (first.stdout.strip(), again.stdout.strip()) == ("True", "False")

def test_the_params_schema_is_in_no_stage_closure_so_a_new_allowed_key_invalidates_no_cache():
    """The schema only accepts or refuses params; it computes nothing, so editing it must not change a layer's
    code fingerprint (every layer would be recomputed) nor rerun every stage."""
    from evalstack.core.fingerprint import import_closure

    for script in ("stages/preprocess.py", "stages/infer.py", "stages/detection/infer.py"):
        closure = import_closure([REPO / script], follow_strings=True)
        assert "evalstack.config" in closure and "evalstack.params_schema" not in closure
