"""The `evalstack` command: inspect and check layers outside of dvc."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evalstack.offline_plots import OfflinePlotsError, install_offline_template
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
        except (StoreError, OfflinePlotsError) as error:
            problems = [str(error)]
        for problem in problems:
            print(f"CORRUPT {problem}")
        print(f"{directory}: {'FAILED' if problems else 'ok'}")
        failed |= bool(problems)
    return 1 if failed else 0


def cmd_plots_template(args: argparse.Namespace) -> int:
    path = install_offline_template(args.repo)
    print(f"wrote {path}; `dvc plots show` and `dvc plots diff` in this clone now render offline")
    return 0


def cmd_push_run_cache(args: argparse.Namespace) -> int:
    from evalstack.sharing import push_run_cache

    pushed = push_run_cache(args.repo, args.remote, args.jobs)
    print(f"{pushed.records} run records and {pushed.outputs} output objects pushed")
    if pushed.unavailable:
        print(f"{pushed.unavailable} objects named by run records are no longer in the local cache (not pushed)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evalstack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="what a layer holds and how it was keyed")
    show.add_argument("layer", type=Path)
    show.set_defaults(run=cmd_show)
    verify = commands.add_parser("verify", help="check shards against the checksums in each layer's index")
    verify.add_argument("layers", type=Path, nargs="+")
    verify.set_defaults(run=cmd_verify)
    template = commands.add_parser(
        "plots-template", help="make `dvc plots show/diff` pages render offline (vega inlined, no CDN)"
    )
    template.add_argument("--repo", type=Path, default=Path("."), help="the DVC repository (default: here)")
    template.set_defaults(run=cmd_plots_template)
    share = commands.add_parser(
        "push-run-cache", help="`dvc push --run-cache`, plus the outputs the run records restore"
    )
    share.add_argument("-r", "--remote", help="DVC remote name (default: core.remote)")
    share.add_argument("-j", "--jobs", type=int, help="parallel uploads")
    share.add_argument("--repo", type=Path, default=Path("."), help="the DVC repository (default: here)")
    share.set_defaults(run=cmd_push_run_cache)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (StoreError, OfflinePlotsError) as error:
        print(f"evalstack: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
