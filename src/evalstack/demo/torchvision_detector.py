"""A demo torchvision detector file, for trying `adapter: torchvision` offline (random weights, nothing downloaded).

    python -m evalstack.demo.torchvision_detector detection/models/frcnn320.pth \
        --builder fasterrcnn_mobilenet_v3_large_320_fpn --num-classes 4 [--scripted | --onnx 128]

writes a state_dict (declare `builder:` and `num_classes:` beside it), with --scripted a TorchScript file, or
with --onnx SIZE an ONNX export taking SIZE x SIZE images (declare `frozen_nms:` with the thresholds it prints).
Its boxes are meaningless (untrained): it exercises loading, caching and post-processing, not accuracy.
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch
from torchvision.models import detection as tv_detection


def build_random(builder: str, num_classes: int, seed: int = 0) -> torch.nn.Module:
    """A torchvision detector with seeded random weights (weights=None, weights_backbone=None), in eval mode.
    Its batch-norm statistics are measured on a few random images: with the initial ones (mean 0, variance 1)
    the backbone's activations fade to ~1e-8 and every box of a class gets the same score, a detector in name
    only (a comparison of score orders between two runs would compare ties)."""
    torch.manual_seed(seed)
    model = getattr(tv_detection, builder)(weights=None, weights_backbone=None, num_classes=num_classes)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if norms:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a plain average over the calibration batches
        model.backbone.train()
        with torch.no_grad():
            for _ in range(2):
                model.backbone(torch.rand(4, 3, 160, 160))
    fpn = getattr(model.backbone, "fpn", None)
    if fpn is not None:  # measured: the FPN's lateral convs then give features of std ~900, boxes off the image
        with torch.no_grad():
            for parameter in fpn.inner_blocks.parameters():
                parameter.mul_(1e-3)
    return model.eval()


def frozen_nms(model: torch.nn.Module) -> dict[str, float | int]:
    """The post-processing values a torchvision detector runs with: `frozen_nms:` for a file that freezes them."""
    heads = model.roi_heads if hasattr(model, "roi_heads") else model
    return {"confidence_threshold": float(heads.score_thresh), "nms_iou": float(heads.nms_thresh),
            "max_detections": int(heads.detections_per_img)}


def export_onnx(model: torch.nn.Module, path: Path, size: int) -> Path:
    """torch.onnx.export of a torchvision detector for size x size images, the way torchvision's own ONNX tests do:
    the classic (TorchScript-based) exporter, opset 17, one [3, H, W] image in; boxes, labels, scores out."""
    with warnings.catch_warnings():  # the tracer warns about every Python-side shape computation
        warnings.simplefilter("ignore")
        torch.onnx.export(model, ([torch.rand(3, size, size)],), str(path), opset_version=17, dynamo=False,
                          input_names=["image"], output_names=["boxes", "labels", "scores"])
    return Path(path)


def save_demo_detector(path: Path, builder: str = "fasterrcnn_mobilenet_v3_large_320_fpn", num_classes: int = 4,
                       seed: int = 0, scripted: bool = False, onnx_size: int | None = None) -> Path:
    """Save a random-weight detector as a state_dict (default), a TorchScript archive or an ONNX export for
    onnx_size-px images; returns `path`."""
    model = build_random(builder, num_classes, seed)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if onnx_size:
        export_onnx(model, path, onnx_size)
    elif scripted:
        torch.jit.script(model).save(str(path))
    else:
        torch.save(model.state_dict(), str(path))
    return Path(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("--builder", default="fasterrcnn_mobilenet_v3_large_320_fpn")
    parser.add_argument("--num-classes", type=int, default=4, help="background included (3 shapes + 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scripted", action="store_true")
    parser.add_argument("--onnx", type=int, metavar="SIZE", help="an ONNX export for SIZE x SIZE letterboxes")
    args = parser.parse_args()
    save_demo_detector(args.path, args.builder, args.num_classes, args.seed, args.scripted, args.onnx)
    print(f"wrote {args.path}")
    if args.onnx:
        print(f"its post-processing is frozen: options: {{frozen_nms: {frozen_nms(build_random(args.builder, 1))}}}")


if __name__ == "__main__":
    main()
