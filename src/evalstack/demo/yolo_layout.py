"""A tiny YOLO-layout detector with random weights: what a user's Ultralytics export looks like, as tensors.

It is no trained model: it exists so the `yolo` adapter and a YOLO entry in detection/params.yaml
can be tried offline, and its ONNX export checked against the torch file. Input RGB (B, 3, S, S) in
0–1; a strided conv trunk gives grids at strides 8, 16 and 32 (Ultralytics' P3–P5); each grid cell
is an anchor point at its centre, with a box as distances to its four sides (softplus, in stride
units, like a decoded DFL head) and sigmoid class scores. Output:

- `raw`: (B, 4 + C, A) = cx, cy, w, h in input pixels, then C scores (Ultralytics' export of `Detect`);
- `end2end`: (B, N, 6) = x1, y1, x2, y2, score, class of the N best anchors by their best class,
  sorted by score (a YOLOv10-style head; no NMS).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from evalstack.demo.training.onnx_export import export_onnx
from evalstack.demo.training.torch_program import save_program

STRIDES = (8, 16, 32)


class TinyYolo(nn.Module):
    def __init__(self, n_classes: int, width: int = 8, end2end_rows: int = 0):
        super().__init__()
        self.n_classes, self.end2end_rows = n_classes, end2end_rows
        self.stem = nn.Sequential(  # stride 8
            nn.Conv2d(3, width, 3, 2, 1), nn.SiLU(), nn.Conv2d(width, width, 3, 2, 1), nn.SiLU(),
            nn.Conv2d(width, width, 3, 2, 1), nn.SiLU())
        self.down = nn.ModuleList([nn.Sequential(nn.Conv2d(width, width, 3, 2, 1), nn.SiLU()) for _ in STRIDES[1:]])
        self.heads = nn.ModuleList([nn.Conv2d(width, 4 + n_classes, 1) for _ in STRIDES])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.stem(x)]
        for layer in self.down:
            features.append(layer(features[-1]))
        levels = [self._decode(head(feature), stride) for head, feature, stride in zip(self.heads, features, STRIDES)]
        raw = torch.cat(levels, dim=2)  # (B, 4 + C, A)
        return self._end2end(raw) if self.end2end_rows else raw

    def _decode(self, out: torch.Tensor, stride: int) -> torch.Tensor:
        batch, _, height, width = out.shape
        ys = (torch.arange(height, dtype=out.dtype) + 0.5).view(1, height, 1).expand(1, height, width)
        xs = (torch.arange(width, dtype=out.dtype) + 0.5).view(1, 1, width).expand(1, height, width)
        sides = nn.functional.softplus(out[:, :4])  # left, top, right, bottom in cells
        x1, y1, x2, y2 = xs - sides[:, 0], ys - sides[:, 1], xs + sides[:, 2], ys + sides[:, 3]
        xywh = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=1) * stride
        scores = torch.sigmoid(out[:, 4:])
        return torch.cat([xywh, scores], dim=1).reshape(batch, 4 + self.n_classes, height * width)

    def _end2end(self, raw: torch.Tensor) -> torch.Tensor:
        xywh, scores = raw[:, :4].transpose(1, 2), raw[:, 4:].transpose(1, 2)  # (B, A, 4), (B, A, C)
        best, label = scores.max(dim=2)
        top, index = best.topk(self.end2end_rows, dim=1)  # sorted, best first
        picked = torch.gather(xywh, 1, index.unsqueeze(2).expand(-1, -1, 4))
        half = picked[..., 2:] / 2
        boxes = torch.cat([picked[..., :2] - half, picked[..., :2] + half], dim=2)
        classes = torch.gather(label, 1, index).to(raw.dtype)
        return torch.cat([boxes, top.unsqueeze(2), classes.unsqueeze(2)], dim=2)


def export_yolo_layout(out: Path, n_classes: int, size: int, seed: int = 0, end2end_rows: int = 0,
                       width: int = 8) -> Path:
    """A TinyYolo with weights fixed by `seed`, saved with torch.export (.pt2, dynamic batch) at input size `size`
    (a multiple of 32), and its ONNX export beside it (same stem, .onnx). Returns the .pt2 path."""
    if size % STRIDES[-1]:
        raise ValueError(f"input size {size} is not a multiple of the largest stride {STRIDES[-1]}")
    torch.manual_seed(seed)
    model = TinyYolo(n_classes, width, end2end_rows).eval()
    example = (torch.zeros((2, 3, size, size), dtype=torch.float32),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, example, dynamic_shapes=({0: batch},))
    out = Path(out)
    save_program(program, out)
    export_onnx(out, out.with_suffix(".onnx"), name=out.stem, trust=True)  # we just built it
    return out
