"""The `evalstack` command: inspect and check layers outside of dvc."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evalstack.store import Layer, StoreError


def cmd_show(args: argparse.Namespace) -> int:
    layer = Layer.open(args.layer)
    index = layer.index
    print(f"{args.layer}: {index.kind} layer, schema {index.schema_version}, {index.n_items} items, {len(index.shards)} shards")
    print(f"key {index.key.kind} {index.key.hex[:16]}")
    for name, value in sorted(index.stats.items()):
        print(f"  {name}: {value}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    failed = False
    for directory in args.layers:
        try:
            problems = Layer.open(directory).verify()
        except StoreError as error:
            problems = [str(error)]
        for problem in problems:
            print(f"CORRUPT {problem}")
        print(f"{directory}: {'FAILED' if problems else 'ok'}")
        failed |= bool(problems)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evalstack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="what a layer holds and how it was keyed")
    show.add_argument("layer", type=Path)
    show.set_defaults(run=cmd_show)
    verify = commands.add_parser("verify", help="check shards against the checksums in each layer's index")
    verify.add_argument("layers", type=Path, nargs="+")
    verify.set_defaults(run=cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except StoreError as error:
        print(f"evalstack: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
