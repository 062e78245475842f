"""params.yaml → typed records. Stage scripts read their slice of params through here.

Every package may import this module, so it holds records only and imports nothing
heavier than yaml: evaluation gets `ModelSpec` without importing a framework adapter.
Builders that need a subsystem live with it (`cache.shardstore.open_store`,
`preprocess.pipelines.pipeline_spec`, `fetch.raw_layer.fetch_config`).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Mapping

import yaml

from evalstack.core import yamlload
from evalstack.core.coco_labels import LABEL_PRESETS

DEFAULT_PARAMS = Path("params.yaml")


TASKS = ("classify", "concentration", "detect")  # detect: the detection profile (detection/adapter.py)


class ConfigError(ValueError):
    """params.yaml does not say what a stage needs."""


class ModelError(RuntimeError):
    """A model file or its outputs cannot be used; the message says which and why."""


@dataclass(frozen=True)
class ModelSpec:
    """A model entry from params.yaml."""

    name: str
    file: Path
    adapter: str
    pipeline: str
    # Per model output index: a class name; for detection also a dataset category id (int) or None (an index
    # that is no dataset category: an explicit map left it out). detection/labels.py matches them to the data.
    labels: tuple[str | int | None, ...]
    task: str = "classify"
    layout: str = "NHWC"  # how the model wants its input; data is stored NHWC
    sha256: str | None = None  # expected weights hash, checked when given
    options: dict[str, Any] = field(default_factory=dict)
    trust: bool = False  # load a pickle-backed file (torch .pt2/.pt) without a sha256 pin (models/trust.py)
    label_preset: str | None = None  # coco80 / coco91: names the dataset lacks are dropped, not refused

    def __post_init__(self) -> None:
        object.__setattr__(self, "file", Path(self.file))  # a str from a notebook works too
        object.__setattr__(self, "labels", tuple(self.labels))


# DVC's run-cache drops every param key with these names, at any depth, when it hashes a stage
# (https://github.com/iterative/dvc/issues/10296): a change to one would restore a stale result.
HIDDEN_FROM_DVC = ("size", "nfiles")


# A params file whose YAML aliases expand past this many nodes is refused before it is built: ten nested
# aliases of ten ("billion laughs") expand to 10^10 nodes, and DVC's own parser runs out of memory on it.
# The default params.yaml has about 300 nodes.
MAX_EXPANDED_NODES = 1_000_000


def load_params(path: Path = DEFAULT_PARAMS) -> dict[str, Any]:
    text = Path(path).read_text()
    params = parse_params_text(text, str(path)) or {}
    hidden = hidden_param_keys(params)
    if hidden:
        raise ConfigError(
            f"{path}: {', '.join(hidden)}: DVC's run-cache ignores params named "
            f"{' or '.join(HIDDEN_FROM_DVC)} (DVC issue #10296), so changing one would restore a stale result; "
            "rename the key (for a pipeline's output side use `resize`)"
        )
    check_schema(params, text, str(path))
    return params


def check_schema(params: Mapping[str, Any], text: str, where: str) -> None:
    """Every wrong key at once, before the stage does anything. Checking costs ~0.15 s (pydantic), paid by
    every stage start; a text that passed once with this schema is remembered by its hash, so only the
    first stage after an edit pays it."""
    # The schema decides only whether params are accepted, never what a stage computes: it is kept out of every
    # stage's code fingerprint and DVC deps (imported by a name the fingerprint's static scan does not follow), so
    # allowing a new key does not invalidate every cached layer. pydantic is imported only when a text is new:
    # find_spec finds the schema's file without running the module, whose import costs ~0.12 s (pydantic).
    schema_name = f"{__package__}.params_schema"
    schema_source = Path(find_spec(schema_name).origin).read_bytes()
    stamp = _checked_dir() / hashlib.sha256(schema_source + b"\0" + text.encode()).hexdigest()
    if stamp.exists():
        return
    errors = import_module(schema_name).schema_errors(params)
    if errors:
        raise ConfigError(f"{where} does not fit the params schema ({len(errors)} key{'s' if len(errors) > 1 else ''}):"
                          "\n  " + "\n  ".join(errors))
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()
    except OSError:
        pass  # a read-only home: check again next time


def _checked_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "evalstack" / "params-checked"


def parse_params_text(text: str, where: str, limit: int = MAX_EXPANDED_NODES) -> Any:
    """`yaml.safe_load`, parsed once: the node graph is composed, its alias expansion counted, and only a file
    within the limit is built into Python objects."""
    loader = yamlload.loader_for(text)(text)
    try:
        root = loader.get_single_node()
        _refuse_alias_bomb(_expanded_size(root), where, limit)
        return loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as error:
        raise ConfigError(f"{where}: not valid YAML: {error}") from None
    finally:
        loader.dispose()


def expanded_nodes(text: str) -> int:
    """How many nodes the YAML document has once every alias is expanded."""
    return _expanded_size(yaml.compose(text, Loader=yamlload.loader_for(text)))


def _expanded_size(root: yaml.Node | None) -> int:
    """The expanded node count, in time linear in the document (each node's expanded size is computed once,
    however many aliases point at it)."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = 1  # a node that contains itself (a recursive alias) counts once
        if isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(key) + size(value) for key, value in node.value)
        else:
            total = 1
        sizes[id(node)] = total
        return total

    return size(root) if root is not None else 0


def check_alias_expansion(text: str, where: str, limit: int = MAX_EXPANDED_NODES) -> None:
    try:
        count = expanded_nodes(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{where}: not valid YAML: {error}") from None
    _refuse_alias_bomb(count, where, limit)


def _refuse_alias_bomb(count: int, where: str, limit: int) -> None:
    if count > limit:
        raise ConfigError(
            f"{where}: its YAML aliases expand to {count:,} nodes (more than {limit:,}): an alias bomb "
            "(\"billion laughs\"); DVC's parser would run out of memory on it. Remove the nested `*alias` "
            "references, or write the values out")


def hidden_param_keys(node: Any, prefix: str = "", seen: set[int] | None = None) -> list[str]:
    """Dotted paths of every key DVC's run-cache would not see. A mapping or list reached again through a
    YAML alias is walked once (under the first path that reaches it), so the walk is linear in the file."""
    seen = set() if seen is None else seen
    if isinstance(node, (Mapping, list)):
        if id(node) in seen:
            return []
        seen.add(id(node))
    found = []
    if isinstance(node, Mapping):
        for name, value in node.items():
            dotted = f"{prefix}{name}"
            if str(name) in HIDDEN_FROM_DVC:
                found.append(dotted)
            found += hidden_param_keys(value, dotted + ".", seen)
    elif isinstance(node, list):
        for position, value in enumerate(node):
            found += hidden_param_keys(value, f"{prefix}{position}.", seen)
    return found


def entry(params: Mapping[str, Any], section: str, name: str) -> Mapping[str, Any]:
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


def resolve_detection_labels(params: Mapping[str, Any], labels: Any, where: str,
                             num_classes: Any = None) -> tuple[tuple[str | int | None, ...], str | None]:
    """(label per model output index, preset name or None) of a detector's `labels:`.

    A name under `labels:` or an inline list (class names, matched to dataset categories by name), a preset
    (`coco80`, `coco91`: core/coco_labels.py), or an explicit map {model index: dataset category id or name};
    indices a map leaves out (up to `num_classes` when given) are no dataset category."""
    if isinstance(labels, str) and labels not in (params.get("labels") or {}) and labels in LABEL_PRESETS:
        return LABEL_PRESETS[labels], labels
    if not isinstance(labels, Mapping):
        if isinstance(labels, str) or isinstance(labels, list):
            return resolve_labels(params, labels), None
        raise ConfigError(f"{where}: {labels!r} is not a label set name, a preset ({', '.join(LABEL_PRESETS)}), "
                          "a list of class names or a map {model index: category id or name}")
    mapped: dict[int, str | int] = {}
    for index, target in labels.items():
        if isinstance(index, str) and index.isdigit():
            index = int(index)
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ConfigError(f"{where}: key {index!r} is not a model class index (0, 1, …)")
        if isinstance(target, bool) or not isinstance(target, (int, str)):
            raise ConfigError(f"{where}.{index}: {target!r} is not a dataset category id or name")
        mapped[index] = target
    if not mapped:
        raise ConfigError(f"{where}: the label map is empty")
    size = max(mapped) + 1
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < size:
            raise ConfigError(f"{where}: num_classes {num_classes!r} must be an integer > every mapped index "
                              f"(largest {size - 1})")
        size = num_classes
    return tuple(mapped.get(index) for index in range(size)), None


def drug_key(name: str) -> str:
    """Names match case-insensitively and with '-' for ' ' (upstream standardises both ways)."""
    return " ".join(name.strip().lower().replace("-", " ").split())


def train_entry(params: Mapping[str, Any], name: str) -> tuple[tuple[str, ...], dict[str, Any]]:
    """(labels, training settings) of `train.<name>`; `file` and `pipeline` are dvc.yaml's, not training's."""
    settings = dict(entry(params, "train", name))
    labels = resolve_labels(params, settings.pop("labels"))
    for unused in ("file", "pipeline"):
        settings.pop(unused, None)
    return labels, settings


def infer_batch_size(params: Mapping[str, Any]) -> int:
    """`infer.batch_size`, read one way by every stage that runs a model in batches: it is part of the
    predictions, candidates and grid-cell keys (models/predictions.py), so their readings must agree."""
    return int((params.get("infer") or {}).get("batch_size", 32))


def preprocess_compression(params: Mapping[str, Any]) -> str:
    return str((params.get("preprocess") or {}).get("compression", "none"))


PREDICTIONS = "predictions"  # the params section (and adapter name) of detections computed elsewhere


def model_spec(params: Mapping[str, Any], name: str, root: Path = Path(".")) -> ModelSpec:
    if name in (params.get(PREDICTIONS) or {}) and name not in (params.get("models") or {}):
        raise ConfigError(f"{name} is declared under {PREDICTIONS}: (a COCO results JSON): it has no model, so there "
                          "is nothing to infer and no corruption grid — grid cells need a model to run on the "
                          f"corrupted images. Declare the detector itself under models: to get them")
    fields = dict(entry(params, "models", name))
    if fields.get("adapter") == PREDICTIONS:
        raise ConfigError(f"models.{name}: adapter predictions belongs under {PREDICTIONS}: (it has no forward pass, "
                          f"so no infer, postprocess or grid stage): move the entry to {PREDICTIONS}.{name}")
    for required in ("file", "adapter", "pipeline", "labels"):
        if required not in fields:
            raise ConfigError(f"models.{name} lacks {required!r}")
    known = {"file", "adapter", "pipeline", "labels", "task", "layout", "sha256", "trust", "options"}
    task = fields.get("task", "classify")
    nested = fields.get("options") or {}
    if not isinstance(nested, Mapping):
        raise ConfigError(f"models.{name}.options must be a mapping of adapter options, not {nested!r}")
    misplaced = sorted(set(nested) & (known - {"layout"}))
    if misplaced:  # they are read only beside options: (a pin written under it would never be checked)
        raise ConfigError(f"models.{name}.options: {', '.join(misplaced)} must go beside options:, as "
                          f"models.{name}.{misplaced[0]}: {nested[misplaced[0]]!r}; under options: it would be "
                          "ignored")
    options = {k: v for k, v in fields.items() if k not in known} | dict(nested)
    if task == "detect":
        check_detection_fields(name, fields)
        labels, preset = resolve_detection_labels(params, fields["labels"], f"models.{name}.labels",
                                                  options.get("num_classes"))
    else:
        labels, preset = resolve_labels(params, fields["labels"]), None
    return ModelSpec(
        name=name,
        file=root / fields["file"],
        adapter=fields["adapter"],
        pipeline=fields["pipeline"],
        labels=labels,
        label_preset=preset,
        task=task,
        layout=options.pop("layout", fields.get("layout", "NHWC")),
        sha256=fields.get("sha256"),
        options=options,
        trust=_flag(fields.get("trust", False), f"models.{name}.trust"),
    )


# A detection model's keys that DVC tracks one by one (detection/dvc.yaml): infer and grid track the ones
# that change candidates (options included), postprocess the three post-processing ones.
DETECTION_FIELDS = frozenset({"file", "adapter", "pipeline", "labels", "task", "sha256", "trust", "candidates",
                              "confidence_threshold", "nms_iou", "max_detections", "options"})


# The post-processing keys: postprocess and robustness track them one by one, beside `options:`.
POSTPROCESS_FIELDS = ("confidence_threshold", "nms_iou", "max_detections")
# A detector's options outside its signature: post-processing runs on the stored candidates under its own key,
# and the candidate bound is a part of the signature of its own.
DETECTION_OUTSIDE_SIGNATURE = ("parity_of", *POSTPROCESS_FIELDS, "candidates")


def signature_options(spec: ModelSpec, outside: tuple[str, ...]) -> dict[str, Any]:
    """The entry's options as a model signature names them: all but `outside`, values a key can hold (what
    params.yaml gives, numpy scalars, paths). An object such as a function has no stable form to compare, and a
    set's order differs between processes: refused by name."""
    from evalstack.core.keys import canonical_json

    options = {name: value for name, value in sorted(spec.options.items()) if name not in outside}
    for name, value in options.items():
        try:
            if _holds_a_set(value):
                raise TypeError
            canonical_json(value)
        except (TypeError, ValueError):
            raise ModelError(f"model {spec.name}: option {name!r} is {type(value).__name__}, not a value a cache key "
                             "can hold (a number, string, list or mapping): options are part of the model's "
                             "signature") from None
    return options


def _holds_a_set(value: Any) -> bool:
    if isinstance(value, (set, frozenset)):
        return True
    if isinstance(value, Mapping):
        return any(_holds_a_set(item) for item in value.values())
    return isinstance(value, (list, tuple)) and any(_holds_a_set(item) for item in value)


def check_detection_fields(name: str, fields: Mapping[str, Any]) -> None:
    """A detection model's adapter options live under `options:`, the mapping infer and grid track: a key beside
    it would change results without DVC rerunning either stage (a stale result, exit 0). The post-processing
    keys are the other way round: postprocess and robustness track them beside `options:` (they do not track
    the mapping), so one under it would change their results without either rerunning."""
    stray = sorted(set(fields) - DETECTION_FIELDS)
    if stray:
        raise ConfigError(
            f"models.{name}: {', '.join(stray)} must go under models.{name}.options: (e.g. `options: {{{stray[0]}: "
            f"{fields[stray[0]]!r}}}`): detection/dvc.yaml tracks that mapping for infer and grid, so a change "
            "there reruns them; a key beside it would not, and a stale result would be reused")
    nested = fields.get("options") or {}
    misplaced = [key for key in POSTPROCESS_FIELDS if key in nested]
    if misplaced:
        raise ConfigError(
            f"models.{name}.options: {', '.join(misplaced)} must go beside options:, as models.{name}."
            f"{misplaced[0]}: {nested[misplaced[0]]!r}: detection/dvc.yaml tracks the post-processing keys there "
            "for postprocess and robustness, so a change under options: would not rerun them, and stale "
            "detections would be reused")


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, not {value!r}")
    return value
