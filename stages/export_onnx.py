"""Stage export_onnx: a torch.export (.pt2) model → the same network as ONNX."""
import argparse
from pathlib import Path

from evalstack.config import entry, load_params
from evalstack.core.failures import run_stage
from evalstack.core.names import project_output
from evalstack.demo.training.onnx_export import export_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True, help="name under export: (its sha256/trust decide whether the .pt2 loads)")
    parser.add_argument("--source", type=Path, required=True, help=".pt2 file")
    parser.add_argument("--out", type=project_output, required=True, help=".onnx file to write")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    settings = entry(load_params(args.params), "export", args.name)
    export_onnx(args.source, args.out, args.opset, args.name, settings.get("sha256"), settings.get("trust") is True)
    print(f"exported {args.source} → {args.out}")


if __name__ == "__main__":
    run_stage(main)
