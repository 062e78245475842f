"""The params schema of both profiles: one message per wrong key, naming its path, the value and what is expected.

A stage reads its slice of params.yaml; without a schema a wrong type surfaces deep inside the
stage as an error that names neither the key nor the value (`resize: "64"` → a Pillow TypeError,
`fetch.workers: "eight"` → a ValueError from int()). The schema is checked when params are loaded,
so the first stage DVC runs after an edit reports every wrong key at once. Types are strict: a
quoted number is a string, not a number (YAML users quote by mistake; coercing would hide it).

Sections whose keys are fixed forbid unknown keys (a typo is an error, not a silently ignored
setting). Model entries and pipelines allow extra keys: an adapter's or a registered pipeline
kind's own options, which their builders check.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Mapping

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

Count = Annotated[StrictInt, Field(ge=1)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
Number = StrictInt | StrictFloat
Share = Annotated[Number, Field(ge=0, le=1)]
Positive = Annotated[Number, Field(gt=0)]
NonNegative = Annotated[Number, Field(ge=0)]


class Fixed(BaseModel):
    """A section whose keys are all known: an unknown one is a typo."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Open(BaseModel):
    """A section that also carries options someone else checks (an adapter's, a pipeline kind's)."""

    model_config = ConfigDict(extra="allow", strict=True)


class Synth(Fixed):
    n_cards: Count = 400
    seed: StrictInt = 0
    test_fraction: Annotated[Number, Field(ge=0, lt=1)] = 0.2


class DetectionSynth(Fixed):
    n_train: Count = 1200
    n_val: Count = 300
    seed: StrictInt = 0


class Http(Fixed):
    connect_timeout: Positive = 5
    read_timeout: Positive = 30
    retries: NonNegativeInt = 5
    backoff: NonNegative = 0.5
    retry_after_max: NonNegative = 60


class Fetch(Fixed):
    source: dict[str, Any] | None = None  # checked by sources.catalog.SourceConfig, naming its keys
    registries: dict[StrictStr, StrictStr] | None = None  # the older spelling: SourceConfig refuses it, naming where it goes
    shard_bytes: Count = 48_000_000
    shrink_warning: Share = 0.2
    max_pixels: Count = 16_777_216
    max_bytes: Count = 67_108_864
    schemes: list[StrictStr] = ["file", "http", "https"]
    workers: Count = 8
    rows_per_task: Count = 64  # the Dask path (fetch/distributed.py): rows per worker task
    on_error: Literal["fail", "skip"] = "fail"
    max_skipped: NonNegativeInt | Annotated[StrictStr, Field(pattern=r"^\s*\d+(\.\d+)?\s*%\s*$")] = "10%"
    http: Http = Http()


class CocoSplit(Open):
    annotations: StrictStr
    images: StrictStr


class DetectionFetch(Open):
    format: Literal["coco", "yolo"] = "coco"
    # coco: {split: {annotations, images}}; yolo: the data.yaml splits to fetch ([val])
    splits: dict[StrictStr, CocoSplit] | Annotated[list[StrictStr], Field(min_length=1)]
    data: StrictStr | None = None  # yolo: the dataset's data.yaml
    shard_size: Count = 256
    max_pixels: Count = 16_777_216
    max_bytes: Count = 67_108_864
    on_error: Literal["fail", "skip"] = "fail"

    @model_validator(mode="after")
    def _fits_format(self) -> "DetectionFetch":
        if self.format == "coco" and (not isinstance(self.splits, dict) or self.data is not None):
            raise PydanticCustomError("format", "format: coco with splits: {split: {annotations, images}} and no "
                                      "data (or format: yolo with data: path/to/data.yaml and splits: [val])")
        if self.format == "yolo" and (not isinstance(self.splits, list) or self.data is None):
            raise PydanticCustomError("format", "format: yolo with data: path/to/data.yaml and splits: a list of its "
                                      "splits ([val])")
        return self


class Pipeline(Open):
    kind: StrictStr
    resize: Annotated[StrictInt, Field(ge=8, le=2048)] | None = None
    crop: Annotated[list[NonNegativeInt], Field(min_length=4, max_length=4)] | None = None
    resample: StrictStr | None = None
    fill: Annotated[StrictInt, Field(ge=0, le=255)] | None = None
    regions: Count | None = None


class Preprocess(Fixed):
    compression: Literal["none", "lzf", "lz4", "gzip"] = "none"
    pipelines: dict[StrictStr, Pipeline]


class Candidates(Fixed):
    min_score: Annotated[Number, Field(ge=0, lt=1)] = 0.01
    top_k: Count = 100


class Model(Open):
    file: StrictStr
    adapter: StrictStr
    pipeline: StrictStr | None = None
    labels: StrictStr | list[StrictStr] | dict[Any, Any] | None = None
    task: Literal["classify", "concentration", "detect"] = "classify"
    sha256: Annotated[StrictStr, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    trust: StrictBool = False
    candidates: Candidates | None = None
    confidence_threshold: Annotated[Number, Field(ge=0, lt=1)] | None = None
    nms_iou: Annotated[Number, Field(gt=0, le=1)] | None = None
    max_detections: Count | None = None


class Train(Open):
    pipeline: StrictStr
    file: StrictStr
    labels: StrictStr | list[StrictStr]
    epochs: Count = 1
    batch_size: Count = 16
    learning_rate: Positive = 0.002
    seed: StrictInt = 0


class Store(Fixed):
    dir: StrictStr = ".evalstack/store"
    max_bytes: NonNegativeInt = 20_000_000_000
    link: Literal["copy", "hardlink"] = "copy"
    url: StrictStr | None = None  # an object store behind dir (cache/objectstore.py); empty = local only
    endpointurl: StrictStr = ""
    region: StrictStr = ""
    profile: StrictStr = ""
    remote: StrictStr = ""  # a DVC remote lending its endpointurl/region/profile/credentials
    required: StrictBool = False


class Local(Fixed):
    workers: Count = 2


class Dask(Fixed):
    address: StrictStr = ""
    workers: Count = 2


class Infer(Fixed):
    batch_size: Count = 32


class Evaluate(Open):
    split: StrictStr = "test"
    count_threshold: Share | None = None


class Compare(Fixed):
    bootstrap_resamples: Count = 2000
    seed: StrictInt = 0
    level: Annotated[Number, Field(gt=0, lt=1)] = 0.95


class Grid(Open):
    seed: StrictInt = 0
    split: StrictStr = "test"
    severities: list[Annotated[StrictInt, Field(ge=1, le=5)]] = [1, 2, 3, 4, 5]
    types: list[StrictStr] = []


class Robustness(Grid):
    reference: StrictStr | None = None


class Params(Open):
    """What both profiles share; a section absent is not checked (its stage would say it lacks it)."""

    preprocess: Preprocess | None = None
    labels: dict[StrictStr, list[StrictStr] | dict[Any, Any] | StrictStr] | None = None
    train: dict[StrictStr, Train] | None = None
    models: dict[StrictStr, Model] | None = None
    store: Store | None = None
    executor: Literal["local", "dask"] = "local"
    local: Local | None = None
    dask: Dask | None = None
    infer: Infer | None = None
    evaluate: Evaluate | None = None


class ClassificationParams(Params):
    synth: Synth | None = None
    fetch: Fetch | None = None
    fit_pls: dict[StrictStr, Any] | None = None
    export: dict[StrictStr, dict[StrictStr, Any]] | None = None
    compare: Compare | None = None
    robustness: Robustness | None = None


class DetectionParams(Params):
    synth: DetectionSynth | None = None
    fetch: DetectionFetch | None = None
    grid: Grid | None = None


def profile_schema(params: Mapping[str, Any]) -> type[Params]:
    """The detection profile's params hold a corruption `grid` or `fetch.splits`/`format`; the root's do not."""
    fetch = params.get("fetch")
    detection = "grid" in params or (isinstance(fetch, Mapping) and ("splits" in fetch or "format" in fetch))
    return DetectionParams if detection else ClassificationParams


_UNION_MEMBER = ("constrained", "int", "float", "str", "list", "dict", "bool", "literal", "function")


def _path(location: tuple[Any, ...]) -> str:
    """Dotted key path; pydantic puts the member of a union it tried (`int`, `constrained-str`) in it too."""
    keys = [str(part) for part in location
            if not (isinstance(part, str) and (part[:1].isupper() or "[" in part or part.startswith(_UNION_MEMBER)))]
    return ".".join(keys)


def _shown(value: Any) -> str:
    return "a mapping" if isinstance(value, Mapping) else f"{value!r} ({type(value).__name__})"


def schema_errors(params: Mapping[str, Any]) -> list[str]:
    """One line per wrong key, in the schema's order: `path: value (type), expected …` or `path: unknown key`."""
    try:
        profile_schema(params).model_validate(dict(params))
    except ValidationError as error:
        found: dict[str, tuple[Any, list[str]]] = {}
        for item in error.errors():
            path = _path(tuple(item.get("loc", ())))
            message = str(item.get("msg", "another value"))
            message = message.removeprefix("Input should be ").removeprefix("String should ")
            expected = "unknown key" if item.get("type") == "extra_forbidden" else message
            value, messages = found.setdefault(path, (item.get("input"), []))
            if expected not in messages:
                messages.append(expected)
        return [f"{path}: unknown key (a typo? the key is not one this section reads)" if messages == ["unknown key"]
                else f"{path}: {_shown(value)}, expected {' or '.join(m for m in messages if m != 'unknown key')}"
                for path, (value, messages) in found.items()]
    return []
