"""Stage export_onnx: a torch.export (.pt2) model → the same network as ONNX."""
import argparse
from pathlib import Path

from evalstack.demo.training.onnx_export import export_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, required=True, help=".pt2 file")
    parser.add_argument("--out", type=Path, required=True, help=".onnx file to write")
    parser.add_argument("--opset", type=int, default=18)
    args = parser.parse_args()
    export_onnx(args.source, args.out, args.opset)
    print(f"exported {args.source} → {args.out}")


if __name__ == "__main__":
    main()
