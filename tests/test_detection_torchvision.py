"""The torchvision adapter against torchvision itself: post-processing from the cache equals the model configured
at those values; TorchScript, .pt2 and state_dict + builder loading; both calling contracts; frozen NMS; devices."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch

from evalstack.config import ModelError, ModelSpec
from evalstack.core.keys import Key, sha256_file
from evalstack.demo.torchvision_detector import build_random, save_demo_detector
from evalstack.detection.adapter import load_detector
from evalstack.detection.candidates import candidates_key, infer_candidates_layer
from evalstack.detection.decoding import PostProcess
from evalstack.detection.layer import open_detections, read_table
from evalstack.detection.postprocess import model_space_detections, postprocess_layer
from evalstack.detection.styles import FROZEN, NMS_THEN_CAP
from evalstack.detection.torchvision_adapter import file_format
from tests.detection_helpers import coco_project
from tests.weights_check import assert_runs_the_bytes_it_hashed

FRCNN, SSD = "fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large"
QUANTILES = [(0.5, 0.5, 100), (0.9, 0.3, 10), (0.0, 0.7, 2000)]  # (threshold's score quantile, nms_iou, max_det)


def tv_spec(file: Path, n_labels: int = 3, **options) -> ModelSpec:
    labels = tuple(f"c{i}" for i in range(n_labels))
    return ModelSpec(name="tv", file=file, adapter="torchvision", pipeline="lb", labels=labels, task="detect",
                     options=options, trust=True)


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def model_run(model: torch.nn.Module, batch: np.ndarray, post: PostProcess) -> list[dict]:
    """torchvision's own run of `model` configured with `post` (what the cache must reproduce)."""
    heads = model.roi_heads if hasattr(model, "roi_heads") else model
    heads.score_thresh, heads.nms_thresh, heads.detections_per_img = (post.confidence_threshold, post.nms_iou,
                                                                      post.max_detections)
    with torch.inference_mode():
        return model([torch.from_numpy(item).permute(2, 0, 1).float() / 255.0 for item in batch])


def assert_same(found, reference: dict) -> int:
    """Same scores in the same order; labels equal and boxes within 1e-4, row by row. Among rows of exactly
    equal score torchvision's order is its unstable sort's (`_batched_nms_vanilla` sorts the kept boxes with
    `sort(descending=True)`), which depends on the order boxes came in: there the rows (label and box) are
    compared as a set. Equal scores under two labels happen: on 2026-12-07's machine (a Xeon with
    AMX), image 16 kept two boxes at exactly 0.09112353, labels 0 and 8, in the other order than ours.
    Returns how many rows sat in such ties."""
    assert np.array_equal(found.scores, reference["scores"].numpy())
    mine = np.column_stack([found.labels, found.boxes]).astype(np.float64)
    theirs = np.column_stack([reference["labels"].numpy() - 1, reference["boxes"].numpy()]).astype(np.float64)
    _, first, counts = np.unique(found.scores, return_index=True, return_counts=True)
    tied = 0
    for start, count in zip(first[counts > 1], counts[counts > 1]):
        rows = slice(start, start + count)
        mine[rows], theirs[rows] = (b[rows][np.lexsort(b[rows].T[::-1])] for b in (mine, theirs))  # rows as a set
        tied += int(count)
    assert np.array_equal(mine[:, 0], theirs[:, 0])  # the same labels, in the same order outside ties
    assert np.abs(mine[:, 1:] - theirs[:, 1:]).max(initial=0.0) <= 1e-4
    return tied


@pytest.mark.slow
@pytest.mark.parametrize("builder,size,n_classes", [(FRCNN, 320, 11), (SSD, 160, 4)])
def test_postprocessing_the_cache_equals_the_model_configured_at_three_settings(tmp_path, builder, size, n_classes):
    file = save_demo_detector(tmp_path / "m.pth", builder, n_classes, seed=1)
    adapter = load_detector(tv_spec(file, n_classes - 1, builder=builder, num_classes=n_classes,
                                    candidates={"min_score": 0.01, "top_k": 3000}))
    batch = images(20, size)
    style = adapter.postprocess_style((size, size))
    assert style.style == NMS_THEN_CAP and (style.box_map is not None) == (builder == SSD)  # SSD: 160 → its 320
    cached = [found for start in range(0, 20, 5) for found in adapter.candidates_batch(batch[start:start + 5])]
    reference = build_random(builder, n_classes, seed=1)
    coordinates, ties = [], []
    scores = np.concatenate([found.scores for found in cached])
    assert len(np.unique(scores)) > 0.9 * len(scores)  # a real score order, not ties (demo weights calibrated)
    for quantile, iou, max_det in QUANTILES:
        threshold = max(0.01, float(np.quantile(scores, quantile)))
        post = PostProcess(threshold, iou, max_det)
        expected = [out for start in range(0, 20, 5) for out in model_run(reference, batch[start:start + 5], post)]
        assert sum(len(out["scores"]) for out in expected) > 20  # real detections, not an empty comparison
        for found, out in zip(cached, expected):
            ties.append(assert_same(model_space_detections(found, post, style, "tv", adapter.bound), out))
            coordinates.append(4 * int(np.sum(found.scores > threshold)))
    # batched_nms: per-class NMS above 4,000 coordinates on the CPU, one offset NMS below; both paths were taken
    assert max(coordinates) > 4000 and min(coordinates) <= 4000 if builder == FRCNN else True
    assert sum(ties) <= 0.01 * sum(coordinates) / 4  # ties are rare: the comparison is of an order


@pytest.mark.slow
def test_torchscript_and_state_dict_load_the_same_detector(tmp_path):
    state = save_demo_detector(tmp_path / "m.pth", FRCNN, 4)
    scripted = save_demo_detector(tmp_path / "m.weights", FRCNN, 4, scripted=True)  # content decides, not suffix
    assert (file_format(state), file_format(scripted)) == ("state_dict", "torchscript")
    from_state = load_detector(tv_spec(state, builder=FRCNN, num_classes=4))
    from_script = load_detector(tv_spec(scripted))
    assert from_script.calling == "torchvision" and from_script.postprocess_style((320, 320)).style == NMS_THEN_CAP
    batch = images(3, 320)
    for a, b in zip(from_state.candidates_batch(batch), from_script.candidates_batch(batch)):
        assert np.array_equal(a.labels, b.labels) and np.allclose(a.boxes, b.boxes, atol=1e-4)
        assert np.allclose(a.scores, b.scores, atol=1e-6)
    # a scripted model that resizes internally cannot have its NMS reached in its own coordinates: frozen, its values
    frozen = from_script.postprocess_style((128, 128))
    assert frozen.style == FROZEN and "resizes 128x128" in frozen.reason and frozen.frozen == PostProcess(0.05, 0.5, 100)


def test_trust_follows_the_content_not_the_name(tmp_path):
    file = save_demo_detector(tmp_path / "weights.bin", FRCNN, 4)
    spec = replace(tv_spec(file, builder=FRCNN, num_classes=4), trust=False)
    with pytest.raises(ModelError, match="PyTorch pickle .*neither pins its `sha256:` nor says `trust: true`"):
        load_detector(spec)
    assert load_detector(replace(spec, sha256=sha256_file(file))).format == "state_dict"
    with pytest.raises(ModelError, match="`builder:` must name the torchvision architecture"):
        load_detector(tv_spec(file))
    with pytest.raises(ModelError, match="not a state_dict of ssdlite320_mobilenet_v3_large"):
        load_detector(tv_spec(file, builder=SSD, num_classes=4))


def test_a_state_dict_replaced_after_its_hash_is_not_what_runs(tmp_path, monkeypatch):
    # torch.load reads the bytes the signature hashed, not the path again (models/weights.py)
    file = save_demo_detector(tmp_path / "m.pth", FRCNN, 4)
    other = save_demo_detector(tmp_path / "other.pth", FRCNN, 4, seed=2).read_bytes()
    batch = images(1, 128)
    assert_runs_the_bytes_it_hashed(tv_spec(file, builder=FRCNN, num_classes=4), load_detector,
                                    lambda model: [column for found in model.candidates_batch(batch)
                                                   for column in (found.boxes, found.labels, found.scores)],
                                    other, monkeypatch, tmp_path)


class PMDetector(torch.nn.Module):
    """PerceptionMetrics' contract: one batched [B, 3, H, W] tensor in, a list of dicts out (post-processing inside)."""

    def forward(self, images: torch.Tensor) -> List[Dict[str, torch.Tensor]]:
        out: List[Dict[str, torch.Tensor]] = []
        for i in range(images.shape[0]):
            level = images[i].mean(dim=(1, 2))  # one box per channel, scored by its mean
            corner = level.abs() * 10.0
            boxes = torch.stack([corner, corner, corner + 20.0, corner + 24.0], dim=1)
            out.append({"boxes": boxes, "scores": torch.sigmoid(level), "labels": torch.arange(3) + 1})
        return out


def test_perceptionmetrics_contract_scripted_and_pm_config(tmp_path, monkeypatch):
    file = tmp_path / "pm.torchscript"
    torch.jit.script(PMDetector()).save(str(file))
    norm = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    monkeypatch.chdir(tmp_path)  # the detection project: pm_config paths are relative to it
    (tmp_path / "pm_configs").mkdir()
    config = Path("pm_configs/pm.json")
    config.write_text(json.dumps({"model_format": "torchvision", "confidence_threshold": 0.2, "nms_threshold": 0.5,
                                  "resize": {"width": 64, "height": 64}, "normalization": norm, "batch_size": 4,
                                  "iou_threshold": 0.5}))
    frozen = {"confidence_threshold": 0.0, "nms_iou": 0.5, "max_detections": 100}
    # every value of the config that changes a result is written in params too (DVC tracks params, not the JSON)
    with pytest.raises(ModelError, match=r"pm_config .* says confidence_threshold: 0.2; write it in params.yaml "
                                         r"too \(models.tv.confidence_threshold: 0.2\)"):
        load_detector(tv_spec(file, pm_config=str(config), frozen_nms=frozen))
    stated = {"confidence_threshold": 0.2, "nms_iou": 0.5, "normalization": norm}
    adapter = load_detector(tv_spec(file, pm_config=str(config), frozen_nms=frozen, **stated))
    assert adapter.calling == "perceptionmetrics" and adapter.postprocess == PostProcess(0.2, 0.5, 100)
    style = adapter.postprocess_style((64, 64))
    assert style.style == FROZEN and "PerceptionMetrics" in style.reason
    batch = images(2, 64)
    found = adapter.candidates_batch(batch)
    tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
    mean, std = torch.tensor(norm["mean"])[:, None, None], torch.tensor(norm["std"])[:, None, None]
    direct = PMDetector()((tensor - mean) / std)  # PerceptionMetrics normalises before the model
    for cand, out in zip(found, direct):
        order = torch.argsort(out["scores"], descending=True, stable=True)
        assert np.allclose(cand.scores, out["scores"][order].numpy()) and np.allclose(cand.boxes, out["boxes"][order])
    with pytest.raises(ModelError, match="pipeline lb gives 32x32 letterboxes"):
        adapter.candidates_batch(images(1, 32))
    with pytest.raises(ModelError, match="params.yaml says nms_iou: 0.6 but pm_config .* says nms_threshold: 0.5"):
        load_detector(tv_spec(file, pm_config=str(config), frozen_nms=frozen, **(stated | {"nms_iou": 0.6})))
    config.write_text(json.dumps({"model_format": "yolo"}))
    with pytest.raises(ModelError, match="model_format 'yolo'.*adapter: yolo"):
        load_detector(tv_spec(file, pm_config=str(config)))
    # a config DVC does not track (an edit of it would rerun nothing) is refused, naming where it goes
    for elsewhere in (tmp_path / "pm.json", Path("pm.json"), Path("pm_configs/../pm.json")):
        with pytest.raises(ModelError, match=r"pm_config .* must be a file in pm_configs/ \(as pm_configs/pm.json\)"):
            load_detector(tv_spec(file, pm_config=str(elsewhere), frozen_nms=frozen, **stated))


def test_a_frozen_pt2_refuses_an_nms_change_and_allows_a_stricter_threshold(tmp_path):
    file = tmp_path / "frozen.model"
    torch.export.save(torch.export.export(PMDetector(), (torch.rand(1, 3, 32, 32),)), str(file))  # batches of 1
    assert file_format(file) == "export"
    with pytest.raises(ModelError, match="frozen_nms: .*confidence_threshold"):
        load_detector(tv_spec(file)).postprocess_style((32, 32))
    frozen = {"confidence_threshold": 0.0, "nms_iou": 0.5, "max_detections": 100}
    root = coco_project(tmp_path / "p", shard_size=2)  # 3 images, letterboxed to 32 px, batches of 2
    adapter = load_detector(tv_spec(file, 3, frozen_nms=frozen, confidence_threshold=0.0, nms_iou=0.5))
    infer_candidates_layer(root / "pre", root / "cand", adapter, ["val"], batch_size=1)
    assert adapter.calling == "perceptionmetrics"  # found by trying the .pt2
    changed = PostProcess(0.0, 0.6, 100)
    with pytest.raises(ModelError, match=r"frozen \(a torch.export archive.*nms_iou 0.6.*refuses rather than ignore"):
        postprocess_layer(root / "cand", root / "det", changed)
    with pytest.raises(ModelError, match="more detections"):
        postprocess_layer(root / "cand", root / "det", PostProcess(0.0, 0.5, 101))
    postprocess_layer(root / "cand", root / "det", PostProcess(0.6, 0.5, 2))
    table = read_table(open_detections(root / "det"))
    assert len(table.scores) and (table.scores > 0.6).all() and (table.counts <= 2).all()


@pytest.mark.slow
def test_a_cut_image_refuses_a_lower_threshold(tmp_path):
    root = coco_project(tmp_path / "p", shard_size=2)
    file = save_demo_detector(tmp_path / "m.pth", FRCNN, 3)
    adapter = load_detector(tv_spec(file, 2, builder=FRCNN, num_classes=3, candidates={"min_score": 0.01, "top_k": 5}))
    infer_candidates_layer(root / "pre", root / "cand", adapter, ["val"], batch_size=2)
    with pytest.raises(ModelError, match=r"image \d filled candidates.top_k \(5 candidates kept\).*Raise models.tv.candidates.top_k"):
        postprocess_layer(root / "cand", root / "det", PostProcess(0.011, 0.5, 100))
    with pytest.raises(ModelError, match="below candidates.min_score"):
        postprocess_layer(root / "cand", root / "det", PostProcess(0.005, 0.5, 100))
    postprocess_layer(root / "cand", root / "det", PostProcess(0.99, 0.5, 100))  # above every cut score: exact


def test_device(tmp_path, monkeypatch):
    file = tmp_path / "missing-trust.pth"
    torch.save({}, str(file))
    if not torch.cuda.is_available():
        # refused before anything is loaded: the untrusted file's own error would come later
        with pytest.raises(ModelError, match="device 'cuda' asked for, but torch sees no CUDA device"):
            load_detector(replace(tv_spec(file, device="cuda"), trust=False))
    with pytest.raises(ModelError, match="device 'gpu' unknown"):
        load_detector(tv_spec(file, device="gpu"))
    model = save_demo_detector(tmp_path / "m.pth", FRCNN, 4)
    cpu = load_detector(tv_spec(model, builder=FRCNN, num_classes=4, device="auto"))
    assert cpu.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    pipeline = candidates_key(cpu.signature(), cpu.signature(), {}).parts["pipeline"]
    monkeypatch.setattr(cpu, "device", torch.device("cuda"))  # the kind, as a CUDA run would record it
    keys = {candidates_key(a.signature(), a.signature(), {}).hex for a in (cpu, load_detector(tv_spec(
        model, builder=FRCNN, num_classes=4, device="cpu")))}
    assert len(keys) == 2 and pipeline  # a CPU cache is never served as a GPU result


def test_with_device_cpu_evaluate_remembers_the_signature_and_otherwise_it_loads(tmp_path, monkeypatch):
    """evaluate's memo (detection/signatures.py) gives the key a load gives, so an NMS change re-runs evaluate
    without torch. Under `device: auto` the contract's device kind is this machine's; `cuda` is refused by a load
    where no GPU is seen; a pm_config's options come from another file; an ONNX file's contract records the
    onnxruntime module's version: all load, as before. So does a class replaced in its module."""
    from evalstack.detection import signatures
    from evalstack.detection.signatures import (
        expected_detections_key,
        memo_key,
        remember_signature,
        remembered_signature,
    )
    from evalstack.models.signatures import write_memo
    from tests.conftest import store_in

    model = save_demo_detector(tmp_path / "m.pth", FRCNN, 4)
    store, pipeline = store_in(tmp_path / "store"), Key("pipeline", {"size": 320})
    spec = tv_spec(model, builder=FRCNN, num_classes=4, device="cpu", candidates={"min_score": 0.01, "top_k": 200})
    assert remembered_signature(store, spec) is None
    first = expected_detections_key(spec, pipeline, store)  # loads, then remembers
    assert remembered_signature(store, spec) == load_detector(spec).signature()
    # post-processing the memo's path accepts as a load does: torchvision caps after its NMS, so above top_k too
    changed = replace(spec, options={**spec.options, "nms_iou": 0.3, "max_detections": 300})
    assert remembered_signature(store, changed) is not None
    assert expected_detections_key(changed, pipeline, store) == expected_detections_key(changed, pipeline, None) != first
    without = {name: value for name, value in spec.options.items() if name != "device"}
    for options in (without, {**without, "device": "AUTO"}, {**without, "device": "cuda"},
                    {**spec.options, "pm_config": "pm_configs/pm.json"}):
        other = replace(spec, options=options)
        remember_signature(store, other, load_detector(replace(other, options=without)).signature())
        assert remembered_signature(store, other) is None, options
    onnx = save_demo_detector(tmp_path / "m.onnx", FRCNN, 4, onnx_size=128)
    frozen = {"confidence_threshold": 0.05, "nms_iou": 0.5, "max_detections": 100}
    exported = tv_spec(onnx, device="cpu", frozen_nms=frozen, candidates={"min_score": 0.05, "top_k": 100})
    remember_signature(store, exported, load_detector(exported).signature())
    assert remembered_signature(store, exported) is None

    import evalstack.detection.torchvision_adapter as module

    class Mine(module.TorchvisionAdapter):
        pass

    monkeypatch.setattr(module, "TorchvisionAdapter", Mine)  # the registry names the module's attribute
    assert remembered_signature(store, spec) is None  # a load would give Mine's signature: the memo is not served
    moved = replace(spec, options={**spec.options, "candidates": {"min_score": 0.02, "top_k": 200}})
    expected_detections_key(moved, pipeline, store)  # Mine loads: its signature is not kept
    assert remembered_signature(store, moved) is None
    mine = load_detector(moved).signature()
    monkeypatch.undo()
    write_memo(store, memo_key(moved, sha256_file(model)), mine)  # as if kept: it is not served either
    assert remembered_signature(store, moved) is None
    odd = replace(spec, options={**spec.options, "hook": print})  # a notebook's object, which no key can hold
    assert expected_detections_key(odd, pipeline, store) == expected_detections_key(odd, pipeline, None)
    # torch installed without a RECORD of its files (editable, some distro packages): only its version is known
    real = signatures.installed_identity
    monkeypatch.setattr(signatures, "installed_identity", lambda name: "2.14.1 " if name == "torch" else real(name))
    assert remembered_signature(store, spec) is None
