"""The baseline: the script a user writes without evalstack, and the bare framework loops.

It does the same work as `dvc repro` of fetch → preprocess → infer → evaluate —
read every registry row, check its md5, decode, crop/resize per model, run the
model in batches, compute test accuracy — in one process, streaming batches, with
no caching, no HDF5 and no hashing of outputs. It is not a strawman: the image is
decoded once for all models and models are loaded once.

    python bench/_naive.py PROJECT_DIR [--models A B]   # prints {model: accuracy} as JSON
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
            "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


class BareTFLite:
    """ai-edge-litert's Interpreter, as its docs show: resize to the batch, set, invoke, get."""

    def __init__(self, path: Path):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=2)
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.batch = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) != self.batch:
            self.interpreter.resize_tensor_input(self.input, list(batch.shape))
            self.interpreter.allocate_tensors()
            self.batch = len(batch)
        self.interpreter.set_tensor(self.input, batch)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output)


class BareTorch:
    """torch.export.load(...).module(), called under inference_mode."""

    def __init__(self, path: Path):
        import torch

        self.torch = torch
        self.module = torch.export.load(str(path)).module()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.module(self.torch.from_numpy(batch)).numpy()


BARE = {"tflite": BareTFLite, "torch": BareTorch}


@dataclass(frozen=True)
class Row:
    id: int
    split: str
    sample_name: str
    path: Path
    md5: str


def registry_rows(project: Path, params: dict) -> list[Row]:
    """Every registry row of the project's source (bench/_plain.py reads them too)."""
    rows = []
    for split, registry in params["fetch"]["source"]["registries"].items():
        registry = project / registry
        with open(registry, newline="") as handle:
            rows += [Row(int(r["id"]), split, r["sample_name"], registry.parent / r["url"], r["hashlib_md5"])
                     for r in csv.DictReader(handle)]
    return rows


def run(project: Path, names: list[str] | None = None, batch_size: int = 32) -> dict[str, float]:
    """Accuracy per model on `evaluate.split`, computed from the source images."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    models = {name: (entry, BARE[entry["adapter"]](project / entry["file"])) for name, entry in params["models"].items()
              if names is None or name in names}
    pipelines = params["preprocess"]["pipelines"]
    labels = {name: list(params["labels"][entry["labels"]]) for name, (entry, _) in models.items()}
    correct = dict.fromkeys(models, 0)
    rows = registry_rows(project, params)  # every item is preprocessed and inferred, as the pipeline does
    n_test = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        images = []
        for row in chunk:
            data = row.path.read_bytes()
            if hashlib.md5(data).hexdigest() != row.md5:
                raise SystemExit(f"{row.path}: md5 mismatch")
            images.append(Image.open(io.BytesIO(data)).convert("RGB"))
        is_test = np.array([row.split == params["evaluate"]["split"] for row in chunk])
        n_test += int(is_test.sum())
        for name, (entry, model) in models.items():
            pipe = pipelines[entry["pipeline"]]
            size = (pipe["resize"], pipe["resize"])
            batch = np.stack([np.asarray(img.crop(tuple(pipe["crop"])).resize(size, RESAMPLE[pipe["resample"]]),
                                         dtype=np.float32) for img in images])
            predicted = np.argmax(model(batch), axis=1)
            truth = np.array([labels[name].index(row.sample_name) for row in chunk])
            correct[name] += int(((predicted == truth) & is_test).sum())
    return {name: correct[name] / max(n_test, 1) for name in models}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("project", type=Path)
    parser.add_argument("--models", nargs="*", help="models under models: (default: every one with a bare loop)")
    args = parser.parse_args()
    print(json.dumps(run(args.project, args.models)))
