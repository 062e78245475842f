"""The demo PLS concentration model: one sklearn PLSRegression per drug, fitted on the dev split.

Each drug's fit is folded into upstream's form (intercept + 360 weights on the
raw 0–255 features) and written as one row of the coefficient CSV, so the file
is read exactly like a PAD PLS model.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evalstack.core.atomic import atomic_write_bytes
from evalstack.core.kinds import PREPROCESSED_KIND
from evalstack.core.layers import Layer
from evalstack.evaluation.items import read_items
from evalstack.models.adapters.pls import PLSCoefficients, coefficients_csv


@dataclass(frozen=True)
class PLSFitConfig:
    n_components: int = 5
    split: str = "dev"
    min_items: int = 2  # a drug with fewer dev items gets no row (its cards stay unscored)


def load_features(features_dir: Path, raw_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (N, F), drug names and quantities of one split, in layer order."""
    items = read_items(raw_dir)
    layer = Layer.open(features_dir, kind=PREPROCESSED_KIND)
    items.check_aligned(layer)  # rows are the raw layer's items: truth joins by position, never by content
    rows = np.flatnonzero(items.split == split)
    if not len(rows):
        raise ValueError(f"no {split!r} items to fit PLS on")
    features = layer.column("x")[rows].astype(np.float64)
    return features, items.sample_name[rows], items.quantity[rows].astype(np.float64)


def fit_drug(features: np.ndarray, quantities: np.ndarray, n_components: int) -> tuple[float, np.ndarray]:
    """Intercept and weights such that quantity ≈ intercept + weights · features."""
    from sklearn.cross_decomposition import PLSRegression

    if np.ptp(quantities) == 0:  # one level only: nothing to regress, predict it
        return float(quantities[0]), np.zeros(features.shape[1])
    components = max(1, min(n_components, len(quantities) - 1, features.shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant feature columns (untouched lanes)
        model = PLSRegression(n_components=components, scale=False).fit(features, quantities)
    weights = np.asarray(model.coef_, dtype=np.float64).reshape(-1)
    # sklearn applies coef_ to centred features (scale=False: no scaling); fold the centring into the intercept.
    return float(np.ravel(model.intercept_)[0] - features.mean(axis=0) @ weights), weights


def fit_pls(features_dir: Path, raw_dir: Path, config: PLSFitConfig, out: Path) -> PLSCoefficients:
    features, drugs, quantities = load_features(features_dir, raw_dir, config.split)
    names, intercepts, weights = [], [], []
    for drug in sorted(set(drugs.tolist())):
        mask = drugs == drug
        if mask.sum() < config.min_items:
            print(f"pls: {drug} has {int(mask.sum())} {config.split} items (< {config.min_items}); no row written")
            continue
        intercept, coefficients = fit_drug(features[mask], quantities[mask], config.n_components)
        names.append(drug)
        intercepts.append(intercept)
        weights.append(coefficients)
    if not names:
        raise ValueError(f"no drug has {config.min_items} {config.split} items; cannot fit PLS")
    fitted = PLSCoefficients(tuple(names), np.asarray(intercepts), np.stack(weights))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, coefficients_csv(fitted))
    return fitted
