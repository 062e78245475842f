"""P12: many small images (64×64 PNG, bench/_items.py) through fetch → preprocess → infer → evaluate
with `executor: dask` (a LocalCluster of 2 workers per stage), measured side by side in one run.

* the curve: a cold `dvc repro` at each size (1k … 200k items): seconds per item and peak RSS per stage;
* at the largest size: no-op `dvc status` / `dvc repro`; +1 % items rerun / cold; files DVC tracks per
  layer and each index.json; `dvc push` of every layer to a fresh local remote;
* the shard size (`fetch.shard_bytes`), chosen by bytes: cold, +1 % rerun, files and index size at a
  few targets on one size;
* the alternatives without evalstack: the same images as one file each under `dvc add` (add, no-op
  status and push times), and a plain script (bench/_items.py `plain_run`) whose accuracy must equal
  evalstack's on the same items before their times are compared.

The images and the model are kept in bench/out/items between runs (writing 200,000 PNGs is the
source's job, not the pipeline's, and is not timed).
"""
from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import _items  # noqa: E402
import _s3count  # noqa: E402
from _monitor import StageRun, monitored, stage_line  # noqa: E402

from tests.e2e import build_record, make_project, run, tree_size  # noqa: E402

MODEL = "shapes"
PIPELINE = "small"
STAGES = ("fetch", f"preprocess@{PIPELINE}", f"infer@{MODEL}", "evaluate")
LAYERS = {"fetch": "data/raw", f"preprocess@{PIPELINE}": f"data/preprocessed/{PIPELINE}",
          f"infer@{MODEL}": f"data/predictions/{MODEL}"}


@dataclass
class Point:
    n: int
    shard_bytes: int
    cold: StageRun
    files: dict[str, int]  # layer → files DVC tracks in it (shards + index.json)
    index_bytes: dict[str, int]  # layer → size of its index.json
    layer_bytes: dict[str, int] = field(default_factory=dict)  # layer → bytes of all its files
    rerun: StageRun | None = None  # after +1 % items
    grown: int = 0  # items after the +1 %
    raw_items_computed: int = 0  # items the +1 % rerun computed in the raw layer
    recomputed: dict[str, str] = field(default_factory=dict)
    # `dvc repro -f -s` of every stage right after the rerun: each runs, the store answers every shard (the
    # rerun's fixed cost, as P2's restatement measures it)
    forced: StageRun | None = None


@dataclass
class P12Result:
    curve: list[Point]
    choice: list[Point]
    noop_status: float
    noop_repro: float
    push_seconds: float
    push_bytes: int
    accuracy: float  # evalstack's, on the test split of the largest size
    plain_seconds: float
    plain_accuracy: float
    dvc_add: dict[str, float]  # add, status, push seconds; files
    log: list[str]
    cluster_reruns: list[StageRun] = field(default_factory=list)  # +1 % twice more, on a running 2-worker cluster
    push_requests: tuple[dict[str, int], int] = ({}, 0)  # S3 requests (by kind) and bytes of the first push
    noop_push: tuple[dict[str, int], int] = ({}, 0)  # requests and bytes of a push with nothing new
    growth_push: tuple[dict[str, int], int] = ({}, 0)  # … of the push after +1 % items

    @property
    def big(self) -> Point:
        return self.curve[-1]


def registry_dir(parent: Path, items_root: Path, n: int) -> Path:
    """Registry CSVs of the first n items beside a link to the shared images folder (a relative url
    never climbs out of its registry's folder)."""
    folder = parent / "registry"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "images").exists():
        (folder / "images").symlink_to((items_root / "images").resolve())
    use_registry(folder, items_root, n)
    return folder


def use_registry(folder: Path, items_root: Path, n: int) -> None:
    for split, path in _items.write_items(items_root, n).items():
        shutil.copyfile(path, folder / f"metadata_{split}.csv")


def model_file(items_root: Path) -> Path:
    path = items_root / f"{MODEL}.pt2"
    if not path.exists():
        _items.train_model(items_root, path)
    return path


def p12_project(root: Path, registry: Path, model: Path, shard_bytes: int) -> Path:
    """The template with a registry source of small images, one pipeline and one (trained) model, on Dask."""
    registries = {split: str(registry / f"metadata_{split}.csv") for split in ("dev", "test")}
    overrides = {
        # registry/images links to the shared images folder: a local registry reads only the roots it lists
        "fetch": {"shard_bytes": shard_bytes, "source": {"kind": "registry", "registries": registries,
                                                         "roots": [str((registry / "images").resolve())]}},
        "preprocess": {"compression": "none", "pipelines": {PIPELINE: dict(_items.PIPELINE)}},
        "labels": {MODEL: list(_items.CLASSES)},
        "models": {MODEL: {"file": f"models/{MODEL}.pt2", "adapter": "torch", "pipeline": PIPELINE, "labels": MODEL,
                           "task": "classify", "trust": True}},  # built by bench/_items.py: ours
        "infer": {"batch_size": 256},
        "executor": "dask", "dask": {"address": "", "workers": 2},
        "store": {"link": "hardlink"},
    }
    project = make_project(root, overrides)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["preprocess"]["pipelines"] = {PIPELINE: dict(_items.PIPELINE)}  # replaced, not merged
    params["models"] = {MODEL: overrides["models"][MODEL]}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    pipeline = yaml.safe_load((project / "dvc.yaml").read_text())
    pipeline["stages"] = {name: stage for name, stage in pipeline["stages"].items()
                          if name in ("fetch", "preprocess", "infer", "evaluate")}
    deps = pipeline["stages"]["fetch"]["deps"]
    deps[deps.index("data/source")] = registries["dev"]
    deps.append(registries["test"])
    (project / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    shutil.copyfile(model, project / f"models/{MODEL}.pt2")
    run(project, "dvc", "config", "cache.type", "hardlink")
    run(project, "dvc", "add", f"models/{MODEL}.pt2")
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "small images from a registry, one trained model, on Dask")
    return project


def layer_files(project: Path) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    files, index, size = {}, {}, {}
    for stage, layer in LAYERS.items():
        paths = [path for path in (project / layer).iterdir() if path.is_file()]
        files[stage] = len(paths)
        size[stage] = sum(path.stat().st_size for path in paths)
        index[stage] = (project / layer / "index.json").stat().st_size
    return files, index, size


def recomputed(project: Path) -> dict[str, str]:
    out = {}
    for stage, layer in LAYERS.items():
        counts = build_record(project, layer)["counts"]
        out[stage] = f"{counts['shards_computed']}/{counts['shards']} shards ({counts['items_computed']} items)"
    return out


def cold_point(scratch: Path, items_root: Path, model: Path, n: int, shard_bytes: int, say) -> tuple[Point, Path]:
    parent = scratch / f"p12_{n}_{shard_bytes}"
    shutil.rmtree(parent, ignore_errors=True)
    registry = registry_dir(parent, items_root, n)
    project = p12_project(parent / "project", registry, model, shard_bytes)
    cold = monitored(["dvc", "repro"], project)
    files, index, size = layer_files(project)
    say(f"{n:>7} items, shard_bytes {shard_bytes / 1e6:g} MB, cold: {stage_line(cold)}")
    return Point(n, shard_bytes, cold, files, index, size), project


def grow(point: Point, project: Path, items_root: Path, growth: float, say) -> None:
    """+growth items in the registry the project reads, then `dvc repro`."""
    grown = round(point.n * (1 + growth))
    use_registry(project.parent / "registry", items_root, grown)
    point.grown = grown
    point.rerun = monitored(["dvc", "repro"], project)
    point.recomputed = recomputed(project)
    point.raw_items_computed = build_record(project, LAYERS["fetch"])["counts"]["items_computed"]
    say(f"        +{growth:.0%} ({point.n} → {grown}) rerun: {stage_line(point.rerun)}")
    say("        recomputed: " + "; ".join(f"{stage} {text}" for stage, text in point.recomputed.items()))


def median_time(command: list[str], cwd: Path, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.monotonic()
        run(cwd, *command)
        times.append(time.monotonic() - started)
    return statistics.median(times)


def evalstack_accuracy(project: Path) -> float:
    return float(json.loads((project / f"data/evaluation/{MODEL}.json").read_text())["accuracy"])


def use_s3_remote(project: Path, s3) -> None:
    run(project, "dvc", "remote", "add", "-d", "s3", f"s3://{s3.bucket}/cache")
    for option, value in {"endpointurl": s3.url, "access_key_id": s3.key_id, "secret_access_key": s3.secret}.items():
        run(project, "dvc", "remote", "modify", "--local", "s3", option, value)


def counted_push(project: Path, count) -> tuple[dict[str, int], int]:
    """`dvc push` to the default remote: the S3 requests it sent, by kind, and the bytes."""
    mark = count.snapshot()
    run(project, "dvc", "push")
    return _s3count.delta(mark, count.snapshot())


def dvc_add_baseline(scratch: Path, items_root: Path, n: int, say) -> dict[str, float]:
    """The same n images as one file each in a DVC project: `dvc add`, no-op `dvc status`, `dvc push`."""
    root = scratch / "dvc_add"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    run(root, "git", "init", "-q", "-b", "main")
    run(root, "dvc", "init", "-q")
    run(root, "dvc", "config", "core.analytics", "false")
    run(root, "dvc", "config", "cache.type", "hardlink")  # as the evalstack project: no second copy in the cache
    images = root / "data/images"
    images.mkdir(parents=True)
    for item_id in range(1, n + 1):  # a real copy: DVC would make the shared originals read-only
        name = _items.image_name(item_id)
        shutil.copyfile(items_root / "images" / name, images / name)
    started = time.monotonic()
    run(root, "dvc", "add", "data/images")
    add = time.monotonic() - started
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "images")
    status = median_time(["dvc", "status"], root)
    run(root, "dvc", "remote", "add", "-d", "local", str(scratch / "dvc_add_remote"))
    started = time.monotonic()
    run(root, "dvc", "push")
    push = time.monotonic() - started
    size, files = tree_size(scratch / "dvc_add_remote")
    say(f"`dvc add` of {n} image files: add {add:.1f} s, no-op status {status:.2f} s, push {push:.1f} s "
        f"({len(files)} files, {size / 1e6:.0f} MB)")
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(scratch / "dvc_add_remote", ignore_errors=True)
    return {"add": add, "status": status, "push": push, "files": float(len(files))}


def measure(scratch: Path, items_root: Path, sizes: tuple[int, ...], shard_bytes: int,
            choices: tuple[int, ...], choice_size: int, growth: float = 0.01) -> P12Result:
    log: list[str] = []
    say = lambda line: (log.append(line), print("    " + line, flush=True))  # noqa: E731
    started = time.monotonic()
    for n in sorted({*sizes, choice_size}):
        _items.write_items(items_root, n)
    for n in grown_sizes(max(sizes), growth, 3):
        _items.write_items(items_root, n)
    _items.write_items(items_root, round(choice_size * (1 + growth)))
    model = model_file(items_root)
    say(f"{max(sizes)} images and the model ready in {time.monotonic() - started:.0f} s (not timed: the source)")

    curve, choice = [], []
    for n in sizes[:-1]:
        point, project = cold_point(scratch, items_root, model, n, shard_bytes, say)
        curve.append(point)
        if n == choice_size:
            grow(point, project, items_root, growth, say)
            choice.append(point)
        shutil.rmtree(project.parent, ignore_errors=True)
    for target in choices:
        if target == shard_bytes and any(p.n == choice_size for p in curve):
            continue
        point, project = cold_point(scratch, items_root, model, choice_size, target, say)
        grow(point, project, items_root, growth, say)
        choice.append(point)
        shutil.rmtree(project.parent, ignore_errors=True)
    choice.sort(key=lambda p: p.shard_bytes)

    big, project = cold_point(scratch, items_root, model, sizes[-1], shard_bytes, say)
    curve.append(big)
    accuracy = evalstack_accuracy(project)
    status = median_time(["dvc", "status"], project)
    repro = median_time(["dvc", "repro"], project)
    say(f"no-op at {big.n}: `dvc status` {status:.2f} s, `dvc repro` {repro:.2f} s (median of 3)")
    say("files DVC tracks per layer: " + ", ".join(f"{s} {big.files[s]}, {big.layer_bytes[s] / 1e6:.0f} MB "
                                                  f"({big.index_bytes[s] / 1e3:.0f} KB index.json)" for s in LAYERS))
    run(project, "dvc", "remote", "add", "local", str(scratch / "p12_remote"))  # as the `dvc add` baseline pushes
    pushed = time.monotonic()
    run(project, "dvc", "push", "-r", "local")
    push_seconds = time.monotonic() - pushed
    push_bytes = tree_size(scratch / "p12_remote")[0]
    say(f"`dvc push` of every layer at {big.n} to a local remote: {push_seconds:.1f} s, {push_bytes / 1e6:.0f} MB")
    shutil.rmtree(scratch / "p12_remote", ignore_errors=True)
    run(project, "dvc", "remote", "remove", "local")
    with _s3count.counting_s3() as (s3, count):
        use_s3_remote(project, s3)
        pushed = time.monotonic()
        push_requests = counted_push(project, count)
        say(f"`dvc push` of every layer at {big.n} to S3 (moto on loopback): {time.monotonic() - pushed:.1f} s, "
            + _s3count.describe(*push_requests))
        noop_push = counted_push(project, count)
        say("`dvc push` again, nothing new: " + _s3count.describe(*noop_push))
        grow(big, project, items_root, growth, say)
        growth_push = counted_push(project, count)
        say(f"`dvc push` after +{growth:.0%}: " + _s3count.describe(*growth_push))
    big.forced = monitored(["dvc", "repro", "-f", "-s", *STAGES], project)
    say(f"        the rerun's fixed cost, `dvc repro -f -s` of the same stages right after (the store answers every "
        f"shard): {stage_line(big.forced)}")
    cluster_reruns = on_a_running_cluster(scratch, project, items_root, big.n, growth, say)

    registries = {split: project.parent / "registry" / f"metadata_{split}.csv" for split in ("dev", "test")}
    use_registry(project.parent / "registry", items_root, big.n)  # the plain script reads the same items
    plain_started = time.monotonic()
    plain_accuracy = _items.plain_run(registries, model)
    plain_seconds = time.monotonic() - plain_started
    say(f"plain script at {big.n}: {plain_seconds:.1f} s, accuracy {plain_accuracy:.6f} (evalstack {accuracy:.6f})")
    shutil.rmtree(project.parent, ignore_errors=True)
    dvc_add = dvc_add_baseline(scratch, items_root, big.n, say)
    return P12Result(curve, choice, status, repro, push_seconds, push_bytes, accuracy, plain_seconds, plain_accuracy,
                     dvc_add, log, cluster_reruns, push_requests, noop_push, growth_push)


def grown_sizes(n: int, growth: float, steps: int) -> list[int]:
    sizes = [n]
    for _ in range(steps):
        sizes.append(round(sizes[-1] * (1 + growth)))
    return sizes[1:]


def on_a_running_cluster(scratch: Path, project: Path, items_root: Path, n: int, growth: float, say) -> list[StageRun]:
    """The same project pointed at a scheduler and two workers that keep running between stages (started
    with the `dask` CLIs, as a team runs one; `dask.address`, in no stage's params), then +1 % twice:
    the first rerun warms the workers (framework imported, model loaded), the second is what a team sees."""
    from tests.e2e import env, set_param
    from tests.servers import dask_processes

    runs = []
    with dask_processes(scratch / "dask", workers=2, environment=env(project)) as cluster:
        set_param(project, "dask.address", cluster.address)
        sizes = grown_sizes(n, growth, 3)  # the project holds sizes[0] already (the first +1 %)
        for before, after in zip(sizes[:-1], sizes[1:]):
            use_registry(project.parent / "registry", items_root, after)
            runs.append(monitored(["dvc", "repro"], project))
            say(f"        on a running 2-worker cluster, +{growth:.0%} ({before} → {after}): {stage_line(runs[-1])}")
    set_param(project, "dask.address", "")
    return runs


def tables(result: P12Result) -> list[str]:
    """Markdown tables for RESULTS.md: the curve, the shard size choice."""
    stages = [stage for stage in STAGES if stage in result.big.cold.seconds]
    lines = ["", "### P12: time per item and peak RSS per stage, cold, by number of items", "",
             "| items | " + " | ".join(f"{stage} µs/item | {stage} MB" for stage in stages) + " | dvc s | total s |",
             "|---|" + "---|" * (2 * len(stages) + 2)]
    for point in result.curve:
        cells = []
        for stage in stages:
            cells.append(f"{1e6 * point.cold.seconds.get(stage, 0) / point.n:.0f}")
            cells.append(f"{point.cold.peak_rss.get(stage, 0) / 2**20:.0f}")
        lines.append(f"| {point.n} | " + " | ".join(cells) + f" | {point.cold.seconds.get('dvc', 0):.1f} | "
                     f"{point.cold.total:.1f} |")
    lines += ["", f"### P12: choosing `fetch.shard_bytes` ({result.choice[0].n if result.choice else '—'} items, "
              "+1 % rerun)", "",
              "| shard_bytes | raw shards | files per layer (raw, preprocessed, predictions) | index.json KB (raw) | "
              "cold s | rerun s | rerun / cold | items recomputed per layer | fetch peak MB |",
              "|---|---|---|---|---|---|---|---|---|"]
    for point in result.choice:
        files = ", ".join(str(point.files[stage]) for stage in LAYERS)
        items = point.recomputed.get("fetch", "").split("(")[-1].rstrip(")")
        ratio = point.rerun.total / point.cold.total if point.rerun else float("nan")
        lines.append(f"| {point.shard_bytes / 1e6:g} MB | {point.files['fetch'] - 1} | {files} | "
                     f"{point.index_bytes['fetch'] / 1e3:.0f} | {point.cold.total:.1f} | "
                     f"{point.rerun.total if point.rerun else float('nan'):.1f} | {ratio:.3f} | {items} | "
                     f"{point.cold.peak_rss.get('fetch', 0) / 2**20:.0f} |")
    return lines
