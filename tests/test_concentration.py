import numpy as np
import pytest

from evalstack.config import ModelError
from evalstack.demo.training.pls import fit_drug
from evalstack.evaluation.concentration import concentration_report, predicted_quantities


def test_quantity_from_each_kind_of_concentration_model():
    logits = np.asarray([[0.1, 3.0, 0.2], [2.0, 0.0, 1.0]], np.float32)
    levels = {"labels": ["0", "50", "100"]}  # PAD-style: a classifier over quantity levels
    assert predicted_quantities(logits, levels, ["a", "b"]).tolist() == [50.0, 0.0]
    regressor = {"labels": ["quantity"]}
    assert predicted_quantities(logits[:, :1], regressor, ["a", "b"]).tolist() == pytest.approx([0.1, 2.0])
    per_drug = {"labels": ["x"], "drugs": ["Amoxicillin", "ferrous sulfate", "lactose"]}
    out = predicted_quantities(logits, per_drug, ["ferrous-sulfate", "aspirin"])
    assert out[0] == pytest.approx(3.0) and np.isnan(out[1])  # no coefficients for aspirin: unscored
    with pytest.raises(ModelError, match="are not quantities"):
        predicted_quantities(logits, {"labels": ["low", "mid", "high"]}, ["a", "b"])


def test_rmse_mae_overall_and_per_class():
    actual = np.asarray([0, 20, 50, 100, 80])
    predicted = np.asarray([10, 20, 40, np.nan, 80])
    report = concentration_report(actual, predicted, ["a", "a", "b", "b", "b"])
    assert report.n_items == 4 and report.n_unscored == 1
    assert report.rmse == pytest.approx(np.sqrt((100 + 0 + 100 + 0) / 4))
    assert report.mae == pytest.approx(5.0)
    assert report.per_class["a"] == pytest.approx((np.sqrt(50), 5.0, 2))
    assert report.per_class["b"] == pytest.approx((np.sqrt(50), 5.0, 2))
    empty = concentration_report(actual[:1], np.asarray([np.nan]), ["a"])
    assert empty.summary() == {"rmse": None, "mae": None, "n_items": 0, "n_unscored": 1}


def test_pls_fit_folds_into_upstream_intercept_and_weights():
    from sklearn.cross_decomposition import PLSRegression

    rng = np.random.default_rng(0)
    features = rng.integers(0, 256, size=(30, 12)).astype(float)
    quantities = features[:, 0] * 0.3 - features[:, 5] * 0.1 + rng.normal(0, 1, 30) + 20
    intercept, weights = fit_drug(features, quantities, n_components=3)
    reference = PLSRegression(n_components=3, scale=False).fit(features, quantities).predict(features)
    np.testing.assert_allclose(intercept + features @ weights, np.ravel(reference), rtol=1e-9, atol=1e-9)
    constant_intercept, constant_weights = fit_drug(features[:3], np.full(3, 50.0), 3)
    assert constant_intercept == 50.0 and not constant_weights.any()
