"""Exports a demo torch.export model to ONNX, so the parity of the two runtimes can be checked.

The dynamo exporter keeps the program's dynamic batch dimension; its output is
byte-identical across runs for the same program (checked here), so the ONNX
model's signature is stable under `dvc repro -f`.
"""
from __future__ import annotations

import io
from pathlib import Path

from evalstack.core.atomic import atomic_write_bytes
from evalstack.models.trust import require_trusted
from evalstack.models.weights import read_weights


def export_onnx(source: Path, out: Path, opset: int = 18, name: str = "", sha256: str | None = None,
                trust: bool = False) -> None:
    """`export.<name>` in params.yaml: a .pt2 can run code when loaded, so the entry pins its
    sha256 or trusts it (models/trust.py), as a model entry does."""
    import torch

    weights = read_weights(Path(source))  # torch loads the bytes the trust check saw (models/weights.py)
    require_trusted(name or Path(source).stem, weights, sha256, trust, where="export")
    program = torch.export.load(io.BytesIO(weights.data))
    onnx_program = torch.onnx.export(program, dynamo=True, opset_version=opset, verbose=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, onnx_program.model_proto.SerializeToString())
