"""PLS concentration models in PAD's coefficient CSV layout.

One row per drug, no header: drug name, intercept, then one weight per feature
(360 for 12 lanes × 10 regions × RGB, in regions.feature_names order).
Prediction = intercept + weights · features, for the drug on the card.

Upstream evaluates only the row of the drug it is told; this adapter returns
every row's prediction (N, drugs), so the drug can be chosen afterwards — the
card's labelled drug, or a classifier's guess — without another pass.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evalstack.config import ModelError, ModelSpec, drug_key
from evalstack.models.adapters.base import ModelAdapter


@dataclass(frozen=True)
class PLSCoefficients:
    drugs: tuple[str, ...]
    intercepts: np.ndarray  # (D,)
    weights: np.ndarray  # (D, F)


def read_coefficients(path: Path, model: str) -> PLSCoefficients:
    return parse_coefficients(Path(path).read_bytes(), path, model)


def parse_coefficients(data: bytes, path: Path, model: str) -> PLSCoefficients:
    """The rows of a coefficient file's bytes (`path` only names it in messages)."""
    drugs, intercepts, weights = [], [], []
    seen: set[str] = set()
    with io.StringIO(data.decode("utf-8-sig"), newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row or not "".join(row).strip():
                continue
            where = f"model {model}: {path} row {number}"
            if len(row) < 3:
                raise ModelError(f"{where}: expected drug name, intercept and weights, got {len(row)} fields")
            try:
                values = [float(v) for v in row[1:]]
            except ValueError as error:
                raise ModelError(f"{where} ({row[0]!r}): {error}") from None
            if weights and len(values) - 1 != len(weights[0]):
                raise ModelError(f"{where} ({row[0]!r}): {len(values) - 1} weights, earlier rows have {len(weights[0])}")
            if not np.all(np.isfinite(values)):
                raise ModelError(f"{where} ({row[0]!r}): NaN or inf coefficient")
            if drug_key(row[0]) in seen:
                raise ModelError(f"{where}: drug {row[0]!r} appears twice")
            seen.add(drug_key(row[0]))
            drugs.append(row[0].strip())
            intercepts.append(values[0])
            weights.append(values[1:])
    if not drugs:
        raise ModelError(f"model {model}: {path} has no coefficient rows")
    return PLSCoefficients(tuple(drugs), np.asarray(intercepts), np.asarray(weights))


def coefficients_csv(coefficients: PLSCoefficients) -> bytes:
    """The upstream CSV layout; repr() of the floats so reading back is exact."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for drug, intercept, weights in zip(coefficients.drugs, coefficients.intercepts, coefficients.weights):
        writer.writerow([drug, repr(float(intercept)), *(repr(float(w)) for w in weights)])
    return buffer.getvalue().encode()


class PLSAdapter(ModelAdapter):
    framework = "pls"

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        if spec.task != "concentration":
            raise ModelError(f"model {spec.name}: a PLS model predicts concentration; set task: concentration")
        self.coefficients = parse_coefficients(self.take_weights().data, spec.file, spec.name)
        known = {drug_key(label) for label in spec.labels}
        unknown = [drug for drug in self.coefficients.drugs if drug_key(drug) not in known]
        if unknown:
            raise ModelError(f"model {spec.name}: {spec.file} has rows for {unknown}, which are not in its labels")

    def input_shape(self) -> tuple[int, ...]:
        return (self.coefficients.weights.shape[1],)

    def output_names(self) -> tuple[str, ...]:
        return self.coefficients.drugs

    def contract(self) -> dict[str, Any]:
        return {**super().contract(), "drugs": list(self.coefficients.drugs)}

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        # float64 like upstream's Python arithmetic; stored as float32 afterwards.
        return self.coefficients.intercepts + batch.astype(np.float64) @ self.coefficients.weights.T
