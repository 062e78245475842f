"""params.yaml → typed records. Stage scripts read their slice of params through here."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from evalstack.adapters.base import ModelSpec
from evalstack.catalog import SourceConfig
from evalstack.fetch import FetchConfig
from evalstack.pipelines import PreprocessingPipeline, build_pipeline
from evalstack.shardstore import ShardStore, StoreConfig
from evalstack.transport import TransportConfig

DEFAULT_PARAMS = Path("params.yaml")
DEFAULT_STORE = {"dir": ".evalstack/store", "max_bytes": 20_000_000_000, "link": "copy"}


class ConfigError(ValueError):
    """params.yaml does not say what a stage needs."""


def load_params(path: Path = DEFAULT_PARAMS) -> dict[str, Any]:
    with open(path) as handle:
        return yaml.safe_load(handle) or {}


def _entry(params: Mapping[str, Any], section: str, name: str) -> Mapping[str, Any]:
    entries = params.get(section) or {}
    if name not in entries:
        raise ConfigError(f"params.yaml has no {section}.{name}; declared: {sorted(entries)}")
    return entries[name]


def resolve_labels(params: Mapping[str, Any], labels: str | list[str]) -> tuple[str, ...]:
    """A model's labels: an inline list, or the name of a list under `labels:`."""
    if isinstance(labels, str):
        sets = params.get("labels") or {}
        if labels not in sets:
            raise ConfigError(f"label set {labels!r} is not declared under labels: ({sorted(sets)})")
        labels = sets[labels]
    if len(set(labels)) != len(labels):
        raise ConfigError("a label list has duplicates")
    return tuple(str(label) for label in labels)


def train_entry(params: Mapping[str, Any], name: str) -> tuple[tuple[str, ...], dict[str, Any]]:
    """(labels, training settings) of `train.<name>`; `file` and `pipeline` are dvc.yaml's, not training's."""
    entry = dict(_entry(params, "train", name))
    labels = resolve_labels(params, entry.pop("labels"))
    for unused in ("file", "pipeline"):
        entry.pop(unused, None)
    return labels, entry


def preprocess_compression(params: Mapping[str, Any]) -> str:
    return str((params.get("preprocess") or {}).get("compression", "none"))


def pipeline_spec(params: Mapping[str, Any], name: str) -> PreprocessingPipeline:
    return build_pipeline(_entry(params.get("preprocess") or {}, "pipelines", name))


def model_spec(params: Mapping[str, Any], name: str, root: Path = Path(".")) -> ModelSpec:
    entry = dict(_entry(params, "models", name))
    for required in ("file", "adapter", "pipeline", "labels"):
        if required not in entry:
            raise ConfigError(f"models.{name} lacks {required!r}")
    known = {"file", "adapter", "pipeline", "labels", "task", "layout", "sha256"}
    return ModelSpec(
        name=name,
        file=root / entry["file"],
        adapter=entry["adapter"],
        pipeline=entry["pipeline"],
        labels=resolve_labels(params, entry["labels"]),
        task=entry.get("task", "classify"),
        layout=entry.get("layout", "NHWC"),
        sha256=entry.get("sha256"),
        options={k: v for k, v in entry.items() if k not in known},
    )


def store_config(params: Mapping[str, Any], root: Path = Path(".")) -> StoreConfig | None:
    """The shard store from `store:` (a relative dir is relative to params.yaml); None when `dir` is empty."""
    section = {**DEFAULT_STORE, **(params.get("store") or {})}
    if not section["dir"]:
        return None
    directory = Path(str(section["dir"])).expanduser()
    return StoreConfig(directory if directory.is_absolute() else root / directory, int(section["max_bytes"]), str(section["link"]))


def open_store(params: Mapping[str, Any], root: Path = Path(".")) -> ShardStore | None:
    config = store_config(params, root)
    return ShardStore(config) if config else None


def fetch_config(params: Mapping[str, Any], report: Path | None = None) -> FetchConfig:
    """The `fetch:` block of params.yaml → FetchConfig."""
    fetch = params["fetch"]
    http = dict(fetch.get("http") or {})
    transport = TransportConfig(
        schemes=tuple(fetch.get("schemes", TransportConfig.schemes)),
        connect_timeout=float(http.get("connect_timeout", TransportConfig.connect_timeout)),
        read_timeout=float(http.get("read_timeout", TransportConfig.read_timeout)),
        retries=int(http.get("retries", TransportConfig.retries)),
        backoff=float(http.get("backoff", TransportConfig.backoff)),
        max_bytes=int(fetch.get("max_bytes", TransportConfig.max_bytes)),
        pool_size=int(fetch.get("workers", 8)),
    )
    return FetchConfig(
        source=SourceConfig.from_params(fetch), shard_size=int(fetch["shard_size"]),
        max_pixels=int(fetch["max_pixels"]), workers=int(fetch.get("workers", 8)),
        on_error=str(fetch.get("on_error", "fail")), transport=transport, report=report,
    )
