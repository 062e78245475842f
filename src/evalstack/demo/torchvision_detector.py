"""A demo torchvision detector file, for trying `adapter: torchvision` offline (random weights, nothing downloaded).

    python -m evalstack.demo.torchvision_detector detection/models/frcnn320.pth \
        --builder fasterrcnn_mobilenet_v3_large_320_fpn --num-classes 4 [--scripted]

writes a state_dict (declare `builder:` and `num_classes:` beside it) or, with --scripted, a TorchScript file.
Its boxes are meaningless (untrained): it exercises loading, caching and post-processing, not accuracy.
"""
from __future__ import annotations

import argparse
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


def save_demo_detector(path: Path, builder: str = "fasterrcnn_mobilenet_v3_large_320_fpn", num_classes: int = 4,
                       seed: int = 0, scripted: bool = False) -> Path:
    """Save a random-weight detector as a state_dict (default) or a TorchScript archive; returns `path`."""
    model = build_random(builder, num_classes, seed)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if scripted:
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
    args = parser.parse_args()
    save_demo_detector(args.path, args.builder, args.num_classes, args.seed, args.scripted)
    print(f"wrote {args.path}")


if __name__ == "__main__":
    main()
