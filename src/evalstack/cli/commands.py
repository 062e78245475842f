"""The `evalstack` command: inspect, check, explain and clean up layers and the shard store."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from evalstack.cache.dvcfiles import locked_layers, locked_shard_sha256s, shard_files, workspace_layers
from evalstack.cache.shardstore import ShardStore, ShardStoreError, StoreConfig, open_store
from evalstack.cli.provenance import provenance_report, why_report
from evalstack.cli.verify import verify_layer
from evalstack.config import load_params
from evalstack.core.failures import DEBUG_ENV, is_expected
from evalstack.core.layers import Layer, repair_hint
from evalstack.reporting.offline_plots import install_offline_template


def _root(args: argparse.Namespace) -> Path:
    return args.params.resolve().parent


def _store(args: argparse.Namespace) -> ShardStore | None:
    params = load_params(args.params) if args.params.exists() else {}
    store = open_store(params, _root(args))
    if args.store is not None:
        limit = store.config.max_bytes if store else 0
        return ShardStore(StoreConfig(args.store, limit, store.config.link if store else "copy"))
    return store


def _layers(args: argparse.Namespace) -> list[Path]:
    return args.layers or workspace_layers(_root(args))


def cmd_show(args: argparse.Namespace) -> int:
    layer = Layer.open(args.layer)
    index = layer.index
    print(f"{args.layer}: {index.kind} layer, schema {index.schema_version}, {index.n_items} items, {len(index.shards)} shards")
    print(f"key {index.key.kind} {index.key.hex[:16]}")
    for name, value in sorted(index.stats.items()):
        print(f"  {name}: {value}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    if args.cache:
        return verify_dvc_cache(_root(args))
    layers = _layers(args)
    if not layers:
        print("no layers found (give layer directories, or run in a project after `dvc repro`/`dvc pull`)")
        return 1
    failed = False
    for directory in layers:
        problems = verify_layer(directory)
        for problem in problems:
            print(f"CORRUPT {problem}")
        print(f"{directory}: {'FAILED' if problems else 'ok'}")
        if problems:
            print(f"  fix: {repair_hint(Path(directory))}")
        failed |= bool(problems)
    return 1 if failed else 0


def verify_dvc_cache(root: Path) -> int:
    """Re-hash every DVC cache object the project's dvc.lock files record; name the damaged ones and the repair."""
    from evalstack.cli.cache_check import check_cache, repair_lines
    from evalstack.cli.doctor import profiles

    damaged, checked = [], 0
    for profile in profiles(root):
        count, found = check_cache(profile)
        checked += count
        damaged += found
    for item in damaged:
        print(f"CORRUPT {item.describe(root)}")
    if not damaged:
        print(f"DVC cache: ok ({checked} objects re-hashed)")
        return 0
    print(f"DVC cache: {len(damaged)} of {checked} objects damaged; do not `dvc push` them. Repair:")
    print("\n".join(f"  {line}" for line in repair_lines(damaged, root)))
    return 1


def cmd_summary(args: argparse.Namespace) -> int:
    from evalstack.reporting.summary import summary_text

    print(summary_text(args.project.resolve()), end="")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from evalstack.reporting.report import write_report

    page = write_report(args.project.resolve())
    print(f"wrote {page.relative_to(args.project.resolve())} (and reports/index.md)")
    return 0


def cmd_plots_template(args: argparse.Namespace) -> int:
    path = install_offline_template(args.repo)
    print(f"wrote {path}; `dvc plots show` and `dvc plots diff` in this clone now render offline")
    return 0


def cmd_push_run_cache(args: argparse.Namespace) -> int:
    from evalstack.cli.sharing import push_run_cache

    if verify_dvc_cache(args.repo.resolve()) != 0:  # never upload a damaged object for others to pull
        print("evalstack: push-run-cache: nothing pushed; repair the objects above first", file=sys.stderr)
        return 1
    try:
        pushed = push_run_cache(args.repo, args.remote, args.jobs)
    except Exception as error:  # DVC's own errors (remote unreachable, bad config) are many types
        print(f"evalstack: push-run-cache failed: {error}\n`evalstack doctor` checks that each remote is reachable "
              "and names the path or URL it resolves to", file=sys.stderr)
        return 2
    print(f"{pushed.records} run records and {pushed.outputs} output objects pushed")
    if pushed.unavailable:
        print(f"{pushed.unavailable} objects named by run records are no longer in the local cache (not pushed)")
    return 0



def cmd_why(args: argparse.Namespace) -> int:
    store = _store(args)
    for directory in _layers(args):
        print("\n".join(why_report(directory, store)))
    return 0


def cmd_provenance(args: argparse.Namespace) -> int:
    print("\n".join(provenance_report(args.layer, _root(args), _store(args), args.item)))
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    store = _require_store(args)
    root = _root(args)
    # What the current dvc.lock records, plus whatever layers the workspace holds right now.
    protected = locked_shard_sha256s(root)
    for directory in workspace_layers(root):
        protected |= {shard.sha256 for shard in Layer.open(directory).shards}
    report = store.gc(protected, args.max_bytes, args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{store.directory}: {verb} {len(report.removed)} shards ({_size(report.removed_bytes)}), "
          f"least recently used first; {_size(report.kept_bytes)} kept (limit {_size(report.limit)}), "
          f"{_size(report.protected_bytes)} of it needed by dvc.lock or the workspace")
    if report.kept_bytes > report.limit:
        print("the store stays above its limit: everything left is needed by dvc.lock or the workspace")
    return 0


def cmd_store_seed(args: argparse.Namespace) -> int:
    store = _require_store(args)
    added = 0
    if args.layers:
        for directory in args.layers:
            layer = Layer.open(directory)
            added += store.seed([(s, layer.path(s)) for s in layer.shards], layer.index.kind, immutable=False)
    else:
        for locked in locked_layers(_root(args)):
            added += store.seed(shard_files(locked), locked.index.kind, immutable=locked.from_cache)
    print(f"{store.directory}: {added} shards added")
    return 0


def cmd_store_verify(args: argparse.Namespace) -> int:
    store = _require_store(args)
    problems = store.verify()
    for problem in problems:
        print(f"CORRUPT {problem}")
    print(f"{store.directory}: {'FAILED' if problems else 'ok'} ({_size(store.usage())})")
    return 1 if problems else 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from evalstack.cli.doctor import doctor, report

    lines, failed = report(doctor(args.params, deep=args.deep, min_free=args.min_free))
    print("\n".join(lines))
    return 1 if failed else 0


def _require_store(args: argparse.Namespace) -> ShardStore:
    store = _store(args)
    if store is None:
        raise ShardStoreError("no shard store: params.yaml sets store.dir empty and --store was not given")
    return store


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evalstack", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="the project's params.yaml (store settings)")
    parser.add_argument("--store", type=Path, default=None, help="shard store directory (default: store.dir)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an expected failure too")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, run, help: str, layers: str | None = None) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        if layers:
            sub.add_argument("layers", type=Path, nargs="*", help=layers)
        sub.set_defaults(run=run)
        return sub

    command("show", cmd_show, "what a layer holds and how it was keyed").add_argument("layer", type=Path)
    every = "layer directories (default: every layer in dvc.lock and under data/)"
    verify = command("verify", cmd_verify, "check shards against recorded checksums and schema, per item", every)
    verify.add_argument("--cache", action="store_true",
                        help="re-hash the DVC cache objects dvc.lock records instead (run it before `dvc push`)")
    command("why", cmd_why, "what the last build of each layer recomputed, and which key part changed", every)
    provenance = command("provenance", cmd_provenance, "source URL + md5 → pipeline key → model signature → code")
    provenance.add_argument("layer", type=Path)
    provenance.add_argument("item", nargs="?", help="item key prefix, source id or image name")
    gc = command("gc", cmd_gc, "trim the store to its size limit, least recently used first, keeping what dvc.lock needs")
    gc.add_argument("--max-bytes", type=int, default=None, help="limit for this run (default: store.max_bytes)")
    gc.add_argument("--dry-run", action="store_true")
    store = commands.add_parser("store", help="the shard store").add_subparsers(dest="store_command", required=True)
    seed = store.add_parser("seed", help="add shards of pulled/DVC-cached layers (default: those dvc.lock records)")
    seed.add_argument("layers", type=Path, nargs="*")
    seed.set_defaults(run=cmd_store_seed)
    store.add_parser("verify", help="re-hash every store entry").set_defaults(run=cmd_store_verify)
    project = "the project folder (default: here); the detection profile is read from its detection/ folder"
    command("summary", cmd_summary, "each model's headline figures in a few lines, and where the report is") \
        .add_argument("--project", type=Path, default=Path("."), help=project)
    command("report", cmd_report, "write reports/index.html (offline, figures inline) and reports/index.md") \
        .add_argument("--project", type=Path, default=Path("."), help=project)
    doctor = command("doctor", cmd_doctor, "check dvc.lock, remotes, the shard store, each profile's outputs and free "
                     "space; say how to fix what is wrong")
    doctor.add_argument("--deep", action="store_true", help="also re-hash every shard-store entry (slow)")
    doctor.add_argument("--min-free", type=int, default=1 << 30, help="warn below this many free bytes (default 1 GiB)")
    template = command("plots-template", cmd_plots_template,
                       "make `dvc plots show/diff` pages render offline (vega inlined, no CDN)")
    template.add_argument("--repo", type=Path, default=Path("."), help="the DVC repository (default: here)")
    share = command("push-run-cache", cmd_push_run_cache,
                    "`dvc push --run-cache`, plus the outputs the run records restore")
    share.add_argument("-r", "--remote", help="DVC remote name (default: core.remote)")
    share.add_argument("-j", "--jobs", type=int, help="parallel uploads")
    share.add_argument("--repo", type=Path, default=Path("."), help="the DVC repository (default: here)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except Exception as error:  # evalstack's own errors name the cause and the fix: one line, no traceback
        if not is_expected(error) or args.debug or os.environ.get(DEBUG_ENV):
            raise
        print(f"evalstack: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
